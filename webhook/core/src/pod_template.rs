//! The mutation of one opted-in pod template. Each step is idempotent and reports a [`Change`]
//! only when it altered something, so a second pass yields no changes and no patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, HostPathVolumeSource, LifecycleHandler, NodeSelectorRequirement,
    NodeSelectorTerm, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::annotations::{self, MANAGED, OverrideError, Overrides};
use crate::config::{GpuMode, NodeAffinityPolicy, Policy};
use crate::record;
use crate::scheduling::{CONFIGMAP, Scheduling};
use crate::taints::{self, NO_EXECUTE, NO_SCHEDULE, NOT_READY, UNREACHABLE};

/// Name of the hostPath volume added in `hostpath` mode.
pub const DRI_VOLUME: &str = "jellyfin-ha-dri";
pub const DRI_PATH: &str = "/dev/dri";
/// The container picked when no annotation names one.
pub const DEFAULT_GPU_CONTAINER: &str = "jellyfin";
/// The scheduler a pod that names none is placed by.
const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// One thing the webhook changed; recorded in the `jellyfin-ha.io/mutations` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    GpuResource(String),
    DriHostPath,
    RenderGroups(Vec<i64>),
    QuickSyncAffinity(String),
    FailoverTolerations(i64),
    TerminationGrace(i64),
    ManagedLabel,
    SchedulingMarker,
    SchedulerName(String),
    RecreateStrategy,
}

impl Change {
    pub fn record_key(&self) -> &'static str {
        match self {
            Change::GpuResource(_) | Change::DriHostPath => "igpu",
            Change::RenderGroups(_) => "render-groups",
            Change::QuickSyncAffinity(_) => "node-affinity",
            Change::FailoverTolerations(_) => "failover-tolerations",
            Change::TerminationGrace(_) => "termination-grace",
            Change::ManagedLabel => "managed-label",
            Change::SchedulingMarker => "scheduling-marker",
            Change::SchedulerName(_) => "scheduler",
            Change::RecreateStrategy => "strategy",
        }
    }

    /// Writes the value [`crate::record`] keeps under [`Change::record_key`]. Numbers go
    /// through `itoa`: this runs on every admitted Pod, and `fmt` costs more than the rest.
    pub fn write_record_value(&self, out: &mut String) {
        let mut number = itoa::Buffer::new();
        match self {
            Change::GpuResource(resource) => out.push_str(resource),
            Change::DriHostPath => {
                out.push_str("hostPath ");
                out.push_str(DRI_PATH)
            }
            Change::RenderGroups(gids) => {
                for (i, gid) in gids.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(number.format(*gid));
                }
            }
            Change::QuickSyncAffinity(expression) => out.push_str(expression),
            Change::FailoverTolerations(seconds) | Change::TerminationGrace(seconds) => {
                out.push_str(number.format(*seconds));
                out.push('s')
            }
            Change::ManagedLabel => {
                out.push_str(MANAGED);
                out.push_str("=true")
            }
            Change::SchedulingMarker => out.push_str(MANAGED),
            Change::SchedulerName(name) => out.push_str(name),
            Change::RecreateStrategy => out.push_str("Recreate"),
        }
    }
}

/// Why an opted-in object cannot be mutated. The webhook denies the request with this message.
#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error("annotation {}: container {name:?} does not exist; containers: {}", annotations::CONTAINER, available.join(", "))]
    UnknownContainer {
        name: String,
        available: Vec<String>,
    },
    #[error("{field}: an opted-in pod needs at least one container")]
    NoContainers { field: String },
    #[error("{field}: {message}")]
    Malformed { field: String, message: String },
    #[error("items[{index}]: {source}")]
    InListItem {
        index: usize,
        source: Box<MutationError>,
    },
}

/// What the mutation of one pod template changed and warned about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateReport {
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
}

impl TemplateReport {
    pub(crate) fn note(&mut self, change: Option<Change>) {
        self.changes.extend(change);
    }

