//! Who may do what: roles scoped to environments, API tokens (stored hashed) and human
//! users (argon2id password hashes).
//!
//! Roles: `viewer` < `deployer` (deploy, roll back) and `approver` (approve, reject) <
//! `admin` (everything, including tokens and users). A [`Grant`] gives one role in one
//! environment, or in all of them when `env` is `None`.
//!
//! Tokens look like `cut_<id>_<secret>`: the id (12 hex digits) finds the record, the
//! secret (256 random bits) proves possession. Only the sha256 of the whole token is kept;
//! the token itself is shown once, at creation. Tokens can expire and be revoked; each use
//! updates the record's `last_used_ms` (at most once a minute).

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use cutover_model::now_ms;
use cutover_store::{Store, TypedTree};

use crate::ServerError;

/// Name of the store tree holding token records, keyed by token id.
const TOKENS_TREE: &str = "auth_tokens";
/// Name of the store tree holding users, keyed by user name.
const USERS_TREE: &str = "auth_users";
/// Prefix of every token; makes leaked tokens easy to find with secret scanners.
pub const TOKEN_PREFIX: &str = "cut_";
/// `last_used_ms` is written at most this often per token.
const LAST_USED_RESOLUTION_MS: u64 = 60_000;

pub use cutover_api::{CreatedToken, Grant, NewToken, Role, TokenRecord};

/// Someone (a person or a token) whose requests are being served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The credential: a user name, `token:<id>` / `token:<name>:<id>` for tokens, or the
    /// socket peer's account. Recorded as `requested_by`.
    pub name: String,
    /// The person behind it: the user, the token's owner, the socket peer's account.
    /// Separation of duties and approval counts go by this.
    pub person: String,
    pub grants: Vec<Grant>,
    /// The Unix socket's own peer (no token): the local account the control plane serves.
    #[serde(default)]
    pub socket_peer: bool,
}

impl Principal {
    /// Whether some grant allows `role` in `env`. With `env: None` (an action on every
    /// environment) only grants for all environments count.
    pub fn can(&self, role: Role, env: Option<&str>) -> bool {
        self.grants.iter().any(|g| {
            g.role.includes(role)
                && match (&g.env, env) {
                    (None, _) => true,
                    (Some(scope), Some(env)) => scope == env,
                    (Some(_), None) => false,
                }
        })
    }

    /// Whether some grant allows `role` in at least one environment.
    pub fn can_somewhere(&self, role: Role) -> bool {
        self.grants.iter().any(|g| g.role.includes(role))
    }

    /// `Ok` when [`Principal::can`], else a 403 naming what was missing.
    pub fn require(&self, role: Role, env: Option<&str>) -> Result<(), ServerError> {
        if self.can(role, env) {
            return Ok(());
        }
        Err(ServerError::Forbidden(match env {
            Some(env) => format!(
                "{} lacks the {role} role for environment {env}; ask an admin for a token or user with that role",
                self.name
            ),
            None => format!(
                "{} lacks the {role} role for all environments; ask an admin for a token or user with that role",
                self.name
            ),
        }))
    }

    /// The local user on the Unix socket: admin everywhere.
    pub fn local(name: &str) -> Principal {
        Principal {
            name: name.to_string(),
            person: name.to_string(),
            grants: vec![Grant {
                role: Role::Admin,
                env: None,
            }],
            socket_peer: true,
        }
    }
}

impl From<UserRecord> for crate::api::UserLine {
    fn from(u: UserRecord) -> Self {
        crate::api::UserLine {
            name: u.name,
            grants: u.grants,
            created_at_ms: u.created_at_ms,
        }
    }
}

/// A stored user (never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub grants: Vec<Grant>,
    /// PHC string of an argon2id hash.
    pub password_hash: String,
    pub created_at_ms: u64,
    pub created_by: String,
}

fn tokens(store: &Store) -> Result<TypedTree<TokenRecord>, ServerError> {
    Ok(store.typed_tree(TOKENS_TREE)?)
}

fn users(store: &Store) -> Result<TypedTree<UserRecord>, ServerError> {
    Ok(store.typed_tree(USERS_TREE)?)
}

