//! Watches the objects the extender decides over and keeps the core [`Snapshot`] current.
//!
//! One watcher per kind; each event is projected at once (the full object is dropped right
//! after) and applied to the shared snapshot. A re-list (`Init` .. `InitApply`* .. `InitDone`)
//! is buffered and swapped in with one `replace_*` call, so readers never see a half-listed
//! kind. The mapping from events to snapshot calls is [`KindCache::apply`], pure and tested
//! without an apiserver.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt;
use jellyfin_ha_core::busyness::report::{REPORT_OBJECT_PREFIX, report_selector};
use jellyfin_ha_core::extender::snapshot::{
    AgentInfo, ClaimInfo, CsiNodeInfo, LeaseInfo, ManagedPodInfo, NODE_LEASE_NAMESPACE, NodeInfo,
    PvInfo, VolumeAttachmentInfo,
};
use jellyfin_ha_core::extender::{ExtenderPolicy, Snapshot, WatchHeard};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The number of kinds watched; readiness waits for each of them to finish its first list.
pub const WATCHED_KINDS: usize = 7;

/// The kinds watched, in the order [`SyncState`] keeps them.
pub const WATCHED: [&str; WATCHED_KINDS] = [
    <Node as Watched>::KIND,
    <Lease as Watched>::KIND,
    <VolumeAttachment as Watched>::KIND,
    <PersistentVolumeClaim as Watched>::KIND,
    <PersistentVolume as Watched>::KIND,
    <CSINode as Watched>::KIND,
    <Pod as Watched>::KIND,
];

/// The snapshot shared between the watchers (writers) and the extender handlers (readers).
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot(Arc<RwLock<Snapshot>>);

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(RwLock::new(snapshot)))
    }

    /// A reader's view. A writer that panicked left a consistent snapshot behind (each
    /// `Snapshot` call is complete or not started), so poisoning is ignored.
    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Snapshot> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How far the watchers have got: which kinds have completed their first list, and when each
/// last delivered something.
#[derive(Debug, Clone, Default)]
pub struct SyncState(Arc<Watches>);

#[derive(Debug, Default)]
struct Watches {
    listed: AtomicUsize,
    /// Per kind of [`WATCHED`]: milliseconds since the epoch of its last event or completed
    /// list; 0 for never.
    heard_ms: [AtomicI64; WATCHED_KINDS],
    /// No watch behind the snapshot, so none can go silent.
    unwatched: bool,
}

impl SyncState {
    /// A state that is already synced, with no watch behind it: for a snapshot filled by other
    /// means (tests, a one-off list).
    pub fn all_synced() -> Self {
        Self(Arc::new(Watches {
            listed: AtomicUsize::new(WATCHED_KINDS),
            unwatched: true,
            ..Watches::default()
        }))
    }

    pub fn synced_kinds(&self) -> usize {
        self.0.listed.load(Ordering::Acquire)
    }

    /// Every watched kind has been listed once.
    pub fn is_synced(&self) -> bool {
        self.synced_kinds() >= WATCHED_KINDS
    }

    fn mark_one(&self) {
        self.0.listed.fetch_add(1, Ordering::AcqRel);
    }

    /// `kind`'s watch delivered an event or completed a list at `at`.
    pub fn heard(&self, kind: &str, at: Timestamp) {
        if let Some(slot) = WATCHED
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.0.heard_ms.get(i))
        {
            slot.store(at.as_millisecond(), Ordering::Release);
        }
    }

    /// When each watch last delivered something, for the core's staleness decision.
    pub fn watches(&self) -> Vec<WatchHeard<'static>> {
        if self.0.unwatched {
            return Vec::new();
        }
        WATCHED
            .iter()
            .zip(&self.0.heard_ms)
            .map(|(kind, heard)| WatchHeard {
                kind,
                last_heard: match heard.load(Ordering::Acquire) {
                    0 => None,
                    ms => Timestamp::from_millisecond(ms).ok(),
                },
            })
            .collect()
    }
}

/// A watched kind: how to project it and where its projection goes in the snapshot.
pub trait Watched: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    type Info: Send;
    const KIND: &'static str;
    fn project(&self, policy: &ExtenderPolicy) -> Option<Self::Info>;
    fn upsert(snapshot: &mut Snapshot, info: Self::Info);
    /// Removes the object; a no-op when it is unknown or has no name.
    fn remove(snapshot: &mut Snapshot, object: &Self);
    fn replace(snapshot: &mut Snapshot, infos: Vec<Self::Info>);
    /// An object that no longer projects. Only a Pod can stop projecting while it has a name
    /// (its opt-in removed); any other kind projects whenever it has one, and without one
    /// there is nothing to remove.
    fn unprojected(_snapshot: &SharedSnapshot, _object: &Self) {}
}

