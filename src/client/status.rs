//! What the client shows of itself: the [`Status`] watch (tunnels up, client ids) that
//! systemd notification and readiness follow, and the [`StatusSnapshot`] behind
//! `/v1/status` and `sgw status`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::state::{ActiveStream, ClientState, GatewayPeer};

/// What the client looks like from outside right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub tunnels_up: usize,
    /// Client id per gateway id, once assigned.
    pub client_ids: Vec<(String, String)>,
}

impl Status {
    /// A tunnel to `gateway_id` came up (`delta` 1) or went down (-1).
    pub(super) fn tunnel(&mut self, gateway_id: &str, client_id: &str, delta: isize) {
        self.tunnels_up = self.tunnels_up.saturating_add_signed(delta);
        match self.client_ids.iter_mut().find(|(g, _)| g == gateway_id) {
            Some(e) => client_id.clone_into(&mut e.1),
            None => self
                .client_ids
                .push((gateway_id.to_owned(), client_id.to_owned())),
        }
    }
}

/// Everything `/v1/status` shows: tunnels per gateway with RTT, destinations, active
/// streams with addresses and live byte counts.
#[derive(Debug, Serialize)]
pub struct StatusSnapshot {
    pub version: String,
    pub tunnels_up: usize,
    pub gateways: Vec<GatewayStatus>,
    pub active_streams: Vec<StreamStatus>,
    pub acl: AclStatus,
}

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub gateway_id: String,
    pub url: String,
    /// The outbound proxy's `host:port`, when tunnels go through one.
    pub via_proxy: Option<String>,
    pub client_id: Option<String>,
    pub tunnels: Vec<TunnelStatus>,
    pub destinations: Vec<DestinationStatus>,
}

#[derive(Debug, Serialize)]
pub struct TunnelStatus {
    pub rtt_ms: Option<f64>,
    pub active_streams: usize,
}

#[derive(Debug, Serialize)]
pub struct DestinationStatus {
    pub id: String,
    pub protocol: String,
    pub addr: String,
    pub private: bool,
}

#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub stream_id: u32,
    pub dest_id: String,
    pub dest_addr: String,
    pub caller_addr: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub age_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct AclStatus {
    pub file: String,
    pub rules: usize,
}

pub(super) fn snapshot(state: &ClientState, peers: &[Arc<GatewayPeer>]) -> StatusSnapshot {
    let st = state.status.borrow().clone();
    let gateways = peers
        .iter()
        .map(|p| GatewayStatus {
            gateway_id: p.cfg.gateway_id.clone(),
            url: p.cfg.url.to_string(),
            via_proxy: p
                .cfg
                .proxy
                .as_ref()
                .map(|x| format!("{}:{}", x.host, x.port)),
            client_id: st
                .client_ids
                .iter()
                .find(|(g, _)| *g == p.cfg.gateway_id)
                .map(|(_, c)| c.clone()),
            tunnels: p
                .live_tunnels()
                .iter()
                .map(|m| TunnelStatus {
                    rtt_ms: m.rtt().map(|r| r.as_secs_f64() * 1000.0),
                    active_streams: m.active_streams(),
                })
                .collect(),
            destinations: p
                .dests
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|d| DestinationStatus {
                    id: d.spec.id.clone(),
                    protocol: d.spec.protocol.as_str().to_owned(),
                    addr: format!("{}:{}", d.spec.ip, d.spec.port),
                    private: d.spec.private,
                })
                .collect(),
        })
        .collect();
    let mut streams: Vec<Arc<ActiveStream>> = state.lock_active().values().cloned().collect();
    streams.sort_by_key(|s| s.started);
    let active_streams = streams
        .iter()
        .map(|s| StreamStatus {
            stream_id: s.stream_id,
            dest_id: s.dest_id.clone(),
            dest_addr: s.dest_addr.clone(),
            caller_addr: s.caller.clone(),
            bytes_up: s.counters.to_socket.load(Ordering::Relaxed),
            bytes_down: s.counters.to_stream.load(Ordering::Relaxed),
            age_ms: s.started.elapsed().as_millis() as u64,
        })
        .collect();
    let acl = state.acl();
    StatusSnapshot {
        version: state.hello.version.clone(),
        tunnels_up: st.tunnels_up,
        gateways,
        active_streams,
        acl: AclStatus {
            file: acl.file.clone(),
            rules: acl.rules.len(),
        },
    }
}
