//! A Proxmox VE virtual machine as a fence device, through the PVE REST API with an API token.
//!
//! Only `GET …/qemu/{vmid}/status/current` is read, and only its `status: "stopped"` proves the
//! VM off (decided in core, [`PowerState::from_proxmox`]). The stop request's task is never
//! waited on: for an HA-managed VM it only asks the HA manager to stop the VM and ends before
//! the VM does. `/cluster/resources` is never read either: for a dead PVE host it keeps
//! reporting the host's VMs as they were.

use std::fmt;
use std::time::Duration;

use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::fencing::config::{ProxmoxAgent, ProxmoxVm};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::agent::{AgentError, Credentials, FenceAgent};
use super::http::{client, request_error};

/// A `status/current` answer is about 1 KiB; anything near this is not PVE.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Device text (error messages, reason phrases) put into an [`AgentError`] is cut to this.
const MAX_DETAIL_CHARS: usize = 200;

/// One VM of a Proxmox VE cluster: reads its power state and stops it.
pub struct ProxmoxVmAgent {
    client: reqwest::Client,
    status_url: Url,
    stop_url: Url,
    authorization: HeaderValue,
    /// Kept only to scrub it from anything the device says back.
    secret: String,
    vmid: u32,
    timeout: Duration,
}

impl fmt::Debug for ProxmoxVmAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxmoxVmAgent")
            .field("status_url", &self.status_url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProxmoxVmAgent {
    /// The VM `vm` of the cluster at `agent.endpoint`. `credentials` is an API token: its
    /// username is the token id `USER@REALM!TOKENID`, its password the token's secret. Every
    /// call gives up after `timeout`.
    pub fn new(
        agent: &ProxmoxAgent,
        vm: &ProxmoxVm,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let endpoint = endpoint(&agent.endpoint)?;
        if !is_node_name(&vm.node) {
            return Err(AgentError::Unreachable(format!(
                "PVE node name {:?} is not a host name (letters, digits and '-')",
                vm.node
            )));
        }
        let token_id = credentials.username.trim();
        let secret = credentials.password.trim();
        if !is_token_id(token_id) {
            // Not echoed: a secret pasted into the wrong field must not reach the logs.
            return Err(AgentError::Credentials(
                "the token id is not a PVE API token id USER@REALM!TOKENID".into(),
            ));
        }
        // PVE reads the header value up to a ';' and percent-decodes it; a UUID has neither.
        if secret.is_empty()
            || !secret
                .chars()
                .all(|c| c.is_ascii_graphic() && c != ';' && c != '%')
        {
            return Err(AgentError::Credentials(
                "the token secret is empty or has characters a PVE token secret never has".into(),
            ));
        }
        let mut authorization = HeaderValue::try_from(format!("PVEAPIToken={token_id}={secret}"))
            .map_err(|_| {
            AgentError::Credentials("the token does not fit an HTTP header".into())
        })?;
        authorization.set_sensitive(true);
        Ok(Self {
            client: client(
                agent.ca_file.as_deref(),
                agent.insecure_skip_verify,
                timeout,
            )?,
            status_url: vm_url(&endpoint, &vm.node, vm.vmid, "current")?,
            stop_url: vm_url(&endpoint, &vm.node, vm.vmid, "stop")?,
            authorization,
            secret: secret.to_string(),
            vmid: vm.vmid,
            timeout,
        })
    }

    /// The VM `config.vms` maps the Kubernetes node `node` to.
    pub fn for_node(
        config: &ProxmoxAgent,
        node: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let vm = config.vms.get(node).ok_or_else(|| {
            AgentError::Unreachable(format!("proxmox.vms names no VM for node {node:?}"))
        })?;
        Self::new(config, vm, credentials, timeout)
    }

    /// Sends the request and returns the body of a 2xx answer, at most [`MAX_BODY_BYTES`].
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, AgentError> {
        let mut response = request
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(|e| request_error(e, self.timeout))?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(AgentError::Unauthorized(status.as_u16()));
        }
        // PVE says what went wrong in the reason phrase, and newer releases also in `message`.
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let body = self.read_capped(&mut response).await;
        if !status.is_success() {
            let message = body
                .ok()
                .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string));
            let detail = message
                .or(reason)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or_default().to_string());
            return Err(AgentError::Http {
                status: status.as_u16(),
                detail: self.scrub(&detail),
            });
        }
        body
    }

    async fn read_capped(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, AgentError> {
        let too_large =
            || AgentError::Protocol(format!("the answer is larger than {MAX_BODY_BYTES} bytes"));
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_error(e, self.timeout))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `data` of a PVE answer (`{"data": ...}`).
    fn data(&self, body: &[u8], what: &str) -> Result<Value, AgentError> {
        let mut answer: Value = serde_json::from_slice(body)
            .map_err(|e| AgentError::Protocol(format!("{what}: not JSON ({e})")))?;
        match answer.get_mut("data").map(Value::take) {
            Some(Value::Null) | None => Err(AgentError::Protocol(format!(
                "{what}: no \"data\" in the answer"
            ))),
            Some(data) => Ok(data),
        }
    }

    /// Device text, one short line, without the secret.
    fn scrub(&self, text: &str) -> String {
        // Redacted before cutting, so that no part of the secret is left at the cut.
        text.replace(&self.secret, "<redacted>")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_DETAIL_CHARS)
            .collect::<String>()
            .trim()
            .to_string()
    }
}

