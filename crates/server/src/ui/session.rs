//! Browser sessions: a random id in a cookie, the session itself kept server-side in the
//! store (tree `ui_sessions`, keyed by the SHA-256 of the id so a copy of the store does not
//! hold live cookies), with an expiry and a per-session CSRF token.
//!
//! A visitor gets an anonymous session (CSRF token only) when the login page is shown; a
//! successful login replaces it with a new id (no session fixation).

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use cutover_store::{Store, TypedTree};

use crate::auth::Principal;
use crate::ServerError;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "cutover_session";
/// Store tree holding sessions.
pub const TREE: &str = "ui_sessions";
/// How long a login lasts.
pub const LOGIN_TTL_MS: u64 = 12 * 3600 * 1000;
/// How long an anonymous (login page) session lasts.
pub const ANONYMOUS_TTL_MS: u64 = 3600 * 1000;

/// What the server keeps about one browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The logged-in principal; `None` before login.
    pub principal: Option<Principal>,
    /// Token every form of this session carries.
    pub csrf: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// The session store.
#[derive(Clone)]
pub struct Sessions {
    tree: TypedTree<Session>,
}

impl Sessions {
    pub fn open(store: &Store) -> Result<Sessions, ServerError> {
        Ok(Sessions {
            tree: store.typed_tree(TREE)?,
        })
    }

    /// Create a session and return its id (the cookie value) with it.
    pub fn create(
        &self,
        principal: Option<Principal>,
        now_ms: u64,
    ) -> Result<(String, Session), ServerError> {
        let ttl = if principal.is_some() {
            LOGIN_TTL_MS
        } else {
            ANONYMOUS_TTL_MS
        };
        let id = random_token()?;
        let session = Session {
            principal,
            csrf: random_token()?,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + ttl,
        };
        self.tree.insert(&storage_key(&id), &session)?;
        Ok((id, session))
    }

    /// The live session with this id; expired sessions are removed and not returned.
    pub fn get(&self, id: &str, now_ms: u64) -> Result<Option<Session>, ServerError> {
        if !looks_like_token(id) {
            return Ok(None);
        }
        let key = storage_key(id);
        match self.tree.get(&key)? {
            Some(s) if s.expires_at_ms > now_ms => Ok(Some(s)),
            Some(_) => {
                self.tree.remove(&key)?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    pub fn remove(&self, id: &str) -> Result<(), ServerError> {
        if looks_like_token(id) {
            self.tree.remove(&storage_key(id))?;
        }
        Ok(())
    }

    /// Drop every expired session; returns how many.
    pub fn purge_expired(&self, now_ms: u64) -> Result<usize, ServerError> {
        let mut removed = 0;
        for (key, session) in self.tree.scan_prefix("")? {
            if session.expires_at_ms <= now_ms {
                self.tree.remove(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn storage_key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A session id or CSRF token: 256 random bits, hex.
fn random_token() -> Result<String, ServerError> {
    cutover_model::random_token_hex(32).map_err(|e| ServerError::Internal(e.to_string()))
}

fn looks_like_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The session id from the request's cookies.
pub fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().to_string())
}

/// Whether cookies must be `Secure`: the request came over TLS through a proxy
/// (`X-Forwarded-Proto: https`) or `CUTOVER_UI_SECURE_COOKIES` is set to `1`/`true`.
pub fn served_over_tls(headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let configured = std::env::var("CUTOVER_UI_SECURE_COOKIES")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    forwarded || configured
}

/// `Set-Cookie` value carrying session `id`.
pub fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    let mut value = format!("{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/");
    if secure {
        value.push_str("; Secure");
    }
    HeaderValue::from_str(&value).expect("session cookies are ascii")
}

/// `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let mut value = format!(
        "{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
    );
    if secure {
        value.push_str("; Secure");
    }
    HeaderValue::from_str(&value).expect("session cookies are ascii")
}

/// Add a `Set-Cookie` header.
pub fn add_cookie(headers: &mut HeaderMap, value: HeaderValue) {
    headers.append(SET_COOKIE, value);
}

/// Compare a submitted CSRF token with the session's, in time independent of where they
/// differ.
pub fn csrf_matches(session: &Session, submitted: Option<&str>) -> bool {
    let Some(submitted) = submitted else {
        return false;
    };
    let (a, b) = (session.csrf.as_bytes(), submitted.as_bytes());
    !a.is_empty() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_flags() {
        let plain = set_cookie("abc", false);
        assert_eq!(
            plain.to_str().unwrap(),
            "cutover_session=abc; HttpOnly; SameSite=Strict; Path=/"
        );
        let secure = set_cookie("abc", true);
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
        let cleared = clear_cookie(true).to_str().unwrap().to_string();
        assert!(cleared.contains("Max-Age=0") && cleared.contains("HttpOnly"));
    }

    #[test]
    fn tls_is_detected_from_forwarded_proto() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(served_over_tls(&headers));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; cutover_session=xyz ; b=2"),
        );
        assert_eq!(cookie_id(&headers).as_deref(), Some("xyz"));
        assert_eq!(cookie_id(&HeaderMap::new()), None);
    }

    #[test]
    fn sessions_expire_and_are_keyed_by_hash() {
        let store = Store::temporary().unwrap();
        let sessions = Sessions::open(&store).unwrap();
        let (id, session) = sessions.create(None, 1_000).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, session.csrf);
        assert!(sessions.get(&id, 2_000).unwrap().is_some());
        let tree: TypedTree<Session> = store.typed_tree(TREE).unwrap();
        assert!(tree.get(&id).unwrap().is_none(), "raw ids are not stored");
        assert!(sessions
            .get(&id, 1_000 + ANONYMOUS_TTL_MS)
            .unwrap()
            .is_none());
        assert!(tree.values().unwrap().is_empty(), "expired session removed");
        assert!(sessions.get("not-a-token", 0).unwrap().is_none());
    }

    #[test]
    fn purge_removes_only_expired() {
        let store = Store::temporary().unwrap();
        let sessions = Sessions::open(&store).unwrap();
        sessions.create(None, 0).unwrap();
        let (live, _) = sessions.create(None, 10 * ANONYMOUS_TTL_MS).unwrap();
        assert_eq!(sessions.purge_expired(ANONYMOUS_TTL_MS + 1).unwrap(), 1);
        assert!(sessions.get(&live, ANONYMOUS_TTL_MS + 1).unwrap().is_some());
    }

    #[test]
    fn csrf_must_match_exactly() {
        let session = Session {
            principal: None,
            csrf: "a".repeat(64),
            created_at_ms: 0,
            expires_at_ms: 1,
        };
        assert!(csrf_matches(&session, Some(&"a".repeat(64))));
        assert!(!csrf_matches(&session, Some(&"b".repeat(64))));
        assert!(!csrf_matches(&session, Some("a")));
        assert!(!csrf_matches(&session, Some("")));
        assert!(!csrf_matches(&session, None));
    }
}
