//! Command-line interface. Every flag can also be set from the environment.

use std::ffi::OsStr;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use jellyfin_ha_core::Policy;
use jellyfin_ha_core::config::RenderGroupsSource;
use jellyfin_ha_core::extender::ExtenderPolicy;
use jellyfin_ha_core::scheduling::Scheduling;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::admin::{self, AdminState, ReadyCheck};
use crate::config::load_config;
use crate::extender::ExtenderState;
use crate::manifests::{self, OutputFormat};
use crate::metrics::Metrics;
use crate::reflect::{self, SharedSnapshot, SyncState};
use crate::webhook::{self, WebhookState};
use crate::{certificates, doctor, explain, fencer, follow, scheduling, serve, shutdown};

#[derive(Debug, Parser)]
#[command(
    name = "jellyfin-ha",
    version,
    about = "Fast failover for a single-replica QuickSync Jellyfin on Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        env = "JELLYFIN_HA_LOG_FORMAT",
        default_value = "plain"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the mutating admission webhook (POST /mutate) over HTTPS.
    Webhook(WebhookArgs),
    /// Serve the kube-scheduler extender (POST /filter, POST /prioritize) over HTTPS.
    Extender(ExtenderRoleArgs),
    /// Serve the webhook and the extender from one process, on two ports, with one
    /// certificate and one admin port, and run the fencer beside them.
    Serve(ServeArgs),
    /// Prove silent nodes powered off through their fence devices, taint them out-of-service
    /// so Jellyfin's volume moves at once, and untaint them after a power cycle.
    Fencer(fencer::FencerArgs),
    /// Measure this node's iGPU engine busyness and health from DRM fdinfo, serve them on
    /// /metrics and publish them for the extender.
    Agent(crate::agent::AgentArgs),
    /// Mutate manifests offline exactly as the webhook would, and print the result.
    Mutate(MutateArgs),
    /// Show, from the live cluster, why each node passes or fails the extender's filter for a
    /// pod, and how it scores.
    Explain(explain::ExplainArgs),
    /// Check, from the live cluster, whether Jellyfin will fail over, how fast, and what to
    /// fix; exits non-zero when a check fails. Read-only.
    Doctor(doctor::DoctorArgs),
    /// Certificates: generate a CA and a serving certificate for local clusters and tests, or
    /// print the scheduler's extender TLS stanza from a self-managed Secret.
    Certs(certificates::CertsArgs),
}

/// Flags every HTTPS role shares.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub namespace: Namespace,
    #[command(flatten)]
    pub tls: certificates::TlsArgs,
    /// Config file (YAML): the webhook's policy and the `extender:` section. Every field has
    /// a default.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Plain-HTTP address for /livez, /readyz and /metrics. /readyz turns true once the
    /// ports listen and, for the extender, every cache has synced.
    #[arg(long, env = "JELLYFIN_HA_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// How long a shutdown waits for in-flight requests.
    #[arg(long, env = "JELLYFIN_HA_SHUTDOWN_SECONDS", default_value_t = 20)]
    pub shutdown_seconds: u64,
    /// How long the ports keep accepting after SIGTERM, with /readyz already false: the
    /// endpoints of a Service follow readiness a few seconds late, and kube-apiserver admits
    /// a pod unmutated when its call is refused (failurePolicy Ignore).
    #[arg(long, env = "JELLYFIN_HA_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    pub shutdown_delay_seconds: u64,
}

/// The namespace jellyfin-ha is installed in, unless the downward API says otherwise.
pub const DEFAULT_NAMESPACE: &str = "jellyfin-ha";

