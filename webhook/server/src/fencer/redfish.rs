//! A Redfish BMC's ComputerSystem as a fence device (DSP0266/DSP0268): read `PowerState`,
//! cut power with a `ForceOff` reset.
//!
//! Only `ForceOff` is sent. A system that lists its reset types and leaves `ForceOff` out is
//! refused rather than sent `GracefulShutdown`, `PushPowerButton` or `PowerCycle`: the first two
//! ask the operating system to stop, which a hung or partitioned node never does, and the
//! last turns the machine back on. None of them is a fence. A system that does not list its
//! reset types is sent `ForceOff` anyway; a BMC without it answers an HTTP error.

use std::time::Duration;

use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::fencing::config::{RedfishAgent, for_node};
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{Response, StatusCode, Url};
use serde_json::Value;

use super::agent::{AgentError, Credentials, FenceAgent};
use super::http::{client, request_error};

/// The reset that cuts power without asking the operating system.
pub const FORCE_OFF: &str = "ForceOff";

/// A ComputerSystem is a few kilobytes; anything much larger is not one.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How much of a BMC's error message goes into an [`AgentError`].
const MAX_DETAIL_CHARS: usize = 300;

/// One ComputerSystem behind a Redfish service, with the credentials to drive it.
pub struct RedfishSystem {
    client: reqwest::Client,
    system: Url,
    credentials: Credentials,
    timeout: Duration,
}

impl std::fmt::Debug for RedfishSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishSystem")
            .field("system", &self.system.as_str())
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedfishSystem {
    /// The system `config` names for `node` (`{node}` replaced in the address and the system
    /// path). Every call, redirects and body included, ends after `timeout`.
    pub fn new(
        config: &RedfishAgent,
        node: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let address = for_node(&config.address, node);
        let path = for_node(&config.system_path, node);
        let joined = format!("{}{}", address.trim_end_matches('/'), path);
        let system = Url::parse(&joined)
            .map_err(|e| AgentError::Unreachable(format!("invalid address {joined:?}: {e}")))?;
        // Checked first: the other messages quote the address.
        if !system.username().is_empty() || system.password().is_some() {
            return Err(AgentError::Credentials(
                "the address must not carry credentials; they come from the Secret".into(),
            ));
        }
        if system.scheme() != "https" {
            // Basic auth sends the password with every request.
            return Err(AgentError::Unreachable(format!(
                "{joined:?} is not https: credentials would be sent in clear"
            )));
        }
        let client = client(
            config.ca_file.as_deref(),
            config.insecure_skip_verify,
            timeout,
        )?;
        Ok(Self {
            client,
            system,
            credentials,
            timeout,
        })
    }

    async fn get_system(&self) -> Result<(Url, Value), AgentError> {
        let response = self
            .authorized(self.client.get(self.system.clone()))
            .send()
            .await
            .map_err(|e| self.error(request_error(e, self.timeout)))?;
        // Where the redirects ended: relative action targets resolve against it.
        let url = response.url().clone();
        let status = response.status();
        let body = self.read_body(response).await?;
        if status != StatusCode::OK {
            return Err(self.status_error(status, &body));
        }
        let system = serde_json::from_slice(&body).map_err(|e| {
            self.error(AgentError::Protocol(format!("the system is not JSON: {e}")))
        })?;
        Ok((url, system))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .basic_auth(&self.credentials.username, Some(&self.credentials.password))
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header("OData-Version", HeaderValue::from_static("4.0"))
    }

    /// The body, refused beyond [`MAX_BODY_BYTES`] without reading the rest.
    async fn read_body(&self, mut response: Response) -> Result<Vec<u8>, AgentError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.error(request_error(e, self.timeout)))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
                return Err(AgentError::Protocol(format!(
                    "an answer larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> AgentError {
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return AgentError::Unauthorized(status.as_u16());
        }
        let reason = status.canonical_reason().unwrap_or("unexpected status");
        let detail = match redfish_message(body) {
            Some(message) => format!("{reason}: {message}"),
            None => reason.to_string(),
        };
        self.error(AgentError::Http {
            status: status.as_u16(),
            detail,
        })
    }

    /// `error` with the password cut out of its text, should a BMC or a library ever echo it.
    fn error(&self, error: AgentError) -> AgentError {
        redact(error, &self.credentials.password)
    }
}

