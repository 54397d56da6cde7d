//! A Proxmox VE API on a local HTTPS port, answering as PVE 8's pveproxy does, for the parts
//! that ClusterLabs' `fence_pve` (fence-agents 4.12.1) and our Proxmox fence device use.
//!
//! Shapes follow pve-http-server, pve-manager and qemu-server: every JSON answer is
//! `{"data": ...}` as `application/json;charset=UTF-8`; an API error (a wrong password
//! included) also has `message` and says it in the HTTP reason phrase; a call with a missing
//! or bad ticket or token is a 401 whose only text is the reason phrase (no body); POSTs with
//! a ticket need the `CSRFPreventionToken` header, POSTs with an API token do not; a call
//! for a node that is down answers 595 (pveproxy cannot proxy it there). Stopping an
//! HA-managed VM starts an `hastop` task that only asks the HA manager and ends at once, and
//! the VM stops `stop_delay` later; a VM without HA stops within its `qmstop` task.
//! `/cluster/resources` can be frozen to show what it shows for a dead host: the last state
//! it heard of.
//!
//! Not modelled: the 3 s pveproxy waits before refusing a ticket or token, ticket expiry,
//! permissions (every valid user or token may do everything), containers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine;
use hyper::ext::ReasonPhrase;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use jellyfin_ha_certs::{CertFiles, generate};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How a request authenticated itself (whether or not the credentials were good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Cookie: PVEAuthCookie=...` (or the same in `Authorization`).
    Ticket,
    /// `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`.
    Token,
}

/// One request as the fake saw it. `path` is as sent, without the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub auth: Auth,
    pub csrf: bool,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub vmid: u32,
    pub node: String,
    pub name: String,
    pub running: bool,
    pub paused: bool,
    pub ha_managed: bool,
}

impl Vm {
    pub fn running(vmid: u32, node: &str) -> Self {
        Self {
            vmid,
            node: node.into(),
            name: format!("k8s-{vmid}"),
            running: true,
            paused: false,
            ha_managed: false,
        }
    }

    pub fn stopped(vmid: u32, node: &str) -> Self {
        Self {
            running: false,
            ..Self::running(vmid, node)
        }
    }

    pub fn paused(vmid: u32, node: &str) -> Self {
        Self {
            paused: true,
            ..Self::running(vmid, node)
        }
    }

    pub fn ha(self) -> Self {
        Self {
            ha_managed: true,
            ..self
        }
    }
}

/// What the cluster holds when the fake starts.
#[derive(Debug, Clone)]
pub struct PveConfig {
    /// PVE nodes and whether each is up.
    pub nodes: Vec<(String, bool)>,
    pub vms: Vec<Vm>,
    /// `USER@REALM` → password, for `/access/ticket`.
    pub users: Vec<(String, String)>,
    /// `USER@REALM!TOKENID` → secret.
    pub tokens: Vec<(String, String)>,
    /// From a stop request to the VM reading `stopped`.
    pub stop_delay: Duration,
}

pub const ROOT: &str = "root@pam";
pub const ROOT_PASSWORD: &str = "correct horse battery staple";
pub const TOKEN_ID: &str = "root@pam!fencer";
pub const TOKEN_SECRET: &str = "5b1f3a6e-2c4d-4e8f-9a0b-7c6d5e4f3a21";

impl Default for PveConfig {
    fn default() -> Self {
        Self {
            nodes: vec![("pve1".into(), true), ("pve2".into(), true)],
            vms: Vec::new(),
            users: vec![(ROOT.into(), ROOT_PASSWORD.into())],
            tokens: vec![(TOKEN_ID.into(), TOKEN_SECRET.into())],
            stop_delay: Duration::from_secs(2),
        }
    }
}

/// Which answer [`FakePve::answer_with`] replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    StatusCurrent,
    StatusStop,
}

#[derive(Debug)]
struct VmState {
    vm: Vm,
    /// A stop was requested; the VM is stopped from then on.
    stops_at: Option<Instant>,
    /// HA's requested state (`started`/`stopped`), shown in `status/current` → `ha`.
    ha_state: &'static str,
}

impl VmState {
    fn settle(&mut self, now: Instant) {
        if self.stops_at.is_some_and(|at| at <= now) {
            self.vm.running = false;
            self.vm.paused = false;
            self.stops_at = None;
        }
    }
}

#[derive(Debug, Clone)]
struct Task {
    node: String,
    pid: u32,
    pstart: u32,
    starttime: u32,
    kind: &'static str,
    id: String,
    user: String,
    ends_at: Instant,
}

#[derive(Debug, Clone)]
enum Answer {
    Raw { status: u16, body: Vec<u8> },
    Never,
}

#[derive(Debug)]
struct Cluster {
    nodes: Vec<(String, bool)>,
    vms: BTreeMap<u32, VmState>,
    users: Vec<(String, String)>,
    tokens: Vec<(String, String)>,
    stop_delay: Duration,
    /// Ticket → (user, CSRF token).
    tickets: BTreeMap<String, (String, String)>,
    tasks: BTreeMap<String, Task>,
    next_pid: u32,
    frozen_resources: Option<Vec<Value>>,
    answers: BTreeMap<&'static str, Answer>,
    log: Vec<Logged>,
}

type Shared = Arc<Mutex<Cluster>>;

/// The fake, serving until dropped.
pub struct FakePve {
    pub addr: SocketAddr,
    pub ca_pem: String,
    cluster: Shared,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePve {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePve {
    pub async fn start(config: PveConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &generated.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &generated.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &generated.ca_pem).unwrap();
        let certs =
            CertFiles::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
        let mut tls = certs.server_config().unwrap();
        // pveproxy speaks HTTP/1.1 only.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let cluster: Shared = Arc::new(Mutex::new(Cluster {
            nodes: config.nodes,
            vms: config
                .vms
                .into_iter()
                .map(|vm| {
                    let ha_state = if vm.running { "started" } else { "stopped" };
                    (
                        vm.vmid,
                        VmState {
                            vm,
                            stops_at: None,
                            ha_state,
                        },
                    )
                })
                .collect(),
            users: config.users,
            tokens: config.tokens,
            stop_delay: config.stop_delay,
            tickets: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next_pid: 0x0003_A1F2,
            frozen_resources: None,
            answers: BTreeMap::new(),
            log: Vec::new(),
        }));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&cluster));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: generated.ca_pem,
            cluster,
            dir,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`, as `proxmox.endpoint` would name the cluster.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// A PEM file with the CA that signed the fake's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn log(&self) -> Vec<Logged> {
        self.cluster.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.cluster.lock().unwrap().log.clear();
    }

    /// What `status/current` would say now: `running`, `paused` or `stopped`.
    pub fn vm_state(&self, vmid: u32) -> &'static str {
        let mut cluster = self.cluster.lock().unwrap();
        let state = cluster.vms.get_mut(&vmid).unwrap();
        state.settle(Instant::now());
        match (state.vm.running, state.vm.paused) {
            (false, _) => "stopped",
            (true, true) => "paused",
            (true, false) => "running",
        }
    }

    /// The tasks started so far, oldest first: (UPID, type, finished).
    pub fn tasks(&self) -> Vec<(String, &'static str, bool)> {
        let cluster = self.cluster.lock().unwrap();
        let now = Instant::now();
        let mut tasks: Vec<_> = cluster.tasks.iter().collect();
        tasks.sort_by_key(|(_, task)| task.pid);
        tasks
            .into_iter()
            .map(|(upid, task)| (upid.clone(), task.kind, task.ends_at <= now))
            .collect()
    }

    pub fn set_node_online(&self, node: &str, online: bool) {
        let mut cluster = self.cluster.lock().unwrap();
        for (name, up) in &mut cluster.nodes {
            if name == node {
                *up = online;
            }
        }
    }

    /// From now on `/cluster/resources` repeats what it says now, as it does for the VMs of
    /// a PVE host that has died.
    pub fn freeze_cluster_resources(&self) {
        let mut cluster = self.cluster.lock().unwrap();
        let resources = cluster_resources(&mut cluster);
        cluster.frozen_resources = Some(resources);
    }

    /// From now on `endpoint` answers `status` with `body`, sent in chunks without a length.
    pub fn answer_with(&self, endpoint: Endpoint, status: u16, body: impl Into<Vec<u8>>) {
        self.cluster.lock().unwrap().answers.insert(
            endpoint_key(endpoint),
            Answer::Raw {
                status,
                body: body.into(),
            },
        );
    }

    /// From now on `endpoint` never answers (the connection stays open).
    pub fn never_answer(&self, endpoint: Endpoint) {
        self.cluster
            .lock()
            .unwrap()
            .answers
            .insert(endpoint_key(endpoint), Answer::Never);
    }
}

