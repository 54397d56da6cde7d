//! The mutation of one opted-in pod template. Each step is idempotent and reports a [`Change`]
//! only when it altered something, so a second pass yields no changes and no patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, HostPathVolumeSource, NodeSelectorRequirement, NodeSelectorTerm,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

    pub fn record_value(&self) -> String {
        match self {
            Change::GpuResource(resource) => resource.clone(),
            Change::DriHostPath => format!("hostPath {DRI_PATH}"),
            Change::RenderGroups(gids) => gids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            Change::QuickSyncAffinity(expression) => expression.clone(),
            Change::FailoverTolerations(seconds) | Change::TerminationGrace(seconds) => {
                format!("{seconds}s")
            }
            Change::ManagedLabel => format!("{MANAGED}=true"),
            Change::SchedulingMarker => MANAGED.to_string(),
            Change::SchedulerName(name) => name.clone(),
            Change::RecreateStrategy => "Recreate".to_string(),
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
    fn note(&mut self, change: Option<Change>) {
        self.changes.extend(change);
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

    let mut report = TemplateReport::default();
    match overrides.gpu_mode.unwrap_or(policy.gpu.mode) {
        GpuMode::DevicePlugin => {
            report.note(ensure_gpu_resource(gpu, &policy.gpu.resource_name));
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
    warn_unclean_shutdown(gpu, &mut report.warnings);
    warn_liveness_without_startup_probe(gpu, &mut report.warnings);
    let shutdown_needs = policy
        .min_termination_grace_seconds
        .saturating_add(pre_stop_sleep_seconds(gpu));
    report.note(ensure_termination_grace(
        termination_grace_period_seconds,
        shutdown_needs,
    ));
    // The label is harmless without the extender, and lets it count a pod born without the
    // webhook as iGPU load.
    report.note(ensure_managed_label(metadata));
    // Sends a Pod to the scheduler that `Scheduling` names, and to none that is not there.
    match (holder, &policy.scheduling) {
        (TemplateOf::Pod, Scheduling::Extender) => report.note(ensure_scheduling_marker(gpu)),
        (TemplateOf::Pod, Scheduling::Scheduler(name)) => {
            let change = ensure_scheduler_name(scheduler_name, name, &mut report.warnings);
            report.note(change)
        }
        (TemplateOf::Pod, Scheduling::Unusable(why)) => {
            report.warnings.push(format!(
                "{why}: the pod is left to the cluster's scheduler, without the extender"
            ));
            warn_marker(containers, "the pod", &mut report.warnings)
        }
        (TemplateOf::Pod, Scheduling::Default) => {
            warn_marker(containers, "the pod", &mut report.warnings)
        }
        (TemplateOf::Workload, _) => warn_marker(containers, "the template", &mut report.warnings),
    }

    if !report.changes.is_empty() {
        let annotations = metadata.annotations.get_or_insert_default();
        let merged = record::merge(
            annotations.get(annotations::MUTATIONS).map(String::as_str),
            &report.changes,
        );
        annotations.insert(annotations::MUTATIONS.to_string(), merged);
    }
    Ok(report)
}

/// The container named by the annotation, else the one named [`DEFAULT_GPU_CONTAINER`], else
/// the first.
fn gpu_container<'a>(
    containers: &'a mut [Container],
    requested: Option<&str>,
    field: &str,
) -> Result<&'a mut Container, MutationError> {
    let named = containers
        .iter()
        .position(|c| c.name == requested.unwrap_or(DEFAULT_GPU_CONTAINER));
    let index = match (named, requested) {
        (Some(index), _) => index,
        (None, Some(name)) if !containers.is_empty() => {
            return Err(MutationError::UnknownContainer {
                name: name.to_string(),
                available: containers.iter().map(|c| c.name.clone()).collect(),
            });
        }
        (None, _) => 0,
    };
    // Only an empty list has no container at the index found above.
    containers
        .get_mut(index)
        .ok_or_else(|| MutationError::NoContainers {
            field: field.to_string(),
        })
}

/// Device-plugin mode: one share of the iGPU, unless the container already asks for it.
fn ensure_gpu_resource(container: &mut Container, resource: &str) -> Option<Change> {
    let asks = |list: &Option<BTreeMap<String, Quantity>>| {
        list.as_ref().is_some_and(|l| l.contains_key(resource))
    };
    if container
        .resources
        .as_ref()
        .is_some_and(|r| asks(&r.limits) || asks(&r.requests))
    {
        return None;
    }
    // Requests default to limits for extended resources, so the limit alone is enough.
    let limits = container
        .resources
        .get_or_insert_default()
        .limits
        .get_or_insert_default();
    limits.insert(resource.to_string(), Quantity("1".to_string()));
    Some(Change::GpuResource(resource.to_string()))
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
fn ensure_render_groups(
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
fn ensure_quicksync_affinity(
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
fn ensure_failover_tolerations(
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

fn warn_out_of_service_tolerations(tolerations: &[Toleration], warnings: &mut Vec<String>) {
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
fn ensure_termination_grace(grace: &mut Option<i64>, needed: i64) -> Option<Change> {
    let current = grace.unwrap_or(DEFAULT_POD_GRACE_SECONDS);
    if current >= needed {
        return None;
    }
    *grace = Some(needed);
    Some(Change::TerminationGrace(needed))
}

/// Seconds a native `preStop: {sleep: ...}` hook holds back SIGTERM: grace counts from the
/// start of the hook, so Jellyfin's own shutdown gets only what is left after it.
fn pre_stop_sleep_seconds(container: &Container) -> i64 {
    container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds.max(0))
}

/// Settings of the Jellyfin container that cut its clean shutdown short whatever the grace.
fn warn_unclean_shutdown(container: &Container, warnings: &mut Vec<String>) {
    if let Some(script) = shell_script_without_exec(container) {
        warnings.push(format!(
            "container {:?} runs through a shell ({script:?}) without exec: the shell ignores \
             SIGTERM as PID 1, so Jellyfin never starts its database shutdown and is killed at \
             the end of the grace period; start it with exec",
            container.name
        ));
    }
    let hook = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref());
    if hook.is_some_and(|h| h.exec.is_some() || h.http_get.is_some() || h.tcp_socket.is_some()) {
        warnings.push(format!(
            "container {:?} has a preStop hook: its run time counts against the grace period \
             and Jellyfin gets SIGTERM only after it ends; keep it short, or use a preStop \
             sleep, which the grace is raised to cover",
            container.name
        ));
    }
}

/// The script of a `sh -c SCRIPT` style entrypoint that does not `exec` its last command.
fn shell_script_without_exec(container: &Container) -> Option<String> {
    const SHELLS: [&str; 4] = ["sh", "bash", "ash", "dash"];
    let argv: Vec<&str> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
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
    let script = rest.get(flag + 1)?;
    let commands: Vec<&str> = script
        .split(['\n', ';', '&', '|'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    // A lone command is exec'd by the shell itself (bash, dash, busybox ash).
    let execs = commands.len() <= 1 || commands.iter().any(|c| c.starts_with("exec "));
    (!execs).then(|| script.to_string())
}

/// Jellyfin migrates its database on the first start after an upgrade, which can take far
/// longer than a liveness probe's patience; killing it mid-migration loses the library.
fn warn_liveness_without_startup_probe(container: &Container, warnings: &mut Vec<String>) {
    if container.liveness_probe.is_some() && container.startup_probe.is_none() {
        warnings.push(format!(
            "container {:?} has a liveness probe but no startup probe: a long database \
             migration after an upgrade would be killed mid-way; add a startupProbe with a \
             generous failureThreshold",
            container.name
        ));
    }
}

/// The label the scheduler extender watches managed pods by.
fn ensure_managed_label(metadata: &mut ObjectMeta) -> Option<Change> {
    let labels = metadata.labels.get_or_insert_default();
    if labels.get(MANAGED).map(String::as_str) == Some("true") {
        return None;
    }
    labels.insert(MANAGED.to_string(), "true".to_string());
    Some(Change::ManagedLabel)
}

/// The extended resource that makes kube-scheduler send the pod to the extender.
fn ensure_scheduling_marker(container: &mut Container) -> Option<Change> {
    let one = Quantity("1".to_string());
    let ResourceRequirements {
        limits, requests, ..
    } = container.resources.get_or_insert_default();
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
fn ensure_scheduler_name(
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
fn warn_marker(containers: &[Container], what: &str, warnings: &mut Vec<String>) {
    let asks = |list: &Option<BTreeMap<String, Quantity>>| {
        list.as_ref().is_some_and(|l| l.contains_key(MANAGED))
    };
    for container in containers {
        if container
            .resources
            .as_ref()
            .is_some_and(|r| asks(&r.limits) || asks(&r.requests))
        {
            warnings.push(format!(
                "container {:?} of {what} requests {MANAGED}: pods stay Pending \
                 (Insufficient {MANAGED}) wherever the scheduler does not ignore it, e.g. once \
                 the extender is uninstalled; remove it, the webhook adds it to each pod while \
                 the ConfigMap {CONFIGMAP} says the extender is there",
                container.name
            ));
        }
    }
}
