//! Properties over generated pods: idempotence, opt-in, and the toleration invariants.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jellyfin_ha_core::config::Policy;
use jellyfin_ha_core::mutate_pod;
use jellyfin_ha_core::scheduling::Scheduling;
use jellyfin_ha_core::taints::{self, NOT_READY, UNREACHABLE};
use k8s_openapi::api::core::v1::Toleration;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{optional, toleration};

mod support;

fn expression() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}),
        json!({"key": "intel.feature.node.kubernetes.io/gpu", "operator": "In", "values": ["true"]}),
        json!({"key": "intel.feature.node.kubernetes.io/gpu", "operator": "Exists"}),
        json!({"key": "zone", "operator": "NotIn", "values": ["garage"]}),
    ])
}

fn affinity() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop::collection::vec(prop::collection::vec(expression(), 0..3), 0..3).prop_map(|terms| {
        let terms: Vec<Value> = terms.into_iter().map(|e| json!({"matchExpressions": e})).collect();
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}})
    }))
}

fn container() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["jellyfin", "sidecar", "exporter"][..]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, gpu, privileged)| {
            let mut c = json!({"name": name, "image": "example"});
            if gpu {
                c["resources"] = json!({"limits": {"gpu.intel.com/i915": "1"}});
            }
            if privileged {
                c["securityContext"] = json!({"privileged": true});
            }
            c
        })
}

prop_compose! {
    fn pod()(
        inject in optional(&["true", "false", "TRUE"]),
        gpu in optional(&["device-plugin", "hostpath", "none"]),
        tolerations in prop::option::of(prop::collection::vec(toleration(), 0..6)),
        affinity in affinity(),
        containers in prop::collection::vec(container(), 1..3),
        groups in prop::option::of(prop::collection::vec(prop::sample::select(&[0i64, 44, 109, 1000, 65534][..]), 0..4)),
        grace in prop::option::of(0i64..1200),
        pre_stop_sleep in prop::option::of(0i64..120),
        scheduler in optional(&["default-scheduler", "jellyfin-ha", "my-scheduler"]),
    ) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(v) = inject { annotations.insert("jellyfin-ha.io/inject".into(), json!(v)); }
        if let Some(v) = gpu { annotations.insert("jellyfin-ha.io/gpu".into(), json!(v)); }
        let mut spec = json!({"containers": containers});
        if let Some(t) = tolerations { spec["tolerations"] = json!(t) }
        if let Some(a) = affinity { spec["affinity"] = a }
        if let Some(g) = groups { spec["securityContext"] = json!({"supplementalGroups": g}) }
        if let Some(g) = grace { spec["terminationGracePeriodSeconds"] = json!(g) }
        if let Some(s) = scheduler { spec["schedulerName"] = json!(s) }
        if let Some(s) = pre_stop_sleep {
            for c in spec["containers"].as_array_mut().into_iter().flatten() {
                c["lifecycle"] = json!({"preStop": {"sleep": {"seconds": s}}});
            }
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": annotations}, "spec": spec})
    }
}

fn typed_tolerations(pod: &Value) -> Vec<Toleration> {
    serde_json::from_value(pod["spec"]["tolerations"].clone()).unwrap_or_default()
}

fn count_out_of_service(pod: &Value) -> usize {
    typed_tolerations(pod)
        .iter()
        .filter(|t| taints::tolerates(t, &taints::out_of_service()))
        .count()
}

/// Every way the install can say which scheduler places pods.
fn any_scheduling() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Scheduling::Default),
        Just(Scheduling::Extender),
        Just(Scheduling::Scheduler("jellyfin-ha".into())),
        Just(Scheduling::Unusable("mode is None".into())),
    ]
    .prop_map(|scheduling| Policy {
        scheduling,
        ..Policy::default()
    })
}

proptest! {
    #[test]
    fn mutation_is_idempotent(input in pod(), policy in any_scheduling()) {
        if let Ok(once) = mutate_pod(&input, &policy) {
            let twice = mutate_pod(&once.object, &policy).unwrap();
            prop_assert_eq!(&twice.object, &once.object);
            prop_assert!(twice.changes.is_empty());
        }
    }

    #[test]
    fn carried_patch_turns_the_input_into_the_output(input in pod(), policy in any_scheduling()) {
        if let Ok(mutation) = mutate_pod(&input, &policy) {
            let mut patched = input.clone();
            json_patch::patch(&mut patched, &mutation.patch).unwrap();
            prop_assert_eq!(patched, mutation.object);
        }
    }

    #[test]
    fn not_opted_in_means_unchanged(input in pod()) {
        let opted_in = input["metadata"]["annotations"]["jellyfin-ha.io/inject"] == "true";
        let mutation = mutate_pod(&input, &Policy::default()).unwrap();
        if !opted_in {
            prop_assert_eq!(mutation.object, input);
        }
    }

    #[test]
    fn exactly_one_short_noexecute_toleration_per_failover_key(mut input in pod()) {
        input["metadata"]["annotations"]["jellyfin-ha.io/inject"] = json!("true");
        let mutated = mutate_pod(&input, &Policy::default()).unwrap().object;
        let tolerations = typed_tolerations(&mutated);
        for key in [NOT_READY, UNREACHABLE] {
            let noexecute: Vec<&Toleration> = tolerations.iter()
                .filter(|t| t.key.as_deref() == Some(key))
                .filter(|t| matches!(t.effect.as_deref(), Some("NoExecute") | Some("") | None))
                .collect();
            prop_assert_eq!(noexecute.len(), 1, "{}: {:?}", key, tolerations);
            prop_assert_eq!(noexecute[0].toleration_seconds, Some(15));
        }
        prop_assert_eq!(count_out_of_service(&mutated), count_out_of_service(&input));
    }

    #[test]
    fn grace_is_never_lowered_and_covers_the_clean_shutdown(mut input in pod()) {
        input["metadata"]["annotations"]["jellyfin-ha.io/inject"] = json!("true");
        let policy = Policy::default();
        let mutated = mutate_pod(&input, &policy).unwrap().object;
        let before = input["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        let after = mutated["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
        let sleep = input["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .unwrap_or(0);
        prop_assert!(after >= before, "lowered {} to {}", before, after);
        prop_assert_eq!(after, before.max(policy.min_termination_grace_seconds + sleep));
    }
}
