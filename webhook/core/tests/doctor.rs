//! `doctor`'s checks, each from a healthy snapshot with one thing broken.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;

use jellyfin_ha_core::busyness::report::AgentReport;
use jellyfin_ha_core::config::RenderGroupsSource;
use jellyfin_ha_core::doctor::{
    CaCertificate, CephDriver, ConfigSource, FenceStatus, Finding, Report, ServerVersion, Snapshot,
    Verdict, diagnose,
};
use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::object::{mutate_object, mutate_pod};
use jellyfin_ha_core::scheduling::Scheduling;
use jellyfin_ha_core::{Policy, fencing::FencerPolicy};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const NOW: &str = "2026-11-25T20:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn at(offset_seconds: i64) -> String {
    (now() + SignedDuration::from_secs(offset_seconds)).to_string()
}

fn from<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn node(name: &str, quick_sync: bool, shares: &str) -> k8s_openapi::api::core::v1::Node {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if quick_sync {
        labels["intel.feature.node.kubernetes.io/gpu"] = json!("true");
    }
    let mut allocatable = json!({"cpu": "4"});
    if !shares.is_empty() {
        allocatable["gpu.intel.com/i915"] = json!(shares);
    }
    from(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at(-3600)}],
            "nodeInfo": {"bootID": format!("boot-{name}"), "machineID": "", "systemUUID": "",
                "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
                "kubeletVersion": "", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64"}
        }
    }))
}

fn lease(node: &str, duration: i32) -> k8s_openapi::api::coordination::v1::Lease {
    from(json!({
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": at(-3)}
    }))
}

fn raw_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "jellyfin", "namespace": "media"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "jellyfin"}},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": {"app": "jellyfin"},
                             "annotations": {"jellyfin-ha.io/inject": "true"}},
                "spec": {
                    "containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin",
                                    "volumeMounts": [{"name": "config", "mountPath": "/config"}]}],
                    "volumes": [{"name": "config", "persistentVolumeClaim": {"claimName": "config"}}]
                }
            }
        }
    })
}

/// The Deployment as the webhook stores it.
fn stored(raw: &Value, policy: &Policy) -> Value {
    mutate_object(raw, "apps", "Deployment", policy)
        .unwrap()
        .object
}

/// A pod of the stored Deployment, as the webhook admits it, running on `node`.
fn pod_of(deployment: &Value, policy: &Policy, node: &str) -> Value {
    let template = &deployment["spec"]["template"];
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jellyfin-abc", "namespace": "media",
                     "labels": template["metadata"]["labels"],
                     "annotations": template["metadata"]["annotations"],
                     "creationTimestamp": at(-600)},
        "spec": template["spec"],
    });
    pod = mutate_pod(&pod, policy).unwrap().object;
    pod["spec"]["nodeName"] = json!(node);
    pod["status"] = json!({"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(-600)},
        {"type": "Initialized", "status": "True", "lastTransitionTime": at(-597)}
    ]});
    pod
}

fn report(node: &str, gid: u32) -> AgentReport {
    from(json!({
        "node": node, "observedAt": at(-5),
        "cards": [{"card": "card0", "driver": "i915", "renderNode": "renderD128",
                   "renderGid": gid, "usable": true, "engines": {"video": 0.1}}]
    }))
}

fn webhook_configuration(client_config: Value) -> Value {
    let webhook = |name: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": client_config,
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                "operator": "NotIn", "values": ["kube-system", "jellyfin-ha"]}]}
        })
    };
    json!({"metadata": {"name": "jellyfin-ha"},
           "webhooks": [webhook("pods.jellyfin-ha.io"), webhook("workloads.jellyfin-ha.io")]})
}

fn service_client_config() -> Value {
    json!({"service": {"namespace": "jellyfin-ha", "name": "jellyfin-ha-webhook", "path": "/mutate"}})
}

fn endpoint_slice(nodes: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = nodes
        .iter()
        .map(|(node, ready)| json!({"addresses": ["10.0.0.1"], "nodeName": node, "conditions": {"ready": ready}}))
        .collect();
    json!({"metadata": {"name": "jellyfin-ha-webhook-x", "namespace": "jellyfin-ha",
                        "labels": {"kubernetes.io/service-name": "jellyfin-ha-webhook"}},
           "addressType": "IPv4", "endpoints": endpoints})
}

