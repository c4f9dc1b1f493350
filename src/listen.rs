//! Accepting connections, the same way on every listener (tunnel endpoint, destinations'
//! cloud ports, reverse and SOCKS5 listeners, the management API): until a stop signal, and
//! a failed accept (out of file descriptors, say) is logged and retried after a pause
//! instead of spinning.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The next connection, or `None` once `stop` is cancelled.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
            },
            _ = stop.cancelled() => return None,
        }
    }
}

/// Hands every connection to `on_conn` until `stop`.
pub async fn accept_until(
    listener: &TcpListener,
    stop: &CancellationToken,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    while let Some((tcp, peer)) = accept(listener, stop).await {
        on_conn(tcp, peer);
    }
}
