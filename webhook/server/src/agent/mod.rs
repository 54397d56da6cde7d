//! The node agent: samples its node's iGPU engine busyness and health every interval from
//! DRM fdinfo, shows them on `/metrics`, and with `--publish cluster` writes them to the node's
//! report ConfigMap for the extender.
//!
//! The node-wide figure is the sum of the DRM clients' fdinfo counters, not the i915/xe PMU:
//! fdinfo needs only `/proc` (hostPID and ptrace-read access), gives per-pod attribution
//! from the same read, and works the same for both drivers; the PMU would add `CAP_PERFMON`
//! and a second code path for a figure fdinfo already yields.

pub mod metrics;
pub mod publish;
pub mod scan;
pub mod synthetic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use jellyfin_ha_core::busyness::publish::{DEFAULT_MIN_CHANGE, should_publish};
use jellyfin_ha_core::busyness::{AgentReport, Sampler};
use k8s_openapi::jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::load_config;
use crate::metrics::Metrics;
use crate::shutdown;
use metrics::{AgentMetrics, OutcomeLabels};
use publish::Publisher;
use scan::Roots;

/// The shortest sampling interval accepted: reading xe fdinfo wakes the GPU.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishTo {
    /// Write the node's report ConfigMap.
    Cluster,
    /// Only serve /metrics; needs no cluster.
    None,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node this agent runs on; names its report and labels its metrics.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Config file (YAML), checked as every role checks it.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the host's /proc is mounted; with hostPID the container's own /proc is it.
    #[arg(long, env = "JELLYFIN_HA_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where the host's /sys is mounted.
    #[arg(long, env = "JELLYFIN_HA_SYS_ROOT", default_value = "/sys")]
    pub sys_root: PathBuf,
    /// Where the host's /dev is mounted (the agent reads /dev/dri under it).
    #[arg(long, env = "JELLYFIN_HA_DEV_ROOT", default_value = "/dev")]
    pub dev_root: PathBuf,
    /// How often to sample, e.g. `2s`. At least 100ms; reading xe fdinfo wakes the GPU, so
    /// keep it at seconds on xe hosts.
    #[arg(long, env = "JELLYFIN_HA_INTERVAL", default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Where the report goes besides /metrics.
    #[arg(long, env = "JELLYFIN_HA_PUBLISH", default_value = "cluster")]
    pub publish: PublishTo,
    /// The longest the report goes unwritten when nothing moves; keep it well under the
    /// extender's `gpuBusyFreshSeconds`.
    #[arg(long, env = "JELLYFIN_HA_REFRESH", default_value = "15s", value_parser = parse_interval)]
    pub refresh: Duration,
    /// Where the report ConfigMap goes.
    #[command(flatten)]
    pub namespace: crate::cli::Namespace,
    /// Plain-HTTP address for /livez, /readyz and /metrics. /readyz turns true after the
    /// first full interval has been measured.
    #[arg(long, env = "JELLYFIN_HA_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if interval < MIN_INTERVAL {
        return Err(format!("{value} is shorter than {MIN_INTERVAL:?}"));
    }
    Ok(interval)
}

/// `jellyfin-ha agent`: samples until the shutdown signal.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    load_config(args.config.as_deref())?;
    let mut metrics = Metrics::default();
    let agent_metrics = AgentMetrics::register(&mut metrics.registry);
    let metrics = Arc::new(metrics);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", args.admin_listen))?;
    tracing::info!(admin = %args.admin_listen, node = %args.node, "agent admin port");
    let admin_app = admin::router(AdminState {
        ready: Arc::clone(&ready),
        metrics,
    });
    let admin = tokio::spawn(
        axum::serve(listener, admin_app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let publisher = match args.publish {
        PublishTo::None => None,
        PublishTo::Cluster => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
            Some(Publisher::new(
                client,
                &args.namespace.namespace,
                &args.node,
            ))
        }
    };
    sample_until(&args, &agent_metrics, &ready, publisher.as_ref(), &stop).await?;
    stop.cancel();
    admin
        .await
        .context("admin server")?
        .context("admin server")?;
    Ok(())
}

async fn sample_until(
    args: &AgentArgs,
    metrics: &AgentMetrics,
    ready: &AtomicBool,
    publisher: Option<&Publisher>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let roots = Roots {
        proc: args.proc_root.clone(),
        sys: args.sys_root.clone(),
        dev: args.dev_root.clone(),
    };
    let started = Instant::now();
    let mut sampler = Sampler::new();
    let mut published: Option<AgentReport> = None;
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let roots = roots.clone();
        let sample_seconds = metrics.sample_seconds.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let cards = scan::cards(&roots);
            let (seen, counts) = scan::clients(&roots, &cards);
            sample_seconds.observe(began.elapsed().as_secs_f64());
            (began, cards, seen, counts)
        });
        let (began, cards, seen, counts) = scan.await.context("the sampling task")?;
        let at_ns = u64::try_from(began.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        let Some(busyness) = sampler.sample(seen, at_ns) else {
            continue;
        };
        let report = AgentReport::assemble(&args.node, Timestamp::now(), cards, &busyness);
        metrics.record(&report, counts);
        ready.store(true, Ordering::Release);
        let Some(publisher) = publisher else {
            continue;
        };
        let refresh = args.refresh.as_secs();
        if !should_publish(published.as_ref(), &report, DEFAULT_MIN_CHANGE, refresh) {
            continue;
        }
        let outcome = match publisher.publish(&report).await {
            Ok(()) => {
                published = Some(report);
                "ok"
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the node's report; retrying next sample");
                "error"
            }
        };
        metrics
            .publishes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }
}