impl FenceAgent for RedfishSystem {
    async fn power_state(&self) -> Result<PowerState, AgentError> {
        let (_, system) = self.get_system().await?;
        let state = system
            .get("PowerState")
            .and_then(Value::as_str)
            .ok_or_else(|| AgentError::Protocol("the system has no PowerState".into()))?;
        Ok(PowerState::from_redfish(state))
    }

    async fn power_off(&self) -> Result<(), AgentError> {
        let (url, system) = self.get_system().await?;
        let target = reset_target(&system, &url)?;
        let response = self
            .authorized(self.client.post(target))
            .json(&serde_json::json!({ "ResetType": FORCE_OFF }))
            .send()
            .await
            .map_err(|e| self.error(request_error(e, self.timeout)))?;
        let status = response.status();
        let body = self.read_body(response).await?;
        match status {
            StatusCode::OK | StatusCode::ACCEPTED | StatusCode::NO_CONTENT => Ok(()),
            other => Err(self.status_error(other, &body)),
        }
    }
}

/// Where to POST the `ForceOff` for `system`, read from `system_url`: the reset action's
/// `target`, or the conventional `<system>/Actions/ComputerSystem.Reset` when the system does
/// not name one. Refuses a system whose listed reset types lack `ForceOff`, and a target on
/// another host (the credentials would follow it).
pub fn reset_target(system: &Value, system_url: &Url) -> Result<Url, AgentError> {
    let action = system.pointer("/Actions/#ComputerSystem.Reset");
    let allowed = action
        .and_then(|a| a.get("ResetType@Redfish.AllowableValues"))
        .and_then(Value::as_array);
    if let Some(allowed) = allowed {
        let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        if !names.contains(&FORCE_OFF) {
            return Err(AgentError::Protocol(format!(
                "the system offers no {FORCE_OFF} reset (only {}); a graceful shutdown or a \
                 power cycle is not a fence",
                names.join(", ")
            )));
        }
    }
    let target = match action.and_then(|a| a.get("target")).and_then(Value::as_str) {
        Some(target) => system_url.join(target),
        None => {
            let path = format!(
                "{}/Actions/ComputerSystem.Reset",
                system_url.path().trim_end_matches('/')
            );
            system_url.join(&path)
        }
    }
    .map_err(|e| AgentError::Protocol(format!("the reset target is not a URL: {e}")))?;
    let same_origin = target.scheme() == system_url.scheme()
        && target.host_str() == system_url.host_str()
        && target.port_or_known_default() == system_url.port_or_known_default();
    if !same_origin {
        return Err(AgentError::Protocol(format!(
            "the reset target {} is on another host than the system",
            target.as_str()
        )));
    }
    Ok(target)
}

/// A Redfish error body's message(s) (`error.message`, `@Message.ExtendedInfo[].Message`),
/// shortened.
fn redfish_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let mut parts: Vec<&str> = error
        .get("message")
        .and_then(Value::as_str)
        .into_iter()
        .collect();
    if let Some(infos) = error.get("@Message.ExtendedInfo").and_then(Value::as_array) {
        parts.extend(
            infos
                .iter()
                .filter_map(|info| info.get("Message").and_then(Value::as_str)),
        );
    }
    let joined = parts.join("; ");
    (!joined.is_empty()).then(|| joined.chars().take(MAX_DETAIL_CHARS).collect())
}

