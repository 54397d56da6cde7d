//! Support for end-to-end tests against the local control plane that `hack/envtest.sh up`
//! starts, and the webhook binary that `hack/e2e.sh` runs on the host.
//!
//! Each test gets its own namespace; everything it creates lives there and goes with it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod envtest;

use envtest::Envtest;
pub use envtest::bmc::BmcEndpoint;
use envtest::node::{Node, NodeShape};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where `hack/envtest.sh` keeps the control plane's state (`ENVTEST_STATE_DIR`).
fn envtest_dir() -> PathBuf {
    std::env::var_os("ENVTEST_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/envtest"))
}

pub fn kubeconfig_path() -> PathBuf {
    envtest_dir().join("kubeconfig")
}

/// A client for the local control plane; fails with instructions when it is not up.
pub async fn client() -> anyhow::Result<Client> {
    client_from(&kubeconfig_path()).await
}

/// A client for the local control plane that connects with the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
        format!(
            "reading {}: start the control plane with hack/envtest.sh up",
            path.display()
        )
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// `kubectl` against the local control plane (the one on PATH from `hack/envtest.sh env`).
pub fn kubectl(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig_path())
        .args(args)
        .output()
        .context("running kubectl: put the envtest bin directory on PATH (eval \"$(hack/envtest.sh env)\")")
}

/// [`kubectl`] that must succeed; its error carries what kubectl said.
pub fn kubectl_ok(args: &[&str]) -> anyhow::Result<()> {
    let out = kubectl(args)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The RBAC objects of a shipped kustomization (ServiceAccounts, Roles, ClusterRoles and their
/// bindings), applied for a test's namespace instead of `jellyfin-ha`, so that a role run under
/// its ServiceAccount's token has exactly the rights users install. Objects outside the test's
/// namespace get the namespace as a name suffix and are deleted when dropped.
pub struct ShippedRbac {
    /// `kind/name` and namespace of what lives outside the test's namespace.
    outside: Vec<(String, Option<String>)>,
}

const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

impl ShippedRbac {
    /// Applies the RBAC of `kustomization` (a path under the repository) for `namespace`.
    pub fn apply(kustomization: &str, namespace: &str) -> anyhow::Result<Self> {
        let rendered = kubectl(&[
            "kustomize",
            repo_root().join(kustomization).to_str().unwrap_or_default(),
        ])?;
        anyhow::ensure!(
            rendered.status.success(),
            "kubectl kustomize {kustomization}: {rendered:?}"
        );
        let text = String::from_utf8(rendered.stdout)?;
        let ours = |name: &str| name.starts_with("jellyfin-ha");
        let mut objects = Vec::new();
        let mut outside = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut object: serde_json::Value = serde::Deserialize::deserialize(document)?;
            let kind = object
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            if !RBAC_KINDS.contains(&kind.as_str()) {
                continue;
            }
            let metadata: ObjectMeta =
                serde_json::from_value(object.get("metadata").cloned().unwrap_or_default())?;
            let name = metadata.name.unwrap_or_default();
            let namespaced = !kind.starts_with("Cluster");
            anyhow::ensure!(
                !namespaced || metadata.namespace.is_some(),
                "{kustomization}: {kind} {name} names no namespace; it would land in whichever \
                 namespace kubectl defaults to"
            );
            let binding_moved = namespaced && metadata.namespace.as_deref() != Some("jellyfin-ha");
            let mut moved = serde_json::Map::new();
            match metadata.namespace.as_deref() {
                Some("jellyfin-ha") => {
                    moved.insert("namespace".into(), namespace.into());
                }
                elsewhere => {
                    moved.insert("name".into(), format!("{name}-{namespace}").into());
                    outside.push((
                        format!("{kind}/{name}-{namespace}"),
                        elsewhere.map(str::to_string),
                    ));
                }
            }
            if let Some(metadata) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                metadata.extend(moved);
            }
            let subjects = object.get_mut("subjects").and_then(|s| s.as_array_mut());
            for subject in subjects
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_object_mut())
            {
                if subject.get("namespace").and_then(|n| n.as_str()) == Some("jellyfin-ha") {
                    subject.insert("namespace".into(), namespace.into());
                }
            }
            // A reference to a role that was renamed follows it: every ClusterRole of ours,
            // and a Role of ours beside a binding that moved with it.
            if let Some(role_ref) = object.get_mut("roleRef").and_then(|r| r.as_object_mut()) {
                let kind = role_ref
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default();
                let renamed = kind == "ClusterRole" || binding_moved;
                let name = role_ref
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default();
                if renamed && ours(name) {
                    let renamed = format!("{name}-{namespace}");
                    role_ref.insert("name".into(), renamed.into());
                }
            }
            objects.push(object);
        }
        let rbac = Self { outside };
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let dir = repo_root().join("target/e2e-tokens");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{namespace}-rbac.json"));
        std::fs::write(&file, list.to_string())?;
        let applied = kubectl(&["apply", "-f", file.to_str().unwrap_or_default()])?;
        anyhow::ensure!(
            applied.status.success(),
            "applying the RBAC of {kustomization}: {applied:?}"
        );
        Ok(rbac)
    }
}

