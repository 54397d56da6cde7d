//! jellyfin-ha's own parts: the webhook's registration, CA and replicas, whether the
//! scheduler sends managed pods to the extender, and the fencer with its fence agents.

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::SignedDuration;

use super::selector;
use super::snapshot::CONFIG_CONFIGMAP;
use super::{ConfigSource, Finding, Snapshot};
use crate::annotations::MANAGED;
use crate::fencing::decide::{NodeFacts, eligibility};
use crate::scheduling::{CONFIGMAP, Scheduling};

/// The webhook that mutates Pods, and the one that mutates workload templates, as the shipped
/// `MutatingWebhookConfiguration` names them.
pub const POD_WEBHOOK: &str = "pods.jellyfin-ha.io";
pub const WORKLOAD_WEBHOOK: &str = "workloads.jellyfin-ha.io";

/// A CA this close to expiry is worth renewing now.
const CA_EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(30 * 24);

/// The label EndpointSlices carry for their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(super) fn check(snapshot: &Snapshot) -> Vec<Finding> {
    let mut findings = vec![config(snapshot)];
    findings.extend(webhook(snapshot));
    findings.push(extender(snapshot));
    findings.push(fencer_leader(snapshot));
    findings.extend(fence_mapping(snapshot));
    findings.extend(fence_agents(snapshot));
    findings
}

fn config(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "jellyfin-ha/config";
    match &snapshot.config_source {
        ConfigSource::File(at) | ConfigSource::ConfigMap(at) => {
            Finding::ok(CHECK, at.clone(), "read and valid")
        }
        ConfigSource::Defaults => Finding::warn(
            CHECK,
            "",
            format!(
                "no config in {} (ConfigMap {CONFIG_CONFIGMAP}), so the checks assume the \
                 defaults",
                snapshot.install_namespace
            ),
            "install jellyfin-ha, or point doctor at it with --install-namespace or --config",
        ),
        ConfigSource::Invalid(error) => Finding::fail(
            CHECK,
            "",
            format!(
                "{error}: every role refuses to start with it, and the checks assume the defaults"
            ),
            "correct the field the message names",
        ),
    }
}

/// The registrations whose webhook `name` covers the checked namespace, with that webhook.
fn covering<'a>(snapshot: &'a Snapshot, name: &str) -> Vec<(String, &'a MutatingWebhook)> {
    snapshot
        .webhook_configurations
        .iter()
        .flat_map(|config| {
            let config_name = config.metadata.name.clone().unwrap_or_default();
            config
                .webhooks
                .iter()
                .flatten()
                .filter(move |w| w.name == name)
                .map(move |w| (config_name.clone(), w))
        })
        .filter(|(_, w)| {
            w.namespace_selector
                .as_ref()
                .is_none_or(|s| selector::matches(s, &snapshot.namespace_labels))
        })
        .collect()
}

fn webhook(snapshot: &Snapshot) -> Vec<Finding> {
    let pods = covering(snapshot, POD_WEBHOOK);
    let templates = covering(snapshot, WORKLOAD_WEBHOOK);
    let mut findings = Vec::new();
    let Some((config, pod_webhook)) = pods.first() else {
        return vec![Finding::fail(
            "jellyfin-ha/webhook",
            snapshot.namespace.clone(),
            format!(
                "no MutatingWebhookConfiguration sends this namespace's pods to {POD_WEBHOOK}: \
                 opted-in pods get no iGPU, placement or failover tolerations"
            ),
            "install jellyfin-ha (kubectl apply -k manifests/overlays/self-managed), or take the \
             namespace out of its namespaceSelector's exclusions",
        )];
    };
    findings.push(if templates.is_empty() {
        Finding::warn(
            "jellyfin-ha/webhook",
            config.clone(),
            format!(
                "{POD_WEBHOOK} covers namespace {} but {WORKLOAD_WEBHOOK} does not: pods made \
                 while the webhook is down come out unmutated",
                snapshot.namespace
            ),
            "apply the shipped MutatingWebhookConfiguration whole",
        )
    } else {
        Finding::ok(
            "jellyfin-ha/webhook",
            config.clone(),
            format!(
                "{POD_WEBHOOK} and {WORKLOAD_WEBHOOK} cover namespace {}",
                snapshot.namespace
            ),
        )
    });
    findings.push(ca(snapshot, config));
    findings.push(endpoints(snapshot, config, pod_webhook));
    findings
}

