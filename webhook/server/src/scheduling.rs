//! The webhook's view of which scheduler places opted-in pods: a watch on the one ConfigMap
//! that says so ([`jellyfin_ha_core::scheduling`]), folded into the policy every admission
//! reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use futures::StreamExt;
use jellyfin_ha_core::Policy;
use jellyfin_ha_core::scheduling::{
    CONFIGMAP, EXTENDER_MODE, MODE_KEY, SCHEDULER_MODE, SCHEDULER_NAME_KEY, Scheduling,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::admin::ReadyCheck;

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
/// changes. Returns a readiness check that holds until the first list has been seen, so no pod
/// is admitted on a guess.
pub fn follow(
    client: Client,
    namespace: &str,
    policy: Arc<ArcSwap<Policy>>,
    stop: CancellationToken,
) -> ReadyCheck {
    let synced = Arc::new(AtomicBool::new(false));
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
    let seen = Arc::clone(&synced);
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        // Whether the list in progress has shown the ConfigMap yet.
        let mut listed = false;
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = stop.cancelled() => return,
            };
            let scheduling = match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, namespace, "watching ConfigMap {CONFIGMAP}; keeping the last view");
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    listed = false;
                    continue;
                }
                Some(Ok(Event::InitApply(map))) => {
                    listed = true;
                    Scheduling::from_configmap(map.data.as_ref())
                }
                Some(Ok(Event::InitDone)) => {
                    seen.store(true, Ordering::Release);
                    if listed {
                        continue;
                    }
                    Scheduling::Default
                }
                Some(Ok(Event::Apply(map))) => Scheduling::from_configmap(map.data.as_ref()),
                Some(Ok(Event::Delete(_))) => Scheduling::Default,
            };
            if policy.load().scheduling != scheduling {
                tracing::info!(
                    namespace,
                    scheduling = scheduling.describe(),
                    "pods are scheduled by"
                );
                policy.rcu(|current| Policy {
                    scheduling: scheduling.clone(),
                    ..Policy::clone(current)
                });
            }
        }
    });
    Arc::new(move || {
        (!synced.load(Ordering::Acquire)).then(|| format!("ConfigMap {CONFIGMAP} not read yet"))
    })
}
