//! Command-line interface. Every flag can also be set from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jellyfin_ha_certs::CertFiles;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::admin::{self, AdminState};
use crate::config::load_policy;
use crate::manifests::{self, OutputFormat};
use crate::metrics::{Metrics, ReloadLabels};
use crate::webhook::{self, WebhookState};
use crate::{serve, shutdown};

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
    /// Mutate manifests offline exactly as the webhook would, and print the result.
    Mutate(MutateArgs),
    /// Generate a CA and a serving certificate for local clusters and tests.
    Certs(CertsArgs),
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// HTTPS address for admission reviews.
    #[arg(long, env = "JELLYFIN_HA_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain; re-read when it changes.
    #[arg(long, env = "JELLYFIN_HA_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key; re-read when it changes.
    #[arg(long, env = "JELLYFIN_HA_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Policy file (YAML); every field has a default.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Plain-HTTP address for /livez, /readyz and /metrics.
    #[arg(long, env = "JELLYFIN_HA_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// How long a shutdown waits for in-flight requests.
    #[arg(long, env = "JELLYFIN_HA_SHUTDOWN_SECONDS", default_value_t = 20)]
    pub shutdown_seconds: u64,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "JELLYFIN_HA_CERT_RELOAD_SECONDS", default_value_t = 10)]
    pub cert_reload_seconds: u64,
}

#[derive(Debug, Args)]
struct MutateArgs {
    /// Manifest file (YAML, multi-document YAML, JSON or a v1/List), or - for stdin.
    #[arg(short = 'f', long = "filename")]
    filename: PathBuf,
    /// Policy file (YAML), as given to the webhook.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    config: Option<PathBuf>,
    #[arg(short, long, default_value = "yaml")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long)]
    out_dir: PathBuf,
    /// DNS names and IP addresses the serving certificate is valid for.
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    names: Vec<String>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Webhook(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run_webhook(args))),
        Command::Mutate(args) => run_mutate(args),
        Command::Certs(args) => run_certs(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
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
    let policy = load_policy(args.config.as_deref())?;
    let documents = manifests::parse_documents(&manifests::read_input(&args.filename)?)?;
    let mutated = manifests::mutate_documents(documents, &policy)?;
    for warning in mutated.iter().flat_map(manifests::Mutated::warnings) {
        eprintln!("warning: {warning}");
    }
    print!("{}", manifests::render(&mutated, args.output)?);
    Ok(())
}

fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    let generated = jellyfin_ha_certs::generate(&args.names)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    for (name, pem) in [
        ("ca.crt", &generated.ca_pem),
        ("tls.crt", &generated.cert_pem),
        ("tls.key", &generated.key_pem),
    ] {
        let path = args.out_dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "wrote ca.crt, tls.crt and tls.key to {}",
        args.out_dir.display()
    );
    Ok(())
}

async fn run_webhook(args: WebhookArgs) -> anyhow::Result<()> {
    let policy = Arc::new(load_policy(args.config.as_deref())?);
    let certs = CertFiles::load(&args.tls_cert, &args.tls_key)?;
    let tls = Arc::new(certs.server_config()?);
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown::on_signals();

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, "webhook serving");

    tokio::spawn(reload_certificates(
        certs,
        Duration::from_secs(args.cert_reload_seconds.max(1)),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let admin_app = admin::router(AdminState {
        ready: Arc::clone(&ready),
        metrics: Arc::clone(&metrics),
    });
    let admin = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    ready.store(true, Ordering::Release);
    let not_ready_on_shutdown = {
        let (ready, shutdown) = (Arc::clone(&ready), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            ready.store(false, Ordering::Release);
        }
    };
    tokio::spawn(not_ready_on_shutdown);

    let app = webhook::router(WebhookState { policy, metrics });
    serve::serve_tls(
        listener,
        tls,
        app,
        shutdown,
        Duration::from_secs(args.shutdown_seconds),
    )
    .await;
    admin
        .await
        .context("admin server task")?
        .context("admin server")?;
    Ok(())
}

/// Polls the certificate files: kubelet replaces a mounted Secret by swapping a symlink, which
/// file-change notifications on the files themselves miss.
async fn reload_certificates(
    certs: Arc<CertFiles>,
    every: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let result = match certs.reload() {
            Ok(false) => continue,
            Ok(true) => {
                tracing::info!("serving certificate reloaded");
                "success"
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the serving certificate; keeping the current one");
                "error"
            }
        };
        metrics
            .certificate_reloads
            .get_or_create(&ReloadLabels {
                result: result.to_string(),
            })
            .inc();
    }
}
