//! One client tunnel on the gateway, from TLS accept to close: the handshake
//! ([`crate::tunnel::accept`], the token judged, the tunnel registered, WELCOME and the
//! first CONFIG sent), then the session — reverse streams the client opens, its forwarded
//! log lines, token expiry — until either side closes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::handshakes::Place;
use super::registry::TenantState;
use super::reverse;
use super::state::GatewayState;
use crate::mux::Mux;
use crate::proto::{
    LogPush, Reason, Welcome, FEATURE_EARLY_DATA, FEATURE_PROBE, PROTO_MAJOR, PROTO_MINOR,
};
use crate::telemetry::clean;
use crate::tunnel::{self, AcceptError, UpgradeRefusal};

/// May a tunnel that presented `token` belong to this gateway id now?
fn admits(state: &TenantState, token: Option<&crate::config::Secret>) -> bool {
    let now = crate::telemetry::unix_ms() / 1000;
    let token_ok = token.is_some_and(|t| state.cfg.token_valid(t.expose(), now));
    state.cfg.enabled && (!state.cfg.enf_tok_sec || token_ok)
}

/// A client log line is kept (and logged) cut to this many bytes.
const CLIENT_LOG_MAX: usize = 2048;

/// One client tunnel from TLS accept to close.
pub(super) async fn serve_tunnel(
    gw: Arc<GatewayState>,
    tcp: TcpStream,
    peer: SocketAddr,
    place: Place,
    shutdown: CancellationToken,
) {
    // The token is judged again after registering and before every CONFIG this tunnel is
    // sent: a change may revoke it at any point of the handshake.
    let mut token: Option<crate::config::Secret> = None;
    // A stranger's handshake ends when a newcomer takes its place (handshakes.rs); one that
    // showed a good token keeps it until its tunnel registers, and also holds a place of its
    // gateway id's, so one id's token holders can't take every place from the others. An id
    // whose token is not enforced takes anyone: its connections stay strangers.
    let mut id_place = None;
    let handshake = tunnel::accept(tcp, &gw.tls, |req| {
        let tenant = gw
            .tenant(req.gateway_id)
            .ok_or(UpgradeRefusal::Unauthorized)?;
        token = req.token.map(crate::config::Secret::new);
        let state = tenant.state();
        if !admits(&state, token.as_ref()) {
            return Err(UpgradeRefusal::Unauthorized);
        }
        if !state.cfg.enf_tok_sec {
            return Ok(tenant);
        }
        drop(state);
        let Ok(p) = tenant.handshakes.clone().try_acquire_owned() else {
            let n = gw.limits.max_pending_handshakes_per_gateway;
            return Err(UpgradeRefusal::Busy(format!(
                "{n} tunnels of gateway id `{}` are in their handshake (limits.max_pending_handshakes_per_gateway)",
                tenant.id
            )));
        };
        if !place.authorize() {
            let n = gw.limits.max_pending_handshakes;
            return Err(UpgradeRefusal::Busy(format!(
                "{n} tunnel handshakes are pending (limits.max_pending_handshakes) and a newcomer took this one's place"
            )));
        }
        id_place = Some(p);
        Ok(tenant)
    });
    let finished = tokio::select! {
        r = handshake => Some(r),
        _ = place.displaced() => None,
    };
    let accepted = match finished {
        Some(r) if !place.was_displaced() => r,
        _ => {
            gw.stats.tunnel_refused("limit");
            warn!(peer.addr = %peer, reason = "limit", "tunnel connection closed: limits.max_pending_handshakes reached, and a newcomer took its place (its address held the most handshakes without a token)");
            return;
        }
    };
    let (mut ws, tenant, hello) = match accepted {
        Ok(x) => x,
        Err(e) => {
            let why = tunnel::why::refused(&e);
            gw.stats.tunnel_refused(why.code);
            warn!(peer.addr = %peer, reason = %why.code, "tunnel refused: {}", why.sentence);
            return;
        }
    };
    let client_id = tenant.client_id_for(&hello.instance);
    let span = tracing::info_span!("tunnel", client.id = %client_id, gateway.id = %tenant.id, peer.addr = %peer);
    async move {
        // A probe (`sgw doctor`) is answered and closed, never registered: it takes no room.
        let probe = hello.features.iter().any(|f| f == FEATURE_PROBE);
        // Early data both ways with a client that takes it: it sends on the streams it opens
        // too, and this WELCOME says so.
        let early = !probe && hello.features.iter().any(|f| f == FEATURE_EARLY_DATA);
        let features = if probe {
            vec![FEATURE_PROBE.to_owned()]
        } else if early {
            vec![FEATURE_EARLY_DATA.to_owned()]
        } else {
            Vec::new()
        };
        let welcome = Welcome { client_id: client_id.clone(), gateway_id: tenant.id.clone(), proto: [PROTO_MAJOR, PROTO_MINOR], features };
        let room = if probe { Ok(()) } else { tenant.tunnel_room(&hello.instance, gw.tunnel_caps) };
        if let Err(why) = room {
            gw.stats.tunnels_rejected.fetch_add(1, Ordering::Relaxed);
            warn!(reason = %why.reason(), error = %why, "tunnel refused");
            return;
        }
        let state = tenant.state();
        if !admits(&state, token.as_ref()) {
            warn!(reason = "token_revoked", "tunnel refused: its security token was revoked during the handshake");
            return;
        }
        let sent_config = state.push.clone();
        drop(state);
        match tunnel::welcome(&mut ws, &welcome, sent_config.clone()).await {
            Ok(()) => {}
            Err(AcceptError::Timeout(..)) => {
                warn!(reason = "timeout", "tunnel dropped: the client did not take WELCOME and CONFIG in time");
                return;
            }
            Err(e) => {
                warn!(error = %e, "tunnel lost during handshake");
                return;
            }
        }
        if probe {
            // `sgw doctor`: it has what it asked for; never registered, so never routed to.
            info!(client.hostname = %clean(&hello.hostname, 256), "answered a probe (sgw doctor): token accepted, destinations sent");
            drop((place, id_place));
            let _ = tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, futures_util::SinkExt::close(&mut ws)).await;
            return;
        }
        let (r, w) = tunnel::split(ws);
        let mut cfg = gw.mux_cfg.clone();
        cfg.window_budget = tenant.budget.clone();
        cfg.early_data = early;
        cfg.peer_early_data = early;
        let (mux, mut events) = Mux::start(r, w, cfg);
        let tunnel_id = match tenant.register(&client_id, &hello, mux.clone(), gw.tunnel_caps) {
            Ok(id) => {
                gw.stats.tunnels_accepted.fetch_add(1, Ordering::Relaxed);
                tenant.stats.tunnels_accepted.fetch_add(1, Ordering::Relaxed);
                id
            }
            Err(why) => {
                gw.stats.tunnels_rejected.fetch_add(1, Ordering::Relaxed);
                warn!(reason = %why.reason(), error = %why, "tunnel refused");
                mux.close(why.reason(), &why.to_string());
                return;
            }
        };
        // Registered: from here its tunnel caps hold it, not the handshake limits.
        drop((place, id_place));
        // A change applied between the hello and registering would otherwise miss this tunnel:
        // a revoked token closes it (before anything more is sent), a new list is pushed.
        let now = tenant.state();
        if !admits(&now, token.as_ref()) {
            mux.close(Reason::Auth, "security token revoked");
        } else if now.push != sent_config {
            if let Err(e) = mux.push_config(now.push.clone()) {
                warn!(error = %e, "could not send the changed configuration; closing the tunnel so the client reconnects");
                mux.close(Reason::Internal, "configuration push failed");
            }
        }
        drop(now);
        info!(client.version = %clean(&hello.version, 64), client.hostname = %clean(&hello.hostname, 256), client.env = %clean(&hello.env, 64), "tunnel up");
        // The token this tunnel came in with stops being good at its expiry; a changed token
        // closes the tunnel sooner (apply::apply).
        let expires = {
            let cfg = &tenant.state().cfg;
            cfg.token_expires_at.filter(|_| cfg.enf_tok_sec)
        };
        let expiry = async move {
            match expires {
                Some(at) => {
                    let now = crate::telemetry::unix_ms() / 1000;
                    tokio::time::sleep(Duration::from_secs(at.saturating_sub(now))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                _ = &mut expiry => {
                    info!(reason = "token_expired", "the security token expired; closing the tunnel");
                    mux.close(Reason::Auth, "security token expired");
                    break;
                }
                inc = events.incoming.recv() => match inc {
                    // Client-opened streams are for reverse destinations.
                    Some(i) => {
                        let fut = reverse::serve_reverse(gw.clone(), tenant.clone(), i, client_id.clone());
                        gw.tracker.spawn(fut);
                    }
                    None => break,
                },
                log = events.logs.recv() => if let Some(line) = log {
                    match serde_json::from_slice::<LogPush>(&line) {
                        Ok(l) => {
                            // Kept per gateway id for clientLogs: stored short and escaped.
                            let l = LogPush { level: clean(&l.level, 16), message: clean(&l.message, CLIENT_LOG_MAX), time: l.time };
                            info!(client.log.level = %l.level, client.log = %l.message, "client log");
                            tenant.push_log(&client_id, l);
                        }
                        Err(e) => info!(error = %e, "ignoring malformed client log line"),
                    }
                },
                _ = mux.closed() => break,
                _ = shutdown.cancelled() => {
                    // `run` drains and closes every tunnel; just wait for that.
                    mux.closed().await;
                    break;
                }
            }
        }
        let closed = mux.close_reason().unwrap_or_else(|| crate::mux::close::here("tunnel ended"));
        tenant.unregister(&client_id, tunnel_id, &closed.sentence);
        info!(reason = %closed.code, "tunnel down: {}", closed.sentence);
    }
    .instrument(span)
    .await
}