fn endpoint_key(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::StatusCurrent => "current",
        Endpoint::StatusStop => "stop",
    }
}

/// An answer: status, the reason phrase when it is not the usual one, and the body.
struct Reply {
    status: StatusCode,
    reason: Option<String>,
    body: Body,
}

impl Reply {
    fn data(data: Value) -> Self {
        Self {
            status: StatusCode::OK,
            reason: None,
            body: Body::from(json!({ "data": data }).to_string()),
        }
    }

    /// An error raised by an API handler: JSON with `data: null` and the message.
    fn error(status: u16, message: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            reason: Some(message.into()),
            body: Body::from(
                json!({ "data": null, "message": format!("{message}\n") }).to_string(),
            ),
        }
    }

    /// A refusal before any handler ran (pveproxy's auth check, a failed proxy): the reason
    /// phrase only.
    fn bare(status: u16, reason: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            reason: Some(reason.into()),
            body: Body::empty(),
        }
    }

    fn into_response(self) -> Response {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            "application/json;charset=UTF-8".parse().unwrap(),
        );
        headers.insert(header::SERVER, "pve-api-daemon/3.0".parse().unwrap());
        headers.insert(header::CACHE_CONTROL, "max-age=0".parse().unwrap());
        headers.insert(header::PRAGMA, "no-cache".parse().unwrap());
        if let Some(reason) = self.reason
            && let Ok(phrase) = ReasonPhrase::try_from(reason)
        {
            response.extensions_mut().insert(phrase);
        }
        response
    }
}

