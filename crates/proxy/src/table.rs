//! The persisted routing table: `<state_dir>/routes.json`, a JSON list of [`Route`]s.
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory) so a proxy killed at
//! any moment restarts with either the old or the new table, never a torn one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use cutover_model::Route;

use crate::error::ProxyError;

/// File name of the routing table inside the state directory.
pub const ROUTES_FILE: &str = "routes.json";

/// Load the routing table; a missing file is an empty table.
pub fn load_routes(path: &Path) -> Result<Vec<Route>, ProxyError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ProxyError::ReadRoutes {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| ProxyError::ParseRoutes {
        path: path.to_owned(),
        source,
    })
}

/// Replace the routing table at `path` atomically and durably.
pub fn save_routes(path: &Path, routes: &[Route]) -> Result<(), ProxyError> {
    let fail = |source| ProxyError::WriteRoutes {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ROUTES_FILE.to_owned());
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut bytes = serde_json::to_vec_pretty(routes).map_err(|e| fail(e.into()))?;
    bytes.push(b'\n');
    {
        let mut file = fs::File::create(&tmp).map_err(fail)?;
        file.write_all(&bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    fs::rename(&tmp, path).map_err(fail)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(())
}

/// The listen address of a route in canonical form (`ip:port`), used as the key of listeners,
/// statistics and drains.
pub fn canonical_listen(listen: &str) -> Result<String, String> {
    let addr: SocketAddr = listen.trim().parse().map_err(|_| {
        format!("listen address `{listen}` is not an `ip:port` pair, e.g. `127.0.0.1:8080`")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "listen address `{listen}` must name a fixed port, not 0"
        ));
    }
    Ok(addr.to_string())
}

/// Check a route before serving it; the message says what to fix.
pub fn validate_route(route: &Route) -> Result<String, String> {
    if route.env.trim().is_empty() {
        return Err("route has an empty `env`; name the environment it serves".to_owned());
    }
    let listen = canonical_listen(&route.listen)?;
    if route.response_timeout.is_zero() {
        return Err(format!(
            "route of env `{}` has a zero `response_timeout`; give upstreams at least 1 ms to answer",
            route.env
        ));
    }
    for backend in &route.backends {
        if backend.release.is_empty() || http::HeaderValue::from_str(&backend.release).is_err() {
            return Err(format!(
                "release name `{}` of env `{}` is empty or not printable ascii",
                backend.release, route.env
            ));
        }
        for addr in &backend.addrs {
            crate::upstream::parse_upstream_addr(addr).map_err(|msg| {
                format!(
                    "release `{}` of env `{}`: {msg}",
                    backend.release, route.env
                )
            })?;
        }
    }
    Ok(listen)
}

/// Routes keyed by env, as served.
pub type RouteTable = BTreeMap<String, Route>;

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_model::Backend;

    fn route(env: &str, port: u16) -> Route {
        Route {
            env: env.to_owned(),
            listen: format!("127.0.0.1:{port}"),
            backends: vec![Backend {
                release: format!("{env}-1"),
                addrs: vec!["127.0.0.1:9001".to_owned(), "127.0.0.1:9002".to_owned()],
                weight: 100,
            }],
            response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    #[test]
    fn load_after_save_returns_the_same_routes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUTES_FILE);
        let routes = vec![route("production", 8080), route("staging", 8081)];
        save_routes(&path, &routes).unwrap();
        assert_eq!(load_routes(&path).unwrap(), routes);
        // A second save replaces the file and leaves no temp file behind.
        save_routes(&path, &routes[..1]).unwrap();
        assert_eq!(load_routes(&path).unwrap(), routes[..1].to_vec());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![ROUTES_FILE.to_owned()]);
    }

    #[test]
    fn a_missing_table_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_routes(&dir.path().join(ROUTES_FILE))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_stale_temp_file_does_not_change_what_is_loaded() {
        // A crash between writing the temp file and the rename leaves the old table in force.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUTES_FILE);
        save_routes(&path, &[route("production", 8080)]).unwrap();
        fs::write(dir.path().join(".routes.json.tmp"), b"[{\"torn").unwrap();
        assert_eq!(load_routes(&path).unwrap(), vec![route("production", 8080)]);
        save_routes(&path, &[route("staging", 8081)]).unwrap();
        assert_eq!(load_routes(&path).unwrap(), vec![route("staging", 8081)]);
    }

    #[test]
    fn a_table_saved_before_response_timeouts_gets_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUTES_FILE);
        fs::write(
            &path,
            br#"[{"env":"production","listen":"127.0.0.1:8080","backends":[{"release":"production-1","addrs":["127.0.0.1:9001","127.0.0.1:9002"],"weight":100}]}]"#,
        )
        .unwrap();
        assert_eq!(load_routes(&path).unwrap(), vec![route("production", 8080)]);
    }

    #[test]
    fn a_corrupt_table_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUTES_FILE);
        fs::write(&path, b"not json").unwrap();
        let err = load_routes(&path).unwrap_err();
        assert!(err.to_string().contains("routes.json"), "{err}");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut bad = route("production", 8080);
        bad.listen = "localhost:80".to_owned();
        assert!(validate_route(&bad).unwrap_err().contains("ip:port"));
        bad.listen = "127.0.0.1:0".to_owned();
        assert!(validate_route(&bad).unwrap_err().contains("fixed port"));
        let mut bad = route("production", 8080);
        bad.backends[0].addrs.push("no port".to_owned());
        assert!(validate_route(&bad).unwrap_err().contains("no port"));
        let mut bad = route("production", 8080);
        bad.response_timeout = std::time::Duration::ZERO;
        assert!(validate_route(&bad)
            .unwrap_err()
            .contains("zero `response_timeout`"));
        assert_eq!(
            validate_route(&route("production", 8080)).unwrap(),
            "127.0.0.1:8080"
        );
    }
}