fn name_of<K: Resource>(object: &K) -> Option<&str> {
    object.meta().name.as_deref()
}

fn key_of<K: Resource>(object: &K) -> Option<(&str, &str)> {
    let meta = object.meta();
    Some((meta.namespace.as_deref()?, meta.name.as_deref()?))
}

impl Watched for Node {
    type Info = NodeInfo;
    const KIND: &'static str = "Node";
    fn project(&self, policy: &ExtenderPolicy) -> Option<NodeInfo> {
        NodeInfo::from_node(self, policy)
    }
    fn upsert(snapshot: &mut Snapshot, info: NodeInfo) {
        snapshot.upsert_node(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some(name) = name_of(object) {
            snapshot.remove_node(name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<NodeInfo>) {
        snapshot.replace_nodes(infos);
    }
}

impl Watched for Lease {
    type Info = LeaseInfo;
    const KIND: &'static str = "Lease";
    fn project(&self, _: &ExtenderPolicy) -> Option<LeaseInfo> {
        LeaseInfo::from_lease(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: LeaseInfo) {
        snapshot.upsert_lease(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some(name) = name_of(object) {
            snapshot.remove_lease(name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<LeaseInfo>) {
        snapshot.replace_leases(infos);
    }
}

impl Watched for VolumeAttachment {
    type Info = VolumeAttachmentInfo;
    const KIND: &'static str = "VolumeAttachment";
    fn project(&self, _: &ExtenderPolicy) -> Option<VolumeAttachmentInfo> {
        VolumeAttachmentInfo::from_volume_attachment(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: VolumeAttachmentInfo) {
        snapshot.upsert_attachment(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some(name) = name_of(object) {
            snapshot.remove_attachment(name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<VolumeAttachmentInfo>) {
        snapshot.replace_attachments(infos);
    }
}

impl Watched for PersistentVolumeClaim {
    type Info = ClaimInfo;
    const KIND: &'static str = "PersistentVolumeClaim";
    fn project(&self, _: &ExtenderPolicy) -> Option<ClaimInfo> {
        ClaimInfo::from_claim(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: ClaimInfo) {
        snapshot.upsert_claim(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some((namespace, name)) = key_of(object) {
            snapshot.remove_claim(namespace, name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<ClaimInfo>) {
        snapshot.replace_claims(infos);
    }
}

impl Watched for PersistentVolume {
    type Info = PvInfo;
    const KIND: &'static str = "PersistentVolume";
    fn project(&self, _: &ExtenderPolicy) -> Option<PvInfo> {
        PvInfo::from_volume(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: PvInfo) {
        snapshot.upsert_volume(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some(name) = name_of(object) {
            snapshot.remove_volume(name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<PvInfo>) {
        snapshot.replace_volumes(infos);
    }
}

impl Watched for CSINode {
    type Info = CsiNodeInfo;
    const KIND: &'static str = "CSINode";
    fn project(&self, _: &ExtenderPolicy) -> Option<CsiNodeInfo> {
        CsiNodeInfo::from_csi_node(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: CsiNodeInfo) {
        snapshot.upsert_csi_node(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some(name) = name_of(object) {
            snapshot.remove_csi_node(name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<CsiNodeInfo>) {
        snapshot.replace_csi_nodes(infos);
    }
}

impl Watched for Pod {
    type Info = ManagedPodInfo;
    const KIND: &'static str = "Pod";
    fn project(&self, _: &ExtenderPolicy) -> Option<ManagedPodInfo> {
        ManagedPodInfo::from_pod(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: ManagedPodInfo) {
        snapshot.upsert_managed_pod(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some((namespace, name)) = key_of(object) {
            snapshot.remove_managed_pod(namespace, name);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<ManagedPodInfo>) {
        snapshot.replace_managed_pods(infos);
    }
    /// A pod whose opt-in was removed leaves. Every pod in the cluster comes through here, so
    /// the write lock is taken only for one that was kept.
    fn unprojected(snapshot: &SharedSnapshot, object: &Self) {
        let Some((namespace, name)) = key_of(object) else {
            return;
        };
        if snapshot.read().managed_pod(namespace, name).is_some() {
            snapshot.write().remove_managed_pod(namespace, name);
        }
    }
}

/// The node agents' reports, in jellyfin-ha's namespace.
impl Watched for ConfigMap {
    type Info = AgentInfo;
    const KIND: &'static str = "ConfigMap";
    fn project(&self, _: &ExtenderPolicy) -> Option<AgentInfo> {
        AgentInfo::from_configmap(self)
    }
    fn upsert(snapshot: &mut Snapshot, info: AgentInfo) {
        snapshot.upsert_agent_report(info);
    }
    fn remove(snapshot: &mut Snapshot, object: &Self) {
        if let Some(node) = name_of(object).and_then(|n| n.strip_prefix(REPORT_OBJECT_PREFIX)) {
            snapshot.remove_agent_report(node);
        }
    }
    fn replace(snapshot: &mut Snapshot, infos: Vec<AgentInfo>) {
        snapshot.replace_agent_reports(infos);
    }
}

/// One kind's watch state: the projections of a re-list in progress.
#[derive(Debug)]
pub struct KindCache<K: Watched> {
    policy: Arc<ExtenderPolicy>,
    relist: Option<Vec<K::Info>>,
}

impl<K: Watched> KindCache<K> {
    pub fn new(policy: Arc<ExtenderPolicy>) -> Self {
        Self {
            policy,
            relist: None,
        }
    }

    /// Applies one watch event. Returns true when it completed a list (`InitDone`).
    pub fn apply(&mut self, snapshot: &SharedSnapshot, event: Event<K>) -> bool {
        match event {
            Event::Apply(object) => {
                match object.project(&self.policy) {
                    Some(info) => K::upsert(&mut snapshot.write(), info),
                    None => K::unprojected(snapshot, &object),
                }
                false
            }
            Event::Delete(object) => {
                K::remove(&mut snapshot.write(), &object);
                false
            }
            Event::Init => {
                self.relist = Some(Vec::new());
                false
            }
            Event::InitApply(object) => {
                if let Some(info) = object.project(&self.policy) {
                    self.relist.get_or_insert_with(Vec::new).push(info);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                K::replace(&mut snapshot.write(), listed);
                true
            }
        }
    }
}

/// Starts one watcher per kind, feeding `snapshot` until `stop` is cancelled. `synced` counts
/// the kinds whose first list is in. The node agents' reports in `reports_namespace` are
/// watched too, outside `synced`: each report carries its own time, so a report watch that
/// cannot list (the agent is not installed) or falls silent leaves loads unknown, and that
/// must neither hold readiness back nor make the whole view stale.
pub fn spawn_watchers(
    client: &Client,
    policy: Arc<ExtenderPolicy>,
    reports_namespace: &str,
    snapshot: &SharedSnapshot,
    synced: &SyncState,
    stop: &CancellationToken,
) {
    let config = watcher::Config::default().any_semantic();
    macro_rules! spawn {
        ($kind:ty, $api:expr, $config:expr) => {
            tokio::spawn(watch::<$kind>(
                $api,
                $config,
                Arc::clone(&policy),
                snapshot.clone(),
                synced.clone(),
                stop.clone(),
            ));
        };
    }
    spawn!(Node, Api::all(client.clone()), config.clone());
    spawn!(
        Lease,
        Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        config.clone()
    );
    spawn!(VolumeAttachment, Api::all(client.clone()), config.clone());
    spawn!(
        PersistentVolumeClaim,
        Api::all(client.clone()),
        config.clone()
    );
    spawn!(PersistentVolume, Api::all(client.clone()), config.clone());
    spawn!(CSINode, Api::all(client.clone()), config.clone());
    // Every pod, not only those the webhook labelled: one that opted in but was never mutated
    // may still write its claims (see `ManagedPodInfo`); the others are dropped as they come.
    spawn!(Pod, Api::all(client.clone()), config);
    tokio::spawn(watch::<ConfigMap>(
        Api::namespaced(client.clone(), reports_namespace),
        watcher::Config::default()
            .any_semantic()
            .labels(&report_selector()),
        policy,
        snapshot.clone(),
        SyncState::default(),
        stop.clone(),
    ));
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    policy: Arc<ExtenderPolicy>,
    snapshot: SharedSnapshot,
    synced: SyncState,
    stop: CancellationToken,
) where
    K: Watched,
    K::DynamicType: Default,
{
    // kube's watcher keeps bookmarks to itself, so a quiet kind shows that its watch is alive
    // only by relisting: every half of the silence allowed, so one slow or failed list is
    // not yet silence.
    let relist_every = (policy.watch_silence_seconds > 0)
        .then(|| Duration::from_secs(u64::from(policy.watch_silence_seconds) / 2));
    let mut cache = KindCache::<K>::new(policy);
    let mut first_list = true;
    loop {
        let mut events = watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        let relist = async {
            match relist_every {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(relist);
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = &mut relist => break,
                () = stop.cancelled() => return,
            };
            match next {
                Some(Ok(event)) => {
                    let delivered = !matches!(event, Event::Init | Event::InitApply(_));
                    let listed = cache.apply(&snapshot, event);
                    if delivered {
                        synced.heard(K::KIND, Timestamp::now());
                    }
                    if listed && first_list {
                        first_list = false;
                        synced.mark_one();
                        tracing::info!(kind = K::KIND, "cache synced");
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(kind = K::KIND, error = %e, "watch failed; retrying")
                }
                None => return,
            }
        }
        tracing::debug!(kind = K::KIND, "relisting");
    }
}

/// Lists every watched kind once (no watch) into a new snapshot: what `explain` decides over.
/// Agent reports that cannot be listed leave loads unknown, as in the extender.
pub async fn list_once(
    client: &Client,
    policy: &ExtenderPolicy,
    reports_namespace: &str,
) -> anyhow::Result<Snapshot> {
    async fn all<K: Watched>(api: Api<K>, params: &ListParams) -> anyhow::Result<Vec<K>>
    where
        K::DynamicType: Default,
    {
        let list = api
            .list(params)
            .await
            .map_err(|e| anyhow::anyhow!("listing {}: {e}", K::KIND))?;
        Ok(list.items)
    }
    fn project<K: Watched>(objects: Vec<K>, policy: &ExtenderPolicy) -> Vec<K::Info> {
        objects
            .iter()
            .filter_map(|object| object.project(policy))
            .collect()
    }
    let any = ListParams::default();
    let (nodes, leases, attachments, claims, volumes, csi_nodes, pods) = futures::try_join!(
        all::<Node>(Api::all(client.clone()), &any),
        all::<Lease>(Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE), &any),
        all::<VolumeAttachment>(Api::all(client.clone()), &any),
        all::<PersistentVolumeClaim>(Api::all(client.clone()), &any),
        all::<PersistentVolume>(Api::all(client.clone()), &any),
        all::<CSINode>(Api::all(client.clone()), &any),
        all::<Pod>(Api::all(client.clone()), &any),
    )?;
    let mut snapshot = Snapshot::new();
    snapshot.replace_nodes(project(nodes, policy));
    snapshot.replace_leases(project(leases, policy));
    snapshot.replace_attachments(project(attachments, policy));
    snapshot.replace_claims(project(claims, policy));
    snapshot.replace_volumes(project(volumes, policy));
    snapshot.replace_csi_nodes(project(csi_nodes, policy));
    snapshot.replace_managed_pods(project(pods, policy));
    let reports = ListParams::default().labels(&report_selector());
    match all::<ConfigMap>(Api::namespaced(client.clone(), reports_namespace), &reports).await {
        Ok(reports) => snapshot.replace_agent_reports(project(reports, policy)),
        Err(e) => {
            tracing::warn!(error = %e, "node agents' reports unavailable; measured loads unknown")
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jellyfin_ha_core::annotations::MANAGED;
    use jellyfin_ha_core::extender::snapshot::NodeState;
    use serde_json::json;

    fn node(name: &str, gpu: bool) -> Node {
        let mut labels = serde_json::Map::new();
        if gpu {
            labels.insert("intel.feature.node.kubernetes.io/gpu".into(), json!("true"));
        }
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "media", "labels": {MANAGED: "true"}},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    fn policy() -> Arc<ExtenderPolicy> {
        Arc::new(ExtenderPolicy::default())
    }

    /// What the snapshot holds for `node`, out of the lock.
    fn state_of(shared: &SharedSnapshot, node: &str) -> NodeState {
        shared.read().node_state(node).cloned().unwrap_or_default()
    }

    #[test]
    fn apply_and_delete_edit_the_snapshot() {
        let shared = SharedSnapshot::default();
        let mut nodes = KindCache::<Node>::new(policy());
        assert!(!nodes.apply(&shared, Event::Apply(node("qs-1", true))));
        assert!(state_of(&shared, "qs-1").info.unwrap().quick_sync);
        nodes.apply(&shared, Event::Apply(node("qs-1", false)));
        assert!(!state_of(&shared, "qs-1").info.unwrap().quick_sync);
        nodes.apply(&shared, Event::Delete(node("qs-1", false)));
        assert!(state_of(&shared, "qs-1").info.is_none());
    }

    #[test]
    fn a_relist_replaces_the_kind_at_init_done() {
        let shared = SharedSnapshot::default();
        let mut nodes = KindCache::<Node>::new(policy());
        nodes.apply(&shared, Event::Apply(node("gone", true)));
        assert!(!nodes.apply(&shared, Event::Init));
        assert!(!nodes.apply(&shared, Event::InitApply(node("qs-1", true))));
        assert!(!nodes.apply(&shared, Event::InitApply(node("qs-2", true))));
        // Until the list is complete, readers see the old state.
        assert_eq!(shared.read().node_names(), ["gone"]);
        assert!(nodes.apply(&shared, Event::InitDone));
        assert_eq!(shared.read().node_names(), ["qs-1", "qs-2"]);
    }

    #[test]
    fn an_empty_relist_empties_the_kind() {
        let shared = SharedSnapshot::default();
        let mut pods = KindCache::<Pod>::new(policy());
        pods.apply(&shared, Event::Apply(pod("jellyfin", "qs-1")));
        assert_eq!(state_of(&shared, "qs-1").managed_pods(), 1);
        pods.apply(&shared, Event::Init);
        assert!(pods.apply(&shared, Event::InitDone));
        assert_eq!(state_of(&shared, "qs-1").managed_pods(), 0);
    }

    #[test]
    fn namespaced_deletes_use_the_key() {
        let shared = SharedSnapshot::default();
        let mut pods = KindCache::<Pod>::new(policy());
        pods.apply(&shared, Event::Apply(pod("a", "qs-1")));
        pods.apply(&shared, Event::Apply(pod("b", "qs-1")));
        pods.apply(&shared, Event::Delete(pod("a", "qs-1")));
        assert_eq!(state_of(&shared, "qs-1").managed_pods(), 1);
        assert!(shared.read().managed_pod("media", "b").is_some());
    }

    #[test]
    fn a_pod_that_no_longer_opts_in_leaves() {
        let shared = SharedSnapshot::default();
        let mut pods = KindCache::<Pod>::new(policy());
        pods.apply(&shared, Event::Apply(pod("a", "qs-1")));
        let mut unlabelled = pod("a", "qs-1");
        unlabelled.metadata.labels = None;
        pods.apply(&shared, Event::Apply(unlabelled));
        assert!(shared.read().managed_pod("media", "a").is_none());
        assert_eq!(state_of(&shared, "qs-1").managed_pods(), 0);
    }

    #[test]
    fn leases_land_on_their_node() {
        let shared = SharedSnapshot::default();
        let mut leases = KindCache::<Lease>::new(policy());
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "qs-1", "namespace": "kube-node-lease"},
            "spec": {"renewTime": "2026-11-24T20:00:00.000000Z", "leaseDurationSeconds": 40}
        }))
        .unwrap();
        leases.apply(&shared, Event::InitApply(lease));
        leases.apply(&shared, Event::InitDone);
        assert_eq!(
            state_of(&shared, "qs-1")
                .lease
                .unwrap()
                .lease_duration_seconds,
            Some(40)
        );
    }

    #[test]
    fn agent_reports_land_on_their_node_and_go_with_their_configmap() {
        let shared = SharedSnapshot::default();
        let mut reports = KindCache::<ConfigMap>::new(policy());
        let report: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "jellyfin-ha-agent-qs-1", "namespace": "jellyfin-ha"},
            "data": {"report.json": json!({
                "node": "qs-1", "observedAt": "2026-11-24T20:00:00Z",
                "cards": [{"card": "card0", "usable": true, "engines": {"video": 0.25}}]
            }).to_string()}
        }))
        .unwrap();
        reports.apply(&shared, Event::Apply(report.clone()));
        let busy = |shared: &SharedSnapshot| {
            let snapshot = shared.read();
            let agent = snapshot.node_state("qs-1").and_then(|s| s.agent.clone());
            agent.map(|a| a.busy_percent)
        };
        assert_eq!(busy(&shared), Some(Some(25)));
        reports.apply(&shared, Event::Delete(report));
        assert_eq!(busy(&shared), None);
    }

    #[test]
    fn watches_report_when_each_kind_was_last_heard() {
        let synced = SyncState::default();
        let at: Timestamp = "2026-11-24T20:00:00Z".parse().unwrap();
        synced.heard("Lease", at);
        synced.heard("NoSuchKind", at);
        let watches = synced.watches();
        assert_eq!(watches.len(), WATCHED_KINDS);
        for watch in watches {
            let expected = (watch.kind == "Lease").then_some(at);
            assert_eq!(watch.last_heard, expected, "{}", watch.kind);
        }
        assert!(SyncState::all_synced().watches().is_empty());
    }

    #[test]
    fn sync_state_counts_every_kind() {
        let synced = SyncState::default();
        for _ in 0..WATCHED_KINDS - 1 {
            synced.mark_one();
        }
        assert!(!synced.is_synced());
        synced.mark_one();
        assert!(synced.is_synced());
    }
}
