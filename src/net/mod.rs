//! The network edge: name resolution with fallbacks, TLS, WebSocket framing and HTTP.

pub mod dns;
pub mod http;
pub mod tls;
pub mod ws;
