//! Following a deployment until it ends: progress lines (a spinner on a terminal), and a
//! restart of the control plane if it dies meanwhile (the restart resumes the deployment).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use cutover_server::api::DeploymentDetail;

use crate::client::{connect_or_start, CallError, Client, StateDir};
use crate::render;

/// Follow deployment `id`; returns the exit code its outcome maps to.
pub async fn follow(state: &StateDir, id: &str, json: bool) -> Result<u8> {
    let mut client = Client::new(state.control_socket());
    let progress = Progress::new(!json);
    let mut printed = 0usize;
    let mut restarts = 0u32;
    loop {
        let path = format!("/v1/deployments/{id}?after={printed}&wait_ms=1000");
        match client.get::<DeploymentDetail>(&path).await {
            Ok(detail) => {
                let start = detail.created_at_ms;
                for entry in detail.journal.iter().skip(printed) {
                    progress.line(&render::journal_line(entry, start));
                }
                printed = detail.journal.len();
                let running: Vec<&str> = detail
                    .steps
                    .iter()
                    .filter(|s| s.state == "started")
                    .map(|s| s.id.as_str())
                    .collect();
                progress.message(&format!("{id}: {}", running.join(", ")));
                if let Some(code) = exit_code(&detail.status) {
                    progress.finish();
                    if json {
                        println!("{}", serde_json::to_string_pretty(&detail)?);
                    } else {
                        println!("{}", render::outcome(&detail));
                    }
                    return Ok(code);
                }
            }
            Err(CallError::Unreachable(e)) => {
                restarts += 1;
                if restarts > 20 {
                    anyhow::bail!(
                        "the control plane keeps dying ({e}); see {}",
                        state.serve_log().display()
                    );
                }
                progress.line(
                    "the control plane stopped answering; restarting it to resume the deployment",
                );
                client = connect_or_start(state).await?.0;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Exit code of a finished deployment; `None` while it runs.
fn exit_code(status: &str) -> Option<u8> {
    match status {
        "succeeded" => Some(0),
        "rolled_back" => Some(3),
        "stuck" => Some(4),
        _ => None,
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
