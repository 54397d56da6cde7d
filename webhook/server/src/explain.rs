//! `jellyfin-ha explain POD`: the extender's verdict on every node for one pod, from the live
//! cluster, computed by the same core functions the extender runs.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use jellyfin_ha_core::extender::decide::NodeFacts;
use jellyfin_ha_core::extender::{self, ExtenderPolicy, NodeVerdict};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;

use crate::config::load_config;
use crate::kubeconfig::KubeArgs;
use crate::reflect;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pod's name.
    pub pod: String,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Config file (YAML), as given to the extender; its `extender:` section is used.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node agents' reports are.
    #[command(flatten)]
    pub install: crate::cli::InstallNamespace,
}

pub async fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let policy = load_config(args.config.as_deref())?.extender;
    let client = args.kube.client().await?;
    let namespace = client.default_namespace().to_string();
    let pod = Api::<Pod>::namespaced(client.clone(), &namespace)
        .get_opt(&args.pod)
        .await
        .with_context(|| format!("getting pod {namespace}/{}", args.pod))?
        .with_context(|| {
            format!(
                "no pod {} in namespace {namespace} (another namespace: -n NAMESPACE)",
                args.pod
            )
        })?;
    let snapshot = reflect::list_once(&client, &policy, &args.install.install_namespace).await?;
    let nodes = snapshot.node_names();
    let now = Timestamp::now();
    // A one-off list has no watch to go silent; the Leases can still be stale at once.
    if let Some(stale) = extender::staleness(&[], &snapshot, &policy, now) {
        eprintln!(
            "note: the extender answers every call with an error now, so kube-scheduler \
             places managed pods without it: {stale}"
        );
    }
    let verdicts = extender::explain(&pod, &nodes, &snapshot, &policy, now);
    let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    print!(
        "{}",
        render(&namespace, &args.pod, bound, verdicts, &policy)
    );
    if bound.is_none() {
        match last_attempt(&client, &namespace, &pod).await {
            Ok(Some(said)) => println!("the scheduler's last attempt: {said}"),
            Ok(None) => {}
            Err(e) => eprintln!("note: the scheduler's last attempt is unknown: {e}"),
        }
    }
    Ok(())
}

/// What kube-scheduler said when it last failed to place the pod (its FailedScheduling Event
/// carries the extender's reasons for the candidates it was given), with how long ago.
async fn last_attempt(
    client: &kube::Client,
    namespace: &str,
    pod: &Pod,
) -> anyhow::Result<Option<String>> {
    let Some(uid) = pod.metadata.uid.as_deref() else {
        return Ok(None);
    };
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.uid={uid},reason=FailedScheduling");
    let list = events
        .list(&ListParams::default().fields(&selector))
        .await
        .context("listing the pod's Events")?;
    let when = |event: &Event| {
        let time = event.event_time.as_ref().map(|t| t.0);
        time.or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
    };
    let Some(latest) = list.items.iter().max_by_key(|event| when(event)) else {
        return Ok(None);
    };
    let ago = when(latest)
        .map(|at| format!(" ({}s ago)", Timestamp::now().duration_since(at).as_secs()))
        .unwrap_or_default();
    Ok(Some(format!(
        "{}{ago}",
        latest.message.as_deref().unwrap_or_default()
    )))
}