fn fencer_policy() -> FencerPolicy {
    serde_yaml::from_str(
        "agents:\n- name: bmc\n  nodes: [node-a, node-b]\n  credentialsSecret: bmc\n  \
         redfish: {address: 'https://{node}-bmc', systemPath: /redfish/v1/Systems/1}\n",
    )
    .unwrap()
}

fn on(agent: &str) -> FenceStatus {
    FenceStatus {
        agent: agent.to_string(),
        outcome: Ok(PowerState::On),
        took: SignedDuration::from_millis(300),
    }
}

/// Two QuickSync nodes with BMCs, a webhook on both, the fencer leading, and a Jellyfin
/// Deployment on Ceph RBD as the webhook stores it.
fn healthy() -> Snapshot {
    let policy = Policy {
        scheduling: Scheduling::Extender,
        ..Policy::default()
    };
    let deployment = stored(&raw_deployment(), &policy);
    let pod = pod_of(&deployment, &policy, "node-a");
    Snapshot {
        now: now(),
        version: ServerVersion::parse("1", "33", "v1.33.1"),
        namespace: "media".into(),
        namespace_labels: [(
            "kubernetes.io/metadata.name".to_string(),
            "media".to_string(),
        )]
        .into(),
        workload: None,
        install_namespace: "jellyfin-ha".into(),
        config_source: ConfigSource::ConfigMap("ConfigMap jellyfin-ha/jellyfin-ha-config".into()),
        policy: Policy {
            fencer: fencer_policy(),
            ..policy
        }
        .with_shared_facts(),
        nodes: vec![node("node-a", true, "2"), node("node-b", true, "2")],
        leases: vec![lease("node-a", 40), lease("node-b", 40)],
        deployments: vec![from(deployment)],
        stateful_sets: vec![],
        pods: vec![from(pod)],
        events: vec![],
        claims: vec![from(json!({
            "metadata": {"name": "config", "namespace": "media"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd", "volumeName": "pv-config"}
        }))],
        volumes: vec![from(json!({
            "metadata": {"name": "pv-config"},
            "spec": {"accessModes": ["ReadWriteOnce"], "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "x"}}
        }))],
        storage_classes: vec![from(
            json!({"metadata": {"name": "ceph-rbd"}, "provisioner": "rbd.csi.ceph.com"}),
        )],
        csi_drivers: vec![from(
            json!({"metadata": {"name": "rbd.csi.ceph.com"}, "spec": {"attachRequired": true}}),
        )],
        volume_attachments: vec![from(json!({
            "metadata": {"name": "csi-1"},
            "spec": {"attacher": "rbd.csi.ceph.com", "nodeName": "node-a",
                     "source": {"persistentVolumeName": "pv-config"}},
            "status": {"attached": true}
        }))],
        ceph_drivers: None,
        webhook_configurations: vec![from(webhook_configuration(service_client_config()))],
        webhook_cas: [(
            "jellyfin-ha".to_string(),
            Ok(vec![CaCertificate {
                subject: "CN=jellyfin-ha-ca".into(),
                not_before: now() - SignedDuration::from_hours(24),
                not_after: now() + SignedDuration::from_hours(24 * 365),
            }]),
        )]
        .into(),
        endpoint_slices: vec![from(endpoint_slice(&[("node-a", true), ("node-b", true)]))],
        agent_reports: [
            ("node-a".to_string(), Ok(report("node-a", 109))),
            ("node-b".to_string(), Ok(report("node-b", 106))),
        ]
        .into(),
        agents_installed: true,
        fencer_lease: Some(from(json!({
            "metadata": {"name": "jellyfin-ha-fencer", "namespace": "jellyfin-ha"},
            "spec": {"holderIdentity": "fencer-0", "leaseDurationSeconds": 6, "renewTime": at(-1)}
        }))),
        fence_status: [
            ("node-a".to_string(), on("bmc")),
            ("node-b".to_string(), on("bmc")),
        ]
        .into(),
    }
}

/// The one finding of `check`, asserting there is exactly one.
fn only<'a>(report: &'a Report, check: &'a str) -> &'a Finding {
    let found: Vec<&Finding> = report.of(check).collect();
    assert_eq!(found.len(), 1, "{check}: {found:#?}");
    found[0]
}

fn expect(snapshot: &Snapshot, check: &str, verdict: Verdict, saw: &str, fix: &str) -> Finding {
    let report = diagnose(snapshot);
    let finding = report
        .of(check)
        .find(|f| f.verdict == verdict)
        .unwrap_or_else(|| panic!("no {verdict:?} for {check} in {:#?}", report.findings))
        .clone();
    assert!(finding.saw.contains(saw), "{finding:#?}");
    assert!(finding.fix.contains(fix), "{finding:#?}");
    if verdict == Verdict::Fail {
        assert!(report.failed(), "a failed check fails the report");
    }
    finding
}

#[test]
fn a_healthy_setup_passes_every_check() {
    let report = diagnose(&healthy());
    let not_ok: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.verdict != Verdict::Ok)
        .collect();
    assert!(not_ok.is_empty(), "{not_ok:#?}");
    for check in [
        "cluster/version",
        "cluster/heartbeat",
        "gpu/label",
        "gpu/shares",
        "gpu/render-gid",
        "gpu/pod-security",
        "workload/strategy",
        "workload/grace",
        "workload/template",
        "workload/unmutated-pod",
        "storage/access-mode",
        "storage/attach",
        "storage/ceph-fencing",
        "jellyfin-ha/config",
        "jellyfin-ha/webhook",
        "jellyfin-ha/webhook-ca",
        "jellyfin-ha/webhook-endpoints",
        "jellyfin-ha/extender",
        "jellyfin-ha/fencer",
        "jellyfin-ha/fence-mapping",
        "jellyfin-ha/fence-agent",
        "failover/estimate",
    ] {
        only(&report, check);
    }
    assert!(!report.failed());
}

#[test]
fn old_clusters_fail_or_warn_by_what_they_lack() {
    let mut snapshot = healthy();
    snapshot.version = ServerVersion::parse("1", "27", "v1.27.9");
    expect(
        &snapshot,
        "cluster/version",
        Verdict::Fail,
        "out-of-service",
        "1.28",
    );
    snapshot.version = ServerVersion::parse("1", "29+", "v1.29.3-eks");
    expect(
        &snapshot,
        "cluster/version",
        Verdict::Warn,
        "matchConditions",
        "1.30",
    );
}

#[test]
fn heartbeat_reports_detection_and_missing_leases() {
    let mut snapshot = healthy();
    snapshot.leases = vec![lease("node-a", 10), lease("node-b", 10)];
    expect(&snapshot, "cluster/heartbeat", Verdict::Ok, "2.5 s", "");
    expect(
        &snapshot,
        "cluster/heartbeat",
        Verdict::Ok,
        "4.5 s after its last renewal",
        "",
    );
    snapshot.leases.pop();
    expect(
        &snapshot,
        "cluster/heartbeat",
        Verdict::Warn,
        "no heartbeat Lease",
        "kube-node-lease",
    );
}

#[test]
fn a_gpu_node_without_the_label_and_the_reverse_fail() {
    let mut snapshot = healthy();
    snapshot.nodes.push(node("node-c", false, "1"));
    let finding = expect(
        &snapshot,
        "gpu/label",
        Verdict::Fail,
        "lacks the QuickSync label",
        "kubectl label node node-c",
    );
    assert_eq!(finding.subject, "node-c");
    let mut snapshot = healthy();
    snapshot.nodes.push(node("node-d", true, ""));
    expect(
        &snapshot,
        "gpu/label",
        Verdict::Fail,
        "advertises no gpu.intel.com/i915",
        "device plugin",
    );
}

#[test]
fn shares_must_cover_a_failover() {
    let mut snapshot = healthy();
    snapshot.nodes = vec![node("node-a", true, "1"), node("node-b", true, "1")];
    let mut deployment = raw_deployment();
    deployment["spec"]["replicas"] = json!(2);
    snapshot.deployments = vec![from(stored(&deployment, &snapshot.policy))];
    expect(
        &snapshot,
        "gpu/shares",
        Verdict::Warn,
        "only 1 remain",
        "sharedDevNum",
    );
    deployment["spec"]["replicas"] = json!(3);
    snapshot.deployments = vec![from(stored(&deployment, &snapshot.policy))];
    expect(
        &snapshot,
        "gpu/shares",
        Verdict::Fail,
        "3 pod(s) want",
        "sharedDevNum",
    );
}

#[test]
fn render_gids_the_webhook_does_not_add_fail() {
    let mut snapshot = healthy();
    snapshot.policy.render_groups = vec![44, 109];
    let finding = expect(
        &snapshot,
        "gpu/render-gid",
        Verdict::Fail,
        "GID 106",
        "add 106 to renderGroups",
    );
    assert_eq!(finding.subject, "node-b");
    // Taken from the agents' reports instead, the webhook adds it.
    snapshot.policy.render_groups_from = RenderGroupsSource::Agents;
    let report = diagnose(&snapshot);
    assert!(
        !report
            .of("gpu/render-gid")
            .any(|f| f.verdict == Verdict::Fail),
        "{:#?}",
        report.findings
    );
}

#[test]
fn a_render_node_of_the_root_group_is_a_host_to_fix() {
    let mut snapshot = healthy();
    for report in snapshot.agent_reports.values_mut().flatten() {
        for card in &mut report.cards {
            card.render_gid = Some(0);
        }
    }
    snapshot.policy.render_groups_from = RenderGroupsSource::Agents;
    expect(
        &snapshot,
        "gpu/render-gid",
        Verdict::Fail,
        "root group (GID 0)",
        "group of its own on the host",
    );
}

#[test]
fn a_missing_agent_report_warns_only_where_agents_run() {
    let mut snapshot = healthy();
    snapshot.agent_reports.remove("node-b");
    expect(
        &snapshot,
        "gpu/render-gid",
        Verdict::Warn,
        "no agent report",
        "DaemonSet",
    );
    snapshot.agent_reports.clear();
    snapshot.agents_installed = false;
    expect(
        &snapshot,
        "gpu/render-gid",
        Verdict::Ok,
        "no node agent installed",
        "",
    );
}

#[test]
fn hostpath_mode_in_a_restricted_namespace_fails() {
    let mut snapshot = healthy();
    snapshot.policy.gpu.mode = jellyfin_ha_core::config::GpuMode::Hostpath;
    snapshot.namespace_labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "baseline".into(),
    );
    expect(
        &snapshot,
        "gpu/pod-security",
        Verdict::Fail,
        "enforces Pod Security baseline",
        "privileged",
    );
}

