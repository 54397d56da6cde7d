//! The fencer role: proves silent nodes off through their fence devices, taints them
//! out-of-service so their volumes move at once, and gives them back after a power cycle.
//!
//! Two replicas may run; one leads through a `coordination.k8s.io` Lease. Everything the
//! fencer knows lives in the cluster (the taint, the fence record on the Node), so a new
//! leader picks up where the last one stopped, and every action is idempotent.

pub mod agent;
pub mod controller;
pub mod device;
pub mod http;
pub mod program;
pub mod proxmox;
pub mod redfish;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use jellyfin_ha_core::extender::snapshot::NODE_LEASE_NAMESPACE;
use jellyfin_ha_core::fencing::FencerPolicy;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cli::Namespace;
use crate::config::load_config;
use crate::metrics::Metrics;
use crate::shutdown;
use controller::{Fencer, TICK, Term};

/// The leader Lease lasts this long without renewal, and is renewed this long before it
/// runs out: a dead leader is replaced within about 6 s; a clean exit hands over at once.
const LEADER_LEASE_SECONDS: u64 = 6;
const LEADER_RENEW_MARGIN_SECONDS: u64 = 2;

/// The leader Lease's default name, in the fencer's namespace.
pub const LEADER_LEASE: &str = "jellyfin-ha-fencer";

/// The flags of the fencer's part, shared by `fencer` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct FencerFlags {
    /// Decide, prove (read-only) and log, but write nothing: no power-off, taint, deletion
    /// or Event.
    #[arg(long, env = "JELLYFIN_HA_DRY_RUN")]
    pub dry_run: bool,
    /// This replica's name in the leader Lease, fence records and Events.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The leader Lease's name.
    #[arg(
        long,
        env = "JELLYFIN_HA_FENCER_LEASE",
        default_value = LEADER_LEASE
    )]
    pub leader_lease: String,
}

#[derive(Debug, Args)]
pub struct FencerArgs {
    /// Config file (YAML); the fencer reads its `fencer:` section.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Plain-HTTP address for /livez, /readyz and /metrics.
    #[arg(long, env = "JELLYFIN_HA_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// Where the credential Secrets, the leader Lease and jellyfin-ha's own pods are.
    #[command(flatten)]
    pub namespace: Namespace,
    #[command(flatten)]
    pub flags: FencerFlags,
}

/// `jellyfin-ha fencer`: the fencer alone, with its admin port.
pub async fn run(args: FencerArgs) -> anyhow::Result<()> {
    let policy = Arc::new(load_config(args.config.as_deref())?.fencer);
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", args.admin_listen))?;
    let admin_app = admin::router(AdminState {
        ready: Arc::clone(&ready),
        metrics: Arc::clone(&metrics),
    });
    let admin_stop = stop.clone();
    let admin = tokio::spawn(async move {
        axum::serve(listener, admin_app)
            .with_graceful_shutdown(admin_stop.cancelled_owned())
            .await
    });
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let namespace = args.namespace.namespace;
    let result = lead(
        client,
        policy,
        args.flags,
        namespace,
        metrics,
        ready,
        stop.clone(),
    )
    .await;
    stop.cancel();
    admin
        .await
        .context("admin server")?
        .context("admin server")?;
    result
}

/// Watches Nodes and node Leases, and runs the fencer's loop whenever this replica leads,
/// until `stop`. `ready` turns true once both caches hold a full list.
pub async fn lead(
    client: Client,
    policy: Arc<FencerPolicy>,
    flags: FencerFlags,
    namespace: String,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let nodes = watch_into_store(Api::<Node>::all(client.clone()), &stop);
    let leases = watch_into_store(
        Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        &stop,
    );
    tokio::select! {
        synced = async { tokio::try_join!(nodes.wait_until_ready(), leases.wait_until_ready()) } => {
            synced.context("watching Nodes and node Leases")?;
        }
        () = stop.cancelled() => return Ok(()),
    }
    ready.store(true, Ordering::Release);
    let identity = flags.identity.clone().unwrap_or_else(default_identity);
    tracing::info!(%identity, agents = policy.agents.len(), dry_run = flags.dry_run, "fencer caches synced; seeking the leader Lease");
    if policy.agents.is_empty() {
        tracing::warn!("fencer.agents is empty: silent nodes are reported, never fenced");
    }
    let fencer = Arc::new(Fencer {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "jellyfin-ha-fencer".into(),
                instance: Some(identity.clone()),
            },
        ),
        client: client.clone(),
        policy,
        nodes,
        leases,
        namespace: namespace.clone(),
        identity: identity.clone(),
        leader_lease: flags.leader_lease.clone(),
        dry_run: flags.dry_run,
        metrics: Arc::clone(&metrics),
        claimed: Default::default(),
        renewals: Default::default(),
    });
    let manager = LeaseManagerBuilder::new(client, &flags.leader_lease)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(LEADER_LEASE_SECONDS)
        .with_grace(LEADER_RENEW_MARGIN_SECONDS)
        .build()
        .await
        .context("setting up the leader Lease")?;
    let (mut leading, election) = manager.watch().await;
    let mut term: Option<Term> = None;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = leading.changed() => if changed.is_err() { break },
            _ = ticks.tick() => {}
        }
        let is_leader = *leading.borrow_and_update();
        metrics.fencer_leader.set(i64::from(is_leader));
        match (is_leader, term.take()) {
            (true, current) => {
                if current.is_none() {
                    tracing::info!(%identity, "leading the fencer");
                }
                let mut current = current.unwrap_or_default();
                fencer.tick(&mut current).await;
                term = Some(current);
            }
            (false, Some(old)) => {
                tracing::warn!(%identity, "lost the leader Lease; stopping proofs under way");
                old.abort();
            }
            (false, None) => fencer.time_heartbeats(),
        }
    }
    if let Some(old) = term {
        old.abort();
    }
    // Closing the channel releases the Lease, so the other replica takes over at once.
    drop(leading);
    if let Ok(Err(e)) = election.await {
        tracing::warn!(error = %e, "releasing the leader Lease");
    }
    metrics.fencer_leader.set(0);
    Ok(())
}

/// A reflector store fed by a watch that retries with backoff until `stop`.
fn watch_into_store<K>(api: Api<K>, stop: &CancellationToken) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                item = stream.next() => match item {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "fencer watch; retrying"),
                    None => return,
                },
            }
        }
    });
    store
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "jellyfin-ha".into());
    format!("{host}-{}", std::process::id())
}
