//! The traps from DESIGN.md, one case each, on objects shaped like what kube-apiserver sends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jellyfin_ha_core::annotations::{CONTAINER, FAILOVER_SECONDS, GPU, INJECT, MANAGED, MUTATIONS};
use jellyfin_ha_core::config::{GpuMode, Policy};
use jellyfin_ha_core::scheduling::Scheduling;
use jellyfin_ha_core::{Change, MutationError, mutate_manifest, mutate_object, mutate_pod};
use rstest::rstest;
use serde_json::{Value, json};
use support::{DEFAULTED_POD, DEPLOYMENT, LONG_GRACE_DEPLOYMENT};

mod support;

fn pod() -> Value {
    serde_json::from_str(DEFAULTED_POD).unwrap()
}

fn deployment() -> Value {
    serde_yaml::from_str(DEPLOYMENT).unwrap()
}

fn with_annotation(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["annotations"][key] = json!(value);
    object
}

fn tolerations(pod: &Value) -> Vec<Value> {
    pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn with_key<'a>(tolerations: &'a [Value], key: &str) -> Vec<&'a Value> {
    tolerations.iter().filter(|t| t["key"] == key).collect()
}

#[test]
fn default_tolerations_are_replaced_not_appended() {
    let mutated = mutate_pod(&pod(), &Policy::default()).unwrap().object;
    let tolerations = tolerations(&mutated);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let found = with_key(&tolerations, key);
        assert_eq!(found.len(), 1, "{key}: {tolerations:?}");
        assert_eq!(found[0]["tolerationSeconds"], 15);
        assert_eq!(found[0]["effect"], "NoExecute");
    }
    assert_eq!(tolerations.len(), 2);
}

#[test]
fn failover_seconds_annotation_overrides_config() {
    let input = with_annotation(pod(), FAILOVER_SECONDS, "5");
    let mutated = mutate_pod(&input, &Policy::default()).unwrap().object;
    assert!(
        tolerations(&mutated)
            .iter()
            .all(|t| t["tolerationSeconds"] == 5)
    );
}

#[test]
fn effectless_failover_toleration_keeps_only_its_noschedule_half() {
    let mut input = pod();
    input["spec"]["tolerations"] =
        json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]);
    let mutated = mutate_pod(&input, &Policy::default()).unwrap().object;
    let tolerations = tolerations(&mutated);
    let not_ready = with_key(&tolerations, "node.kubernetes.io/not-ready");
    let effects: Vec<&Value> = not_ready.iter().map(|t| &t["effect"]).collect();
    assert_eq!(effects, [&json!("NoSchedule"), &json!("NoExecute")]);
}

#[rstest]
#[case::keyless_exists(json!({"operator": "Exists"}))]
#[case::explicit(json!({"key": "node.kubernetes.io/out-of-service", "operator": "Exists", "effect": "NoExecute"}))]
fn out_of_service_tolerations_are_kept_with_a_warning(#[case] toleration: Value) {
    let mut input = pod();
    input["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(toleration.clone());
    let mutation = mutate_pod(&input, &Policy::default()).unwrap();
    assert!(tolerations(&mutation.object).contains(&toleration));
    assert!(
        mutation
            .warnings
            .iter()
            .any(|w| w.contains("node.kubernetes.io/out-of-service")),
        "{:?}",
        mutation.warnings
    );
}

#[test]
fn added_tolerations_never_match_out_of_service() {
    let mutation = mutate_pod(&pod(), &Policy::default()).unwrap();
    assert!(mutation.warnings.is_empty(), "{:?}", mutation.warnings);
}

#[test]
fn quicksync_expression_is_added_to_every_term() {
    let mutated = mutate_manifest(&deployment(), &Policy::default())
        .unwrap()
        .object;
    let affinity = &mutated["spec"]["template"]["spec"]["affinity"];
    let terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .unwrap();
    assert_eq!(terms.len(), 2, "no new term may be added: {terms:?}");
    let quicksync = json!({"key": "intel.feature.node.kubernetes.io/gpu", "operator": "In", "values": ["true"]});
    for term in terms {
        assert!(
            term["matchExpressions"]
                .as_array()
                .unwrap()
                .contains(&quicksync),
            "{term}"
        );
    }
    assert_eq!(terms[0]["matchExpressions"][0]["key"], "kubernetes.io/arch");
    assert_eq!(terms[1]["matchFields"][0]["key"], "metadata.name");
    let preferred = &affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        preferred,
        &deployment()["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    );
    assert_eq!(
        mutated["spec"]["template"]["spec"]["nodeSelector"],
        json!({"kubernetes.io/os": "linux"})
    );
}

#[test]
fn pod_without_affinity_gets_one_required_term() {
    let mutated = mutate_pod(&pod(), &Policy::default()).unwrap().object;
    assert_eq!(
        mutated["spec"]["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "intel.feature.node.kubernetes.io/gpu", "operator": "In", "values": ["true"]}]}
        ]}}})
    );
}