/// `bytes` random bytes, hex (the workspace's one token generator).
fn random_hex(bytes: usize) -> Result<String, ServerError> {
    cutover_model::random_token_hex(bytes).map_err(|e| ServerError::Internal(e.to_string()))
}

fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// Check a role/environment pair against what the caller's grants allow to hand out.
fn check_env_name(env: Option<&str>) -> Result<(), ServerError> {
    if let Some(env) = env {
        if env.is_empty()
            || env.len() > 64
            || !env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ServerError::BadRequest(format!(
                "env: {env:?} is not an environment name (letters, digits, '-' and '_', at most 64)"
            )));
        }
    }
    Ok(())
}

/// Create a token; returns it (shown once) with its record. Audited.
pub fn create_token(
    store: &Store,
    created_by: &str,
    new: &NewToken,
) -> Result<CreatedToken, ServerError> {
    check_env_name(new.env.as_deref())?;
    let owner = new.owner.as_deref().unwrap_or(created_by);
    if owner.trim().is_empty() || owner.len() > 64 || owner.chars().any(|c| c.is_control()) {
        return Err(ServerError::BadRequest(
            "owner: must be 1 to 64 printable characters, the user the token belongs to"
                .to_string(),
        ));
    }
    if let Some(name) = &new.name {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(ServerError::BadRequest(
                "name: must be 1 to 64 printable characters".to_string(),
            ));
        }
    }
    let id = random_hex(6)?;
    let secret = random_hex(32)?;
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let now = now_ms();
    let expires_at_ms = match new.expires_in_ms {
        Some(0) => {
            return Err(ServerError::BadRequest(
                "expires_in_ms: must be positive".to_string(),
            ))
        }
        Some(ms) => Some(now.saturating_add(ms)),
        None => None,
    };
    let record = TokenRecord {
        id: id.clone(),
        name: new.name.clone(),
        role: new.role,
        env: new.env.clone(),
        hash: token_hash(&token),
        created_at_ms: now,
        created_by: created_by.to_string(),
        expires_at_ms,
        last_used_ms: None,
        revoked_at_ms: None,
        owner: Some(owner.to_string()),
    };
    tokens(store)?.insert(&id, &record)?;
    store.flush()?;
    crate::audit::record(
        store,
        created_by,
        "token.create",
        &record.id,
        serde_json::json!({
            "name": record.name,
            "owner": record.owner,
            "role": record.role,
            "env": record.env,
            "expires_at_ms": record.expires_at_ms,
        }),
    )?;
    Ok(CreatedToken { token, record })
}

/// Every token record, oldest first.
pub fn list_tokens(store: &Store) -> Result<Vec<TokenRecord>, ServerError> {
    let mut all = tokens(store)?.values()?;
    all.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// Revoke a token by id on behalf of `actor`. Revoking twice is fine; an unknown id is 404.
/// Audited.
pub fn revoke_token(store: &Store, actor: &str, id: &str) -> Result<TokenRecord, ServerError> {
    let tree = tokens(store)?;
    let mut record = tree.get(id)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "token {id} not found; `cutover token list` shows token ids"
        ))
    })?;
    if record.revoked_at_ms.is_none() {
        record.revoked_at_ms = Some(now_ms());
        tree.insert(id, &record)?;
        store.flush()?;
        store.announce(cutover_store::StoreEvent::Credentials);
    }
    crate::audit::record(
        store,
        actor,
        "token.revoke",
        id,
        serde_json::json!({ "name": record.name }),
    )?;
    Ok(record)
}

/// When a valid bearer token expires (`None`: never, or not a valid token).
pub fn token_expiry(store: &Store, token: &str) -> Result<Option<u64>, ServerError> {
    let Some(id) = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
    else {
        return Ok(None);
    };
    Ok(tokens(store)?.get(id)?.and_then(|r| r.expires_at_ms))
}

