//! The client's counters: client-wide, per destination (bounded series), and the UDP flow
//! slots `limits.max_udp_flows` hands out. `/metrics` renders them (client/admin.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Client-wide counters.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub streams_opened: AtomicU64,
    /// Streams refused by the ACL or a private destination's caller rules (all reasons).
    pub streams_denied: AtomicU64,
    pub denied_by_rule: AtomicU64,
    pub denied_by_default: AtomicU64,
    pub denied_by_caller: AtomicU64,
    pub acl_reloads: AtomicU64,
    pub acl_reload_failures: AtomicU64,
    pub streams_failed: AtomicU64,
    /// On-prem connections to reverse destinations whose first bytes went with the OPEN.
    pub streams_early_data: AtomicU64,
    pub tunnel_connects: AtomicU64,
    pub tunnel_failures: AtomicU64,
    /// Failed connects and tunnels gone down, by reason code.
    pub tunnel_reasons: crate::admin::ReasonCounts,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// UDP flows open now, and flows refused by `limits.max_udp_flows`.
    pub udp_flows: AtomicU64,
    pub udp_flows_rejected: AtomicU64,
    /// Datagrams over all UDP flows (up: toward the endpoint).
    pub udp: Arc<crate::udp::FlowCounters>,
    /// The same, per destination id (bounded: see [`MAX_DEST_SERIES`]).
    per_dest: std::sync::Mutex<HashMap<String, Arc<DestStats>>>,
}

/// Per-destination series kept at most; further destinations share the `_other` series.
pub const MAX_DEST_SERIES: usize = 4096;

/// Counters of one destination.
#[derive(Debug, Default)]
pub struct DestStats {
    pub opened: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// DATA payload bytes in the tunnel (smaller than the above when compressed).
    pub tunnel_bytes_up: AtomicU64,
    pub tunnel_bytes_down: AtomicU64,
    /// By deny reason: acl_rule, acl_default, ip_table_rules.
    pub denied: [AtomicU64; 3],
    /// By OPEN_ERR reason name (a closed set).
    pub failed: std::sync::Mutex<HashMap<&'static str, u64>>,
}

impl ClientStats {
    /// The counters of `dest` (created on first use, up to [`MAX_DEST_SERIES`]).
    pub fn dest(&self, dest: &str) -> Arc<DestStats> {
        let mut m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = m.get(dest) {
            return d.clone();
        }
        let key = if m.len() < MAX_DEST_SERIES {
            dest
        } else {
            "_other"
        };
        m.entry(key.to_owned()).or_default().clone()
    }

    /// Adds a finished stream's bytes to the totals and to its destination's.
    pub(super) fn record(&self, dest: &DestStats, d: &crate::relay::Directed) {
        self.bytes_up.fetch_add(d.up, Ordering::Relaxed);
        self.bytes_down.fetch_add(d.down, Ordering::Relaxed);
        dest.bytes_up.fetch_add(d.up, Ordering::Relaxed);
        dest.bytes_down.fetch_add(d.down, Ordering::Relaxed);
        dest.tunnel_bytes_up
            .fetch_add(d.tunnel_up, Ordering::Relaxed);
        dest.tunnel_bytes_down
            .fetch_add(d.tunnel_down, Ordering::Relaxed);
    }

    /// Every destination's counters, sorted by id.
    pub fn per_dest(&self) -> Vec<(String, Arc<DestStats>)> {
        let m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, d)| (k.clone(), d.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// One of `limits.max_udp_flows`, held while a UDP flow lives.
pub(super) struct FlowSlot<'a>(&'a ClientStats);

impl<'a> FlowSlot<'a> {
    /// A slot if fewer than `max` flows are open.
    pub(super) fn take(s: &'a ClientStats, max: usize) -> Option<Self> {
        let max = max as u64;
        s.udp_flows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| FlowSlot(s))
    }
}

impl Drop for FlowSlot<'_> {
    fn drop(&mut self) {
        self.0.udp_flows.fetch_sub(1, Ordering::AcqRel);
    }
}