/// `edit` applied to the Deployment as stored, without the webhook seeing it again.
fn with_stored(edit: impl Fn(&mut Value)) -> Snapshot {
    let mut snapshot = healthy();
    let mut deployment = serde_json::to_value(&snapshot.deployments[0]).unwrap();
    edit(&mut deployment);
    snapshot.deployments = vec![from(deployment)];
    snapshot
}

#[test]
fn rolling_update_with_a_read_write_once_claim_fails() {
    let snapshot = with_stored(|d| d["spec"]["strategy"] = json!({"type": "RollingUpdate"}));
    expect(
        &snapshot,
        "workload/strategy",
        Verdict::Fail,
        "ReadWriteOnce claim config",
        "Recreate",
    );
    let mut shared = snapshot.clone();
    shared.claims[0].spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
    expect(
        &shared,
        "workload/strategy",
        Verdict::Ok,
        "ReadWriteMany",
        "",
    );
}

#[test]
fn a_short_grace_fails_with_the_value_needed() {
    let snapshot =
        with_stored(|d| d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(30));
    expect(
        &snapshot,
        "workload/grace",
        Verdict::Fail,
        "is 30 s",
        "to 600",
    );
}

#[test]
fn a_template_the_webhook_never_saw_warns() {
    let mut snapshot = healthy();
    snapshot.deployments = vec![from(raw_deployment())];
    expect(
        &snapshot,
        "workload/template",
        Verdict::Warn,
        "failover-tolerations",
        "rollout restart",
    );
}

