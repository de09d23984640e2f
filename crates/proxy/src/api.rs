//! JSON bodies of the admin API, shared by the server and [`crate::AdminClient`].

use cutover_model::Route;
use serde::{Deserialize, Serialize};

pub use crate::stats::StatsEntry;

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    /// Routes in the table.
    pub routes: usize,
    /// Listen addresses of routes that are not served because their address could not be
    /// bound at startup; setting the route again retries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unbound: Vec<String>,
}

/// Answer of `PUT /routes/{env}` and `DELETE /routes/{env}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChange {
    pub previous: Option<Route>,
}

/// `POST /drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub listen: String,
    pub release: String,
    pub timeout_ms: u64,
}

/// Answer of `POST /drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainResponse {
    pub in_flight_left: u64,
}

/// Body of every admin error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
