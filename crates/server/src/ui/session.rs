//! Browser sessions: a random id in a cookie, the session itself kept server-side in the
//! store (tree `ui_sessions`, keyed by the SHA-256 of the id so a copy of the store does not
//! hold live cookies), with an expiry and a per-session CSRF token.
//!
//! Nothing is stored before login: the login form is protected by a signed double-submit
//! cookie ([`LoginCsrf`]: a random value and its HMAC-SHA256 under a key of this control
//! plane, the same value in the form). A session is created only by a successful login,
//! with a new id (no session fixation). Expired sessions are refused when read and purged
//! at start, hourly and at every login.

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use cutover_store::{Store, TypedTree};

use crate::auth::Principal;
use crate::ServerError;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "cutover_session";
/// Name of the login form's signed CSRF cookie.
pub const LOGIN_COOKIE_NAME: &str = "cutover_login";
/// Store tree holding sessions.
pub const TREE: &str = "ui_sessions";
/// How long a login lasts.
pub const LOGIN_TTL_MS: u64 = 12 * 3600 * 1000;
/// How long a login form (its signed CSRF cookie) stays valid.
pub const LOGIN_FORM_TTL_MS: u64 = 3600 * 1000;
/// Setting (store `kv`) holding the key that signs login CSRF cookies.
const LOGIN_KEY_SETTING: &str = "ui.login_csrf_key";

/// What the server keeps about one browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The logged-in principal (`None` only in sessions of older versions, which stored
    /// anonymous ones; they are refused).
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

    /// Create the session of a successful login and return its id (the cookie value)
    /// with it.
    pub fn create(
        &self,
        principal: Principal,
        now_ms: u64,
    ) -> Result<(String, Session), ServerError> {
        let id = random_token()?;
        let session = Session {
            principal: Some(principal),
            csrf: random_token()?,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + LOGIN_TTL_MS,
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

    /// How many sessions the store holds (live or not yet purged).
    pub fn count(&self) -> Result<usize, ServerError> {
        Ok(self.tree.values()?.len())
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
    cookie_value(headers, COOKIE_NAME)
}

/// The value of cookie `name` in the request's cookies.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_string())
}

/// Whether cookies must be `Secure`: the request came over this control plane's TLS
/// listener ([`crate::door::ServedOverTls`]), over TLS through a proxy
/// (`X-Forwarded-Proto: https`), or `CUTOVER_UI_SECURE_COOKIES` is set to `1`/`true`.
pub fn served_over_tls(headers: &HeaderMap, extensions: &axum::http::Extensions) -> bool {
    let listener = extensions.get::<crate::door::ServedOverTls>().is_some();
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let configured = std::env::var("CUTOVER_UI_SECURE_COOKIES")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    listener || forwarded || configured
}

/// Extractor: whether this request's cookies must be `Secure` ([`served_over_tls`]).
pub struct SecureCookies(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for SecureCookies {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SecureCookies(served_over_tls(
            &parts.headers,
            &parts.extensions,
        )))
    }
}

fn cookie(name: &str, value: &str, secure: bool, max_age_s: Option<u64>) -> HeaderValue {
    let mut text = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/");
    if let Some(age) = max_age_s {
        text.push_str(&format!("; Max-Age={age}"));
        if age == 0 {
            text.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        }
    }
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).expect("cookies are ascii")
}

/// `Set-Cookie` value carrying session `id`.
pub fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    cookie(COOKIE_NAME, id, secure, None)
}

/// `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    cookie(COOKIE_NAME, "", secure, Some(0))
}

// ----- the login form's signed double-submit cookie -----

type HmacSha256 = Hmac<Sha256>;

