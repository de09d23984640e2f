//! Following a deployment until it ends: the control plane's event stream
//! (`/api/v1/deployments/{id}/events`, server-sent events on the control socket or over
//! HTTPS) rendered as progress lines (a spinner on a terminal), and a restart of the local
//! control plane if it dies meanwhile (the restart resumes the deployment), or, with a
//! remote one, reconnecting within a deadline; either way the stream resumes after the last
//! journal entry shown (`Last-Event-ID`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use cutover_model::{Backoff, JournalEntry};
use cutover_server::api::{
    events, DeploymentDetail, DeploymentState, ErrorBody, HistoryLine, StepState,
};

use crate::client::{client, connect_or_start, ApiClient, CallError, StateDir};
use crate::render;

/// Exit codes of the CLI (the table in `cutover --help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const ROLLED_BACK: u8 = 3;
    pub const STUCK: u8 = 4;
    pub const BUSY: u8 = 5;
    pub const SUPPLY_CHAIN: u8 = 6;
}

/// Where a deployment is followed from.
#[derive(Clone, Copy)]
pub enum Door<'a> {
    /// The local control plane of this state directory (restarted if it dies).
    Local(&'a StateDir),
    /// A control plane on another machine (reconnected to, never started).
    Remote(&'a ApiClient),
}

/// How long a lost connection to a remote control plane is retried before giving up (the
/// deployment goes on there either way).
pub const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// Follow deployment `id`; returns the exit code its outcome maps to.
pub async fn follow(door: Door<'_>, id: &str, json: bool) -> Result<u8> {
    let mut client = match door {
        Door::Local(state) => client(state),
        Door::Remote(remote) => remote.clone(),
    };
    let progress = Progress::new(!json);
    let detail_path = format!("/api/v1/deployments/{}", crate::encode(id));
    let events_path = format!("{detail_path}/events");
    let mut shown: Option<u64> = None;
    let mut restarts = 0u32;
    let mut start_ms: Option<u64> = None;
    let mut lost_since: Option<Instant> = None;
    let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        let lost = match follow_once(
            &client,
            &detail_path,
            &events_path,
            &progress,
            &mut shown,
            &mut start_ms,
            &mut lost_since,
        )
        .await
        {
            Ok(detail) => {
                progress.finish();
                let code = exit_code(&detail);
                if json {
                    let image_id = image_of(&client, &detail).await;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&outcome_json(&detail, image_id, code))?
                    );
                } else {
                    if detail.kind == "build" {
                        // `cutover build` prints the image id alone on stdout.
                        eprintln!("{}", render::outcome(&detail));
                    } else {
                        println!("{}", render::outcome(&detail));
                    }
                }
                return Ok(code);
            }
            Err(CallError::Unreachable(e)) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        restarts += 1;
        match door {
            Door::Local(state) => {
                if restarts > 20 {
                    anyhow::bail!(
                        "the control plane keeps dying ({lost}); see {}",
                        state.serve_log().display()
                    );
                }
                progress.line(
                    "the control plane stopped answering; restarting it to resume the deployment",
                );
                client = connect_or_start(state).await?.0;
            }
            Door::Remote(_) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RECONNECT_DEADLINE {
                    anyhow::bail!(
                        "lost the control plane for {} while following {id} ({lost}); the deployment goes on there: see `cutover status --deployment {id}`",
                        cutover_model::format_duration(RECONNECT_DEADLINE)
                    );
                }
                // Said even with --output json (on stderr): a script's log shows the gap.
                progress.note(&format!("lost the event stream ({lost}); reconnecting"));
                tokio::time::sleep(backoff.delay_after(restarts)).await;
            }
        }
    }
}

/// The image a finished deployment deployed (from the history), if the control plane says.
async fn image_of(client: &ApiClient, detail: &DeploymentDetail) -> Option<String> {
    let path = format!(
        "/api/v1/deployments?env={}&limit=500",
        crate::encode(&detail.env)
    );
    let lines: Vec<HistoryLine> = client.get(&path).await.ok()?;
    lines
        .into_iter()
        .find(|l| l.deployment_id == detail.id)
        .and_then(|l| l.image_id)
}

