//! The fencer's loop while it leads: decide every node from the watched cluster, prove silent
//! nodes off through their devices, fence, sweep their pods, and give power-cycled nodes back.
//! Every decision comes from `jellyfin_ha_core::fencing`; this file only performs them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jellyfin_ha_core::annotations;
use jellyfin_ha_core::extender::snapshot::FENCING_ANNOTATION;
use jellyfin_ha_core::fencing::config::{AgentConfig, AgentKind};
use jellyfin_ha_core::fencing::record::FENCED_ANNOTATION;
use jellyfin_ha_core::fencing::{
    Decision, FenceRecord, FencerPolicy, FencingMark, NodeFacts, PowerOffLeave, Proof, ProofStep,
    Reading, Refusal, RenewalClock, cap, confirm, plan, recovery, silent_share, still_leads,
    still_silent,
};
use jellyfin_ha_core::taints::{self, OUT_OF_SERVICE};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use super::agent::{AgentError, FenceAgent};
use super::device::Device;
use crate::metrics::Metrics;

/// How often the leader re-decides; watches keep the stores current in between.
pub const TICK: Duration = Duration::from_millis(500);

/// A node whose proof failed is proven again no sooner than this after the last attempt
/// began: a device that says no (or nothing) is asked again, not hammered.
pub const PROOF_RETRY: Duration = Duration::from_secs(10);

/// Everything the loop needs that outlives one tick.
pub struct Fencer {
    pub client: Client,
    pub policy: Arc<FencerPolicy>,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    /// Where the credential Secrets are, and jellyfin-ha's own pods.
    pub namespace: String,
    /// This replica's name, for the leader Lease, the fence record and Events.
    pub identity: String,
    /// The leader Lease's name, in `namespace`.
    pub leader_lease: String,
    pub dry_run: bool,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Nodes a proof has powered off or is tainting: they count against `maxFenced` until
    /// the watch shows them fenced, or they are back.
    pub claimed: Mutex<BTreeSet<String>>,
    /// When each node's heartbeats arrived, by this replica's clock.
    pub renewals: Mutex<RenewalClock>,
}

/// What one leader term remembers: proofs under way, and what it has already said.
#[derive(Default)]
pub struct Term {
    proving: HashMap<String, JoinHandle<()>>,
    /// When each node's last proof began.
    attempts: HashMap<String, Instant>,
    /// (node, reason) pairs already reported, so a refusal is one Event, not one per tick.
    reported: BTreeSet<(String, String)>,
    /// Fenced nodes whose pods this term has swept.
    swept: BTreeSet<String>,
}

impl Term {
    /// Ends every proof under way: leadership is gone, and the next leader starts over.
    pub fn abort(self) {
        for (_, task) in self.proving {
            task.abort();
        }
    }
}

