//! Node agents for kwok nodes, each sampling a synthetic /proc, /sys and /dev, publish their
//! reports to the cluster; the extender behind a real kube-scheduler places a managed pod on
//! the node measured less busy when pod counts are equal, filters the node whose agent finds
//! no usable GPU, and `explain` shows both. An agent's token may write only its own node's
//! report.
//!
//! Ignored by default; run with `hack/e2e-extender.sh --test agent`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jellyfin_ha::agent::synthetic::{SyntheticCard, SyntheticHost, i915_fdinfo};
use jellyfin_ha_core::busyness::AgentReport;
use jellyfin_ha_core::busyness::report::{REPORT_KEY, report_object_name};
use jellyfin_ha_e2e::{
    TestNamespace, TestNode, client, eventually, kubeconfig_path, kubectl, repo_root,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

/// Where the extender and the agents keep reports (`start_extender` runs it with the default).
const REPORTS_NAMESPACE: &str = "jellyfin-ha";
const PDEV: &str = "0000:00:02.0";
/// First admin port of this test's agents.
const AGENT_ADMIN_PORT: u16 = 19280;

struct Env {
    scheduler_name: String,
    bin: String,
    config: String,
}

fn env() -> Env {
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run hack/e2e-extender.sh --test agent"))
    };
    Env {
        scheduler_name: var("JFHA_E2E_SCHEDULER_NAME"),
        bin: var("JFHA_E2E_BIN"),
        config: var("JFHA_E2E_EXTENDER_CONFIG"),
    }
}

/// One node's agent on its synthetic host, and the thread that keeps its GPU as busy as
/// `busy` says; stopped and its report deleted when dropped.
struct NodeAgent {
    node: String,
    child: Child,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl NodeAgent {
    /// `busy`: the render engine's share of wall time; `None`: the card has no render node
    /// and another driver, so the agent finds no usable GPU.
    fn start(env: &Env, node: &str, busy: Option<f64>, admin_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = SyntheticHost::create(dir.path()).unwrap();
        host.add_card(&SyntheticCard {
            index: 0,
            pci_address: PDEV,
            driver: "i915",
            device_node: busy.is_some(),
        })
        .unwrap();
        host.add_process(4242, Some("aaaaaaaa-0000-4000-8000-000000004242"))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (host, stop) = (host.clone(), Arc::clone(&stop));
            let rate = busy.unwrap_or(0.0);
            std::thread::spawn(move || {
                let started = Instant::now();
                let fdinfo = |started: Instant| {
                    let ns = (started.elapsed().as_nanos() as f64 * rate) as u64;
                    i915_fdinfo(1, PDEV, &[("render", ns), ("video", 0)], &[])
                };
                // The fd once; then only its counters, replaced whole: re-making the link
                // each time would let the agent catch the client gone, and its load at 0.
                host.add_fd(4242, 3, "/dev/dri/renderD128", &fdinfo(started))
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    host.set_fdinfo(4242, 3, &fdinfo(started)).unwrap();
                }
            })
        };
        let child = Command::new(&env.bin)
            .env("KUBECONFIG", kubeconfig_path())
            .args(["agent", "--node", node, "--publish", "cluster"])
            .args([
                "--namespace",
                REPORTS_NAMESPACE,
                "--interval",
                "500ms",
                "--refresh",
                "5s",
            ])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(host.agent_args())
            .spawn()
            .unwrap();
        Self {
            node: node.to_string(),
            child,
            stop,
            writer: Some(writer),
            _dir: dir,
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        let _ = kubectl(&[
            "delete",
            "configmap",
            "-n",
            REPORTS_NAMESPACE,
            &report_object_name(&self.node),
            "--ignore-not-found",
        ]);
    }
}

async fn report_of(client: &kube::Client, node: &str) -> anyhow::Result<Option<AgentReport>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), REPORTS_NAMESPACE);
    let Some(configmap) = api.get_opt(&report_object_name(node)).await? else {
        return Ok(None);
    };
    let json = configmap.data.unwrap_or_default().remove(REPORT_KEY);
    Ok(json.map(|j| AgentReport::from_json(&j)).transpose()?)
}