/// The outcome as one JSON document (`--output json`): what a script needs to decide.
pub fn outcome_json(
    detail: &DeploymentDetail,
    image_id: Option<String>,
    exit_code: u8,
) -> serde_json::Value {
    let failed = detail
        .failed_step()
        .map(|s| serde_json::json!({"id": s.id, "kind": s.kind, "error": s.error}));
    serde_json::json!({
        "deployment_id": detail.id,
        "env": detail.env,
        "kind": detail.kind,
        "release_id": detail.release_id,
        "previous_release": detail.previous_release,
        "status": detail.status,
        "exit_code": exit_code,
        "plan_digest": detail.plan_digest,
        "image_id": image_id,
        "requested_by": detail.requested_by,
        "created_at_ms": detail.created_at_ms,
        "finished_at_ms": detail.finished_at_ms,
        "reason": detail.reason,
        "failed_step": failed,
        "steps": detail.steps,
    })
}

/// Follow until the deployment ends (its final detail) or the connection is lost
/// (`Unreachable`: the caller restarts the control plane and calls again).
async fn follow_once(
    client: &crate::client::ApiClient,
    detail_path: &str,
    events_path: &str,
    progress: &Progress,
    shown: &mut Option<u64>,
    start_ms: &mut Option<u64>,
    lost_since: &mut Option<Instant>,
) -> Result<DeploymentDetail, CallError> {
    if start_ms.is_none() {
        let detail: DeploymentDetail = client.get(detail_path).await?;
        *start_ms = Some(detail.created_at_ms);
    }
    let start = start_ms.unwrap_or_default();
    let decode = |what: &str, e: serde_json::Error| CallError::Decode {
        what: what.to_string(),
        detail: e.to_string(),
    };
    let mut stream = client.events(events_path, *shown).await?;
    // Connected again: a later loss gets a fresh deadline.
    *lost_since = None;
    while let Some(event) = stream.next().await {
        let event = event?;
        match event.event.as_str() {
            events::JOURNAL => {
                let entry: JournalEntry =
                    serde_json::from_str(&event.data).map_err(|e| decode("a journal event", e))?;
                progress.line(&render::journal_line(&entry, start));
                *shown = Some(entry.seq);
            }
            events::DEPLOYMENT => {
                let detail: DeploymentDetail = serde_json::from_str(&event.data)
                    .map_err(|e| decode("a deployment event", e))?;
                let running: Vec<&str> = detail
                    .steps
                    .iter()
                    .filter(|s| s.state == StepState::Started)
                    .map(|s| s.id.as_str())
                    .collect();
                progress.message(&format!("{}: {}", detail.id, running.join(", ")));
            }
            events::END => return client.get(detail_path).await,
            events::ERROR => {
                let body: ErrorBody =
                    serde_json::from_str(&event.data).map_err(|e| decode("an error event", e))?;
                return Err(CallError::Api(body));
            }
            _ => {}
        }
    }
    // The stream ended without `end`: the control plane went away.
    Err(client.stream_ended())
}

/// Exit code of a finished deployment: rolled back because the supply chain refused the
/// image (a scan, sign or verify step failed) is 6, any other rollback 3, stuck 4.
pub fn exit_code(detail: &DeploymentDetail) -> u8 {
    match detail.status {
        DeploymentState::Succeeded => exit::OK,
        DeploymentState::Stuck => exit::STUCK,
        DeploymentState::RolledBack => match detail.failed_step() {
            Some(step) if matches!(step.kind.as_str(), "scan" | "sign" | "verify") => {
                exit::SUPPLY_CHAIN
            }
            _ => exit::ROLLED_BACK,
        },
        // Not finished: the caller only asks about finished deployments.
        DeploymentState::Planned | DeploymentState::Running | DeploymentState::Unwinding => {
            exit::ERROR
        }
    }
}

