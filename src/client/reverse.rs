//! Reverse (cloud) destinations on the client: for each one the gateway pushes, a listener on
//! its `local_port` (loopback unless client.toml's `[[destinations]]` gives `local_host`);
//! each accepted connection becomes a stream opened toward the gateway, which dials the
//! cloud endpoint if its `egress_allow` permits.
//!
//! Listeners follow the pushed list: started when a destination appears, stopped when it
//! goes or its port changes, all stopped at shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::state::{ClientState, GatewayPeer, PushedDest};
use crate::early::{Ahead, Unanswered};
use crate::proto::{OpenMeta, FEATURE_DEFLATE};
use crate::relay::{relay, Counters, Facing, Options, Socket};

/// Brings the listeners in line with the destinations just pushed.
pub(super) fn reconcile(
    shared: &Arc<ClientState>,
    link: &Arc<GatewayPeer>,
    dests: &HashMap<String, Arc<PushedDest>>,
) {
    // The gateway names the port; only the client's operator may allow it (`reverse_ports`),
    // so a hostile gateway can't take a local service's port before the service starts.
    let consented = |d: &&Arc<PushedDest>| {
        let ok = shared
            .cfg
            .reverse_ports
            .iter()
            .any(|r| r.contains(&d.spec.local_port));
        if !ok {
            warn!(dest.id = %d.spec.id, local.port = d.spec.local_port, reason = "acl_denied", "reverse destination refused: its local_port is not in reverse_ports in client.toml");
        }
        ok
    };
    let want: HashMap<String, SocketAddr> = dests
        .values()
        .filter(|d| d.spec.reverse && d.spec.local_port != 0)
        .filter(consented)
        .map(|d| {
            let host = shared
                .cfg
                .destinations
                .get(&d.spec.id)
                .and_then(|o| o.local_host)
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            (d.spec.id.clone(), SocketAddr::new(host, d.spec.local_port))
        })
        .collect();
    let mut running = link.reverse.lock().unwrap_or_else(|e| e.into_inner());
    running.retain(|id, (addr, stop)| {
        let keep = want.get(id) == Some(addr);
        if !keep {
            stop.cancel();
            info!(dest.id = %id, local.addr = %addr, "reverse listener stopped");
        }
        keep
    });
    for (id, addr) in want {
        if running.contains_key(&id) {
            continue;
        }
        // Bound here, synchronously, so a port in use is reported with the push that asked.
        let std_listener = match crate::listen::bind_std(addr) {
            Ok(l) => l,
            Err(e) => {
                warn!(dest.id = %id, local.addr = %addr, error = %e, "cannot listen for reverse destination");
                continue;
            }
        };
        let Ok(listener) = TcpListener::from_std(std_listener) else {
            continue;
        };
        let stop = shared.stop.child_token();
        running.insert(id.clone(), (addr, stop.clone()));
        info!(dest.id = %id, local.addr = %addr, "reverse listener started");
        shared.tracker.spawn(accept_loop(
            shared.clone(),
            link.clone(),
            id,
            listener,
            stop,
        ));
    }
}

async fn accept_loop(
    shared: Arc<ClientState>,
    link: Arc<GatewayPeer>,
    dest_id: String,
    listener: TcpListener,
    stop: CancellationToken,
) {
    crate::listen::accept_until(&listener, &stop, |tcp, peer| {
        let fut = serve_local(shared.clone(), link.clone(), dest_id.clone(), tcp, peer);
        shared.tracker.spawn(fut);
    })
    .await
}

/// One on-prem connection to a reverse destination.
async fn serve_local(
    shared: Arc<ClientState>,
    link: Arc<GatewayPeer>,
    dest_id: String,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let span = tracing::info_span!(
        "stream",
        dest.id = %dest_id,
        caller.addr = %peer,
        stream.id = tracing::field::Empty,
        direction = "reverse",
    );
    async move {
        let started = Instant::now();
        let dest = link.dest(&dest_id);
        let (Some(dest), Some(mux)) = (dest, link.pick()) else {
            shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
            warn!(
                reason = "unreachable",
                "reverse connection refused: no tunnel up or destination gone"
            );
            crate::relay::abort(&tcp);
            return;
        };
        let compress = dest.spec.compression;
        let meta = OpenMeta {
            dest: dest_id.clone(),
            caller: peer.to_string(),
            compress: compress.then(|| FEATURE_DEFLATE.to_owned()),
            target: None,
        };
        let timeout = Duration::from_secs(u64::from(dest.spec.timeout.clamp(1, 180)));
        let mut conn = Socket::Tcp(tcp);
        // The connection's first bytes go with the OPEN when the gateway takes them (not when
        // compressed: those go through the relay's deflater).
        let mut ahead = Ahead::new(&mut conn);
        let open = async {
            if !mux.peer_takes_early_data() || compress {
                return mux.open(&meta).await.map_err(Some);
            }
            let (stream, answer) = mux.open_early(&meta).map_err(Some)?;
            match ahead.send_until_answered(&stream, answer).await {
                Ok(()) => Ok(stream),
                Err(Unanswered::Retry(e) | Unanswered::Final(e)) => Err(Some(e)),
                Err(Unanswered::CallerFailed) => Err(None),
            }
        };
        // The gateway dials within the destination timeout; allow for the tunnel too.
        let opened = tokio::time::timeout(timeout + Duration::from_secs(5), open).await;
        let sent_ahead = match ahead.finish() {
            Ok(n) => n,
            Err(e) => {
            // Its stream was dropped: a reset at the gateway too, as the connection's was.
            shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
            *dest
                .stats
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry("reset")
                .or_default() += 1;
            info!(reason = "reset", error = %e, "on-prem connection failed while its stream opened");
            conn.abort();
            return;
            }
        };
        let stream = match opened {
            Ok(Ok(s)) => s,
            // Only with the read error handled above.
            Ok(Err(None)) => return,
            Ok(Err(Some(e))) => {
                shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                *dest
                    .stats
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(e.reason().as_str())
                    .or_default() += 1;
                warn!(reason = %e.reason(), error = %e, "reverse stream refused by the gateway");
                conn.abort();
                return;
            }
            Err(_) => {
                shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    reason = "timeout",
                    "reverse stream: no answer from the gateway"
                );
                conn.abort();
                return;
            }
        };
        tracing::Span::current().record("stream.id", stream.id());
        tracing::debug!(sent_ahead, "stream opened");
        if sent_ahead > 0 {
            shared.stats.streams_early_data.fetch_add(1, Ordering::Relaxed);
        }
        shared.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        dest.stats.opened.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(Counters::sent_ahead(sent_ahead));
        let opts = Options {
            compress,
            idle: dest.spec.idle(),
        };
        let out = relay(conn, stream, &counters, opts).await;
        let d = out.log_closed(Facing::Caller, started);
        shared.stats.record(&dest.stats, &d);
    }
    .instrument(span)
    .await
}
