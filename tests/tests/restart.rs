//! Restarting a webhook replica behind its Service while pods are being created loses no
//! admission: kube-apiserver reaches the webhook through the Service's endpoints, as in a
//! cluster, two replicas serve, and one is stopped with SIGTERM and replaced mid-stream. An
//! endpoints controller in the test follows the replicas' readiness a moment late, as the
//! real one does. Every pod must be created, and every one mutated (the webhook's
//! failurePolicy is Ignore: a refused call would admit a pod unmutated).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jellyfin_ha_e2e::{
    OWN_REGISTRATION, RoleProcess, TestNamespace, admin_response, client, eventually,
    kubeconfig_path, repo_root,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const SERVICE: &str = "jellyfin-ha-webhook";
/// Pods created per second while a replica restarts.
const RATE: u64 = 10;
/// How late the endpoints follow a replica's readiness: a readiness probe's period and the
/// endpoints controller's reaction, kept shorter than a cluster's.
const ENDPOINTS_LAG: Duration = Duration::from_millis(1500);

/// This host's address on its default route: Endpoints may not name loopback.
fn host_address() -> String {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    // No packet is sent: connecting a UDP socket only picks the route and source address.
    socket
        .connect(("192.0.2.1", 9))
        .expect("a default route: the Service's endpoint is this host's address");
    socket.local_addr().unwrap().ip().to_string()
}

/// The replicas an endpoints controller would list: (HTTPS port, admin address).
type Replicas = Arc<Mutex<Vec<(u16, String)>>>;

/// Keeps one EndpointSlice per replica of the Service, ready as the replica's `/readyz` says,
/// checking every [`ENDPOINTS_LAG`], until `stop`; a replica no longer listed loses its slice.
async fn endpoints_controller(
    client: Client,
    namespace: String,
    host: String,
    replicas: Replicas,
    stop: Arc<AtomicBool>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let mut published: BTreeMap<u16, bool> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let known = replicas.lock().unwrap().clone();
        for (port, admin) in &known {
            let ready = admin_response(admin, "/readyz").is_ok_and(|(status, _)| status == 200);
            if published.get(port) == Some(&ready) {
                continue;
            }
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{SERVICE}-{port}"), "labels": {
                    "kubernetes.io/service-name": SERVICE,
                    "endpointslice.kubernetes.io/managed-by": "jellyfin-ha-e2e",
                }},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [host], "conditions": {"ready": ready}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            });
            api.patch(
                &format!("{SERVICE}-{port}"),
                &PatchParams::apply("jellyfin-ha-e2e").force(),
                &Patch::Apply(&slice),
            )
            .await
            .unwrap();
            published.insert(*port, ready);
        }
        let gone: Vec<u16> = published
            .keys()
            .filter(|port| !known.iter().any(|(p, _)| p == *port))
            .copied()
            .collect();
        for port in gone {
            let _ = api
                .delete(&format!("{SERVICE}-{port}"), &DeleteParams::default())
                .await;
            published.remove(&port);
        }
        tokio::time::sleep(ENDPOINTS_LAG).await;
    }
}

fn opted_in(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"jellyfin-ha.io/inject": "true"}},
        "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn restarting_a_replica_under_load_admits_every_pod_mutated() {
    let client = client().await.unwrap();
    let namespace =
        TestNamespace::create_labelled(&client, "restart", &[(OWN_REGISTRATION, "true")])
            .await
            .unwrap();
    let ns = namespace.name.clone();
    let host = host_address();
    let dns = format!("{SERVICE}.{ns}.svc");
    let dir = repo_root().join(format!("target/e2e-restart/{ns}"));
    let kubeconfig = kubeconfig_path();
    // The shipped shutdown delay: without it, 8 of 120 pods went in unmutated here.
    let args = ["--namespace", ns.as_str()];
    let names = [dns.as_str()];
    let start = || RoleProcess::start_at("webhook", &host, &names, &dir, &kubeconfig, &args);
    let mut first = start().await.unwrap();
    let second = start().await.unwrap();

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "https", "port": 443}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let replicas: Replicas = Arc::new(Mutex::new(vec![
        (first.port, first.served.admin.clone()),
        (second.port, second.served.admin.clone()),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let controller = tokio::spawn(endpoints_controller(
        client.clone(),
        ns.clone(),
        host.clone(),
        Arc::clone(&replicas),
        Arc::clone(&stop),
    ));
    let _registration = first
        .served
        .register_own_service(&client, &ns, SERVICE)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        Duration::from_secs(20),
        "the Service to route admissions to the replicas (kube-apiserver needs \
         --enable-aggregator-routing, as hack/envtest.sh up starts it)",
        || async {
            let probe = pods.create(&dry_run, &opted_in("probe")).await?;
            Ok(probe
                .annotations()
                .contains_key("jellyfin-ha.io/mutations")
                .then_some(()))
        },
    )
    .await
    .unwrap();

    // The stream: RATE pods a second for 12 s; the restart begins after 3 s.
    let creating = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(1000 / RATE));
            for i in 0..RATE * 12 {
                ticks.tick().await;
                if let Err(e) = pods
                    .create(&PostParams::default(), &opted_in(&format!("p-{i}")))
                    .await
                {
                    refused.push(format!("p-{i}: {e}"));
                }
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = first.terminate(Duration::from_secs(30)).await.unwrap();
    assert!(
        status.success(),
        "the replica exits 0 after SIGTERM: {status}"
    );
    replicas
        .lock()
        .unwrap()
        .retain(|(port, _)| *port != first.port);
    let replacement = start().await.unwrap();
    replicas
        .lock()
        .unwrap()
        .push((replacement.port, replacement.served.admin.clone()));
    let refused = creating.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    controller.await.unwrap();

    let created = pods.list(&ListParams::default()).await.unwrap().items;
    let unmutated: Vec<String> = created
        .iter()
        .filter(|pod| !pod.annotations().contains_key("jellyfin-ha.io/mutations"))
        .map(ResourceExt::name_any)
        .collect();
    println!(
        "restart under load: {} pods asked for, {} created, {} refused, {} unmutated",
        RATE * 12,
        created.len(),
        refused.len(),
        unmutated.len()
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(unmutated.is_empty(), "admitted unmutated: {unmutated:?}");
    assert_eq!(created.len() as u64, RATE * 12);
    let reviews: u64 = [&second, &replacement]
        .iter()
        .map(|replica| replica.served.reviews_of("Pod").unwrap())
        .sum();
    assert!(reviews > 0, "the replicas that stayed up reviewed pods");
}