impl FenceAgent for ProxmoxVmAgent {
    async fn power_state(&self) -> Result<PowerState, AgentError> {
        let body = self.call(self.client.get(self.status_url.clone())).await?;
        let data = self.data(&body, "status/current")?;
        let field = |name: &str| match data.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(AgentError::Protocol(format!(
                "status/current: data.{name} is not a string"
            ))),
        };
        // An answer about another VM (a proxy or a typo in between) proves nothing about ours.
        match data.get("vmid") {
            None => {}
            Some(Value::Number(n)) if n.as_u64() == Some(u64::from(self.vmid)) => {}
            Some(Value::String(s)) if s.parse::<u32>().ok() == Some(self.vmid) => {}
            Some(_) => {
                return Err(AgentError::Protocol(format!(
                    "status/current: the answer is not about VM {}",
                    self.vmid
                )));
            }
        }
        let status = field("status")?.ok_or_else(|| {
            AgentError::Protocol("status/current: no data.status in the answer".into())
        })?;
        let (qmp_status, lock) = (field("qmpstatus")?, field("lock")?);
        // Matched verbatim: only exactly `stopped` is off. Scrubbed only to be shown.
        Ok(match PowerState::from_proxmox(status, qmp_status, lock) {
            PowerState::Unknown(other) => PowerState::Unknown(self.scrub(&other)),
            state => state,
        })
    }

    async fn power_off(&self) -> Result<(), AgentError> {
        // No `skiplock`: PVE allows it to root@pam only, never to a token.
        let body = self.call(self.client.post(self.stop_url.clone())).await?;
        match self.data(&body, "status/stop")? {
            Value::String(upid) if upid.starts_with("UPID:") => {
                tracing::info!(vmid = self.vmid, upid = %self.scrub(&upid), "Proxmox VE accepted the stop");
                Ok(())
            }
            _ => Err(AgentError::Protocol(
                "status/stop: data is not a task id (UPID:...)".into(),
            )),
        }
    }
}

