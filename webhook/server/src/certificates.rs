//! Where the serving certificate comes from: files that are re-read as they change (a mounted
//! Secret, cert-manager), or self-managed: one Secret that the replicas create, rotate and
//! publish into the webhook configuration's `caBundle` themselves.
//!
//! The kube IO lives here and the decisions in `jellyfin_ha_certs::lifecycle`, which stays free
//! of the kube client and the runtime, so what a rotation does is unit-tested without a cluster.
//! Replicas agree through the Secret's resourceVersion: a replica whose write conflicts re-reads
//! the Secret and goes on from what the winner wrote.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use jellyfin_ha_certs::lifecycle::{self, Lifetimes, Stored};
use jellyfin_ha_certs::{CertError, CertFiles, ServedCert};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ReloadLabels};

/// The serving certificate's source: `--tls-cert`/`--tls-key`, or `--cert-secret` for
/// self-managed certificates.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM certificate chain (for `serve`, valid for both Services' names); re-read when it
    /// changes.
    #[arg(long, env = "JELLYFIN_HA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key; re-read when it changes.
    #[arg(long, env = "JELLYFIN_HA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files, or the self-managed Secret's rotation, are checked.
    #[arg(long, env = "JELLYFIN_HA_CERT_RELOAD_SECONDS", default_value_t = 10)]
    pub cert_reload_seconds: u64,
    /// Self-managed certificates: the Secret (type kubernetes.io/tls) holding the CA and the
    /// serving certificate. Created when missing, rotated before expiry, shared by every
    /// replica; each serves what it holds.
    #[arg(long, env = "JELLYFIN_HA_CERT_SECRET")]
    pub cert_secret: Option<String>,
    /// Services the self-managed certificate is for: valid for SERVICE, SERVICE.NAMESPACE and
    /// SERVICE.NAMESPACE.svc.
    #[arg(
        long = "cert-service",
        env = "JELLYFIN_HA_CERT_SERVICES",
        value_delimiter = ','
    )]
    pub cert_services: Vec<String>,
    /// More DNS names or IP addresses for the self-managed certificate.
    #[arg(
        long = "cert-name",
        env = "JELLYFIN_HA_CERT_NAMES",
        value_delimiter = ','
    )]
    pub cert_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle is kept equal to the Secret's ca.crt.
    /// A new CA signs the served certificate only once it is published there.
    #[arg(long, env = "JELLYFIN_HA_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// Lifetime of a self-managed CA; a new one is made with a third of it left. Clients
    /// outside the cluster's API (the scheduler's caData) must be given the new CA by then.
    #[arg(long, env = "JELLYFIN_HA_CA_VALIDITY_SECONDS", default_value_t = 10 * 365 * DAY)]
    pub ca_validity_seconds: u64,
    /// Lifetime of a self-managed serving certificate; a new one is issued with a third of it
    /// left.
    #[arg(long, env = "JELLYFIN_HA_CERT_VALIDITY_SECONDS", default_value_t = 365 * DAY)]
    pub cert_validity_seconds: u64,
    /// How long a new CA is published in the caBundle before it signs the served certificate,
    /// so that every kube-apiserver trusts it first.
    #[arg(long, env = "JELLYFIN_HA_CA_PUBLISH_SECONDS", default_value_t = 60)]
    pub ca_publish_seconds: u64,
}

const DAY: u64 = 86_400;

/// Where the serving certificate comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    Files { cert: &'a PathBuf, key: &'a PathBuf },
    Secret(&'a str),
}