async fn handle(
    State(cluster): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let auth = presented_auth(&headers);
    let csrf = headers.contains_key("CSRFPreventionToken");
    let (reply, never) = {
        let mut cluster = cluster.lock().unwrap();
        let (reply, never) = route(&mut cluster, &method, &uri, &headers, &body);
        cluster.log.push(Logged {
            method: method.clone(),
            path,
            auth: auth.0,
            csrf,
            status: reply.status.as_u16(),
        });
        (reply, never)
    };
    if never {
        std::future::pending::<()>().await;
    }
    reply.into_response()
}

/// The reply, and whether to hold it back forever.
fn route(
    cluster: &mut Cluster,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Reply, bool) {
    let Some(rest) = uri.path().strip_prefix("/api2/json/") else {
        return (Reply::bare(501, "no such uri"), false);
    };
    let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if *method == Method::POST && segments == ["access", "ticket"] {
        return (login(cluster, body), false);
    }
    let user = match authenticate(cluster, method, headers) {
        Ok(user) => user,
        Err(reply) => return (reply, false),
    };
    let now = Instant::now();
    for state in cluster.vms.values_mut() {
        state.settle(now);
    }
    let reply = match (method.clone(), segments.as_slice()) {
        (Method::GET, ["version"]) => Reply::data(
            json!({ "version": "8.4.1", "release": "8.4", "repoid": "2a5fa54a8503f96d" }),
        ),
        (Method::GET, ["nodes"]) => Reply::data(Value::Array(
            cluster
                .nodes
                .iter()
                .map(|(node, up)| {
                    let mut entry = json!({
                        "node": node, "id": format!("node/{node}"), "type": "node",
                        "status": if *up { "online" } else { "offline" },
                    });
                    if *up {
                        let fields = json!({ "level": "", "maxcpu": 8, "cpu": 0.03,
                            "maxmem": 33_554_432_000_u64, "mem": 4_294_967_296_u64,
                            "maxdisk": 100_000_000_000_u64, "disk": 4_000_000_000_u64,
                            "uptime": 864_000 });
                        merge(&mut entry, fields);
                    }
                    entry
                })
                .collect(),
        )),
        (Method::GET, ["cluster", "resources"]) => {
            let all = match &cluster.frozen_resources {
                Some(frozen) => frozen.clone(),
                None => cluster_resources(cluster),
            };
            let wanted = query_param(uri, "type");
            Reply::data(Value::Array(
                all.into_iter()
                    .filter(|r| match wanted.as_deref() {
                        Some("vm") => r["type"] == "qemu" || r["type"] == "lxc",
                        Some(kind) => r["type"] == kind,
                        None => true,
                    })
                    .collect(),
            ))
        }
        (_, ["nodes", node, rest @ ..]) => {
            let up = cluster
                .nodes
                .iter()
                .find(|(name, _)| name == node)
                .map(|(_, up)| *up);
            match up {
                None => Reply::error(500, &format!("no such cluster node '{node}'")),
                // pveproxy forwards the call to the node and cannot reach it.
                Some(false) => Reply::bare(595, "No route to host"),
                Some(true) => return on_node(cluster, method, node, rest, &user, now),
            }
        }
        _ => Reply::error(
            501,
            &format!("Method '{method} /{}' not implemented", segments.join("/")),
        ),
    };
    (reply, false)
}

