//! Graceful shutdown: one token, cancelled on SIGTERM or Ctrl-C.
//!
//! Kubernetes sends SIGTERM and waits `terminationGracePeriodSeconds`; every task selects on
//! the token so it can finish what it holds (flush the producer, commit offsets, close
//! WebSockets with "going away") before the process exits.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as ShutdownToken;

/// A token that is cancelled when the process receives SIGTERM or SIGINT.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