fn endpoint(configured: &str) -> Result<Url, AgentError> {
    let bad =
        || AgentError::Unreachable("the Proxmox endpoint is not an https://host[:port] URL".into());
    let mut url = Url::parse(configured.trim()).map_err(|_| bad())?;
    // Credentials in the URL would be sent as basic auth and could end up in logs.
    if url.scheme() != "https"
        || url.cannot_be_a_base()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(bad());
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// `{endpoint}/api2/json/nodes/{node}/qemu/{vmid}/status/{action}`, keeping a path prefix of
/// the endpoint (a reverse proxy).
fn vm_url(endpoint: &Url, node: &str, vmid: u32, action: &str) -> Result<Url, AgentError> {
    let mut url = endpoint.clone();
    let vmid = vmid.to_string();
    url.path_segments_mut()
        .map_err(|()| AgentError::Unreachable("the Proxmox endpoint has no path".into()))?
        .pop_if_empty()
        .extend([
            "api2", "json", "nodes", node, "qemu", &vmid, "status", action,
        ]);
    Ok(url)
}

/// PVE's rule for node names (`pve_verify_node_name`): a host name without a domain.
fn is_node_name(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    alnum(name.chars().next())
        && alnum(name.chars().last())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `USER@REALM!TOKENID` as PVE's `pve-tokenid` format has it.
fn is_token_id(id: &str) -> bool {
    let Some((user, token)) = id.rsplit_once('!') else {
        return false;
    };
    let Some((name, realm)) = user.rsplit_once('@') else {
        return false;
    };
    let word = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, ':' | '/' | '=' | ';' | '%' | '!'))
        && word(realm)
        && word(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn agent(endpoint: &str) -> ProxmoxAgent {
        ProxmoxAgent {
            endpoint: endpoint.into(),
            ..ProxmoxAgent::default()
        }
    }

    fn vm(node: &str) -> ProxmoxVm {
        ProxmoxVm {
            node: node.into(),
            vmid: 101,
        }
    }

    fn token(id: &str, secret: &str) -> Credentials {
        Credentials {
            username: id.into(),
            password: secret.into(),
        }
    }

    const SECRET: &str = "0c2a8f0e-6d1b-4c8e-9a55-3f1d2b7c9e01";

    fn build(
        endpoint: &str,
        node: &str,
        id: &str,
        secret: &str,
    ) -> Result<ProxmoxVmAgent, AgentError> {
        ProxmoxVmAgent::new(
            &agent(endpoint),
            &vm(node),
            token(id, secret),
            Duration::from_secs(5),
        )
    }

    #[rstest]
    #[case(
        "https://pve.lan:8006",
        "https://pve.lan:8006/api2/json/nodes/pve1/qemu/101/status/current"
    )]
    #[case(
        "https://pve.lan:8006/",
        "https://pve.lan:8006/api2/json/nodes/pve1/qemu/101/status/current"
    )]
    #[case(
        "https://lb.lan/pve/",
        "https://lb.lan/pve/api2/json/nodes/pve1/qemu/101/status/current"
    )]
    #[case(
        "https://pve.lan:8006?x=1#y",
        "https://pve.lan:8006/api2/json/nodes/pve1/qemu/101/status/current"
    )]
    fn urls_keep_the_endpoint_and_name_the_vm(#[case] endpoint: &str, #[case] url: &str) {
        let agent = build(endpoint, "pve1", "fencer@pve!k8s", SECRET).unwrap();
        assert_eq!(agent.status_url.as_str(), url);
        assert!(agent.stop_url.as_str().ends_with("/qemu/101/status/stop"));
    }

    #[rstest]
    #[case::plain_http("http://pve:8006")]
    #[case::not_a_url("pve:8006")]
    #[case::user_in_url("https://root:pw@pve:8006")]
    fn bad_endpoints_are_refused(#[case] endpoint: &str) {
        let err = build(endpoint, "pve1", "fencer@pve!k8s", SECRET).unwrap_err();
        assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[rstest]
    #[case("")]
    #[case("../cluster")]
    #[case("pve1/qemu")]
    #[case("-pve")]
    fn node_names_cannot_change_the_path(#[case] node: &str) {
        let err = build("https://pve:8006", node, "fencer@pve!k8s", SECRET).unwrap_err();
        assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");
    }

    #[rstest]
    #[case::no_token_name("fencer@pve")]
    #[case::no_realm("fencer!k8s")]
    #[case::empty_name("@pve!k8s")]
    #[case::secret_in_the_id_field(SECRET)]
    #[case::whole_header("PVEAPIToken=fencer@pve!k8s=x")]
    fn token_ids_must_be_token_ids_and_are_never_echoed(#[case] id: &str) {
        let err = build("https://pve:8006", "pve1", id, SECRET).unwrap_err();
        assert!(matches!(err, AgentError::Credentials(_)), "{err:?}");
        assert!(!err.to_string().contains(id), "{err}");
    }

    #[rstest]
    #[case::empty("")]
    #[case::blank("  \n")]
    #[case::semicolon("abc;def")]
    #[case::inner_space("abc def")]
    fn unusable_secrets_are_refused_without_echo(#[case] secret: &str) {
        let err = build("https://pve:8006", "pve1", "fencer@pve!k8s", secret).unwrap_err();
        assert!(matches!(err, AgentError::Credentials(_)), "{err:?}");
        if !secret.trim().is_empty() {
            assert!(!err.to_string().contains(secret.trim()), "{err}");
        }
    }

    #[test]
    fn the_header_is_a_pve_api_token_and_secret_free_in_debug() {
        let agent = build(
            "https://pve:8006",
            "pve1",
            " root@pam!fencer ",
            &format!("{SECRET}\n"),
        )
        .unwrap();
        assert_eq!(
            agent.authorization.to_str().unwrap(),
            format!("PVEAPIToken=root@pam!fencer={SECRET}")
        );
        assert!(agent.authorization.is_sensitive());
        assert!(!format!("{agent:?}").contains(SECRET));
    }

    #[test]
    fn for_node_finds_the_vm_of_a_kubernetes_node() {
        let mut config = agent("https://pve:8006");
        config.vms.insert("k8s-a".into(), vm("pve2"));
        let found = ProxmoxVmAgent::for_node(
            &config,
            "k8s-a",
            token("root@pam!f", SECRET),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(found.status_url.as_str().contains("/nodes/pve2/qemu/101/"));
        let err = ProxmoxVmAgent::for_node(
            &config,
            "k8s-b",
            token("root@pam!f", SECRET),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("k8s-b"), "{err}");
    }

    #[test]
    fn scrub_removes_the_secret_and_control_characters() {
        let agent = build("https://pve:8006", "pve1", "root@pam!fencer", SECRET).unwrap();
        assert_eq!(
            agent.scrub(&format!("bad token {SECRET}\nline two")),
            "bad token <redacted> line two"
        );
        assert_eq!(agent.scrub(&"x".repeat(1000)).len(), MAX_DETAIL_CHARS);
    }
}
