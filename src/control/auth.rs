//! Credentials of the API: the bearer token of `api.token_file`, and browser sessions.
//!
//! - Scripts send `Authorization: Bearer <token>`. The token is compared in constant time
//!   (SHA-256 of both sides, then every byte of the digests, so neither content nor length
//!   leaks through timing).
//! - The status page logs in once with the token (`POST /api/v1/session`) and gets a session
//!   cookie (`HttpOnly; SameSite=Strict`, `Secure` over TLS) plus a CSRF token that it sends in
//!   the `X-CSRF-Token` header of every mutation. A cookie without its CSRF token is no
//!   credential.
//! - Sessions live in memory, at most [`MAX_SESSIONS`] (the oldest is dropped), each for
//!   [`SESSION_TTL`]. A restart logs everyone out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// Sessions held at once; a new login beyond this drops the oldest.
pub const MAX_SESSIONS: usize = 32;
/// Lifetime of a session.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Name of the session cookie over plain HTTP.
pub const COOKIE: &str = "tg_session";
/// Name of the session cookie over TLS: the `__Host-` prefix makes the browser refuse it
/// unless it is `Secure`, has `Path=/` and no `Domain`, so no other host (a sibling
/// subdomain, a plain-HTTP page on the LAN) can set or shadow it.
pub const COOKIE_TLS: &str = "__Host-tg_session";

/// The session cookie's name for this transport.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { COOKIE_TLS } else { COOKIE }
}
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// `n` random bytes from the OS, as lowercase hex; `None` if the OS has no randomness.
pub fn random_hex(n: usize) -> Option<String> {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn digest(s: &str) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
}