/// The table, passing nodes first, best score first, then by name.
pub fn render(
    namespace: &str,
    pod: &str,
    bound: Option<&str>,
    mut verdicts: Vec<NodeVerdict>,
    policy: &ExtenderPolicy,
) -> String {
    verdicts.sort_by(|a, b| {
        b.passes
            .cmp(&a.passes)
            .then(b.total.cmp(&a.total))
            .then(a.node.cmp(&b.node))
    });
    let weights = policy.weights;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pod {namespace}/{pod}: {}; score parts 0-100, weights gpu {} volume {} flapping {}, total 0-10",
        bound.map_or_else(|| "not scheduled".to_string(), |n| format!("on node {n}")),
        weights.gpu_load,
        weights.volume_locality,
        weights.flapping,
    );
    let header = [
        "NODE",
        "PASS",
        "GPU",
        "VOLUME",
        "FLAPPING",
        "TOTAL",
        "PODS",
        "LEASE-AGE",
        "MEASURED",
        "REASONS",
    ];
    let rows: Vec<[String; 10]> = verdicts
        .iter()
        .map(|v| {
            let facts = &v.facts;
            let node = if Some(v.node.as_str()) == bound {
                format!("{}*", v.node)
            } else {
                v.node.clone()
            };
            [
                node,
                match (v.passes, v.depends_on_candidates.is_empty()) {
                    (true, _) => "yes",
                    (false, true) => "no",
                    (false, false) => "depends",
                }
                .to_string(),
                v.score_parts.gpu_load.to_string(),
                v.score_parts
                    .volume_locality
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                v.score_parts.flapping.to_string(),
                v.total.to_string(),
                match facts.gpu_capacity {
                    Some(capacity) => format!("{}/{capacity}", facts.managed_pods),
                    None => format!("{}/-", facts.managed_pods),
                },
                facts
                    .lease_age_seconds
                    .map_or_else(|| "-".to_string(), |age| format!("{age}s")),
                measured(facts, policy),
                if v.reasons.is_empty() {
                    "-".to_string()
                } else if v.depends_on_candidates.is_empty() {
                    v.reasons.join("; ")
                } else {
                    format!(
                        "{}; passes when the scheduler does not offer {}",
                        v.reasons.join("; "),
                        v.depends_on_candidates.join(" or ")
                    )
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: &[&str]| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    if bound.is_some() {
        let _ = writeln!(out, "* the node the pod is bound to");
    }
    if verdicts.iter().any(|v| !v.depends_on_candidates.is_empty()) {
        let _ = writeln!(
            out,
            "depends: the extender sees only the nodes kube-scheduler's own filters passed; a \
             node holding the pod's volume pins the pod to it only when it is among them"
        );
    }
    out
}

/// The node agent's measured load and the age of its report: `37% 4s ago`; `stale 90s ago`
/// past `gpuBusyFreshSeconds` (then it counts as unknown); `no GPU 4s ago` when the agent
/// found no usable card; `-` without a report.
fn measured(facts: &NodeFacts, policy: &ExtenderPolicy) -> String {
    let Some(age) = facts.report_age_seconds else {
        return "-".to_string();
    };
    match facts.measured_busy_percent {
        Some(percent) => format!("{percent}% {age}s ago"),
        None if age.abs() > i64::from(policy.gpu_busy_fresh_seconds) => {
            format!("stale {age}s ago")
        }
        None => format!("no GPU {age}s ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jellyfin_ha_core::extender::ScoreParts;

    fn verdict(node: &str, passes: bool, total: i64, reasons: &[&str]) -> NodeVerdict {
        NodeVerdict {
            node: node.into(),
            passes,
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            score_parts: ScoreParts {
                gpu_load: 50,
                volume_locality: None,
                flapping: 100,
            },
            total,
            facts: NodeFacts {
                lease_age_seconds: Some(4),
                managed_pods: 1,
                gpu_capacity: Some(2),
                ..NodeFacts::default()
            },
            depends_on_candidates: Vec::new(),
        }
    }

    #[test]
    fn a_verdict_that_depends_on_the_candidates_says_so() {
        let mut pinned = verdict(
            "qs-1",
            false,
            3,
            &["volume of claim config is attached to healthy node qs-3"],
        );
        pinned.depends_on_candidates = vec!["qs-3".into()];
        let table = render(
            "media",
            "jellyfin-0",
            None,
            vec![pinned, verdict("qs-3", true, 7, &[])],
            &ExtenderPolicy::default(),
        );
        let row = table.lines().find(|l| l.starts_with("qs-1")).unwrap();
        assert!(row.contains(" depends "), "{table}");
        assert!(
            row.ends_with("passes when the scheduler does not offer qs-3"),
            "{table}"
        );
        assert!(
            table.lines().last().unwrap().starts_with("depends: "),
            "{table}"
        );
    }

    #[test]
    fn table_lists_passing_nodes_first_best_first() {
        let table = render(
            "media",
            "jellyfin-0",
            Some("qs-2"),
            vec![
                verdict(
                    "dead",
                    false,
                    3,
                    &["heartbeat lease not renewed in the last 20s"],
                ),
                verdict("qs-1", true, 5, &[]),
                verdict("qs-2", true, 7, &[]),
            ],
            &ExtenderPolicy::default(),
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("pod media/jellyfin-0: on node qs-2"),
            "{table}"
        );
        assert!(lines[1].starts_with("NODE"), "{table}");
        assert!(lines[2].starts_with("qs-2*"), "{table}");
        assert!(lines[3].starts_with("qs-1 "), "{table}");
        assert!(lines[4].starts_with("dead "), "{table}");
        assert!(
            lines[4].ends_with("heartbeat lease not renewed in the last 20s"),
            "{table}"
        );
        assert!(lines[4].contains(" no "), "{table}");
        // Columns line up.
        let column = lines[1].find("TOTAL").unwrap();
        assert_eq!(&lines[2][column..column + 1], "7");
    }

    #[test]
    fn measured_load_shows_with_its_age() {
        let policy = ExtenderPolicy::default();
        let facts = |busy, age| NodeFacts {
            measured_busy_percent: busy,
            report_age_seconds: age,
            ..NodeFacts::default()
        };
        assert_eq!(measured(&facts(Some(37), Some(4)), &policy), "37% 4s ago");
        assert_eq!(measured(&facts(None, Some(90)), &policy), "stale 90s ago");
        assert_eq!(measured(&facts(None, Some(4)), &policy), "no GPU 4s ago");
        assert_eq!(measured(&facts(None, None), &policy), "-");
    }
}
