//! Helpers shared by the server's integration tests.

use cutover_server::auth::{self, NewToken, Role};
use cutover_store::Store;

/// A new API token named `name`, owned by `owner`, with `role` in `env` (all when `None`).
pub fn token(store: &Store, role: Role, env: Option<&str>, name: &str, owner: &str) -> String {
    auth::create_token(
        store,
        "test",
        &NewToken {
            role,
            env: env.map(str::to_string),
            name: Some(name.to_string()),
            owner: Some(owner.to_string()),
            expires_in_ms: None,
        },
    )
    .unwrap()
    .token
}
