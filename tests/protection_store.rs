//! Issue 12, "nothing acknowledged is lost" (defects 9 and 6b): a failed append is rolled back to
//! the last whole record so later records are never hidden behind a partial one; a closed id is
//! remembered after its position is pruned; the broker product survives a restart; journals and
//! snapshots written by the previous version still load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tickguard::core::book::ClosedHow;
use tickguard::limits::CLOSED_REMEMBERED;
use tickguard::store::{FaultPlan, Fsync, Journal, Record, StoreError, product_record};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tickguard-protstore-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn reg(id: &str) -> Record {
    Record::Registered {
        id: id.into(),
        generation: 1,
        symbol: "BTCUSDT".into(),
        side: 0,
        qty: 100_000_000,
        entry: 6_000_000_000_000,
        stop_loss: Some(5_900_000_000_000),
        take_profit: None,
        blind: 0,
    }
}

fn journal_len(d: &Path) -> u64 {
    std::fs::metadata(d.join("journal.tg")).expect("journal").len()
}

fn ids(j: &Journal) -> Vec<String> {
    j.state().positions.keys().cloned().collect()
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn defect_09_failed_append_midway_keeps_every_later_record() {
    let d = dir("midway");
    let (j, _) = Journal::open(&d, Fsync::Always, 1 << 30).expect("open");
    let plan = FaultPlan::new();
    j.set_faults(plan.clone());
    for i in 0..5 {
        j.append(&reg(&format!("p{i}"))).expect("append");
    }
    let whole = journal_len(&d);

    // A single record whose write fails after 13 of its bytes (ENOSPC midway).
    plan.fail_write(1, 13);
    let e = j.append(&reg("p5")).expect_err("a failed write is an error the caller sees");
    assert!(matches!(e, StoreError::Io { op: "append", .. }), "{e}");
    assert_eq!(journal_len(&d), whole, "the partial record was cut away");
    assert_eq!(j.bytes(), whole);

    // A batch whose write fails inside its second record.
    plan.fail_write(1, 90);
    assert!(j.append_batch(&[reg("p6"), reg("p7")]).is_err());
    assert_eq!(journal_len(&d), whole, "nothing of the batch is left");
    assert!(!ids(&j).contains(&"p6".to_string()), "the state holds nothing of a failed batch");

    // Later records go on after the last whole one.
    for i in 8..13 {
        j.append(&reg(&format!("p{i}"))).expect("append after the failure");
    }
    drop(j);
    let (j, rec) = Journal::open(&d, Fsync::Always, 1 << 30).expect("reopen");
    assert_eq!(rec.dropped, None, "no partial record anywhere");
    assert_eq!(rec.records, 10);
    let want = sorted(&["p0", "p1", "p2", "p3", "p4", "p8", "p9", "p10", "p11", "p12"]);
    assert_eq!(rec.state.positions.keys().cloned().collect::<Vec<_>>(), want);

    // A failed fsync: the record is rolled back (the caller was told it failed; it must not
    // come back at the next start), and later records are kept.
    let plan = FaultPlan::new();
    j.set_faults(plan.clone());
    let whole = journal_len(&d);
    plan.fail_fsyncs(1);
    assert!(j.append(&reg("f1")).is_err(), "a failed fsync is an error the caller sees");
    assert_eq!(journal_len(&d), whole, "the record that failed its fsync was cut away");
    assert!(!ids(&j).contains(&"f1".to_string()));
    j.append(&reg("f2")).expect("append after a failed fsync");

    // The cut itself fails: the journal refuses every append until a cut succeeds.
    plan.fail_write(1, 9);
    plan.fail_truncates(3);
    assert!(j.append(&reg("b1")).is_err());
    assert!(j.broken().is_some(), "broken after a failed rollback");
    let e = j.append(&reg("b2")).expect_err("refused while broken");
    assert!(matches!(e, StoreError::Broken { .. }), "{e}");
    assert!(j.sync().is_err(), "the store probe fails while broken (its repair fails too)");
    // The truncation faults are used up: the next append repairs and is written.
    j.append(&reg("b3")).expect("repaired");
    assert!(j.broken().is_none());
    j.append_batch(&[reg("b4"), reg("b5")]).expect("batch after repair");
    drop(j);
    let (_, rec) = Journal::open(&d, Fsync::Always, 1 << 30).expect("reopen");
    assert_eq!(rec.dropped, None);
    let mut want = want;
    want.extend(["f2", "b3", "b4", "b5"].map(String::from));
    want.sort();
    assert_eq!(rec.state.positions.keys().cloned().collect::<Vec<_>>(), want);
    let _ = std::fs::remove_dir_all(&d);
}

/// Unmounts the test's tmpfs however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn defect_09_full_filesystem_midway_keeps_every_later_record() {
    let at = std::env::temp_dir().join(format!("tickguard-protstore-tmpfs-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&at);
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = std::fs::remove_dir(&at);
        eprintln!(
            "SKIPPED defect_09_full_filesystem_midway_keeps_every_later_record: cannot mount a tmpfs (needs root)"
        );
        return;
    }
    let _guard = Mount(at.clone());
    let d = at.join("state");
    // Space to free once the filesystem is full.
    let filler = at.join("filler");
    std::fs::write(&filler, vec![0u8; 16 * 1024]).expect("filler");
    let (j, _) = Journal::open(&d, Fsync::Always, 1 << 30).expect("open");
    let mut ok = Vec::new();
    let mut failed = None;
    for i in 0..10_000 {
        let id = format!("t{i}");
        // Records of varied length so that the one that meets the end of the space is cut.
        let r = Record::Product { id: id.clone(), product: "x".repeat(1 + i % 97) };
        let before = journal_len(&d);
        match j.append_batch(&[reg(&id), r]) {
            Ok(()) => ok.push(id),
            Err(e) => {
                assert_eq!(journal_len(&d), before, "the partial record was cut away: {e}");
                failed = Some(id);
                break;
            }
        }
    }
    let failed = failed.expect("the filesystem filled up");
    eprintln!("tmpfs full after {} appends ({} journal bytes); {failed} failed", ok.len(), journal_len(&d));
    assert!(ok.len() > 10, "{} records fitted", ok.len());
    std::fs::remove_file(&filler).expect("free space");
    for i in 0..20 {
        let id = format!("after{i}");
        j.append(&reg(&id)).expect("append after space was freed");
        ok.push(id);
    }
    drop(j);
    let (_, rec) = Journal::open(&d, Fsync::Always, 1 << 30).expect("reopen");
    assert_eq!(rec.dropped, None);
    assert!(!rec.state.positions.contains_key(&failed));
    let mut want = ok;
    want.sort();
    assert_eq!(rec.state.positions.keys().cloned().collect::<Vec<_>>(), want, "every acknowledged record");
}

#[test]
fn defect_09_closed_id_is_remembered_after_pruning() {
    let d = dir("tombstones");
    let max = 64 * 1024;
    let (j, _) = Journal::open(&d, Fsync::Never, max).expect("open");
    let n = CLOSED_REMEMBERED + 1000;
    let t0 = tickguard::store::unix_ms();
    for i in 0..n {
        let id = format!("c{i}");
        j.append_batch(&[reg(&id), Record::Closed { id: id.clone(), how: (i % 4) as u8 }]).expect("append");
    }
    let state = j.state();
    assert!(d.join("snapshot.tg").exists(), "compacted");
    assert!(!state.positions.contains_key("c0"), "the first position itself was pruned");
    let first = j.closed("c0").expect("the first closed id is still known closed");
    assert_eq!(first.how, ClosedHow::Filled);
    assert!(first.at_unix_ms >= t0 && first.at_unix_ms <= tickguard::store::unix_ms() + 1);
    assert!(first.describe().starts_with("filled at 20"), "{}", first.describe());
    assert_eq!(j.closed("c1").map(|c| c.how), Some(ClosedHow::External));
    assert_eq!(j.closed("c2").map(|c| c.how), Some(ClosedHow::Resolved));
    assert_eq!(j.closed("c3").map(|c| c.how), Some(ClosedHow::Withdrawn));
    assert_eq!(j.closed("never"), None);
    // An open position is not closed.
    j.append(&reg("open1")).expect("append");
    assert_eq!(j.closed("open1"), None);
    // The query is current while running.
    j.append(&Record::Closed { id: "open1".into(), how: 1 }).expect("append");
    assert_eq!(j.closed("open1").map(|c| c.how), Some(ClosedHow::External));
    drop(j);

    // Across a restart (snapshot + journal) ...
    let (j, rec) = Journal::open(&d, Fsync::Never, max).expect("reopen");
    assert_eq!(rec.closed("c0"), Some(first));
    assert_eq!(j.closed("c0"), Some(first));
    assert_eq!(rec.state.closed_ids().count(), n + 1);
    assert_eq!(j.closed("open1").map(|c| c.how), Some(ClosedHow::External));
    // ... and after more compactions.
    for i in 0..2000 {
        j.append(&reg(&format!("o{i}"))).expect("append");
    }
    drop(j);
    let (j, rec) = Journal::open(&d, Fsync::Never, max).expect("reopen");
    assert_eq!(rec.closed("c0"), Some(first));
    assert_eq!(j.closed("c0"), Some(first));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn defect_06_product_survives_restart() {
    let d = dir("product");
    let (j, _) = Journal::open(&d, Fsync::Always, 4096).expect("open");
    j.append_batch(&[reg("intra"), product_record("intra", "I")]).expect("append");
    j.append(&reg("deliv")).expect("append");
    j.append(&product_record("deliv", "D")).expect("append");
    j.append(&reg("none")).expect("append");
    assert_eq!(j.product("intra").as_deref(), Some("I"));
    drop(j);
    let (j, rec) = Journal::open(&d, Fsync::Always, 4096).expect("reopen");
    assert_eq!(rec.state.positions["intra"].product.as_deref(), Some("I"));
    assert_eq!(rec.state.positions["deliv"].product.as_deref(), Some("D"));
    assert_eq!(rec.state.positions["none"].product, None);
    assert!(!d.join("snapshot.tg").exists());
    // Through a snapshot too.
    for i in 0..100 {
        j.append(&reg(&format!("fill{i}"))).expect("append");
    }
    drop(j);
    assert!(d.join("snapshot.tg").exists(), "compacted");
    let (j, rec) = Journal::open(&d, Fsync::Always, 4096).expect("reopen");
    assert!(rec.records < 100, "read from the snapshot");
    assert_eq!(rec.state.positions["intra"].product.as_deref(), Some("I"));
    assert_eq!(j.product("deliv").as_deref(), Some("D"));
    let _ = std::fs::remove_dir_all(&d);
}

// ----- the previous version's encoding, declared here as it was -----------------------------

#[derive(Serialize, Deserialize)]
enum OldRecord {
    Registered {
        id: String,
        generation: u32,
        symbol: String,
        side: u8,
        qty: i64,
        entry: i64,
        stop_loss: Option<i64>,
        take_profit: Option<i64>,
        blind: u8,
    },
    Levels {
        id: String,
        stop_loss: Option<i64>,
        take_profit: Option<i64>,
    },
    Decided {
        id: String,
        reason: u8,
        price: Option<i64>,
        source: u8,
        age_ms: u64,
        level: Option<i64>,
    },
    Reopened {
        id: String,
    },
    Intent {
        id: String,
        client_id: String,
        attempt: u16,
        qty: i64,
        sent_unix_ms: u64,
    },
    Outcome {
        id: String,
        client_id: String,
        kind: u8,
        executed: i64,
        price: Option<i64>,
    },
    Closed {
        id: String,
        how: u8,
    },
}

#[derive(Serialize, Deserialize)]
struct OldAttempt {
    client_id: String,
    attempt: u16,
    qty: i64,
    sent_unix_ms: u64,
    kind: Option<u8>,
    executed: i64,
    price: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct OldPosition {
    registered: OldRecord,
    stop_loss: Option<i64>,
    take_profit: Option<i64>,
    decided: Option<OldRecord>,
    attempts: Vec<OldAttempt>,
    closed: Option<u8>,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct OldState {
    positions: BTreeMap<String, OldPosition>,
    max_generation: u32,
    seq: u64,
}

fn old_reg(id: &str, generation: u32) -> OldRecord {
    OldRecord::Registered {
        id: id.into(),
        generation,
        symbol: "BOSCHLTD".into(),
        side: 0,
        qty: 1_000_000_000,
        entry: 73_500_000_000,
        stop_loss: Some(69_825_000_000),
        take_profit: None,
        blind: 0,
    }
}

fn old_frame<T: Serialize>(v: &T) -> Vec<u8> {
    let payload = postcard::to_stdvec(v).expect("encode");
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

#[test]
fn old_journal_format_still_loads() {
    let d = dir("old");
    let mut positions = BTreeMap::new();
    positions.insert(
        "old-open".to_string(),
        OldPosition {
            registered: old_reg("old-open", 3),
            stop_loss: Some(70_000_000_000),
            take_profit: None,
            decided: None,
            attempts: Vec::new(),
            closed: None,
            seq: 1,
        },
    );
    positions.insert(
        "old-closed".to_string(),
        OldPosition {
            registered: old_reg("old-closed", 4),
            stop_loss: Some(69_825_000_000),
            take_profit: None,
            decided: Some(OldRecord::Decided {
                id: "old-closed".into(),
                reason: 0,
                price: Some(57_500_000_000),
                source: 0,
                age_ms: 5,
                level: Some(69_825_000_000),
            }),
            attempts: vec![OldAttempt {
                client_id: "tg4-old-closed-1".into(),
                attempt: 1,
                qty: 1_000_000_000,
                sent_unix_ms: 1_767_000_000_000,
                kind: Some(0),
                executed: 1_000_000_000,
                price: Some(57_500_000_000),
            }],
            closed: Some(0),
            seq: 2,
        },
    );
    let snapshot = old_frame(&OldState { positions, max_generation: 4, seq: 9 });
    std::fs::write(d.join("snapshot.tg"), snapshot).expect("write snapshot");
    let mut journal = Vec::new();
    for r in [
        old_reg("j1", 5),
        OldRecord::Closed { id: "j1".into(), how: 1 },
        old_reg("j2", 6),
        OldRecord::Levels { id: "j2".into(), stop_loss: Some(1), take_profit: Some(2) },
        OldRecord::Reopened { id: "j2".into() },
        OldRecord::Intent {
            id: "j2".into(),
            client_id: "tg6-j2-1".into(),
            attempt: 1,
            qty: 5,
            sent_unix_ms: 1,
        },
        OldRecord::Outcome {
            id: "j2".into(),
            client_id: "tg6-j2-1".into(),
            kind: 1,
            executed: 2,
            price: Some(3),
        },
    ] {
        journal.extend(old_frame(&r));
    }
    std::fs::write(d.join("journal.tg"), &journal).expect("write journal");

    let (j, rec) = Journal::open(&d, Fsync::Always, 4096).expect("open the old store");
    assert_eq!(rec.dropped, None, "every old record decodes");
    assert_eq!(rec.records, 7);
    let s = &rec.state;
    assert_eq!(s.max_generation, 6);
    assert_eq!(
        s.positions.keys().cloned().collect::<Vec<_>>(),
        sorted(&["j1", "j2", "old-closed", "old-open"])
    );
    assert_eq!(s.positions["old-open"].stop_loss, Some(70_000_000_000));
    assert_eq!(s.positions["old-closed"].filled(), 1_000_000_000);
    assert_eq!(s.positions["j2"].take_profit, Some(2));
    assert_eq!(s.positions["j2"].filled(), 2);
    assert!(s.positions.values().all(|p| p.product.is_none()));
    for p in s.positions.values() {
        assert!(tickguard::store::restored(p).is_some(), "restorable");
    }
    // Closes from the old version are tombstones with an unknown time.
    let c = rec.closed("old-closed").expect("closed in the old snapshot");
    assert_eq!((c.how, c.at_unix_ms), (ClosedHow::Filled, 0));
    assert_eq!(c.describe(), "filled at an unknown time");
    assert_eq!(rec.closed("j1").map(|c| c.how), Some(ClosedHow::External));
    assert_eq!(rec.closed("old-open"), None);
    assert_eq!(rec.closed("j2"), None);

    // New records on top, a compaction into the new snapshot format, and a restart.
    j.append(&product_record("j2", "I")).expect("append");
    for i in 0..100 {
        j.append(&reg(&format!("n{i}"))).expect("append");
    }
    drop(j);
    let (_, rec) = Journal::open(&d, Fsync::Always, 4096).expect("reopen");
    assert!(rec.records < 100, "read from the new snapshot");
    assert_eq!(rec.state.positions["j2"].product.as_deref(), Some("I"));
    assert_eq!(rec.closed("old-closed").map(|c| c.how), Some(ClosedHow::Filled));
    assert_eq!(rec.closed("j1").map(|c| c.how), Some(ClosedHow::External));
    assert_eq!(rec.state.positions["old-open"].stop_loss, Some(70_000_000_000));
    let _ = std::fs::remove_dir_all(&d);
}

/// Writers sharing fsyncs (group commit) while some fsyncs and writes fail: every record
/// answered `Ok` is recovered, and no record answered with an error comes back.
#[test]
fn defect_09_concurrent_writers_get_exactly_what_is_on_disk() {
    let d = dir("group");
    let (j, _) = Journal::open(&d, Fsync::Always, 16 * 1024).expect("open");
    let j = std::sync::Arc::new(j);
    let plan = FaultPlan::new();
    j.set_faults(plan.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let injector = {
        let (plan, stop) = (plan.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..200u64 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match i % 3 {
                    0 => plan.fail_fsyncs(1),
                    1 => plan.fail_write(2, 11),
                    _ => plan.fail_truncates(1),
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                let mut failed = Vec::new();
                for i in 0..150 {
                    let id = format!("w{w}-{i}");
                    match j.append(&reg(&id)) {
                        Ok(()) => ok.push(id),
                        Err(_) => failed.push(id),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for w in writers {
        let (o, f) = w.join().expect("writer");
        ok.extend(o);
        failed.extend(f);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    injector.join().expect("injector");
    eprintln!("{} appends acknowledged, {} refused", ok.len(), failed.len());
    assert!(!failed.is_empty(), "faults were injected");
    assert!(ok.len() > 100, "{} appends succeeded", ok.len());
    // A last append repairs the journal if the last fault left it broken.
    let mut last = Err(());
    for _ in 0..5 {
        last = j.append(&reg("last")).map_err(|_| ());
        if last.is_ok() {
            break;
        }
    }
    assert!(last.is_ok(), "the journal takes records again once the faults stop");
    ok.push("last".into());
    let live: Vec<String> = j.state().positions.keys().cloned().collect();
    drop(j);
    let (_, rec) = Journal::open(&d, Fsync::Always, 16 * 1024).expect("reopen");
    assert_eq!(rec.dropped, None);
    let got: Vec<String> = rec.state.positions.keys().cloned().collect();
    ok.sort();
    assert_eq!(got, ok, "exactly the acknowledged records ({} failed)", failed.len());
    assert_eq!(live, ok, "the in-memory state matches the disk");
    let _ = std::fs::remove_dir_all(&d);
}