impl Drop for ShippedRbac {
    fn drop(&mut self) {
        for (object, namespace) in &self.outside {
            let mut args = vec![
                "delete",
                object.as_str(),
                "--ignore-not-found",
                "--wait=false",
            ];
            if let Some(namespace) = namespace {
                args.extend(["-n", namespace.as_str()]);
            }
            let _ = kubectl(&args);
        }
    }
}

/// Writes a kubeconfig for the local control plane that authenticates as the ServiceAccount
/// `namespace/name` with a fresh token, and returns its path.
pub fn service_account_kubeconfig(namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
    let output = kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
    anyhow::ensure!(output.status.success(), "kubectl create token: {output:?}");
    let token = String::from_utf8(output.stdout)?.trim().to_string();
    let mut kubeconfig = Kubeconfig::read_from(kubeconfig_path())?;
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let dir = repo_root().join("target/e2e-tokens");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

/// A namespace of a test's own, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        Self::create_labelled(client, prefix, &[]).await
    }

    /// A namespace with `labels` besides the one every test namespace has.
    pub async fn create_labelled(
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let api: Api<Namespace> = Api::all(client.clone());
        let mut namespace = Namespace::default();
        namespace.metadata.generate_name = Some(format!("e2e-{prefix}-"));
        let mut all = vec![("jellyfin-ha.io/e2e".to_string(), "true".to_string())];
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        namespace.metadata.labels = Some(all.into_iter().collect());
        let created = api.create(&PostParams::default(), &namespace).await?;
        let name = created
            .metadata
            .name
            .context("created namespace has no name")?;
        Ok(Self { name })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// The webhook binary `hack/e2e.sh` started on the host.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT` of the plain-HTTP admin server.
    pub admin: String,
    pub ca_pem: String,
}

