//! The demo binary replays the seed incident and its summary shows the three closes the
//! issue asks for: the retried stop, the close judged on the cache, the target closed live.

use std::process::Command;

#[test]
fn demo_for_20s_exits_0_and_summarises_the_incident() {
    let out = Command::new(env!("CARGO_BIN_EXE_tickguard"))
        .args(["demo", "--for", "20s"])
        .env("RUST_LOG", "info")
        .output()
        .expect("run the demo binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status.code());
    assert!(stdout.contains("shortened thresholds"), "{stdout}");
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("no summary row for {id}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // position symbol reason decided price source age_ms exit attempts late_s
    let bosch = row("bosch-1");
    assert_eq!(&bosch[1..3], ["BOSCHLTD", "stop_loss"], "{bosch:?}");
    assert_eq!(bosch[4], "575.00", "{bosch:?}");
    let attempts: u32 = bosch[8].parse().expect("attempts");
    assert!(attempts >= 2, "the stop must have been retried: {bosch:?}");

    let kaynes = row("kaynes-1");
    assert_eq!(&kaynes[1..3], ["KAYNES", "stop_loss"], "{kaynes:?}");
    assert_eq!(kaynes[4], "204.10", "{kaynes:?}");
    assert_eq!(kaynes[5], "cache", "judged on the cache: {kaynes:?}");
    assert!(kaynes[6].parse::<u64>().expect("age") > 0, "{kaynes:?}");

    let adani = row("adani-1");
    assert_eq!(&adani[1..3], ["ADANIENT", "take_profit"], "{adani:?}");
    assert_eq!(adani[5], "live", "{adani:?}");

    assert!(stdout.contains("RELIANCE blind"), "the blind instrument is reported:\n{stdout}");
    // The log lines operators grep for.
    for tag in [
        "[SL] id=bosch-1 symbol=BOSCHLTD price=575.00 source=live",
        "[TP] id=adani-1",
        "[FALLBACK] symbol=KAYNES",
        "[SL] id=kaynes-1 symbol=KAYNES price=204.10 source=cache",
        "[BLIND] id=reliance-1 symbol=RELIANCE state=acting policy=alert",
        "event=retry",
    ] {
        assert!(stderr.contains(tag), "missing {tag} in logs:\n{stderr}");
    }
    // Exactly one close decision per crossed position.
    assert_eq!(stderr.matches("[SL] id=bosch-1 ").count(), 1, "{stderr}");
}
