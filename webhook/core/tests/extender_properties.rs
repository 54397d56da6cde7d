//! Properties of the extender's decisions over generated snapshots: every candidate is
//! answered exactly once, scores stay on 0-10, `explain` agrees with the extender, and the
//! snapshot's counters do not depend on the order watch events arrive in.

// A test crate: a panic is a failed test, helpers included.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};

use jellyfin_ha_core::extender::policy::ScoreWeights;
use jellyfin_ha_core::extender::snapshot::{
    AccessModes, AgentInfo, ClaimInfo, ConditionStatus, CsiNodeInfo, LeaseInfo, ManagedPodInfo,
    NodeInfo, PvInfo, ReadyCondition, VolumeAttachmentInfo,
};
use jellyfin_ha_core::extender::wire::ExtenderFilterResult;
use jellyfin_ha_core::extender::{ExtenderPolicy, Snapshot, explain, filter, prioritize};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

const POD: &str = include_str!("fixtures/extender/pod-jellyfin.json");
const NOW: i64 = 1_795_000_000;
const DRIVER: &str = "rbd.csi.ceph.com";
/// The claims the fixture pod uses.
const CLAIMS: [&str; 2] = ["jellyfin-config", "jellyfin-7c9d8f6b5-x2k4q-transcode"];
const MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadWriteOncePod",
    "ReadWriteMany",
    "ReadOnlyMany",
];