/// Constant-time equality of two secrets (of any lengths).
pub fn secret_eq(a: &str, b: &str) -> bool {
    let (da, db) = (digest(a), digest(b));
    // Both sides are 32-byte digests: the fold looks at every byte whatever differs, and a
    // timing difference would only tell about the hashes, not the secret.
    da.as_ref().iter().zip(db.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Session {
    id: String,
    csrf: String,
    expires: Instant,
}

/// Who a request is, as far as credentials go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A valid bearer token.
    Bearer,
    /// A valid session cookie with its CSRF token.
    Session,
    /// A valid session cookie without (or with a wrong) CSRF token: enough for reads only.
    CookieOnly,
    /// Nothing valid.
    None,
}

/// The token and the sessions.
pub struct Auth {
    token: Option<String>,
    sessions: Mutex<Vec<Session>>,
}

impl Auth {
    /// Credentials checked against `token` (`None`: no token configured, so no mutation is
    /// possible).
    pub fn new(token: Option<String>) -> Auth {
        Auth { token, sessions: Mutex::new(Vec::new()) }
    }

    /// True when a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// True when `candidate` is the configured token.
    pub fn token_ok(&self, candidate: &str) -> bool {
        self.token.as_deref().is_some_and(|t| secret_eq(t, candidate))
    }

    /// Starts a session for a correct token; returns `(session id, csrf token)`.
    pub fn login(&self, candidate: &str) -> Option<(String, String)> {
        if !self.token_ok(candidate) {
            return None;
        }
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let now = crate::bus::clock::mono_std();
        let mut s = self.sessions.lock().ok()?;
        s.retain(|x| x.expires > now);
        if s.len() >= MAX_SESSIONS {
            s.remove(0);
        }
        s.push(Session { id: id.clone(), csrf: csrf.clone(), expires: now + SESSION_TTL });
        Some((id, csrf))
    }

    /// Ends the session with this id.
    pub fn logout(&self, id: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|x| !secret_eq(&x.id, id));
        }
    }

    /// The CSRF token of a live session.
    pub fn session_csrf(&self, id: &str) -> Option<String> {
        let now = crate::bus::clock::mono_std();
        let s = self.sessions.lock().ok()?;
        s.iter().find(|x| x.expires > now && secret_eq(&x.id, id)).map(|x| x.csrf.clone())
    }

    /// Classifies the credentials of a request: its `Authorization` header, the session id of
    /// its cookie ([`session_cookie`]) and its CSRF header.
    pub fn check(
        &self,
        authorization: Option<&str>,
        session: Option<&str>,
        csrf: Option<&str>,
    ) -> Credential {
        if let Some(tok) = authorization.and_then(bearer) {
            // A wrong bearer token is no credential, whatever cookie comes with it.
            return if self.token_ok(tok) { Credential::Bearer } else { Credential::None };
        }
        let Some(sid) = session else {
            return Credential::None;
        };
        match self.session_csrf(sid) {
            Some(want) if csrf.is_some_and(|c| secret_eq(&want, c)) => Credential::Session,
            Some(_) => Credential::CookieOnly,
            None => Credential::None,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(h: &str) -> Option<&str> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// The session id in a `Cookie` header: over TLS only the `__Host-` cookie counts.
pub fn session_cookie(h: &str, secure: bool) -> Option<&str> {
    let name = cookie_name(secure);
    h.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        cookie_name(secure),
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

/// True when the request's `Origin` (if any) names the host it was sent to. A request from
/// another page (or `Origin: null`) is refused; requests without `Origin` (curl, scripts,
/// same-origin GETs) pass.
pub fn same_origin(origin: Option<&str>, host: Option<&str>, secure: bool) -> bool {
    let Some(origin) = origin else { return true };
    let Some(host) = host else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" if !secure => 80,
        "https" if secure => 443,
        _ => return false,
    };
    let norm = |s: &str, default: u16| -> Option<(String, u16)> {
        let s = s.trim().trim_end_matches('/');
        let (h, p) = match s.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
            _ => (s, default),
        };
        Some((h.to_ascii_lowercase(), p))
    };
    match (norm(rest, default), norm(host, default)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_sessions() {
        let a = Auth::new(Some("s3cret-token".into()));
        assert_eq!(a.check(Some("Bearer s3cret-token"), None, None), Credential::Bearer);
        assert_eq!(a.check(Some("bearer  s3cret-token "), None, None), Credential::Bearer);
        assert_eq!(a.check(Some("Bearer nope"), None, None), Credential::None);
        assert_eq!(a.check(Some("Basic s3cret-token"), None, None), Credential::None);
        assert!(a.login("nope").is_none());
        let (sid, csrf) = a.login("s3cret-token").expect("login");
        let cookie = format!("other=1; {COOKIE}={sid}");
        assert_eq!(a.check(None, session_cookie(&cookie, false), Some(&csrf)), Credential::Session);
        assert_eq!(a.check(None, session_cookie(&cookie, false), None), Credential::CookieOnly);
        assert_eq!(a.check(None, session_cookie(&cookie, false), Some("x")), Credential::CookieOnly);
        assert_eq!(a.check(None, Some("tg_session=forged"), Some(&csrf)), Credential::None);
        a.logout(&sid);
        assert_eq!(a.check(None, session_cookie(&cookie, false), Some(&csrf)), Credential::None);
        // Over TLS only the `__Host-` cookie counts, and it is set `Secure`.
        assert_eq!(session_cookie("tg_session=a", true), None);
        assert_eq!(session_cookie("tg_session=a; __Host-tg_session=b", true), Some("b"));
        assert!(set_cookie("x", true).starts_with("__Host-tg_session=x;"));
        assert!(set_cookie("x", true).contains("; Secure") && set_cookie("x", true).contains("Path=/"));
        assert!(!set_cookie("x", false).contains("Secure"));
        let none = Auth::new(None);
        assert!(none.login("").is_none());
        assert_eq!(none.check(Some("Bearer "), None, None), Credential::None);
    }

    #[test]
    fn sessions_are_bounded() {
        let a = Auth::new(Some("t".into()));
        let first = a.login("t").expect("login").0;
        for _ in 0..MAX_SESSIONS {
            a.login("t").expect("login");
        }
        assert!(a.session_csrf(&first).is_none(), "the oldest session was dropped");
    }

    #[test]
    fn origins() {
        assert!(same_origin(None, Some("x:1"), false));
        assert!(same_origin(Some("http://127.0.0.1:8000"), Some("127.0.0.1:8000"), false));
        assert!(same_origin(Some("http://box"), Some("BOX:80"), false));
        assert!(same_origin(Some("https://box"), Some("box"), true));
        assert!(!same_origin(Some("http://evil:8000"), Some("127.0.0.1:8000"), false));
        assert!(!same_origin(Some("null"), Some("127.0.0.1:8000"), false));
        assert!(!same_origin(Some("https://127.0.0.1:8000"), Some("127.0.0.1:8000"), false));
        assert!(!same_origin(Some("http://127.0.0.1:8000"), None, false));
        assert!(same_origin(Some("http://[::1]:8000"), Some("[::1]:8000"), false));
    }

    #[test]
    fn constant_time_compare() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
        assert_eq!(random_hex(16).map(|s| s.len()), Some(32));
    }
}
