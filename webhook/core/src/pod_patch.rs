//! The mutation of a Pod straight from the fields it looks at ([`PodFields`], read by the webhook
//! in the same pass as the review around them), writing the JSON patch as text itself: no
//! whole-object parse, typed round trip or diff as in [`crate::object`].
//!
//! Every decision is the one [`crate::pod_template`] makes, called on the same typed pieces;
//! only reading and writing differ. [`crate::object::mutate_pod`] stays the reference, and a
//! differential property test holds the two to the same changes, warnings and patched object.
//! What this path does not handle (hostPath GPU access, a pod without containers, an override
//! it cannot honour, a shape it does not read, a key that would need JSON string escapes) gets
//! `None`, and the caller asks the reference.
//!
//! It reads the object kube-apiserver has already decoded, so the fields it skips are well
//! formed; tolerations it rewrites carry only the fields Kubernetes defines for them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Lifecycle, PodSecurityContext, ResourceRequirements, Toleration,
};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::annotations::{self, MANAGED, Overrides};
use crate::config::{GpuMode, Policy};
use crate::pod_template::{
    Change, Route, ShutdownSettings, TemplateOf, TemplateReport, ensure_failover_tolerations,
    ensure_gpu_resource, ensure_managed_label, ensure_quicksync_affinity, ensure_render_groups,
    ensure_scheduler_name, ensure_scheduling_marker, ensure_termination_grace, gpu_container_index,
    route, warn_marker, warn_out_of_service_tolerations,
};

/// The patch for one Pod and why.
#[derive(Debug, Clone, Default)]
pub struct PodPatch {
    /// Empty when nothing changed.
    pub patch: AddPatch,
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
}

/// The fields of a Pod the mutation reads; serde skips the rest without building them.
#[derive(Deserialize)]
pub struct PodFields {
    #[serde(default)]
    metadata: Metadata,
    /// Boxed: serde moves what it reads through every level of the review around it.
    spec: Option<Box<Spec>>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    annotations: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    containers: Vec<Container>,
    security_context: Option<PodSecurityContext>,
    affinity: Option<Affinity>,
    tolerations: Option<Vec<Toleration>>,
    termination_grace_period_seconds: Option<i64>,
    scheduler_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    resources: Option<ResourceRequirements>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    lifecycle: Option<Lifecycle>,
    liveness_probe: Option<IgnoredAny>,
    startup_probe: Option<IgnoredAny>,
}

