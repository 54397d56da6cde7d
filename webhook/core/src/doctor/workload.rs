//! Each opted-in Deployment or StatefulSet (or the one named): what the webhook would still
//! change in it, what it warns about, and pods that came out without it.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use super::selector;
use super::{Finding, Snapshot};
use crate::annotations;
use crate::extender::snapshot::pod_claim_names;
use crate::object::{mutate_object, mutate_pod};
use crate::pod_template::Change;

/// A workload the checks look at, with its pods and the claims they use.
pub(super) struct Workload<'a> {
    pub kind: &'static str,
    pub name: String,
    /// The object as stored, for the webhook's own mutation.
    pub object: Value,
    pub template: &'a PodTemplateSpec,
    pub replicas: i32,
    /// Its pods that are not being deleted, oldest first.
    pub pods: Vec<&'a Pod>,
    /// Claims its template and its pods use, sorted.
    pub claims: Vec<String>,
}

impl Workload<'_> {
    pub fn subject(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    pub fn opted_in(&self) -> bool {
        annotations::opted_in(
            self.template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref()),
        )
    }
}

/// The workloads to check: the named one, or every opted-in one in the namespace.
pub(super) fn selected(snapshot: &Snapshot) -> Vec<Workload<'_>> {
    let deployments = snapshot.deployments.iter().filter_map(|d| {
        let spec = d.spec.as_ref()?;
        let object = serde_json::to_value(d).ok()?;
        workload(
            snapshot,
            "Deployment",
            &d.metadata,
            object,
            &spec.template,
            &spec.selector,
            spec.replicas,
        )
    });
    let stateful_sets = snapshot.stateful_sets.iter().filter_map(|s| {
        let spec = s.spec.as_ref()?;
        let object = serde_json::to_value(s).ok()?;
        workload(
            snapshot,
            "StatefulSet",
            &s.metadata,
            object,
            &spec.template,
            &spec.selector,
            spec.replicas,
        )
    });
    deployments
        .chain(stateful_sets)
        .filter(|w| match &snapshot.workload {
            Some(name) => &w.name == name,
            None => w.opted_in(),
        })
        .collect()
}

fn workload<'a>(
    snapshot: &'a Snapshot,
    kind: &'static str,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    object: Value,
    template: &'a PodTemplateSpec,
    pod_selector: &LabelSelector,
    replicas: Option<i32>,
) -> Option<Workload<'a>> {
    let name = metadata.name.clone()?;
    let mut pods: Vec<&Pod> = snapshot
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector::matches(pod_selector, &labels)
        })
        .collect();
    pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut claims: Vec<String> = template
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .chain(pods.iter().flat_map(|p| pod_claim_names(p)))
        .collect();
    claims.sort();
    claims.dedup();
    Some(Workload {
        kind,
        name,
        object,
        template,
        replicas: replicas.unwrap_or(1),
        pods,
        claims,
    })
}

/// Whether a claim holds its volume on one node at a time.
pub(super) fn single_node(claim: &PersistentVolumeClaim) -> bool {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .is_none_or(|modes| {
            !modes
                .iter()
                .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany")
        })
}

