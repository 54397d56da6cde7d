//! The webhook's Pod fast path ([`patch_pod`]) against the reference engine ([`mutate_pod`]):
//! on generated and fixture pods both give the same changes and warnings, and their patches
//! make the same object. Where the fast path declines, the reference answers; it may decline
//! only for hostPath GPU access and for pods the reference refuses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jellyfin_ha_core::annotations::{CONTAINER, FAILOVER_SECONDS, GPU, INJECT, MANAGED, MUTATIONS};
use jellyfin_ha_core::config::{GpuMode, Policy};
use jellyfin_ha_core::mutate_pod;
use jellyfin_ha_core::pod_patch::{AddPatch, PodFields, PodPatch};
use jellyfin_ha_core::scheduling::Scheduling;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use support::{DEFAULTED_POD, DEPLOYMENT, LONG_GRACE_DEPLOYMENT, optional, toleration};

mod support;

const REVIEW: &str = include_str!("../../server/tests/fixtures/review-pod-create.json");

/// The fast path on a Pod as JSON; `None` where it declines (or the Pod does not read).
fn patch_pod(pod: &Value, policy: &Policy) -> Option<PodPatch> {
    let fields: PodFields = serde_json::from_value(pod.clone()).ok()?;
    jellyfin_ha_core::pod_patch::patch_pod(fields, policy)
}

/// Asserts the fast path agrees with the reference on `input`; returns whether it answered.
fn agree(input: &Value, policy: &Policy) -> Result<bool, TestCaseError> {
    let reference = mutate_pod(input, policy);
    let Some(fast) = patch_pod(input, policy) else {
        let gpu = input["metadata"]["annotations"][GPU].as_str();
        let hostpath = gpu.map_or(policy.gpu.mode == GpuMode::Hostpath, |g| g == "hostpath");
        prop_assert!(
            hostpath || reference.is_err(),
            "declined a pod the reference mutates: {input}"
        );
        return Ok(false);
    };
    let reference = reference.map_err(|e| TestCaseError::fail(format!("reference: {e}")))?;
    prop_assert_eq!(&fast.changes, &reference.changes);
    prop_assert_eq!(&fast.warnings, &reference.warnings);
    prop_assert_eq!(fast.patch.is_empty(), reference.patch.0.is_empty());
    let patch = as_json_patch(&fast.patch);
    let mut patched = input.clone();
    json_patch::patch(&mut patched, &patch)
        .map_err(|e| TestCaseError::fail(format!("{e}: {patch:?}")))?;
    prop_assert_eq!(patched, reference.object);
    Ok(true)
}

/// The fast path's patch read back as RFC 6902, as kube-apiserver reads it.
fn as_json_patch(patch: &AddPatch) -> json_patch::Patch {
    serde_json::from_slice(&patch.clone().into_json()).unwrap()
}

fn affinity() -> impl Strategy<Value = Option<Value>> {
    let expression = prop::sample::select(vec![
        json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}),
        json!({"key": "intel.feature.node.kubernetes.io/gpu", "operator": "In", "values": ["true"]}),
        json!({"key": "intel.feature.node.kubernetes.io/gpu", "operator": "Exists"}),
    ]);
    let term = prop_oneof![
        prop::collection::vec(expression, 0..3).prop_map(|e| json!({"matchExpressions": e})),
        Just(
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]})
        ),
    ];
    let terms = prop::collection::vec(term, 0..3);
    let pod_affinity = json!({"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}
    ]});
    prop_oneof![
        Just(None),
        Just(Some(json!({"podAffinity": pod_affinity}))),
        Just(Some(
            json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
            ]}})
        )),
        terms.prop_map(|terms| Some(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }}))),
    ]
}

fn resources() -> impl Strategy<Value = Option<Value>> {
    prop::sample::select(vec![
        None,
        Some(json!({})),
        Some(json!({"limits": {"gpu.intel.com/i915": "1"}})),
        Some(json!({"requests": {"gpu.intel.com/i915": "1", "cpu": "500m"}})),
        Some(json!({"limits": {"cpu": "2"}, "requests": {MANAGED: "2"}})),
        Some(json!({"limits": {MANAGED: "1"}, "requests": {MANAGED: "1"}})),
    ])
}

fn container() -> impl Strategy<Value = Value> {
    let command = prop::sample::select(vec![
        None,
        Some(json!(["sh", "-c", "/jellyfin/jellyfin"])),
        Some(json!(["/bin/bash", "-c", "migrate; /jellyfin/jellyfin"])),
        Some(json!(["sh", "-ec", "migrate && exec /jellyfin/jellyfin"])),
    ]);
    let lifecycle = prop::sample::select(vec![
        None,
        Some(json!({"preStop": {"sleep": {"seconds": 30}}})),
        Some(json!({"preStop": {"exec": {"command": ["sleep", "5"]}}})),
        Some(json!({"postStart": {"exec": {"command": ["true"]}}})),
    ]);
    (
        prop::sample::select(&["jellyfin", "sidecar", "exporter"][..]),
        resources(),
        any::<bool>(),
        command,
        lifecycle,
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(name, resources, privileged, command, lifecycle, (liveness, startup))| {
                let mut c =
                    json!({"name": name, "image": "example", "futureField": {"kept": true}});
                if let Some(r) = resources {
                    c["resources"] = r;
                }
                if privileged {
                    c["securityContext"] = json!({"privileged": true});
                }
                if let Some(command) = command {
                    c["command"] = command;
                }
                if let Some(lifecycle) = lifecycle {
                    c["lifecycle"] = lifecycle;
                }
                let probe = json!({"httpGet": {"path": "/health", "port": 8096}});
                if liveness {
                    c["livenessProbe"] = probe.clone();
                }
                if startup {
                    c["startupProbe"] = probe;
                }
                c
            },
        )
}