#[test]
fn user_expression_on_the_same_key_is_kept_with_a_warning() {
    let mut input = pod();
    input["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "intel.feature.node.kubernetes.io/gpu", "operator": "Exists"}]}
    ]}}});
    let mutation = mutate_pod(&input, &Policy::default()).unwrap();
    assert_eq!(
        mutation.object["spec"]["affinity"],
        input["spec"]["affinity"]
    );
    assert!(
        mutation
            .warnings
            .iter()
            .any(|w| w.contains("already constrains")),
        "{:?}",
        mutation.warnings
    );
}

#[rstest]
#[case::defaulted_pod(pod())]
#[case::deployment(deployment())]
#[case::statefulset(statefulset())]
fn mutation_is_idempotent_and_second_pass_sends_no_patch(#[case] input: Value) {
    let once = mutate_manifest(&input, &Policy::default()).unwrap();
    assert!(!once.patch.0.is_empty());
    let twice = mutate_manifest(&once.object, &Policy::default()).unwrap();
    assert_eq!(twice.object, once.object);
    assert!(twice.changes.is_empty(), "{:?}", twice.changes);
    assert!(twice.patch.0.is_empty());
}

#[rstest]
#[case::no_annotation(None)]
#[case::false_value(Some("false"))]
#[case::capitalised(Some("True"))]
fn pods_that_did_not_opt_in_pass_untouched(#[case] inject: Option<&str>) {
    let mut input = pod();
    match inject {
        Some(value) => input["metadata"]["annotations"][INJECT] = json!(value),
        None => input["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations")
            .map(|_| ())
            .unwrap(),
    }
    let mutation = mutate_pod(&input, &Policy::default()).unwrap();
    assert_eq!(mutation.object, input);
    assert!(mutation.changes.is_empty());
}

#[test]
fn fields_unknown_to_the_schema_survive() {
    let mutated = mutate_pod(&pod(), &Policy::default()).unwrap().object;
    assert_eq!(mutated["spec"]["hostnameOverrideFromTheFuture"], "kept");
    assert_eq!(
        mutated["spec"]["containers"][0]["someFieldFromKubernetes140"],
        json!({"kept": true})
    );
    assert_eq!(mutated["status"], json!({}));
}

#[test]
fn fields_unknown_to_the_schema_survive_in_workloads() {
    let mut input = statefulset();
    input["spec"]["ordinalsFromTheFuture"] = json!({"start": 3});
    input["spec"]["template"]["spec"]["hostnameOverrideFromTheFuture"] = json!("kept");
    input["spec"]["template"]["spec"]["containers"][1]["someFieldFromKubernetes140"] = json!(1);
    let mutated = mutate_manifest(&input, &Policy::default()).unwrap().object;
    assert_eq!(
        mutated["spec"]["ordinalsFromTheFuture"],
        json!({"start": 3})
    );
    let template = &mutated["spec"]["template"]["spec"];
    assert_eq!(template["hostnameOverrideFromTheFuture"], "kept");
    assert_eq!(template["containers"][1]["someFieldFromKubernetes140"], 1);
    assert_eq!(template["tolerations"].as_array().unwrap().len(), 2);
}