fn at(seconds_ago: i64) -> Timestamp {
    Timestamp::from_second(NOW - seconds_ago).unwrap()
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

#[derive(Debug, Clone)]
struct GeneratedNode {
    label: Option<&'static str>,
    out_of_service: bool,
    fencing: bool,
    ready: Option<(ConditionStatus, Option<i64>)>,
    gpu: Option<i64>,
    /// The agent's report: load, age in seconds, whether a card is usable.
    agent: Option<(u8, i64, bool)>,
    lease: Option<Option<i64>>,
    attach_limit: Option<u32>,
}

fn generated_node() -> impl Strategy<Value = GeneratedNode> {
    let status = prop::sample::select(vec![
        ConditionStatus::True,
        ConditionStatus::False,
        ConditionStatus::Unknown,
    ]);
    (
        prop::option::of(prop::sample::select(vec!["true", "false"])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of((status, prop::option::of(-100_i64..2000))),
        prop::option::of(-2_i64..20),
        prop::option::of((0_u8..=100, -200_i64..200, any::<bool>())),
        prop::option::of(prop::option::of(-30_i64..100)),
        prop::option::of(0_u32..4),
    )
        .prop_map(
            |(label, out_of_service, fencing, ready, gpu, agent, lease, attach_limit)| {
                GeneratedNode {
                    label,
                    out_of_service,
                    fencing,
                    ready,
                    gpu,
                    agent,
                    lease,
                    attach_limit,
                }
            },
        )
}

/// Every object of a generated cluster, as the watches would deliver them.
#[derive(Debug, Clone, Default)]
struct Objects {
    nodes: Vec<NodeInfo>,
    leases: Vec<LeaseInfo>,
    csi_nodes: Vec<CsiNodeInfo>,
    attachments: Vec<VolumeAttachmentInfo>,
    claims: Vec<ClaimInfo>,
    volumes: Vec<PvInfo>,
    pods: Vec<ManagedPodInfo>,
    agents: Vec<AgentInfo>,
}

fn modes(pick: &[usize]) -> AccessModes {
    let list: Vec<String> = pick
        .iter()
        .filter_map(|i| MODES.get(*i))
        .map(|m| m.to_string())
        .collect();
    AccessModes::from_list(&list)
}

fn objects() -> impl Strategy<Value = Objects> {
    let nodes = prop::collection::vec(generated_node(), 0..10);
    // (pv index, node index, attached, deleting)
    let attachments = prop::collection::vec(
        (0_usize..4, 0_usize..12, any::<bool>(), any::<bool>()),
        0..12,
    );
    // Per pod claim: bound to which pv, claim modes, pv known and its modes.
    let claims = prop::collection::vec(
        prop::option::of((
            0_usize..4,
            prop::collection::vec(0_usize..4, 0..3),
            prop::option::of(prop::collection::vec(0_usize..4, 0..3)),
        )),
        2,
    );
    // (node index, terminating, finished, uses config claim)
    let pods = prop::collection::vec(
        (0_usize..12, any::<bool>(), any::<bool>(), any::<bool>()),
        0..8,
    );
    (nodes, attachments, claims, pods).prop_map(|(nodes, attachments, claims, pods)| {
        let mut objects = Objects::default();
        for (i, node) in nodes.iter().enumerate() {
            let name = node_name(i);
            objects.nodes.push(NodeInfo {
                name: name.clone(),
                quick_sync: node.label == Some("true"),
                out_of_service: node.out_of_service,
                fencing: node.fencing,
                ready: node.ready.map(|(status, changed)| ReadyCondition {
                    status,
                    last_transition: changed.map(at),
                }),
                gpu_allocatable: node.gpu,
                boot_id: String::new(),
            });
            if let Some((percent, age, usable)) = node.agent {
                objects.agents.push(AgentInfo {
                    node_name: name.clone(),
                    observed_at: at(age),
                    busy_percent: usable.then_some(percent),
                    usable,
                });
            }
            if let Some(renewed) = node.lease {
                objects.leases.push(LeaseInfo {
                    node_name: name.clone(),
                    renew_time: renewed.map(at),
                    lease_duration_seconds: Some(40),
                });
            }
            if let Some(limit) = node.attach_limit {
                objects.csi_nodes.push(CsiNodeInfo {
                    node_name: name,
                    attach_limits: BTreeMap::from([(DRIVER.to_string(), limit)]),
                });
            }
        }
        for (i, (pv, node, attached, deleting)) in attachments.into_iter().enumerate() {
            objects.attachments.push(VolumeAttachmentInfo {
                name: format!("va-{i}"),
                pv_name: Some(format!("pv-{pv}")),
                node_name: node_name(node),
                attacher: DRIVER.into(),
                attached,
                deleting,
            });
        }
        for (claim, binding) in CLAIMS.iter().zip(claims) {
            let Some((pv, claim_modes, pv_modes)) = binding else {
                continue;
            };
            objects.claims.push(ClaimInfo {
                namespace: "media".into(),
                name: claim.to_string(),
                volume_name: Some(format!("pv-{pv}")),
                access_modes: modes(&claim_modes),
            });
            // One object per name, as in a real cluster.
            let pv_name = format!("pv-{pv}");
            if let Some(pv_modes) = pv_modes
                && !objects.volumes.iter().any(|v| v.name == pv_name)
            {
                objects.volumes.push(PvInfo {
                    name: pv_name,
                    csi_driver: Some(DRIVER.into()),
                    access_modes: modes(&pv_modes),
                });
            }
        }
        for (i, (node, terminating, finished, uses_config)) in pods.into_iter().enumerate() {
            objects.pods.push(ManagedPodInfo {
                namespace: "media".into(),
                name: format!("other-{i}"),
                node_name: Some(node_name(node)),
                terminating,
                finished,
                claims: if uses_config {
                    vec![CLAIMS[0].to_string()]
                } else {
                    vec![]
                },
                mutated: true,
            });
        }
        objects
    })
}

fn snapshot_of(objects: &Objects) -> Snapshot {
    let mut snapshot = Snapshot::new();
    objects
        .nodes
        .iter()
        .cloned()
        .for_each(|n| snapshot.upsert_node(n));
    objects
        .leases
        .iter()
        .cloned()
        .for_each(|l| snapshot.upsert_lease(l));
    objects
        .csi_nodes
        .iter()
        .cloned()
        .for_each(|c| snapshot.upsert_csi_node(c));
    objects
        .attachments
        .iter()
        .cloned()
        .for_each(|a| snapshot.upsert_attachment(a));
    objects
        .claims
        .iter()
        .cloned()
        .for_each(|c| snapshot.upsert_claim(c));
    objects
        .volumes
        .iter()
        .cloned()
        .for_each(|v| snapshot.upsert_volume(v));
    objects
        .pods
        .iter()
        .cloned()
        .for_each(|p| snapshot.upsert_managed_pod(p));
    objects
        .agents
        .iter()
        .cloned()
        .for_each(|a| snapshot.upsert_agent_report(a));
    snapshot
}

fn policy() -> impl Strategy<Value = ExtenderPolicy> {
    (
        1_u32..60,
        1_u32..120,
        0_u32..1200,
        0_u32..=100,
        0_u32..=100,
        0_u32..=100,
        0_u32..=100,
    )
        .prop_map(
            |(stale, fresh, window, share, gpu, locality, flapping)| ExtenderPolicy {
                lease_stale_seconds: stale,
                gpu_busy_fresh_seconds: fresh,
                flap_window_seconds: window,
                measured_busy_share_percent: share,
                weights: ScoreWeights {
                    gpu_load: gpu,
                    volume_locality: locality,
                    flapping,
                },
                ..ExtenderPolicy::default()
            },
        )
}

/// Distinct candidate names: known nodes, nodes only a lease or attachment mentions, and
/// names nothing mentions.
fn candidates() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(0_usize..14, 0..14).prop_map(|picks| {
        let mut seen = BTreeSet::new();
        picks
            .into_iter()
            .map(node_name)
            .filter(|name| seen.insert(name.clone()))
            .collect()
    })
}

fn pod() -> Pod {
    serde_json::from_str(POD).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn filter_answers_every_candidate_exactly_once(
        objects in objects(), policy in policy(), candidates in candidates()
    ) {
        let snapshot = snapshot_of(&objects);
        let now = at(0);
        let decision = filter(&pod(), candidates.clone(), &snapshot, &policy, now);
        let passed: BTreeSet<&str> = decision.passed.iter().map(String::as_str).collect();
        let failed: BTreeSet<&str> = decision.failed().map(|(node, _)| node).collect();
        prop_assert!(passed.is_disjoint(&failed));
        prop_assert_eq!(passed.len(), decision.passed.len());
        prop_assert_eq!(failed.len(), decision.failed().count());
        let all: BTreeSet<&str> = passed.union(&failed).copied().collect();
        prop_assert_eq!(all, candidates.iter().map(String::as_str).collect::<BTreeSet<_>>());
        // Passed nodes keep the scheduler's order.
        let in_order: Vec<&String> =
            candidates.iter().filter(|c| passed.contains(c.as_str())).collect();
        prop_assert_eq!(in_order, decision.passed.iter().collect::<Vec<_>>());
        prop_assert!(decision.failed().all(|(_, r)| !r.reason.is_empty()));
        // Each group is one distinct combination of reasons.
        let reasons: BTreeSet<&str> =
            decision.rejected.iter().map(|g| g.rejection.reason.as_str()).collect();
        prop_assert_eq!(reasons.len(), decision.rejected.len());

        let written =
            serde_json::to_value(ExtenderFilterResult::from_decision(decision.clone(), None))
                .unwrap();
        let wire_failed = written["FailedNodes"].as_object().unwrap().len()
            + written["FailedAndUnresolvableNodes"].as_object().unwrap().len();
        prop_assert_eq!(wire_failed, failed.len());
        for (node, rejection) in decision.failed() {
            let map = if rejection.unresolvable {
                "FailedAndUnresolvableNodes"
            } else {
                "FailedNodes"
            };
            prop_assert_eq!(written[map][node].as_str(), Some(rejection.reason.as_str()));
        }
    }

    #[test]
    fn scores_stay_within_zero_to_ten(
        objects in objects(), policy in policy(), candidates in candidates()
    ) {
        let snapshot = snapshot_of(&objects);
        let scores = prioritize(&pod(), candidates.clone(), &snapshot, &policy, at(0));
        let names: Vec<&String> = scores.iter().map(|(n, _)| n).collect();
        prop_assert_eq!(names, candidates.iter().collect::<Vec<_>>());
        for (_, score) in &scores {
            prop_assert!((0..=10).contains(score), "{}", score);
        }
        // Same input, same output.
        let again = prioritize(&pod(), candidates, &snapshot, &policy, at(0));
        prop_assert_eq!(scores, again);
    }

    #[test]
    fn explain_agrees_with_the_extender(
        objects in objects(), policy in policy(), candidates in candidates()
    ) {
        let snapshot = snapshot_of(&objects);
        let verdicts = explain(&pod(), &candidates, &snapshot, &policy, at(0));
        let decision = filter(&pod(), candidates.clone(), &snapshot, &policy, at(0));
        let scores = prioritize(&pod(), candidates, &snapshot, &policy, at(0));
        for (verdict, (node, score)) in verdicts.iter().zip(&scores) {
            prop_assert_eq!(&verdict.node, node);
            prop_assert_eq!(verdict.total, *score);
            prop_assert_eq!(verdict.passes, decision.passed.contains(node));
            for part in [
                Some(verdict.score_parts.gpu_load),
                verdict.score_parts.volume_locality,
                Some(verdict.score_parts.flapping),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(part <= 100);
            }
        }
    }

    /// `jellyfin-ha explain` offers every node at once, the scheduler only those its own
    /// filters passed. Where that changes the extender's answer (a volume pins the pod to a
    /// holder only when the holder is offered), explain must say so, never contradict it.
    #[test]
    fn explain_over_every_node_never_contradicts_a_call_with_fewer_candidates(
        objects in objects(),
        policy in policy(),
        every in candidates(),
        offered_mask in prop::collection::vec(any::<bool>(), 14),
    ) {
        let snapshot = snapshot_of(&objects);
        let verdicts = explain(&pod(), &every, &snapshot, &policy, at(0));
        let offered: Vec<String> = every
            .iter()
            .zip(&offered_mask)
            .filter(|(_, offered)| **offered)
            .map(|(node, _)| node.clone())
            .collect();
        let decision = filter(&pod(), offered.clone(), &snapshot, &policy, at(0));
        for node in &offered {
            let verdict = verdicts.iter().find(|v| &v.node == node).unwrap();
            let expected = if verdict.depends_on_candidates.is_empty() {
                verdict.passes
            } else {
                !verdict.depends_on_candidates.iter().any(|holder| offered.contains(holder))
            };
            prop_assert_eq!(decision.passed.contains(node), expected, "{}: {:?}", node, verdict);
        }
    }

    #[test]
    fn the_snapshot_does_not_depend_on_event_order(
        objects in objects(), noise in objects()
    ) {
        let forward = snapshot_of(&objects);

        // Reverse order, with unrelated objects added and then deleted in between, and every
        // attachment and pod first seen in a different state.
        let mut shuffled = Snapshot::new();
        for pod in objects.pods.iter().rev() {
            shuffled.upsert_managed_pod(ManagedPodInfo {
                terminating: !pod.terminating,
                node_name: Some("elsewhere".into()),
                ..pod.clone()
            });
        }
        for attachment in objects.attachments.iter().rev() {
            shuffled.upsert_attachment(VolumeAttachmentInfo {
                node_name: "elsewhere".into(),
                attacher: "other.csi".into(),
                ..attachment.clone()
            });
        }
        for attachment in &noise.attachments {
            shuffled.upsert_attachment(VolumeAttachmentInfo {
                name: format!("noise-{}", attachment.name),
                ..attachment.clone()
            });
        }
        for pod in &noise.pods {
            shuffled.upsert_managed_pod(ManagedPodInfo {
                name: format!("noise-{}", pod.name),
                ..pod.clone()
            });
        }
        noise.leases.iter().cloned().for_each(|l| shuffled.upsert_lease(l));
        for pod in objects.pods.iter().rev() {
            shuffled.upsert_managed_pod(pod.clone());
        }
        for attachment in objects.attachments.iter().rev() {
            shuffled.upsert_attachment(attachment.clone());
        }
        for attachment in &noise.attachments {
            shuffled.remove_attachment(&format!("noise-{}", attachment.name));
        }
        for pod in &noise.pods {
            shuffled.remove_managed_pod(&pod.namespace, &format!("noise-{}", pod.name));
        }
        shuffled.replace_leases(objects.leases.iter().cloned());
        noise.agents.iter().cloned().for_each(|a| shuffled.upsert_agent_report(a));
        shuffled.replace_agent_reports(objects.agents.iter().rev().cloned());
        objects.volumes.iter().rev().cloned().for_each(|v| shuffled.upsert_volume(v));
        objects.claims.iter().rev().cloned().for_each(|c| shuffled.upsert_claim(c));
        objects.csi_nodes.iter().rev().cloned().for_each(|c| shuffled.upsert_csi_node(c));
        objects.nodes.iter().rev().cloned().for_each(|n| shuffled.upsert_node(n));

        prop_assert_eq!(&shuffled, &forward);
    }
}