/// The key that signs login CSRF cookies: 256 random bits made on first use and kept in the
/// store (whose files are the control plane owner's alone), so a restart keeps open login
/// forms valid.
pub fn login_key(store: &Store) -> Result<[u8; 32], ServerError> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hex_key) = store.kv_get::<String>(LOGIN_KEY_SETTING)? {
        let mut key = [0u8; 32];
        if hex::decode_to_slice(&hex_key, &mut key).is_ok() {
            return Ok(key);
        }
        tracing::warn!("the login csrf key in the store is malformed; making a new one");
    }
    let key: [u8; 32] =
        cutover_model::random_bytes().map_err(|e| ServerError::Internal(e.to_string()))?;
    store.kv_set(LOGIN_KEY_SETTING, &hex::encode(key))?;
    Ok(key)
}

/// The login form's CSRF proof: a random value, in a cookie signed with the control
/// plane's key (`<value>.<expires ms>.<HMAC-SHA256 hex>`) and in the form. Forging one
/// needs the key; a value planted by another site without its signature is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginCsrf {
    /// What the form carries.
    pub value: String,
    pub expires_at_ms: u64,
    signature: String,
}

impl LoginCsrf {
    /// A fresh proof valid for [`LOGIN_FORM_TTL_MS`].
    pub fn issue(key: &[u8; 32], now_ms: u64) -> Result<LoginCsrf, ServerError> {
        let value = random_token()?;
        let expires_at_ms = now_ms + LOGIN_FORM_TTL_MS;
        let signature = hex::encode(
            Self::mac(key, &value, expires_at_ms)
                .finalize()
                .into_bytes(),
        );
        Ok(LoginCsrf {
            value,
            expires_at_ms,
            signature,
        })
    }

    fn mac(key: &[u8; 32], value: &str, expires_at_ms: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes keys of any length");
        mac.update(b"cutover login csrf\0");
        mac.update(value.as_bytes());
        mac.update(b".");
        mac.update(expires_at_ms.to_string().as_bytes());
        mac
    }

    /// The proof in the request's cookie, when its signature is this control plane's (in
    /// constant time) and it has not expired.
    pub fn from_request(key: &[u8; 32], headers: &HeaderMap, now_ms: u64) -> Option<LoginCsrf> {
        let text = cookie_value(headers, LOGIN_COOKIE_NAME)?;
        let mut parts = text.split('.');
        let (value, expires, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !looks_like_token(value) || !looks_like_token(signature) {
            return None;
        }
        let expires_at_ms: u64 = expires.parse().ok()?;
        let signature_bytes = hex::decode(signature).ok()?;
        Self::mac(key, value, expires_at_ms)
            .verify_slice(&signature_bytes)
            .ok()?;
        (expires_at_ms > now_ms).then(|| LoginCsrf {
            value: value.to_string(),
            expires_at_ms,
            signature: signature.to_string(),
        })
    }

    /// Whether the form carries this proof's value (compared in constant time).
    pub fn matches(&self, submitted: Option<&str>) -> bool {
        let Some(submitted) = submitted else {
            return false;
        };
        bool::from(self.value.as_bytes().ct_eq(submitted.as_bytes()))
    }

    /// `Set-Cookie` value carrying this proof.
    pub fn set_cookie(&self, secure: bool, now_ms: u64) -> HeaderValue {
        let value = format!("{}.{}.{}", self.value, self.expires_at_ms, self.signature);
        let age = self.expires_at_ms.saturating_sub(now_ms) / 1000;
        cookie(LOGIN_COOKIE_NAME, &value, secure, Some(age.max(1)))
    }

    /// `Set-Cookie` value that deletes the login cookie (after a successful login).
    pub fn clear_cookie(secure: bool) -> HeaderValue {
        cookie(LOGIN_COOKIE_NAME, "", secure, Some(0))
    }
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

    fn someone() -> Principal {
        Principal {
            name: "alice".to_string(),
            person: "alice".to_string(),
            socket_peer: false,
            grants: vec![],
        }
    }

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
    fn tls_is_detected_from_the_listener_and_from_forwarded_proto() {
        let mut headers = HeaderMap::new();
        let mut extensions = axum::http::Extensions::new();
        assert!(!served_over_tls(&headers, &extensions));
        extensions.insert(crate::door::ServedOverTls);
        assert!(served_over_tls(&headers, &extensions));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(served_over_tls(&headers, &axum::http::Extensions::new()));
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
        let (id, session) = sessions.create(someone(), 1_000).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, session.csrf);
        assert!(sessions.get(&id, 2_000).unwrap().is_some());
        let tree: TypedTree<Session> = store.typed_tree(TREE).unwrap();
        assert!(tree.get(&id).unwrap().is_none(), "raw ids are not stored");
        assert!(sessions.get(&id, 1_000 + LOGIN_TTL_MS).unwrap().is_none());
        assert!(tree.values().unwrap().is_empty(), "expired session removed");
        assert!(sessions.get("not-a-token", 0).unwrap().is_none());
    }