fn ca(snapshot: &Snapshot, config: &str) -> Finding {
    const CHECK: &str = "jellyfin-ha/webhook-ca";
    let fix = "renew the webhook's CA and put it in the configuration's caBundle (jellyfin-ha \
               or cert-manager's CA injector does this when installed)";
    let certificates = match snapshot.webhook_cas.get(config) {
        Some(Ok(certificates)) if !certificates.is_empty() => certificates,
        Some(Err(error)) => {
            return Finding::fail(
                CHECK,
                config,
                format!("the caBundle cannot be read: {error}"),
                fix,
            );
        }
        _ => {
            return Finding::fail(
                CHECK,
                config,
                "no caBundle: the apiserver cannot verify the webhook and admits pods unmutated",
                fix,
            );
        }
    };
    let now = snapshot.now;
    let Some(soonest) = certificates.iter().min_by_key(|c| c.not_after) else {
        return Finding::fail(CHECK, config, "no certificate in the caBundle", fix);
    };
    let left = soonest.not_after.duration_since(now);
    if let Some(early) = certificates.iter().find(|c| c.not_before > now) {
        return Finding::fail(
            CHECK,
            config,
            format!(
                "CA {} is not valid before {}",
                early.subject, early.not_before
            ),
            fix,
        );
    }
    if left <= SignedDuration::ZERO {
        return Finding::fail(
            CHECK,
            config,
            format!(
                "CA {} expired at {}: every call to the webhook fails",
                soonest.subject, soonest.not_after
            ),
            fix,
        );
    }
    let days = left.as_hours() / 24;
    if left < CA_EXPIRY_WARNING {
        return Finding::warn(
            CHECK,
            config,
            format!(
                "CA {} expires in {days} day(s), at {}",
                soonest.subject, soonest.not_after
            ),
            fix,
        );
    }
    Finding::ok(
        CHECK,
        config,
        format!("CA {} valid for {days} more days", soonest.subject),
    )
}

fn endpoints(snapshot: &Snapshot, config: &str, webhook: &MutatingWebhook) -> Finding {
    const CHECK: &str = "jellyfin-ha/webhook-endpoints";
    let Some(service) = &webhook.client_config.service else {
        return Finding::warn(
            CHECK,
            config,
            format!(
                "the webhook is called by URL ({}), so its replicas cannot be counted from the \
                 cluster",
                webhook.client_config.url.as_deref().unwrap_or_default()
            ),
            "serve it from the cluster behind a Service with two replicas on different nodes",
        );
    };
    let mut ready = 0;
    let mut nodes = BTreeSet::new();
    for slice in snapshot.endpoint_slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(service.namespace.as_str())
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&service.name)
    }) {
        for endpoint in &slice.endpoints {
            let is_ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if is_ready {
                ready += 1;
                nodes.extend(endpoint.node_name.clone());
            }
        }
    }
    let subject = format!("Service {}/{}", service.namespace, service.name);
    match nodes.len() {
        _ if ready == 0 => Finding::fail(
            CHECK,
            subject,
            "no ready endpoint: every opted-in pod is admitted unmutated now",
            "check the webhook Deployment's pods (kubectl -n jellyfin-ha get pods) and their logs",
        ),
        0 | 1 => Finding::warn(
            CHECK,
            subject,
            format!(
                "{ready} ready endpoint(s), all on {}: when that node dies, pods created \
                 meanwhile come out unmutated",
                nodes.iter().next().map_or("one node", String::as_str)
            ),
            "run two replicas on different nodes (the shipped Deployment spreads them)",
        ),
        n => Finding::ok(
            CHECK,
            subject,
            format!("{ready} ready endpoints on {n} nodes"),
        ),
    }
}

fn is_scheduled(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some()
}

fn carries_marker(pod: &Pod) -> bool {
    pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key(MANAGED))
    })
}

