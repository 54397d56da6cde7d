//! The webhook's view of which scheduler places opted-in pods: the one ConfigMap that says so
//! ([`jellyfin_ha_core::scheduling`]), or a value given on the command line.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jellyfin_ha_core::Policy;
use jellyfin_ha_core::scheduling::{
    CONFIGMAP, EXTENDER_MODE, MODE_KEY, SCHEDULER_MODE, SCHEDULER_NAME_KEY, Scheduling,
};
use kube::Client;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::admin::ReadyCheck;
use crate::follow;

/// Where the webhook learns which scheduler places opted-in pods.
#[derive(Debug, Clone)]
pub enum Source {
    /// The ConfigMap, followed as it changes.
    ConfigMap,
    /// A value given on the command line.
    Fixed(Scheduling),
}

/// `configmap`, or a fixed value as [`parse`] reads it.
pub fn parse_source(value: &str) -> Result<Source, String> {
    match value {
        "configmap" => Ok(Source::ConfigMap),
        fixed => parse(fixed).map(Source::Fixed),
    }
}

/// `none`, `extender` or `scheduler:NAME`, checked as the ConfigMap's data would be.
pub fn parse(value: &str) -> Result<Scheduling, String> {
    let entries = match value.split_once(':') {
        _ if value == "none" => return Ok(Scheduling::Default),
        None if value == EXTENDER_MODE => vec![(MODE_KEY, EXTENDER_MODE)],
        Some((SCHEDULER_MODE, name)) => {
            vec![(MODE_KEY, SCHEDULER_MODE), (SCHEDULER_NAME_KEY, name)]
        }
        _ => return Err("expected none, extender or scheduler:NAME".to_string()),
    };
    let data: BTreeMap<String, String> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Scheduling::from_configmap(Some(&data)) {
        Scheduling::Unusable(why) => Err(why),
        scheduling => Ok(scheduling),
    }
}

/// Follows the ConfigMap in `namespace` until `stop`, swapping the policy's scheduling as it
/// changes. Ready once the first list has been seen.
pub fn follow(
    client: Client,
    namespace: &str,
    policy: Arc<ArcSwap<Policy>>,
    stop: CancellationToken,
) -> ReadyCheck {
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
    let what = "scheduling ConfigMap";
    follow::configmaps(client, namespace, config, what, stop, move |maps| {
        let data = maps.get(CONFIGMAP).and_then(|map| map.data.as_ref());
        let scheduling = Scheduling::from_configmap(data);
        if policy.load().scheduling != scheduling {
            tracing::info!(scheduling = scheduling.describe(), "pods are scheduled by");
            policy.rcu(|current| Policy {
                scheduling: scheduling.clone(),
                ..Policy::clone(current)
            });
        }
    })
}