#[test]
fn device_plugin_resource_and_label_go_on_the_gpu_container_of_a_template() {
    let mutated = mutate_manifest(&deployment(), &Policy::default())
        .unwrap()
        .object;
    let containers = &mutated["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers[0],
        deployment()["spec"]["template"]["spec"]["containers"][0],
        "sidecar untouched"
    );
    let resources = &containers[1]["resources"];
    assert_eq!(resources["limits"]["gpu.intel.com/i915"], "1");
    assert_eq!(
        mutated["spec"]["template"]["metadata"]["labels"][MANAGED],
        "true"
    );
}

/// A template carrying the marker would strand every future pod Pending once the scheduler
/// stops ignoring it; only pods get it.
#[rstest]
#[case::deployment(deployment(), "/spec/template")]
#[case::statefulset(statefulset(), "/spec/template")]
#[case::cronjob(cronjob(), "/spec/jobTemplate/spec/template")]
fn templates_never_get_the_scheduling_marker(#[case] input: Value, #[case] template: &str) {
    let mutation = mutate_manifest(&input, &Policy::default()).unwrap();
    let text = serde_json::to_string(&mutation.object.pointer(template).unwrap()["spec"]).unwrap();
    assert!(!text.contains(MANAGED), "{text}");
    assert!(!mutation.changes.contains(&Change::SchedulingMarker));
    assert!(mutation.changes.contains(&Change::ManagedLabel));
}

fn scheduled_by(scheduling: Scheduling) -> Policy {
    Policy {
        scheduling,
        ..Policy::default()
    }
}

/// Pods get the marker only while the extender is installed, the second scheduler's name only
/// while it is, and nothing that needs a scheduler otherwise: any install step on its own
/// leaves them schedulable.
#[rstest]
#[case::no_scheduler(Scheduling::Default, false, "default-scheduler")]
#[case::extender(Scheduling::Extender, true, "default-scheduler")]
#[case::second_scheduler(Scheduling::Scheduler("jellyfin-ha".into()), false, "jellyfin-ha")]
#[case::unusable(Scheduling::Unusable("ConfigMap jellyfin-ha-scheduling: mode is None".into()), false, "default-scheduler")]
fn pods_are_sent_only_to_a_scheduler_that_is_there(
    #[case] scheduling: Scheduling,
    #[case] marked: bool,
    #[case] scheduler: &str,
) {
    let unusable = matches!(scheduling, Scheduling::Unusable(_));
    let mutation = mutate_pod(&pod(), &scheduled_by(scheduling)).unwrap();
    let resources = &mutation.object["spec"]["containers"][0]["resources"];
    if marked {
        assert_eq!(resources["limits"][MANAGED], "1");
        assert_eq!(resources["requests"][MANAGED], "1");
    } else {
        assert!(!resources.to_string().contains(MANAGED), "{resources}");
    }
    assert_eq!(mutation.object["spec"]["schedulerName"], scheduler);
    assert_eq!(mutation.object["metadata"]["labels"][MANAGED], "true");
    assert_eq!(
        mutation
            .warnings
            .iter()
            .any(|w| w.contains("jellyfin-ha-scheduling: mode is None")),
        unusable,
        "{:?}",
        mutation.warnings
    );
}