/// Whether kube-scheduler sends managed pods to the extender. The signal is what the
/// scheduler did with pods that carry the marker: an extended resource no node advertises
/// leaves a pod Pending (`Insufficient jellyfin-ha.io/managed`) unless the scheduler's
/// configuration names it, which the shipped extender configuration does.
fn extender(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "jellyfin-ha/extender";
    let install = &snapshot.install_namespace;
    match &snapshot.policy.scheduling {
        Scheduling::Default => Finding::warn(
            CHECK,
            "",
            format!(
                "no ConfigMap {CONFIGMAP} in {install}: managed pods are placed without the \
                 extender, which would skip nodes that stopped heartbeating or cannot attach \
                 the volume"
            ),
            "turn scheduling through the extender on (kubectl apply -k \
             manifests/scheduling/extender, or manifests/scheduling/second-scheduler)",
        ),
        Scheduling::Unusable(why) => Finding::fail(
            CHECK,
            "",
            format!("{why}: managed pods are placed without the extender"),
            format!("fix or delete the ConfigMap {CONFIGMAP} in {install}"),
        ),
        Scheduling::Extender => {
            let marked: Vec<&Pod> = snapshot.pods.iter().filter(|p| carries_marker(p)).collect();
            let refused = snapshot.events.iter().any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&format!("Insufficient {MANAGED}")))
            });
            let scheduled = marked.iter().filter(|p| is_scheduled(p)).count();
            if refused && scheduled < marked.len() {
                Finding::fail(
                    CHECK,
                    "",
                    format!(
                        "kube-scheduler refuses pods carrying the marker (Insufficient \
                         {MANAGED}): it is not configured with the extender"
                    ),
                    "merge manifests/scheduling/extender/kube-scheduler-config.yaml into \
                     kube-scheduler's configuration",
                )
            } else if scheduled > 0 {
                Finding::ok(
                    CHECK,
                    "",
                    format!(
                        "{scheduled} pod(s) carrying the {MANAGED} marker were scheduled: \
                         kube-scheduler hands the marker to the extender"
                    ),
                )
            } else {
                Finding::warn(
                    CHECK,
                    "",
                    format!(
                        "no scheduled pod carries the {MANAGED} marker yet, so the scheduler's configuration is unproven"
                    ),
                    "start an opted-in pod and run doctor again",
                )
            }
        }
        Scheduling::Scheduler(name) => {
            let sent: Vec<&Pod> = snapshot
                .pods
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(name.as_str())
                })
                .collect();
            let scheduled = sent.iter().filter(|p| is_scheduled(p)).count();
            if scheduled > 0 {
                Finding::ok(
                    CHECK,
                    "",
                    format!("{scheduled} pod(s) were placed by the scheduler {name}"),
                )
            } else {
                Finding::warn(
                    CHECK,
                    "",
                    format!(
                        "no pod placed by the scheduler {name} yet ({} waiting)",
                        sent.len()
                    ),
                    format!(
                        "check that the second scheduler {name} runs (manifests/scheduling/second-scheduler)"
                    ),
                )
            }
        }
    }
}

fn fencer_leader(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "jellyfin-ha/fencer";
    let install = &snapshot.install_namespace;
    let Some(lease) = &snapshot.fencer_lease else {
        return Finding::fail(
            CHECK,
            "",
            format!(
                "no fencer leads (no leader Lease in {install}): a dead node's ReadWriteOnce \
                 volume stays attached to it and Jellyfin does not come back"
            ),
            "install the fencer (kubectl apply -k manifests/fencer)",
        );
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .map_or(SignedDuration::ZERO, |d| {
            SignedDuration::from_secs(i64::from(d))
        });
    match renewed {
        Some(at) if !holder.is_empty() && snapshot.now.duration_since(at) <= duration => {
            Finding::ok(
                CHECK,
                holder.clone(),
                format!(
                    "{holder} leads, renewed {:.0} s ago",
                    snapshot.now.duration_since(at).as_secs_f64()
                ),
            )
        }
        _ => Finding::fail(
            CHECK,
            holder,
            "the fencer's leader Lease has run out: no fencer replica is running",
            format!("check the fencer's pods and logs in {install}"),
        ),
    }
}

fn node_facts(snapshot: &Snapshot) -> Vec<NodeFacts> {
    snapshot
        .nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref();
            let lease = snapshot
                .leases
                .iter()
                .find(|l| l.metadata.name.as_deref() == name);
            NodeFacts::from_node(n, lease)
        })
        .collect()
}

