//! The store's journal as the control plane sees it ([`super::Journal`]).

use std::time::Duration;

impl super::Journal for crate::store::Journal {
    fn sync(&self, _timeout: Duration) -> Result<(), String> {
        // The engine task appends (and, with the default `Fsync::Always`, fsyncs) a command's
        // record before it replies; this makes it durable under every fsync policy.
        crate::store::Journal::sync(self).map_err(|e| e.to_string())
    }
    fn writable(&self) -> Result<(), String> {
        crate::store::Journal::sync(self).map_err(|e| format!("journal not writable: {e}"))
    }
    fn bytes(&self) -> Option<u64> {
        Some(crate::store::Journal::bytes(self))
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