fn on_node(
    cluster: &mut Cluster,
    method: &Method,
    node: &str,
    rest: &[&str],
    user: &str,
    now: Instant,
) -> (Reply, bool) {
    let reply = match (method.clone(), rest) {
        (Method::GET, ["qemu"]) => Reply::data(Value::Array(
            cluster
                .vms
                .values()
                .filter(|s| s.vm.node == node)
                .map(|s| {
                    json!({ "vmid": s.vm.vmid, "name": s.vm.name, "status": power(s),
                        "cpus": 4, "maxmem": 8_589_934_592_u64, "maxdisk": 34_359_738_368_u64,
                        "uptime": if s.vm.running { 3600 } else { 0 } })
                })
                .collect(),
        )),
        (Method::GET, ["tasks", upid, "status"]) => match cluster.tasks.get(*upid) {
            Some(task) if task.node == node => {
                let mut status = json!({
                    "upid": upid, "node": task.node, "pid": task.pid, "pstart": task.pstart,
                    "starttime": task.starttime, "type": task.kind, "id": task.id,
                    "user": task.user,
                });
                let fields = if task.ends_at <= now {
                    json!({ "status": "stopped", "exitstatus": "OK" })
                } else {
                    json!({ "status": "running" })
                };
                merge(&mut status, fields);
                Reply::data(status)
            }
            _ => Reply::error(500, &format!("unable to open file - no such task '{upid}'")),
        },
        (_, ["qemu", vmid, "status", action]) => {
            let replaced = match (method.clone(), *action) {
                (Method::GET, "current") => Some(Endpoint::StatusCurrent),
                (Method::POST, "stop") => Some(Endpoint::StatusStop),
                _ => None,
            };
            if let Some(answer) =
                replaced.and_then(|e| cluster.answers.get(endpoint_key(e)).cloned())
            {
                return match answer {
                    Answer::Never => (Reply::data(Value::Null), true),
                    Answer::Raw { status, body } => {
                        let chunks = body
                            .chunks(16 * 1024)
                            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                            .collect::<Vec<_>>();
                        let reply = Reply {
                            status: StatusCode::from_u16(status).unwrap(),
                            reason: None,
                            body: Body::from_stream(futures::stream::iter(chunks)),
                        };
                        (reply, false)
                    }
                };
            }
            vm_action(cluster, method, node, vmid, action, user, now)
        }
        _ => Reply::error(
            501,
            &format!(
                "Method '{method} /nodes/{node}/{}' not implemented",
                rest.join("/")
            ),
        ),
    };
    (reply, false)
}