impl Webhook {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!("{name} is not set: run the end-to-end tests with hack/e2e.sh")
            })
        };
        let ca_file = var("JFHA_E2E_WEBHOOK_CA")?;
        let ca_pem =
            std::fs::read_to_string(&ca_file).with_context(|| format!("reading {ca_file}"))?;
        Ok(Self {
            url: var("JFHA_E2E_WEBHOOK_URL")?,
            admin: var("JFHA_E2E_WEBHOOK_ADMIN")?,
            ca_pem,
        })
    }

    /// Registers the shipped `MutatingWebhookConfiguration`, pointed at this webhook. Every
    /// rule and match condition is the one users install; only namespaces labelled
    /// [`OWN_REGISTRATION`] are left out, for the tests that register their own.
    pub async fn register(&self, client: &Client) -> anyhow::Result<()> {
        let url = format!("{}/mutate", self.url);
        let own_registration = LabelSelectorRequirement {
            key: OWN_REGISTRATION.to_string(),
            operator: "DoesNotExist".to_string(),
            values: None,
        };
        // A name of its own, so that dry runs of the shipped manifest never merge into it, and
        // one per webhook port, so that test runs side by side each keep their own.
        let port = self.url.rsplit(':').next().unwrap_or_default();
        let name = format!("jellyfin-ha-e2e-{port}");
        self.apply_shipped(
            client,
            &name,
            self.client_config(Some(&url), None),
            own_registration,
        )
        .await
    }

    /// Registers the shipped configuration once more under a name of its own, for `namespace`
    /// only (which must carry [`OWN_REGISTRATION`]), calling `url`; deleted when dropped.
    pub async fn register_own(
        &self,
        client: &Client,
        namespace: &str,
        url: &str,
    ) -> anyhow::Result<OwnRegistration> {
        let registration = self.own_registration(namespace);
        registration.point_at(client, url).await?;
        Ok(registration)
    }

    /// The same, calling the webhook through the Service `service` in `namespace`.
    pub async fn register_own_service(
        &self,
        client: &Client,
        namespace: &str,
        service: &str,
    ) -> anyhow::Result<OwnRegistration> {
        let registration = self.own_registration(namespace);
        registration.point_at_service(client, service).await?;
        Ok(registration)
    }

    fn own_registration(&self, namespace: &str) -> OwnRegistration {
        OwnRegistration {
            name: format!("jellyfin-ha-{namespace}"),
            namespace: namespace.to_string(),
            webhook: self.clone(),
        }
    }

    /// A client configuration that trusts this webhook's CA, by URL or by Service.
    fn client_config(
        &self,
        url: Option<&str>,
        service: Option<ServiceReference>,
    ) -> WebhookClientConfig {
        WebhookClientConfig {
            url: url.map(str::to_string),
            ca_bundle: Some(ByteString(self.ca_pem.clone().into_bytes())),
            service,
        }
    }

    async fn apply_shipped(
        &self,
        client: &Client,
        name: &str,
        client_config: WebhookClientConfig,
        namespaces: LabelSelectorRequirement,
    ) -> anyhow::Result<()> {
        let path = repo_root().join("manifests/base/mutatingwebhookconfiguration.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut config: MutatingWebhookConfiguration = serde_yaml::from_str(&text)?;
        for webhook in config.webhooks.iter_mut().flatten() {
            webhook.client_config = client_config.clone();
            webhook
                .namespace_selector
                .get_or_insert_default()
                .match_expressions
                .get_or_insert_default()
                .push(namespaces.clone());
        }
        config.metadata.name = Some(name.to_string());
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        api.patch(
            name,
            &PatchParams::apply("jellyfin-ha-e2e").force(),
            &Patch::Apply(&config),
        )
        .await?;
        Ok(())
    }

    /// GET on the admin port.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        admin_get(&self.admin, path)
    }

    /// Admission reviews of `kind` answered so far, over every operation and outcome.
    pub fn reviews_of(&self, kind: &str) -> anyhow::Result<u64> {
        let metrics = self.admin_get("/metrics")?;
        Ok(metric_total(
            &metrics,
            "jellyfin_ha_admission_reviews_total",
            &[&format!("kind=\"{kind}\"")],
        ))
    }
}

/// GET `path` on a plain-HTTP admin port (`127.0.0.1:PORT`): the body of a 200, else an error.
pub fn admin_get(admin: &str, path: &str) -> anyhow::Result<String> {
    let (status, body) = admin_response(admin, path)?;
    if status != 200 {
        bail!("GET {path}: {status} {body}");
    }
    Ok(body)
}

/// The status code and body of a GET on a plain-HTTP admin port, whatever the status.
pub fn admin_response(admin: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_once("\r\n\r\n")
        .and_then(|(head, _)| head.split_whitespace().nth(1)?.parse::<u16>().ok());
    let (Some(status), Some((_, body))) = (status, response.split_once("\r\n\r\n")) else {
        bail!("malformed HTTP response: {response}")
    };
    Ok((status, body.to_string()))
}