/// The principal a bearer token stands for, or `None` when the token is unknown, revoked,
/// expired or malformed.
pub fn authenticate_bearer(store: &Store, token: &str) -> Result<Option<Principal>, ServerError> {
    let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
        return Ok(None);
    };
    let Some((id, _secret)) = rest.split_once('_') else {
        return Ok(None);
    };
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let tree = tokens(store)?;
    let Some(mut record) = tree.get(id)? else {
        return Ok(None);
    };
    // Compared in constant time, so timing does not reveal how much of a hash matched.
    if !bool::from(token_hash(token).as_bytes().ct_eq(record.hash.as_bytes())) {
        return Ok(None);
    }
    let now = now_ms();
    if record.revoked_at_ms.is_some() || record.expires_at_ms.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    if record
        .last_used_ms
        .is_none_or(|at| now.saturating_sub(at) >= LAST_USED_RESOLUTION_MS)
    {
        record.last_used_ms = Some(now);
        // Not flushed: losing a last-used time in a crash is harmless.
        tree.insert(id, &record)?;
    }
    Ok(Some(Principal {
        name: record.principal_name(),
        person: record.person(),
        grants: vec![Grant {
            role: record.role,
            env: record.env.clone(),
        }],
        socket_peer: false,
    }))
}

/// Add a user, or replace the grants and password of an existing one.
pub fn add_user(
    store: &Store,
    created_by: &str,
    name: &str,
    grants: Vec<Grant>,
    password: &str,
) -> Result<UserRecord, ServerError> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with("token:")
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(ServerError::BadRequest(format!(
            "name: {name:?} is not a user name (letters, digits, '-', '_', '.', '@', at most 64, not starting with token:)"
        )));
    }
    if password.chars().count() < 8 {
        return Err(ServerError::BadRequest(
            "password: must be at least 8 characters".to_string(),
        ));
    }
    for grant in &grants {
        check_env_name(grant.env.as_deref())?;
    }
    let salt = SaltString::encode_b64(
        &cutover_model::random_bytes::<16>().map_err(|e| ServerError::Internal(e.to_string()))?,
    )
    .map_err(|e| ServerError::Internal(format!("could not encode a password salt: {e}")))?;
    let password_hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| ServerError::Internal(format!("could not hash the password: {e}")))?
        .to_string();
    let record = UserRecord {
        name: name.to_string(),
        grants,
        password_hash,
        created_at_ms: now_ms(),
        created_by: created_by.to_string(),
    };
    users(store)?.insert(name, &record)?;
    store.flush()?;
    Ok(record)
}

/// Every user, by name.
pub fn list_users(store: &Store) -> Result<Vec<UserRecord>, ServerError> {
    Ok(users(store)?.values()?)
}

/// The principal of a user whose password matches, else `None`.
pub fn authenticate_password(
    store: &Store,
    user: &str,
    password: &str,
) -> Result<Option<Principal>, ServerError> {
    let Some(record) = users(store)?.get(user)? else {
        // Spend about the same time as a real check, so timing does not reveal user names.
        let _ = Argon2::default().hash_password(
            password.as_bytes(),
            &SaltString::encode_b64(b"cutover-no-user!").map_err(|e| {
                ServerError::Internal(format!("could not encode a password salt: {e}"))
            })?,
        );
        return Ok(None);
    };
    let parsed = PasswordHash::new(&record.password_hash).map_err(|e| {
        ServerError::Internal(format!(
            "the stored password hash of user {user} is not valid ({e}); set a new password with `cutover user add`"
        ))
    })?;
    if Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Ok(None);
    }
    Ok(Some(Principal {
        person: record.name.clone(),
        name: record.name,
        grants: record.grants,
        socket_peer: false,
    }))
}