fn vm_action(
    cluster: &mut Cluster,
    method: &Method,
    node: &str,
    vmid: &str,
    action: &str,
    user: &str,
    now: Instant,
) -> Reply {
    let Some(id) = vmid.parse::<u32>().ok().filter(|id| *id >= 100) else {
        return Reply {
            status: StatusCode::BAD_REQUEST,
            reason: Some("Parameter verification failed.".into()),
            body: Body::from(
                json!({ "data": null, "message": "Parameter verification failed.\n",
                    "errors": { "vmid": "invalid format - value does not look like a valid VM ID\n" } })
                .to_string(),
            ),
        };
    };
    // A VM's config lives under the node that runs it; other nodes do not have it.
    let on_this_node = cluster.vms.get(&id).is_some_and(|s| s.vm.node == node);
    if !on_this_node {
        return Reply::error(
            500,
            &format!("Configuration file 'nodes/{node}/qemu-server/{id}.conf' does not exist"),
        );
    }
    let stop_delay = cluster.stop_delay;
    match (method.clone(), action) {
        (Method::GET, "current") => {
            let state = &cluster.vms[&id];
            Reply::data(status_current(state))
        }
        (Method::POST, "stop") => {
            let state = cluster.vms.get_mut(&id).unwrap();
            let running = state.vm.running;
            let ha = state.vm.ha_managed;
            let stops_at = now + stop_delay;
            if running {
                state.stops_at = Some(state.stops_at.map_or(stops_at, |at| at.min(stops_at)));
            }
            let (kind, ends_at) = if ha {
                state.ha_state = "stopped";
                // `ha-manager crm-command stop` only records the request.
                ("hastop", now)
            } else if running {
                ("qmstop", stops_at)
            } else {
                ("qmstop", now)
            };
            Reply::data(Value::String(start_task(
                cluster, node, kind, id, user, ends_at,
            )))
        }
        (Method::POST, "start") => {
            let state = cluster.vms.get_mut(&id).unwrap();
            state.vm.running = true;
            state.vm.paused = false;
            state.stops_at = None;
            state.ha_state = "started";
            let kind = if state.vm.ha_managed {
                "hastart"
            } else {
                "qmstart"
            };
            Reply::data(Value::String(start_task(
                cluster, node, kind, id, user, now,
            )))
        }
        _ => Reply::error(
            501,
            &format!("Method '{method} /nodes/{node}/qemu/{id}/status/{action}' not implemented"),
        ),
    }
}

fn start_task(
    cluster: &mut Cluster,
    node: &str,
    kind: &'static str,
    vmid: u32,
    user: &str,
    ends_at: Instant,
) -> String {
    cluster.next_pid += 1;
    let pid = cluster.next_pid;
    let pstart = 0x0150_0000 + pid;
    let starttime = unix_now();
    let upid = format!("UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{vmid}:{user}:");
    cluster.tasks.insert(
        upid.clone(),
        Task {
            node: node.into(),
            pid,
            pstart,
            starttime,
            kind,
            id: vmid.to_string(),
            user: user.into(),
            ends_at,
        },
    );
    upid
}

fn power(state: &VmState) -> &'static str {
    if state.vm.running {
        "running"
    } else {
        "stopped"
    }
}

fn status_current(state: &VmState) -> Value {
    let vm = &state.vm;
    let qmpstatus = match (vm.running, vm.paused) {
        (false, _) => "stopped",
        (true, true) => "paused",
        (true, false) => "running",
    };
    let mut status = json!({
        "vmid": vm.vmid, "name": vm.name, "status": power(state), "qmpstatus": qmpstatus,
        "cpus": 4, "cpu": 0, "maxmem": 8_589_934_592_u64, "mem": 0, "maxdisk": 34_359_738_368_u64,
        "disk": 0, "diskread": 0, "diskwrite": 0, "netin": 0, "netout": 0,
        "uptime": if vm.running { 3600 } else { 0 },
        "ha": if vm.ha_managed {
            json!({ "managed": 1, "state": state.ha_state, "group": null })
        } else {
            json!({ "managed": 0 })
        },
    });
    if vm.running {
        merge(&mut status, json!({ "pid": 4000 + vm.vmid, "agent": 1 }));
    }
    status
}

fn cluster_resources(cluster: &mut Cluster) -> Vec<Value> {
    let now = Instant::now();
    let mut all: Vec<Value> = cluster
        .nodes
        .iter()
        .map(|(node, up)| {
            json!({ "id": format!("node/{node}"), "type": "node", "node": node,
                "status": if *up { "online" } else { "offline" } })
        })
        .collect();
    for state in cluster.vms.values_mut() {
        state.settle(now);
        all.push(json!({
            "id": format!("qemu/{}", state.vm.vmid), "type": "qemu", "vmid": state.vm.vmid,
            "name": state.vm.name, "node": state.vm.node, "status": power(state),
            "hastate": if state.vm.ha_managed { Value::from(state.ha_state) } else { Value::Null },
        }));
    }
    all
}