/// Every node the fencer may fence has an agent.
fn fence_mapping(snapshot: &Snapshot) -> Vec<Finding> {
    const CHECK: &str = "jellyfin-ha/fence-mapping";
    let facts = node_facts(snapshot);
    let eligible: Vec<&NodeFacts> = facts
        .iter()
        .filter(|n| eligibility(n, &snapshot.policy.fencer).is_ok())
        .collect();
    let unmapped: Vec<&str> = eligible
        .iter()
        .filter(|n| {
            snapshot
                .policy
                .fencer
                .agent_for(&n.name, &n.labels)
                .is_none()
        })
        .map(|n| n.name.as_str())
        .collect();
    if !unmapped.is_empty() {
        return vec![Finding::fail(
            CHECK,
            unmapped.join(", "),
            "the fencer may fence these nodes but no fence agent selects them: a silent one \
             is never fenced",
            "add them to an agent in fencer.agents (nodes or nodeSelector), or leave them out \
             with fencer.nodeSelector",
        )];
    }
    if eligible.is_empty() {
        return vec![Finding::warn(
            CHECK,
            "",
            format!(
                "none of the {} node(s) checked may be fenced (fencer.nodeSelector, \
                 fenceControlPlane), so none fails over faster than the node controller allows",
                facts.len()
            ),
            "select Jellyfin's nodes with fencer.nodeSelector",
        )];
    }
    vec![Finding::ok(
        CHECK,
        "",
        format!(
            "{} eligible node(s), each mapped to a fence agent",
            eligible.len()
        ),
    )]
}

/// Each eligible node's fence agent, asked for status: it answers, and a node that is Ready
/// reads On (Off means the agent is wired to another machine).
fn fence_agents(snapshot: &Snapshot) -> Vec<Finding> {
    const CHECK: &str = "jellyfin-ha/fence-agent";
    let mut findings = Vec::new();
    let mut answered = 0;
    for facts in node_facts(snapshot) {
        let Some((_, agent)) = snapshot.policy.fencer.agent_for(&facts.name, &facts.labels) else {
            continue;
        };
        if eligibility(&facts, &snapshot.policy.fencer).is_err() {
            continue;
        }
        if agent.none.is_some() {
            findings.push(Finding::warn(
                CHECK,
                facts.name.clone(),
                format!(
                    "agent {} is none: the node is fenced without proof that it is off",
                    agent.name
                ),
                "give the node a fence device (redfish, proxmox or a fence agent program)",
            ));
            continue;
        }
        let Some(status) = snapshot.fence_status.get(&facts.name) else {
            continue;
        };
        // Heartbeating as the fencer reads it: a node that just lost power still says Ready
        // for the node controller's grace period.
        let heartbeating = facts.overdue(snapshot.now).is_some()
            && !facts.is_silent(&snapshot.policy.fencer, snapshot.now);
        match &status.outcome {
            Err(error) => findings.push(Finding::fail(
                CHECK,
                facts.name.clone(),
                format!(
                    "agent {} does not answer a status query: {error}",
                    status.agent
                ),
                "check the agent's address, the network path from the fencer to it, and its \
                 credentials Secret",
            )),
            Ok(state) if heartbeating && state.is_off() => findings.push(Finding::fail(
                CHECK,
                facts.name.clone(),
                format!(
                    "agent {} says {state:?} while the node's kubelet still heartbeats: it is \
                     wired to another machine",
                    status.agent
                ),
                "correct the agent's address or system for this node",
            )),
            Ok(_) => answered += 1,
        }
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            CHECK,
            "",
            if answered == 0 {
                "no fence agent to ask".to_string()
            } else {
                format!("{answered} fence agent(s) answered a status query as expected")
            },
        ));
    }
    findings
}