/// A pod that names a scheduler of its own keeps it; one that names the cluster's default
/// scheduler explicitly goes to the second scheduler like one that names none.
#[rstest]
#[case::explicit_default("default-scheduler", "jellyfin-ha", false)]
#[case::own_scheduler("my-scheduler", "my-scheduler", true)]
fn a_scheduler_the_pod_names_itself_is_kept(
    #[case] named: &str,
    #[case] expected: &str,
    #[case] warned: bool,
) {
    let mut input = pod();
    input["spec"]["schedulerName"] = json!(named);
    let policy = scheduled_by(Scheduling::Scheduler("jellyfin-ha".into()));
    let mutation = mutate_pod(&input, &policy).unwrap();
    assert_eq!(mutation.object["spec"]["schedulerName"], expected);
    assert_eq!(
        mutation.warnings.iter().any(|w| w.contains("my-scheduler")),
        warned,
        "{:?}",
        mutation.warnings
    );
    let again = mutate_pod(&mutation.object, &policy).unwrap();
    assert!(again.patch.0.is_empty(), "{:?}", again.patch);
}

/// The pod a ReplicaSet makes from a mutated template already has everything but what sends
/// it to a scheduler: the webhook, when it can be reached, adds only that.
#[rstest]
#[case::extender(
    Scheduling::Extender,
    Change::SchedulingMarker,
    "scheduling-marker=jellyfin-ha.io/managed"
)]
#[case::second_scheduler(
    Scheduling::Scheduler("jellyfin-ha".into()),
    Change::SchedulerName("jellyfin-ha".into()),
    "scheduler=jellyfin-ha"
)]
fn a_pod_born_from_a_mutated_template_needs_only_its_scheduler(
    #[case] scheduling: Scheduling,
    #[case] change: Change,
    #[case] recorded: &str,
) {
    let policy = scheduled_by(scheduling);
    let template =
        mutate_manifest(&deployment(), &policy).unwrap().object["spec"]["template"].clone();
    assert!(template["spec"]["schedulerName"].is_null(), "{template}");
    let mut pod = template.clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    let mutation = mutate_pod(&pod, &policy).unwrap();
    assert_eq!(mutation.changes, [change]);
    let record = mutation.object["metadata"]["annotations"][MUTATIONS]
        .as_str()
        .unwrap();
    assert!(record.contains("failover-tolerations=15s"), "{record}");
    assert!(record.contains(recorded), "{record}");
}

#[test]
fn a_marker_already_in_a_template_is_kept_with_a_warning() {
    let mut input = deployment();
    input["spec"]["template"]["spec"]["containers"][1]["resources"] =
        json!({"limits": {MANAGED: "1"}, "requests": {MANAGED: "1"}});
    let mutation = mutate_manifest(&input, &Policy::default()).unwrap();
    let resources = &mutation.object["spec"]["template"]["spec"]["containers"][1]["resources"];
    assert_eq!(resources["limits"][MANAGED], "1");
    assert!(
        mutation
            .warnings
            .iter()
            .any(|w| w.contains("jellyfin") && w.contains("Insufficient jellyfin-ha.io/managed")),
        "{:?}",
        mutation.warnings
    );
    let pod = mutate_pod(&pod(), &Policy::default()).unwrap();
    assert!(
        !pod.warnings.iter().any(|w| w.contains("Insufficient")),
        "{:?}",
        pod.warnings
    );
}

/// The webhook decides by the review's kind, `jellyfin-ha mutate` by the manifest's own
/// `apiVersion` and `kind`: the same object comes out of both.
#[rstest]
#[case::pod(pod(), "", "Pod")]
#[case::deployment(deployment(), "apps", "Deployment")]
#[case::statefulset(statefulset(), "apps", "StatefulSet")]
fn the_webhook_and_the_cli_mutate_alike(
    #[case] input: Value,
    #[case] group: &str,
    #[case] kind: &str,
) {
    let webhook = mutate_object(&input, group, kind, &Policy::default()).unwrap();
    let cli = mutate_manifest(&input, &Policy::default()).unwrap();
    assert_eq!(webhook, cli);
    assert!(!webhook.changes.is_empty());
}