    /// The `jellyfin-ha.io/mutations` annotation with these changes merged in; `None` when
    /// nothing changed.
    pub(crate) fn record(&self, annotations: Option<&BTreeMap<String, String>>) -> Option<String> {
        let existing = annotations.and_then(|a| a.get(annotations::MUTATIONS));
        (!self.changes.is_empty())
            .then(|| record::merge(existing.map(String::as_str), &self.changes))
    }
}

/// What holds the pod template being mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateOf {
    /// A Pod being created: everything, and what sends it to the scheduler that
    /// [`Policy::scheduling`] names.
    Pod,
    /// A workload's pod template: everything but what sends pods to a scheduler, so that pods
    /// are complete at birth even when the webhook cannot be reached, and nothing in a template
    /// outlives the scheduler it names (see [`crate::scheduling`]).
    Workload,
}

/// Mutates a pod template (or a Pod's metadata and spec) that opted in; anything else is left
/// untouched. `field` names the template's place in its object for error messages.
pub fn mutate_pod_template(
    template: &mut PodTemplateSpec,
    policy: &Policy,
    field: &str,
    holder: TemplateOf,
) -> Result<TemplateReport, MutationError> {
    let PodTemplateSpec { metadata, spec } = template;
    let Some(metadata) = metadata
        .as_mut()
        .filter(|m| annotations::opted_in(m.annotations.as_ref()))
    else {
        return Ok(TemplateReport::default());
    };
    let overrides = Overrides::parse(metadata.annotations.as_ref())?;
    let spec = spec.as_mut().ok_or_else(|| MutationError::NoContainers {
        field: field.to_string(),
    })?;
    // The steps borrow the fields they touch, so the GPU container is borrowed once, here.
    let PodSpec {
        containers,
        volumes,
        security_context,
        affinity,
        tolerations,
        termination_grace_period_seconds,
        scheduler_name,
        ..
    } = spec;
    let gpu = gpu_container(containers, overrides.container.as_deref(), field)?;
    let mode = overrides.gpu_mode.unwrap_or(policy.gpu.mode);

    let mut report = TemplateReport::default();
    match mode {
        GpuMode::DevicePlugin => {
            report.note(ensure_gpu_resource(
                &mut gpu.resources,
                &policy.gpu.resource_name,
            ));
        }
        GpuMode::Hostpath => {
            let change = ensure_dri_hostpath(volumes, gpu, &mut report.warnings);
            report.note(change)
        }
        GpuMode::None => {}
    }
    report.note(ensure_render_groups(
        security_context,
        &policy.render_groups,
    ));
    let quicksync =
        ensure_quicksync_affinity(affinity, &policy.node_affinity, &mut report.warnings);
    report.note(quicksync);
    let failover_seconds = overrides
        .failover_seconds
        .unwrap_or(policy.failover_seconds);
    report.note(ensure_failover_tolerations(tolerations, failover_seconds));
    warn_out_of_service_tolerations(
        tolerations.as_deref().unwrap_or_default(),
        &mut report.warnings,
    );
    let shutdown = ShutdownSettings::of(gpu);
    shutdown.warn(&mut report.warnings);
    let grace = ensure_termination_grace(
        termination_grace_period_seconds,
        shutdown.grace_needed(policy),
    );
    report.note(grace);
    report.note(ensure_managed_label(&mut metadata.labels));
    match route(holder, &policy.scheduling, &mut report.warnings) {
        Route::Marker => report.note(ensure_scheduling_marker(&mut gpu.resources)),
        Route::SchedulerName(name) => {
            let change = ensure_scheduler_name(scheduler_name, name, &mut report.warnings);
            report.note(change)
        }
        Route::WarnMarker(what) => {
            let resources = containers.iter().map(|c| (&*c.name, c.resources.as_ref()));
            warn_marker(resources, what, &mut report.warnings)
        }
    }

    if let Some(merged) = report.record(metadata.annotations.as_ref()) {
        let annotations = metadata.annotations.get_or_insert_default();
        annotations.insert(annotations::MUTATIONS.to_string(), merged);
    }
    Ok(report)
}

