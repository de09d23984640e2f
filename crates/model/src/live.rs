//! When releases were live: the changes of each environment's current release (the one
//! serving all its traffic), and an image's path through environments derived from them.
//! Pure: the store keeps the changes, the control plane asks these functions.

use serde::{Deserialize, Serialize};

/// Why an environment's current release changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LiveCause {
    /// A deploy's record step made its new release current.
    Deploy,
    /// A promotion's record step made its new release current.
    Promote,
    /// A rollback deployment made an earlier release current again.
    Rollback,
    /// A failed deployment's unwind put the previous release back (or left none).
    Undo,
}

impl LiveCause {
    /// Whether the release this change replaced was rolled back (rather than replaced).
    pub fn rolls_back(self) -> bool {
        matches!(self, LiveCause::Rollback | LiveCause::Undo)
    }
}

/// One change of an environment's current release, recorded when it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveChange {
    pub env: String,
    /// The release made current; `None`: the environment serves no release any more.
    pub release_id: Option<String>,
    /// Its image id.
    pub image_id: Option<String>,
    /// The deployment that made the change.
    pub deployment_id: String,
    pub cause: LiveCause,
    pub at_ms: u64,
}

/// How a live period ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "kebab-case")]
pub enum LiveEnd {
    /// The release still serves the environment.
    StillLive,
    /// A newer deploy or promotion replaced it.
    Replaced { by: String },
    /// A rollback (or the unwind of a failed deployment) took traffic away from it.
    RolledBack { by: String },
}

/// One stretch of time a release was the current release of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePeriod {
    pub env: String,
    pub release_id: String,
    pub image_id: String,
    pub from_ms: u64,
    /// `None` while still live.
    pub until_ms: Option<u64>,
    pub ended: LiveEnd,
}

impl LivePeriod {
    /// How long it was (or, still live, has been) live, as of `now_ms`.
    pub fn live_ms(&self, now_ms: u64) -> u64 {
        self.until_ms.unwrap_or(now_ms).saturating_sub(self.from_ms)
    }

    pub fn rolled_back(&self) -> bool {
        matches!(self.ended, LiveEnd::RolledBack { .. })
    }
}

/// The live periods of one environment from its changes (any order; sorted by time here).
pub fn live_periods(changes: &[LiveChange]) -> Vec<LivePeriod> {
    let mut sorted: Vec<&LiveChange> = changes.iter().collect();
    sorted.sort_by_key(|c| c.at_ms);
    let mut out = Vec::new();
    for (i, change) in sorted.iter().enumerate() {
        let (Some(release_id), Some(image_id)) = (&change.release_id, &change.image_id) else {
            continue;
        };
        let next = sorted[i + 1..]
            .iter()
            .find(|n| n.release_id.as_ref() != Some(release_id) || n.cause.rolls_back());
        // A change to the same release again (a re-run of its record) does not end it.
        let (until_ms, ended) = match next {
            None => (None, LiveEnd::StillLive),
            Some(n) if n.cause.rolls_back() => (
                Some(n.at_ms),
                LiveEnd::RolledBack {
                    by: n.deployment_id.clone(),
                },
            ),
            Some(n) => (
                Some(n.at_ms),
                LiveEnd::Replaced {
                    by: n.deployment_id.clone(),
                },
            ),
        };
        // Skip a repeated change that an earlier one already opened.
        if i > 0 {
            let prev = sorted[i - 1];
            if prev.release_id.as_ref() == Some(release_id) && !change.cause.rolls_back() {
                continue;
            }
        }
        out.push(LivePeriod {
            env: change.env.clone(),
            release_id: release_id.clone(),
            image_id: image_id.clone(),
            from_ms: change.at_ms,
            until_ms,
            ended,
        });
    }
    out
}

/// The path of `image_id` through environments: every period it was live anywhere,
/// oldest first.
pub fn image_path(changes: &[LiveChange], image_id: &str) -> Vec<LivePeriod> {
    let mut envs: Vec<&str> = changes.iter().map(|c| c.env.as_str()).collect();
    envs.sort_unstable();
    envs.dedup();
    let mut out: Vec<LivePeriod> = envs
        .into_iter()
        .flat_map(|env| {
            let of_env: Vec<LiveChange> =
                changes.iter().filter(|c| c.env == env).cloned().collect();
            live_periods(&of_env)
        })
        .filter(|p| p.image_id == image_id)
        .collect();
    out.sort_by(|a, b| a.from_ms.cmp(&b.from_ms).then_with(|| a.env.cmp(&b.env)));
    out
}

/// One line for people: `staging as staging-7 for 12m 3s (since …, rolled back by staging-9)`.
pub fn describe_period(period: &LivePeriod, now_ms: u64) -> String {
    let how = match &period.ended {
        LiveEnd::StillLive => "still live".to_string(),
        LiveEnd::Replaced { by } => format!(
            "replaced by {by} at {}",
            crate::format_ms(period.until_ms.unwrap_or(now_ms))
        ),
        LiveEnd::RolledBack { by } => format!(
            "rolled back by {by} at {}",
            crate::format_ms(period.until_ms.unwrap_or(now_ms))
        ),
    };
    format!(
        "{} as {} for {} (since {}, {how})",
        period.env,
        period.release_id,
        crate::format_duration_ms(period.live_ms(now_ms)),
        crate::format_ms(period.from_ms),
    )
}

