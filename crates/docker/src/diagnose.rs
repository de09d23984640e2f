//! Why a container is unwell: its state, exit code, OOM kill, the engine's error and its
//! last log lines, with the values of its environment and anything the image scanner's
//! secret rules find redacted.

use std::sync::OnceLock;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::LogsOptionsBuilder;
use cutover_model::{Diagnosis, Instance, DIAGNOSIS_LOG_LINES};
use cutover_supply::RuleSet;
use futures_util::StreamExt;

use crate::DockerProvider;

/// How long reading the log tail may take before the diagnosis goes without it.
const LOG_WAIT: Duration = Duration::from_secs(5);
/// Characters kept of one log line.
const MAX_LINE_CHARS: usize = 300;
/// Environment values shorter than this are left in the logs: they are no secrets, and
/// hiding every `1` or `on` would make the lines unreadable.
const MIN_REDACTED_LEN: usize = 4;
/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

impl DockerProvider {
    pub(crate) async fn diagnosis(&self, instance: &Instance) -> Option<Diagnosis> {
        let key = if instance.id.is_empty() {
            &instance.name
        } else {
            &instance.id
        };
        let raw = self.docker.inspect_container(key, None).await.ok()?;
        let mut secrets = env_values(&raw);
        // The values of its secret files too: an app that prints its secret must not
        // reach the journal through its log tail.
        if let Some(files) = &self.secret_files {
            let name = raw.name.as_deref().unwrap_or(&instance.name);
            secrets.extend(files.values_of(name.trim_start_matches('/')));
            secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
        let logs = match tokio::time::timeout(LOG_WAIT, self.log_tail(key)).await {
            Ok(lines) => lines,
            Err(_) => vec![format!(
                "(the engine did not return the logs within {}s)",
                LOG_WAIT.as_secs()
            )],
        };
        let mut diagnosis = from_inspect(&raw);
        diagnosis.logs = logs
            .iter()
            .map(|line| shorten(&redact(line, &secrets)))
            .collect();
        diagnosis.error = diagnosis.error.map(|e| redact(&e, &secrets));
        Some(diagnosis)
    }

    /// The last lines of stdout and stderr, oldest first; a failure to read them is one
    /// line saying so.
    async fn log_tail(&self, container: &str) -> Vec<String> {
        let tail = DIAGNOSIS_LOG_LINES.to_string();
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => text.extend_from_slice(output.as_ref()),
                Err(e) => {
                    return vec![format!(
                        "(reading the logs failed: {})",
                        crate::engine_error::describe(&e)
                    )]
                }
            }
        }
        last_lines(&String::from_utf8_lossy(&text), DIAGNOSIS_LOG_LINES)
    }
}

/// State, exit code, OOM kill, restarts and error from an inspect answer.
pub(crate) fn from_inspect(raw: &ContainerInspectResponse) -> Diagnosis {
    let state = raw.state.as_ref();
    let status = state
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let running = state.and_then(|s| s.status) == Some(ContainerStateStatusEnum::RUNNING);
    Diagnosis {
        // A running container's exit code is that of no run.
        exit_code: if running {
            None
        } else {
            state.and_then(|s| s.exit_code)
        },
        oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
        error: state
            .and_then(|s| s.error.clone())
            .filter(|e| !e.trim().is_empty()),
        restart_count: u32::try_from(raw.restart_count.unwrap_or(0)).unwrap_or(u32::MAX),
        state: status,
        logs: Vec::new(),
    }
}

/// The values of the container's environment worth hiding, longest first (so a value
/// that contains another is replaced whole). `PORT` is cutover's own and stays readable.
pub(crate) fn env_values(raw: &ContainerInspectResponse) -> Vec<String> {
    let mut values: Vec<String> = raw
        .config
        .as_ref()
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.split_once('='))
        .filter(|(key, value)| *key != "PORT" && value.len() >= MIN_REDACTED_LEN)
        .map(|(_, value)| value.to_string())
        .collect();
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    values
}

/// `line` with every occurrence of every value, and every secret the built-in secret
/// rules of the image scanner find, replaced by [`REDACTED`].
pub(crate) fn redact(line: &str, values: &[String]) -> String {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    let mut out = line.to_string();
    for value in values {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), REDACTED);
        }
    }
    RULES
        .get_or_init(RuleSet::default_rules)
        .redact(&out, REDACTED)
}

/// The last `n` non-empty lines of `text`, without carriage returns.
pub(crate) fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// At most [`MAX_LINE_CHARS`] characters of `line`, marked when cut.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState};

    fn raw(env: &[&str]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            restart_count: Some(2),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                running: Some(false),
                exit_code: Some(137),
                oom_killed: Some(true),
                error: Some(String::new()),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                env: Some(env.iter().map(|e| e.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inspect_state_becomes_a_diagnosis() {
        let d = from_inspect(&raw(&[]));
        assert_eq!(d.state, "exited");
        assert_eq!(d.exit_code, Some(137));
        assert!(d.oom_killed);
        assert_eq!(d.restart_count, 2);
        assert_eq!(d.error, None, "an empty engine error is no error");
    }

    #[test]
    fn environment_values_are_redacted_longest_first() {
        let values = env_values(&raw(&[
            "PORT=8080",
            "DB=postgres://app:hunter22@db/app",
            "PASS=hunter22",
            "DEBUG=1",
            "EMPTY=",
        ]));
        assert_eq!(values, vec!["postgres://app:hunter22@db/app", "hunter22"]);
        assert_eq!(
            redact(
                "connect postgres://app:hunter22@db/app failed; retry with hunter22 on 8080, DEBUG=1",
                &values
            ),
            "connect [redacted] failed; retry with [redacted] on 8080, DEBUG=1"
        );
        // What the image scanner's secret rules find goes too, env or not.
        let key = format!("AKIA{}", "QWERTYUIOPASDFGH");
        assert_eq!(
            redact(&format!("using key {key}"), &[]),
            "using key [redacted]"
        );
    }

    #[test]
    fn only_the_last_lines_are_kept() {
        let text = "one\r\n\ntwo\nthree\n";
        assert_eq!(last_lines(text, 2), vec!["two", "three"]);
        assert_eq!(last_lines(text, 10), vec!["one", "two", "three"]);
        assert!(last_lines("", 5).is_empty());
        let long = "é".repeat(MAX_LINE_CHARS + 5);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_LINE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
