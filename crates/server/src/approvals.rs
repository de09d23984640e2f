//! Deciding at approval gates: the rules every channel (HTTP API, web UI, the CLI over the
//! Unix socket) goes through.
//!
//! A decision is accepted only when the deployment waits at an approval step, the
//! principal may approve in the deployment's environment, the principal is neither the
//! deployment's requester nor the principal that started it (separation of duties), and
//! the decision names the plan digest and image id the deployment runs now (else it is
//! stale), and an approval names the digest of the approval view the approver was shown
//! ([`crate::approval_view`]), which must still be the deployment's view. Accepted decisions are stored (the executor counts them), audited and announced
//! to webhooks.

use serde_json::json;

use cutover_model::now_ms;
use cutover_store::{Approval, Decision};

use crate::auth::{Principal, Role};
use crate::webhooks::Event;
use crate::{audit, ControlPlane, ServerError};

fn stored(decision: crate::api::Decision) -> Decision {
    match decision {
        crate::api::Decision::Approve => Decision::Approve,
        crate::api::Decision::Reject => Decision::Reject,
    }
}

/// Record `who`'s decision on `deployment_id`. See the module docs for the rules.
pub async fn decide(
    cp: &ControlPlane,
    who: &Principal,
    deployment_id: &str,
    request: &crate::api::ApprovalRequest,
) -> Result<(), ServerError> {
    let crate::api::ApprovalRequest {
        decision,
        comment,
        plan_digest,
        image_id,
        view_digest,
    } = request;
    let (plan_digest, image_id) = (plan_digest.as_str(), image_id.as_str());
    let record = cp.store.deployment(deployment_id)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "deployment {deployment_id} not found; `cutover history` lists deployments"
        ))
    })?;
    who.require(Role::Approver, Some(&record.env))?;
    if comment.len() > 4096 {
        return Err(ServerError::BadRequest(
            "comment: must be at most 4096 bytes".to_string(),
        ));
    }
    let decision = stored(*decision);
    let view = cutover_executor::deployment_view(&cp.store, deployment_id)?;
    let gate = match &view.approval {
        Some(gate) if gate.waiting => gate,
        _ => {
            return Err(ServerError::Conflict(format!(
            "deployment {deployment_id} is not waiting for approval (it is {}); nothing to decide",
            record.status.label()
        )))
        }
    };
    let starter = crate::deploy::started_by(cp, deployment_id)?;
    // Separation of duties goes by the person: another token of the same owner, or the
    // starter's own account on the socket, is the same person.
    let started_by_them = starter
        .as_ref()
        .is_some_and(|s| s.principal == who.name || s.person.as_deref() == Some(&who.person));
    if who.name == record.requested_by || who.person == record.requested_by || started_by_them {
        return Err(ServerError::Conflict(format!(
            "{} started deployment {deployment_id} and cannot approve or reject it (separation of duties); ask another approver",
            who.person
        )));
    }
    let current_image = gate.image_id.as_deref().unwrap_or("");
    if plan_digest != gate.plan_digest || image_id != current_image {
        return Err(ServerError::Conflict(format!(
            "stale approval: the plan or image changed since you reviewed it (deployment {deployment_id} runs plan {} with image {}); review them and decide again",
            gate.plan_digest,
            if current_image.is_empty() { "(not built yet)" } else { current_image }
        )));
    }
    // The approver approves what the view showed them: an approval names the view's digest,
    // and a view that changed since (a new scan verdict, another running release) is
    // refused. A rejection needs no view, but one that names a view must name this one.
    let view_digest = view_digest
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if view_digest.is_none() && decision == Decision::Approve {
        return Err(ServerError::BadRequest(format!(
            "view_digest: missing; review what deployment {deployment_id} changes first (GET /api/v1/deployments/{deployment_id}/approval-view, `cutover approve`, or the web UI) and send the view_digest you reviewed"
        )));
    }
    if let Some(seen) = view_digest {
        let current = crate::approval_view::approval_view(cp, deployment_id).await?;
        if seen != current.view_digest {
            return Err(ServerError::Conflict(format!(
                "the deployment changed since you looked; review again (the approval view of deployment {deployment_id} is now {})",
                current.view_digest
            )));
        }
    }
    let view_digest = view_digest.unwrap_or_default().to_string();
    // Recorded by person, so N approvals need N people, whatever credentials they hold.
    let approval = Approval {
        deployment_id: deployment_id.to_string(),
        by: who.person.clone(),
        decision,
        plan_digest: plan_digest.to_string(),
        image_id: image_id.to_string(),
        view_digest: view_digest.clone(),
        comment: comment.to_string(),
        at_ms: now_ms(),
    };
    let (action, past) = match decision {
        Decision::Approve => ("approve", "approved"),
        Decision::Reject => ("reject", "rejected"),
    };
    audit::record_async(
        &cp.store,
        &who.person,
        action,
        deployment_id,
        json!({
            "credential": who.name,
            "env": record.env,
            "plan_digest": plan_digest,
            "image_id": image_id,
            "view_digest": view_digest,
            "comment": comment,
        }),
    )
    .await?;
    // Audited first: a decision that the audit log (and its sink) cannot record never
    // counts. A store failure after this leaves an entry for a decision that did not take;
    // the caller sees the error and decides again.
    cp.store
        .write_async(|store| store.add_approval(&approval))
        .await?;
    cp.webhooks.notify(Event {
        event: action.to_string(),
        deployment: deployment_id.to_string(),
        env: record.env.clone(),
        release: record.release_id.clone(),
        reason: Some(format!(
            "{} {past}{}",
            who.person,
            if comment.is_empty() {
                String::new()
            } else {
                format!(": {comment}")
            }
        )),
    });
    tracing::info!(deployment = deployment_id, by = %who.person, credential = %who.name, decision = action, "approval decision recorded");
    Ok(())
}