impl TlsArgs {
    /// The certificate's source; settings of the other source are an error, not ignored.
    fn source(&self) -> anyhow::Result<Source<'_>> {
        match (&self.cert_secret, &self.tls_cert, &self.tls_key) {
            (Some(secret), None, None) => Ok(Source::Secret(secret)),
            (None, Some(cert), Some(key)) => {
                anyhow::ensure!(
                    self.cert_services.is_empty()
                        && self.cert_names.is_empty()
                        && self.webhook_configuration.is_none(),
                    "--cert-service, --cert-name and --webhook-configuration are for \
                     self-managed certificates (--cert-secret), not --tls-cert"
                );
                Ok(Source::Files { cert, key })
            }
            _ => anyhow::bail!("give --tls-cert and --tls-key, or --cert-secret"),
        }
    }

    fn every(&self) -> Duration {
        Duration::from_secs(self.cert_reload_seconds.max(1))
    }

    /// The DNS names and addresses the self-managed certificate is valid for, its Services
    /// being in `namespace`.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        self.cert_services
            .iter()
            .flat_map(|service| {
                [
                    service.clone(),
                    format!("{service}.{namespace}"),
                    format!("{service}.{namespace}.svc"),
                ]
            })
            .chain(self.cert_names.iter().cloned())
            .collect()
    }
}

