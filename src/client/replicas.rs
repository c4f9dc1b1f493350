//! Which addresses a client holds tunnels to. Each URL of a `[[gateway]]` is a replica; a URL
//! whose name resolves to several addresses (DNS round robin, a Kubernetes headless Service)
//! is several: the client keeps `tunnels` tunnels to every address, so a caller arriving at
//! any replica finds this client there. The name is resolved again every [`RESOLVE_EVERY`]:
//! a new address gets its tunnels, one gone has its tunnels drained. A URL with an IP
//! address, or reached through an outbound proxy (which resolves names itself), is dialled by
//! name at each connect, as one replica.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::session::{supervise_slot, Target};
use super::state::{ClientState, GatewayPeer};
use crate::config::MAX_REPLICAS;

/// How often a replica's name is resolved again.
pub(super) const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// Longest wait for one resolution (a name that gets no answer in time counts as not
/// resolving; the tunnels already held are kept).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Holds `tunnels` tunnels to replica `index` of `peer` (to each of its addresses) until
/// `shutdown`.
pub(super) async fn hold(
    shared: Arc<ClientState>,
    peer: Arc<GatewayPeer>,
    index: usize,
    shutdown: CancellationToken,
) {
    let Some(replica) = peer.cfg.replicas.get(index).cloned() else {
        return;
    };
    let tunnels = peer.cfg.tunnels;
    let slots = TaskTracker::new();
    let host = replica
        .url
        .host
        .trim_start_matches('[')
        .trim_end_matches(']');
    if replica.proxy.is_some() || host.parse::<std::net::IpAddr>().is_ok() {
        for _ in 0..tunnels {
            let target = Target {
                replica: replica.clone(),
                addr: None,
                slot: peer.new_slot(),
            };
            slots.spawn(supervise_slot(
                shared.clone(),
                peer.clone(),
                target,
                shutdown.clone(),
            ));
        }
        slots.close();
        slots.wait().await;
        return;
    }
    let mut held: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    let mut attempt = 0u32;
    loop {
        let found = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host, replica.url.port)),
        )
        .await;
        let addrs: Option<BTreeSet<SocketAddr>> = match found {
            // A name's answer is bounded like any other input: at most MAX_REPLICAS addresses.
            Ok(Ok(a)) => Some(a.take(MAX_REPLICAS).collect()),
            Ok(Err(_)) | Err(_) => {
                let why = crate::tunnel::why::dns_failed(host);
                let held_now = held.len();
                warn!(gateway.id = %peer.cfg.gateway_id, gateway.url = %replica.url, reason = %why.code, tunnels.addresses = held_now, "{}", why.sentence);
                None
            }
        };
        if addrs.as_ref().is_some_and(|a| a.is_empty()) {
            let why = crate::tunnel::why::dns_failed(host);
            warn!(gateway.id = %peer.cfg.gateway_id, gateway.url = %replica.url, reason = %why.code, "{}", why.sentence);
        }
        if let Some(addrs) = addrs.filter(|a| !a.is_empty()) {
            attempt = 0;
            let new: Vec<SocketAddr> = addrs
                .iter()
                .filter(|a| !held.contains_key(a))
                .copied()
                .collect();
            for a in new {
                let stop = shutdown.child_token();
                for _ in 0..tunnels {
                    let target = Target {
                        replica: replica.clone(),
                        addr: Some(a),
                        slot: peer.new_slot(),
                    };
                    slots.spawn(supervise_slot(
                        shared.clone(),
                        peer.clone(),
                        target,
                        stop.clone(),
                    ));
                }
                if addrs.len() > 1 || !held.is_empty() {
                    info!(gateway.id = %peer.cfg.gateway_id, gateway.url = %replica.url, gateway.addr = %a, "holding tunnels to this address of the gateway");
                }
                held.insert(a, stop);
            }
            held.retain(|a, stop| {
                let keep = addrs.contains(a);
                if !keep {
                    info!(gateway.id = %peer.cfg.gateway_id, gateway.url = %replica.url, gateway.addr = %a, "the gateway's name no longer resolves to this address; draining its tunnels");
                    stop.cancel();
                }
                keep
            });
        }
        // Nothing held yet: try again soon, with backoff; else at the regular interval.
        let wait = if held.is_empty() {
            let d = shared.cfg.reconnect.delay(attempt);
            attempt = attempt.saturating_add(1);
            d
        } else {
            RESOLVE_EVERY
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    slots.close();
    slots.wait().await;
}
