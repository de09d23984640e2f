//! Following deployments without polling: one task per followed deployment turns store
//! events into a fresh [`DeploymentDetail`] (one replay per change, however many follow)
//! and publishes it on a `watch` channel. Every follower — the CLI over the socket, the
//! API's and the UI's event streams — reads from that channel. The task ends when the
//! deployment has finished and no follower is left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use cutover_store::StoreEvent;

use crate::api::DeploymentDetail;
use crate::{view, ControlPlane, ServerError};

/// The live detail of one deployment.
pub type Live = watch::Receiver<Arc<DeploymentDetail>>;

/// The channels of the deployments being followed.
#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<String, watch::Sender<Arc<DeploymentDetail>>>>,
}

impl Hub {
    /// Number of deployments followed now (for tests and metrics).
    pub fn followed(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

fn concerns(event: &StoreEvent, id: &str) -> bool {
    match event {
        StoreEvent::Journal { deployment_id, .. }
        | StoreEvent::Deployment { deployment_id }
        | StoreEvent::Approval { deployment_id } => deployment_id == id,
        StoreEvent::Environment { .. } | StoreEvent::Credentials => false,
    }
}

impl ControlPlane {
    /// Follow deployment `id`: the receiver holds its detail now and changes whenever it
    /// changes. 404 when there is no such deployment.
    pub fn follow(self: &Arc<Self>, id: &str) -> Result<Live, ServerError> {
        let mut channels = self.hub.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(id) {
            return Ok(tx.subscribe());
        }
        // Subscribe before reading, so no change between the read and the loop is lost.
        let mut events = self.store.subscribe();
        let first = view::detail(&self.store, id)?;
        let finished = first.finished_at_ms.is_some();
        let (tx, rx) = watch::channel(Arc::new(first));
        if finished {
            // Nothing will change: no task, the receiver keeps the final detail.
            return Ok(rx);
        }
        channels.insert(id.to_string(), tx.clone());
        drop(channels);
        let cp = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                let changed = tokio::select! {
                    received = events.recv() => match received {
                        Ok(event) => concerns(&event, &id),
                        // Fell behind: something may have changed.
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = tx.closed() => {
                        // A follower may have subscribed since: stop only when none is left.
                        let mut channels = cp.hub.channels.lock().unwrap_or_else(|p| p.into_inner());
                        if tx.receiver_count() == 0 {
                            channels.remove(&id);
                            return;
                        }
                        false
                    }
                };
                if !changed {
                    continue;
                }
                match view::detail(&cp.store, &id) {
                    Ok(detail) => {
                        let finished = detail.finished_at_ms.is_some();
                        tx.send_if_modified(|current| {
                            if **current == detail {
                                return false;
                            }
                            *current = Arc::new(detail);
                            true
                        });
                        if finished {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(deployment = %id, error = %e, "could not read a followed deployment; will try at its next change")
                    }
                }
            }
            // Finished: followers keep the final detail; new ones read it from the store.
            cp.hub
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        Ok(rx)
    }
}

/// The details of a followed deployment: the one now, then each change, ending after the
/// first finished one. Wakes only when the deployment changes.
pub fn changes(
    cp: Arc<ControlPlane>,
    id: String,
    live: Live,
) -> impl futures_util::Stream<Item = Arc<DeploymentDetail>> {
    futures_util::stream::unfold(Some((cp, id, live, true)), |state| async move {
        let (cp, id, mut live, first) = state?;
        // The publisher stopped (the deployment finished, or it had no followers left
        // when this one came): follow again, which reads the store afresh.
        if !first && live.changed().await.is_err() {
            live = cp.follow(&id).ok()?;
        }
        let detail = live.borrow_and_update().clone();
        let next = detail
            .finished_at_ms
            .is_none()
            .then_some((cp, id, live, false));
        Some((detail, next))
    })
}