/// How a template is sent to the scheduler that [`Scheduling`] names, and to none that is
/// not there.
pub(crate) enum Route<'a> {
    Marker,
    SchedulerName(&'a str),
    /// Nothing to add; warn about a marker asked for by hand in what this names.
    WarnMarker(&'static str),
}

pub(crate) fn route<'a>(
    holder: TemplateOf,
    scheduling: &'a Scheduling,
    warnings: &mut Vec<String>,
) -> Route<'a> {
    match (holder, scheduling) {
        (TemplateOf::Pod, Scheduling::Extender) => Route::Marker,
        (TemplateOf::Pod, Scheduling::Scheduler(name)) => Route::SchedulerName(name),
        (TemplateOf::Pod, Scheduling::Unusable(why)) => {
            warnings.push(format!(
                "{why}: the pod is left to the cluster's scheduler, without the extender"
            ));
            Route::WarnMarker("the pod")
        }
        (TemplateOf::Pod, Scheduling::Default) => Route::WarnMarker("the pod"),
        (TemplateOf::Workload, _) => Route::WarnMarker("the template"),
    }
}

/// The container named by the annotation, else the one named [`DEFAULT_GPU_CONTAINER`], else
/// the first.
fn gpu_container<'a>(
    containers: &'a mut [Container],
    requested: Option<&str>,
    field: &str,
) -> Result<&'a mut Container, MutationError> {
    let names = containers.iter().map(|c| c.name.as_str());
    match gpu_container_index(names, requested) {
        // Only an empty list has no container at the index chosen.
        Some(index) => containers
            .get_mut(index)
            .ok_or_else(|| MutationError::NoContainers {
                field: field.to_string(),
            }),
        None if containers.is_empty() => Err(MutationError::NoContainers {
            field: field.to_string(),
        }),
        None => Err(MutationError::UnknownContainer {
            name: requested.unwrap_or_default().to_string(),
            available: containers.iter().map(|c| c.name.clone()).collect(),
        }),
    }
}

/// Where [`gpu_container`] finds it among the containers' names; `None` when the annotation
/// names none of them.
pub(crate) fn gpu_container_index<'a>(
    mut names: impl Iterator<Item = &'a str>,
    requested: Option<&str>,
) -> Option<usize> {
    let wanted = requested.unwrap_or(DEFAULT_GPU_CONTAINER);
    names
        .position(|name| name == wanted)
        .or(requested.is_none().then_some(0))
}

/// Device-plugin mode: one share of the iGPU, unless the container already asks for it.
pub(crate) fn ensure_gpu_resource(
    resources: &mut Option<ResourceRequirements>,
    resource: &str,
) -> Option<Change> {
    if asks_for(resources.as_ref(), resource) {
        return None;
    }
    // Requests default to limits for extended resources, so the limit alone is enough.
    let limits = resources
        .get_or_insert_default()
        .limits
        .get_or_insert_default();
    limits.insert(resource.to_string(), Quantity("1".to_string()));
    Some(Change::GpuResource(resource.to_string()))
}

/// Whether a container's limits or requests name `resource`.
fn asks_for(resources: Option<&ResourceRequirements>, resource: &str) -> bool {
    let asks = |list: &Option<BTreeMap<String, Quantity>>| {
        list.as_ref().is_some_and(|l| l.contains_key(resource))
    };
    resources.is_some_and(|r| asks(&r.limits) || asks(&r.requests))
}

