//! Reads the snapshot `doctor` judges: list and get only, and a status query to each fence
//! agent. Nothing here writes to the cluster or to a device.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use jellyfin_ha_core::busyness::report::{
    AgentReport, REPORT_KEY, REPORT_LABELS, REPORT_NODE_LABEL,
};
use jellyfin_ha_core::doctor::{
    CONFIG_CONFIGMAP, CONFIG_KEY, CaCertificate, CephDriver, ConfigSource, FenceStatus,
    POD_WEBHOOK, ServerVersion, Snapshot, WORKLOAD_WEBHOOK,
};
use jellyfin_ha_core::extender::snapshot::NODE_LEASE_NAMESPACE;
use jellyfin_ha_core::fencing::decide::{NodeFacts, eligibility};
use jellyfin_ha_core::scheduling::{CONFIGMAP as SCHEDULING_CONFIGMAP, Scheduling};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass, VolumeAttachment};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::DoctorArgs;
use crate::config::{load_config, parse_config};
use crate::fencer::agent::FenceAgent;
use crate::fencer::device::Device;
use jellyfin_ha_core::Policy;

async fn list<K>(api: Api<K>, params: &ListParams) -> anyhow::Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    Ok(api
        .list(params)
        .await
        .with_context(|| format!("listing {kind}"))?
        .items)
}

/// The snapshot for the namespace the client defaults to.
pub async fn snapshot(client: &Client, args: &DoctorArgs) -> anyhow::Result<Snapshot> {
    let namespace = client.default_namespace().to_string();
    let install = args.install.install_namespace.as_str();
    let all = ListParams::default();

    let (config_source, config) = config(client, args).await?;
    let mut policy = config;
    policy.scheduling = Api::<ConfigMap>::namespaced(client.clone(), install)
        .get_opt(SCHEDULING_CONFIGMAP)
        .await
        .with_context(|| format!("reading ConfigMap {install}/{SCHEDULING_CONFIGMAP}"))?
        // Read as the webhook reads it.
        .map_or(Scheduling::Default, |map| {
            Scheduling::from_configmap(map.data.as_ref())
        });

    let version = client
        .apiserver_version()
        .await
        .ok()
        .and_then(|info| ServerVersion::parse(&info.major, &info.minor, &info.git_version));
    let namespace_labels = Api::<Namespace>::all(client.clone())
        .get(&namespace)
        .await
        .with_context(|| format!("reading namespace {namespace}"))?
        .metadata
        .labels
        .unwrap_or_default();

    let node_params = match &args.node_selector {
        Some(selector) => ListParams::default().labels(selector),
        None => ListParams::default(),
    };
    let nodes: Vec<Node> = list(Api::all(client.clone()), &node_params).await?;
    let node_names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let leases: Vec<Lease> = list(Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE), &all)
        .await?
        .into_iter()
        .filter(|l: &Lease| {
            l.metadata
                .name
                .as_ref()
                .is_some_and(|n| node_names.contains(n))
        })
        .collect();

    let webhook_configurations: Vec<MutatingWebhookConfiguration> =
        list(Api::all(client.clone()), &all).await?;
    let (webhook_cas, endpoint_slices) = webhook_parts(client, &webhook_configurations).await?;

    let (agent_reports, agents_installed) = agent_reports(client, install, &node_names).await?;
    let fencer_lease = Api::<Lease>::namespaced(client.clone(), install)
        .get_opt(&args.fencer_lease)
        .await
        .with_context(|| format!("reading Lease {install}/{}", args.fencer_lease))?;

    let mut snapshot = Snapshot {
        now: Timestamp::now(),
        version,
        namespace: namespace.clone(),
        namespace_labels,
        workload: args.workload.clone(),
        install_namespace: install.to_string(),
        config_source,
        policy,
        nodes,
        leases,
        deployments: list(
            Api::<Deployment>::namespaced(client.clone(), &namespace),
            &all,
        )
        .await?,
        stateful_sets: list(
            Api::<StatefulSet>::namespaced(client.clone(), &namespace),
            &all,
        )
        .await?,
        pods: list(Api::<Pod>::namespaced(client.clone(), &namespace), &all).await?,
        events: list(Api::<Event>::namespaced(client.clone(), &namespace), &all).await?,
        claims: list(
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace),
            &all,
        )
        .await?,
        volumes: list(Api::<PersistentVolume>::all(client.clone()), &all).await?,
        storage_classes: list(Api::<StorageClass>::all(client.clone()), &all).await?,
        csi_drivers: list(Api::<CSIDriver>::all(client.clone()), &all).await?,
        volume_attachments: list(Api::<VolumeAttachment>::all(client.clone()), &all).await?,
        ceph_drivers: ceph_drivers(client).await,
        webhook_configurations,
        webhook_cas,
        endpoint_slices,
        agent_reports,
        agents_installed,
        fencer_lease,
        fence_status: BTreeMap::new(),
    };
    snapshot.fence_status = fence_status(client, &snapshot).await;
    Ok(snapshot)
}

