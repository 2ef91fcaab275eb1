//! The shutdown signal.

use std::future::Future;

/// Installs the handlers for SIGTERM (Kubernetes starts a graceful shutdown with it) and
/// SIGINT (Ctrl-C) now, and returns what resolves on either. Installed before the server
/// says it is serving: a SIGTERM that arrives right after must start a drain, not kill the
/// process with the default action (as it did when the handlers were installed on first poll).
pub fn signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => {
                tracing::error!(
                    "cannot install signal handlers; only a kill will stop this process"
                );
                None
            }
        };
        async move {
            let Some((mut term, mut int)) = handlers else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
