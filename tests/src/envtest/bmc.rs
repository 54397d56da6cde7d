//! Every node's Redfish BMC: a sushy-tools emulator on loopback with one fake system (the
//! node's systemUUID), HTTPS with the BMC CA of the PKI, basic auth with a password of its own.
//! Its facts live in `$STATE_DIR/bmc/NAME`. Like hardware, the fake system applies a reset 1 to
//! 11 s after it is requested.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Envtest;

/// The only user of every BMC.
const USERNAME: &str = "admin";
/// How many ports from the base are tried.
const PORT_RANGE: u16 = 1000;

/// A node's Redfish BMC (a sushy-tools emulator on loopback), as `hack/envtest.sh node-bmc`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcEndpoint {
    /// `https://127.0.0.1:PORT`
    pub address: String,
    /// `/redfish/v1/Systems/<uuid>`; the UUID is the node's `systemUUID`.
    pub system_path: String,
    pub username: String,
    pub password: String,
    /// The CA certificate (PEM) that signed the BMC's serving certificate.
    pub ca_file: String,
}

impl BmcEndpoint {
    /// Parses `key=value` lines; every field is required.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut fields: std::collections::HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let mut take = |key: &str| {
            fields
                .remove(key)
                .map(str::to_string)
                .with_context(|| format!("no {key}= in node-bmc output:\n{text}"))
        };
        Ok(Self {
            address: take("address")?,
            system_path: take("system_path")?,
            username: take("username")?,
            password: take("password")?,
            ca_file: take("ca_file")?,
        })
    }

    /// The `key=value` lines [`BmcEndpoint::parse`] reads.
    pub fn to_lines(&self) -> String {
        format!(
            "address={}\nsystem_path={}\nusername={}\npassword={}\nca_file={}\n",
            self.address, self.system_path, self.username, self.password, self.ca_file
        )
    }

    /// `(host, port)` of the address, as fence agents take them (`ip=`, `ipport=`).
    pub fn host_and_port(&self) -> anyhow::Result<(String, u16)> {
        let rest = self
            .address
            .strip_prefix("https://")
            .with_context(|| format!("not an https address: {}", self.address))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .with_context(|| format!("no port in {}", self.address))?;
        Ok((host.to_string(), port.parse()?))
    }

    /// Exit code of the real Debian `fence_redfish` (fence-agents) asked for `action` on this
    /// BMC: for `status`, 0 = on, 2 = off. `verify_with_ca` checks the BMC's certificate
    /// against `ca_file` instead of skipping verification.
    pub fn fence_redfish(&self, action: &str, verify_with_ca: bool) -> anyhow::Result<Option<i32>> {
        let (host, port) = self.host_and_port()?;
        let mut input = format!(
            "action={action}\nip={host}\nipport={port}\nusername={}\npassword={}\nsystems-uri={}\n",
            self.username, self.password, self.system_path
        );
        let mut command = Command::new("/usr/sbin/fence_redfish");
        if verify_with_ca {
            // fence_redfish verifies through python-requests, which reads this variable.
            command.env("REQUESTS_CA_BUNDLE", &self.ca_file);
        } else {
            input.push_str("ssl_insecure=1\n");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "/usr/sbin/fence_redfish (Debian package fence-agents; hack/test.sh installs it)",
            )?;
        child
            .stdin
            .take()
            .context("fence_redfish's stdin")?
            .write_all(input.as_bytes())?;
        Ok(child.wait()?.code())
    }

    /// The BMC's power state through `fence_redfish status`: `On` or `Off`.
    pub fn power_state(&self) -> anyhow::Result<&'static str> {
        match self.fence_redfish("status", false)? {
            Some(0) => Ok("On"),
            Some(2) => Ok("Off"),
            other => bail!("fence_redfish status exited {other:?}"),
        }
    }

    /// A Redfish client for this BMC, trusting only its CA; every call ends after 5 s.
    pub fn redfish(&self) -> anyhow::Result<Redfish> {
        let ca =
            std::fs::read(&self.ca_file).with_context(|| format!("reading {}", self.ca_file))?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Redfish {
            client,
            endpoint: self.clone(),
        })
    }
}

/// The calls the node lifecycle makes on a BMC: its service root, the system's PowerState and
/// any ComputerSystem.Reset (the fencer's own client only ever sends ForceOff).
pub struct Redfish {
    client: reqwest::Client,
    endpoint: BmcEndpoint,
}

