//! The memory the closed-id tombstones take when full ([`CLOSED_TOMBSTONES`]), measured with a
//! counting allocator: the appliance targets < 8 MiB RSS, so the full set must stay small.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tickguard::limits::CLOSED_TOMBSTONES;
use tickguard::store::{Record, State};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn a_full_tombstone_set_stays_small() {
    let mut s = State::default();
    let before = LIVE.load(Ordering::SeqCst);
    // Ids as a grid bot makes them, closed one after another; more than the capacity.
    for i in 0..CLOSED_TOMBSTONES + 5000 {
        s.apply(&Record::ClosedAt {
            id: format!("grid-{i:08}-x"),
            how: 0,
            at_unix_ms: 1_764_000_000_000 + i as u64,
        });
    }
    let heap = LIVE.load(Ordering::SeqCst) - before;
    let snapshot = postcard::to_stdvec(&s).expect("encode").len();
    eprintln!(
        "{} tombstones: {heap} heap bytes ({} per id), snapshot {snapshot} bytes",
        s.tombstones.len(),
        heap / s.tombstones.len() as isize
    );
    assert!(s.tombstones.len() <= CLOSED_TOMBSTONES);
    assert!(s.closed("grid-00000000-x").is_none(), "the oldest were forgotten");
    assert!(s.closed(&format!("grid-{:08}-x", CLOSED_TOMBSTONES + 4999)).is_some());
    assert!(heap < 2 * 1024 * 1024, "{heap} bytes");
    assert!(snapshot < 1024 * 1024, "{snapshot} bytes");
}
