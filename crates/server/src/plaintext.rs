//! Secrets written in plain text: a `container.env` value that the supply chain's
//! built-in secret rules take for a secret is an error in a protected environment (one
//! that is `protected` or needs approvals) and a warning elsewhere, naming the key (never
//! the value) and pointing at `cutover secret set`.

use cutover_model::Spec;
use cutover_supply::RuleSet;

use crate::projects::Admitted;
use crate::ServerError;

/// The keys of `container.env` whose values look like secrets, in key order.
pub fn suspicious_keys(spec: &Spec) -> Vec<String> {
    let rules = RuleSet::default_rules();
    spec.container
        .env
        .iter()
        .filter(|(key, value)| {
            // As an env file line, so rules that look for a key name see one.
            !rules
                .scan_text(&format!("{key}={value}\n"), None)
                .is_empty()
        })
        .map(|(key, _)| key.clone())
        .collect()
}

fn advice(key: &str, env: &str) -> String {
    format!(
        "container.env.{key} looks like a secret written in plain text; store it with `cutover secret set {env}/{}` and reference it under [container.secrets] instead",
        key.to_ascii_lowercase().replace('_', "-")
    )
}

/// Refuse (protected environments) or warn about env values that look like secrets.
/// Returns the warnings.
pub fn check_env_values(
    spec: &Spec,
    env: &str,
    admitted: &Admitted,
) -> Result<Vec<String>, ServerError> {
    let keys = suspicious_keys(spec);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let protected = spec
        .environments
        .get(env)
        .is_some_and(|e| e.protected || e.approval);
    if protected {
        let shown: Vec<String> = keys.iter().map(|k| advice(k, env)).collect();
        return Err(ServerError::BadRequest(format!(
            "{}: environment {env} is protected: {}",
            admitted.file.display(),
            shown.join("; ")
        )));
    }
    Ok(keys
        .iter()
        .map(|k| format!("warning: {}", advice(k, env)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &[(&str, &str)], protected: bool) -> Spec {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "app": "hello", "strategy": "blue-green", "base_dir": "/srv/hello",
            "build": {"kind": "cargo", "manifest": "/srv/hello/Cargo.toml", "bin": "hello", "profile": "release"},
            "container": serde_json::to_value(cutover_model::ContainerSpec::default()).unwrap(),
            "health": serde_json::to_value(cutover_model::HealthSpec::default()).unwrap(),
            "supply": {"signing_key": null},
            "environments": {"production": serde_json::to_value(cutover_model::EnvironmentSpec::with_listen("127.0.0.1:8080")).unwrap()},
        }))
        .unwrap();
        for (k, v) in env {
            spec.container.env.insert(k.to_string(), v.to_string());
        }
        spec.environments.get_mut("production").unwrap().protected = protected;
        spec
    }

    fn admitted() -> Admitted {
        Admitted {
            source: Default::default(),
            file: "/srv/hello/deploy.toml".into(),
            text: None,
            root: Some("/srv/hello".into()),
        }
    }

    /// A Stripe live key, built at run time so no source file holds one.
    fn stripe_key() -> String {
        format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc")
    }

    #[test]
    fn a_secret_in_env_is_an_error_when_protected_and_a_warning_elsewhere() {
        let key = stripe_key();
        let open = spec(&[("STRIPE_KEY", &key), ("LOG_LEVEL", "info")], false);
        let warnings = check_env_values(&open, "production", &admitted()).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("container.env.STRIPE_KEY"));
        assert!(warnings[0].contains("cutover secret set production/stripe-key"));
        assert!(!warnings[0].contains(&key));

        let protected = spec(&[("STRIPE_KEY", &key)], true);
        let err = check_env_values(&protected, "production", &admitted())
            .unwrap_err()
            .to_string();
        assert!(err.contains("container.env.STRIPE_KEY"), "{err}");
        assert!(err.contains("deploy.toml"), "{err}");
        assert!(!err.contains(&key), "{err}");
    }

    #[test]
    fn ordinary_values_pass() {
        let plain = spec(&[("LOG_LEVEL", "info"), ("PORT", "8080")], true);
        assert!(check_env_values(&plain, "production", &admitted())
            .unwrap()
            .is_empty());
    }
}