#[test]
fn the_webhooks_own_warnings_are_reported() {
    let snapshot = with_stored(|d| {
        d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] =
            json!({"httpGet": {"path": "/health", "port": 8096}});
    });
    expect(
        &snapshot,
        "workload/webhook-warning",
        Verdict::Warn,
        "no startup probe",
        "startupProbe",
    );
}

#[test]
fn a_toleration_that_blocks_fencing_is_reported() {
    let snapshot = with_stored(|d| {
        let tolerations = &mut d["spec"]["template"]["spec"]["tolerations"];
        tolerations
            .as_array_mut()
            .unwrap()
            .push(json!({"operator": "Exists"}));
    });
    expect(
        &snapshot,
        "workload/webhook-warning",
        Verdict::Warn,
        "fencing cannot evict this pod",
        "change the pod template",
    );
}

#[test]
fn a_named_workload_that_does_not_exist_fails() {
    let mut snapshot = healthy();
    snapshot.workload = Some("emby".into());
    expect(
        &snapshot,
        "workload/found",
        Verdict::Fail,
        "no Deployment or StatefulSet emby",
        "",
    );
}

#[test]
fn a_pod_created_without_the_webhook_fails() {
    let mut snapshot = healthy();
    let raw = raw_deployment();
    let mut pod = pod_of(&raw, &Policy::default(), "node-a");
    // Created as written: undo what pod_of had the webhook add.
    pod["spec"] = raw["spec"]["template"]["spec"].clone();
    pod["spec"]["nodeName"] = json!("node-a");
    snapshot.pods = vec![from(pod)];
    let finding = expect(
        &snapshot,
        "workload/unmutated-pod",
        Verdict::Fail,
        "created without the webhook",
        "delete the pod",
    );
    assert!(
        finding.subject.contains("jellyfin-abc (lacks igpu"),
        "{finding:#?}"
    );
}