/// Progress output: a spinner with lines above it on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar, enabled }
    }

    fn line(&self, text: &str) {
        if !self.enabled {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// A line on stderr whatever the output format.
    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn message(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_server::api::StepLine;

    fn detail(status: DeploymentState, failed: Option<&str>) -> DeploymentDetail {
        let step = |id: &str, state: StepState, error: Option<&str>, at: u64| StepLine {
            id: id.to_string(),
            kind: id.to_string(),
            depends_on: Vec::new(),
            state,
            attempts: 1,
            started_at_ms: Some(at),
            finished_at_ms: Some(at + 1),
            duration_ms: Some(1),
            error: error.map(str::to_string),
            output: None,
        };
        let mut steps = vec![step("build", StepState::Undone, None, 1)];
        if let Some(kind) = failed {
            steps.push(step(kind, StepState::Failed, Some("refused"), 5));
            // An undo that failed later does not hide what failed first.
            steps.push(step("provision", StepState::Undone, Some("later"), 9));
        }
        DeploymentDetail {
            id: "production-1".into(),
            env: "production".into(),
            kind: "deploy".into(),
            release_id: "production-1".into(),
            previous_release: None,
            plan_digest: "sha256:x".into(),
            requested_by: "alice".into(),
            created_at_ms: 0,
            finished_at_ms: Some(10),
            status,
            reason: None,
            steps,
            journal: Vec::new(),
            approval: None,
            promoted_from: None,
        }
    }

    #[test]
    fn outcomes_map_to_the_documented_exit_codes() {
        assert_eq!(exit_code(&detail(DeploymentState::Succeeded, None)), 0);
        assert_eq!(
            exit_code(&detail(DeploymentState::RolledBack, Some("health-check"))),
            3
        );
        assert_eq!(
            exit_code(&detail(DeploymentState::Stuck, Some("shift-traffic"))),
            4
        );
        for refused in ["scan", "sign", "verify"] {
            assert_eq!(
                exit_code(&detail(DeploymentState::RolledBack, Some(refused))),
                6,
                "{refused}"
            );
        }
    }

    /// A control plane over plain HTTP on loopback whose first event stream breaks after one
    /// journal entry: the follower reconnects, sending `Last-Event-ID` of the entry shown,
    /// and the token each time; the second stream ends the deployment.
    #[tokio::test]
    async fn a_broken_remote_stream_reconnects_after_the_last_event_shown() {
        use bytes::Bytes;
        use http_body_util::Full;
        use hyper::body::Incoming;
        use hyper::{Request, Response};
        use std::sync::{Arc, Mutex};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        /// (path, Last-Event-ID, Authorization) of a request.
        type Seen = (String, Option<String>, Option<String>);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let mut done = detail(DeploymentState::Succeeded, None);
        done.id = "staging-1".into();
        done.env = "staging".into();
        let done = serde_json::to_string(&done).unwrap();
        let entry = serde_json::to_string(&JournalEntry {
            seq: 7,
            at_ms: 1,
            event: cutover_model::JournalEvent::DeploymentStarted { resumed: 0 },
        })
        .unwrap();
        let server = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let seen = seen.clone();
                    let (done, entry) = (done.clone(), entry.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            let path = req.uri().path().to_string();
                            let resume = header("last-event-id");
                            seen.lock().unwrap().push((
                                path.clone(),
                                resume.clone(),
                                header("authorization"),
                            ));
                            let body = if path.ends_with("/events") {
                                match resume {
                                    // The first stream: one entry, then the connection ends.
                                    None => format!("event: journal\nid: 7\ndata: {entry}\n\n"),
                                    Some(_) => "event: end\ndata: {}\n\n".to_string(),
                                }
                            } else if path == "/api/v1/deployments" {
                                "[]".to_string()
                            } else {
                                done.clone()
                            };
                            async move {
                                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        let client = ApiClient::remote(&format!("http://{addr}"), None)
            .unwrap()
            .with_token(Some("canary-token-1b2c"));
        let code = tokio::time::timeout(
            Duration::from_secs(20),
            follow(Door::Remote(&client), "staging-1", true),
        )
        .await
        .expect("followed within the deadline")
        .unwrap();
        server.abort();
        assert_eq!(code, exit::OK);
        let seen = seen.lock().unwrap();
        let streams: Vec<_> = seen
            .iter()
            .filter(|(path, ..)| path.ends_with("/events"))
            .collect();
        assert_eq!(streams.len(), 2, "{seen:?}");
        assert_eq!(streams[0].1, None);
        assert_eq!(streams[1].1.as_deref(), Some("7"), "resumes after entry 7");
        assert!(seen
            .iter()
            .all(|(.., auth)| auth.as_deref() == Some("Bearer canary-token-1b2c")));
    }

    #[test]
    fn the_help_lists_every_exit_code() {
        for code in [
            exit::OK,
            exit::ERROR,
            exit::BAD_INPUT,
            exit::ROLLED_BACK,
            exit::STUCK,
            exit::BUSY,
            exit::SUPPLY_CHAIN,
        ] {
            assert!(
                crate::EXIT_HELP.contains(&format!("  {code}  ")),
                "exit code {code} is not in the help"
            );
        }
    }
}
