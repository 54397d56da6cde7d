//! The container image as the manifests run it: loaded from its OCI archive into podman, run
//! with a read-only root filesystem, as user 65532, with every capability dropped. The webhook
//! in it follows its scheduling ConfigMap on the local control plane, serves `/livez`, answers
//! an AdmissionReview over TLS with the patch `mutate` computes, and exits 0 on SIGTERM well
//! within the grace; the binary resolves host names without a libc.
//!
//! Ignored by default; `hack/image.sh test` builds the image, brings up the control plane and
//! runs them with `--ignored`, with `JFHA_IMAGE_ARCHIVE` naming the archive and kubectl on PATH.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jellyfin_ha_e2e::{admin_get, kubeconfig_path, kubectl};
use k8s_openapi::ByteString;
use serde_json::Value;

const REVIEW: &str = include_str!("../../webhook/server/tests/fixtures/review-pod-create.json");
/// Loopback ports the webhook container listens on (host network, to reach the control plane).
const TLS_PORT: u16 = 19443;
const ADMIN_PORT: u16 = 19080;
/// What the kubelet gives a pod by default between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(30);

/// `podman` with the runtime and limits that work on this kernel (crun fails on its hybrid
/// cgroups; runc needs explicit limits).
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running podman: {e}"))
}

fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs the image with a one-off command, as the manifests run it, and returns its output.
fn run_once(image: &str, extra: &[&str], command: &[&str]) -> Output {
    let mut args = vec!["run", "--rm"];
    args.extend(HARDENED);
    args.extend(extra);
    args.push(image);
    args.extend(command);
    podman(&args)
}

/// The container settings of the shipped manifests' securityContext, and this host's limits.
const HARDENED: [&str; 10] = [
    "--read-only",
    "--user",
    "65532:65532",
    "--cap-drop=ALL",
    "--security-opt",
    "no-new-privileges",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The image loaded from `JFHA_IMAGE_ARCHIVE`, once per test run.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let archive = std::env::var("JFHA_IMAGE_ARCHIVE").unwrap_or_else(|_| {
            panic!("JFHA_IMAGE_ARCHIVE is not set: run hack/image.sh test, which builds the image")
        });
        let loaded = podman_ok(&["load", "--quiet", "--input", &archive]);
        // "Loaded image: REF" (one per line when an archive holds several).
        loaded
            .lines()
            .find_map(|line| line.split_once(": ").map(|(_, reference)| reference.trim()))
            .unwrap_or_else(|| panic!("podman load named no image: {loaded}"))
            .to_string()
    })
}