#[test]
fn the_attach_check_says_where_the_volume_is() {
    expect(
        &healthy(),
        "storage/attach",
        Verdict::Ok,
        "attached to node-a",
        "",
    );
}

#[test]
fn a_storage_class_without_attach_fails() {
    let mut snapshot = healthy();
    snapshot.csi_drivers = vec![from(
        json!({"metadata": {"name": "rbd.csi.ceph.com"}, "spec": {"attachRequired": false}}),
    )];
    expect(
        &snapshot,
        "storage/attach",
        Verdict::Fail,
        "no attach step",
        "attaches",
    );
}

#[test]
fn a_node_local_volume_fails() {
    let mut snapshot = healthy();
    snapshot.volumes = vec![from(json!({"metadata": {"name": "pv-config"},
        "spec": {"accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/srv/jellyfin"}}}))];
    expect(
        &snapshot,
        "storage/attach",
        Verdict::Fail,
        "hostPath volume lives on one node",
        "replicated storage",
    );
}

#[test]
fn a_missing_claim_fails() {
    let mut snapshot = healthy();
    snapshot.claims.clear();
    expect(
        &snapshot,
        "storage/claim",
        Verdict::Fail,
        "does not exist",
        "create the claim",
    );
}

#[test]
fn ceph_without_client_fencing_warns() {
    let mut snapshot = healthy();
    snapshot.ceph_drivers = Some(vec![CephDriver {
        name: "rbd.csi.ceph.com".into(),
        enable_fencing: false,
    }]);
    expect(
        &snapshot,
        "storage/ceph-fencing",
        Verdict::Warn,
        "does not enable fencing",
        "enableFencing: true",
    );
    snapshot.ceph_drivers = Some(vec![CephDriver {
        name: "rbd.csi.ceph.com".into(),
        enable_fencing: true,
    }]);
    expect(
        &snapshot,
        "storage/ceph-fencing",
        Verdict::Ok,
        "enableFencing",
        "",
    );
}

#[test]
fn no_webhook_for_the_namespace_fails() {
    let mut snapshot = healthy();
    snapshot
        .namespace_labels
        .insert("kubernetes.io/metadata.name".into(), "jellyfin-ha".into());
    expect(
        &snapshot,
        "jellyfin-ha/webhook",
        Verdict::Fail,
        "no MutatingWebhookConfiguration",
        "manifests/overlays/self-managed",
    );
}

#[test]
fn the_webhook_ca_is_checked_for_expiry() {
    let mut snapshot = healthy();
    let set = |snapshot: &mut Snapshot, hours: i64| {
        snapshot.webhook_cas.insert(
            "jellyfin-ha".into(),
            Ok(vec![CaCertificate {
                subject: "CN=ca".into(),
                not_before: now() - SignedDuration::from_hours(24),
                not_after: now() + SignedDuration::from_hours(hours),
            }]),
        );
    };
    set(&mut snapshot, 24 * 10);
    expect(
        &snapshot,
        "jellyfin-ha/webhook-ca",
        Verdict::Warn,
        "expires in 10 day(s)",
        "renew",
    );
    set(&mut snapshot, -1);
    expect(
        &snapshot,
        "jellyfin-ha/webhook-ca",
        Verdict::Fail,
        "expired",
        "renew",
    );
    snapshot
        .webhook_cas
        .insert("jellyfin-ha".into(), Ok(vec![]));
    expect(
        &snapshot,
        "jellyfin-ha/webhook-ca",
        Verdict::Fail,
        "no caBundle",
        "caBundle",
    );
}

