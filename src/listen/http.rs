//! The one HTTP/1 server under the admin endpoint and the management API: a bounded number
//! of connections (in all, and from one source address), an optional TLS handshake, a time
//! limit on the handshake, on every request head and on every stalled write of an answer,
//! and a graceful close at shutdown that waits a bounded grace. Each server bounds a whole
//! request (body included) in its own router.
//!
//! The same server also runs on a Unix socket ([`serve_unix`]) for callers on this host: the
//! kernel names each caller's user (`SO_PEERCRED`), so only ours and root's are served, and
//! other local users can neither use nor fill its connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// What one server lets its callers hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; the next caller waits in the listen backlog.
    pub max_connections: usize,
    /// Connections one source address may hold, so a trickling caller can't take every slot
    /// and lock the others out.
    pub max_per_source: usize,
    /// The config key of `max_per_source`, named when a connection is refused.
    pub per_source_key: &'static str,
    /// For the TLS handshake, every request head, a write that makes no progress, and the
    /// grace at shutdown.
    pub head_timeout: Duration,
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop`, then lets
/// requests in flight finish within [`HttpLimits::head_timeout`]. `name` is the listener's
/// name in logs (`admin`, `api`).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    // A caller without a known token gets its 401 and the connection closes: it can't keep a
    // slot by asking again on the same connection.
    let app = app.layer(axum::middleware::map_response(close_after_401));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = super::Sources::default();
    let tasks = TaskTracker::new();
    if let Ok(a) = listener.local_addr() {
        info!(http.server = name, listen.addr = %a, "HTTP endpoint listening");
    }
    loop {
        let Some(permit) = slot(&slots, &stop).await else {
            break;
        };
        let Some((tcp, peer)) = super::accept(&listener, &stop).await else {
            break;
        };
        let Some(source) = sources.take(peer.ip(), limits.max_per_source) else {
            let key = limits.per_source_key;
            warn!(http.server = name, peer.addr = %peer, reason = "limit", "HTTP connection refused: {key} reached");
            continue;
        };
        let (app, tls, stop) = (app.clone(), tls.clone(), stop.clone());
        tasks.spawn(async move {
            let _held = (permit, source);
            let peer = peer.to_string();
            let Some(tls) = tls else {
                return serve_conn(name, tcp, &peer, app, limits.head_timeout, stop).await;
            };
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.head_timeout, tls.accept(tcp)) => r,
                _ = stop.cancelled() => return,
            };
            match handshake {
                Ok(Ok(s)) => serve_conn(name, s, &peer, app, limits.head_timeout, stop).await,
                Ok(Err(e)) => {
                    debug!(http.server = name, peer.addr = %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => {
                    debug!(http.server = name, peer.addr = %peer, "TLS handshake timed out")
                }
            }
        });
    }
    tasks.close();
    // Every connection closes gracefully at `stop` within the grace; this bounds the wait.
    let grace = limits.head_timeout.saturating_add(Duration::from_secs(1));
    let _ = tokio::time::timeout(grace, tasks.wait()).await;
}

/// A request that came over [`serve_unix`]: the caller is this process's user or root, as the
/// kernel says. The router finds it among the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct LocalUser {
    pub uid: u32,
}

/// Serves `app` on a Unix socket until `stop`, like [`serve`]: at most
/// `limits.max_connections` at once, each request head within `limits.head_timeout`. A caller
/// whose user (`SO_PEERCRED`) is neither `owner` nor root is refused before it is read; the
/// others' requests carry [`LocalUser`].
pub async fn serve_unix(
    name: &'static str,
    listener: UnixListener,
    owner: u32,
    app: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let app = app.layer(axum::middleware::map_response(close_after_401));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let Some(permit) = slot(&slots, &stop).await else {
            break;
        };
        let conn = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(http.server = name, error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(super::ACCEPT_RETRY) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                warn!(http.server = name, error = %e, reason = "peer_user", "connection refused: the kernel did not name its user");
                continue;
            }
        };
        if uid != owner && uid != 0 {
            warn!(
                http.server = name,
                peer.uid = uid,
                reason = "peer_user",
                "connection refused: only this process's user and root may use the socket"
            );
            continue;
        }
        let peer = format!("uid {uid}");
        let app = app.clone().layer(axum::Extension(LocalUser { uid }));
        let stop = stop.clone();
        tasks.spawn(async move {
            let _held = permit;
            serve_conn(name, stream, &peer, app, limits.head_timeout, stop).await
        });
    }
    tasks.close();
    let grace = limits.head_timeout.saturating_add(Duration::from_secs(1));
    let _ = tokio::time::timeout(grace, tasks.wait()).await;
}

/// A connection slot, or `None` once `stop` is cancelled.
async fn slot(
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        p = slots.clone().acquire_owned() => p.ok(),
        _ = stop.cancelled() => None,
    }
}

async fn serve_conn<S>(
    name: &'static str,
    io: S,
    peer: &str,
    app: axum::Router,
    head_timeout: Duration,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A caller that stops reading its answer fails the connection after `head_timeout`
    // instead of holding one of the server's few connections.
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_write_timeout(Some(head_timeout));
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(Box::pin(io)), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            debug!(http.server = name, peer.addr = %peer, error = %e, "HTTP connection ended with an error");
        },
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(head_timeout, conn.as_mut()).await;
        }
    }
}

async fn close_after_401(mut r: axum::response::Response) -> axum::response::Response {
    if r.status() == axum::http::StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    r
}
