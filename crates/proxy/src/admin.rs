//! The admin API: HTTP/1.1 + JSON on the Unix socket `<state_dir>/proxy.sock` (mode 0600).
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | [`Health`] |
//! | `GET /routes` | `[Route]` |
//! | `PUT /routes/{env}` with a `Route` | [`RouteChange`] (409 when the address cannot be bound) |
//! | `DELETE /routes/{env}` | [`RouteChange`] |
//! | `POST /drain` with a [`DrainRequest`] | [`DrainResponse`] |
//! | `GET /stats` | `[StatsEntry]` |
//!
//! Errors are `{"error": "<message>"}` with a 4xx or 5xx status.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_model::Route;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

use crate::api::{DrainRequest, DrainResponse, ErrorBody, Health, RouteChange};
use crate::listeners::{AdminFailure, Proxy};
use crate::table;

/// Largest admin request body accepted.
const MAX_BODY: usize = 1 << 20;
/// Longest drain the admin API waits for.
const MAX_DRAIN: Duration = Duration::from_secs(3600);

pub(crate) async fn serve(proxy: Arc<Proxy>, listener: UnixListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let proxy = proxy.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(handle(&proxy, req).await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(err) = served {
                        tracing::debug!(error = %err, "admin connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

impl From<AdminFailure> for Response<Full<Bytes>> {
    fn from(f: AdminFailure) -> Self {
        failure(f.status, f.message)
    }
}

async fn read_json<T: DeserializeOwned>(
    body: Incoming,
    what: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {err}"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|err| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("request body is not a valid {what}: {err}"),
        )
    })
}

async fn handle(proxy: &Proxy, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["health"]) => {
            let (routes, unbound) = proxy.health().await;
            json(
                StatusCode::OK,
                &Health {
                    pid: std::process::id(),
                    routes,
                    unbound,
                },
            )
        }
        (&Method::GET, ["routes"]) => json(StatusCode::OK, &proxy.routes().await),
        (&Method::GET, ["stats"]) => json(StatusCode::OK, &proxy.stats.snapshot()),
        (&Method::PUT, ["routes", env]) => {
            let route: Route = match read_json(body, "route").await {
                Ok(route) => route,
                Err(response) => return response,
            };
            if route.env != *env {
                return failure(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "route names env `{}` but was sent to /routes/{env}; send it to /routes/{}",
                        route.env, route.env
                    ),
                );
            }
            match proxy.set_route(route).await {
                Ok(previous) => json(StatusCode::OK, &RouteChange { previous }),
                Err(f) => f.into(),
            }
        }
        (&Method::DELETE, ["routes", env]) => match proxy.remove_route(env).await {
            Ok(previous) => json(StatusCode::OK, &RouteChange { previous }),
            Err(f) => f.into(),
        },
        (&Method::POST, ["drain"]) => {
            let request: DrainRequest = match read_json(body, "drain request").await {
                Ok(request) => request,
                Err(response) => return response,
            };
            let listen = match table::canonical_listen(&request.listen) {
                Ok(listen) => listen,
                Err(message) => return failure(StatusCode::BAD_REQUEST, message),
            };
            let timeout = Duration::from_millis(request.timeout_ms).min(MAX_DRAIN);
            let in_flight_left = match proxy.stats.get(&listen, &request.release) {
                Some(counters) => counters.wait_idle(timeout).await,
                None => 0,
            };
            json(StatusCode::OK, &DrainResponse { in_flight_left })
        }
        (_, ["health"] | ["routes"] | ["stats"] | ["routes", _] | ["drain"]) => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", parts.method),
        ),
        _ => failure(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}; see GET /health, /routes, /stats"),
        ),
    }
}