/// What the webhook does to a Pod on CREATE, from the fields it reads (read with the
/// AdmissionReview around them, in the same pass); `None` where [`crate::object::mutate_pod`]
/// must answer instead.
pub fn patch_pod(pod: PodFields, policy: &Policy) -> Option<PodPatch> {
    let Metadata {
        annotations,
        labels,
    } = pod.metadata;
    if !annotations::opted_in(annotations.as_ref()) {
        return Some(PodPatch::default());
    }
    let overrides = Overrides::parse(annotations.as_ref()).ok()?;
    let mode = overrides.gpu_mode.unwrap_or(policy.gpu.mode);
    let Spec {
        containers,
        security_context,
        affinity,
        tolerations,
        termination_grace_period_seconds: mut grace,
        scheduler_name: mut scheduler,
    } = *pod.spec?;
    let names = containers.iter().map(|c| c.name.as_str());
    let gpu_index = gpu_container_index(names, overrides.container.as_deref())?;
    let gpu = containers.get(gpu_index)?;
    if mode == GpuMode::Hostpath {
        return None;
    }

    let mut report = TemplateReport::default();
    let mut ops = Ops::default();
    let mut resources = gpu.resources.clone();
    if mode == GpuMode::DevicePlugin {
        report.note(ensure_gpu_resource(
            &mut resources,
            &policy.gpu.resource_name,
        ));
    }

    let had_groups = security_context
        .as_ref()
        .map(|sc| sc.supplemental_groups.is_some());
    let mut security_context = security_context;
    let groups = ensure_render_groups(&mut security_context, &policy.render_groups);
    if let Some(Change::RenderGroups(missing)) = &groups {
        match had_groups {
            Some(true) => {
                for gid in missing {
                    ops.add(&["spec", "securityContext", "supplementalGroups", "-"], gid)
                }
            }
            Some(false) => ops.add(&["spec", "securityContext", "supplementalGroups"], missing),
            None => ops.add(&["spec", "securityContext"], &security_context),
        }
    }
    report.note(groups);

    let before = affinity.clone();
    let mut affinity = affinity;
    let quicksync =
        ensure_quicksync_affinity(&mut affinity, &policy.node_affinity, &mut report.warnings);
    if quicksync.is_some() {
        add_affinity(&mut ops, before.as_ref(), affinity.as_ref())?;
    }
    report.note(quicksync);

    let failover_seconds = overrides
        .failover_seconds
        .unwrap_or(policy.failover_seconds);
    let mut tolerations = tolerations;
    let failover = ensure_failover_tolerations(&mut tolerations, failover_seconds);
    if failover.is_some() {
        ops.add(&["spec", "tolerations"], &tolerations);
    }
    report.note(failover);
    warn_out_of_service_tolerations(
        tolerations.as_deref().unwrap_or_default(),
        &mut report.warnings,
    );

    let shutdown = ShutdownSettings {
        name: &gpu.name,
        command: gpu.command.as_deref(),
        args: gpu.args.as_deref(),
        pre_stop: gpu.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()),
        liveness_probe: gpu.liveness_probe.is_some(),
        startup_probe: gpu.startup_probe.is_some(),
    };
    shutdown.warn(&mut report.warnings);
    let raised = ensure_termination_grace(&mut grace, shutdown.grace_needed(policy));
    if raised.is_some() {
        ops.add(&["spec", "terminationGracePeriodSeconds"], grace);
    }
    report.note(raised);

    let had_labels = labels.is_some();
    let mut labels = labels;
    let labelled = ensure_managed_label(&mut labels);
    if labelled.is_some() {
        if had_labels {
            ops.add(&["metadata", "labels", MANAGED], "true")
        } else {
            ops.add(&["metadata", "labels"], &labels)
        }
    }
    report.note(labelled);

    match route(TemplateOf::Pod, &policy.scheduling, &mut report.warnings) {
        Route::Marker => report.note(ensure_scheduling_marker(&mut resources)),
        Route::SchedulerName(name) => {
            let change = ensure_scheduler_name(&mut scheduler, name, &mut report.warnings);
            if change.is_some() {
                ops.add(&["spec", "schedulerName"], &scheduler);
            }
            report.note(change)
        }
        Route::WarnMarker(what) => {
            let containers = containers.iter();
            let resources = containers.map(|c| (c.name.as_str(), c.resources.as_ref()));
            warn_marker(resources, what, &mut report.warnings)
        }
    }
    add_resources(
        &mut ops,
        gpu_index,
        gpu.resources.as_ref(),
        resources.as_ref(),
    );

    if let Some(record) = report.record(annotations.as_ref()) {
        ops.add(&["metadata", "annotations", annotations::MUTATIONS], record);
    }
    Some(PodPatch {
        patch: ops.into_patch()?,
        changes: report.changes,
        warnings: report.warnings,
    })
}

/// The operations that turn the GPU container's `before` resources into `after`, which only
/// gained entries.
fn add_resources(
    ops: &mut Ops,
    index: usize,
    before: Option<&ResourceRequirements>,
    after: Option<&ResourceRequirements>,
) {
    let index = index.to_string();
    let at = ["spec", "containers", index.as_str(), "resources"];
    let (Some(before), Some(after)) = (before, after) else {
        if before != after {
            ops.add(&at, after);
        }
        return;
    };
    let lists = [
        ("limits", &before.limits, &after.limits),
        ("requests", &before.requests, &after.requests),
    ];
    for (list, before, after) in lists {
        let Some(after) = after else { continue };
        let [spec, containers, index, resources] = at;
        match before {
            None => ops.add(&[spec, containers, index, resources, list], after),
            Some(before) => {
                for (key, quantity) in after {
                    if before.get(key) != Some(quantity) {
                        ops.add(&[spec, containers, index, resources, list, key], quantity)
                    }
                }
            }
        }
    }
}

