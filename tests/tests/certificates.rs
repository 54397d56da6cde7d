//! Self-managed certificates against a real kube-apiserver: two webhook replicas on this host
//! agree on one Secret, publish its CA into their webhook configuration, and rotate CA and
//! serving certificate while pods are being admitted, without one admission failing. A Secret
//! broken by hand keeps the last good certificate served, and stops a new replica's start-up.
//! The replicas run under the webhook's ServiceAccount token with the shipped RBAC.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use jellyfin_ha_certs::lifecycle::{CA_CERT, TLS_CERT, parse_certificates};
use jellyfin_ha_e2e::{
    OWN_REGISTRATION, ShippedRbac, TestNamespace, admin_get, binary, client, eventually, free_port,
    kubeconfig_path, kubectl, metric_total, repo_root, service_account_kubeconfig,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const SECRET: &str = "jellyfin-ha-webhook-tls";
/// The two replicas: HTTPS and admin ports.
const REPLICAS: [(u16, u16); 2] = [(18543, 18180), (18545, 18182)];
/// Short lives, so that the test sees a serving certificate renewed under its CA, a new CA
/// staged, published and switched to, and the old CA pruned, in about a minute.
const CA_SECONDS: u64 = 60;
const CERT_SECONDS: u64 = 30;
const PUBLISH_SECONDS: u64 = 2;

/// A `jellyfin-ha webhook` process in self-managed mode, killed when dropped.
struct Replica {
    child: Child,
    port: u16,
    admin: u16,
}

impl Replica {
    fn start(identity: &Identity, (port, admin): (u16, u16)) -> Self {
        Self::spawn(self_managed(identity, port, admin), port, admin)
    }

    /// Runs `command`, a webhook listening on `port` with its admin server on `admin`.
    fn spawn(mut command: Command, port: u16, admin: u16) -> Self {
        for p in [port, admin] {
            assert!(
                TcpStream::connect(("127.0.0.1", p)).is_err(),
                "port {p} is in use"
            );
        }
        let log =
            std::fs::File::create(repo_root().join(format!("target/e2e-certificates-{port}.log")))
                .unwrap();
        let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Self { child, port, admin }
    }

    fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin)
    }

    fn reloads(&self, result: &str) -> u64 {
        let metrics = admin_get(&self.admin(), "/metrics").unwrap_or_default();
        metric_total(
            &metrics,
            "jellyfin_ha_certificate_reloads_total",
            &[&format!("result=\"{result}\"")],
        )
    }

    /// The leaf certificate served on the HTTPS port (DER), verified against `bundle_pem` for
    /// the name 127.0.0.1.
    async fn served(&self, bundle_pem: &str) -> anyhow::Result<Vec<u8>> {
        let config = jellyfin_ha_certs::client_config(bundle_pem, &[b"http/1.1"])?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
        let tls = connector.connect(name, tcp).await?;
        let (_, connection) = tls.get_ref();
        Ok(connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.to_vec())
            .unwrap_or_default())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who the replicas are: the shipped webhook RBAC for the test's namespace, and its
/// ServiceAccount's token, so the apiserver holds them to the rights users install.
struct Identity {
    namespace: String,
    configuration: String,
    kubeconfig: std::path::PathBuf,
    _rbac: ShippedRbac,
}

impl Identity {
    fn new(namespace: &str, configuration: &str) -> Self {
        let rbac = ShippedRbac::apply("manifests/base", namespace).unwrap();
        // The shipped ClusterRole names the shipped configuration, jellyfin-ha; the test's own
        // has a name of its own.
        let patch = json!([{
            "op": "replace", "path": "/rules/0/resourceNames", "value": [configuration]
        }]);
        let patched = kubectl(&[
            "patch",
            "clusterrole",
            &format!("jellyfin-ha-webhook-{namespace}"),
            "--type=json",
            "-p",
            &patch.to_string(),
        ])
        .unwrap();
        assert!(patched.status.success(), "{patched:?}");
        Self {
            namespace: namespace.to_string(),
            configuration: configuration.to_string(),
            kubeconfig: service_account_kubeconfig(namespace, "jellyfin-ha-webhook").unwrap(),
            _rbac: rbac,
        }
    }
}