#[test]
fn webhook_endpoints_must_be_ready_on_two_nodes() {
    let mut snapshot = healthy();
    snapshot.endpoint_slices = vec![from(endpoint_slice(&[("node-a", true), ("node-b", false)]))];
    expect(
        &snapshot,
        "jellyfin-ha/webhook-endpoints",
        Verdict::Warn,
        "all on node-a",
        "two replicas",
    );
    snapshot.endpoint_slices = vec![from(endpoint_slice(&[("node-a", false)]))];
    expect(
        &snapshot,
        "jellyfin-ha/webhook-endpoints",
        Verdict::Fail,
        "no ready endpoint",
        "",
    );
    snapshot.webhook_configurations = vec![from(webhook_configuration(
        json!({"url": "https://10.0.0.9:8443/mutate"}),
    ))];
    expect(
        &snapshot,
        "jellyfin-ha/webhook-endpoints",
        Verdict::Warn,
        "called by URL",
        "Service",
    );
}

#[test]
fn the_extender_signal_is_what_the_scheduler_did_with_marked_pods() {
    let mut snapshot = healthy();
    snapshot.pods[0].spec.as_mut().unwrap().node_name = None;
    snapshot.events = vec![from(json!({
        "metadata": {"name": "e1", "namespace": "media"},
        "involvedObject": {"kind": "Pod", "name": "jellyfin-abc"},
        "reason": "FailedScheduling",
        "message": "0/2 nodes are available: 2 Insufficient jellyfin-ha.io/managed."
    }))];
    expect(
        &snapshot,
        "jellyfin-ha/extender",
        Verdict::Fail,
        "not configured with the extender",
        "kube-scheduler-config.yaml",
    );
    snapshot.policy.scheduling = Scheduling::Default;
    expect(
        &snapshot,
        "jellyfin-ha/extender",
        Verdict::Warn,
        "no ConfigMap jellyfin-ha-scheduling",
        "manifests/scheduling/extender",
    );
}

#[test]
fn no_fencer_or_a_stale_one_fails() {
    let mut snapshot = healthy();
    let lease = snapshot.fencer_lease.as_mut().unwrap();
    lease.spec.as_mut().unwrap().renew_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now() - SignedDuration::from_secs(60),
        ));
    expect(
        &snapshot,
        "jellyfin-ha/fencer",
        Verdict::Fail,
        "run out",
        "fencer's pods",
    );
    snapshot.fencer_lease = None;
    expect(
        &snapshot,
        "jellyfin-ha/fencer",
        Verdict::Fail,
        "no fencer leads",
        "manifests/fencer",
    );
    expect(
        &snapshot,
        "failover/estimate",
        Verdict::Warn,
        "no fencer runs",
        "manifests/fencer",
    );
}

#[test]
fn an_eligible_node_without_an_agent_fails() {
    let mut snapshot = healthy();
    snapshot.nodes.push(node("node-c", true, "2"));
    let finding = expect(
        &snapshot,
        "jellyfin-ha/fence-mapping",
        Verdict::Fail,
        "no fence agent selects",
        "fencer.agents",
    );
    assert_eq!(finding.subject, "node-c");
    snapshot.policy.fencer.node_selector =
        [("kubernetes.io/hostname".to_string(), "node-a".to_string())].into();
    snapshot.policy.fencer.agents[0].nodes = vec!["node-a".into()];
    expect(
        &snapshot,
        "jellyfin-ha/fence-mapping",
        Verdict::Ok,
        "1 eligible node(s)",
        "",
    );
}

