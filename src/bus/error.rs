//! What every edge's error says besides its message: whether trying again can help.
//!
//! Each edge has its own error enum (`net::http::HttpError`, `store::StoreError`, the brokers'
//! and the feed's); they all implement [`EdgeError`], so the runtime decides retry or stop
//! from the type, never by reading a message.

/// Whether an operation that failed may succeed when tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Transient (network, timeout, 5xx, a busy venue): retry with backoff.
    Recoverable,
    /// Retrying the same thing cannot help (bad credentials, a refused request, a broken
    /// configuration, a full disk): surface it and stop that operation.
    Fatal,
}

/// An edge's error: a message (`Display`) and a [`Severity`].
pub trait EdgeError: std::error::Error + Send + Sync + 'static {
    /// Whether retrying can help.
    fn severity(&self) -> Severity;
    /// Shorthand for `severity() == Recoverable`.
    fn recoverable(&self) -> bool {
        self.severity() == Severity::Recoverable
    }
}
