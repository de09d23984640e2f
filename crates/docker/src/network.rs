//! One Docker network per environment, so the instances of different environments cannot
//! reach one another.
//!
//! Each environment's containers join `cutover-<app>-<env>`, a bridge network made on first
//! use with the cutover labels and inter-container communication off
//! (`com.docker.network.bridge.enable_icc=false`): a container reaches no other container,
//! of its own environment or another (the Engine keeps bridge networks apart from each
//! other anyway, and drops traffic between containers of a network without ICC). The proxy
//! reaches instances on their published `127.0.0.1` ports, which this does not touch.
//! Networks are kept when their last container goes.
//!
//! The Engine allows two networks of one name; creating one is therefore serialised in this
//! process, and containers name their network by id. Should two processes race, each uses
//! the network it finds first: both are of the environment with ICC off, so nothing is
//! shared.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;
use cutover_model::{labels, ProviderError};

use crate::engine_error::provider_error;
use crate::DockerProvider;

/// The bridge driver option that turns inter-container communication on or off.
pub(crate) const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// The network of an environment.
pub(crate) fn network_name(app: &str, env: &str) -> String {
    format!("cutover-{app}-{env}")
}

impl DockerProvider {
    /// The id of the environment's network, made when it does not exist yet.
    pub(crate) async fn ensure_network(
        &self,
        app: &str,
        env: &str,
    ) -> Result<String, ProviderError> {
        let name = network_name(app, env);
        let _serial = self.networks.lock().await;
        if let Some(id) = self.find_network(&name, app, env).await? {
            return Ok(id);
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::APP.to_string(), app.to_string()),
                (labels::ENV.to_string(), env.to_string()),
            ])),
            options: Some(HashMap::from([(
                ICC_OPTION.to_string(),
                "false".to_string(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|e| provider_error(&format!("creating network {name}"), &e))?;
        self.find_network(&name, app, env).await?.ok_or_else(|| {
            ProviderError::transient(format!("network {name} was created but is gone; retry"))
        })
    }

    /// The first (by id) network named exactly `name`; refused when it is not one cutover
    /// made for this app and environment with inter-container communication off.
    async fn find_network(
        &self,
        name: &str,
        app: &str,
        env: &str,
    ) -> Result<Option<String>, ProviderError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut found: Vec<_> = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| provider_error(&format!("listing networks named {name}"), &e))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        let Some(network) = found.into_iter().next() else {
            return Ok(None);
        };
        let label = |key: &str| {
            network
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
                .unwrap_or_default()
        };
        let managed = label(labels::MANAGED) == "true";
        let icc_off = network
            .options
            .as_ref()
            .and_then(|o| o.get(ICC_OPTION))
            .is_some_and(|v| v == "false");
        if !managed || !icc_off {
            return Err(ProviderError::permanent(format!(
                "network {name} exists but was not made by cutover with inter-container communication off; remove it (docker network rm {name}) so cutover can make it"
            )));
        }
        let (owner_app, owner_env) = (label(labels::APP), label(labels::ENV));
        if owner_app != app || owner_env != env {
            return Err(ProviderError::permanent(format!(
                "network {name} belongs to app {owner_app:?} environment {owner_env:?}, not app {app:?} environment {env:?}; rename the app or environment so their names do not collide"
            )));
        }
        Ok(network.id.filter(|id| !id.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_get_their_own_network_names() {
        assert_eq!(network_name("hello", "staging"), "cutover-hello-staging");
        assert_ne!(
            network_name("hello", "staging"),
            network_name("hello", "production")
        );
    }
}
