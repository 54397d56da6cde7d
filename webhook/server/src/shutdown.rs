//! One shutdown signal for every server: the first SIGTERM or SIGINT starts a drain, a second
//! one aborts.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM/SIGINT. The process exits at once on the second.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        next_signal().await;
        tracing::info!("shutting down: draining in-flight requests (a second signal aborts)");
        cancel.cancel();
        next_signal().await;
        tracing::warn!("second signal: aborting");
        std::process::exit(130);
    });
    token
}

async fn next_signal() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