/// The webhook command line in self-managed mode for the test's namespace.
fn self_managed(identity: &Identity, port: u16, admin: u16) -> Command {
    let mut command = Command::new(binary());
    command
        .env("KUBECONFIG", &identity.kubeconfig)
        .env("POD_NAMESPACE", &identity.namespace)
        .env("RUST_LOG", "info,jellyfin_ha=debug")
        .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--cert-secret", SECRET, "--cert-name", "127.0.0.1"])
        .args(["--webhook-configuration", &identity.configuration])
        .args(["--cert-reload-seconds", "1"])
        .args(["--ca-validity-seconds", &CA_SECONDS.to_string()])
        .args(["--cert-validity-seconds", &CERT_SECONDS.to_string()])
        .args(["--ca-publish-seconds", &PUBLISH_SECONDS.to_string()]);
    command
}

/// The shipped Pod webhook twice, once per replica, for `namespace` only, with no caBundle
/// (the replicas publish it) and failurePolicy Fail: a pod is created only when both replicas
/// admitted it over TLS, so any handshake the apiserver could not verify fails a creation.
async fn register_both(client: &Client, namespace: &str) -> String {
    let text = std::fs::read_to_string(
        repo_root().join("manifests/base/mutatingwebhookconfiguration.yaml"),
    )
    .unwrap();
    let shipped: MutatingWebhookConfiguration = serde_yaml::from_str(&text).unwrap();
    let pods = shipped
        .webhooks
        .unwrap()
        .into_iter()
        .find(|w| w.name == "pods.jellyfin-ha.io")
        .unwrap();
    let name = format!("jellyfin-ha-{namespace}");
    let webhooks = REPLICAS
        .iter()
        .enumerate()
        .map(|(i, (port, _))| {
            let mut webhook = pods.clone();
            webhook.name = format!("pods-{i}.jellyfin-ha.io");
            webhook.failure_policy = Some("Fail".into());
            webhook.client_config = WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/mutate")),
                ca_bundle: None,
                service: None,
            };
            let selector = webhook.namespace_selector.get_or_insert_default();
            selector.match_expressions = Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![namespace.to_string()]),
            }]);
            webhook
        })
        .collect();
    let configuration = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(webhooks),
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .unwrap();
    name
}

struct DeleteConfiguration(String);

impl Drop for DeleteConfiguration {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.0,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

fn opted_in_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"jellyfin-ha.io/inject": "true"}},
        "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7"}]}
    }))
    .unwrap()
}

fn mutated(pod: &Pod) -> bool {
    pod.annotations().contains_key("jellyfin-ha.io/mutations")
}

fn bytes(secret: &Secret, key: &str) -> Vec<u8> {
    secret.data.as_ref().unwrap()[key].0.clone()
}

fn subjects(pem: &[u8]) -> Vec<String> {
    parse_certificates(pem, "bundle")
        .map(|certs| certs.into_iter().map(|c| c.subject).collect())
        .unwrap_or_default()
}

fn published_bundles(configuration: &MutatingWebhookConfiguration) -> Vec<Vec<u8>> {
    configuration
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .clone()
                .unwrap_or(ByteString(Vec::new()))
                .0
        })
        .collect()
}

