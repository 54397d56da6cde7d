//! A real Redfish service for tests: sushy-tools' emulator with its fake driver, on a loopback
//! port, over HTTPS with basic auth, one powered-on system per emulator. Like hardware, its
//! fake driver applies a power change 1-11 s after the request.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jellyfin_ha_certs::generate;
use tokio::process::{Child, Command};

pub const USERNAME: &str = "admin";
pub const PASSWORD: &str = "fence-test-Pw-5821";
/// bcrypt of [`PASSWORD`], the only digest sushy-tools reads from an htpasswd file. Cost 4 (the
/// minimum): the emulator checks it on every request.
const PASSWORD_BCRYPT: &str = "$2b$04$5bqiEXBbSLyX7RongRr.dea1.Hhdp3Cct4rN8P.gA48ASHm8wDdwa";

pub const FENCE_REDFISH: &str = "/usr/sbin/fence_redfish";

const INSTALL: &str = "hack/test.sh installs the fencing test tools (hack/lib-bmc.sh: \
    ensure_bmc_tools): Debian's fence-agents package for /usr/sbin/fence_redfish, and \
    sushy-tools 2.2.0 in a virtualenv at ${JFHA_CACHE:-~/.cache/jellyfin-ha}/venv \
    (python3 -m venv DIR && DIR/bin/pip install sushy-tools==2.2.0)";

/// The emulator to run: `JFHA_SUSHY_EMULATOR`, or the virtualenv hack/test.sh installs.
pub fn sushy_emulator() -> PathBuf {
    let path = match std::env::var_os("JFHA_SUSHY_EMULATOR") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("JFHA_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(|dir| PathBuf::from(dir).join("jellyfin-ha"))
                })
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|home| PathBuf::from(home).join(".cache/jellyfin-ha"))
                })
                .expect("neither JFHA_CACHE nor HOME is set");
            cache.join("venv/bin/sushy-emulator")
        }
    };
    assert!(
        path.is_file(),
        "sushy-emulator not found at {} (set JFHA_SUSHY_EMULATOR to use another): {INSTALL}",
        path.display()
    );
    path
}

/// Debian's `fence_redfish`, which the program runner tests drive.
pub fn fence_redfish() -> &'static Path {
    let path = Path::new(FENCE_REDFISH);
    assert!(path.is_file(), "{FENCE_REDFISH} not found: {INSTALL}");
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running emulator; killed when dropped.
pub struct Emulator {
    pub port: u16,
    /// The system's UUID: its canonical path is `/redfish/v1/Systems/<uuid>`.
    pub uuid: String,
    /// The system's name: `/redfish/v1/Systems/<name>` redirects to the UUID.
    pub name: String,
    /// The CA that signed the emulator's certificate, PEM.
    pub ca_file: PathBuf,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Emulator {
    /// An emulator with one system named `name`, powered on, ready to answer.
    pub async fn start(name: &str) -> Self {
        let program = sushy_emulator();
        let dir = tempfile::tempdir().unwrap();
        let certs = generate(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &certs.ca_pem).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &certs.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &certs.key_pem).unwrap();
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("{USERNAME}:{PASSWORD_BCRYPT}\n"),
        )
        .unwrap();
        let uuid = unique_uuid();
        // The fake driver keeps its systems in SQLite under the state directory, shared by
        // every emulator unless each has its own. The file is Python: the INFO level makes the
        // emulator log each reset type it receives (its fake driver turns ForceOff and
        // GracefulShutdown alike into Off, so the log is the only witness of which was sent).
        let config = format!(
            "SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{uuid}', 'name': '{name}', \
             'power_state': 'On', 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}]}}]\n\
             SUSHY_EMULATOR_AUTH_FILE = {auth:?}\n\
             SUSHY_EMULATOR_STATE_DIR = {state:?}\n\
             import logging\n\
             logging.getLogger('sushy_tools.emulator.main').setLevel(logging.INFO)\n",
            auth = dir.path().join("htpasswd").display().to_string(),
            state = dir.path().join("state").display().to_string(),
        );
        std::fs::write(dir.path().join("emulator.conf"), config).unwrap();

        let log_path = dir.path().join("emulator.log");
        // The free port can be taken before the emulator binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&program)
                .arg("--fake")
                .arg("--config")
                .arg(dir.path().join("emulator.conf"))
                .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .arg("--ssl-certificate")
                .arg(dir.path().join("tls.crt"))
                .arg("--ssl-key")
                .arg(dir.path().join("tls.key"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
            if wait_ready(&mut child, port, &ca_file).await {
                return Self {
                    port,
                    uuid,
                    name: name.to_string(),
                    ca_file,
                    dir,
                    child,
                };
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !log.contains("Address already in use") {
                panic!("sushy-emulator did not start on port {port}:\n{log}");
            }
        }
        panic!("sushy-emulator found no free port");
    }

    pub fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_path(&self) -> String {
        self.ca_file.display().to_string()
    }

    /// The emulator's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }
}

/// Polls the service root (which needs no credentials) until it answers over TLS with the
/// test CA; false if the emulator exits first.
async fn wait_ready(child: &mut Child, port: u16, ca_file: &Path) -> bool {
    let client = jellyfin_ha::fencer::http::client(
        Some(&ca_file.display().to_string()),
        false,
        Duration::from_secs(2),
    )
    .unwrap();
    let url = format!("https://127.0.0.1:{port}/redfish/v1/");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(response) = client.get(&url).send().await
            && response.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sushy-emulator on port {port} did not answer within 60 s");
}

/// A UUID no other emulator of this run uses (the fake driver keys its state by it).
fn unique_uuid() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        count & 0xffff,
        nanos & 0xffff_ffff_ffff
    )
}
