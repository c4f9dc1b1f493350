//! A tunnel's life on the client: each slot connects (backoff between attempts, restarted
//! if its task ends), serves the tunnel — CONFIG pushes, streams the gateway opens — and
//! drains it at shutdown. Also the client's two background loops: forwarding its own
//! warn/error lines to the gateways, and re-reading the ACL file when it changes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::reverse;
use super::state::{ClientState, GatewayPeer, PushedDest, SlotFailure, SlotHealth};
use super::stream::serve_open;
use super::ClientHandle;
use crate::config::Replica;
use crate::mux::Mux;
use crate::proto::{ConfigPush, LogPush, Reason, Welcome, FEATURE_EARLY_DATA};
use crate::telemetry::ForwardedLog;
use crate::tunnel;

/// How often the ACL file is checked for changes.
const ACL_POLL: Duration = Duration::from_secs(1);

/// Keeps one tunnel slot running: a slot task that ends or panics (a bug, never the peer's
/// doing by design) is logged and started again after a pause, so a gateway or proxy can
/// never take a tunnel away for good.
pub(super) async fn supervise_slot(
    shared: Arc<ClientState>,
    link: Arc<GatewayPeer>,
    target: Target,
    shutdown: CancellationToken,
) {
    let slot = target.slot;
    let _gone = SlotGone(&link, slot);
    loop {
        let task = tokio::spawn(tunnel_slot(
            shared.clone(),
            link.clone(),
            target.clone(),
            shutdown.clone(),
        ));
        let why = match task.await {
            _ if shutdown.is_cancelled() => return,
            Ok(()) => "ended".to_string(),
            Err(e) if e.is_panic() => "panicked".to_string(),
            Err(e) => e.to_string(),
        };
        shared.stats.tunnel_failures.fetch_add(1, Ordering::Relaxed);
        error!(gateway.id = %link.cfg.gateway_id, tunnel.slot = slot, reason = "internal", "tunnel slot {why}; starting it again");
        tokio::select! {
            _ = tokio::time::sleep(SLOT_RESTART_PAUSE) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Removes a slot's status entry however its supervisor ends.
struct SlotGone<'a>(&'a GatewayPeer, usize);

impl Drop for SlotGone<'_> {
    fn drop(&mut self) {
        self.0.slot_gone(self.1);
    }
}

/// The pause before a failed slot task is started again.
const SLOT_RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Where one tunnel slot connects: a replica's URL, and the one address of it when its name
/// resolves to several (client/replicas.rs).
#[derive(Clone)]
pub(super) struct Target {
    pub replica: Replica,
    pub addr: Option<std::net::SocketAddr>,
    /// Numbers the gateway's slots in logs.
    pub slot: usize,
}

/// Keeps one tunnel to one replica of a gateway up, forever (until `shutdown`: the process's,
/// or the replica's address no longer resolving).
async fn tunnel_slot(
    shared: Arc<ClientState>,
    link: Arc<GatewayPeer>,
    target: Target,
    shutdown: CancellationToken,
) {
    let Target {
        replica,
        addr,
        slot,
    } = target;
    let span = tracing::info_span!("tunnel", gateway.id = %link.cfg.gateway_id, gateway.url = %replica.url, gateway.addr = addr.map(tracing::field::display), tunnel.slot = slot);
    async move {
        let url = replica.url.to_string();
        let mark = |f: &dyn Fn(&mut SlotHealth)| link.slot(slot, &url, addr, |h| f(h));
        let failed = |code: &'static str, sentence: &str| {
            shared.stats.tunnel_reasons.add(code);
            mark(&|h| {
                if h.up {
                    h.up = false;
                    h.since_ms = crate::telemetry::unix_ms();
                }
                h.last_failure = Some(SlotFailure {
                    code,
                    sentence: sentence.to_owned(),
                    at_ms: crate::telemetry::unix_ms(),
                });
            })
        };
        mark(&|_| {});
        let mut attempt = 0u32;
        loop {
            let connect = tunnel::connect(&link.cfg, &replica, addr, &link.tls, &shared.hello);
            let res = tokio::select! {
                r = connect => r,
                _ = shutdown.cancelled() => return,
            };
            match res {
                Ok((ws, welcome)) => {
                    attempt = 0;
                    shared.stats.tunnel_connects.fetch_add(1, Ordering::Relaxed);
                    mark(&|h| {
                        h.up = true;
                        h.failures = 0;
                        h.since_ms = crate::telemetry::unix_ms();
                    });
                    let span = tracing::info_span!("up", client.id = %welcome.client_id);
                    let closed = serve_tunnel(&shared, &link, ws, &welcome, &shutdown)
                        .instrument(span)
                        .await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    failed(closed.code, &closed.sentence);
                    if closed.needs_change {
                        error!(client.id = %welcome.client_id, reason = %closed.code, "tunnel down: {}", closed.sentence);
                    } else {
                        warn!(client.id = %welcome.client_id, reason = %closed.code, "tunnel down: {}", closed.sentence);
                    }
                }
                Err(e) => {
                    shared.stats.tunnel_failures.fetch_add(1, Ordering::Relaxed);
                    let why = tunnel::why::explain(&e, &link.cfg, &replica);
                    failed(why.code, &why.sentence);
                    mark(&|h| h.failures = h.failures.saturating_add(1));
                    if why.needs_change {
                        error!(reason = %why.code, "{}", why.sentence);
                    } else {
                        warn!(reason = %why.code, "{}", why.sentence);
                    }
                }
            }
            let delay = shared.cfg.reconnect.delay(attempt);
            attempt = attempt.saturating_add(1);
            debug!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting after backoff"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
    .instrument(span)
    .await
}

fn apply_config(shared: &Arc<ClientState>, link: &Arc<GatewayPeer>, payload: &bytes::Bytes) {
    // Held until the map is stored: another tunnel of this gateway gets the same CONFIG at
    // about the same time, and must not take "already applied" for applied and serve an OPEN
    // against the old map (a caller reset for "no such destination").
    let mut last = link.last_push.lock().unwrap_or_else(|e| e.into_inner());
    if last.as_ref() == Some(payload) {
        debug!("the same destinations from another tunnel; already applied");
        return;
    }
    *last = Some(payload.clone());
    match serde_json::from_slice::<ConfigPush>(payload) {
        Ok(push) => {
            let map: HashMap<String, Arc<PushedDest>> = push
                .destinations
                .into_iter()
                .filter(|d| match d.unprintable_field() {
                    None => true,
                    Some(field) => {
                        warn!(dest.id = %crate::telemetry::clean(&d.id, 64), field, reason = "protocol", "ignoring a pushed destination: this field holds control characters or is too long");
                        false
                    }
                })
                .map(|d| {
                    let local = shared.cfg.destinations.get(&d.id);
                    (
                        d.id.clone(),
                        Arc::new(PushedDest::new(d, &shared.stats, local)),
                    )
                })
                .collect();
            let n = map.len();
            reverse::reconcile(shared, link, &map);
            *link.dests.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
            info!(destinations = n, "destinations updated by gateway");
        }
        Err(e) => warn!(error = %e, "ignoring malformed destination push from gateway"),
    }
}

/// Serves one connected tunnel until it closes; returns why it closed.
async fn serve_tunnel(
    shared: &Arc<ClientState>,
    link: &Arc<GatewayPeer>,
    ws: tunnel::ClientWs,
    welcome: &Welcome,
    shutdown: &CancellationToken,
) -> crate::mux::Closed {
    let client_id = welcome.client_id.as_str();
    let (r, w) = tunnel::split(ws);
    let mut cfg = shared.mux_cfg.clone();
    cfg.window_budget = link.budget.clone();
    // The gateway answers `early_data` in its WELCOME when it takes early data on the streams
    // this client opens (reverse destinations).
    cfg.peer_early_data = welcome.features.iter().any(|f| f == FEATURE_EARLY_DATA);
    let (mux, mut events) = Mux::start(r, w, cfg);
    link.live_tunnels().push(mux.clone());
    shared
        .status
        .send_modify(|s| s.tunnel(&link.cfg.gateway_id, client_id, 1));
    info!("tunnel up");
    loop {
        tokio::select! {
            inc = events.incoming.recv() => match inc {
                Some(inc) => {
                    // The reader stores CONFIG before queueing later OPENs: apply it first.
                    if events.config.has_changed().unwrap_or(false) {
                        if let Some(p) = events.config.borrow_and_update().clone() {
                            apply_config(shared, link, &p);
                        }
                    }
                    let fut = serve_open(shared.clone(), link.clone(), inc, client_id.to_owned());
                    shared.tracker.spawn(fut);
                }
                None => break,
            },
            changed = events.config.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Some(p) = events.config.borrow_and_update().clone() {
                    apply_config(shared, link, &p);
                }
            }
            _ = mux.closed() => break,
            _ = shutdown.cancelled() => {
                info!(active = mux.active_streams(), grace_ms = shared.cfg.shutdown_grace.as_millis() as u64, "draining tunnel");
                mux.drain(Reason::Shutdown, "client shutting down", shared.cfg.shutdown_grace).await;
                break;
            }
        }
    }
    link.live_tunnels().retain(|m| !m.ptr_eq(&mux));
    shared
        .status
        .send_modify(|s| s.tunnel(&link.cfg.gateway_id, client_id, -1));
    if shutdown.is_cancelled() {
        // Drained: let the last stream's final bytes out before the process exits.
        mux.close_flushed(Reason::Shutdown, "client shut down")
            .await;
    } else {
        mux.close(Reason::Shutdown, "client closed the tunnel");
    }
    mux.close_reason()
        .unwrap_or_else(|| crate::mux::close::here("tunnel ended"))
}

/// Sends this process's warn/error lines to one live tunnel of every gateway (for its
/// clientLogs), best effort: a line that finds no tunnel is dropped.
pub(super) async fn forward_logs(
    mut logs: tokio::sync::mpsc::Receiver<ForwardedLog>,
    peers: Vec<Arc<GatewayPeer>>,
    stop: CancellationToken,
) {
    loop {
        let line = tokio::select! {
            l = logs.recv() => match l { Some(l) => l, None => break },
            _ = stop.cancelled() => break,
        };
        let push = LogPush {
            level: line.level,
            message: line.message,
            time: line.time,
        };
        let Ok(payload) = serde_json::to_vec(&push) else {
            continue;
        };
        let payload = bytes::Bytes::from(payload);
        for p in &peers {
            let first = p.live_tunnels().first().cloned();
            if let Some(m) = first {
                m.send_log(payload.clone());
            }
        }
    }
}

/// Reloads the ACL when its file changes, until `stop`.
pub(super) async fn watch_acl_file(handle: ClientHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ACL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A stat each tick, and a read and parse on a change, off the workers: an ACL
            // edit through the admin endpoint holds the file's lock while it syncs the file.
            _ = tick.tick() => {
                let h = handle.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || h.reload_acl_if_changed()).await {
                    tracing::error!(error = %e, "ACL file check failed");
                }
            }
            _ = stop.cancelled() => break,
        }
    }
}