/// One line that does not change while the period lasts (for digested views):
/// `staging as staging-7, live from … (still live)` or `…, live from … for 12m 3s until …, rolled back by staging-9`.
pub fn describe_period_fixed(period: &LivePeriod) -> String {
    let from = crate::format_ms(period.from_ms);
    match (&period.ended, period.until_ms) {
        (LiveEnd::StillLive, _) | (_, None) => format!(
            "{} as {}, live from {from} (still live)",
            period.env, period.release_id
        ),
        (end, Some(until)) => {
            let how = match end {
                LiveEnd::RolledBack { by } => format!("rolled back by {by}"),
                LiveEnd::Replaced { by } => format!("replaced by {by}"),
                LiveEnd::StillLive => String::new(),
            };
            format!(
                "{} as {}, live from {from} for {} until {}, {how}",
                period.env,
                period.release_id,
                crate::format_duration_ms(until.saturating_sub(period.from_ms)),
                crate::format_ms(until)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(
        env: &str,
        release: Option<&str>,
        image: &str,
        cause: LiveCause,
        at: u64,
    ) -> LiveChange {
        LiveChange {
            env: env.to_string(),
            release_id: release.map(str::to_string),
            image_id: release.map(|_| image.to_string()),
            deployment_id: format!("{env}-d{at}"),
            cause,
            at_ms: at,
        }
    }

    #[test]
    fn periods_end_by_replacement_or_rollback() {
        let changes = vec![
            change(
                "staging",
                Some("staging-1"),
                "sha256:a",
                LiveCause::Deploy,
                1_000,
            ),
            change(
                "staging",
                Some("staging-2"),
                "sha256:b",
                LiveCause::Deploy,
                5_000,
            ),
            change(
                "staging",
                Some("staging-1"),
                "sha256:a",
                LiveCause::Rollback,
                9_000,
            ),
        ];
        let periods = live_periods(&changes);
        assert_eq!(periods.len(), 3);
        assert_eq!(periods[0].release_id, "staging-1");
        assert_eq!(periods[0].until_ms, Some(5_000));
        assert!(matches!(periods[0].ended, LiveEnd::Replaced { .. }));
        assert_eq!(periods[1].release_id, "staging-2");
        assert!(periods[1].rolled_back());
        assert_eq!(periods[1].live_ms(100_000), 4_000);
        assert_eq!(periods[2].ended, LiveEnd::StillLive);
        assert_eq!(periods[2].live_ms(10_000), 1_000);
    }

    #[test]
    fn a_repeated_record_does_not_split_a_period_and_an_undo_rolls_back() {
        let changes = vec![
            change(
                "production",
                Some("production-1"),
                "sha256:a",
                LiveCause::Deploy,
                1_000,
            ),
            change(
                "production",
                Some("production-1"),
                "sha256:a",
                LiveCause::Deploy,
                1_500,
            ),
            change(
                "production",
                Some("production-2"),
                "sha256:b",
                LiveCause::Deploy,
                3_000,
            ),
            change(
                "production",
                Some("production-1"),
                "sha256:a",
                LiveCause::Undo,
                3_500,
            ),
        ];
        let periods = live_periods(&changes);
        assert_eq!(periods.len(), 3, "{periods:?}");
        assert_eq!(periods[0].from_ms, 1_000);
        assert_eq!(periods[0].until_ms, Some(3_000));
        assert!(
            periods[1].rolled_back(),
            "the unwind took production-2 away"
        );
        assert_eq!(periods[2].ended, LiveEnd::StillLive);
    }

    #[test]
    fn clearing_the_environment_rolls_back_its_only_release() {
        let changes = vec![
            change(
                "staging",
                Some("staging-1"),
                "sha256:a",
                LiveCause::Deploy,
                1_000,
            ),
            change("staging", None, "", LiveCause::Undo, 2_000),
        ];
        let periods = live_periods(&changes);
        assert_eq!(periods.len(), 1);
        assert!(periods[0].rolled_back());
        assert_eq!(periods[0].live_ms(9_999), 1_000);
    }

    #[test]
    fn an_image_path_crosses_environments_in_time_order() {
        let changes = vec![
            change(
                "staging",
                Some("staging-1"),
                "sha256:a",
                LiveCause::Deploy,
                1_000,
            ),
            change(
                "production",
                Some("production-1"),
                "sha256:a",
                LiveCause::Promote,
                4_000,
            ),
            change(
                "staging",
                Some("staging-2"),
                "sha256:b",
                LiveCause::Deploy,
                6_000,
            ),
        ];
        let path = image_path(&changes, "sha256:a");
        let where_: Vec<(&str, &str)> = path
            .iter()
            .map(|p| (p.env.as_str(), p.release_id.as_str()))
            .collect();
        assert_eq!(
            where_,
            [("staging", "staging-1"), ("production", "production-1")]
        );
        assert_eq!(path[0].until_ms, Some(6_000));
        assert!(image_path(&changes, "sha256:c").is_empty());
        let fixed = describe_period_fixed(&path[0]);
        assert!(fixed.contains("for 5s until"), "{fixed}");
        assert!(fixed.ends_with("replaced by staging-d6000"), "{fixed}");
        assert!(describe_period_fixed(&path[1]).ends_with("(still live)"));
        let line = describe_period(&path[0], 10_000);
        assert!(
            line.starts_with("staging as staging-1 for 5s (since "),
            "{line}"
        );
        assert!(line.contains("replaced by staging-d6000"), "{line}");
    }
}