/// The operations that add the QuickSync requirement as [`ensure_quicksync_affinity`] did:
/// the first level that was missing whole, or the expression in each term that lacked it.
/// `None` for a shape it does not write.
fn add_affinity(ops: &mut Ops, before: Option<&Affinity>, after: Option<&Affinity>) -> Option<()> {
    const AFFINITY: [&str; 2] = ["spec", "affinity"];
    const NODE: [&str; 3] = ["spec", "affinity", "nodeAffinity"];
    const REQUIRED: [&str; 4] = [
        "spec",
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
    ];
    let after_node = after?.node_affinity.as_ref()?;
    let after_required = after_node
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    let Some(before) = before else {
        ops.add(&AFFINITY, after);
        return Some(());
    };
    let Some(before_node) = &before.node_affinity else {
        ops.add(&NODE, after_node);
        return Some(());
    };
    let Some(before_required) = &before_node.required_during_scheduling_ignored_during_execution
    else {
        ops.add(&REQUIRED, after_required);
        return Some(());
    };
    let terms = (
        &before_required.node_selector_terms,
        &after_required.node_selector_terms,
    );
    if terms.0.is_empty() {
        let [spec, affinity, node, required] = REQUIRED;
        ops.add(
            &[spec, affinity, node, required, "nodeSelectorTerms"],
            terms.1,
        );
        return Some(());
    }
    if terms.0.len() != terms.1.len() {
        return None;
    }
    for (index, (before, after)) in terms.0.iter().zip(terms.1).enumerate() {
        let after = after.match_expressions.as_deref().unwrap_or_default();
        let index = index.to_string();
        let [spec, affinity, node, required] = REQUIRED;
        let term = [spec, affinity, node, required, "nodeSelectorTerms", &index];
        match before.match_expressions.as_deref() {
            None => ops.add(&[&term[..], &["matchExpressions"]].concat(), after),
            Some(before) => {
                for added in after.get(before.len()..).unwrap_or_default() {
                    ops.add(&[&term[..], &["matchExpressions", "-"]].concat(), added)
                }
            }
        }
    }
    Some(())
}

/// An RFC 6902 patch of `add` operations (which also replace a member present), written as
/// JSON text while it is built: building values or operations to serialise later would cost
/// more than the rest of the mutation.
#[derive(Debug, Clone, Default)]
pub struct AddPatch {
    /// `[` and the operations written so far, each followed by `,`; empty when there are none.
    json: Vec<u8>,
}

impl AddPatch {
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    /// The patch as JSON text, `[]` when it is empty.
    pub fn into_json(mut self) -> Vec<u8> {
        match self.json.last_mut() {
            Some(comma) => *comma = b']',
            None => self.json.extend_from_slice(b"[]"),
        }
        self.json
    }
}

/// The patch being written.
struct Ops {
    patch: AddPatch,
    /// A value that did not serialise; the patch is then not used.
    failed: bool,
}

impl Default for Ops {
    fn default() -> Self {
        Self {
            // Room for every operation a Pod can need, so that writing never grows it.
            patch: AddPatch {
                json: Vec::with_capacity(4096),
            },
            failed: false,
        }
    }
}

impl Ops {
    fn add(&mut self, path: &[&str], value: impl Serialize) {
        let json = &mut self.patch.json;
        if json.is_empty() {
            json.push(b'[');
        }
        json.extend_from_slice(br#"{"op":"add","path":""#);
        for token in path {
            json.push(b'/');
            // JSON Pointer escapes; a token that would need JSON string escapes as well (no
            // Kubernetes name or key does) is left to the reference engine.
            for byte in token.bytes() {
                match byte {
                    b'~' => json.extend_from_slice(b"~0"),
                    b'/' => json.extend_from_slice(b"~1"),
                    b'"' | b'\\' | ..b' ' => self.failed = true,
                    _ => json.push(byte),
                }
            }
        }
        json.extend_from_slice(br#"","value":"#);
        self.failed |= serde_json::to_writer(&mut *json, &value).is_err();
        json.extend_from_slice(b"},");
    }

    fn into_patch(self) -> Option<AddPatch> {
        (!self.failed).then_some(self.patch)
    }
}
