//! Following a deployment until it ends: the control plane's event stream
//! (`/api/v1/deployments/{id}/events`, server-sent events on the control socket) rendered
//! as progress lines (a spinner on a terminal), and a restart of the control plane if it
//! dies meanwhile (the restart resumes the deployment; the stream resumes after the last
//! journal entry shown).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use cutover_model::JournalEntry;
use cutover_server::api::{events, DeploymentDetail, DeploymentState, ErrorBody, StepState};

use crate::client::{client, connect_or_start, CallError, StateDir};
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

/// Follow deployment `id`; returns the exit code its outcome maps to.
pub async fn follow(state: &StateDir, id: &str, json: bool) -> Result<u8> {
    let mut client = client(state);
    let progress = Progress::new(!json);
    let detail_path = format!("/api/v1/deployments/{}", crate::encode(id));
    let events_path = format!("{detail_path}/events");
    let mut shown: Option<u64> = None;
    let mut restarts = 0u32;
    let mut start_ms: Option<u64> = None;
    loop {
        let lost = match follow_once(
            &client,
            &detail_path,
            &events_path,
            &progress,
            &mut shown,
            &mut start_ms,
        )
        .await
        {
            Ok(detail) => {
                progress.finish();
                if json {
                    println!("{}", serde_json::to_string_pretty(&detail)?);
                } else {
                    if detail.kind == "build" {
                        // `cutover build` prints the image id alone on stdout.
                        eprintln!("{}", render::outcome(&detail));
                    } else {
                        println!("{}", render::outcome(&detail));
                    }
                }
                return Ok(exit_code(&detail));
            }
            Err(CallError::Unreachable(e)) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        restarts += 1;
        if restarts > 20 {
            anyhow::bail!(
                "the control plane keeps dying ({lost}); see {}",
                state.serve_log().display()
            );
        }
        progress
            .line("the control plane stopped answering; restarting it to resume the deployment");
        client = connect_or_start(state).await?.0;
    }
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
    Err(CallError::Unreachable(
        cutover_api::unix::UnixHttpError::Unreachable {
            socket: std::path::PathBuf::from("the control socket"),
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the event stream ended before the deployment did",
            ),
        },
    ))
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