fn redact(error: AgentError, secret: &str) -> AgentError {
    if secret.is_empty() {
        return error;
    }
    let clean = |text: String| text.replace(secret, "<redacted>");
    match error {
        AgentError::Unreachable(text) => AgentError::Unreachable(clean(text)),
        AgentError::Http { status, detail } => AgentError::Http {
            status,
            detail: clean(detail),
        },
        AgentError::Protocol(text) => AgentError::Protocol(clean(text)),
        AgentError::Credentials(text) => AgentError::Credentials(clean(text)),
        AgentError::Program { program, detail } => AgentError::Program {
            program,
            detail: clean(detail),
        },
        other @ (AgentError::Timeout(_) | AgentError::Unauthorized(_)) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn the_listed_target_is_resolved_against_the_final_system_url() {
        let system = json!({"Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown"]
        }}});
        let target =
            reset_target(&system, &url("https://bmc:8443/redfish/v1/Systems/abc")).unwrap();
        assert_eq!(
            target.as_str(),
            "https://bmc:8443/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset"
        );
    }

    #[test]
    fn without_a_target_the_conventional_path_is_used() {
        let target = reset_target(&json!({}), &url("https://bmc/redfish/v1/Systems/1/")).unwrap();
        assert_eq!(
            target.as_str(),
            "https://bmc/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        );
    }

    #[test]
    fn a_system_without_force_off_is_refused_not_shut_down_gracefully() {
        let system = json!({"Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "GracefulShutdown", "PowerCycle"]
        }}});
        let err = reset_target(&system, &url("https://bmc/redfish/v1/Systems/1")).unwrap_err();
        assert!(
            matches!(&err, AgentError::Protocol(text) if text.contains("GracefulShutdown")),
            "{err}"
        );
    }

    #[test]
    fn a_target_on_another_host_is_refused() {
        let system = json!({"Actions": {"#ComputerSystem.Reset": {
            "target": "https://elsewhere/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        }}});
        for base in [
            "https://bmc/redfish/v1/Systems/1",
            "https://elsewhere:444/redfish/v1/Systems/1",
        ] {
            let err = reset_target(&system, &url(base)).unwrap_err();
            assert!(matches!(err, AgentError::Protocol(_)), "{base}: {err}");
        }
    }

    #[test]
    fn redfish_error_messages_are_kept_short() {
        let body = json!({"error": {"code": "Base.1.0.GeneralError", "message": "x".repeat(1000),
            "@Message.ExtendedInfo": [{"Message": "more"}]}});
        let message = redfish_message(body.to_string().as_bytes()).unwrap();
        assert_eq!(message.chars().count(), MAX_DETAIL_CHARS);
        assert_eq!(
            redfish_message(
                br#"{"error":{"message":"m","@Message.ExtendedInfo":[{"Message":"n"}]}}"#
            ),
            Some("m; n".into())
        );
        assert_eq!(redfish_message(b"<html>"), None);
    }

    #[test]
    fn the_password_is_cut_out_of_error_text() {
        let err = redact(
            AgentError::Http {
                status: 400,
                detail: "bad password hunter2!".into(),
            },
            "hunter2",
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_address_must_be_https_without_credentials() {
        let credentials = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let config = |address: &str| RedfishAgent {
            address: address.into(),
            system_path: "/redfish/v1/Systems/{node}".into(),
            ..RedfishAgent::default()
        };
        let timeout = Duration::from_secs(1);
        let system = RedfishSystem::new(
            &config("https://{node}-bmc/"),
            "n1",
            credentials.clone(),
            timeout,
        )
        .unwrap();
        assert_eq!(
            system.system.as_str(),
            "https://n1-bmc/redfish/v1/Systems/n1"
        );
        for bad in [
            "http://bmc",
            "https://root:calvin@bmc",
            "http://root:calvin@bmc",
            "not a url",
        ] {
            let err =
                RedfishSystem::new(&config(bad), "n1", credentials.clone(), timeout).unwrap_err();
            assert!(!err.to_string().contains("calvin"), "{err}");
        }
    }
}