/// The sum of the samples of the counter `metric` (OpenMetrics text) whose labels contain each
/// of `labels` (`key="value"`).
pub fn metric_total(metrics: &str, metric: &str, labels: &[&str]) -> u64 {
    let prefix = format!("{metric}{{");
    metrics
        .lines()
        .filter(|line| line.starts_with(&prefix) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The `jellyfin-ha` binary under test: `JFHA_E2E_BIN`, else the debug build.
pub fn binary() -> PathBuf {
    std::env::var_os("JFHA_E2E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/jellyfin-ha"))
}

/// `jellyfin-ha explain POD -n NAMESPACE --config CONFIG` against the local control plane: the
/// table it prints.
pub fn explain(namespace: &str, pod: &str, config: &str) -> anyhow::Result<String> {
    let output = Command::new(binary())
        .env("KUBECONFIG", kubeconfig_path())
        .args(["explain", pod, "-n", namespace, "--config", config])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "explain: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An HTTPS role of `jellyfin-ha` (`webhook` or `extender`) of a test's own on free loopback
/// ports, with fresh certificates in `dir`; killed when dropped.
pub struct RoleProcess {
    /// Where it serves; the type describes any HTTPS role, not only the webhook.
    pub served: Webhook,
    /// Its HTTPS port.
    pub port: u16,
    child: std::process::Child,
}

impl RoleProcess {
    /// Starts the webhook with `args` besides the ports and certificates, as the admin.
    pub async fn webhook(dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start("webhook", dir, &kubeconfig_path(), args).await
    }

    /// Starts `role` on loopback connecting with `kubeconfig`, and waits until it is ready.
    pub async fn start(
        role: &str,
        dir: &Path,
        kubeconfig: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_at(role, "127.0.0.1", &[], dir, kubeconfig, args).await
    }

    /// The same on `host`, with a certificate also valid for `names`. Replicas started with
    /// the same `dir` share its certificate.
    pub async fn start_at(
        role: &str,
        host: &str,
        names: &[&str],
        dir: &Path,
        kubeconfig: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let certs = dir.join("certs");
        if !certs.join("tls.crt").exists() {
            let status = Command::new(binary())
                .args(["certs", "--name", host, "--out-dir"])
                .arg(&certs)
                .args(names.iter().flat_map(|name| ["--name", name]))
                .stderr(Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "jellyfin-ha certs: {status}");
        }
        let (port, admin_port) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join(format!("{role}-{port}.log")))?;
        let child = Command::new(binary())
            .env("KUBECONFIG", kubeconfig)
            .arg(role)
            .arg(format!("--listen={host}:{port}"))
            .arg(format!("--admin-listen=127.0.0.1:{admin_port}"))
            .arg(format!("--tls-cert={}", certs.join("tls.crt").display()))
            .arg(format!("--tls-key={}", certs.join("tls.key").display()))
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let process = Self {
            port,
            served: Webhook {
                url: format!("https://{host}:{port}"),
                admin: format!("127.0.0.1:{admin_port}"),
                ca_pem: std::fs::read_to_string(certs.join("ca.crt"))?,
            },
            child,
        };
        let admin = process.served.admin.clone();
        let what = format!("the {role} to be ready");
        eventually(Duration::from_secs(30), &what, || {
            let ready = admin_get(&admin, "/readyz").is_ok();
            async move { Ok(ready.then_some(())) }
        })
        .await?;
        Ok(process)
    }
}

impl RoleProcess {
    /// SIGTERM, as the kubelet stops a pod; its exit status once it has exited.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM: {status}");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("still running {within:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespace label that keeps the shared registration ([`Webhook::register`]) away.
pub const OWN_REGISTRATION: &str = "jellyfin-ha.io/e2e-own-registration";

/// A registration of the shipped webhook configuration for one test namespace.
pub struct OwnRegistration {
    pub name: String,
    namespace: String,
    webhook: Webhook,
}

impl OwnRegistration {
    /// Points every webhook of the registration at `url` (`https://HOST:PORT/mutate`), with
    /// the shipped rules, match conditions and failure policy.
    pub async fn point_at(&self, client: &Client, url: &str) -> anyhow::Result<()> {
        self.point_at_config(client, self.webhook.client_config(Some(url), None))
            .await
    }

    /// Points every webhook of the registration at the Service `service` (port 443, path
    /// `/mutate`) in the registration's namespace, as an installed webhook is reached.
    pub async fn point_at_service(&self, client: &Client, service: &str) -> anyhow::Result<()> {
        let reference = ServiceReference {
            namespace: self.namespace.clone(),
            name: service.to_string(),
            path: Some("/mutate".to_string()),
            port: Some(443),
        };
        self.point_at_config(client, self.webhook.client_config(None, Some(reference)))
            .await
    }

    async fn point_at_config(
        &self,
        client: &Client,
        config: WebhookClientConfig,
    ) -> anyhow::Result<()> {
        let only_this_namespace = LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".to_string(),
            operator: "In".to_string(),
            values: Some(vec![self.namespace.clone()]),
        };
        self.webhook
            .apply_shipped(client, &self.name, config, only_this_namespace)
            .await
    }
}

impl Drop for OwnRegistration {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// A ReadWriteOnce RBD volume bound to the claim `claim` in `namespace`. No provisioner runs
/// here, so the PersistentVolume (named `<namespace>-<claim>`, returned) is made by hand; the
/// Immediate `ceph-rbd` class binds the two at once.
pub async fn create_rbd_claim(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> anyhow::Result<String> {
    let pv_name = format!("{namespace}-{claim}");
    let pv = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd",
                 "persistentVolumeReclaimPolicy": "Delete", "claimRef": {"namespace": namespace, "name": claim},
                 "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": pv_name}}
    });
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(pv)?)
        .await?;
    let pvc = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd", "resources": {"requests": {"storage": "1Gi"}}}
    });
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &serde_json::from_value(pvc)?)
        .await?;
    Ok(pv_name)
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = check().await;
        match last {
            Ok(Some(value)) => return Ok(value),
            Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(None) => bail!("timed out after {timeout:?} waiting for {what}"),
            Err(e) => return Err(e.context(format!("waiting for {what}"))),
        }
    }
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own: its callers are
/// synchronous (a test's setup, a `Drop`), often inside a test's runtime, which cannot be
/// blocked on from within. A client is made per call, as it belongs to one runtime.
fn on_own_runtime<T: Send>(
    work: impl AsyncFnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(work())
        });
        worker
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the envtest worker thread panicked")))
    })
}

