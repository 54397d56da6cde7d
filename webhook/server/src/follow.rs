//! What the webhook follows in the cluster besides its config file: ConfigMaps in its own
//! namespace, each folded into the policy every admission reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use futures::StreamExt;
use jellyfin_ha_core::Policy;
use jellyfin_ha_core::busyness::report::{AgentReport, REPORT_KEY, report_selector};
use jellyfin_ha_core::config::RenderGroupsSource;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::admin::ReadyCheck;

/// Watches the ConfigMaps that `config` selects in `namespace` until `stop`, and calls `fold`
/// with all of them, by name, after the first list and after every change. Returns a readiness
/// check that holds until the first list has been seen, so no pod is admitted on a guess.
pub fn configmaps(
    client: Client,
    namespace: &str,
    config: watcher::Config,
    what: &'static str,
    stop: CancellationToken,
    mut fold: impl FnMut(&BTreeMap<String, ConfigMap>) + Send + 'static,
) -> ReadyCheck {
    let synced = Arc::new(AtomicBool::new(false));
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let seen = Arc::clone(&synced);
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let mut maps = BTreeMap::new();
        // The list in progress, which replaces `maps` once complete.
        let mut listing = BTreeMap::new();
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = stop.cancelled() => return,
            };
            match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, namespace, "watching the {what}; keeping the last view");
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    listing.clear();
                    continue;
                }
                Some(Ok(Event::InitApply(map))) => {
                    listing.insert(map.name_any(), map);
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    maps = std::mem::take(&mut listing);
                    seen.store(true, Ordering::Release);
                }
                Some(Ok(Event::Apply(map))) => {
                    maps.insert(map.name_any(), map);
                }
                Some(Ok(Event::Delete(map))) => {
                    maps.remove(&map.name_any());
                }
            }
            fold(&maps);
        }
    });
    Arc::new(move || (!synced.load(Ordering::Acquire)).then(|| format!("the {what} not read yet")))
}

/// With `renderGroupsFrom: agents`, keeps the policy's render groups to the union of the GIDs
/// the node agents report, the configured list until they report any. It does not hold
/// readiness: until the reports are read (or while they cannot be), pods get the configured
/// list, which is a superset.
pub fn render_groups(
    client: Client,
    namespace: &str,
    policy: Arc<ArcSwap<Policy>>,
    stop: CancellationToken,
) {
    let configured = policy.load().render_groups.clone();
    let config = watcher::Config::default().labels(&report_selector());
    let fold = move |maps: &BTreeMap<String, ConfigMap>| {
        let reported: Vec<u32> = maps
            .values()
            .filter_map(read_report)
            .flat_map(|report| report.render_gids().collect::<Vec<_>>())
            .collect();
        let groups = RenderGroupsSource::Agents.render_groups(&configured, reported);
        if policy.load().render_groups != groups {
            tracing::info!(?groups, "render groups from the node agents' reports");
            policy.rcu(|current| Policy {
                render_groups: groups.clone(),
                ..Policy::clone(current)
            });
        }
    };
    let _not_waited_for = configmaps(
        client,
        namespace,
        config,
        "node agents' reports",
        stop,
        fold,
    );
}

fn read_report(map: &ConfigMap) -> Option<AgentReport> {
    let json = map.data.as_ref()?.get(REPORT_KEY)?;
    AgentReport::from_json(json)
        .inspect_err(|e| tracing::warn!(report = %map.name_any(), error = %e, "unreadable node agent report"))
        .ok()
}