/// Parse a lifetime such as `30d`, `12h`, `90m`, `45s`, `2w` or `1h 30m` (humantime's
/// syntax).
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let lifetime = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a lifetime ({e}): use e.g. 30d, 12h, 90m"))?;
    if lifetime.is_zero() {
        return Err(format!("{text:?}: a lifetime must be positive"));
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, env: Option<&str>) -> Grant {
        Grant {
            role,
            env: env.map(str::to_string),
        }
    }

    #[test]
    fn roles_and_scopes() {
        let p = Principal {
            name: "p".into(),
            person: "p".into(),
            grants: vec![grant(Role::Deployer, Some("staging"))],
            socket_peer: false,
        };
        assert!(p.can(Role::Deployer, Some("staging")));
        assert!(p.can(Role::Viewer, Some("staging")));
        assert!(!p.can(Role::Approver, Some("staging")));
        assert!(!p.can(Role::Deployer, Some("production")));
        assert!(!p.can(Role::Viewer, None));
        assert!(p.can_somewhere(Role::Viewer));
        let admin = Principal::local("me");
        assert!(admin.can(Role::Approver, Some("x")));
        assert!(admin.can(Role::Admin, None));
        assert!(matches!(
            p.require(Role::Approver, Some("staging")),
            Err(ServerError::Forbidden(_))
        ));
    }

    #[test]
    fn tokens_authenticate_until_revoked() {
        let store = Store::temporary().unwrap();
        let created = create_token(
            &store,
            "me",
            &NewToken {
                role: Role::Deployer,
                env: Some("staging".into()),
                name: Some("ci".into()),
                owner: None,
                expires_in_ms: None,
            },
        )
        .unwrap();
        assert!(created.token.starts_with(TOKEN_PREFIX));
        assert!(!created.record.hash.contains(&created.token));
        let p = authenticate_bearer(&store, &created.token)
            .unwrap()
            .unwrap();
        assert_eq!(p.name, format!("token:ci:{}", created.record.id));
        assert!(p.can(Role::Deployer, Some("staging")));
        assert!(list_tokens(&store).unwrap()[0].last_used_ms.is_some());
        // A wrong secret with the right id fails.
        let mut forged = created.token.clone();
        forged.pop();
        forged.push('x');
        assert_eq!(authenticate_bearer(&store, &forged).unwrap(), None);
        assert_eq!(authenticate_bearer(&store, "garbage").unwrap(), None);
        revoke_token(&store, "test", &created.record.id).unwrap();
        assert_eq!(authenticate_bearer(&store, &created.token).unwrap(), None);
        assert!(matches!(
            revoke_token(&store, "test", "nope"),
            Err(ServerError::NotFound(_))
        ));
    }

    #[test]
    fn expired_tokens_fail() {
        let store = Store::temporary().unwrap();
        let created = create_token(
            &store,
            "me",
            &NewToken {
                role: Role::Viewer,
                env: None,
                name: None,
                owner: None,
                expires_in_ms: Some(1),
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(authenticate_bearer(&store, &created.token).unwrap(), None);
    }

    #[test]
    fn passwords_are_hashed_and_checked() {
        let store = Store::temporary().unwrap();
        let user = add_user(
            &store,
            "me",
            "alice",
            vec![grant(Role::Approver, Some("production"))],
            "correct horse",
        )
        .unwrap();
        assert!(user.password_hash.starts_with("$argon2id$"));
        let p = authenticate_password(&store, "alice", "correct horse")
            .unwrap()
            .unwrap();
        assert!(p.can(Role::Approver, Some("production")));
        assert_eq!(
            authenticate_password(&store, "alice", "wrong horse").unwrap(),
            None
        );
        assert_eq!(
            authenticate_password(&store, "bob", "correct horse").unwrap(),
            None
        );
        assert!(add_user(&store, "me", "bob", vec![], "short").is_err());
        assert!(add_user(&store, "me", "token:x", vec![], "long enough").is_err());
    }

    #[test]
    fn lifetimes() {
        assert_eq!(
            parse_lifetime("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_lifetime("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_lifetime("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(parse_lifetime("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_lifetime(" 1h 30m ").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_lifetime("0d").unwrap_err(),
            "\"0d\": a lifetime must be positive"
        );
        for bad in ["d", "3 fortnights", "-1h", "", "12"] {
            let error = parse_lifetime(bad).unwrap_err();
            assert!(
                error.starts_with(&format!("{bad:?} is not a lifetime"))
                    && error.ends_with("use e.g. 30d, 12h, 90m"),
                "{bad:?}: {error}"
            );
        }
    }
}
