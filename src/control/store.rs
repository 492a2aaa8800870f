//! The store's journal as the control plane sees it ([`super::Journal`]).

use std::time::Duration;

impl super::Journal for crate::store::Journal {
    fn sync(&self, _timeout: Duration) -> Result<(), String> {
        // The engine answers a command after its record's group fsync (the journal writer
        // thread); this barrier makes it durable under every fsync policy and costs no fsync of
        // its own under the default `Fsync::Always`.
        crate::store::Journal::barrier(self).map_err(|e| e.to_string())
    }
    fn writable(&self) -> Result<(), String> {
        crate::store::Journal::sync(self).map_err(|e| format!("journal not writable: {e}"))
    }
    fn bytes(&self) -> Option<u64> {
        Some(crate::store::Journal::bytes(self))
    }
    fn counters(&self) -> Option<(u64, u64)> {
        let s = crate::store::Journal::stats(self);
        Some((s.fsyncs(), s.queue_waits()))
    }
    fn closed(&self, id: &str) -> Option<(&'static str, u64)> {
        crate::store::Journal::closed(self, id).map(|c| (c.how_str(), c.at_unix_ms))
    }
    fn product_of(&self, id: &str) -> Option<String> {
        crate::store::Journal::product(self, id)
    }
    fn product(&self, id: &str, product: &str) -> Result<(), String> {
        self.append(&crate::store::product_record(id, product)).map_err(|e| e.to_string())
    }
}