#[test]
fn an_unreachable_or_miswired_fence_agent_fails() {
    let mut snapshot = healthy();
    snapshot.fence_status.insert(
        "node-b".into(),
        FenceStatus {
            agent: "bmc".into(),
            outcome: Err("cannot reach the device: connection refused".into()),
            took: SignedDuration::from_secs(10),
        },
    );
    let finding = expect(
        &snapshot,
        "jellyfin-ha/fence-agent",
        Verdict::Fail,
        "connection refused",
        "network path",
    );
    assert_eq!(finding.subject, "node-b");
    snapshot.fence_status.insert(
        "node-b".into(),
        FenceStatus {
            agent: "bmc".into(),
            outcome: Ok(PowerState::Off),
            took: SignedDuration::from_millis(200),
        },
    );
    expect(
        &snapshot,
        "jellyfin-ha/fence-agent",
        Verdict::Fail,
        "wired to another machine",
        "address",
    );
    // Powered off and silent, though still Ready until the node controller's grace runs out.
    snapshot.leases[1].spec.as_mut().unwrap().renew_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now() - SignedDuration::from_secs(13),
        ));
    expect(
        &snapshot,
        "jellyfin-ha/fence-agent",
        Verdict::Ok,
        "2 fence agent(s) answered",
        "",
    );
}

#[test]
fn the_estimate_adds_the_parts_and_names_the_largest() {
    let snapshot = healthy();
    // 10 s renew + 2 s margin, 0.3 s status, 1 s acting, 3 s attach at the last start.
    let finding = expect(
        &snapshot,
        "failover/estimate",
        Verdict::Ok,
        "about 16.3 s",
        "",
    );
    assert!(finding.saw.contains("detection dominates"), "{finding:#?}");
    let mut slow = healthy();
    slow.fence_status.insert(
        "node-a".into(),
        FenceStatus {
            took: SignedDuration::from_secs(20),
            ..on("bmc")
        },
    );
    expect(
        &slow,
        "failover/estimate",
        Verdict::Ok,
        "proof dominates",
        "",
    );
    let mut broken = healthy();
    broken.fence_status.insert(
        "node-a".into(),
        FenceStatus {
            agent: "bmc".into(),
            outcome: Err("no answer within 10 s".into()),
            took: SignedDuration::from_secs(10),
        },
    );
    expect(
        &broken,
        "failover/estimate",
        Verdict::Warn,
        "cannot be proven off",
        "fence agent",
    );
}

#[test]
fn the_estimate_needs_the_pods_node_among_those_checked() {
    let mut snapshot = healthy();
    snapshot
        .nodes
        .retain(|n| n.metadata.name.as_deref() != Some("node-a"));
    expect(
        &snapshot,
        "failover/estimate",
        Verdict::Warn,
        "not among the nodes checked",
        "--node-selector",
    );
}

#[test]
fn an_invalid_config_fails() {
    let mut snapshot = healthy();
    snapshot.config_source = ConfigSource::Invalid("config ConfigMap jellyfin-ha/jellyfin-ha-config: config field failoverSeconds: 301 is not from 0 to 300".into());
    expect(
        &snapshot,
        "jellyfin-ha/config",
        Verdict::Fail,
        "failoverSeconds",
        "correct the field",
    );
    snapshot.config_source = ConfigSource::Defaults;
    expect(
        &snapshot,
        "jellyfin-ha/config",
        Verdict::Warn,
        "assume the defaults",
        "--config",
    );
}

#[test]
fn nothing_to_check_is_said_plainly() {
    let mut snapshot = healthy();
    snapshot.nodes.clear();
    snapshot.pods.clear();
    snapshot.fence_status.clear();
    expect(
        &snapshot,
        "gpu/label",
        Verdict::Warn,
        "no nodes to check",
        "node selector",
    );
    expect(
        &snapshot,
        "gpu/render-gid",
        Verdict::Ok,
        "no QuickSync node to check",
        "",
    );
    expect(
        &snapshot,
        "workload/unmutated-pod",
        Verdict::Ok,
        "no opted-in pod to check",
        "",
    );
    expect(
        &snapshot,
        "jellyfin-ha/fence-mapping",
        Verdict::Warn,
        "none of the 0 node(s)",
        "fencer.nodeSelector",
    );
    expect(
        &snapshot,
        "jellyfin-ha/fence-agent",
        Verdict::Ok,
        "no fence agent to ask",
        "",
    );
    expect(
        &snapshot,
        "failover/estimate",
        Verdict::Warn,
        "no pod of the workload is on a node",
        "start the workload",
    );
}

#[test]
fn verdicts_serialize_in_lower_case() {
    let report = diagnose(&healthy());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["findings"][0]["verdict"], "ok");
    assert_eq!(json["findings"][0]["check"], "cluster/version");
    let _: BTreeMap<String, Value> = serde_json::from_value(json["findings"][0].clone()).unwrap();
}