/// Hostpath mode: the host's `/dev/dri`, reusing a volume or mount the user already has.
fn ensure_dri_hostpath(
    volumes: &mut Option<Vec<Volume>>,
    container: &mut Container,
    warnings: &mut Vec<String>,
) -> Option<Change> {
    let mut changed = false;
    let volumes = volumes.get_or_insert_default();
    let existing = volumes
        .iter()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == DRI_PATH));
    let volume_name = match existing {
        Some(volume) => volume.name.clone(),
        None => {
            volumes.push(Volume {
                name: DRI_VOLUME.to_string(),
                host_path: Some(HostPathVolumeSource {
                    path: DRI_PATH.to_string(),
                    type_: Some("Directory".to_string()),
                }),
                ..Volume::default()
            });
            changed = true;
            DRI_VOLUME.to_string()
        }
    };
    let mounts = container.volume_mounts.get_or_insert_default();
    if !mounts.iter().any(|m| m.mount_path == DRI_PATH) {
        mounts.push(VolumeMount {
            name: volume_name,
            mount_path: DRI_PATH.to_string(),
            ..VolumeMount::default()
        });
        changed = true;
    }
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true);
    if !privileged {
        warnings.push(format!(
            "container {:?} is not privileged: the device cgroup will refuse {DRI_PATH}; \
             set securityContext.privileged or use gpu mode device-plugin",
            container.name
        ));
    }
    changed.then_some(Change::DriHostPath)
}

/// Adds the render-group GIDs the pod lacks, after the user's own.
pub(crate) fn ensure_render_groups(
    security_context: &mut Option<PodSecurityContext>,
    gids: &[i64],
) -> Option<Change> {
    let present = security_context
        .as_ref()
        .and_then(|s| s.supplemental_groups.as_ref());
    let missing: Vec<i64> = gids
        .iter()
        .copied()
        .filter(|g| !present.is_some_and(|p| p.contains(g)))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let groups = security_context
        .get_or_insert_default()
        .supplemental_groups
        .get_or_insert_default();
    groups.extend(&missing);
    Some(Change::RenderGroups(missing))
}

/// Adds `key In values` to every required node-selector term: terms are ORed, so an
/// expression in a term of its own would let the pod land anywhere another term allows.
pub(crate) fn ensure_quicksync_affinity(
    affinity: &mut Option<Affinity>,
    wanted: &NodeAffinityPolicy,
    warnings: &mut Vec<String>,
) -> Option<Change> {
    let requirement = NodeSelectorRequirement {
        key: wanted.key.clone(),
        operator: "In".to_string(),
        values: Some(wanted.values.clone()),
    };
    let required = affinity
        .get_or_insert_default()
        .node_affinity
        .get_or_insert_default()
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_default();
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    let mut changed = false;
    for (i, term) in required.node_selector_terms.iter_mut().enumerate() {
        let expressions = term.match_expressions.get_or_insert_default();
        match expressions.iter().find(|e| e.key == wanted.key) {
            Some(existing) if *existing == requirement => {}
            Some(_) => warnings.push(format!(
                "required node affinity term {i} already constrains {}; it is kept as written",
                wanted.key
            )),
            None => {
                expressions.push(requirement.clone());
                changed = true;
            }
        }
    }
    changed.then(|| {
        Change::QuickSyncAffinity(format!("{} In [{}]", wanted.key, wanted.values.join(",")))
    })
}

fn is_failover_key(t: &Toleration) -> bool {
    matches!(t.key.as_deref(), Some(NOT_READY | UNREACHABLE))
}

fn failover_toleration(key: &str, seconds: i64) -> Toleration {
    Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some(NO_EXECUTE.to_string()),
        toleration_seconds: Some(seconds),
        value: None,
    }
}

/// Exactly one short not-ready and one short unreachable NoExecute toleration. Replaces the
/// 300 s ones DefaultTolerationSeconds added before the webhook ran; a user toleration for
/// those keys with no effect keeps only its NoSchedule half.
pub(crate) fn ensure_failover_tolerations(
    tolerations: &mut Option<Vec<Toleration>>,
    seconds: i64,
) -> Option<Change> {
    let before = tolerations.take().unwrap_or_default();
    let mut after: Vec<Toleration> = Vec::with_capacity(before.len() + 2);
    for toleration in &before {
        match toleration.effect.as_deref().unwrap_or_default() {
            NO_EXECUTE if is_failover_key(toleration) => {}
            "" if is_failover_key(toleration) => after.push(Toleration {
                effect: Some(NO_SCHEDULE.to_string()),
                toleration_seconds: None,
                ..toleration.clone()
            }),
            _ => after.push(toleration.clone()),
        }
    }
    after.push(failover_toleration(NOT_READY, seconds));
    after.push(failover_toleration(UNREACHABLE, seconds));
    let changed = after != before;
    *tolerations = Some(after);
    changed.then_some(Change::FailoverTolerations(seconds))
}

