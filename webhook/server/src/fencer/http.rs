//! The HTTPS client every HTTP fence device shares.

use std::time::Duration;

use super::agent::AgentError;

/// A client that trusts the CA in `ca_file` only, or the system roots without one, or any
/// certificate with `insecure_skip_verify` (self-signed BMCs); every call times out.
pub fn client(
    ca_file: Option<&str>,
    insecure_skip_verify: bool,
    timeout: Duration,
) -> Result<reqwest::Client, AgentError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A BMC redirects `/Systems/<name>` to the system's canonical path; stay on it.
        .redirect(reqwest::redirect::Policy::limited(3))
        .https_only(true);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| AgentError::Credentials(format!("CA file {path}: {e}")))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| AgentError::Credentials(format!("CA file {path}: {e}")))?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    if insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| AgentError::Unreachable(format!("HTTPS client: {e}")))
}

/// An error from a request, as an [`AgentError`] without URLs' credentials or bodies.
pub fn request_error(error: reqwest::Error, timeout: Duration) -> AgentError {
    if error.is_timeout() {
        AgentError::Timeout(timeout.as_secs())
    } else if let Some(status) = error.status() {
        AgentError::Http {
            status: status.as_u16(),
            detail: status.canonical_reason().unwrap_or_default().to_string(),
        }
    } else {
        // Without the URL: it may carry a user name; the source chain says what failed.
        let error = error.without_url();
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        AgentError::Unreachable(detail)
    }
}
