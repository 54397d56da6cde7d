//! Pod creation latency through the real kube-apiserver, with and without the webhook in the
//! path, printed as `BENCH <name> <value> <unit>`. Plain and opted-in creations alternate so
//! that drift in the apiserver or etcd affects both alike.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use jellyfin_ha_e2e::{TestNamespace, Webhook, client};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const WARMUP: usize = 20;
const CREATIONS: usize = 250;

fn pod(name: &str, opted_in: bool) -> Pod {
    let annotations: Value = if opted_in {
        json!({"jellyfin-ha.io/inject": "true"})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7"}]}
    }))
    .unwrap()
}

fn p50_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let client = client().await.unwrap();
    let webhook = Webhook::from_env().unwrap();
    webhook.register(&client).await.unwrap();
    let namespace = TestNamespace::create(&client, "bench").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &namespace.name);
    // The webhook configuration reaches the apiserver asynchronously.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let reviews_before = webhook.reviews_of("Pod").unwrap();
    let (mut plain, mut mutated) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + CREATIONS {
        for opted_in in [false, true] {
            let name = format!("{}-{i}", if opted_in { "webhook" } else { "plain" });
            let started = Instant::now();
            let created = pods
                .create(&PostParams::default(), &pod(&name, opted_in))
                .await
                .unwrap();
            let elapsed = started.elapsed();
            let was_mutated = created
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("jellyfin-ha.io/mutations");
            assert_eq!(
                was_mutated, opted_in,
                "{name}: the webhook must see exactly the opted-in pods"
            );
            if i >= WARMUP {
                if opted_in {
                    mutated.push(elapsed)
                } else {
                    plain.push(elapsed)
                }
            }
        }
    }
    let reviews = webhook.reviews_of("Pod").unwrap() - reviews_before;
    assert_eq!(
        reviews,
        (WARMUP + CREATIONS) as u64,
        "only opted-in pods reached the webhook"
    );

    let (plain_ms, webhook_ms) = (p50_ms(&mut plain), p50_ms(&mut mutated));
    println!("BENCH pod_create_p50_ms_plain {plain_ms:.3} ms");
    println!("BENCH pod_create_p50_ms_webhook {webhook_ms:.3} ms");
    println!(
        "BENCH pod_create_latency_ratio_with_webhook {:.3} ratio",
        webhook_ms / plain_ms
    );
}
