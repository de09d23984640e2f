//! The control plane's API as data: request and response bodies of `/api/v1`, the enums
//! that cross crate boundaries (deployment and step states, decisions, error codes), the
//! one error body every answer uses, and the clients that speak it ([`unix::UnixHttp`]
//! for HTTP/1.1 over a Unix socket, [`remote::RemoteHttp`] for HTTPS to a control plane on
//! another machine, [`client::ApiClient`] for `/api/v1` over either).
//!
//! The server, the CLI and the web UI all use these types, so a field renamed here is
//! renamed everywhere; the OpenAPI document is generated from their schemas.

mod approval_view;
pub mod client;
mod guardrails;
pub mod remote;
mod retention;
pub mod secrets;
mod types;
pub mod unix;

pub use approval_view::*;
pub use guardrails::*;
pub use retention::*;
pub use secrets::*;
pub use types::*;
