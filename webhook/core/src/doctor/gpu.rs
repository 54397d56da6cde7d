//! QuickSync nodes: label against resource, shares against the pods that want one, render
//! group ids against what the webhook adds, and pod security against the GPU mode.

use super::workload::Workload;
use super::{Finding, Snapshot};
use crate::annotations::Overrides;
use crate::config::GpuMode;
use crate::extender::snapshot::NodeInfo;

/// The namespace label that sets the enforced Pod Security level.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

pub(super) fn check(snapshot: &Snapshot, workloads: &[Workload<'_>]) -> Vec<Finding> {
    let nodes = nodes(snapshot);
    let mut findings = label_and_resource(snapshot, &nodes);
    findings.push(shares(snapshot, &nodes, workloads));
    findings.extend(render_gids(snapshot, &nodes));
    findings.extend(workloads.iter().map(|w| pod_security(snapshot, w)));
    findings
}

/// The checked nodes, read with the QuickSync label and GPU resource the webhook's pods
/// require, which the extender shares.
fn nodes(snapshot: &Snapshot) -> Vec<NodeInfo> {
    snapshot
        .nodes
        .iter()
        .filter_map(|n| NodeInfo::from_node(n, &snapshot.policy.extender))
        .collect()
}

fn label_text(snapshot: &Snapshot) -> String {
    let affinity = &snapshot.policy.node_affinity;
    format!("{} In [{}]", affinity.key, affinity.values.join(","))
}

fn label_and_resource(snapshot: &Snapshot, nodes: &[NodeInfo]) -> Vec<Finding> {
    const CHECK: &str = "gpu/label";
    let resource = &snapshot.policy.gpu.resource_name;
    let needs_resource = snapshot.policy.gpu.mode == GpuMode::DevicePlugin;
    let mut findings = Vec::new();
    for node in nodes {
        let shares = node.gpu_allocatable.unwrap_or(0);
        if shares > 0 && !node.quick_sync {
            findings.push(Finding::fail(
                CHECK,
                node.name.clone(),
                format!(
                    "advertises {shares} {resource} but lacks the QuickSync label ({}), so \
                     the webhook's node affinity keeps Jellyfin off it",
                    label_text(snapshot)
                ),
                format!(
                    "label it (kubectl label node {} {}={}), or make NFD see the GPU: its \
                     rule looks for the i915/xe module, which a kernel with i915 built in \
                     does not list",
                    node.name,
                    snapshot.policy.node_affinity.key,
                    snapshot
                        .policy
                        .node_affinity
                        .values
                        .first()
                        .map_or("true", String::as_str)
                ),
            ));
        } else if node.quick_sync && shares == 0 && needs_resource {
            findings.push(Finding::fail(
                CHECK,
                node.name.clone(),
                format!(
                    "carries the QuickSync label but advertises no {resource}, so a pod \
                     asking for a share can never run there"
                ),
                "run Intel's GPU device plugin on it (or remove the label if it has no iGPU)",
            ));
        }
    }
    if findings.is_empty() {
        let quick_sync = nodes.iter().filter(|n| n.quick_sync).count();
        findings.push(if nodes.is_empty() {
            Finding::warn(
                CHECK,
                "",
                "no nodes to check",
                "check the node selector given to doctor",
            )
        } else if quick_sync == 0 {
            Finding::fail(
                CHECK,
                "",
                format!(
                    "none of the {} node(s) checked carries the QuickSync label ({})",
                    nodes.len(),
                    label_text(snapshot)
                ),
                "install Node Feature Discovery with Intel's GPU rules, or label QuickSync \
                 nodes by hand",
            )
        } else {
            Finding::ok(
                CHECK,
                "",
                format!(
                    "{quick_sync} QuickSync node(s), label and {} agree on each",
                    if needs_resource {
                        resource.as_str()
                    } else {
                        "hostPath mode"
                    }
                ),
            )
        });
    }
    findings
}

/// Shares on QuickSync nodes against the pods that want one: enough for all of them, and
/// enough when the node with the most is gone.
fn shares(snapshot: &Snapshot, nodes: &[NodeInfo], workloads: &[Workload<'_>]) -> Finding {
    const CHECK: &str = "gpu/shares";
    let resource = &snapshot.policy.gpu.resource_name;
    let wanted: i64 = workloads
        .iter()
        .filter(|w| gpu_mode(snapshot, w) == GpuMode::DevicePlugin)
        .map(|w| i64::from(w.replicas.max(0)))
        .sum();
    if wanted == 0 {
        return Finding::ok(
            CHECK,
            "",
            format!("no checked workload asks for {resource}"),
        );
    }
    let per_node: Vec<i64> = nodes
        .iter()
        .filter(|n| n.quick_sync)
        .map(|n| n.gpu_allocatable.unwrap_or(0).max(0))
        .collect();
    let total: i64 = per_node.iter().sum();
    let largest = per_node.iter().copied().max().unwrap_or(0);
    if total < wanted {
        return Finding::fail(
            CHECK,
            "",
            format!(
                "{wanted} pod(s) want one {resource} each, QuickSync nodes have {total}: \
                 some stay Pending"
            ),
            "raise the GPU plugin's sharedDevNum or add QuickSync nodes",
        );
    }
    if total - largest < wanted {
        return Finding::warn(
            CHECK,
            "",
            format!(
                "{wanted} pod(s) want one {resource} each; {total} on {} QuickSync node(s), \
                 but without the node that has {largest} only {} remain, so a failover from \
                 it stays Pending",
                per_node.len(),
                total - largest
            ),
            "raise the GPU plugin's sharedDevNum (e.g. 2 or more per node) or add a \
             QuickSync node",
        );
    }
    Finding::ok(
        CHECK,
        "",
        format!(
            "{wanted} pod(s) want one {resource} each; {total} on {} QuickSync node(s), enough \
             even without the largest",
            per_node.len()
        ),
    )
}

fn gpu_mode(snapshot: &Snapshot, workload: &Workload<'_>) -> GpuMode {
    let annotations = workload
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    Overrides::parse(annotations)
        .ok()
        .and_then(|o| o.gpu_mode)
        .unwrap_or(snapshot.policy.gpu.mode)
}

/// Each QuickSync node's render group, as its agent reports it, against the GIDs the webhook
/// adds to `supplementalGroups` (with `renderGroupsFrom: agents`, the reported ones).
fn render_gids(snapshot: &Snapshot, nodes: &[NodeInfo]) -> Vec<Finding> {
    const CHECK: &str = "gpu/render-gid";
    let policy = &snapshot.policy;
    let reported = snapshot.agent_reports.values().flatten();
    let added = policy.render_groups_from.render_groups(
        &policy.render_groups,
        reported.flat_map(|report| report.render_gids().collect::<Vec<_>>()),
    );
    let mut findings = Vec::new();
    let mut unreported = Vec::new();
    let mut checked = 0;
    for node in nodes.iter().filter(|n| n.quick_sync) {
        match snapshot.agent_reports.get(&node.name) {
            None => unreported.push(node.name.clone()),
            Some(Err(error)) => findings.push(Finding::warn(
                CHECK,
                node.name.clone(),
                format!("its agent report cannot be read: {error}"),
                "check the node agent's log on that node",
            )),
            Some(Ok(report)) => {
                checked += 1;
                let foreign: Vec<String> = report
                    .render_gids()
                    .filter(|gid| !added.contains(&i64::from(*gid)))
                    .map(|gid| gid.to_string())
                    .collect();
                let root_owned = report.render_gids().any(|gid| gid == 0);
                if !report.has_usable_card() {
                    findings.push(Finding::warn(
                        CHECK,
                        node.name.clone(),
                        "its agent reports no usable GPU card, so transcodes there fall back \
                         to the CPU",
                        "check the card problems in the node's agent report",
                    ));
                } else if root_owned {
                    findings.push(Finding::fail(
                        CHECK,
                        node.name.clone(),
                        "its render node belongs to the root group (GID 0), which no pod should \
                         be given, so /dev/dri is refused and transcodes fall back to the CPU",
                        "give the render node a group of its own on the host (the distribution's \
                         udev rules create `render`), then add that GID to renderGroups",
                    ));
                } else if !foreign.is_empty() {
                    findings.push(Finding::fail(
                        CHECK,
                        node.name.clone(),
                        format!(
                            "its render node belongs to GID {}, which the webhook does not add \
                             (renderGroups), so /dev/dri is refused and transcodes fall back \
                             to the CPU",
                            foreign.join(", ")
                        ),
                        format!(
                            "add {} to renderGroups in jellyfin-ha's config, or set \
                             renderGroupsFrom: agents",
                            foreign.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    if !unreported.is_empty() {
        let names = unreported.join(", ");
        findings.push(if snapshot.agents_installed {
            Finding::warn(
                CHECK,
                names,
                "no agent report: the node agent does not run there, so its render GID and \
                 GPU load are unknown",
                "make sure the agent DaemonSet's nodeSelector and tolerations reach it",
            )
        } else {
            Finding::ok(
                CHECK,
                names,
                format!(
                    "no node agent installed, so render GIDs are not verified; the webhook adds \
                     {added:?}"
                ),
            )
        });
    }
    if findings.is_empty() && checked > 0 {
        findings.push(Finding::ok(
            CHECK,
            "",
            format!("{checked} node(s) report render GIDs the webhook adds"),
        ));
    }
    if findings.is_empty() {
        findings.push(Finding::ok(CHECK, "", "no QuickSync node to check"));
    }
    findings
}

/// hostPath access to /dev/dri needs a privileged container, which only the `privileged`
/// Pod Security level admits.
fn pod_security(snapshot: &Snapshot, workload: &Workload<'_>) -> Finding {
    const CHECK: &str = "gpu/pod-security";
    let level = snapshot
        .namespace_labels
        .get(POD_SECURITY_ENFORCE)
        .map_or("privileged (no label)", String::as_str);
    let mode = gpu_mode(snapshot, workload);
    if mode == GpuMode::Hostpath && !level.starts_with("privileged") {
        return Finding::fail(
            CHECK,
            workload.subject(),
            format!(
                "GPU mode hostpath needs a privileged container, but namespace {} enforces \
                 Pod Security {level}, which refuses its pods",
                snapshot.namespace
            ),
            format!(
                "label the namespace {POD_SECURITY_ENFORCE}=privileged, or use gpu mode \
                 device-plugin"
            ),
        );
    }
    Finding::ok(
        CHECK,
        workload.subject(),
        if mode == GpuMode::Hostpath {
            format!(
                "GPU mode hostpath needs a privileged container, which Pod Security {level} admits"
            )
        } else {
            format!(
                "GPU mode {mode} needs no privileged container (namespace enforces Pod Security {level})"
            )
        },
    )
}
