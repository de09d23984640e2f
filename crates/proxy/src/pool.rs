//! Per-thread pool of keep-alive HTTP/1.1 connections to upstreams.
//!
//! Each worker thread keeps its own idle connections, so checking one out takes no lock and
//! the connection task runs on the thread of the requests that use it. A connection goes
//! back to the pool once its response body has been read to the end; a response dropped
//! half-read closes its connection. A request that a pooled connection could not send (it
//! was closed under us) comes back untouched and is sent on a fresh connection, so a
//! keep-alive connection closed by the upstream never fails a request. A request that no
//! connection could carry is handed back to the caller with the error, body and all, so it
//! can go to another upstream even when its body cannot be replayed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Body sent upstream: the client's own body, or nothing (replayable).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// How long an idle upstream connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per upstream and thread, at most.
pub const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// How long connecting to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type Sender = SendRequest<UpstreamBody>;

thread_local! {
    static IDLE: RefCell<HashMap<Authority, Vec<(Sender, Instant)>>> = RefCell::new(HashMap::new());
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(std::io::Error),
    /// The connection failed before the request was written: nothing was sent.
    NotSent(hyper::Error),
    /// The request may have reached the upstream.
    Sent(hyper::Error),
}

impl SendError {
    /// Whether the upstream certainly did not see the request (safe to send elsewhere).
    pub fn not_sent(&self) -> bool {
        !matches!(self, SendError::Sent(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::NotSent(e) => write!(f, "connection failed before sending: {e}"),
            SendError::Sent(e) => write!(f, "request failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// A connection lent to one request; give it back when its response body is done.
pub struct Lease {
    authority: Authority,
    sender: Sender,
}

impl Lease {
    /// Return the connection to this thread's pool for the next request.
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.authority).or_default();
            if list.len() < MAX_IDLE_PER_UPSTREAM {
                list.push((self.sender, Instant::now()));
            }
        });
    }
}

/// A live idle connection to `authority`, if this thread has one.
fn take(authority: &Authority) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(authority)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    })
}

async fn connect(authority: &Authority) -> Result<Sender, SendError> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    .map_err(|_| {
        SendError::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {CONNECT_TIMEOUT:?}"),
        ))
    })?
    .map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::NotSent)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A request that got no response: why, and the request itself when nothing of it was sent.
#[derive(Debug)]
pub struct Failed {
    pub error: SendError,
    /// The untouched request (body included) when the upstream never saw it.
    pub unsent: Option<Request<UpstreamBody>>,
}

impl Failed {
    fn unsent(error: SendError, request: Request<UpstreamBody>) -> Self {
        Failed {
            error,
            unsent: Some(request),
        }
    }
}

/// Send `request` to `authority` over a pooled connection (or a new one).
pub async fn send(
    authority: &Authority,
    mut request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease), Failed> {
    loop {
        let (mut sender, pooled) = match take(authority) {
            Some(sender) => (sender, true),
            None => match connect(authority).await {
                Ok(sender) => (sender, false),
                Err(error) => return Err(Failed::unsent(error, request)),
            },
        };
        if sender.ready().await.is_err() {
            if pooled {
                continue;
            }
            // A fresh connection that is not ready has failed before sending.
            let error = SendError::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the new upstream connection closed at once",
            ));
            return Err(Failed::unsent(error, request));
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok((
                    response,
                    Lease {
                        authority: authority.clone(),
                        sender,
                    },
                ))
            }
            Err(mut err) => match err.take_message() {
                // Not written: a pooled connection closed under us; try another.
                Some(back) if pooled => request = back,
                Some(back) => {
                    return Err(Failed::unsent(SendError::NotSent(err.into_error()), back))
                }
                None => {
                    return Err(Failed {
                        error: SendError::Sent(err.into_error()),
                        unsent: None,
                    })
                }
            },
        }
    }
}
