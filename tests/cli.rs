//! The command line's contract: verbs, exit codes, graceful stop on SIGINT / SIGTERM.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickguard"))
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success());
    assert_eq!(ok.ok(), Some(true), "kill {sig} {pid}");
}

fn sim_config() -> tempfile_lite::Dir {
    let d = tempfile_lite::Dir::new("cli");
    let mut f = std::fs::File::create(d.path().join("t.toml")).expect("create");
    writeln!(
        f,
        "[sim]\nseed = 3\ntick_interval_s = 0.05\n[[positions]]\nid = \"p1\"\nsymbol = \"BTCUSDT\"\nside = \"long\"\nqty = \"0.5\"\nentry = \"100\"\nstop_loss = \"90\"\ntake_profit = \"110\"\n"
    )
    .expect("write");
    d
}

mod tempfile_lite {
    /// A directory under the target dir, removed on drop.
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "tickguard-{tag}-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&p).expect("mkdir");
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish()
    }
}

#[test]
fn run_stops_gracefully_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT"] {
        let d = sim_config();
        let mut child = bin()
            .args(["run", "--config"])
            .arg(d.path().join("t.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(800));
        signal(child.id(), sig);
        let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after the signal");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert_eq!(status.code(), Some(0), "{sig}: {err}");
        assert!(err.contains("stopping"), "{err}");
        assert!(err.contains("sim: random walk over 1 instruments, seed=3"), "{err}");
    }
}

#[test]
fn demo_stops_gracefully_on_sigterm() {
    let mut child = bin().arg("demo").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    signal(child.id(), "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after the signal");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn exit_codes() {
    // 2: usage.
    let s = bin().arg("frobnicate").output().expect("run");
    assert_eq!(s.status.code(), Some(2));
    let s = bin().args(["demo", "--for", "soon"]).output().expect("run");
    assert_eq!(s.status.code(), Some(2));
    // 78: configuration error, naming the key.
    let d = tempfile_lite::Dir::new("codes");
    let p = d.path().join("bad.toml");
    std::fs::write(&p, "[cache]\nstale_after_s = 400\n").expect("write");
    let s = bin().args(["run", "--config"]).arg(&p).output().expect("run");
    assert_eq!(s.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&s.stderr).contains("cache.stale_after_s"));
    let s = bin().args(["check-config"]).arg(d.path().join("missing.toml")).output().expect("run");
    assert_eq!(s.status.code(), Some(78));
    // 0: an empty file is a valid configuration.
    let e = d.path().join("empty.toml");
    std::fs::write(&e, "").expect("write");
    let s = bin().args(["check-config"]).arg(&e).output().expect("run");
    assert_eq!(s.status.code(), Some(0), "{}", String::from_utf8_lossy(&s.stderr));
}