/// The namespace a role runs in and keeps its objects in: config and scheduling ConfigMaps,
/// certificate and credential Secrets, Leases, node agent reports.
#[derive(Debug, Clone, Args)]
pub struct Namespace {
    /// jellyfin-ha's namespace (in the manifests, the pod's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// jellyfin-ha's namespace, for the commands where `-n` names the user's.
#[derive(Debug, Clone, Args)]
pub struct InstallNamespace {
    /// The namespace jellyfin-ha is installed in: its config, reports and fencer Lease.
    #[arg(long, env = "JELLYFIN_HA_INSTALL_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub install_namespace: String,
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// HTTPS address for admission reviews.
    #[arg(long, env = "JELLYFIN_HA_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Which scheduler places opted-in pods: `configmap` follows that ConfigMap, as the
    /// scheduling overlays expect; `none`, `extender` or `scheduler:NAME` fix it, with no API
    /// access needed.
    #[arg(
        long,
        env = "JELLYFIN_HA_SCHEDULING",
        default_value = "configmap",
        value_parser = scheduling::parse_source
    )]
    pub scheduling: scheduling::Source,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ExtenderRoleArgs {
    /// HTTPS address for the scheduler's filter and prioritize calls.
    #[arg(
        long,
        env = "JELLYFIN_HA_EXTENDER_LISTEN",
        default_value = "0.0.0.0:8444"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS address for admission reviews.
    #[arg(
        long,
        env = "JELLYFIN_HA_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub webhook_listen: SocketAddr,
    /// HTTPS address for the scheduler's filter and prioritize calls.
    #[arg(
        long,
        env = "JELLYFIN_HA_EXTENDER_LISTEN",
        default_value = "0.0.0.0:8444"
    )]
    pub extender_listen: SocketAddr,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub fencer: fencer::FencerFlags,
}

#[derive(Debug, Args)]
struct MutateArgs {
    /// Manifest file (YAML, multi-document YAML, JSON or a v1/List), or - for stdin.
    #[arg(short = 'f', long = "filename")]
    filename: PathBuf,
    /// Policy file (YAML), as given to the webhook.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    config: Option<PathBuf>,
    /// Which scheduler places opted-in pods, as the webhook reads it from the ConfigMap
    /// jellyfin-ha-scheduling: `none` (no ConfigMap), `extender`, or `scheduler:NAME` for a
    /// second scheduler.
    #[arg(long, default_value = "none", value_parser = scheduling::parse)]
    scheduling: Scheduling,
    #[arg(short, long, default_value = "yaml")]
    output: OutputFormat,
}