pub(super) fn check(snapshot: &Snapshot, workloads: &[Workload<'_>]) -> Vec<Finding> {
    let mut findings = Vec::new();
    if workloads.is_empty() {
        findings.push(match &snapshot.workload {
            Some(name) => Finding::fail(
                "workload/found",
                name.clone(),
                format!(
                    "no Deployment or StatefulSet {name} in namespace {}",
                    snapshot.namespace
                ),
                "name a Deployment or StatefulSet of this namespace, or pass -n",
            ),
            None => Finding::warn(
                "workload/found",
                "",
                format!(
                    "no Deployment or StatefulSet in namespace {} opts in",
                    snapshot.namespace
                ),
                format!(
                    "annotate Jellyfin's pod template with {}: \"true\"",
                    annotations::INJECT
                ),
            ),
        });
    }
    for workload in workloads {
        findings.extend(check_workload(snapshot, workload));
    }
    findings.push(unmutated_pods(snapshot, workloads));
    findings
}

fn check_workload(snapshot: &Snapshot, workload: &Workload<'_>) -> Vec<Finding> {
    let subject = workload.subject();
    if !workload.opted_in() {
        return vec![Finding::warn(
            "workload/opt-in",
            subject,
            format!(
                "its pod template lacks {}: \"true\", so the webhook leaves it alone",
                annotations::INJECT
            ),
            format!(
                "annotate spec.template with {}: \"true\"",
                annotations::INJECT
            ),
        )];
    }
    let policy = &snapshot.policy;
    let mutation = match mutate_object(&workload.object, "apps", workload.kind, policy) {
        Ok(mutation) => mutation,
        Err(error) => {
            return vec![Finding::fail(
                "workload/opt-in",
                subject,
                format!("the webhook refuses it: {error}"),
                "correct what the message names",
            )];
        }
    };
    let mut findings = vec![
        strategy(snapshot, workload, &mutation.changes),
        grace(workload, &mutation.changes),
    ];
    let missing: Vec<&str> = mutation
        .changes
        .iter()
        .filter(|c| !matches!(c, Change::RecreateStrategy | Change::TerminationGrace(_)))
        .map(Change::record_key)
        .collect();
    findings.push(if missing.is_empty() {
        Finding::ok(
            "workload/template",
            subject.clone(),
            "the pod template carries everything the webhook adds, so pods are complete at \
             birth even while the webhook is unreachable",
        )
    } else {
        Finding::warn(
            "workload/template",
            subject.clone(),
            format!(
                "the pod template lacks what the webhook adds ({}): it was written before the \
                 webhook was installed or while it was unreachable, so its pods depend on \
                 the webhook being up when they are created",
                missing.join(", ")
            ),
            "re-apply it (or kubectl rollout restart it) while the webhook is reachable",
        )
    });
    // The template's warnings alone: the strategy has a finding of its own above.
    let warnings = serde_json::to_value(workload.template)
        .ok()
        .and_then(|template| {
            let template_only = json!({ "template": template });
            mutate_object(&template_only, "", "PodTemplate", policy).ok()
        })
        .map(|m| m.warnings)
        .unwrap_or_default();
    for warning in warnings {
        let (saw, fix) = warning.rsplit_once("; ").map_or(
            (warning.as_str(), "change the pod template as described"),
            |(saw, fix)| (saw, fix),
        );
        findings.push(Finding::warn(
            "workload/webhook-warning",
            subject.clone(),
            saw,
            fix,
        ));
    }
    findings
}

fn strategy(snapshot: &Snapshot, workload: &Workload<'_>, changes: &[Change]) -> Finding {
    const CHECK: &str = "workload/strategy";
    let subject = workload.subject();
    if !changes.contains(&Change::RecreateStrategy) {
        return Finding::ok(
            CHECK,
            subject,
            match workload.kind {
                "Deployment" if workload.claims.is_empty() => {
                    "no claim, so any strategy can replace the pod"
                }
                "Deployment" => {
                    "Recreate: the old pod releases the volume before the new one needs it"
                }
                _ => "a StatefulSet replaces its pod only after the old one is gone",
            },
        );
    }
    let single: Vec<&str> = workload
        .claims
        .iter()
        .filter(|name| {
            snapshot
                .claims
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
                .is_none_or(single_node)
        })
        .map(String::as_str)
        .collect();
    if single.is_empty() {
        return Finding::ok(
            CHECK,
            subject,
            "RollingUpdate, with only ReadWriteMany claims that old and new pod can share",
        );
    }
    Finding::fail(
        CHECK,
        subject,
        format!(
            "RollingUpdate with the ReadWriteOnce claim {}: the new pod waits for ever for \
             the volume the old pod holds, so every upgrade deadlocks",
            single.join(", ")
        ),
        "set spec.strategy to {type: Recreate} (the webhook does so on the next update it sees)",
    )
}

fn grace(workload: &Workload<'_>, changes: &[Change]) -> Finding {
    const CHECK: &str = "workload/grace";
    let subject = workload.subject();
    let current = workload
        .template
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds);
    match changes.iter().find_map(|c| match c {
        Change::TerminationGrace(needed) => Some(*needed),
        _ => None,
    }) {
        Some(needed) => Finding::fail(
            CHECK,
            subject,
            format!(
                "terminationGracePeriodSeconds is {}, shorter than the {needed} s a clean \
                 Jellyfin shutdown needs: a SIGKILL in the middle of its database VACUUM \
                 corrupts the library",
                current.map_or_else(|| "unset (30 s)".to_string(), |s| format!("{s} s"))
            ),
            format!("set spec.template.spec.terminationGracePeriodSeconds to {needed}"),
        ),
        None => Finding::ok(
            CHECK,
            subject,
            format!(
                "terminationGracePeriodSeconds {} leaves Jellyfin time to close its database",
                current.map_or_else(|| "unset".to_string(), |s| s.to_string())
            ),
        ),
    }
}

/// Opted-in pods the webhook would still change: they were created while it was unreachable
/// (its failurePolicy is Ignore) or outside the namespaces it covers.
fn unmutated_pods(snapshot: &Snapshot, workloads: &[Workload<'_>]) -> Finding {
    const CHECK: &str = "workload/unmutated-pod";
    let pods: Vec<&Pod> = match &snapshot.workload {
        Some(_) => workloads
            .iter()
            .flat_map(|w| w.pods.iter().copied())
            .collect(),
        None => snapshot
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| annotations::opted_in(p.metadata.annotations.as_ref()))
            .collect(),
    };
    let mut unmutated = Vec::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mutated = serde_json::to_value(pod)
            .map_err(|e| e.to_string())
            .and_then(|pod| mutate_pod(&pod, &snapshot.policy).map_err(|e| e.to_string()));
        let missing = match mutated {
            Ok(m) if m.changes.is_empty() => continue,
            Ok(m) => m
                .changes
                .iter()
                .map(Change::record_key)
                .collect::<Vec<_>>()
                .join(", "),
            Err(error) => error,
        };
        unmutated.push(format!("{name} (lacks {missing})"));
    }
    if pods.is_empty() {
        return Finding::ok(CHECK, "", "no opted-in pod to check");
    }
    if unmutated.is_empty() {
        return Finding::ok(
            CHECK,
            "",
            format!(
                "{} opted-in pod(s) carry everything the webhook adds",
                pods.len()
            ),
        );
    }
    Finding::fail(
        CHECK,
        unmutated.join("; "),
        "created without the webhook: it was unreachable then (its failurePolicy is Ignore) \
         or did not cover the namespace, so the pod may lack its iGPU, QuickSync placement and \
         short failover tolerations",
        "check jellyfin-ha/webhook-endpoints, then delete the pod so its controller recreates \
         it through the webhook",
    )
}
