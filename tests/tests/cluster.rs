//! The local control plane behaves like a home lab: kwok nodes heartbeat like kubelets, die
//! and come back like machines, and the real attach/detach controller moves CSI volumes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use jellyfin_ha_e2e::{TestNamespace, TestNode, client, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

async fn renew_time(client: &Client, node: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get_opt(node).await.ok()??;
    lease.spec?.renew_time.map(|t| t.0.to_string())
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
    let first = renew_time(&client, &node.name)
        .await
        .expect("the node has a Lease");
    eventually(
        Duration::from_secs(20),
        "the Lease to be renewed",
        || async {
            Ok(renew_time(&client, &node.name)
                .await
                .filter(|t| *t != first))
        },
    )
    .await
    .unwrap();
    let boot_before = boot_id(&client, &node.name).await;

    node.power_off().unwrap();
    let last = renew_time(&client, &node.name).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        renew_time(&client, &node.name).await,
        last,
        "a dead node renews nothing"
    );
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
    let pv_name = format!("{ns}-config");

    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd",
                 "persistentVolumeReclaimPolicy": "Delete", "claimRef": {"namespace": ns, "name": "config"},
                 "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": pv_name}}
    });
    volumes
        .create(&PostParams::default(), &serde_json::from_value(pv).unwrap())
        .await
        .unwrap();
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "config"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd", "resources": {"requests": {"storage": "1Gi"}}}
    });
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(claim).unwrap(),
        )
        .await
        .unwrap();
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