/// A directory of a test's own that a container user 65532 can write into; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("jfha-image-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// `HOST:CONTAINER[:OPTIONS]` for `--volume`.
    fn mount(&self, at: &str, options: &str) -> String {
        format!("{}:{at}{options}", self.0.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A detached container, removed on drop.
struct Container(String);

impl Container {
    fn running(&self) -> bool {
        podman(&["inspect", "--format", "{{.State.Running}}", &self.0]).stdout == b"true\n"
    }

    fn logs(&self) -> String {
        let output = podman(&["logs", &self.0]);
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

fn wait_until(
    timeout: Duration,
    what: &str,
    container: &Container,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            container.running(),
            "the container exited before {what}; its log:\n{}",
            container.logs()
        );
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; container log:\n{}",
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POSTs `body` to the webhook over TLS, trusting only the CA `jellyfin-ha certs` made.
fn post_review(ca: &Path, body: &str) -> Value {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca)
        .args([
            "--header",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://localhost:{TLS_PORT}/mutate"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("running curl: {e}"));
    assert!(
        output.status.success(),
        "POST /mutate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `pod` with the JSON patch applied, by kubectl.
fn apply_patch(pod_file: &Path, patch: &Value) -> Value {
    let output = kubectl(&[
        "patch",
        "--local",
        "--type=json",
        "--output=json",
        "--filename",
        pod_file.to_str().unwrap(),
        "--patch",
        &patch.to_string(),
    ])
    .unwrap();
    assert!(
        output.status.success(),
        "kubectl patch --local: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
#[ignore = "needs podman and the image; run by hack/image.sh test"]
fn serves_admission_reviews_hardened_and_stops_on_sigterm() {
    let image = image();
    assert_eq!(
        podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", image]).trim(),
        "65532:65532",
        "the image itself runs as non-root"
    );

    // Certificates from the image's own `certs`, mounted read-only into the webhook.
    let work = Scratch::new("webhook");
    let generated = run_once(
        image,
        &["--volume", &work.mount("/out", "")],
        &["certs", "--out-dir", "/out", "--name", "localhost"],
    );
    assert!(
        generated.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&generated.stderr)
    );

    // The webhook follows the scheduling ConfigMap in a namespace of this run's own, where
    // there is none: pods get no scheduling marker, as with `mutate`'s default.
    let name = format!("jfha-image-webhook-{}", std::process::id());
    let certs = work.mount("/certs", ":ro");
    let kubeconfig = format!("{}:/kube/config:ro", kubeconfig_path().display());
    let listen = format!("127.0.0.1:{TLS_PORT}");
    let admin = format!("127.0.0.1:{ADMIN_PORT}");
    let mut args = vec!["run", "--detach", "--name", &name];
    args.extend(HARDENED);
    args.extend([
        "--network",
        "host",
        "--volume",
        &certs,
        "--volume",
        &kubeconfig,
    ]);
    args.extend(["--env", "KUBECONFIG=/kube/config", image, "webhook"]);
    args.extend([
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
        "--namespace",
        &name,
    ]);
    args.extend([
        "--tls-cert",
        "/certs/tls.crt",
        "--tls-key",
        "/certs/tls.key",
    ]);
    podman_ok(&args);
    let container = Container(name);
    wait_until(Duration::from_secs(30), "/livez", &container, || {
        admin_get(&admin, "/livez").is_ok()
    });
    wait_until(Duration::from_secs(30), "/readyz", &container, || {
        admin_get(&admin, "/readyz").is_ok()
    });

    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let answer = post_review(&work.path().join("ca.crt"), REVIEW);
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"], "{answer}");
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let patch: ByteString = serde_json::from_value(response["patch"].clone())
        .unwrap_or_else(|e| panic!("the patch is not base64 ({e}): {answer}"));
    let patch: Value = serde_json::from_slice(&patch.0).unwrap();

    // The webhook's patch, applied, gives the pod `mutate` prints for the same input.
    let pod_file = work.path().join("pod.json");
    std::fs::write(&pod_file, review["request"]["object"].to_string()).unwrap();
    let patched = apply_patch(&pod_file, &patch);
    let mutated = run_once(
        image,
        &["--volume", &work.mount("/work", ":ro")],
        &["mutate", "--filename", "/work/pod.json", "--output", "json"],
    );
    assert!(
        mutated.status.success(),
        "mutate: {}",
        String::from_utf8_lossy(&mutated.stderr)
    );
    let mutated: Value = serde_json::from_slice(&mutated.stdout).unwrap();
    assert_eq!(patched, mutated);
    let spec = &patched["spec"];
    assert!(
        spec["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| {
                t["key"] == "node.kubernetes.io/unreachable" && t["tolerationSeconds"] == 15
            })),
        "{patched}"
    );
    assert!(spec["affinity"]["nodeAffinity"].is_object(), "{patched}");
    assert!(
        patched["metadata"]["annotations"]["jellyfin-ha.io/mutations"].is_string(),
        "{patched}"
    );

    // SIGTERM, as the kubelet sends it: drained and exit 0, long before the SIGKILL.
    let started = Instant::now();
    podman_ok(&["stop", "--time", &GRACE.as_secs().to_string(), &container.0]);
    let stopped_after = started.elapsed();
    let exit_code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &container.0]);
    assert_eq!(exit_code.trim(), "0", "log:\n{}", container.logs());
    assert!(
        stopped_after < GRACE / 2,
        "stopping took {stopped_after:?}; log:\n{}",
        container.logs()
    );
}

#[test]
#[ignore = "needs podman and the image; run by hack/image.sh test"]
fn resolves_host_names_from_etc_hosts_without_nss() {
    // An API server whose name only /etc/hosts knows (the kubelet mounts /etc/hosts and
    // /etc/resolv.conf; podman does the same), on a port where nothing listens: the lookup
    // must succeed for the connection to be refused.
    let work = Scratch::new("resolve");
    let kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
        clusters: [{name: c, cluster: {server: 'https://apiserver.jellyfin-ha.test:1'}}]\n\
        users: [{name: u, user: {token: t}}]\n\
        contexts: [{name: c, context: {cluster: c, user: u}}]\n";
    std::fs::write(work.path().join("kubeconfig"), kubeconfig).unwrap();
    let output = run_once(
        image(),
        &[
            "--volume",
            &work.mount("/work", ":ro"),
            "--add-host",
            "apiserver.jellyfin-ha.test:127.0.0.1",
            "--network",
            "host",
        ],
        &["explain", "jellyfin", "--kubeconfig", "/work/kubeconfig"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}
