//! The local control plane behaves like a home lab: kwok nodes heartbeat like kubelets, die
//! and come back like machines with Redfish BMCs, and the real attach/detach controller moves
//! CSI volumes, which a pod waits for before it runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use jellyfin_ha_e2e::{BmcEndpoint, TestNamespace, TestNode, client, create_rbd_claim, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

async fn renew_time(client: &Client, node: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get_opt(node).await.ok()??;
    lease.spec?.renew_time.map(|t| t.0.to_string())
}

/// Asserts that the node's Lease is not renewed for longer than one renewal interval (10 s)
/// and than the BMC's longest reset delay (11 s).
async fn lease_stays(client: &Client, node: &str, why: &str) {
    let last = renew_time(client, node).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(renew_time(client, node).await, last, "{why}");
}

/// Waits for the node's kubelet to renew its Lease once more.
async fn lease_renewed(client: &Client, node: &str) {
    let before = renew_time(client, node)
        .await
        .expect("the node has a Lease");
    eventually(
        Duration::from_secs(20),
        "the Lease to be renewed",
        || async { Ok(renew_time(client, node).await.filter(|t| *t != before)) },
    )
    .await
    .unwrap();
}

async fn ready_status(client: &Client, node: &str) -> anyhow::Result<Option<String>> {
    let node = Api::<Node>::all(client.clone()).get(node).await?;
    let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
    Ok(conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status))
}

async fn boot_id(client: &Client, node: &str) -> String {
    let node = Api::<Node>::all(client.clone()).get(node).await.unwrap();
    node.status.unwrap().node_info.unwrap().boot_id
}

#[tokio::test]
async fn powered_off_node_stops_heartbeating_and_boots_again_with_a_new_boot_id() {
    let client = client().await.unwrap();
    let node = TestNode::add("e2e-power", 1).unwrap();
    lease_renewed(&client, &node.name).await;
    let boot_before = boot_id(&client, &node.name).await;

    node.power_off().unwrap();
    lease_stays(&client, &node.name, "a dead node renews nothing").await;
    // node-monitor-grace-period (40 s by default) plus the controller's 5 s monitor period.
    eventually(
        Duration::from_secs(90),
        "the node to be marked not ready",
        || async {
            Ok(ready_status(&client, &node.name)
                .await?
                .filter(|s| s != "True"))
        },
    )
    .await
    .unwrap();

    node.power_on().unwrap();
    eventually(
        Duration::from_secs(30),
        "the node to be Ready again",
        || async {
            Ok(ready_status(&client, &node.name)
                .await?
                .filter(|s| s == "True"))
        },
    )
    .await
    .unwrap();
    assert_ne!(
        boot_id(&client, &node.name).await,
        boot_before,
        "a power cycle changes the bootID"
    );
}

#[tokio::test]
async fn volume_is_attached_to_the_pods_node_and_detached_when_it_goes() {
    let client = client().await.unwrap();
    let namespace = TestNamespace::create(&client, "attach").await.unwrap();
    let node = TestNode::add("e2e-attach", 1).unwrap();
    let ns = namespace.name.as_str();
    let pv_name = create_rbd_claim(&client, ns, "config").await.unwrap();
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node.name},
                 "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "config"}}]}
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();

    let attachments: Api<VolumeAttachment> = Api::all(client.clone());
    let mine = |va: &VolumeAttachment| {
        va.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str())
    };
    let attached = eventually(
        Duration::from_secs(60),
        "the volume to be attached",
        || async {
            let list = attachments.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|va| mine(va) && va.status.as_ref().is_some_and(|s| s.attached)))
        },
    )
    .await
    .unwrap();
    assert_eq!(attached.spec.node_name, node.name);
    assert_eq!(attached.spec.attacher, "rbd.csi.ceph.com");

    pods.delete("user", &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the volume to be detached",
        || async {
            let list = attachments.list(&ListParams::default()).await?;
            Ok((!list.items.iter().any(mine)).then_some(()))
        },
    )
    .await
    .unwrap();
    volumes
        .delete(&pv_name, &DeleteParams::default())
        .await
        .ok();
}

