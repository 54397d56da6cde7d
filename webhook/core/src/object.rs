//! Objects as they arrive (JSON values) in, mutated objects out.
//!
//! The typed `k8s-openapi` structs ignore fields newer than the schema they were generated
//! from, so re-serialising one would silently drop those fields. Instead the typed template is
//! mutated, the typed before/after are diffed, and only that delta is applied to the original
//! JSON: whatever we do not understand passes through untouched.

use json_patch::jsonptr::{Pointer, PointerBuf};
use json_patch::{
    AddOperation, CopyOperation, MoveOperation, Patch, PatchOperation, RemoveOperation,
    ReplaceOperation, TestOperation,
};
use serde::Deserialize;
use serde_json::{Value, json};

use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::annotations;
use crate::config::Policy;
use crate::pod_template::{Change, MutationError, TemplateOf, mutate_pod_template};
use crate::record;

/// An object after the webhook's mutation, the patch that made it, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchedObject {
    pub object: Value,
    /// The RFC 6902 patch from the input to `object`; empty when nothing changed. It is the
    /// patch that produced `object`, so nobody has to diff the two again.
    pub patch: Patch,
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
}

impl PatchedObject {
    fn unchanged(object: &Value) -> Self {
        Self {
            object: object.clone(),
            patch: Patch::default(),
            changes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Adds a mutation made to this one's result.
    fn absorb(&mut self, other: PatchedObject) {
        self.object = other.object;
        self.patch.0.extend(other.patch.0);
        self.changes.extend(other.changes);
        self.warnings.extend(other.warnings);
    }
}

/// What the webhook does to a Pod on CREATE: the reference its fast path,
/// [`crate::pod_patch::patch_pod`], is held to, and what answers where that one declines.
pub fn mutate_pod(pod: &Value, policy: &Policy) -> Result<PatchedObject, MutationError> {
    mutate_template_at(pod, Pointer::root(), policy, TemplateOf::Pod)
}

/// Where each workload kind keeps its pod template (checked when compiled).
fn pod_template_pointer(group: &str, kind: &str) -> Option<&'static Pointer> {
    const TEMPLATE: &Pointer = Pointer::from_static("/template");
    const SPEC_TEMPLATE: &Pointer = Pointer::from_static("/spec/template");
    const JOB_TEMPLATE: &Pointer = Pointer::from_static("/spec/jobTemplate/spec/template");
    match (group, kind) {
        ("", "PodTemplate") => Some(TEMPLATE),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(SPEC_TEMPLATE),
        ("batch", "CronJob") => Some(JOB_TEMPLATE),
        _ => None,
    }
}

/// The mutation of an object of API group `group` and kind `kind`: a Pod gets all of it, the
/// pod template of any workload kind all of it but the scheduling marker (see
/// [`TemplateOf::Workload`]), and a Deployment that mounts a claim `Recreate`. Other kinds pass
/// untouched, and so does a value that is not a JSON object, as it holds no template. The
/// webhook applies it to the kinds it is registered for, `mutate` to every kind.
pub fn mutate_object(
    object: &Value,
    group: &str,
    kind: &str,
    policy: &Policy,
) -> Result<PatchedObject, MutationError> {
    if (group, kind) == ("", "Pod") {
        return mutate_pod(object, policy);
    }
    let Some(pointer) = pod_template_pointer(group, kind) else {
        return Ok(PatchedObject::unchanged(object));
    };
    let mut mutation = mutate_template_at(object, pointer, policy, TemplateOf::Workload)?;
    if (group, kind) == ("apps", "Deployment") {
        let strategy = mutate_deployment_strategy(&mutation.object);
        mutation.absorb(strategy);
    }
    Ok(mutation)
}

/// What `jellyfin-ha mutate` does to one manifest: what the webhook would do to it
/// ([`mutate_object`], by the manifest's own `apiVersion` and `kind`), and `v1/List` items one
/// by one.
pub fn mutate_manifest(object: &Value, policy: &Policy) -> Result<PatchedObject, MutationError> {
    let field = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or_default();
    let group = field("apiVersion")
        .rsplit_once('/')
        .map_or("", |(group, _)| group);
    let kind = field("kind");
    if (group, kind) == ("", "List") {
        return mutate_list(object, policy);
    }
    mutate_object(object, group, kind, policy)
}

fn mutate_list(list: &Value, policy: &Policy) -> Result<PatchedObject, MutationError> {
    let mut result = PatchedObject::unchanged(list);
    let Some(items) = result.object.get_mut("items").and_then(Value::as_array_mut) else {
        return Ok(result);
    };
    let mut patch = Patch::default();
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    for (index, item) in items.iter_mut().enumerate() {
        let mutation =
            mutate_manifest(item, policy).map_err(|source| MutationError::InListItem {
                index,
                source: Box::new(source),
            })?;
        *item = mutation.object;
        let at = PointerBuf::from_tokens(["items".to_string(), index.to_string()]);
        patch.0.extend(rebase(mutation.patch, &at).0);
        changes.extend(mutation.changes);
        warnings.extend(
            mutation
                .warnings
                .into_iter()
                .map(|w| format!("items[{index}]: {w}")),
        );
    }
    result.patch = patch;
    result.changes = changes;
    result.warnings = warnings;
    Ok(result)
}

/// Reads the opt-in annotation straight from the JSON, so objects that did not opt in cost no
/// typed parse.
fn template_opted_in(template: &Value) -> bool {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(annotations::INJECT))
        .and_then(Value::as_str)
        == Some("true")
}