impl Redfish {
    /// The service root answers without credentials once the emulator serves.
    pub async fn answers(&self) -> bool {
        let url = format!("{}/redfish/v1/", self.endpoint.address);
        let sent = self
            .client
            .get(url)
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        sent.is_ok_and(|r| r.status().is_success())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!(
            "{}{}{path}",
            self.endpoint.address, self.endpoint.system_path
        );
        self.client
            .request(method, url)
            .basic_auth(&self.endpoint.username, Some(&self.endpoint.password))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// The system's PowerState (On, Off, PoweringOn, ...).
    pub async fn power_state(&self) -> anyhow::Result<String> {
        let system: serde_json::Value = self
            .request(reqwest::Method::GET, "")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        system
            .get("PowerState")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .context("the system has no PowerState")
    }

    /// POSTs ComputerSystem.Reset with `reset_type` (On, ForceOff, ForceRestart, ...).
    pub async fn reset(&self, reset_type: &str) -> anyhow::Result<()> {
        self.request(reqwest::Method::POST, "/Actions/ComputerSystem.Reset")
            .json(&serde_json::json!({ "ResetType": reset_type }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// The emulator's configuration (a Python file): one fake system that is powered on, with its
/// state kept in `state_dir` (the default is shared by every emulator on the host).
pub fn emulator_config(
    name: &str,
    uuid: &str,
    mac: &str,
    ip: &str,
    auth_file: &str,
    state_dir: &str,
) -> String {
    format!(
        "SUSHY_EMULATOR_AUTH_FILE = '{auth_file}'\n\
         SUSHY_EMULATOR_STATE_DIR = '{state_dir}'\n\
         SUSHY_EMULATOR_FAKE_SYSTEMS = [{{\n    \
             'uuid': '{uuid}',\n    \
             'name': '{name}',\n    \
             'power_state': 'On',\n    \
             'nics': [{{'mac': '{mac}', 'ip': '{ip}'}}],\n\
         }}]\n"
    )
}

/// An htpasswd line: bcrypt is the only digest sushy-tools accepts. Cost 4 (the minimum)
/// because the emulator checks the password on every request.
pub fn htpasswd_line(username: &str, password: &str) -> anyhow::Result<String> {
    Ok(format!("{username}:{}\n", bcrypt::hash(password, 4)?))
}

fn port_in_use(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

impl Envtest {
    fn bmc_file(&self, node: &str, file: &str) -> PathBuf {
        self.bmc_dir().join(node).join(file)
    }

    /// The node's BMC as its files describe it.
    pub fn bmc(&self, node: &str) -> anyhow::Result<BmcEndpoint> {
        let read = |file: &str| {
            std::fs::read_to_string(self.bmc_file(node, file)).map(|s| s.trim().to_string())
        };
        let (Ok(port), Ok(uuid)) = (read("port"), read("uuid")) else {
            bail!("node {node} has no BMC (nodes get one from: hack/envtest.sh node-add)");
        };
        Ok(BmcEndpoint {
            address: format!("https://127.0.0.1:{port}"),
            system_path: format!("/redfish/v1/Systems/{uuid}"),
            username: read("username")?,
            password: read("password")?,
            ca_file: self.pki("bmc-ca.crt").display().to_string(),
        })
    }

    /// The node's BMC's PowerState; an error when it does not answer.
    pub async fn bmc_power_state(&self, node: &str) -> anyhow::Result<String> {
        self.bmc(node)?
            .redfish()?
            .power_state()
            .await
            .with_context(|| format!("the BMC of {node} does not answer"))
    }

    pub async fn bmc_reset(&self, node: &str, reset_type: &str) -> anyhow::Result<()> {
        self.bmc(node)?
            .redfish()?
            .reset(reset_type)
            .await
            .with_context(|| {
                format!(
                    "the BMC of {node} refused ResetType {reset_type} (log: {})",
                    self.log_file(&format!("bmc-{node}")).display()
                )
            })
    }

    /// Waits until the BMC says `want`, for at most 20 s.
    pub async fn wait_bmc_power(&self, node: &str, want: &str) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(20);
        let redfish = self.bmc(node)?.redfish()?;
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = redfish.power_state().await.ok();
            if last.as_deref() == Some(want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the BMC of {node} did not say PowerState {want} within {}s (last: {}; log: {})",
            timeout.as_secs(),
            last.as_deref().unwrap_or("no answer"),
            self.log_file(&format!("bmc-{node}")).display()
        )
    }

    /// Writes the BMC's files (UUID `uuid`, a fresh password, the emulator's configuration)
    /// and takes a port, unless it has them; then starts its emulator.
    pub fn start_bmc(&self, node: &str, uuid: &str, mac: &str, ip: &str) -> anyhow::Result<()> {
        let tools = self.node_tools()?;
        let dir = self.bmc_dir().join(node);
        if !dir.join("port").exists() {
            std::fs::create_dir_all(dir.join("state"))?;
            std::fs::write(dir.join("uuid"), format!("{uuid}\n"))?;
            std::fs::write(dir.join("username"), format!("{USERNAME}\n"))?;
            let mut secret = [0u8; 12];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(dir.join("password"), format!("{password}\n"))?;
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, htpasswd_line(USERNAME, &password)?)?;
            let config = emulator_config(
                node,
                uuid,
                mac,
                ip,
                &htpasswd.display().to_string(),
                &dir.join("state").display().to_string(),
            );
            std::fs::write(dir.join("emulator.conf"), config)?;
            self.allocate_bmc_port(node, tools.bmc_port_base)?;
        }
        let port = std::fs::read_to_string(dir.join("port"))?;
        let args = [
            "--fake".into(),
            "--config".into(),
            dir.join("emulator.conf").display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.trim().to_string(),
            "--ssl-certificate".into(),
            self.pki("bmc.crt").display().to_string(),
            "--ssl-key".into(),
            self.pki("bmc.key").display().to_string(),
        ];
        self.start_process(&format!("bmc-{node}"), &tools.sushy_emulator, &args, &[])
    }

    /// The lowest free port from `base`, under a lock: nodes are added in parallel.
    fn allocate_bmc_port(&self, node: &str, base: u16) -> anyhow::Result<()> {
        let lock = File::create(self.bmc_dir().join(".lock"))?;
        lock.lock()?;
        let mut taken = Vec::new();
        for entry in std::fs::read_dir(self.bmc_dir())?.flatten() {
            if let Ok(port) = std::fs::read_to_string(entry.path().join("port")) {
                taken.push(port.trim().to_string());
            }
        }
        let free = (base..base.saturating_add(PORT_RANGE))
            .find(|port| !taken.contains(&port.to_string()) && !port_in_use(*port))
            .with_context(|| format!("no free port for the BMC of {node} from {base} on"))?;
        std::fs::write(self.bmc_file(node, "port"), format!("{free}\n"))?;
        Ok(())
    }

    /// Waits until the BMC's service root answers, for at most 30 s.
    pub async fn wait_bmc_up(&self, node: &str) -> anyhow::Result<()> {
        let redfish = self.bmc(node)?.redfish()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let process = format!("bmc-{node}");
        while !redfish.answers().await {
            if !self.running(&process) {
                // Its reaper appends how it ended to the log, a moment after.
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!("the BMC of {node} exited\n{}", self.log_tail(&process, 20));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the BMC of {node} did not answer within 30s\n{}",
                    self.log_tail(&process, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_BMC: &str = "address=https://127.0.0.1:16600\n\
        system_path=/redfish/v1/Systems/81b4a147-1c3e-485c-8238-302d4bb7a5be\n\
        username=admin\n\
        password=8d0e2b99970216b3eb858d34\n\
        ca_file=/repo/target/envtest/pki/bmc-ca.crt\n";

    #[test]
    fn parses_node_bmc_output() {
        let bmc = BmcEndpoint::parse(NODE_BMC).unwrap();
        assert_eq!(
            bmc,
            BmcEndpoint {
                address: "https://127.0.0.1:16600".into(),
                system_path: "/redfish/v1/Systems/81b4a147-1c3e-485c-8238-302d4bb7a5be".into(),
                username: "admin".into(),
                password: "8d0e2b99970216b3eb858d34".into(),
                ca_file: "/repo/target/envtest/pki/bmc-ca.crt".into(),
            }
        );
        assert_eq!(bmc.host_and_port().unwrap(), ("127.0.0.1".into(), 16600));
        assert_eq!(bmc.to_lines(), NODE_BMC);
    }

    #[test]
    fn a_missing_field_is_an_error_that_names_it() {
        let without_password: String = NODE_BMC
            .lines()
            .filter(|l| !l.starts_with("password="))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = BmcEndpoint::parse(&without_password).unwrap_err();
        assert!(err.to_string().contains("password="), "{err}");
    }

    #[test]
    fn a_password_may_contain_equals_signs() {
        let text = NODE_BMC.replace("password=8d0e2b99970216b3eb858d34", "password=a=b");
        assert_eq!(BmcEndpoint::parse(&text).unwrap().password, "a=b");
    }

    #[test]
    fn the_htpasswd_line_is_a_cost_4_bcrypt_of_the_password() {
        let line = htpasswd_line("admin", "s3cret").unwrap();
        let (user, hash) = line.trim_end().split_once(':').unwrap();
        assert_eq!(user, "admin");
        assert!(hash.starts_with("$2b$04$"), "{hash}");
        assert!(bcrypt::verify("s3cret", hash).unwrap());
        assert!(!bcrypt::verify("other", hash).unwrap());
    }

    #[test]
    fn the_emulator_config_names_one_powered_on_system() {
        let config = emulator_config("n1", "u-1", "52:54:00:01:02:03", "10.255.0.7", "/a", "/s");
        assert_eq!(
            config,
            "SUSHY_EMULATOR_AUTH_FILE = '/a'\n\
             SUSHY_EMULATOR_STATE_DIR = '/s'\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{\n    'uuid': 'u-1',\n    'name': 'n1',\n    \
             'power_state': 'On',\n    'nics': [{'mac': '52:54:00:01:02:03', 'ip': '10.255.0.7'}],\n}]\n"
        );
    }
}
