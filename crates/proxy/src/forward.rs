//! The request path: pick an upstream from the current set, forward over a pooled keep-alive
//! connection, tag the response with the release that served it, retry what is safe to retry.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;

use crate::coarse_timer::CoarseSleep;
use crate::error::error_text;
use crate::pool::{self, Lease, UpstreamBody};
use crate::stats::{InFlight, Stats};
use crate::upstream::{BackendSet, Choice, Upstream, UpstreamSet};
use crate::workers::Workers;

/// Retries after the first attempt, at most.
pub const MAX_RETRIES: usize = 2;

/// Upstream bodies up to this size (with a known length) are read whole before answering.
pub const BUFFERED_BODY_MAX: u64 = 16 * 1024;

static RELEASE_HEADER: HeaderName = HeaderName::from_static(cutover_model::RELEASE_HEADER);
static NO_RELEASE: HeaderValue = HeaderValue::from_static("none");

/// What one listen address needs to serve requests.
pub struct ListenerShared {
    /// Canonical listen address.
    pub listen: String,
    pub set: ArcSwapOption<UpstreamSet>,
    pub stats: Arc<Stats>,
    pub workers: Arc<Workers>,
}

/// Body returned to clients: the upstream's streamed body, or a short proxy message. Holds the
/// in-flight guard so drain waits until the body has been sent, and the upstream connection
/// of a streamed body, which goes back to the pool once the body has been read to the end.
pub struct ProxyBody {
    kind: Kind,
    in_flight: Option<InFlight>,
    lease: Option<Lease>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    fn full(text: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(text.into())),
            in_flight: None,
            lease: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(None) = polled {
            this.in_flight = None;
            if let Some(lease) = this.lease.take() {
                lease.give_back();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == "proxy-connection"
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the few names says so without hashing
    // each hop-by-hop name (headers named in `Connection` need `Connection` itself).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        // Headers named in `Connection` are hop-by-hop too.
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if headers.contains_key("proxy-connection") {
        headers.remove("proxy-connection");
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn proxy_response(
    status: StatusCode,
    release: HeaderValue,
    text: &'static str,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(RELEASE_HEADER.clone(), release);
    response
}

/// The origin-form target (`/path?query`) sent upstream.
fn upstream_uri(original: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    // A path alone is a valid URI, so this cannot fail.
    Uri::from_parts(parts).unwrap_or_default()
}

/// Serve one client request on the listen address described by `shared`.
pub async fn forward(
    shared: Arc<ListenerShared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Some(set) = shared.set.load_full() else {
        return Ok(no_route(&shared));
    };
    let Some(mut choice) = set.pick() else {
        return Ok(no_route(&shared));
    };

    let (parts, body) = request.into_parts();
    let method = parts.method;
    let uri = upstream_uri(&parts.uri);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // A request without a body can be built again and resent after an upstream saw it (if its
    // method allows); one with a body can go elsewhere only while nothing of it was sent.
    let replayable = body.is_end_stream();
    let mut body = Some(body);
    // The request the last attempt handed back unsent, ready for the next attempt.
    let mut unsent: Option<Request<UpstreamBody>> = None;
    let mut tried: [Choice; MAX_RETRIES + 1] = [(usize::MAX, usize::MAX); MAX_RETRIES + 1];

    for attempt in 0..=MAX_RETRIES {
        tried[attempt] = choice;
        let backend = &set.backends[choice.0];
        let in_flight = backend.counters.enter();
        let final_attempt = attempt == MAX_RETRIES;

        let upstream_request = match unsent.take() {
            Some(request) => request,
            None => {
                let mut request = Request::new(match body.take() {
                    Some(incoming) if !replayable => Either::Left(incoming),
                    _ => Either::Right(Empty::new()),
                });
                *request.method_mut() = method.clone();
                *request.uri_mut() = uri.clone();
                *request.version_mut() = Version::HTTP_11;
                // The head is kept for a resend only where one can happen.
                *request.headers_mut() = if replayable && !final_attempt {
                    headers.clone()
                } else {
                    std::mem::take(&mut headers)
                };
                request
            }
        };

        let upstream = &backend.addrs[choice.1];
        // One deadline covers the connection, the response head and a small body.
        let deadline = Instant::now() + set.response_timeout;
        let Some(sent) = within(deadline, async {
            let (response, lease) = pool::send(&upstream.authority, upstream_request).await?;
            let (parts, body) = response.into_parts();
            Ok::<_, pool::Failed>((parts, answer_body(body, lease).await))
        })
        .await
        else {
            // A lease and a half-read body were dropped with the attempt: that connection closes.
            return Ok(timed_out(
                &shared,
                backend,
                upstream,
                set.response_timeout,
                in_flight,
            ));
        };
        match sent {
            Ok((mut parts, Ok((kind, streamed_lease)))) => {
                strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .insert(RELEASE_HEADER.clone(), backend.release.clone());
                backend.counters.count_request();
                return Ok(Response::from_parts(
                    parts,
                    ProxyBody {
                        kind,
                        in_flight: Some(in_flight),
                        lease: streamed_lease,
                    },
                ));
            }
            Ok((_, Err(err))) => {
                tracing::warn!(
                    listen = %shared.listen,
                    release = backend.release_str(),
                    upstream = %upstream.authority,
                    error = %error_text(&err),
                    "upstream response body failed"
                );
                return Ok(failed_response(
                    in_flight,
                    StatusCode::BAD_GATEWAY,
                    backend.release.clone(),
                    "bad gateway: the upstream of this release broke off its answer\n",
                ));
            }
            Err(failed) => {
                let err = failed.error;
                if err.not_sent() {
                    upstream.mark_down();
                }
                unsent = failed.unsent;
                let retry_allowed =
                    !final_attempt && (unsent.is_some() || (replayable && is_idempotent(&method)));
                let next = if retry_allowed {
                    set.retry_choice(&tried[..=attempt])
                } else {
                    None
                };
                tracing::warn!(
                    listen = %shared.listen,
                    release = backend.release_str(),
                    upstream = %upstream.authority,
                    error = %error_text(&err),
                    retrying = next.is_some(),
                    "upstream request failed"
                );
                match next {
                    Some(next) => choice = next,
                    None => {
                        return Ok(failed_response(
                            in_flight,
                            StatusCode::BAD_GATEWAY,
                            backend.release.clone(),
                            "bad gateway: the upstream of this release did not answer\n",
                        ))
                    }
                }
            }
        }
    }
    // The loop returns on its last attempt; this is only reached if MAX_RETRIES changes shape.
    Ok(proxy_response(
        StatusCode::BAD_GATEWAY,
        NO_RELEASE.clone(),
        "bad gateway: no upstream answered\n",
    ))
}

/// The body to send the client. A small body of known length is read whole, so the head and
/// the body reach the client in one write instead of two, and its connection goes back to the
/// pool at once; a larger body is streamed and keeps its connection (returned) until it ends.
async fn answer_body(body: Incoming, lease: Lease) -> Result<(Kind, Option<Lease>), hyper::Error> {
    match body.size_hint().exact() {
        Some(len) if len <= BUFFERED_BODY_MAX => {
            let bytes = read_small_body(body).await?;
            lease.give_back();
            Ok((Kind::Full(Some(bytes)), None))
        }
        _ => Ok((Kind::Upstream(body), Some(lease))),
    }
}

/// `future`'s output, or `None` when `deadline` passes first (checked by the coarse timer:
/// up to one tick late, and no timer-wheel wake-up per request).
async fn within<F: Future>(deadline: Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut sleep = std::pin::pin!(CoarseSleep::until(deadline));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The proxy's own answer for a request that failed, counted as an error of its release.
fn failed_response(
    in_flight: InFlight,
    status: StatusCode,
    release: HeaderValue,
    text: &'static str,
) -> Response<ProxyBody> {
    let counters = in_flight.counters();
    counters.count_request();
    counters.count_error();
    proxy_response(status, release, text)
}

/// 504 for an upstream that did not answer within the route's response timeout.
fn timed_out(
    shared: &ListenerShared,
    backend: &BackendSet,
    upstream: &Upstream,
    timeout: Duration,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    tracing::warn!(
        listen = %shared.listen,
        release = backend.release_str(),
        upstream = %upstream.authority,
        timeout_ms = timeout.as_millis() as u64,
        "upstream did not answer within the response timeout"
    );
    failed_response(
        in_flight,
        StatusCode::GATEWAY_TIMEOUT,
        backend.release.clone(),
        "gateway timeout: the upstream of this release did not answer in time\n",
    )
}

/// Read a small body whole. It usually comes as one frame, which is kept as it is.
async fn read_small_body(mut body: Incoming) -> Result<Bytes, hyper::Error> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        // A body of known length has no trailers; anything else than data is skipped.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(before)) => {
                let mut both = bytes::BytesMut::with_capacity(before.len() + data.len());
                both.extend_from_slice(&before);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(match joined {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}

fn no_route(shared: &ListenerShared) -> Response<ProxyBody> {
    let counters = shared.stats.counters(&shared.listen, "none");
    counters.count_request();
    counters.count_error();
    proxy_response(
        StatusCode::SERVICE_UNAVAILABLE,
        NO_RELEASE.clone(),
        "service unavailable: no release is routed on this address\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_others_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::HOST, HeaderValue::from_static("example.test"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["accept", "host"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.test"));
        headers.append(header::ACCEPT, HeaderValue::from_static("a/b"));
        headers.append(header::ACCEPT, HeaderValue::from_static("c/d"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
        let mut proxy_connection = before.clone();
        proxy_connection.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut proxy_connection);
        assert_eq!(proxy_connection, before);
    }

    #[test]
    fn only_safe_methods_are_retried_after_sending() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
