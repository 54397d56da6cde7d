//! Times one failover on the local cluster: runs a command that kills Jellyfin's node (for
//! example `hack/envtest.sh node-power-off nuc-3`), then watches until the replacement pod runs
//! with its volume attached, and prints when each step happened:
//!
//! ```text
//! failover --namespace media --selector app.kubernetes.io/name=jellyfin --pv jellyfin-config \
//!     [--timeout 900] -- hack/envtest.sh node-power-off nuc-3
//! ```
//!
//! Ends with `failover: N.N s` and `dual-attach samples: N` (samples in which the volume was
//! attached to two nodes at once). Exits 0 when Jellyfin recovered, 3 when it did not in time.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde_json::Value;

const SAMPLE: Duration = Duration::from_millis(100);

struct Args {
    namespace: String,
    selector: String,
    pv: String,
    timeout: Duration,
    command: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut namespace, mut selector, mut pv, mut timeout) = (None, None, None, 900);
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--namespace" => namespace = Some(value()?),
            "--selector" => selector = Some(value()?),
            "--pv" => pv = Some(value()?),
            "--timeout" => timeout = value()?.parse().context("--timeout takes seconds")?,
            "--" => {
                command = args.by_ref().collect();
                break;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if command.is_empty() {
        bail!(
            "usage: failover --namespace NS --selector LABELS --pv PV [--timeout S] -- COMMAND..."
        );
    }
    Ok(Args {
        namespace: namespace.context("--namespace is required")?,
        selector: selector.context("--selector is required")?,
        pv: pv.context("--pv is required")?,
        timeout: Duration::from_secs(timeout),
        command,
    })
}

/// What one sample of the cluster shows.
struct Sample {
    /// Pods not being deleted: (name, node, running).
    pods: Vec<(String, Option<String>, bool)>,
    /// Pods being deleted, which a dead kubelet never finishes.
    terminating: Vec<String>,
    /// Nodes the volume is attached to, and those still holding an attachment.
    attached: Vec<String>,
    held: Vec<String>,
}

async fn sample(
    pods: &Api<Pod>,
    attachments: &Api<VolumeAttachment>,
    args: &Args,
) -> anyhow::Result<Sample> {
    let listed = pods
        .list(&ListParams::default().labels(&args.selector))
        .await?;
    let (terminating, live): (Vec<Pod>, Vec<Pod>) = listed
        .items
        .into_iter()
        .partition(|p| p.metadata.deletion_timestamp.is_some());
    let terminating = terminating
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let pods = live
        .into_iter()
        .map(|p| {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let node = p.spec.and_then(|s| s.node_name);
            (p.metadata.name.unwrap_or_default(), node, running)
        })
        .collect();
    let vas: Vec<VolumeAttachment> = attachments
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(args.pv.as_str()))
        .collect();
    Ok(Sample {
        attached: vas
            .iter()
            .filter(|va| va.status.as_ref().is_some_and(|s| s.attached))
            .map(|va| va.spec.node_name.clone())
            .collect(),
        held: vas.iter().map(|va| va.spec.node_name.clone()).collect(),
        pods,
        terminating,
    })
}

/// The steps of a failover, each with when it was first seen.
#[derive(Default)]
struct Timeline {
    steps: Vec<(Timestamp, String)>,
}

impl Timeline {
    fn mark(&mut self, at: Timestamp, what: impl Into<String>) {
        let what = what.into();
        if !self.steps.iter().any(|(_, w)| *w == what) {
            self.steps.push((at, what));
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let args = parse_args()?;
    let client = jellyfin_ha_e2e::client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let attachments: Api<VolumeAttachment> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);

    let before = sample(&pods, &attachments, &args).await?;
    let Some((old_pod, Some(old_node), true)) = before.pods.first().cloned() else {
        bail!(
            "no running pod matches {} in {}",
            args.selector,
            args.namespace
        );
    };
    if before.attached != [old_node.clone()] {
        bail!(
            "{} is not attached to {old_node} alone: {:?}",
            args.pv,
            before.attached
        );
    }

    let t0 = Timestamp::now();
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no command to run");
    };
    let status = Command::new(program).args(rest).status()?;
    if !status.success() {
        bail!("{} failed: {status}", args.command.join(" "));
    }
    let mut timeline = Timeline::default();
    timeline.mark(
        t0,
        format!("{old_node} powered off ({})", args.command.join(" ")),
    );
    let mut dual_attach = 0u32;
    let mut recovered = None;
    while t0.duration_until(Timestamp::now()).unsigned_abs() < args.timeout {
        let now = Timestamp::now();
        let seen = sample(&pods, &attachments, &args).await?;
        if seen.attached.len() > 1 {
            dual_attach += 1;
        }
        let node = nodes.get(&old_node).await?;
        let annotation = |key: &str| {
            node.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(|v| serde_json::from_str::<Value>(v).ok())
        };
        if let Some(record) = annotation("jellyfin-ha.io/fenced") {
            let field = |key: &str| record.get(key).and_then(Value::as_str);
            let time = |key: &str| field(key).and_then(|t| t.parse::<Timestamp>().ok());
            if let (Some(suspected), Some(proven), Some(fenced)) =
                (time("suspectedAt"), time("provenAt"), time("fencedAt"))
            {
                timeline.mark(suspected, "suspected: Lease renewal overdue");
                timeline.mark(
                    proven,
                    format!("proved off ({})", field("proof").unwrap_or("?")),
                );
                timeline.mark(fenced, "tainted node.kubernetes.io/out-of-service");
            }
        }
        if seen.terminating.contains(&old_pod) {
            timeline.mark(now, format!("old pod {old_pod} terminating"));
        } else if !seen.pods.iter().any(|(name, _, _)| *name == old_pod) {
            timeline.mark(now, format!("old pod {old_pod} deleted"));
        }
        let replacement = seen
            .pods
            .iter()
            .find(|(name, node, _)| *name != old_pod && node.is_some());
        if let Some((name, Some(new_node), running)) = replacement {
            timeline.mark(now, format!("new pod {name} bound to {new_node}"));
            if !seen.held.contains(&old_node) {
                timeline.mark(now, format!("volume detached from {old_node}"));
            }
            if seen.attached.contains(new_node) {
                timeline.mark(now, format!("volume attached to {new_node}"));
                if *running {
                    timeline.mark(now, format!("new pod {name} Running"));
                    recovered = Some(now);
                    break;
                }
            }
        }
        tokio::time::sleep(SAMPLE).await;
    }
    timeline.steps.sort_by_key(|(at, _)| *at);
    for (at, what) in &timeline.steps {
        println!("  +{:6.1} s  {what}", t0.duration_until(*at).as_secs_f64());
    }
    match recovered {
        Some(at) => println!("failover: {:.1} s", t0.duration_until(at).as_secs_f64()),
        None => println!("failover: not recovered after {} s", args.timeout.as_secs()),
    }
    println!("dual-attach samples: {dual_attach}");
    Ok(recovered.is_some())
}
