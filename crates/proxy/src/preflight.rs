//! The listen-address check made before a deployment is planned: the environment's
//! address must be free, or already served by this proxy for the same environment.

use std::net::SocketAddr;

use async_trait::async_trait;
use cutover_model::{Preflight, PreflightFailure, Route, Spec};

use crate::client::{AdminClient, ProxyTraffic};

#[async_trait]
impl Preflight for ProxyTraffic {
    async fn check(&self, spec: &Spec, env: &str) -> Vec<PreflightFailure> {
        let Some(environment) = spec.environments.get(env) else {
            return vec![PreflightFailure {
                field: "env".to_string(),
                message: format!("environment {env:?} is not in the spec; pick one it has"),
            }];
        };
        check_listen(self.admin(), env, &environment.listen)
            .await
            .into_iter()
            .collect()
    }
}

/// Whether `listen` can serve `env`: `None` when it is free or this proxy serves `env` on
/// it already.
pub(crate) async fn check_listen(
    admin: &AdminClient,
    env: &str,
    listen: &str,
) -> Option<PreflightFailure> {
    let field = format!("environments.{env}.listen");
    let failure = |message: String| {
        Some(PreflightFailure {
            field: field.clone(),
            message,
        })
    };
    let routes = admin.routes().await;
    if let Ok(routes) = &routes {
        if let Some(owner) = served_by(routes, listen) {
            if owner.env == env {
                return None;
            }
            return failure(format!(
                "{listen} is already served by the cutover proxy for environment {}; choose another address",
                owner.env
            ));
        }
    }
    let error = match tokio::net::TcpListener::bind(listen).await {
        Ok(_) => return None,
        Err(e) => e,
    };
    let mut message = match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("{listen} is in use by another process; free it or choose another address")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "{listen} needs privileges to listen on (a port below 1024); choose a port above 1023"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{listen} is not an address of this machine; choose one it has, e.g. 127.0.0.1 with a free port"
        ),
        _ => format!("cannot listen on {listen}: {error}; free it or choose another address"),
    };
    if let Err(e) = &routes {
        message.push_str(&format!(
            " (the cutover proxy did not answer, so it may be its own: {})",
            crate::error::error_text(e)
        ));
    }
    failure(message)
}

/// The route whose listen address is `listen` (compared as socket addresses when both
/// parse, so `127.0.0.1:80` and `127.0.0.1:080` are one).
fn served_by<'a>(routes: &'a [Route], listen: &str) -> Option<&'a Route> {
    let wanted = listen.parse::<SocketAddr>().ok();
    routes
        .iter()
        .find(|r| match (wanted, r.listen.parse::<SocketAddr>()) {
            (Some(a), Ok(b)) => a == b,
            _ => r.listen == listen,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(env: &str, listen: &str) -> Route {
        Route {
            env: env.to_string(),
            listen: listen.to_string(),
            backends: Vec::new(),
            response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    #[test]
    fn routes_are_matched_by_socket_address() {
        let routes = vec![
            route("staging", "127.0.0.1:8081"),
            route("production", "[::1]:80"),
        ];
        assert_eq!(
            served_by(&routes, "127.0.0.1:08081").map(|r| r.env.as_str()),
            Some("staging")
        );
        assert_eq!(
            served_by(&routes, "[0:0:0:0:0:0:0:1]:80").map(|r| r.env.as_str()),
            Some("production")
        );
        assert!(served_by(&routes, "127.0.0.1:8082").is_none());
    }

    #[tokio::test]
    async fn a_taken_address_fails_and_a_free_one_passes_without_a_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let admin = AdminClient::new(dir.path().join("absent.sock"));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let failure = check_listen(&admin, "production", &addr)
            .await
            .expect("a taken address fails");
        assert_eq!(failure.field, "environments.production.listen");
        assert!(
            failure.to_string().starts_with(&format!(
                "environments.production.listen: {addr} is in use by another process; free it or choose another address"
            )),
            "{failure}"
        );
        assert!(
            failure.message.contains("the cutover proxy did not answer"),
            "{failure}"
        );
        drop(taken);
        // Port 0 is always free: the kernel picks one.
        assert_eq!(
            check_listen(&admin, "production", "127.0.0.1:0").await,
            None
        );
    }

    #[tokio::test]
    async fn an_address_this_machine_lacks_fails() {
        let dir = tempfile::tempdir().unwrap();
        let admin = AdminClient::new(dir.path().join("absent.sock"));
        // TEST-NET-1 (RFC 5737) is never assigned to a local interface.
        let failure = check_listen(&admin, "staging", "192.0.2.1:8080")
            .await
            .expect("a foreign address fails");
        assert!(
            failure
                .message
                .contains("is not an address of this machine"),
            "{failure}"
        );
    }
}
