//! What the client shows of itself: the [`Status`] watch (tunnels up, client ids) that
//! systemd notification and readiness follow, and the [`StatusSnapshot`] behind
//! `/v1/status` and `sgw status`.

use serde::Serialize;

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
    /// The first of `urls`.
    pub url: String,
    /// Every replica's URL (`urls` in client.toml); the client holds tunnels to each.
    pub urls: Vec<String>,
    /// The outbound proxy's `host:port`, when tunnels (to the first replica) go through one.
    pub via_proxy: Option<String>,
    pub client_id: Option<String>,
    pub tunnels: Vec<TunnelStatus>,
    /// Every tunnel slot, up or not, with its last failure.
    pub slots: Vec<SlotStatus>,
    pub destinations: Vec<DestinationStatus>,
}

/// One tunnel slot: where it connects, whether it is up, and why it last failed.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub slot: usize,
    pub url: String,
    /// The one address of the URL's name this slot dials, when the name has several.
    pub addr: Option<String>,
    pub up: bool,
    /// Unix ms of the last change between up and down.
    pub since_unix_ms: u64,
    /// Failed connects since it was last up.
    pub failures: u64,
    pub last_failure: Option<FailureStatus>,
}

/// A failure: the stable reason code, its sentence, and when.
#[derive(Debug, Serialize)]
pub struct FailureStatus {
    pub reason: String,
    pub message: String,
    pub at_unix_ms: u64,
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