/// Loads the serving certificate, or stops start-up with an error naming it, and keeps it
/// current until `stop`.
pub async fn start(
    args: &TlsArgs,
    namespace: &str,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<ServedCert>> {
    let (cert, key) = match args.source()? {
        Source::Secret(secret) => {
            let client = Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
            let manager = SelfManaged::new(client, args, namespace, secret)?;
            let stored = manager.reconcile().await.with_context(|| {
                format!("self-managed certificate in Secret {namespace}/{secret}")
            })?;
            let served = ServedCert::new(stored.certified_key()?);
            set_expiry(metrics, stored.serving.not_after);
            tokio::spawn(manager.run(
                Arc::clone(&served),
                args.every(),
                Arc::clone(metrics),
                stop.clone(),
            ));
            return Ok(served);
        }
        Source::Files { cert, key } => (cert, key),
    };
    let files = CertFiles::load(cert, key)?;
    set_file_expiry(&files, metrics);
    let served = Arc::clone(files.served());
    let warnings = own_pod_warnings(namespace).await;
    tokio::spawn(reload_files(
        files,
        args.every(),
        Arc::clone(metrics),
        warnings,
        stop.clone(),
    ));
    Ok(served)
}

/// Events about this pod, when it runs in one (the downward API gives POD_NAME) and the API is
/// reachable; files served outside a cluster only log and count.
async fn own_pod_warnings(namespace: &str) -> Option<Warnings> {
    let name = std::env::var("POD_NAME").ok()?;
    let client = Client::try_default().await.ok()?;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    Some(Warnings::new(recorder(client), pod.object_ref(&())))
}

fn set_expiry(metrics: &Metrics, not_after: i64) {
    metrics.certificate_expiry.set(not_after);
}

fn set_file_expiry(files: &CertFiles, metrics: &Metrics) {
    if let Some(first) = lifecycle::parse_certificates(&files.cert_pem(), lifecycle::TLS_CERT)
        .ok()
        .and_then(|certs| certs.into_iter().next())
    {
        set_expiry(metrics, first.not_after);
    }
}

fn count_reload(metrics: &Metrics, result: &str) {
    metrics
        .certificate_reloads
        .get_or_create(&ReloadLabels {
            result: result.to_string(),
        })
        .inc();
}

/// Polls the certificate files: kubelet replaces a mounted Secret by swapping a symlink, which
/// file-change notifications on the files themselves miss.
async fn reload_files(
    files: Arc<CertFiles>,
    every: Duration,
    metrics: Arc<Metrics>,
    mut warnings: Option<Warnings>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        match files.reload() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("serving certificate reloaded");
                set_file_expiry(&files, &metrics);
                count_reload(&metrics, "success");
                warnings.iter_mut().for_each(Warnings::clear);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the serving certificate; keeping the current one");
                count_reload(&metrics, "error");
                if let Some(warnings) = &mut warnings {
                    warnings.warn(e.to_string()).await;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SelfManagedError {
    #[error("the Secret holds no usable certificate: {0}")]
    Broken(CertError),
    #[error(transparent)]
    Generate(#[from] CertError),
    #[error("{what}: {source}")]
    Kube {
        what: &'static str,
        source: kube::Error,
    },
    #[error("the {0} kept changing under this replica's writes")]
    Contended(&'static str),
}

fn kube_error(what: &'static str) -> impl FnOnce(kube::Error) -> SelfManagedError {
    move |source| SelfManagedError::Kube { what, source }
}

/// Where the CA bundle goes.
enum Publication {
    /// No webhook configuration (the extender): its clients are given the CA by hand.
    Nowhere,
    /// The configured one does not exist (yet).
    Missing(String),
    To(Box<MutatingWebhookConfiguration>),
}

/// One replica's share of keeping the self-managed Secret.
struct SelfManaged {
    secrets: Api<Secret>,
    webhook_configurations: Api<MutatingWebhookConfiguration>,
    recorder: Recorder,
    namespace: String,
    secret: String,
    webhook_configuration: Option<String>,
    names: Vec<String>,
    lifetimes: Lifetimes,
}

impl SelfManaged {
    fn new(client: Client, args: &TlsArgs, namespace: &str, secret: &str) -> anyhow::Result<Self> {
        let names = args.names(namespace);
        anyhow::ensure!(
            !names.is_empty(),
            "--cert-secret needs at least one --cert-service or --cert-name"
        );
        Ok(Self {
            secrets: Api::namespaced(client.clone(), namespace),
            webhook_configurations: Api::all(client.clone()),
            recorder: recorder(client),
            namespace: namespace.to_string(),
            secret: secret.to_string(),
            webhook_configuration: args.webhook_configuration.clone(),
            names,
            lifetimes: Lifetimes {
                ca: Duration::from_secs(args.ca_validity_seconds),
                serving: Duration::from_secs(args.cert_validity_seconds),
                publish_delay: Duration::from_secs(args.ca_publish_seconds),
            },
        })
    }

    /// Brings the Secret one step along its lifecycle if due (creating it when missing),
    /// publishes its CA bundle, and returns what it holds.
    async fn reconcile(&self) -> Result<Stored, SelfManagedError> {
        let names = lifecycle::canonical_names(&self.names);
        // Each conflict means another replica wrote; its content is re-read and built on.
        for _ in 0..5 {
            let secret = self
                .secrets
                .get_opt(&self.secret)
                .await
                .map_err(kube_error("reading the Secret"))?;
            let stored = secret.as_ref().map(parse).transpose()?;
            let published = match &stored {
                Some(stored) => self.signing_ca_published(stored).await?,
                None => false,
            };
            let now = unix_now();
            let step =
                lifecycle::next_step(stored.as_ref(), &names, now, published, &self.lifetimes);
            let next =
                lifecycle::perform(step, stored.as_ref(), &self.names, now, &self.lifetimes)?;
            let current = match (next, stored) {
                (None, Some(stored)) => stored,
                (Some(next), _) => match self.write(secret, &next).await {
                    Ok(()) => {
                        tracing::info!(secret = %self.secret, ?step, not_after = next.serving.not_after, "certificate Secret updated");
                        next
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        tracing::debug!(
                            ?step,
                            "another replica wrote the Secret first; re-reading"
                        );
                        continue;
                    }
                    Err(e) => return Err(kube_error("writing the Secret")(e)),
                },
                (None, None) => continue,
            };
            self.publish(&current).await?;
            return Ok(current);
        }
        Err(SelfManagedError::Contended("Secret"))
    }

    /// Creates the Secret, or replaces it at the resourceVersion it was read at.
    async fn write(&self, read: Option<Secret>, next: &Stored) -> Result<(), kube::Error> {
        let data = next
            .to_data()
            .into_iter()
            .map(|(key, value)| (key, ByteString(value)))
            .collect::<BTreeMap<_, _>>();
        match read {
            Some(mut secret) => {
                secret.data = Some(data);
                self.secrets
                    .replace(&self.secret, &PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.secret.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/name".to_string(),
                            "jellyfin-ha".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".to_string()),
                    data: Some(data),
                    ..Secret::default()
                };
                self.secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
        }
    }

    async fn webhook_configuration(&self) -> Result<Publication, SelfManagedError> {
        let Some(name) = &self.webhook_configuration else {
            return Ok(Publication::Nowhere);
        };
        let found = self
            .webhook_configurations
            .get_opt(name)
            .await
            .map_err(kube_error("reading the MutatingWebhookConfiguration"))?;
        Ok(found.map_or_else(
            || Publication::Missing(name.clone()),
            |found| Publication::To(Box::new(found)),
        ))
    }

    /// Whether every webhook of the configuration trusts the signing CA. Without a
    /// configuration to publish to there is nothing to wait for but the publish delay.
    async fn signing_ca_published(&self, stored: &Stored) -> Result<bool, SelfManagedError> {
        let configuration = match self.webhook_configuration().await? {
            Publication::Nowhere => return Ok(true),
            Publication::Missing(_) => return Ok(false),
            Publication::To(configuration) => configuration,
        };
        Ok(configuration.webhooks.iter().flatten().all(|webhook| {
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .and_then(|bundle| lifecycle::parse_certificates(&bundle.0, "caBundle").ok())
                .is_some_and(|cas| cas.iter().any(|ca| ca.der == stored.signing.der))
        }))
    }

    /// Sets every webhook's caBundle to the Secret's trust bundle, when it differs.
    async fn publish(&self, stored: &Stored) -> Result<(), SelfManagedError> {
        let bundle = ByteString(stored.ca_bundle_pem().into_bytes());
        // Each conflict means another replica (or an apply) changed the configuration since it
        // was read: read it again, and publish on top of that change or find it done.
        for _ in 0..5 {
            let mut configuration = match self.webhook_configuration().await? {
                Publication::Nowhere => return Ok(()),
                // Applied after the Deployment, it gets its caBundle on the next round.
                Publication::Missing(name) => {
                    tracing::warn!(webhook_configuration = %name, "not found; its caBundle is set once it exists");
                    return Ok(());
                }
                Publication::To(configuration) => *configuration,
            };
            let mut changed = false;
            for webhook in configuration.webhooks.iter_mut().flatten() {
                if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                    webhook.client_config.ca_bundle = Some(bundle.clone());
                    changed = true;
                }
            }
            if !changed {
                return Ok(());
            }
            let name = configuration.metadata.name.clone().unwrap_or_default();
            // At the resourceVersion read, so a concurrent change is never overwritten.
            match self
                .webhook_configurations
                .replace(&name, &PostParams::default(), &configuration)
                .await
            {
                Ok(_) => {
                    tracing::info!(webhook_configuration = %name, cas = stored.trusted().count(), "caBundle published");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::debug!(webhook_configuration = %name, "changed since read; re-reading");
                }
                Err(e) => return Err(kube_error("publishing the caBundle")(e)),
            }
        }
        Err(SelfManagedError::Contended("MutatingWebhookConfiguration"))
    }

    /// Serves what the Secret holds, as the watch shows it, and moves it along its lifecycle
    /// every `every`, until `stop`.
    async fn run(
        self,
        served: Arc<ServedCert>,
        every: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.secret));
        let mut changes = watcher::watcher(self.secrets.clone(), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let mut warnings = Warnings::new(self.recorder.clone(), secret.object_ref(&()));
        loop {
            let result = tokio::select! {
                _ = ticks.tick() => self.reconcile().await,
                Some(change) = changes.next() => match change {
                    Ok(secret) => parse(&secret),
                    Err(e) => {
                        tracing::debug!(error = %e, "watching the certificate Secret");
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            match result {
                Ok(stored) => {
                    warnings.clear();
                    serve(&stored, &served, &metrics);
                }
                Err(e) => {
                    tracing::warn!(secret = %self.secret, error = %e, "certificate not renewed; keeping the one served");
                    count_reload(&metrics, "error");
                    warnings.warn(e.to_string()).await;
                }
            }
        }
    }
}

/// Warning Events about one object when the served certificate cannot be replaced: each
/// distinct failure once, until one succeeds.
struct Warnings {
    recorder: Recorder,
    regarding: ObjectReference,
    last: Option<String>,
}

impl Warnings {
    fn new(recorder: Recorder, regarding: ObjectReference) -> Self {
        Self {
            recorder,
            regarding,
            last: None,
        }
    }

    fn clear(&mut self) {
        self.last = None;
    }

    async fn warn(&mut self, message: String) {
        if self.last.as_ref() == Some(&message) {
            return;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "CertificateNotRenewed".into(),
            note: Some(format!(
                "{message}; the previous certificate is still served"
            )),
            action: "Reload".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &self.regarding).await {
            tracing::warn!(error = %e, "could not record an Event");
        }
        self.last = Some(message);
    }
}

/// Who records Events: this pod, when the downward API names it.
fn recorder(client: Client) -> Recorder {
    let reporter = Reporter {
        controller: "jellyfin-ha".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Recorder::new(client, reporter)
}

fn parse(secret: &Secret) -> Result<Stored, SelfManagedError> {
    let data = secret.data.as_ref();
    Stored::parse(|key| data.and_then(|d| d.get(key)).map(|v| v.0.as_slice()))
        .map_err(SelfManagedError::Broken)
}

/// Swaps in the Secret's serving certificate when it is not the one served.
fn serve(stored: &Stored, served: &ServedCert, metrics: &Metrics) {
    if served.leaf_der() == stored.serving.der {
        return;
    }
    match stored.certified_key() {
        Ok(certified) => {
            served.store(certified);
            set_expiry(metrics, stored.serving.not_after);
            count_reload(metrics, "success");
            tracing::info!(
                issuer = %stored.serving.issuer,
                not_after = stored.serving.not_after,
                "serving the Secret's new certificate"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve the Secret's certificate; keeping the current one");
            count_reload(metrics, "error");
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: Option<CertsCommand>,
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long, required = true)]
    out_dir: Option<PathBuf>,
    /// DNS names and IP addresses the serving certificate is valid for.
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    names: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Print the extender stanza's `enableHTTPS` and `tlsConfig` for kube-scheduler's
    /// configuration, with the CA bundle from the extender's self-managed Secret.
    SchedulerTls(SchedulerTlsArgs),
}

#[derive(Debug, Args)]
struct SchedulerTlsArgs {
    #[command(flatten)]
    kube: crate::kubeconfig::KubeArgs,
    /// The extender's certificate Secret.
    #[arg(long, default_value = "jellyfin-ha-extender-tls")]
    secret: String,
}

pub fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    match (args.command, args.out_dir) {
        (Some(CertsCommand::SchedulerTls(args)), _) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")?
            .block_on(print_scheduler_tls(args)),
        (None, Some(out_dir)) => write_generated(&out_dir, &args.names),
        (None, None) => anyhow::bail!("give --out-dir DIR, or a subcommand"),
    }
}

fn write_generated(out_dir: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    let generated = jellyfin_ha_certs::generate(names)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for (name, pem) in [
        (lifecycle::CA_CERT, &generated.ca_pem),
        (lifecycle::TLS_CERT, &generated.cert_pem),
        (lifecycle::TLS_KEY, &generated.key_pem),
    ] {
        let path = out_dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("wrote ca.crt, tls.crt and tls.key to {}", out_dir.display());
    Ok(())
}

async fn print_scheduler_tls(args: SchedulerTlsArgs) -> anyhow::Result<()> {
    let client = args.kube.client().await?;
    let namespace = client.default_namespace().to_string();
    let secret = Api::<Secret>::namespaced(client, &namespace)
        .get(&args.secret)
        .await
        .with_context(|| format!("reading Secret {namespace}/{}", args.secret))?;
    let stanza = scheduler_tls_stanza(&secret)
        .with_context(|| format!("Secret {namespace}/{}", args.secret))?;
    print!("{stanza}");
    Ok(())
}

/// The scheduler's `tlsConfig` stanza for the extender, with the CA bundle from its Secret.
pub fn scheduler_tls_stanza(secret: &Secret) -> anyhow::Result<String> {
    let bundle = secret
        .data
        .as_ref()
        .and_then(|data| data.get(lifecycle::CA_CERT))
        .context("the Secret has no ca.crt")?;
    lifecycle::parse_certificates(&bundle.0, lifecycle::CA_CERT)?;
    let ca_data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bundle.0);
    Ok(format!(
        "    enableHTTPS: true\n    tlsConfig:\n      insecure: false\n      caData: \"{ca_data}\"\n"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn parse(args: &[&str]) -> Result<TlsArgs, clap::Error> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|f| f.tls)
    }

    #[test]
    fn a_service_gives_the_names_the_apiserver_and_scheduler_dial() {
        let args = parse(&[
            "--cert-secret=s",
            "--cert-service=jellyfin-ha-webhook",
            "--cert-name=127.0.0.1",
        ])
        .unwrap();
        assert_eq!(
            args.names("media"),
            [
                "jellyfin-ha-webhook",
                "jellyfin-ha-webhook.media",
                "jellyfin-ha-webhook.media.svc",
                "127.0.0.1"
            ]
        );
    }

    #[test]
    fn files_and_a_secret_exclude_each_other_and_one_is_required() {
        for args in [
            &["--tls-cert=c", "--tls-key=k", "--cert-secret=s"][..],
            &[],
            &["--tls-cert=c"],
            &["--tls-key=k", "--cert-secret=s"],
        ] {
            let err = parse(args).unwrap().source().unwrap_err();
            assert!(
                err.to_string()
                    .contains("--tls-cert and --tls-key, or --cert-secret"),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn self_managed_settings_beside_files_are_an_error() {
        let files = parse(&["--tls-cert=c", "--tls-key=k"]).unwrap();
        assert!(matches!(files.source(), Ok(Source::Files { .. })));
        let stray = parse(&["--tls-cert=c", "--tls-key=k", "--cert-service=x"]).unwrap();
        let err = stray.source().unwrap_err();
        assert!(err.to_string().contains("--cert-service"), "{err}");
        let secret = parse(&["--cert-secret=s", "--cert-service=x"]).unwrap();
        assert_eq!(secret.source().unwrap(), Source::Secret("s"));
    }

    fn secret_with(key: &str, value: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(value.to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn the_scheduler_stanza_carries_the_whole_ca_bundle() {
        let bundle = jellyfin_ha_certs::generate(&["x".into()]).unwrap().ca_pem;
        let stanza =
            scheduler_tls_stanza(&secret_with(lifecycle::CA_CERT, bundle.as_bytes())).unwrap();
        let encoded = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            bundle.as_bytes(),
        );
        assert!(
            stanza.contains(&format!("caData: \"{encoded}\"")),
            "{stanza}"
        );
        assert!(stanza.contains("insecure: false"), "{stanza}");
    }

    #[test]
    fn a_secret_without_a_usable_ca_gives_no_stanza() {
        let err = scheduler_tls_stanza(&secret_with("tls.crt", b"x")).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        let err = scheduler_tls_stanza(&secret_with(lifecycle::CA_CERT, b"junk")).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}

#[cfg(test)]
mod api_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use axum::http::{Method, Request, Response, StatusCode};
    use bytes::Bytes;
    use http_body_util::Full;
    use jellyfin_ha_certs::lifecycle::Step;

    use super::*;

    const NAMESPACE: &str = "jellyfin-ha";
    const SECRET: &str = "jellyfin-ha-webhook-tls";

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ca: Duration::from_secs(3600),
            serving: Duration::from_secs(600),
            publish_delay: Duration::from_secs(60),
        }
    }

    fn names() -> Vec<String> {
        vec!["jellyfin-ha-webhook.jellyfin-ha.svc".to_string()]
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": reason, "reason": reason, "code": code})
    }

    /// An in-process apiserver that records each call as `METHOD path` in `calls` and answers
    /// with `answer(method, calls so far)`: a status code and a JSON body.
    fn recording_apiserver(
        calls: Arc<Mutex<Vec<String>>>,
        answer: impl Fn(&Method, &[String]) -> (u16, serde_json::Value) + Clone + Send + 'static,
    ) -> Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let (calls, answer) = (Arc::clone(&calls), answer.clone());
            async move {
                let mut calls = calls.lock().unwrap();
                let (code, body) = answer(request.method(), &calls);
                calls.push(format!("{} {}", request.method(), request.uri().path()));
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(StatusCode::from_u16(code).unwrap())
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap(),
                )
            }
        });
        Client::new(service, NAMESPACE)
    }

    /// An apiserver where another replica creates the Secret between this replica's read and
    /// its create: the create conflicts, and the Secret then holds the winner's certificate.
    fn apiserver_with_a_faster_replica(winner: Secret, calls: Arc<Mutex<Vec<String>>>) -> Client {
        recording_apiserver(calls, move |method, calls| {
            let created = calls.iter().any(|c| c.starts_with("POST"));
            match *method {
                Method::GET if created => (200, serde_json::to_value(&winner).unwrap()),
                Method::GET => (404, status(404, "NotFound")),
                Method::POST => (409, status(409, "AlreadyExists")),
                _ => (405, status(405, "MethodNotAllowed")),
            }
        })
    }

    #[tokio::test]
    async fn a_replica_that_loses_the_race_to_create_serves_the_winners_certificate() {
        let now = unix_now();
        let won = lifecycle::perform(Step::Create, None, &names(), now, &lifetimes())
            .unwrap()
            .unwrap();
        let winner = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.into()),
                namespace: Some(NAMESPACE.into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                won.to_data()
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v)))
                    .collect(),
            ),
            ..Secret::default()
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let client = apiserver_with_a_faster_replica(winner, Arc::clone(&calls));
        let replica = SelfManaged {
            secrets: Api::namespaced(client.clone(), NAMESPACE),
            webhook_configurations: Api::all(client.clone()),
            recorder: recorder(client),
            namespace: NAMESPACE.into(),
            secret: SECRET.into(),
            webhook_configuration: None,
            names: names(),
            lifetimes: lifetimes(),
        };

        let stored = replica.reconcile().await.unwrap();
        assert_eq!(stored, won);
        let path = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
        assert_eq!(
            *calls.lock().unwrap(),
            [
                format!("GET {path}/{SECRET}"),
                format!("POST {path}"),
                format!("GET {path}/{SECRET}"),
            ],
            "read, lost the create, read the winner's and wrote nothing more"
        );
    }

    /// A webhook configuration that another replica publishes the same bundle to between this
    /// replica's read and its write.
    fn apiserver_where_another_replica_publishes_first(
        bundle: ByteString,
        calls: Arc<Mutex<Vec<String>>>,
    ) -> Client {
        let configuration = |ca_bundle: Option<ByteString>| {
            serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "jellyfin-ha", "resourceVersion": if ca_bundle.is_some() { "8" } else { "7" }},
                "webhooks": [{
                    "name": "pods.jellyfin-ha.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "clientConfig": {"service": {"namespace": NAMESPACE, "name": "jellyfin-ha-webhook"}, "caBundle": ca_bundle},
                }],
            })
        };
        recording_apiserver(calls, move |method, calls| {
            let published = calls.iter().any(|c| c.starts_with("PUT"));
            match *method {
                Method::GET if published => (200, configuration(Some(bundle.clone()))),
                Method::GET => (200, configuration(None)),
                Method::PUT => (409, status(409, "Conflict")),
                _ => (405, status(405, "MethodNotAllowed")),
            }
        })
    }

    #[tokio::test]
    async fn a_replica_that_loses_the_race_to_publish_the_ca_bundle_reads_again_and_is_done() {
        let stored = lifecycle::perform(Step::Create, None, &names(), unix_now(), &lifetimes())
            .unwrap()
            .unwrap();
        let bundle = ByteString(stored.ca_bundle_pem().into_bytes());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let client = apiserver_where_another_replica_publishes_first(bundle, Arc::clone(&calls));
        let replica = SelfManaged {
            secrets: Api::namespaced(client.clone(), NAMESPACE),
            webhook_configurations: Api::all(client.clone()),
            recorder: recorder(client),
            namespace: NAMESPACE.into(),
            secret: SECRET.into(),
            webhook_configuration: Some("jellyfin-ha".into()),
            names: names(),
            lifetimes: lifetimes(),
        };

        replica.publish(&stored).await.unwrap();
        let path =
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/jellyfin-ha";
        assert_eq!(
            *calls.lock().unwrap(),
            [
                format!("GET {path}"),
                format!("PUT {path}"),
                format!("GET {path}"),
            ],
            "read, lost the write, read the published bundle and wrote nothing more"
        );
    }
}