pub(crate) fn warn_out_of_service_tolerations(
    tolerations: &[Toleration],
    warnings: &mut Vec<String>,
) {
    let taint = taints::out_of_service();
    for (i, t) in tolerations.iter().enumerate() {
        if taints::tolerates(t, &taint) {
            warnings.push(format!(
                "toleration {i} (key {:?}, operator {:?}, effect {:?}) tolerates {}: \
                 fencing cannot evict this pod from a dead node",
                t.key.as_deref().unwrap_or_default(),
                t.operator.as_deref().unwrap_or("Equal"),
                t.effect.as_deref().unwrap_or_default(),
                taints::OUT_OF_SERVICE,
            ));
        }
    }
}

/// Kubernetes' default `terminationGracePeriodSeconds`, which a template may leave unset.
const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// Raises `terminationGracePeriodSeconds` to what a clean Jellyfin shutdown needs; never lowers
/// it. Grace only delays a failover on a dead node, and there the fencer force-deletes the pod,
/// which skips grace; on a live node a pod is gone as soon as Jellyfin exits.
pub(crate) fn ensure_termination_grace(grace: &mut Option<i64>, needed: i64) -> Option<Change> {
    let current = grace.unwrap_or(DEFAULT_POD_GRACE_SECONDS);
    if current >= needed {
        return None;
    }
    *grace = Some(needed);
    Some(Change::TerminationGrace(needed))
}

/// What the shutdown warnings and the termination grace read from the GPU container.
pub(crate) struct ShutdownSettings<'a> {
    pub name: &'a str,
    pub command: Option<&'a [String]>,
    pub args: Option<&'a [String]>,
    pub pre_stop: Option<&'a LifecycleHandler>,
    pub liveness_probe: bool,
    pub startup_probe: bool,
}

impl<'a> ShutdownSettings<'a> {
    fn of(container: &'a Container) -> Self {
        Self {
            name: &container.name,
            command: container.command.as_deref(),
            args: container.args.as_deref(),
            pre_stop: container
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref()),
            liveness_probe: container.liveness_probe.is_some(),
            startup_probe: container.startup_probe.is_some(),
        }
    }

    /// Raised by the seconds a native `preStop: {sleep: ...}` hook holds back SIGTERM: grace
    /// counts from the start of the hook, so Jellyfin's own shutdown gets only what is left
    /// after it.
    pub(crate) fn grace_needed(&self, policy: &Policy) -> i64 {
        let sleep = self
            .pre_stop
            .and_then(|h| h.sleep.as_ref())
            .map_or(0, |s| s.seconds.max(0));
        policy.min_termination_grace_seconds.saturating_add(sleep)
    }

    /// Settings that cut Jellyfin's clean shutdown short whatever the grace, and a liveness
    /// probe that would kill a long database migration after an upgrade, losing the library.
    pub(crate) fn warn(&self, warnings: &mut Vec<String>) {
        let name = self.name;
        if let Some(script) = self.shell_script_without_exec() {
            warnings.push(format!(
                "container {name:?} runs through a shell ({script:?}) without exec: the shell \
                 ignores SIGTERM as PID 1, so Jellyfin never starts its database shutdown and is \
                 killed at the end of the grace period; start it with exec"
            ));
        }
        if self
            .pre_stop
            .is_some_and(|h| h.exec.is_some() || h.http_get.is_some() || h.tcp_socket.is_some())
        {
            warnings.push(format!(
                "container {name:?} has a preStop hook: its run time counts against the grace \
                 period and Jellyfin gets SIGTERM only after it ends; keep it short, or use a \
                 preStop sleep, which the grace is raised to cover"
            ));
        }
        if self.liveness_probe && !self.startup_probe {
            warnings.push(format!(
                "container {name:?} has a liveness probe but no startup probe: a long database \
                 migration after an upgrade would be killed mid-way; add a startupProbe with a \
                 generous failureThreshold"
            ));
        }
    }

    /// The script of a `sh -c SCRIPT` style entrypoint that does not `exec` its last command.
    fn shell_script_without_exec(&self) -> Option<&'a str> {
        const SHELLS: [&str; 4] = ["sh", "bash", "ash", "dash"];
        let argv: Vec<&str> = self
            .command
            .into_iter()
            .flatten()
            .chain(self.args.into_iter().flatten())
            .map(String::as_str)
            .collect();
        let (program, rest) = argv.split_first()?;
        let shell = program.rsplit('/').next().unwrap_or(program);
        if !SHELLS.contains(&shell) {
            return None;
        }
        let flag = rest
            .iter()
            .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
        let script = *rest.get(flag + 1)?;
        let commands: Vec<&str> = script
            .split(['\n', ';', '&', '|'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        // A lone command is exec'd by the shell itself (bash, dash, busybox ash).
        let execs = commands.len() <= 1 || commands.iter().any(|c| c.starts_with("exec "));
        (!execs).then_some(script)
    }
}