#[test]
fn existing_gpu_request_is_left_alone() {
    let mut input = pod();
    input["spec"]["containers"][0]["resources"]["limits"] = json!({"gpu.intel.com/i915": "2"});
    let mutation = mutate_pod(&input, &Policy::default()).unwrap();
    assert_eq!(
        mutation.object["spec"]["containers"][0]["resources"]["limits"]["gpu.intel.com/i915"],
        "2"
    );
    assert!(
        !mutation
            .changes
            .iter()
            .any(|c| matches!(c, Change::GpuResource(_)))
    );
}

#[test]
fn resource_name_comes_from_config() {
    let mut policy = Policy::default();
    policy.gpu.resource_name = "gpu.intel.com/xe".into();
    let mutated = mutate_pod(&pod(), &policy).unwrap().object;
    let limits = &mutated["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["gpu.intel.com/xe"], "1");
    assert!(limits.get("gpu.intel.com/i915").is_none());
}

#[test]
fn hostpath_mode_mounts_dev_dri_and_warns_when_unprivileged() {
    let input = with_annotation(pod(), GPU, "hostpath");
    let mutation = mutate_pod(&input, &Policy::default()).unwrap();
    let spec = &mutation.object["spec"];
    assert!(spec["volumes"].as_array().unwrap().contains(
        &json!({"name": "jellyfin-ha-dri", "hostPath": {"path": "/dev/dri", "type": "Directory"}})
    ));
    assert!(
        spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "jellyfin-ha-dri", "mountPath": "/dev/dri"}))
    );
    assert!(
        spec["containers"][0]["resources"]["limits"]
            .get("gpu.intel.com/i915")
            .is_none()
    );
    assert!(
        mutation
            .warnings
            .iter()
            .any(|w| w.contains("not privileged")),
        "{:?}",
        mutation.warnings
    );

    let mut privileged = input.clone();
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let mutation = mutate_pod(&privileged, &Policy::default()).unwrap();
    assert!(mutation.warnings.is_empty(), "{:?}", mutation.warnings);
}

#[test]
fn none_mode_adds_no_device_access() {
    let mut policy = Policy::default();
    policy.gpu.mode = GpuMode::None;
    let mutated = mutate_pod(&pod(), &policy).unwrap().object;
    let container = &mutated["spec"]["containers"][0];
    assert!(
        container["resources"]["limits"]
            .get("gpu.intel.com/i915")
            .is_none()
    );
    assert_eq!(container["volumeMounts"].as_array().unwrap().len(), 2);
}

#[test]
fn render_groups_keep_the_users_and_add_the_rest() {
    let mutated = mutate_pod(&pod(), &Policy::default()).unwrap().object;
    assert_eq!(
        mutated["spec"]["securityContext"]["supplementalGroups"],
        json!([
            1000, 44, 103, 104, 105, 106, 107, 108, 109, 110, 989, 990, 991, 992, 993
        ])
    );
}

fn with_grace(mut pod: Value, seconds: Option<i64>) -> Value {
    let spec = pod["spec"].as_object_mut().unwrap();
    match seconds {
        Some(seconds) => spec.insert("terminationGracePeriodSeconds".into(), json!(seconds)),
        None => spec.remove("terminationGracePeriodSeconds"),
    };
    pod
}

#[rstest]
#[case::default_30_is_raised(Some(30), 600)]
#[case::unset_gets_the_floor(None, 600)]
#[case::zero_is_raised(Some(0), 600)]
#[case::floor_is_kept(Some(600), 600)]
#[case::longer_is_kept(Some(1800), 1800)]
fn termination_grace_is_raised_to_the_floor_never_lowered(
    #[case] current: Option<i64>,
    #[case] expected: i64,
) {
    let input = with_grace(pod(), current);
    let mutated = mutate_pod(&input, &Policy::default()).unwrap().object;
    assert_eq!(mutated["spec"]["terminationGracePeriodSeconds"], expected);
}