fn row<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|line| {
            line.split_whitespace()
                .next()
                .map(|n| n.trim_end_matches('*'))
                == Some(node)
        })
        .unwrap_or_else(|| panic!("no row for {node}:\n{table}"))
}

#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh --test agent"]
async fn measured_load_and_gpu_health_steer_the_extender() {
    let env = env();
    let client = client().await.unwrap();
    let namespace = TestNamespace::create(&client, "agent").await.unwrap();
    kubectl(&["create", "namespace", REPORTS_NAMESPACE]).ok();
    let names = ["agent-busy", "agent-idle", "agent-nogpu"];
    let nodes: Vec<TestNode> = names
        .iter()
        .map(|n| TestNode::named(n, 2).unwrap())
        .collect();
    for node in &nodes {
        node.label("jellyfin-ha.io/e2e-group", "agent").unwrap();
    }
    let _agents = [
        NodeAgent::start(&env, "agent-busy", Some(0.8), AGENT_ADMIN_PORT),
        NodeAgent::start(&env, "agent-idle", Some(0.0), AGENT_ADMIN_PORT + 1),
        NodeAgent::start(&env, "agent-nogpu", None, AGENT_ADMIN_PORT + 2),
    ];
    eventually(Duration::from_secs(30), "every agent's report", || async {
        let busy = report_of(&client, "agent-busy").await?;
        let idle = report_of(&client, "agent-idle").await?;
        let nogpu = report_of(&client, "agent-nogpu").await?;
        Ok(match (busy, idle, nogpu) {
            (Some(busy), Some(idle), Some(nogpu))
                if busy.busy_percent().is_some_and(|p| p >= 70)
                    && idle.busy_percent() == Some(0)
                    && !nogpu.has_usable_card() =>
            {
                Some(())
            }
            _ => None,
        })
    })
    .await
    .unwrap();

    // Equal pod counts: one managed pod already runs on each node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);
    for (i, node) in names.iter().enumerate() {
        let load: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("load-{i}"), "labels": {"jellyfin-ha.io/managed": "true"}},
            "spec": {"nodeName": node, "containers": [{"name": "transcode", "image": "jellyfin/jellyfin:10.10.7"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &load).await.unwrap();
    }
    let jellyfin: Pod = serde_json::from_value(json!({
        "metadata": {"name": "jellyfin", "labels": {"jellyfin-ha.io/managed": "true"}},
        "spec": {
            "schedulerName": env.scheduler_name,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "jellyfin-ha.io/e2e-group", "operator": "In", "values": ["agent"]}
                ]}]
            }}},
            "containers": [{
                "name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7",
                "resources": {"limits": {"jellyfin-ha.io/managed": "1"}}
            }]
        }
    }))
    .unwrap();
    // Let the extender's watches catch up with the pods and reports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pods.create(&PostParams::default(), &jellyfin)
        .await
        .unwrap();
    let bound = eventually(
        Duration::from_secs(30),
        "the pod to be scheduled",
        || async { Ok(pods.get("jellyfin").await?.spec.and_then(|s| s.node_name)) },
    )
    .await
    .unwrap();
    assert_eq!(bound, "agent-idle");

    let table = jellyfin_ha_e2e::explain(&namespace.name, "jellyfin", &env.config).unwrap();
    println!("{table}");
    let busy = row(&table, "agent-busy");
    let idle = row(&table, "agent-idle");
    let nogpu = row(&table, "agent-nogpu");
    assert!(busy.contains("% ") && busy.contains("s ago"), "{table}");
    assert!(idle.contains(" 0% "), "{table}");
    assert!(nogpu.contains("no GPU"), "{table}");
    assert!(
        nogpu.ends_with("node agent reports no usable GPU"),
        "{table}"
    );
    // The GPU score part is what sets the two apart: the scheduler did not pick by chance.
    let gpu_part = |row: &str| {
        row.split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u8>()
            .unwrap()
    };
    assert!(gpu_part(busy) < gpu_part(idle), "{table}");
    assert!(busy.split_whitespace().nth(1) == Some("yes"), "{table}");
    assert!(nogpu.split_whitespace().nth(1) == Some("no"), "{table}");
    drop(nodes);
}