async fn bmc_says(bmc: &BmcEndpoint, state: &str, within: Duration) {
    let want = match state {
        "On" => 0,
        "Off" => 2,
        _ => panic!("no status code for {state}"),
    };
    eventually(within, &format!("the BMC to say {state}"), || async {
        Ok((bmc.fence_redfish("status", false).unwrap() == Some(want)).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bmc_goes_off_after_power_off_and_on_again_with_a_new_boot() {
    let client = client().await.unwrap();
    let node = TestNode::add("e2e-bmc", 1).unwrap();
    let bmc = node.bmc().unwrap();
    let uuid = Api::<Node>::all(client.clone())
        .get(&node.name)
        .await
        .unwrap()
        .status
        .unwrap()
        .node_info
        .unwrap()
        .system_uuid;
    assert_eq!(
        bmc.system_path,
        format!("/redfish/v1/Systems/{uuid}"),
        "the BMC's system is the node's SMBIOS UUID"
    );
    assert_eq!(
        bmc.fence_redfish("status", true).unwrap(),
        Some(0),
        "a running node's BMC says on, over TLS verified with {}",
        bmc.ca_file
    );
    let wrong = BmcEndpoint {
        password: "not-the-password".into(),
        ..bmc.clone()
    };
    assert_eq!(
        wrong.fence_redfish("status", false).unwrap(),
        Some(1),
        "the BMC rejects a wrong password"
    );
    let boot_before = boot_id(&client, &node.name).await;

    node.power_off().unwrap();
    let last = renew_time(&client, &node.name).await;
    // The fake hardware applies a reset 1 to 11 s after it is asked.
    bmc_says(&bmc, "Off", Duration::from_secs(15)).await;
    assert_eq!(
        renew_time(&client, &node.name).await,
        last,
        "the kubelet died with the power"
    );

    node.power_on().unwrap();
    assert_eq!(
        bmc.fence_redfish("status", false).unwrap(),
        Some(0),
        "power-on returns once the BMC says on"
    );
    assert_eq!(
        ready_status(&client, &node.name).await.unwrap().as_deref(),
        Some("True")
    );
    assert_ne!(boot_id(&client, &node.name).await, boot_before);
}

#[tokio::test]
async fn partitioned_node_stays_on_stops_heartbeating_and_reconnects_with_the_same_boot() {
    let client = client().await.unwrap();
    let node = TestNode::add("e2e-partition", 1).unwrap();
    let bmc = node.bmc().unwrap();
    let boot_before = boot_id(&client, &node.name).await;

    node.partition().unwrap();
    lease_stays(
        &client,
        &node.name,
        "a partitioned node's Lease is not renewed",
    )
    .await;
    assert_eq!(
        bmc.fence_redfish("status", false).unwrap(),
        Some(0),
        "a partitioned node is still powered on"
    );
    assert!(
        node.power_on().is_err(),
        "a partitioned machine that is still on cannot be booted"
    );

    node.reconnect().unwrap();
    assert_eq!(
        ready_status(&client, &node.name).await.unwrap().as_deref(),
        Some("True")
    );
    assert_eq!(
        boot_id(&client, &node.name).await,
        boot_before,
        "a healed partition is the same boot"
    );
    lease_renewed(&client, &node.name).await;
}

async fn phase(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.status?.phase
}

/// `(node, attached)` of the VolumeAttachments of a PV.
async fn attachments_of(client: &Client, pv: &str) -> Vec<(String, bool)> {
    let list = Api::<VolumeAttachment>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(pv))
        .map(|va| {
            let attached = va.status.is_some_and(|s| s.attached);
            (va.spec.node_name, attached)
        })
        .collect()
}

#[tokio::test]
async fn pod_with_a_csi_claim_runs_only_once_its_volume_is_attached_to_its_node() {
    let client = client().await.unwrap();
    let namespace = TestNamespace::create(&client, "gate").await.unwrap();
    let ns = namespace.name.as_str();
    let first = TestNode::add("e2e-gate-a", 0).unwrap();
    let second = TestNode::add("e2e-gate-b", 0).unwrap();
    let pv_name = create_rbd_claim(&client, ns, "data").await.unwrap();
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod_on = |name: &str, node: &str, claim: bool| {
        let volumes = if claim {
            json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])
        } else {
            json!([])
        };
        serde_json::from_value::<Pod>(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "busybox"}], "volumes": volumes}
        }))
        .unwrap()
    };
    let running = |name: &'static str| {
        let pods = pods.clone();
        move || {
            let pods = pods.clone();
            async move { Ok(phase(&pods, name).await.filter(|p| p == "Running")) }
        }
    };

    // A pod without a claim does not wait for anything.
    pods.create(
        &PostParams::default(),
        &pod_on("plain", &second.name, false),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the plain pod to run",
        running("plain"),
    )
    .await
    .unwrap();

    pods.create(&PostParams::default(), &pod_on("first", &first.name, true))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the first pod to run",
        running("first"),
    )
    .await
    .unwrap();
    assert_eq!(
        attachments_of(&client, &pv_name).await,
        vec![(first.name.clone(), true)],
        "running means attached to its node"
    );

    // The volume is ReadWriteOnce and in use on the first node: the attach/detach controller
    // does not attach it to the second one, so a kubelet there would not start the pod.
    pods.create(
        &PostParams::default(),
        &pod_on("second", &second.name, true),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        phase(&pods, "second").await.as_deref(),
        Some("Pending"),
        "the second pod must wait while its volume is attached to {}",
        first.name
    );
    assert!(
        !attachments_of(&client, &pv_name)
            .await
            .iter()
            .any(|(node, attached)| *node == second.name && *attached),
        "nothing attached the volume to {}",
        second.name
    );

    pods.delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the second pod to run once the volume moved",
        running("second"),
    )
    .await
    .unwrap();
    assert!(
        attachments_of(&client, &pv_name)
            .await
            .contains(&(second.name.clone(), true)),
        "the volume is attached to {} when its pod runs",
        second.name
    );
    pods.delete("second", &DeleteParams::default()).await.ok();
    eventually(
        Duration::from_secs(60),
        "the volume to be detached",
        || async {
            Ok(attachments_of(&client, &pv_name)
                .await
                .is_empty()
                .then_some(()))
        },
    )
    .await
    .unwrap();
    volumes
        .delete(&pv_name, &DeleteParams::default())
        .await
        .ok();
}