/// Runs a verb of `hack/envtest.sh` and returns its standard output. The `node-*` verbs run
/// in process, with the same code and messages.
pub fn envtest(args: &[&str]) -> anyhow::Result<String> {
    if args.first().is_some_and(|verb| verb.starts_with("node-")) {
        return on_own_runtime(async || envtest::cli::run(&Envtest::from_env(), args).await)
            .with_context(|| format!("hack/envtest.sh {}", args.join(" ")));
    }
    let output = Command::new(repo_root().join("hack/envtest.sh"))
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "hack/envtest.sh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A kwok node of a test's own, deleted with its Lease and CSINode when dropped.
pub struct TestNode {
    pub name: String,
}

impl TestNode {
    /// A QuickSync-like node with `gpus` iGPU shares (0: no GPU label or resource).
    pub fn add(prefix: &str, gpus: u32) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        Self::named(&format!("{prefix}-{}-{nanos:x}", std::process::id()), gpus)
    }

    /// The same with a name of the test's choosing; a leftover of that name from an earlier,
    /// interrupted run is replaced.
    pub fn named(name: &str, gpus: u32) -> anyhow::Result<Self> {
        let shape = NodeShape {
            gpus,
            ..NodeShape::default()
        };
        with_node(name, async |node| {
            node.delete().await?;
            node.add(&shape).await
        })?;
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// Sets a label on the node.
    pub fn label(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let output = kubectl(&[
            "label",
            "node",
            &self.name,
            &format!("{key}={value}"),
            "--overwrite",
        ])?;
        anyhow::ensure!(
            output.status.success(),
            "labelling {}: {output:?}",
            self.name
        );
        Ok(())
    }

    /// The machine dies: its BMC is told `ForceOff` (it says `Off` 1-11 s later, like
    /// hardware), its Lease stops being renewed at once and its pods stop being updated.
    pub fn power_off(&self) -> anyhow::Result<()> {
        with_node(&self.name, async |node| node.power_off().await)
    }

    /// The machine boots again: `On` through its BMC, then the kubelet with a new bootID.
    pub fn power_on(&self) -> anyhow::Result<()> {
        with_node(&self.name, async |node| node.power_on().await)
    }

    /// Alive but unreachable: the kubelet's heartbeats stop while the BMC still says `On`.
    pub fn partition(&self) -> anyhow::Result<()> {
        with_node(&self.name, async |node| node.partition().await)
    }

    /// The partition heals: the kubelet comes back with the same bootID.
    pub fn reconnect(&self) -> anyhow::Result<()> {
        with_node(&self.name, async |node| node.reconnect().await)
    }

    /// The node's Redfish BMC.
    pub fn bmc(&self) -> anyhow::Result<BmcEndpoint> {
        Envtest::from_env().bmc(&self.name)
    }
}

/// `act` on the node `name` of the control plane in `ENVTEST_STATE_DIR`.
fn with_node<T: Send>(
    name: &str,
    act: impl AsyncFnOnce(&Node) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    on_own_runtime(async || {
        let node = Node::new(&Envtest::from_env(), name).await?;
        act(&node).await
    })
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = with_node(&self.name, async |node| node.delete().await);
    }
}