pub fn main() -> ExitCode {
    let cli = parse_command_line();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Webhook(args) => webhook::runtime()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run_webhook(args))),
        Command::Extender(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run_extender(args))),
        Command::Serve(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run_serve(args))),
        Command::Fencer(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(fencer::run(args))),
        Command::Agent(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(crate::agent::run(args))),
        Command::Mutate(args) => run_mutate(args),
        Command::Explain(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(explain::run(args))),
        Command::Doctor(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(doctor::run(args))),
        Command::Certs(args) => certificates::run_certs(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line; usage and errors show the name the binary was invoked as.
fn parse_command_line() -> Cli {
    let program = std::env::args_os().next().unwrap_or_default();
    let matches = Cli::command()
        .bin_name(invoked_name(&program))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The name a user typed: kubectl runs `kubectl jellyfin-ha` as the program
/// `kubectl-jellyfin_ha` found on PATH.
fn invoked_name(program: &OsStr) -> String {
    let file = Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("jellyfin-ha");
    match file.strip_prefix("kubectl-") {
        Some(plugin) => format!("kubectl {}", plugin.replace('_', "-")),
        None => file.to_string(),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run_mutate(args: MutateArgs) -> anyhow::Result<()> {
    let policy = Policy {
        scheduling: args.scheduling,
        ..load_config(args.config.as_deref())?
    };
    let documents = manifests::parse_documents(&manifests::read_input(&args.filename)?)?;
    let mutated = manifests::mutate_documents(documents, &policy)?;
    for warning in mutated.iter().flat_map(manifests::Mutated::warnings) {
        eprintln!("warning: {warning}");
    }
    print!("{}", manifests::render(&mutated, args.output)?);
    Ok(())
}

/// What every HTTPS role is served with.
struct RoleServer {
    /// Each role's HTTPS address and routes; they share the certificate and admin port.
    roles: Vec<(&'static str, SocketAddr, Router)>,
    /// What keeps `/readyz` false after start-up.
    ready_checks: Vec<ReadyCheck>,
    args: ServerArgs,
}

async fn run_webhook(args: WebhookArgs) -> anyhow::Result<()> {
    let policy = load_config(args.server.config.as_deref())?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown::on_signals();
    let follows_cluster = matches!(args.scheduling, scheduling::Source::ConfigMap)
        || policy.render_groups_from == RenderGroupsSource::Agents;
    let policy = Arc::new(ArcSwap::from_pointee(match &args.scheduling {
        scheduling::Source::Fixed(scheduling) => Policy {
            scheduling: scheduling.clone(),
            ..policy
        },
        scheduling::Source::ConfigMap => policy,
    }));
    let ready_checks = if follows_cluster {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
        let scheduling = &args.scheduling;
        follow_cluster(
            client,
            &args.server.namespace.namespace,
            scheduling,
            &policy,
            &shutdown,
        )
    } else {
        Vec::new()
    };
    let app = webhook::router(WebhookState {
        policy,
        metrics: Arc::clone(&metrics),
    });
    let server = RoleServer {
        roles: vec![("webhook", args.listen, app)],
        ready_checks,
        args: args.server,
    };
    // Nothing to wait for: ready as soon as both ports listen.
    let ready_when = |ready: Arc<AtomicBool>| async move { ready.store(true, Ordering::Release) };
    serve_roles(server, metrics, ready, ready_when, shutdown).await
}

async fn run_extender(args: ExtenderRoleArgs) -> anyhow::Result<()> {
    let policy = Arc::new(load_config(args.server.config.as_deref())?.extender);
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown::on_signals();
    let (app, state) = start_extender(
        policy,
        &args.server.namespace.namespace,
        &metrics,
        &shutdown,
    )
    .await?;
    let synced = state.synced.clone();
    let server = RoleServer {
        roles: vec![("extender", args.listen, app)],
        ready_checks: vec![state.ready_check()],
        args: args.server,
    };
    let ready_when = ready_when_synced(synced, shutdown.clone());
    serve_roles(server, metrics, ready, ready_when, shutdown).await
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(args.server.config.as_deref())?;
    let (extender_policy, fencer_policy) = (config.extender.clone(), config.fencer.clone());
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown::on_signals();
    let (extender_app, extender) = start_extender(
        Arc::new(extender_policy),
        &args.server.namespace.namespace,
        &metrics,
        &shutdown,
    )
    .await?;
    let synced = extender.synced.clone();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let policy = Arc::new(ArcSwap::from_pointee(config));
    let followed = follow_cluster(
        client.clone(),
        &args.server.namespace.namespace,
        &scheduling::Source::ConfigMap,
        &policy,
        &shutdown,
    );
    let webhook_app = webhook::router(WebhookState {
        policy,
        metrics: Arc::clone(&metrics),
    });
    // The fencer has its own caches; serve's readiness stays the extender's.
    let fencer = tokio::spawn(fencer::lead(
        client,
        Arc::new(fencer_policy),
        args.fencer,
        args.server.namespace.namespace.clone(),
        Arc::clone(&metrics),
        Arc::new(AtomicBool::new(false)),
        shutdown.clone(),
    ));
    let server = RoleServer {
        roles: vec![
            ("webhook", args.webhook_listen, webhook_app),
            ("extender", args.extender_listen, extender_app),
        ],
        // A stale extender view does not make serve unready: that would take the webhook out
        // of its Service with it, when most nodes look dead and it is needed most. The
        // extender's answers are errors meanwhile, which the scheduler skips.
        ready_checks: followed,
        args: args.server,
    };
    let ready_when = ready_when_synced(synced, shutdown.clone());
    let served = serve_roles(server, metrics, ready, ready_when, shutdown.clone()).await;
    shutdown.cancel();
    fencer.await.context("fencer")??;
    served
}

/// Starts following what the webhook's policy takes from the cluster (the scheduling
/// ConfigMap, the node agents' render groups), as `source` and the policy say; returns the
/// readiness checks of those that hold readiness.
fn follow_cluster(
    client: kube::Client,
    namespace: &str,
    source: &scheduling::Source,
    policy: &Arc<ArcSwap<Policy>>,
    shutdown: &CancellationToken,
) -> Vec<ReadyCheck> {
    let mut checks = Vec::new();
    if matches!(source, scheduling::Source::ConfigMap) {
        let (policy, stop) = (Arc::clone(policy), shutdown.clone());
        checks.push(scheduling::follow(client.clone(), namespace, policy, stop));
    }
    if policy.load().render_groups_from == RenderGroupsSource::Agents {
        let (policy, stop) = (Arc::clone(policy), shutdown.clone());
        follow::render_groups(client, namespace, policy, stop);
    }
    checks
}

/// Connects to the API, starts the watchers and returns the extender's routes and state.
async fn start_extender(
    policy: Arc<ExtenderPolicy>,
    namespace: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Router, ExtenderState)> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let snapshot = SharedSnapshot::default();
    let synced = SyncState::default();
    reflect::spawn_watchers(
        &client,
        Arc::clone(&policy),
        namespace,
        &snapshot,
        &synced,
        shutdown,
    );
    let state = ExtenderState::new(snapshot, synced, policy, Arc::clone(metrics));
    Ok((crate::extender::router(state.clone()), state))
}

/// Ready once every cache holds its first full list: before that, filter would reject nodes
/// it simply has not seen yet.
fn ready_when_synced(
    synced: SyncState,
    stop: CancellationToken,
) -> impl FnOnce(Arc<AtomicBool>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    move |ready| {
        Box::pin(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            while !synced.is_synced() {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
            }
            tracing::info!("every cache synced; ready");
            ready.store(true, Ordering::Release);
        })
    }
}

/// Serves each role over TLS and the admin port until the shutdown signal, reloading the
/// certificate as it changes. `/readyz` turns true when `ready_when` has set `ready`, and
/// false again on shutdown.
async fn serve_roles<F, Fut>(
    server: RoleServer,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    ready_when: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    F: FnOnce(Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let served = certificates::start(
        &server.args.tls,
        &server.args.namespace.namespace,
        &metrics,
        &shutdown,
    )
    .await?;
    let tls = Arc::new(served.server_config()?);
    let mut listeners = Vec::with_capacity(server.roles.len());
    for (role, listen, app) in server.roles {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen} for the {role}"))?;
        tracing::info!(role, %listen, "serving");
        listeners.push((listener, app));
    }
    let admin_listener = TcpListener::bind(server.args.admin_listen)
        .await
        .with_context(|| format!("binding {}", server.args.admin_listen))?;
    tracing::info!(admin = %server.args.admin_listen, "admin port");

    let admin_app = admin::router_with_checks(
        AdminState {
            ready: Arc::clone(&ready),
            metrics,
        },
        server.ready_checks,
    );
    // On the signal, unready first; accepting stops only once the Service has had time to
    // take this replica out, and then in-flight requests drain.
    let stop_accepting = CancellationToken::new();
    let admin = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned())
            .into_future(),
    );
    tokio::spawn(ready_when(Arc::clone(&ready)));
    let unready_then_stop = {
        let (ready, shutdown, stop) =
            (Arc::clone(&ready), shutdown.clone(), stop_accepting.clone());
        let delay = Duration::from_secs(server.args.shutdown_delay_seconds);
        async move {
            shutdown.cancelled().await;
            ready.store(false, Ordering::Release);
            tracing::info!(
                ?delay,
                "unready; still accepting while the Service catches up"
            );
            tokio::time::sleep(delay).await;
            stop.cancel();
        }
    };
    tokio::spawn(unready_then_stop);

    let drain = Duration::from_secs(server.args.shutdown_seconds);
    futures::future::join_all(listeners.into_iter().map(|(listener, app)| {
        serve::serve_tls(
            listener,
            Arc::clone(&tls),
            app,
            stop_accepting.clone(),
            drain,
        )
    }))
    .await;
    admin
        .await
        .context("admin server task")?
        .context("admin server")?;
    Ok(())
}

/// The error and its causes on one line, skipping a cause whose text the message before it
/// already quotes (thiserror messages often include their source).
fn describe_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubectl_plugin_is_named_as_kubectl_users_type_it() {
        let name = |program: &str| invoked_name(OsStr::new(program));
        assert_eq!(
            name("/usr/local/bin/kubectl-jellyfin_ha"),
            "kubectl jellyfin-ha"
        );
        assert_eq!(name("./target/release/jellyfin-ha"), "jellyfin-ha");
        assert_eq!(name(""), "jellyfin-ha");
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let error = anyhow::Error::new(io)
            .context("reading /x: No such file")
            .context("starting the webhook");
        assert_eq!(
            describe_error(&error),
            "starting the webhook: reading /x: No such file"
        );
    }
}