    #[test]
    fn purge_removes_only_expired() {
        let store = Store::temporary().unwrap();
        let sessions = Sessions::open(&store).unwrap();
        sessions.create(someone(), 0).unwrap();
        let (live, _) = sessions.create(someone(), 10 * LOGIN_TTL_MS).unwrap();
        assert_eq!(sessions.purge_expired(LOGIN_TTL_MS + 1).unwrap(), 1);
        assert_eq!(sessions.count().unwrap(), 1);
        assert!(sessions.get(&live, LOGIN_TTL_MS + 1).unwrap().is_some());
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

    fn with_login_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; {LOGIN_COOKIE_NAME}={value}")).unwrap(),
        );
        headers
    }

    /// `name=value` of a `Set-Cookie` value, as a browser sends it back.
    fn sent_back(set_cookie: &HeaderValue) -> String {
        let text = set_cookie.to_str().unwrap();
        let pair = text.split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_string()
    }

    #[test]
    fn the_login_key_is_made_once_and_kept() {
        let store = Store::temporary().unwrap();
        let key = login_key(&store).unwrap();
        assert_eq!(login_key(&store).unwrap(), key);
        assert_ne!(key, [0u8; 32]);
    }

    #[test]
    fn login_csrf_cookies_verify_only_with_their_key_signature_and_before_expiry() {
        let key = [7u8; 32];
        let proof = LoginCsrf::issue(&key, 1_000).unwrap();
        let cookie = proof.set_cookie(false, 1_000);
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(proof
            .set_cookie(true, 1_000)
            .to_str()
            .unwrap()
            .ends_with("; Secure"));
        let value = sent_back(&cookie);
        let found = LoginCsrf::from_request(&key, &with_login_cookie(&value), 2_000).unwrap();
        assert_eq!(found, proof);
        assert!(found.matches(Some(&proof.value)));
        assert!(!found.matches(Some(&"0".repeat(64))));
        assert!(!found.matches(None));
        // Another control plane's key, an expired proof, a changed value or expiry, an
        // unsigned value: all refused.
        assert!(LoginCsrf::from_request(&[8u8; 32], &with_login_cookie(&value), 2_000).is_none());
        assert!(LoginCsrf::from_request(
            &key,
            &with_login_cookie(&value),
            1_000 + LOGIN_FORM_TTL_MS
        )
        .is_none());
        let (_, rest) = value.split_once('.').unwrap();
        let swapped = format!("{}.{rest}", "0".repeat(64));
        assert!(LoginCsrf::from_request(&key, &with_login_cookie(&swapped), 2_000).is_none());
        let later = format!(
            "{}.{}.{}",
            proof.value,
            proof.expires_at_ms + 1_000_000,
            proof.signature
        );
        assert!(LoginCsrf::from_request(&key, &with_login_cookie(&later), 2_000).is_none());
        assert!(LoginCsrf::from_request(&key, &with_login_cookie(&proof.value), 2_000).is_none());
        assert!(LoginCsrf::from_request(&key, &HeaderMap::new(), 2_000).is_none());
    }
}