/// The shipped agent manifests without the DaemonSet: the rights and the admission policy.
fn apply_agent_rights() {
    let text = std::fs::read_to_string(repo_root().join("manifests/agent/agent.yaml")).unwrap();
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|doc| !doc.contains("\nkind: DaemonSet\n"))
        .collect();
    let path = std::env::temp_dir().join(format!(
        "jellyfin-ha-agent-rights-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, kept.join("\n---\n")).unwrap();
    let output = kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        path.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_file(path);
}

/// A server-side apply of `name` with the agent's token; the error text if refused.
fn apply_as(token: &str, name: &str, node_label: &str) -> Result<(), String> {
    let server = String::from_utf8(
        kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
        .unwrap()
        .stdout,
    )
    .unwrap();
    let manifest = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": REPORTS_NAMESPACE, "labels": {"jellyfin-ha.io/node": node_label}},
        "data": {REPORT_KEY: "{}"}
    });
    let mut child = Command::new("kubectl")
        .args([
            "--kubeconfig=/dev/null",
            "--server",
            &server,
            "--token",
            token,
        ])
        .args(["--insecure-skip-tls-verify", "apply", "--server-side"])
        .args(["--field-manager=jellyfin-ha-agent", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Removes the pod the agent's bound token is issued for, at once.
fn delete_probe() {
    let _ = kubectl(&[
        "delete",
        "pod",
        "-n",
        REPORTS_NAMESPACE,
        "agent-own-probe",
        "--ignore-not-found",
        "--grace-period=0",
        "--force",
    ]);
}

#[tokio::test]
#[ignore = "needs the local control plane: run hack/e2e-extender.sh --test agent"]
async fn an_agent_writes_only_its_own_nodes_report() {
    kubectl(&["create", "namespace", REPORTS_NAMESPACE]).ok();
    apply_agent_rights();
    let node = TestNode::named("agent-own-1", 1).unwrap();
    let client = client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), REPORTS_NAMESPACE);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent-own-probe"},
        "spec": {
            "serviceAccountName": "jellyfin-ha-agent",
            "nodeName": node.name,
            "containers": [{"name": "agent", "image": "ghcr.io/jellyfin-ha/jellyfin-ha:0.1.0"}]
        }
    }))
    .unwrap();
    delete_probe();
    pods.create(&PostParams::default(), &probe).await.unwrap();
    // A token bound to the pod, as the kubelet mounts it: it names the pod's node.
    let token = kubectl(&[
        "create",
        "token",
        "jellyfin-ha-agent",
        "-n",
        REPORTS_NAMESPACE,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "agent-own-probe",
    ])
    .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    // A token bound to nothing names no node.
    let unbound = kubectl(&[
        "create",
        "token",
        "jellyfin-ha-agent",
        "-n",
        REPORTS_NAMESPACE,
    ])
    .unwrap();
    let unbound = String::from_utf8(unbound.stdout)
        .unwrap()
        .trim()
        .to_string();

    let own = report_object_name(&node.name);
    let others = report_object_name("agent-own-2");
    // The apiserver enforces a new ValidatingAdmissionPolicy once it has loaded it.
    let other = eventually(
        Duration::from_secs(30),
        "the agent's admission policy to take effect",
        || async { Ok(apply_as(&token, &others, &node.name).err()) },
    )
    .await;
    let result = apply_as(&token, &own, &node.name);
    let mislabelled = apply_as(&token, &own, "agent-own-2");
    let nameless = apply_as(&unbound, &own, &node.name);
    delete_probe();
    for report in [&own, &others] {
        let _ = kubectl(&[
            "delete",
            "configmap",
            "-n",
            REPORTS_NAMESPACE,
            report,
            "--ignore-not-found",
        ]);
    }
    result.unwrap();
    let other = other.unwrap();
    assert!(
        other.contains("may write only its own node's report"),
        "{other}"
    );
    let mislabelled = mislabelled.unwrap_err();
    assert!(
        mislabelled.contains("must name the agent's node"),
        "{mislabelled}"
    );
    let nameless = nameless.unwrap_err();
    assert!(nameless.contains("its token names no node"), "{nameless}");
}