fn login(cluster: &mut Cluster, body: &[u8]) -> Reply {
    let form = parse_form(body);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(username), Some(password)) = (field("username"), field("password")) else {
        return Reply {
            status: StatusCode::BAD_REQUEST,
            reason: Some("Parameter verification failed.".into()),
            body: Body::from(
                json!({ "data": null, "message": "Parameter verification failed.\n",
                    "errors": { "username": "property is missing and it is not optional\n" } })
                .to_string(),
            ),
        };
    };
    // A ticket as password renews it, as PVE allows.
    let renews = cluster
        .tickets
        .get(&password)
        .is_some_and(|(user, _)| *user == username);
    let known = cluster
        .users
        .iter()
        .any(|(user, pw)| *user == username && *pw == password);
    if !(known || renews) {
        return Reply::error(401, "authentication failure");
    }
    let hex_time = format!("{:08X}", unix_now());
    let base64 = base64::engine::general_purpose::STANDARD;
    let ticket = format!(
        "PVE:{username}:{hex_time}::{}",
        base64.encode(random_bytes(96))
    );
    let csrf = format!(
        "{hex_time}:{}",
        base64.encode(random_bytes(20)).trim_end_matches('=')
    );
    cluster
        .tickets
        .insert(ticket.clone(), (username.clone(), csrf.clone()));
    Reply::data(json!({
        "username": username,
        "ticket": ticket,
        "CSRFPreventionToken": csrf,
        "cap": { "vms": { "VM.PowerMgmt": 1, "VM.Audit": 1 }, "nodes": { "Sys.Audit": 1 } },
    }))
}

/// The credentials a request carries, the way pveproxy finds them: a ticket in the cookie,
/// else a ticket in `Authorization`, else an API token in `Authorization`.
fn presented_auth(headers: &HeaderMap) -> (Auth, Option<String>) {
    let cookie = header_text(headers, header::COOKIE);
    let authorization = header_text(headers, header::AUTHORIZATION);
    if let Some(ticket) = auth_value(cookie.as_deref(), "PVEAuthCookie")
        .or_else(|| auth_value(authorization.as_deref(), "PVEAuthCookie"))
    {
        return (Auth::Ticket, Some(ticket));
    }
    if let Some(token) = auth_value(authorization.as_deref(), "PVEAPIToken") {
        return (Auth::Token, Some(token));
    }
    (Auth::None, None)
}

/// The user (or token id) the request acts as, or the 401 pveproxy gives.
fn authenticate(cluster: &Cluster, method: &Method, headers: &HeaderMap) -> Result<String, Reply> {
    match presented_auth(headers) {
        (Auth::Ticket, Some(ticket)) => {
            let Some((user, csrf)) = cluster.tickets.get(&ticket) else {
                return Err(Reply::bare(401, "invalid PVE ticket"));
            };
            if *method != Method::GET
                && header_text(headers, "CSRFPreventionToken").as_deref() != Some(csrf.as_str())
            {
                return Err(Reply::bare(401, "Permission denied - invalid csrf token"));
            }
            Ok(user.clone())
        }
        (Auth::Token, Some(value)) => {
            let valid = value.rsplit_once('=').is_some_and(|(id, secret)| {
                cluster
                    .tokens
                    .iter()
                    .any(|(known_id, known_secret)| known_id == id && known_secret == secret)
            });
            match value.rsplit_once('=') {
                Some((id, _)) if valid => Ok(id.to_string()),
                _ => Err(Reply::bare(401, "invalid token value!")),
            }
        }
        _ => Err(Reply::bare(401, "No ticket")),
    }
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// pve-http-server's `extract_auth_value`: `KEY=value` or `KEY value` at the start or after
/// white space, up to a `;`, percent-decoded.
fn auth_value(header: Option<&str>, key: &str) -> Option<String> {
    let header = header?;
    let mut from = 0;
    while let Some(found) = header[from..].find(key) {
        let at = from + found;
        let after = at + key.len();
        let starts_word = at == 0 || header[..at].ends_with(char::is_whitespace);
        if starts_word && (header[after..].starts_with('=') || header[after..].starts_with(' ')) {
            let value = header[after + 1..].split(';').next().unwrap_or_default();
            let value = percent_decode(value);
            return (!value.is_empty()).then_some(value);
        }
        from = after;
    }
    None
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    parse_form(uri.query().unwrap_or_default().as_bytes())
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    u32::try_from(secs).unwrap()
}

/// Unpredictable enough for tickets that only this process checks.
fn random_bytes(n: usize) -> Vec<u8> {
    let state = std::collections::hash_map::RandomState::new();
    (0..n.div_ceil(8))
        .flat_map(|i| {
            let mut hasher = state.build_hasher();
            hasher.write_usize(i);
            hasher.finish().to_le_bytes()
        })
        .take(n)
        .collect()
}