#[tokio::test]
async fn self_managed_certificates_rotate_without_failing_an_admission() {
    let client = client().await.unwrap();
    let namespace = TestNamespace::create_labelled(&client, "certs", &[(OWN_REGISTRATION, "true")])
        .await
        .unwrap();
    let ns = namespace.name.as_str();
    let configuration = register_both(&client, ns).await;
    let _delete = DeleteConfiguration(configuration.clone());
    let identity = Identity::new(ns, &configuration);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // The shipped rights reach its own Secret and configuration, and nothing beside them.
    let as_webhook = {
        let kubeconfig = kube::config::Kubeconfig::read_from(&identity.kubeconfig).unwrap();
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    };
    let forbidden = |result: Result<_, kube::Error>| matches!(result, Err(kube::Error::Api(status)) if status.code == 403);
    assert!(forbidden(
        Api::<Secret>::namespaced(as_webhook.clone(), ns)
            .get("jellyfin-ha-fencer-credentials")
            .await
            .map(drop)
    ));
    assert!(forbidden(
        Api::<MutatingWebhookConfiguration>::all(as_webhook.clone())
            .list(&ListParams::default())
            .await
            .map(drop)
    ));
    assert!(forbidden(
        Api::<Pod>::namespaced(as_webhook, ns)
            .list(&ListParams::default())
            .await
            .map(drop)
    ));

    // Both start at once and race to create the Secret.
    let replicas: Vec<Replica> = REPLICAS
        .iter()
        .map(|ports| Replica::start(&identity, *ports))
        .collect();
    for replica in &replicas {
        eventually(Duration::from_secs(30), "both replicas ready", || async {
            Ok(admin_get(&replica.admin(), "/readyz").ok().map(drop))
        })
        .await
        .unwrap();
    }
    let secret = secrets.get(SECRET).await.unwrap();
    let first_ca = subjects(&bytes(&secret, CA_CERT));
    assert_eq!(first_ca.len(), 1, "one CA: {first_ca:?}");
    let bundle = String::from_utf8(bytes(&secret, CA_CERT)).unwrap();
    let leaf = parse_certificates(&bytes(&secret, TLS_CERT), TLS_CERT).unwrap()[0]
        .der
        .clone();
    for replica in &replicas {
        assert_eq!(
            replica.served(&bundle).await.unwrap(),
            leaf,
            "replica on {} serves the Secret's certificate",
            replica.port
        );
    }
    let published = configurations.get(&configuration).await.unwrap();
    for ca_bundle in published_bundles(&published) {
        assert_eq!(
            subjects(&ca_bundle),
            first_ca,
            "the caBundle holds the Secret's CA"
        );
    }

    // A real pod, admitted by both replicas through the apiserver.
    let pod = pods
        .create(&PostParams::default(), &opted_in_pod("first"))
        .await
        .unwrap();
    assert!(mutated(&pod), "{:?}", pod.annotations());

    // Pods keep coming while the certificates rotate (server-side dry runs: admitted by both
    // webhooks exactly like a creation, and nothing to clean up).
    let stop = Arc::new(AtomicBool::new(false));
    let (admitted, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stream = {
        let (pods, stop) = (pods.clone(), Arc::clone(&stop));
        let (admitted, failures) = (Arc::clone(&admitted), Arc::clone(&failures));
        tokio::spawn(async move {
            let dry_run = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            let mut errors = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                match pods.create(&dry_run, &opted_in_pod(&format!("p{n}"))).await {
                    Ok(pod) if mutated(&pod) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => errors.push(format!("p{n}: admitted unmutated")),
                    Err(e) => errors.push(format!("p{n}: {e}")),
                }
                failures.store(errors.len(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            errors
        })
    };

    // The CA rotates: a second CA is published beside the first, the served certificate moves
    // to it, and the first leaves the bundle when it expires.
    let mut most_cas_published = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(CA_SECONDS + 60);
    let rotated = loop {
        let published = configurations.get(&configuration).await.unwrap();
        for ca_bundle in published_bundles(&published) {
            most_cas_published = most_cas_published.max(subjects(&ca_bundle).len());
        }
        let secret = secrets.get(SECRET).await.unwrap();
        let cas = subjects(&bytes(&secret, CA_CERT));
        if cas.len() == 1 && cas != first_ca {
            break secret;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new CA signing what is served with the old one pruned: {cas:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Let the last switch reach both replicas, with pods still coming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Release);
    let errors = stream.await.unwrap();
    assert!(errors.is_empty(), "admissions failed: {errors:?}");
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(
        admitted >= 100,
        "only {admitted} pods admitted during the rotation"
    );
    eprintln!("{admitted} pods admitted by both replicas during the rotation, none failed");
    assert_eq!(
        most_cas_published, 2,
        "old and new CA were published together"
    );

    let secret = secrets.get(SECRET).await.unwrap();
    assert_eq!(
        secret.resource_version(),
        rotated.resource_version(),
        "the Secret settled"
    );
    let bundle = String::from_utf8(bytes(&secret, CA_CERT)).unwrap();
    let new_ca = subjects(bundle.as_bytes());
    let serving = parse_certificates(&bytes(&secret, TLS_CERT), TLS_CERT).unwrap()[0].clone();
    assert_eq!(vec![serving.issuer.clone()], new_ca);
    for replica in &replicas {
        assert_eq!(
            replica.served(&bundle).await.unwrap(),
            serving.der,
            "replica on {} serves the new certificate",
            replica.port
        );
        assert!(
            replica.reloads("success") >= 2,
            "served a renewed and a re-signed certificate"
        );
    }
    let published = configurations.get(&configuration).await.unwrap();
    for ca_bundle in published_bundles(&published) {
        assert_eq!(subjects(&ca_bundle), new_ca);
    }
    // What kube-scheduler's extender configuration is given.
    let stanza = Command::new(binary())
        .args(["certs", "scheduler-tls", "--secret", SECRET, "-n", ns])
        .args(["--kubeconfig", kubeconfig_path().to_str().unwrap()])
        .output()
        .unwrap();
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bundle);
    assert_eq!(
        String::from_utf8_lossy(&stanza.stdout),
        format!(
            "    enableHTTPS: true\n    tlsConfig:\n      insecure: false\n      caData: \"{encoded}\"\n"
        ),
        "{}",
        String::from_utf8_lossy(&stanza.stderr)
    );

    // Broken by hand: both keep serving the last good certificate, count the failure and say
    // so in an Event on the Secret.
    let mut broken = secret.clone();
    broken
        .data
        .as_mut()
        .unwrap()
        .insert(TLS_CERT.into(), ByteString(b"not a certificate".to_vec()));
    secrets
        .replace(SECRET, &PostParams::default(), &broken)
        .await
        .unwrap();
    for replica in &replicas {
        eventually(Duration::from_secs(15), "the failure counted", || async {
            Ok((replica.reloads("error") > 0).then_some(()))
        })
        .await
        .unwrap();
        assert_eq!(replica.served(&bundle).await.unwrap(), serving.der);
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let event = eventually(
        Duration::from_secs(15),
        "a Warning Event on the Secret",
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("CertificateNotRenewed")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(SECRET)
            }))
        },
    )
    .await
    .unwrap();
    assert_names_the_broken_file(&event);
    let pod = pods
        .create(&PostParams::default(), &opted_in_pod("after-break"))
        .await
        .unwrap();
    assert!(mutated(&pod));

    // A replica that cannot read the certificate at start does not start, and says which.
    let mut third = self_managed(&identity, REPLICAS[0].0, REPLICAS[0].1)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..200 {
        status = third.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = third.kill();
    let output = third.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    assert!(
        stderr.contains(&format!("Secret {ns}/{SECRET}")) && stderr.contains("tls.crt"),
        "{stderr}"
    );
    let _ = pods.delete("first", &DeleteParams::default()).await;
}

/// cert-manager's CRDs at a pinned release, from its Go module (the Helm chart's copies, with
/// the templated labels and annotations left out), so the overlay's Issuers and Certificates
/// are checked against cert-manager's own schema.
const CERT_MANAGER_MODULE: &str = "github.com/cert-manager/cert-manager@v1.16.5";

fn cert_manager_crds() -> Vec<serde_json::Value> {
    let output = Command::new("go")
        .args(["mod", "download", "-json", CERT_MANAGER_MODULE])
        .output()
        .expect("go (the local control plane's binaries are built with it)");
    assert!(
        output.status.success(),
        "go mod download {CERT_MANAGER_MODULE}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let module: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let dir = std::path::PathBuf::from(module["Dir"].as_str().unwrap()).join("deploy/crds");
    ["crd-issuers.yaml", "crd-certificates.yaml"]
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let mut crd: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let metadata = crd["metadata"].as_object_mut().unwrap();
            metadata.remove("labels");
            metadata.remove("annotations");
            crd
        })
        .collect()
}

#[tokio::test]
async fn cert_manager_overlay_is_accepted_by_the_apiserver() {
    let client = client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in cert_manager_crds() {
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        crds.patch(
            &name,
            &PatchParams::apply("jellyfin-ha-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    let output = kubectl(&["create", "namespace", "jellyfin-ha"]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || stderr.contains("AlreadyExists"),
        "{stderr}"
    );
    let overlay = repo_root().join("manifests/overlays/cert-manager");
    // A new CRD is served a moment after it is created.
    let applied = eventually(
        Duration::from_secs(30),
        "the overlay to pass a server-side dry run",
        || async {
            let output = kubectl(&["apply", "--dry-run=server", "-k", overlay.to_str().unwrap()])?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("no matches for kind")
                || stderr.contains("ensure CRDs are installed")
            {
                return Ok(None);
            }
            anyhow::ensure!(
                output.status.success(),
                "{}{stderr}",
                String::from_utf8_lossy(&output.stdout)
            );
            Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
        },
    )
    .await
    .unwrap();
    for object in [
        "certificate.cert-manager.io/jellyfin-ha-webhook",
        "issuer.cert-manager.io/jellyfin-ha-ca",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/jellyfin-ha",
        "deployment.apps/jellyfin-ha-webhook",
    ] {
        assert!(applied.contains(object), "{object} missing:\n{applied}");
    }
}

/// Certificate files (a mounted Secret, cert-manager's) broken on disk: the previous
/// certificate stays served, the failure is counted, and a Warning Event on the pod says why.
#[tokio::test]
async fn a_broken_certificate_file_keeps_the_old_one_served_and_says_so_on_the_pod() {
    let client = client().await.unwrap();
    let namespace = TestNamespace::create(&client, "certfile").await.unwrap();
    let ns = namespace.name.as_str();
    let dir = repo_root().join(format!("target/e2e-certfile-{ns}"));
    let generated = Command::new(binary())
        .args([
            "certs",
            "--out-dir",
            dir.to_str().unwrap(),
            "--name",
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    let (port, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut command = Command::new(binary());
    command
        .env("KUBECONFIG", kubeconfig_path())
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", "jellyfin-ha-webhook-0")
        .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--tls-cert", dir.join(TLS_CERT).to_str().unwrap()])
        .args(["--tls-key", dir.join("tls.key").to_str().unwrap()])
        .args(["--cert-reload-seconds", "1"]);
    let replica = Replica::spawn(command, port, admin);
    eventually(Duration::from_secs(30), "the webhook ready", || async {
        Ok(admin_get(&replica.admin(), "/readyz").ok().map(drop))
    })
    .await
    .unwrap();
    let ca = std::fs::read_to_string(dir.join(CA_CERT)).unwrap();
    let served = replica.served(&ca).await.unwrap();

    std::fs::write(dir.join(TLS_CERT), "not a certificate").unwrap();
    eventually(Duration::from_secs(15), "the failure counted", || async {
        Ok((replica.reloads("error") > 0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(replica.served(&ca).await.unwrap(), served);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let event = eventually(
        Duration::from_secs(15),
        "a Warning Event on the pod",
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("CertificateNotRenewed")
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Pod")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some("jellyfin-ha-webhook-0")
            }))
        },
    )
    .await
    .unwrap();
    assert_names_the_broken_file(&event);
}

/// A CertificateNotRenewed Event says which file of the certificate was broken.
fn assert_names_the_broken_file(event: &Event) {
    let note = event.note.as_deref().unwrap_or_default();
    assert!(note.contains("tls.crt"), "{note:?}");
}