/// The config file given, else the ConfigMap the install ships, else the defaults. A file
/// given on the command line must load; a ConfigMap that does not is itself a finding.
async fn config(client: &Client, args: &DoctorArgs) -> anyhow::Result<(ConfigSource, Policy)> {
    if let Some(path) = &args.config {
        let config = load_config(Some(path))?;
        return Ok((ConfigSource::File(path.display().to_string()), config));
    }
    let install = &args.install.install_namespace;
    let shown = format!("ConfigMap {install}/{CONFIG_CONFIGMAP}");
    let map = Api::<ConfigMap>::namespaced(client.clone(), install)
        .get_opt(CONFIG_CONFIGMAP)
        .await
        .with_context(|| format!("reading {shown}"))?;
    let Some(text) = map.and_then(|m| m.data?.remove(CONFIG_KEY)) else {
        return Ok((ConfigSource::Defaults, load_config(None)?));
    };
    Ok(match parse_config(&text, &shown) {
        Ok(config) => (ConfigSource::ConfigMap(shown), config),
        Err(error) => (ConfigSource::Invalid(error.to_string()), load_config(None)?),
    })
}

/// Each configuration's CA bundle, and the EndpointSlices of the Services its webhooks call.
async fn webhook_parts(
    client: &Client,
    configurations: &[MutatingWebhookConfiguration],
) -> anyhow::Result<(
    BTreeMap<String, Result<Vec<CaCertificate>, String>>,
    Vec<EndpointSlice>,
)> {
    let mut cas = BTreeMap::new();
    let mut slices = Vec::new();
    let mut services = Vec::new();
    for config in configurations {
        let name = config.metadata.name.clone().unwrap_or_default();
        let Some(webhook) = config
            .webhooks
            .iter()
            .flatten()
            .find(|w| w.name == POD_WEBHOOK || w.name == WORKLOAD_WEBHOOK)
        else {
            continue;
        };
        let bundle = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        let parsed = match bundle {
            None | Some([]) => Ok(Vec::new()),
            Some(pem) => jellyfin_ha_certs::lifecycle::parse_certificates(pem, "caBundle")
                .map_err(|e| e.to_string())
                .map(|certs| {
                    certs
                        .into_iter()
                        .filter_map(|c| {
                            Some(CaCertificate {
                                subject: c.subject,
                                not_before: Timestamp::from_second(c.not_before).ok()?,
                                not_after: Timestamp::from_second(c.not_after).ok()?,
                            })
                        })
                        .collect()
                }),
        };
        cas.insert(name, parsed);
        if let Some(service) = &webhook.client_config.service
            && !services.contains(&(service.namespace.clone(), service.name.clone()))
        {
            services.push((service.namespace.clone(), service.name.clone()));
        }
    }
    for (namespace, name) in services {
        let params = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
        slices.extend(
            list(
                Api::<EndpointSlice>::namespaced(client.clone(), &namespace),
                &params,
            )
            .await?,
        );
    }
    Ok((cas, slices))
}

/// The agent reports of the checked nodes, and whether any agent reports at all.
async fn agent_reports(
    client: &Client,
    install: &str,
    nodes: &[String],
) -> anyhow::Result<(BTreeMap<String, Result<AgentReport, String>>, bool)> {
    let selector: Vec<String> = REPORT_LABELS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let maps: Vec<ConfigMap> = list(
        Api::namespaced(client.clone(), install),
        &ListParams::default().labels(&selector.join(",")),
    )
    .await?;
    let installed = !maps.is_empty();
    let reports = maps
        .into_iter()
        .filter_map(|map| {
            let node = map
                .metadata
                .labels
                .as_ref()?
                .get(REPORT_NODE_LABEL)?
                .clone();
            if !nodes.contains(&node) {
                return None;
            }
            let report = map
                .data
                .as_ref()
                .and_then(|d| d.get(REPORT_KEY))
                .ok_or_else(|| format!("no {REPORT_KEY}"))
                .and_then(|json| AgentReport::from_json(json).map_err(|e| e.to_string()));
            Some((node, report))
        })
        .collect();
    Ok((reports, installed))
}

/// ceph-csi-operator's `Driver` objects; `None` when the API is not served.
async fn ceph_drivers(client: &Client) -> Option<Vec<CephDriver>> {
    let gvk = GroupVersionKind::gvk("csi.ceph.io", "v1alpha1", "Driver");
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let drivers = api.list(&ListParams::default()).await.ok()?;
    Some(
        drivers
            .items
            .into_iter()
            .filter_map(|d| {
                Some(CephDriver {
                    name: d.metadata.name?,
                    enable_fencing: d
                        .data
                        .pointer("/spec/enableFencing")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(false),
                })
            })
            .collect(),
    )
}

/// Each checked node the fencer may fence, its agent asked for status, all at once.
async fn fence_status(client: &Client, snapshot: &Snapshot) -> BTreeMap<String, FenceStatus> {
    let policy = &snapshot.policy.fencer;
    let timeout = Duration::from_secs(u64::from(policy.agent_timeout_seconds));
    let queries = snapshot.nodes.iter().filter_map(|node| {
        let facts = NodeFacts::from_node(node, None)?;
        eligibility(&facts, policy).ok()?;
        let (_, agent) = policy.agent_for(&facts.name, &facts.labels)?;
        agent.none.is_none().then_some((facts.name, agent))
    });
    let install = snapshot.install_namespace.as_str();
    let asked = queries.map(|(node, agent)| async move {
        let started = Instant::now();
        let outcome = match Device::build(client, install, agent, &node, timeout).await {
            Ok(device) => device.power_state().await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let took = SignedDuration::try_from(started.elapsed()).unwrap_or(SignedDuration::MAX);
        let status = FenceStatus {
            agent: agent.name.clone(),
            outcome,
            took,
        };
        (node, status)
    });
    futures::future::join_all(asked).await.into_iter().collect()
}