fn annotations() -> impl Strategy<Value = Value> {
    (
        optional(&["true", "true", "true", "false", "TRUE"]),
        optional(&["device-plugin", "hostpath", "none", "quicksync"]),
        optional(&["jellyfin", "sidecar", "missing", " "]),
        optional(&["0", "5", "300", "301", "5s"]),
        optional(&[
            "failover-tolerations=300s; other=kept",
            "igpu=gpu.intel.com/i915",
        ]),
    )
        .prop_map(|(inject, gpu, container, seconds, record)| {
            let mut a = Map::new();
            a.insert("example.com/other".into(), json!("x"));
            for (key, value) in [
                (INJECT, inject),
                (GPU, gpu),
                (CONTAINER, container),
                (FAILOVER_SECONDS, seconds),
                (MUTATIONS, record),
            ] {
                if let Some(value) = value {
                    a.insert(key.into(), json!(value));
                }
            }
            Value::Object(a)
        })
}

prop_compose! {
    fn pod()(
        annotations in annotations(),
        labels in prop::sample::select(vec![
            None, Some(json!({})), Some(json!({"app": "jellyfin"})),
            Some(json!({MANAGED: "true"})), Some(json!({MANAGED: "false"})),
        ]),
        tolerations in prop::option::of(prop::collection::vec(toleration(), 0..5)),
        affinity in affinity(),
        containers in prop::collection::vec(container(), 1..3),
        security_context in prop::sample::select(vec![
            None, Some(json!({})), Some(json!({"runAsUser": 1000})),
            Some(json!({"supplementalGroups": [44, 1000]})),
            Some(json!({"supplementalGroups": jellyfin_ha_core::config::DEFAULT_RENDER_GROUPS})),
        ]),
        grace in prop::option::of(prop::sample::select(&[0i64, 30, 600, 630, 1200][..])),
        scheduler in optional(&["default-scheduler", "jellyfin-ha", "my-scheduler"]),
        volumes in any::<bool>(),
    ) -> Value {
        let mut metadata = json!({"name": "p", "namespace": "media", "annotations": annotations});
        if let Some(labels) = labels { metadata["labels"] = labels }
        let mut spec = json!({"containers": containers, "restartPolicy": "Always"});
        let mut set = |name: &str, value: Option<Value>| {
            if let Some(value) = value { spec[name] = value }
        };
        set("tolerations", tolerations.map(Value::from));
        set("affinity", affinity);
        set("securityContext", security_context);
        set("terminationGracePeriodSeconds", grace.map(Value::from));
        set("schedulerName", scheduler.map(Value::from));
        set("volumes", volumes.then(|| json!([
            {"name": "dri", "hostPath": {"path": "/dev/dri", "type": "Directory"}}
        ])));
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {}})
    }
}

fn any_policy() -> impl Strategy<Value = Policy> {
    let scheduling = prop_oneof![
        Just(Scheduling::Default),
        Just(Scheduling::Extender),
        Just(Scheduling::Scheduler("jellyfin-ha".into())),
        Just(Scheduling::Unusable(
            "ConfigMap jellyfin-ha-scheduling: mode is None".into()
        )),
    ];
    let mode = prop::sample::select(&[GpuMode::DevicePlugin, GpuMode::Hostpath, GpuMode::None][..]);
    let render_groups = prop::sample::select(vec![vec![], vec![44], vec![44, 109, 993]]);
    (scheduling, mode, render_groups).prop_map(|(scheduling, mode, render_groups)| {
        let mut policy = Policy {
            scheduling,
            render_groups,
            ..Policy::default()
        };
        policy.gpu.mode = mode;
        policy
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn fast_path_agrees_with_the_reference(input in pod(), policy in any_policy()) {
        agree(&input, &policy)?;
    }

    #[test]
    fn fast_path_agrees_on_already_mutated_pods(input in pod(), policy in any_policy()) {
        if let Ok(once) = mutate_pod(&input, &policy) {
            agree(&once.object, &policy)?;
            if let Some(again) = patch_pod(&once.object, &policy) {
                prop_assert!(again.patch.is_empty(), "{:?}", again.patch);
            }
        }
    }
}

/// A workload's pod template as the Pod its controller would create.
fn pod_of(workload_yaml: &str) -> Value {
    let workload: Value = serde_yaml::from_str(workload_yaml).unwrap();
    let template = &workload["spec"]["template"];
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]})
}

#[test]
fn fast_path_answers_for_the_fixture_pods_and_agrees() {
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let fixtures = [
        serde_json::from_str(DEFAULTED_POD).unwrap(),
        review["request"]["object"].clone(),
        pod_of(DEPLOYMENT),
        pod_of(LONG_GRACE_DEPLOYMENT),
    ];
    let policies = [
        Policy::default(),
        Policy {
            scheduling: Scheduling::Extender,
            ..Policy::default()
        },
        Policy {
            scheduling: Scheduling::Scheduler("jellyfin-ha".into()),
            ..Policy::default()
        },
    ];
    for pod in &fixtures {
        for policy in &policies {
            let answered = agree(pod, policy).unwrap();
            assert!(answered, "declined {pod}");
            let mutated = mutate_pod(pod, policy).unwrap();
            assert!(
                !mutated.changes.is_empty(),
                "fixture {pod} was not opted in"
            );
        }
    }
}

#[test]
fn a_pod_that_did_not_opt_in_gets_an_empty_patch() {
    let pod = json!({"metadata": {"annotations": {INJECT: "yes"}}, "spec": {"containers": []}});
    let fast = patch_pod(&pod, &Policy::default()).unwrap();
    assert!(fast.patch.is_empty() && fast.changes.is_empty() && fast.warnings.is_empty());
}