#[test]
fn a_users_long_grace_survives_untouched() {
    let input: Value = serde_yaml::from_str(LONG_GRACE_DEPLOYMENT).unwrap();
    let mutation = mutate_manifest(&input, &Policy::default()).unwrap();
    let template = &mutation.object["spec"]["template"];
    assert_eq!(template["spec"]["terminationGracePeriodSeconds"], 900);
    let record = template["metadata"]["annotations"][MUTATIONS]
        .as_str()
        .unwrap();
    assert!(!record.contains("termination-grace"), "{record}");
    assert!(
        !mutation
            .changes
            .iter()
            .any(|c| matches!(c, Change::TerminationGrace(_))),
        "{:?}",
        mutation.changes
    );
}

#[test]
fn zero_floor_leaves_grace_alone() {
    let policy = Policy {
        min_termination_grace_seconds: 0,
        ..Policy::default()
    };
    for grace in [None, Some(5)] {
        let mutated = mutate_pod(&with_grace(pod(), grace), &policy)
            .unwrap()
            .object;
        assert_eq!(
            mutated["spec"].get("terminationGracePeriodSeconds"),
            grace.map(|g| json!(g)).as_ref()
        );
    }
}

#[rstest]
#[case::none_needs_the_floor(None, Some(30), 600)]
#[case::sleep_adds_to_the_floor(Some(20), Some(30), 620)]
#[case::sleep_covered_by_a_long_grace(Some(20), Some(700), 700)]
fn pre_stop_sleep_is_added_to_the_grace(
    #[case] sleep: Option<i64>,
    #[case] current: Option<i64>,
    #[case] expected: i64,
) {
    let mut input = with_grace(pod(), current);
    if let Some(seconds) = sleep {
        input["spec"]["containers"][0]["lifecycle"] =
            json!({"preStop": {"sleep": {"seconds": seconds}}});
    }
    let mutation = mutate_pod(&input, &Policy::default()).unwrap();
    assert_eq!(
        mutation.object["spec"]["terminationGracePeriodSeconds"],
        expected
    );
    let again = mutate_pod(&mutation.object, &Policy::default()).unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
}

fn warnings_for(container_patch: Value) -> Vec<String> {
    let mut input = pod();
    let container = input["spec"]["containers"][0].as_object_mut().unwrap();
    for (key, value) in container_patch.as_object().unwrap() {
        container.insert(key.clone(), value.clone());
    }
    mutate_pod(&input, &Policy::default()).unwrap().warnings
}

#[rstest]
#[case::shell_without_exec(json!({"command": ["/bin/sh", "-c", "chown -R 1000 /config; /jellyfin/jellyfin"]}), Some("without exec"))]
#[case::bash_args_without_exec(json!({"command": ["bash"], "args": ["-ec", "sleep 1\n/jellyfin/jellyfin"]}), Some("without exec"))]
#[case::shell_with_exec(json!({"command": ["sh", "-c", "chown -R 1000 /config && exec /jellyfin/jellyfin"]}), None)]
#[case::shell_single_command(json!({"command": ["sh", "-c", "/jellyfin/jellyfin --datadir /config"]}), None)]
#[case::direct_command(json!({"command": ["/jellyfin/jellyfin"]}), None)]
#[case::exec_pre_stop(json!({"lifecycle": {"preStop": {"exec": {"command": ["curl", "-X", "POST", "localhost/System/Shutdown"]}}}}), Some("preStop hook"))]
#[case::sleep_pre_stop(json!({"lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}), None)]
#[case::liveness_without_startup(json!({"livenessProbe": {"httpGet": {"path": "/health", "port": 8096}}}), Some("no startup probe"))]
#[case::liveness_with_startup(json!({
    "livenessProbe": {"httpGet": {"path": "/health", "port": 8096}},
    "startupProbe": {"httpGet": {"path": "/health", "port": 8096}, "failureThreshold": 360},
}), None)]
fn settings_that_cut_a_clean_shutdown_short_are_warned(
    #[case] container: Value,
    #[case] expected: Option<&str>,
) {
    let warnings = warnings_for(container);
    match expected {
        Some(text) => assert!(warnings.iter().any(|w| w.contains(text)), "{warnings:?}"),
        None => assert!(warnings.is_empty(), "{warnings:?}"),
    }
}

