//! Torn writes and bit flips: for a journal of N records, truncating at every byte offset of
//! the last record and flipping every byte of it recovers exactly N-1 or N records, never
//! panics, and leaves a journal that takes new records.

use std::path::PathBuf;

use tickguard::store::{Fsync, Journal, Record};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tickguard-torn-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| match i % 3 {
            0 => Record::Registered {
                id: format!("p{i}"),
                generation: i as u32,
                symbol: "BOSCHLTD".into(),
                side: 0,
                qty: 1_000_000_000,
                entry: 73_500_000_000,
                stop_loss: Some(69_825_000_000),
                take_profit: None,
                blind: 0,
            },
            1 => Record::Intent {
                id: format!("p{}", i - 1),
                client_id: format!("tg{i}-p{}-1", i - 1),
                attempt: 1,
                qty: 1_000_000_000,
                sent_unix_ms: 1_767_000_000_000 + i as u64,
            },
            _ => Record::Outcome {
                id: format!("p{}", i - 2),
                client_id: format!("tg{}-p{}-1", i - 1, i - 2),
                kind: 0,
                executed: 1_000_000_000,
                price: Some(57_500_000_000),
            },
        })
        .collect()
}

fn write_journal(d: &std::path::Path, recs: &[Record]) -> (Vec<u8>, usize) {
    let (j, _) = Journal::open(d, Fsync::Never, 1 << 30).expect("open");
    let mut last_start = 0;
    for r in recs {
        last_start = j.bytes() as usize;
        j.append(r).expect("append");
    }
    drop(j);
    (std::fs::read(d.join("journal.tg")).expect("read"), last_start)
}

fn recovered_count(d: &std::path::Path, bytes: &[u8]) -> usize {
    std::fs::write(d.join("journal.tg"), bytes).expect("write");
    let (j, rec) = Journal::open(d, Fsync::Never, 1 << 30).expect("recovery never fails on bad bytes");
    // The journal stays usable after dropping a tail.
    j.append(&Record::Reopened { id: "after".into() }).expect("append after recovery");
    rec.records
}

#[test]
fn truncation_at_every_offset_of_the_last_record() {
    let d = dir("cut");
    let n = 12;
    let (bytes, last) = write_journal(&d, &records(n));
    for cut in last..=bytes.len() {
        let got = recovered_count(&d, &bytes[..cut]);
        let want = if cut == bytes.len() { n } else { n - 1 };
        assert_eq!(got, want, "cut at {cut} of {}", bytes.len());
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn flipping_every_byte_of_the_last_record() {
    let d = dir("flip");
    let n = 12;
    let (bytes, last) = write_journal(&d, &records(n));
    for i in last..bytes.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            let got = recovered_count(&d, &b);
            assert!(got == n - 1 || got == n, "flip {mask:#x} at {i}: {got} records");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn garbage_never_panics() {
    let d = dir("garbage");
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for len in [0usize, 1, 7, 8, 9, 64, 4096] {
        let mut b = vec![0u8; len];
        for x in b.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *x = seed as u8;
        }
        let _ = recovered_count(&d, &b);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn compaction_keeps_the_state() {
    let d = dir("compact");
    let recs = records(300);
    let (j, _) = Journal::open(&d, Fsync::Never, 4096).expect("open");
    for r in &recs {
        j.append(r).expect("append");
    }
    let before = j.state();
    drop(j);
    assert!(d.join("snapshot.tg").exists(), "compaction wrote a snapshot");
    let (_, rec) = Journal::open(&d, Fsync::Never, 4096).expect("reopen");
    assert_eq!(rec.state.positions.len(), before.positions.len());
    for (id, p) in &before.positions {
        assert_eq!(rec.state.positions[id].filled(), p.filled(), "{id}");
        assert_eq!(rec.state.positions[id].attempts, p.attempts, "{id}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
