//! The guardrails section of a deployment page: what the control plane requires of every
//! plan of the deployment's environment, so approvers see what they can rely on whatever
//! the spec said. Self-contained: `web/templates/guardrails_panel.html`.

use cutover_model::format_ms;

use crate::{ControlPlane, ServerError};

/// The environment's guardrails as the page shows them.
#[derive(Debug, Clone)]
pub struct GuardrailsPanel {
    pub env: String,
    /// `None` while the environment has none.
    pub version: Option<u64>,
    pub set_by: String,
    pub set_at: String,
    pub digest: String,
    /// (setting, requirement)
    pub rows: Vec<(&'static str, String)>,
}

/// The panel of environment `env`.
pub fn panel(cp: &ControlPlane, env: &str) -> Result<GuardrailsPanel, ServerError> {
    Ok(match crate::guardrails::current(cp, env)? {
        Some(v) => GuardrailsPanel {
            env: env.to_string(),
            version: Some(v.version),
            set_by: v.set_by,
            set_at: format_ms(v.set_at_ms),
            digest: v.digest,
            rows: crate::guardrails::summary(&v.guardrails),
        },
        None => GuardrailsPanel {
            env: env.to_string(),
            version: None,
            set_by: String::new(),
            set_at: String::new(),
            digest: String::new(),
            rows: Vec::new(),
        },
    })
}