#[rstest]
#[case::annotation_names_it(Some("sidecar"), "sidecar")]
#[case::named_jellyfin(None, "jellyfin")]
fn gpu_container_choice(#[case] annotation: Option<&str>, #[case] expected: &str) {
    let mut input = deployment();
    if let Some(name) = annotation {
        input["spec"]["template"]["metadata"]["annotations"][CONTAINER] = json!(name);
    }
    let mutated = mutate_manifest(&input, &Policy::default()).unwrap().object;
    let containers = mutated["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let with_gpu: Vec<&str> = containers
        .iter()
        .filter(|c| c["resources"]["limits"].get("gpu.intel.com/i915").is_some())
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(with_gpu, [expected]);
}

#[test]
fn first_container_when_none_is_named_jellyfin() {
    let mut input = pod();
    input["spec"]["containers"][0]["name"] = json!("server");
    let mutated = mutate_pod(&input, &Policy::default()).unwrap().object;
    assert_eq!(
        mutated["spec"]["containers"][0]["resources"]["limits"]["gpu.intel.com/i915"],
        "1"
    );
}

#[rstest]
#[case::gpu_mode(GPU, "vaapi", "jellyfin-ha.io/gpu")]
#[case::failover(FAILOVER_SECONDS, "soon", "jellyfin-ha.io/failover-seconds")]
#[case::missing_container(CONTAINER, "transcoder", "containers: jellyfin")]
fn malformed_override_is_an_error_naming_it(
    #[case] key: &str,
    #[case] value: &str,
    #[case] expected: &str,
) {
    let input = with_annotation(pod(), key, value);
    let err = mutate_pod(&input, &Policy::default()).unwrap_err();
    assert!(err.to_string().contains(expected), "{err}");
    assert!(err.to_string().contains(key), "{err}");
}

#[test]
fn record_annotation_says_what_changed() {
    let mutated = mutate_pod(&pod(), &Policy::default()).unwrap().object;
    assert_eq!(
        mutated["metadata"]["annotations"][MUTATIONS],
        "failover-tolerations=15s; igpu=gpu.intel.com/i915; managed-label=jellyfin-ha.io/managed=true; \
         node-affinity=intel.feature.node.kubernetes.io/gpu In [true]; \
         render-groups=44,103,104,105,106,107,108,109,110,989,990,991,992,993; \
         termination-grace=600s"
    );
}

#[test]
fn deployment_with_a_claim_gets_recreate() {
    let mutation = mutate_manifest(&deployment(), &Policy::default()).unwrap();
    assert_eq!(
        mutation.object["spec"]["strategy"],
        json!({"type": "Recreate"})
    );
    assert!(mutation.warnings.iter().any(|w| w.contains("Recreate")));
    assert!(
        mutation.object["metadata"]["annotations"][MUTATIONS]
            .as_str()
            .unwrap()
            .contains("strategy=Recreate")
    );
}

#[test]
fn deployment_without_a_claim_keeps_its_strategy() {
    let mut input = deployment();
    input["spec"]["template"]["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
    input["spec"]["template"]["spec"]["containers"][1]["volumeMounts"] =
        json!([{"name": "cache", "mountPath": "/cache"}]);
    let mutated = mutate_manifest(&input, &Policy::default()).unwrap().object;
    assert_eq!(mutated["spec"]["strategy"], input["spec"]["strategy"]);
}

#[rstest]
#[case::cronjob("batch/v1", "CronJob", "/spec/jobTemplate/spec/template")]
#[case::statefulset("apps/v1", "StatefulSet", "/spec/template")]
#[case::daemonset("apps/v1", "DaemonSet", "/spec/template")]
#[case::job("batch/v1", "Job", "/spec/template")]
fn workload_templates_are_mutated(
    #[case] api_version: &str,
    #[case] kind: &str,
    #[case] pointer: &str,
) {
    let template = json!({"metadata": {"annotations": {INJECT: "true"}}, "spec": {"containers": [{"name": "jellyfin", "image": "j"}]}});
    let mut object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}});
    let mut slot = &mut object;
    for part in pointer.trim_start_matches('/').split('/') {
        slot = &mut slot[part];
    }
    *slot = template;
    let mutated = mutate_manifest(&object, &Policy::default()).unwrap().object;
    let tolerations = mutated
        .pointer(&format!("{pointer}/spec/tolerations"))
        .unwrap();
    assert_eq!(tolerations.as_array().unwrap().len(), 2);
}

