//! Webhooks: Slack-compatible JSON POSTed when a deployment fails, rolls back, gets stuck
//! or waits for approval (and when someone approves or rejects).
//!
//! The body is `{"text": "...", "cutover": {event, deployment, env, release, reason}}`;
//! Slack and compatible chat tools show `text`, other receivers read `cutover`. Each
//! delivery runs in its own task (the executor never waits for it), with up to 3 tries and
//! exponential backoff. Only plain `http://` URLs are supported (point them at a local relay
//! for TLS endpoints). Bodies carry ids, names and reasons, never secrets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// What happened, for receivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `failed`, `rolled_back`, `stuck`, `waiting_for_approval`, `approve`, `reject`,
    /// `secret_expired` (no deployment or release; the reason names the secret).
    pub event: String,
    pub deployment: String,
    pub env: String,
    pub release: String,
    pub reason: Option<String>,
}

impl Event {
    /// One line for people.
    pub fn text(&self) -> String {
        if self.event == "secret_expired" {
            return format!(
                "cutover: in {}: {}",
                self.env,
                self.reason
                    .as_deref()
                    .unwrap_or("a secret is past its max age")
            );
        }
        let what = match self.event.as_str() {
            "failed" => "failed; rolling back",
            "rolled_back" => "was rolled back",
            "stuck" => "is STUCK and needs a human",
            "waiting_for_approval" => "is waiting for approval",
            "approve" => "was approved",
            "reject" => "was rejected",
            other => other,
        };
        let mut text = format!(
            "cutover: deployment {} of release {} to {} {what}",
            self.deployment, self.release, self.env
        );
        if let Some(reason) = &self.reason {
            text.push_str(": ");
            text.push_str(reason);
        }
        text
    }

    /// The JSON body POSTed.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "text": self.text(),
            "cutover": self,
        })
    }
}

/// Delivery policy.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tries: u32,
    /// Wait before the second try; doubled for each later one.
    pub backoff: Duration,
    pub timeout: Duration,
}

impl Delivery {
    /// The wait after failed try `attempt` (from 1): `backoff`, doubled for each later try,
    /// at most 1024 times `backoff`.
    pub fn wait_after(&self, attempt: u32) -> Duration {
        cutover_model::Backoff::new(self.backoff, self.backoff.saturating_mul(1024))
            .delay_after(attempt)
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            tries: 3,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The configured webhook URLs.
#[derive(Clone, Default)]
pub struct Webhooks {
    urls: Arc<Vec<String>>,
    delivery: Delivery,
    /// Deliveries that failed after every try (shared with the metrics).
    pub(crate) failures: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry secrets in their path (chat webhooks do): print only how many.
        f.debug_struct("Webhooks")
            .field("urls", &self.urls.len())
            .finish()
    }
}

impl Webhooks {
    /// Webhooks POSTing to `urls`. Refuses URLs that are not `http://host[:port]/path`.
    pub fn new(urls: Vec<String>, delivery: Delivery) -> Result<Webhooks, String> {
        for url in &urls {
            let uri: hyper::Uri = url.parse().map_err(|e| {
                format!("webhook URL is not valid ({e}); use http://host:port/path")
            })?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(
                    "webhook URL must be http://host[:port]/path (use a local relay for https endpoints)"
                        .to_string(),
                );
            }
        }
        Ok(Webhooks {
            urls: Arc::new(urls),
            delivery,
            failures: Default::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Deliver `event` to every URL in the background.
    pub fn notify(&self, event: Event) {
        if self.urls.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(event = %event.event, "no async runtime; webhook not sent");
            return;
        };
        let body = Bytes::from(event.body().to_string());
        for (index, url) in self.urls.iter().enumerate() {
            let url = url.clone();
            let body = body.clone();
            let delivery = self.delivery.clone();
            let event_name = event.event.clone();
            let deployment = event.deployment.clone();
            let failures = self.failures.clone();
            runtime.spawn(async move {
                match deliver(&url, body, &delivery).await {
                    Ok(tries) => tracing::info!(webhook = index, event = %event_name, deployment = %deployment, tries, "webhook delivered"),
                    Err(e) => {
                        failures.inc();
                        tracing::warn!(webhook = index, event = %event_name, deployment = %deployment, error = %e, "webhook not delivered")
                    }
                }
            });
        }
    }
}

/// POST `body` to `url`, retrying failures and non-2xx answers. Returns the tries used.
pub async fn deliver(url: &str, body: Bytes, delivery: &Delivery) -> Result<u32, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut last_error = String::new();
    let tries = delivery.tries.max(1);
    for attempt in 1..=tries {
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "cutover-webhook")
            .body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        match tokio::time::timeout(delivery.timeout, client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                // Drain the body so the connection can be reused.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    return Ok(attempt);
                }
                last_error = format!("the receiver answered {status}");
            }
            Ok(Err(e)) => last_error = format!("request failed: {e}"),
            Err(_) => last_error = format!("no answer within {:?}", delivery.timeout),
        }
        if attempt < tries {
            tokio::time::sleep(delivery.wait_after(attempt)).await;
        }
    }
    Err(format!("{last_error} (gave up after {tries} tries)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_backoff_up_to_a_cap() {
        let delivery = Delivery {
            backoff: Duration::from_millis(500),
            ..Delivery::default()
        };
        let waits: Vec<u128> = [1, 2, 3, 11, 12, 40]
            .into_iter()
            .map(|a| delivery.wait_after(a).as_millis())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 512_000, 512_000, 512_000]);
    }

    #[test]
    fn bodies_are_slack_compatible() {
        let e = Event {
            event: "rolled_back".into(),
            deployment: "production-3".into(),
            env: "production".into(),
            release: "r3".into(),
            reason: Some("step health-check-0 failed".into()),
        };
        let body = e.body();
        assert!(body["text"].as_str().unwrap().contains("rolled back"));
        assert_eq!(body["cutover"]["deployment"], "production-3");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Webhooks::new(vec!["http://127.0.0.1:9/hook".into()], Delivery::default()).is_ok());
        assert!(
            Webhooks::new(vec!["https://hooks.example/x".into()], Delivery::default()).is_err()
        );
        assert!(Webhooks::new(vec!["not a url".into()], Delivery::default()).is_err());
        let hooks = Webhooks::new(
            vec!["http://u:secret@127.0.0.1/x".into()],
            Delivery::default(),
        );
        assert!(!format!("{hooks:?}").contains("secret"));
    }
}
