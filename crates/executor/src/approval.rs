//! Counting approvals at an approval gate.
//!
//! A decision counts only when it names this deployment's plan digest and the image being
//! approved, and comes from someone other than the person who requested the deployment.
//! Each person has one decision per deployment (the store keeps the latest). Any counted
//! rejection rejects the deployment; otherwise `required` distinct approvers pass the gate.

use cutover_model::Plan;
use cutover_store::{Approval, Decision};
use serde::Serialize;

/// Why a decision does or does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VoteStatus {
    Counted,
    /// Names another plan digest (an earlier plan of the same deployment id, or a typo).
    StalePlan,
    /// Names another image than the one this deployment runs.
    StaleImage,
    /// The person who requested the deployment cannot approve it.
    Requester,
}

impl VoteStatus {
    /// Why a decision does not count, for people; `None` when it counts.
    pub fn explain(self) -> Option<&'static str> {
        match self {
            VoteStatus::Counted => None,
            VoteStatus::StalePlan => Some("names another plan digest; approve the current plan"),
            VoteStatus::StaleImage => Some("names another image; approve the current image"),
            VoteStatus::Requester => Some("the requester of a deployment cannot approve it"),
        }
    }
}

/// One decision and whether it counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vote {
    pub approval: Approval,
    pub status: VoteStatus,
    /// Why it does not count, for people; `None` when it counts.
    pub note: Option<&'static str>,
}

/// The decisions about one deployment, judged against its plan and image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally {
    /// Distinct approvers whose approval counts, oldest first.
    pub approved_by: Vec<String>,
    /// The first counted rejection, if any.
    pub rejected: Option<Approval>,
    /// Every decision, oldest first.
    pub votes: Vec<Vote>,
}

/// Judge `approvals` for `plan` and the image `image_id`.
pub fn tally(plan: &Plan, image_id: &str, approvals: &[Approval]) -> Tally {
    let mut approved_by: Vec<String> = Vec::new();
    let mut rejected = None;
    let mut votes = Vec::new();
    for approval in approvals {
        let status = if approval.deployment_id != plan.deployment_id
            || approval.plan_digest != plan.digest
        {
            VoteStatus::StalePlan
        } else if approval.image_id != image_id {
            VoteStatus::StaleImage
        } else if approval.by == plan.requested_by {
            VoteStatus::Requester
        } else {
            VoteStatus::Counted
        };
        if status == VoteStatus::Counted {
            match approval.decision {
                Decision::Approve => {
                    if !approved_by.contains(&approval.by) {
                        approved_by.push(approval.by.clone());
                    }
                }
                Decision::Reject => {
                    if rejected.is_none() {
                        rejected = Some(approval.clone());
                    }
                }
            }
        }
        votes.push(Vote {
            approval: approval.clone(),
            status,
            note: status.explain(),
        });
    }
    Tally {
        approved_by,
        rejected,
        votes,
    }
}

/// Approvals a gate needs: at least one, whatever the plan says.
pub fn required(gate_required: u32) -> usize {
    gate_required.max(1) as usize
}

/// A duration for people; the one formatter of the workspace.
pub use cutover_model::format_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_model::{DeploymentKind, PLAN_FORMAT};

    fn plan() -> Plan {
        Plan {
            format: PLAN_FORMAT,
            deployment_id: "d1".to_string(),
            app: "hello".to_string(),
            env: "production".to_string(),
            kind: DeploymentKind::Deploy,
            release_id: "r1".to_string(),
            previous_release: None,
            strategy: "blue-green".to_string(),
            spec_digest: "sha256:spec".to_string(),
            requested_by: "alice".to_string(),
            created_at_ms: 0,
            steps: Vec::new(),
            digest: "sha256:plan".to_string(),
        }
    }

    fn vote(by: &str, decision: Decision, plan_digest: &str, image: &str, at: u64) -> Approval {
        Approval {
            deployment_id: "d1".to_string(),
            by: by.to_string(),
            decision,
            plan_digest: plan_digest.to_string(),
            image_id: image.to_string(),
            view_digest: String::new(),
            comment: format!("{by} says so"),
            at_ms: at,
        }
    }

    #[test]
    fn counts_only_matching_approvals_from_others() {
        let approvals = [
            vote("alice", Decision::Approve, "sha256:plan", "sha256:img", 1),
            vote("bob", Decision::Approve, "sha256:old", "sha256:img", 2),
            vote("carol", Decision::Approve, "sha256:plan", "sha256:other", 3),
            vote("dave", Decision::Approve, "sha256:plan", "sha256:img", 4),
        ];
        let t = tally(&plan(), "sha256:img", &approvals);
        assert_eq!(t.approved_by, ["dave"]);
        assert_eq!(t.rejected, None);
        let statuses: Vec<VoteStatus> = t.votes.iter().map(|v| v.status).collect();
        assert_eq!(
            statuses,
            [
                VoteStatus::Requester,
                VoteStatus::StalePlan,
                VoteStatus::StaleImage,
                VoteStatus::Counted
            ]
        );
    }

    #[test]
    fn a_valid_rejection_is_reported_and_stale_ones_are_not() {
        let approvals = [
            vote("bob", Decision::Reject, "sha256:old", "sha256:img", 1),
            vote("alice", Decision::Reject, "sha256:plan", "sha256:img", 2),
            vote("carol", Decision::Approve, "sha256:plan", "sha256:img", 3),
        ];
        let t = tally(&plan(), "sha256:img", &approvals);
        assert_eq!(t.rejected, None, "stale and self rejections do not count");
        assert_eq!(t.approved_by, ["carol"]);
        let mut approvals = approvals.to_vec();
        approvals.push(vote(
            "dave",
            Decision::Reject,
            "sha256:plan",
            "sha256:img",
            4,
        ));
        let t = tally(&plan(), "sha256:img", &approvals);
        assert_eq!(t.rejected.map(|r| r.by), Some("dave".to_string()));
    }

    #[test]
    fn at_least_one_approval_is_required() {
        assert_eq!(required(0), 1);
        assert_eq!(required(3), 3);
    }
}