#[test]
fn other_kinds_pass_through() {
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "annotations": {INJECT: "true"}}});
    assert_eq!(
        mutate_manifest(&config_map, &Policy::default())
            .unwrap()
            .object,
        config_map
    );
}

#[test]
fn list_items_are_mutated_and_errors_name_the_item() {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [pod(), with_annotation(pod(), GPU, "bogus")]});
    let err = mutate_manifest(&list, &Policy::default()).unwrap_err();
    assert!(
        matches!(err, MutationError::InListItem { index: 1, .. }),
        "{err}"
    );

    let list = json!({"apiVersion": "v1", "kind": "List", "items": [pod(), {"apiVersion": "v1", "kind": "Service"}]});
    let mutated = mutate_manifest(&list, &Policy::default()).unwrap().object;
    assert_eq!(tolerations(&mutated["items"][0]).len(), 2);
    assert_eq!(
        mutated["items"][1],
        json!({"apiVersion": "v1", "kind": "Service"})
    );
}

#[rstest]
#[case::containers_wrong_type(json!({"containers": "jellyfin"}), "spec.containers")]
#[case::grace_wrong_type(json!({"containers": [{"name": "j"}], "terminationGracePeriodSeconds": "30"}), "spec.terminationGracePeriodSeconds")]
#[case::no_containers(json!({"containers": []}), "needs at least one container")]
fn malformed_pods_are_errors_naming_the_field(#[case] spec: Value, #[case] expected: &str) {
    let mut input = pod();
    input["spec"] = spec;
    let err = mutate_pod(&input, &Policy::default()).unwrap_err();
    assert!(err.to_string().contains(expected), "{err}");
}

#[test]
fn template_field_is_named_in_workload_errors() {
    let mut input = deployment();
    input["spec"]["template"]["spec"]["tolerations"] = json!({"not": "a list"});
    let err = mutate_manifest(&input, &Policy::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.template.spec.tolerations"),
        "{err}"
    );
}

fn statefulset() -> Value {
    let mut statefulset = deployment();
    statefulset["kind"] = json!("StatefulSet");
    let spec = statefulset["spec"].as_object_mut().unwrap();
    spec.remove("strategy");
    spec.insert("serviceName".into(), json!("jellyfin"));
    statefulset
}

fn cronjob() -> Value {
    json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "scan"},
           "spec": {"jobTemplate": {"spec": {"template": pod()}}}})
}

/// The patch a mutation carries is the one the webhook sends: applied to the input it must
/// give exactly the mutated object, wherever the template sits.
#[rstest]
#[case::pod_at_the_root(pod())]
#[case::deployment_template_and_strategy(deployment())]
#[case::cronjob_template(cronjob())]
#[case::list_items(json!({"apiVersion": "v1", "kind": "List", "items": [deployment(), {"kind": "Service"}, pod()]}))]
fn carried_patch_turns_the_input_into_the_output(#[case] input: Value) {
    let mutation = mutate_manifest(&input, &Policy::default()).unwrap();
    assert!(!mutation.patch.0.is_empty());
    let mut patched = input.clone();
    json_patch::patch(&mut patched, &mutation.patch).unwrap();
    assert_eq!(patched, mutation.object);
}