impl Fencer {
    /// Every node as the watches show it, heartbeats timed by this replica's clock.
    fn facts(&self) -> Vec<NodeFacts> {
        let mut facts: Vec<NodeFacts> = self
            .nodes
            .state()
            .iter()
            .filter_map(|node| {
                let lease = self.leases.get(
                    &ObjectRef::new(&node.name_any())
                        .within(jellyfin_ha_core::extender::snapshot::NODE_LEASE_NAMESPACE),
                );
                NodeFacts::from_node(node, lease.as_deref())
            })
            .collect();
        self.renewals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&mut facts, Timestamp::now());
        facts
    }

    /// Keeps timing heartbeats while another replica leads, so that this one judges silence
    /// from the renewals it saw arrive, not from the moment it takes over.
    pub fn time_heartbeats(&self) {
        self.facts();
    }

    fn facts_of(&self, node: &str) -> Option<NodeFacts> {
        self.facts().into_iter().find(|f| f.name == node)
    }

    /// [`still_silent`] on the node as the watch shows it now. A node gone from the cluster is
    /// not powered off either: nothing then says what the device is wired to.
    fn check_still_silent(
        &self,
        node: &str,
        renewed_at_start: Option<Timestamp>,
    ) -> Result<(), Refusal> {
        match self.facts_of(node) {
            Some(facts) => still_silent(&facts, renewed_at_start),
            None => Err(Refusal::NotProven("the Node object is gone".into())),
        }
    }

    /// One pass over every node.
    pub async fn tick(self: &Arc<Self>, term: &mut Term) {
        term.proving.retain(|_, task| !task.is_finished());
        let proving: BTreeSet<String> = term.proving.keys().cloned().collect();
        let facts = self.facts();
        let claimed = self.claimed().clone();
        let decided = plan(&facts, &self.policy, Timestamp::now(), &proving, &claimed);
        for (node, decision) in decided.decisions {
            match decision {
                Decision::Healthy => {
                    term.reported.retain(|(n, _)| n != &node);
                    term.attempts.remove(&node);
                    self.claimed().remove(&node);
                    // Left by a proof that never ended (a leader that died or lost its Lease
                    // mid-proof): the extender would shun the node for good.
                    let marked = facts.iter().any(|f| f.name == node && f.fencing_marked);
                    if marked && !term.proving.contains_key(&node) && !self.dry_run {
                        self.mark_fencing(&node, None).await;
                    }
                }
                Decision::Prove { .. }
                    if term
                        .attempts
                        .get(&node)
                        .is_some_and(|began| began.elapsed() < PROOF_RETRY) => {}
                Decision::Prove { agent, silent_for } => {
                    let Some(agent) = self.policy.agents.get(agent).cloned() else {
                        continue;
                    };
                    let reason = format!("Lease not renewed for {:.1} s", silent_for.as_secs_f64());
                    tracing::warn!(%node, agent = %agent.name, %reason, "suspected; proving it off");
                    self.metrics.fencer_suspects.inc();
                    let fencer = Arc::clone(self);
                    let name = node.clone();
                    let task = tokio::spawn(async move {
                        fencer.prove_and_fence(&name, &agent, &reason).await;
                    });
                    term.attempts.insert(node.clone(), Instant::now());
                    term.proving.insert(node, task);
                }
                Decision::Proving => {}
                Decision::ForeignTaint => {
                    let Some(facts) = facts.iter().find(|f| f.name == node) else {
                        continue;
                    };
                    let (reason, why) = match (facts.record_unreadable, facts.record_stale) {
                        (true, _) => (
                            "UnreadableRecord",
                            "cannot be read: the taint stays until removed by hand, once the \
                             node has power-cycled",
                        ),
                        (false, true) => (
                            "StaleRecord",
                            "belongs to an earlier taint of ours that was removed: this one \
                             is someone else's, and left to them",
                        ),
                        (false, false) => continue,
                    };
                    if term.reported.insert((node.clone(), reason.to_string())) {
                        let note = format!(
                            "tainted {OUT_OF_SERVICE}, but the {FENCED_ANNOTATION} record {why}"
                        );
                        tracing::warn!(%node, "{note}");
                        self.event(&node, EventType::Warning, reason, "Unfence", note)
                            .await;
                    }
                }
                Decision::Refused(refusal) => {
                    self.report_refusal(term, &node, &refusal).await;
                }
                // The proof that fenced it sweeps it itself.
                Decision::Fenced if term.proving.contains_key(&node) => {}
                Decision::Fenced => {
                    self.claimed().remove(&node);
                    if !term.swept.contains(&node) && self.sweep(&node).await {
                        term.swept.insert(node);
                    }
                }
                Decision::Unfence { boot_id } => {
                    if self.unfence(&node, &boot_id).await {
                        term.swept.remove(&node);
                        term.reported.retain(|(n, _)| n != &node);
                    }
                }
                Decision::KeepFenced { boot_id } => {
                    let key = (node.clone(), format!("KeepFenced/{boot_id}"));
                    if term.reported.insert(key) {
                        let unrecorded = facts.iter().any(|f| {
                            f.name == node
                                && f.record.as_ref().is_some_and(|r| r.boot_id.is_empty())
                        });
                        let note = match unrecorded {
                            false => format!(
                                "back with the bootID {boot_id:?} it had when fenced: it was \
                                 never power-cycled, so the taint stays until it reboots"
                            ),
                            true => format!(
                                "back with bootID {boot_id:?}, but its fence record holds no \
                                 bootID to tell a power cycle by: remove {OUT_OF_SERVICE} by \
                                 hand once you know it power-cycled"
                            ),
                        };
                        tracing::warn!(%node, "{note}");
                        self.event(&node, EventType::Warning, "FenceKept", "Unfence", note)
                            .await;
                    }
                }
            }
        }
    }

    async fn report_refusal(&self, term: &mut Term, node: &str, refusal: &Refusal) {
        let key = (node.to_string(), refusal.reason().to_string());
        if !term.reported.insert(key) {
            return;
        }
        if *refusal == Refusal::NotEligible {
            // Outside this fencer's nodeSelector: not its business, so no Event.
            tracing::debug!(%node, "silent, outside fencer.nodeSelector");
            return;
        }
        tracing::warn!(%node, reason = refusal.reason(), "silent, not fenced: {refusal}");
        self.metrics
            .fencer_refusals
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: refusal.reason().to_string(),
            })
            .inc();
        self.event(
            node,
            EventType::Warning,
            refusal.reason(),
            "Fence",
            format!("silent, not fenced: {refusal}"),
        )
        .await;
    }

    /// Proves the node off and fences it; any failure leaves it unfenced and says why.
    async fn prove_and_fence(&self, node: &str, agent: &AgentConfig, reason: &str) {
        let started = Instant::now();
        let proof = match self.prove(node, agent).await {
            Ok(proof) => proof,
            Err(refusal) => {
                self.proof_failed(node, agent, &refusal).await;
                return;
            }
        };
        let Some(facts) = self.facts_of(node) else {
            return;
        };
        if let Err(refusal) = confirm(&facts, proof.renewed_at_start) {
            self.proof_failed(node, agent, &refusal).await;
            return;
        }
        let record = FenceRecord {
            suspected_at: proof.started,
            proven_at: proof.at,
            fenced_at: Timestamp::now(),
            reason: reason.to_string(),
            agent: agent.name.clone(),
            proof: proof.said.clone(),
            boot_id: facts.boot_id.clone(),
            fenced_by: self.identity.clone(),
        };
        if self.dry_run {
            tracing::warn!(%node, proof = %proof.said, "dry run: would taint {OUT_OF_SERVICE} and delete its pods");
            return;
        }
        if let Err(refusal) = self
            .check_still_leads()
            .await
            .and_then(|()| self.claim(node))
        {
            self.proof_failed(node, agent, &refusal).await;
            return;
        }
        match self.taint(node, &record).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%node, "proven off, but someone else tainted it {OUT_OF_SERVICE} meanwhile: left to them");
                self.claimed().remove(node);
                self.mark_fencing(node, None).await;
                return;
            }
            Err(e) => {
                tracing::error!(%node, error = %e, "proven off, but the taint could not be written; retrying on the next tick");
                return;
            }
        }
        self.metrics.fencer_fences.inc();
        self.metrics
            .fencer_fence_seconds
            .observe(started.elapsed().as_secs_f64());
        let note = format!(
            "{reason}; {} proved it off ({}); tainted {OUT_OF_SERVICE} so its volumes detach now",
            agent.name, proof.said
        );
        tracing::warn!(%node, "fenced: {note}");
        self.event(node, EventType::Warning, "Fenced", "Fence", note)
            .await;
        self.sweep(node).await;
    }

    async fn proof_failed(&self, node: &str, agent: &AgentConfig, refusal: &Refusal) {
        tracing::warn!(%node, agent = %agent.name, "not fenced: {refusal}");
        self.metrics
            .fencer_refusals
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: refusal.reason().to_string(),
            })
            .inc();
        // A node powered off, by this replica or another, keeps its mark, and its place,
        // until it heartbeats again.
        if !self.dry_run && !self.holds_place(node) {
            self.mark_fencing(node, None).await;
        }
        self.event(
            node,
            EventType::Warning,
            refusal.reason(),
            "Fence",
            format!("not fenced: {refusal}"),
        )
        .await;
    }

    /// Asks the device until it says off, powering the machine off when allowed.
    async fn prove(&self, node: &str, agent: &AgentConfig) -> Result<Proven, Refusal> {
        let now = Timestamp::now();
        let facts = self.facts_of(node);
        // The renewal that made it suspect: any other one, whatever its clock says, means the
        // node is alive.
        let renewed_at_start = facts.as_ref().and_then(|f| f.lease.as_ref()?.renew_time);
        let settled_at = facts.as_ref().and_then(|f| f.settled_at(&self.policy));
        let cordoned = facts.as_ref().is_some_and(|f| f.cordoned);
        // A place claimed by an earlier power-off, this replica's or another's, stays claimed.
        let claimed = self.holds_place(node);
        if !facts.is_some_and(|f| f.is_silent(&self.policy, now)) {
            return Err(Refusal::HeartbeatResumed);
        }
        let settled_at = settled_at.unwrap_or(now);
        if !self.dry_run {
            let mark = FencingMark {
                agent: agent.name.clone(),
                since: now,
                claimed,
            };
            self.mark_fencing(node, Some(mark)).await;
        }
        if let Some(AgentKind::None(_)) = agent.kind() {
            // Nothing proves anything here: wait until silence that began at the same moment
            // elsewhere would show, and count the silent nodes again.
            let wait = now.duration_until(settled_at).max(Default::default());
            tokio::time::sleep(wait.unsigned_abs()).await;
            self.check_still_silent(node, renewed_at_start)?;
            self.share_still_sane()?;
            tracing::warn!(%node, agent = %agent.name, "no fence device: fencing on detection alone, as acknowledged in the config");
            return Ok(Proven {
                started: now,
                renewed_at_start,
                at: Timestamp::now(),
                said: "no fence device; fenced on silence alone (acknowledged in config)".into(),
            });
        }
        let timeout = Duration::from_secs(u64::from(self.policy.agent_timeout_seconds));
        let device = Device::build(&self.client, &self.namespace, agent, node, timeout)
            .await
            .map_err(|e| Refusal::NotProven(e.to_string()))?;
        let deadline = Duration::from_secs(u64::from(self.policy.proof_deadline_seconds));
        let leave = PowerOffLeave::of(agent.power_off, cordoned);
        let proof = Proof::new(now, deadline, leave, settled_at);
        let proven = self
            .ask(&device, proof, node, agent, deadline, renewed_at_start)
            .await;
        let outcome = if proven.is_ok() { "off" } else { "failed" };
        self.metrics
            .fencer_proofs
            .get_or_create(&crate::metrics::ProofLabels {
                agent: agent.name.clone(),
                outcome: outcome.to_string(),
            })
            .inc();
        proven
    }

    /// Reads the device until `proof` is decided, powering the machine off when it says so,
    /// unless the node renews its Lease first.
    async fn ask(
        &self,
        device: &Device,
        mut proof: Proof,
        node: &str,
        agent: &AgentConfig,
        deadline: Duration,
        renewed_at_start: Option<Timestamp>,
    ) -> Result<Proven, Refusal> {
        loop {
            self.check_still_silent(node, renewed_at_start)?;
            // Each device times its own calls out; this is the backstop.
            let reading = match tokio::time::timeout(deadline, device.power_state()).await {
                Ok(Ok(state)) => Reading::Power(state),
                Ok(Err(e)) => Reading::Failed(e.to_string()),
                Err(_) => Reading::Failed(AgentError::Timeout(deadline.as_secs()).to_string()),
            };
            if let Reading::Failed(why) = &reading {
                tracing::warn!(%node, agent = %agent.name, "fence device: {why}");
            }
            let mut step = proof.next(reading, Timestamp::now());
            if step == ProofStep::PowerOff {
                if self.dry_run {
                    return Err(Refusal::NotProven(
                        "the device says it is on; dry run: would power it off".into(),
                    ));
                }
                // A heartbeat may have come while the device answered.
                self.check_still_silent(node, renewed_at_start)?;
                self.check_still_leads().await?;
                let newly = self.share_still_sane().and_then(|()| self.claim(node))?;
                // On the Node before the power-off, so that a leader elected after this one
                // counts it against maxFenced too.
                let mark = FencingMark {
                    agent: agent.name.clone(),
                    since: proof.started(),
                    claimed: true,
                };
                if !self.mark_fencing(node, Some(mark)).await {
                    if newly {
                        self.claimed().remove(node);
                    }
                    let why = "the claim on one of the maxFenced places could not be written";
                    return Err(Refusal::NotProven(why.into()));
                }
                tracing::warn!(%node, agent = %agent.name, "the device says it is on: powering it off");
                let sent = match tokio::time::timeout(deadline, device.power_off()).await {
                    Ok(sent) => sent,
                    Err(_) => Err(AgentError::Timeout(deadline.as_secs())),
                };
                step = match sent {
                    Ok(()) => {
                        proof.power_off_sent();
                        ProofStep::ReadAgain {
                            after: Duration::ZERO,
                        }
                    }
                    Err(e) => proof.power_off_failed(&e.to_string(), Timestamp::now()),
                };
            }
            match step {
                ProofStep::Proven => {
                    let said = match proof.powered_off() {
                        true => format!("{} said Off after a power-off", device.kind()),
                        false => format!("{} said Off", device.kind()),
                    };
                    return Ok(Proven {
                        started: proof.started(),
                        renewed_at_start,
                        at: Timestamp::now(),
                        said,
                    });
                }
                ProofStep::ReadAgain { after } => tokio::time::sleep(after).await,
                ProofStep::GiveUp(why) => return Err(Refusal::NotProven(why)),
                // Not returned after a power-off attempt: a failed one counts as a reading.
                ProofStep::PowerOff => {}
            }
        }
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.claimed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one of the `maxFenced` places for `node` before a power-off or a taint; proofs
    /// run side by side, so the cap is enforced here, under one lock. True when the place is
    /// newly taken, false when this replica held it already.
    fn claim(&self, node: &str) -> Result<bool, Refusal> {
        let mut claimed = self.claimed();
        cap(&self.facts(), &self.policy, &claimed, node)?;
        Ok(claimed.insert(node.to_string()))
    }

    /// Whether `node` holds one of the `maxFenced` places for a power-off: claimed by this
    /// replica, or by any replica as its mark says.
    fn holds_place(&self, node: &str) -> bool {
        self.claimed().contains(node) || self.facts_of(node).is_some_and(|f| f.claim_marked)
    }

    /// [`still_leads`] on the leader Lease as the API has it now.
    async fn check_still_leads(&self) -> Result<(), Refusal> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let lease = leases
            .get(&self.leader_lease)
            .await
            .map_err(|e| Refusal::NotLeading(format!("reading the leader Lease: {e}")))?;
        still_leads(&lease, &self.identity, Timestamp::now())
    }

    /// The share of silent nodes, counted again before a destructive step.
    fn share_still_sane(&self) -> Result<(), Refusal> {
        silent_share(&self.facts(), &self.policy, Timestamp::now())
    }

    /// Marks the node as being fenced, so the extender stops placing pods on it, or (with
    /// `None`) clears the mark. False when the write failed.
    async fn mark_fencing(&self, node: &str, mark: Option<FencingMark>) -> bool {
        let value = mark.map(|mark| mark.to_annotation());
        let patch = json!({"metadata": {"annotations": {FENCING_ANNOTATION: value}}});
        let written = self
            .nodes_api()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if let Err(e) = &written {
            tracing::warn!(%node, error = %e, "could not update the being-fenced mark");
        }
        written.is_ok()
    }

    /// Adds the taint and the record in one write, on the Node as last read: a concurrent
    /// change to its taints makes the write fail instead of being overwritten.
    /// `false` when an out-of-service taint appeared meanwhile: it is someone else's, releases
    /// the volumes already, and is theirs to remove, so the node is left as it is.
    async fn taint(&self, node: &str, record: &FenceRecord) -> Result<bool, kube::Error> {
        let api = self.nodes_api();
        let current = api.get(node).await?;
        let mut taints = current
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints.iter().any(|t| t.key == OUT_OF_SERVICE) {
            return Ok(false);
        }
        taints.push(record.taint());
        let patch = json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": {FENCED_ANNOTATION: record.to_annotation(), FENCING_ANNOTATION: null},
            },
            "spec": {"taints": taints},
        });
        api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| true)
    }

    /// Removes the taint and the record in one write; true when done.
    async fn unfence(&self, node: &str, boot_id: &str) -> bool {
        if self.dry_run {
            tracing::info!(%node, "dry run: would remove {OUT_OF_SERVICE}");
            return false;
        }
        let api = self.nodes_api();
        let result = async {
            let current = api.get(node).await?;
            // Decided again on the Node as it is right before the write: the taint must still
            // be the one our record owns, and the node back with a new bootID.
            let Some(mut fresh) = NodeFacts::from_node(&current, None) else {
                return Ok(false);
            };
            fresh.lease = self.facts_of(node).and_then(|f| f.lease);
            let decided = recovery(&fresh, &self.policy, Timestamp::now());
            let (Decision::Unfence { .. }, Some(record)) = (decided, fresh.record) else {
                return Ok(false);
            };
            let taints: Vec<_> = current
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| !record.owns(t))
                .collect();
            let patch = json!({
                "metadata": {
                    "resourceVersion": current.resource_version(),
                    "annotations": {FENCED_ANNOTATION: null, FENCING_ANNOTATION: null},
                },
                "spec": {"taints": taints},
            });
            api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| true)
        }
        .await;
        match result {
            Ok(false) => {
                tracing::warn!(%node, "read again, the node is no longer one to unfence; left alone");
                false
            }
            Ok(true) => {
                self.metrics.fencer_unfences.inc();
                let note = format!(
                    "back Ready with a new bootID {boot_id:?}: it power-cycled; {OUT_OF_SERVICE} removed"
                );
                tracing::info!(%node, "{note}");
                self.event(node, EventType::Normal, "Unfenced", "Unfence", note)
                    .await;
                true
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "could not remove the taint; retrying");
                false
            }
        }
    }

    /// Force-deletes the pods left on a fenced node: jellyfin-ha's own first, so no Service
    /// keeps routing to a dead webhook or extender replica, then Jellyfin's pods, so their
    /// replacements are created now rather than at PodGC's next pass, then the rest. Pods
    /// that tolerate the out-of-service taint asked to stay. True when every delete went
    /// through.
    async fn sweep(&self, node: &str) -> bool {
        if self.dry_run {
            return true;
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let listed = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await;
        let mut pods_on_node = match listed {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(%node, error = %e, "could not list the fenced node's pods");
                return false;
            }
        };
        let taint = taints::out_of_service();
        pods_on_node.retain(|pod| {
            !pod.spec
                .iter()
                .flat_map(|s| s.tolerations.iter().flatten())
                .any(|t| taints::tolerates(t, &taint))
        });
        pods_on_node.sort_by_key(|pod| {
            let ours = pod.namespace().as_deref() == Some(self.namespace.as_str());
            let jellyfin =
                annotations::is_jellyfin_pod(Some(pod.labels()), Some(pod.annotations()));
            (!ours, !jellyfin)
        });
        let mut all_done = true;
        for pod in pods_on_node {
            let (Some(namespace), name) = (pod.namespace(), pod.name_any()) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            match api.delete(&name, &force_delete(&pod)).await {
                Ok(_) => {
                    tracing::info!(%node, pod = %format!("{namespace}/{name}"), "force-deleted from the fenced node");
                    self.metrics.fencer_pods_deleted.inc();
                    // Whoever asks why the pod was replaced finds the answer on it.
                    let note = format!(
                        "its node {node} was proven off and fenced: deleted without grace so \
                         that its replacement starts now"
                    );
                    let event = (EventType::Normal, "ForceDeleted", "Fence", note);
                    self.publish(&pod.object_ref(&()), event).await;
                }
                // Gone, or replaced by a pod of the same name (a StatefulSet's), perhaps on a
                // healthy node: not the one listed here, and not ours to delete.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(%node, pod = %name, error = %e, "could not force-delete");
                    all_done = false;
                }
            }
        }
        all_done
    }

    fn nodes_api(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Records an Event on the Node; in a dry run it is only logged.
    async fn event(&self, node: &str, type_: EventType, reason: &str, action: &str, note: String) {
        let reference = Node::object_ref(
            &Node {
                metadata: kube::api::ObjectMeta {
                    name: Some(node.to_string()),
                    uid: self.nodes.get(&ObjectRef::new(node)).and_then(|n| n.uid()),
                    ..Default::default()
                },
                ..Default::default()
            },
            &(),
        );
        self.publish(&reference, (type_, reason, action, note))
            .await;
    }

    /// Records an Event (type, reason, action, note) on `object`; in a dry run it is only
    /// logged.
    async fn publish(
        &self,
        object: &ObjectReference,
        (type_, reason, action, note): (EventType, &str, &str, String),
    ) {
        if self.dry_run {
            return;
        }
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
            let name = object.name.as_deref().unwrap_or_default();
            tracing::warn!(object = name, error = %e, "could not record an Event");
        }
    }
}

/// A device's proof, as written into the fence record.
struct Proven {
    started: Timestamp,
    /// The Lease's renewTime when the proof began.
    renewed_at_start: Option<Timestamp>,
    /// When the device said off.
    at: Timestamp,
    said: String,
}

/// Deletes the pod listed, without grace, and no other: a pod recreated under the same name
/// since the list (a StatefulSet's, possibly on a healthy node) has another UID, and the
/// apiserver refuses the deletion with 409.
fn force_delete(pod: &Pod) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default().grace_period(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_force_deletion_names_the_uid_listed() {
        let mut pod = Pod::default();
        pod.metadata.uid = Some("3f1c".into());
        let params = force_delete(&pod);
        assert_eq!(params.grace_period_seconds, Some(0));
        let uid = params.preconditions.and_then(|p| p.uid);
        assert_eq!(uid.as_deref(), Some("3f1c"));
    }
}