/// `/spec/template` → `spec.template`, for error messages.
fn field_name(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

fn join_field(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty() || inner == ".") {
        (true, _) => inner.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

fn mutate_template_at(
    object: &Value,
    pointer: &Pointer,
    policy: &Policy,
    holder: TemplateOf,
) -> Result<PatchedObject, MutationError> {
    let prefix = field_name(pointer.as_str());
    let Some(raw) = object
        .pointer(pointer.as_str())
        .filter(|t| template_opted_in(t))
    else {
        return Ok(PatchedObject::unchanged(object));
    };
    // Tracking the path costs more than the mutation itself, so only a failure pays for it.
    let template = match PodTemplateSpec::deserialize(raw) {
        Ok(template) => template,
        Err(_) => {
            let located = serde_path_to_error::deserialize::<_, PodTemplateSpec>(raw).err();
            let (path, message) = located.map_or_else(Default::default, |e| {
                (e.path().to_string(), e.inner().to_string())
            });
            return Err(MutationError::Malformed {
                field: join_field(&prefix, &path),
                message,
            });
        }
    };
    let internal = |e: serde_json::Error| MutationError::Malformed {
        field: prefix.clone(),
        message: e.to_string(),
    };
    let before = serde_json::to_value(&template).map_err(internal)?;
    let mut template = template;
    let report = mutate_pod_template(&mut template, policy, &prefix, holder)?;
    let after = serde_json::to_value(&template).map_err(internal)?;

    let patch = rebase(json_patch::diff(&before, &after), pointer);
    let mut mutated = object.clone();
    json_patch::patch(&mut mutated, &patch).map_err(|e| MutationError::Malformed {
        field: field_name(&e.path.to_string()),
        message: format!("cannot be mutated: {}", e.kind),
    })?;
    Ok(PatchedObject {
        object: mutated,
        patch,
        changes: report.changes,
        warnings: report.warnings,
    })
}

/// A Deployment whose opted-in template mounts a PersistentVolumeClaim must replace its pod
/// with `Recreate`: with RollingUpdate the new pod waits forever for the ReadWriteOnce volume
/// the old pod holds.
fn mutate_deployment_strategy(deployment: &Value) -> PatchedObject {
    let unchanged = || PatchedObject::unchanged(deployment);
    let Some(template) = deployment
        .pointer("/spec/template")
        .filter(|t| template_opted_in(t))
    else {
        return unchanged();
    };
    let mounts_claim = template
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|volumes| {
            volumes
                .iter()
                .any(|v| v.get("persistentVolumeClaim").is_some_and(Value::is_object))
        });
    if !mounts_claim {
        return unchanged();
    }
    let strategy = deployment.pointer("/spec/strategy");
    let strategy_type = strategy.and_then(|s| s.get("type")).and_then(Value::as_str);
    let has_rolling_update = strategy
        .and_then(|s| s.get("rollingUpdate"))
        .is_some_and(|r| !r.is_null());
    if strategy_type == Some("Recreate") && !has_rolling_update {
        return unchanged();
    }
    let mut mutated = deployment.clone();
    let mut warnings = Vec::new();
    if let Some(spec) = mutated.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("strategy".to_string(), json!({ "type": "Recreate" }));
    }
    if strategy_type == Some("RollingUpdate") {
        warnings.push(
            "spec.strategy RollingUpdate replaced by Recreate: beside the old pod, the new one \
             would share its ReadWriteOnce volume on the same node (two writers of one \
             library) or wait for it forever on another"
                .to_string(),
        );
    }
    let changes = vec![Change::RecreateStrategy];
    if let Some(metadata) = mutated.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
        if let Some(annotations) = annotations.as_object_mut() {
            let existing = annotations
                .get(annotations::MUTATIONS)
                .and_then(Value::as_str);
            let merged = record::merge(existing, &changes);
            annotations.insert(annotations::MUTATIONS.to_string(), Value::String(merged));
        }
    }
    // Rare and small next to pod creation, so a diff is the plainest way to the patch.
    PatchedObject {
        patch: json_patch::diff(deployment, &mutated),
        object: mutated,
        changes,
        warnings,
    }
}

/// Moves every path of `patch` under `at`: a patch for a pod template becomes a patch for the
/// object that holds it.
fn rebase(patch: Patch, at: &Pointer) -> Patch {
    let under = |path: PointerBuf| at.concat(&path);
    Patch(
        patch
            .0
            .into_iter()
            .map(|operation| match operation {
                PatchOperation::Add(op) => PatchOperation::Add(AddOperation {
                    path: under(op.path),
                    ..op
                }),
                PatchOperation::Remove(op) => PatchOperation::Remove(RemoveOperation {
                    path: under(op.path),
                }),
                PatchOperation::Replace(op) => PatchOperation::Replace(ReplaceOperation {
                    path: under(op.path),
                    ..op
                }),
                PatchOperation::Move(op) => PatchOperation::Move(MoveOperation {
                    from: under(op.from),
                    path: under(op.path),
                }),
                PatchOperation::Copy(op) => PatchOperation::Copy(CopyOperation {
                    from: under(op.from),
                    path: under(op.path),
                }),
                PatchOperation::Test(op) => PatchOperation::Test(TestOperation {
                    path: under(op.path),
                    ..op
                }),
            })
            .collect(),
    )
}