/// The label the scheduler extender watches managed pods by.
pub(crate) fn ensure_managed_label(
    labels: &mut Option<BTreeMap<String, String>>,
) -> Option<Change> {
    if annotations::is_managed(labels.as_ref()) {
        return None;
    }
    let labels = labels.get_or_insert_default();
    labels.insert(MANAGED.to_string(), "true".to_string());
    Some(Change::ManagedLabel)
}

/// The extended resource that makes kube-scheduler send the pod to the extender.
pub(crate) fn ensure_scheduling_marker(
    resources: &mut Option<ResourceRequirements>,
) -> Option<Change> {
    let one = Quantity("1".to_string());
    let ResourceRequirements {
        limits, requests, ..
    } = resources.get_or_insert_default();
    let mut changed = false;
    for list in [requests, limits] {
        let list = list.get_or_insert_default();
        if list.get(MANAGED) != Some(&one) {
            list.insert(MANAGED.to_string(), one.clone());
            changed = true;
        }
    }
    changed.then_some(Change::SchedulingMarker)
}

/// Pods that name the cluster's scheduler (explicitly or not) go to the second one; a pod that
/// names a scheduler of its own keeps it.
pub(crate) fn ensure_scheduler_name(
    scheduler_name: &mut Option<String>,
    name: &str,
    warnings: &mut Vec<String>,
) -> Option<Change> {
    match scheduler_name.as_deref() {
        Some(current) if current == name => None,
        None | Some(DEFAULT_SCHEDULER) => {
            *scheduler_name = Some(name.to_string());
            Some(Change::SchedulerName(name.to_string()))
        }
        Some(other) => {
            warnings.push(format!(
                "the pod names the scheduler {other:?}, kept: it is placed without \
                 jellyfin-ha's scheduler {name:?} and its extender"
            ));
            None
        }
    }
}

/// A template or pod that asks for the marker itself (baked in by hand, or by an older
/// `mutate`) is left as written, but it ties pods to a scheduler that ignores the resource.
pub(crate) fn warn_marker<'a>(
    containers: impl Iterator<Item = (&'a str, Option<&'a ResourceRequirements>)>,
    what: &str,
    warnings: &mut Vec<String>,
) {
    for (name, resources) in containers {
        if asks_for(resources, MANAGED) {
            warnings.push(format!(
                "container {:?} of {what} requests {MANAGED}: pods stay Pending \
                 (Insufficient {MANAGED}) wherever the scheduler does not ignore it, e.g. once \
                 the extender is uninstalled; remove it, the webhook adds it to each pod while \
                 the ConfigMap {CONFIGMAP} says the extender is there",
                name
            ));
        }
    }
}
