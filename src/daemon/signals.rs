//! SIGTERM and SIGINT: drain, then stop; a second one exits at once.

use tokio_util::sync::CancellationToken;

use super::Error;

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> Result<CancellationToken, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(Error::io("installing SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::io("installing SIGINT"))?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining, then shutting down (again: exit now)"),
            _ = int.recv() => tracing::info!("SIGINT: draining, then shutting down (again: exit now)"),
        }
        t.cancel();
        // A second signal means "now": skip the rest of the drain.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for open streams");
        crate::telemetry::flush();
        std::process::exit(1);
    });
    Ok(token)
}

/// SIGHUP, installed before anything else starts: without a handler it would terminate.
pub fn hangup() -> Result<tokio::signal::unix::Signal, Error> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(Error::io("installing SIGHUP"))
}
