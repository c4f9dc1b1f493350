//! [`ClientHandle`]: what the admin endpoint, SIGHUP and the daemon see of a running
//! client — its status, counters and limits, and the ACL, which it reloads and edits.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info};

use super::acl_file::{AclEditError, AclFile};
use super::state::{ActiveStream, ClientState, GatewayPeer};
use super::stats::ClientStats;
use super::status::{
    AclStatus, DestinationStatus, FailureStatus, GatewayStatus, SlotStatus, Status, StatusSnapshot,
    StreamStatus, TunnelStatus,
};
use crate::acl::Acl;

/// Read access to a running client, and its ACL.
#[derive(Clone)]
pub struct ClientHandle {
    pub(super) state: Arc<ClientState>,
    pub(super) peers: Vec<Arc<GatewayPeer>>,
}

impl ClientHandle {
    /// Watch the status (tunnels up, client ids).
    pub fn status(&self) -> watch::Receiver<Status> {
        self.state.status.subscribe()
    }

    /// The process's receive-window budget (`limits.window_budget`), for metrics.
    pub fn window_budget(&self) -> Arc<crate::mux::WindowBudget> {
        self.state.mux_cfg.window_budget.clone()
    }

    /// Each gateway's share of it (`limits.window_budget_per_gateway`), by gateway id.
    pub fn gateway_window_budgets(&self) -> Vec<(String, Arc<crate::mux::WindowBudget>)> {
        self.peers
            .iter()
            .map(|p| (p.cfg.gateway_id.clone(), p.budget.clone()))
            .collect()
    }

    pub fn stats(&self) -> &ClientStats {
        &self.state.stats
    }

    /// The `[limits]` in force, for metrics.
    pub fn limits(&self) -> crate::config::Limits {
        self.state.cfg.limits
    }

    /// Replaces the ACL for new streams.
    pub fn set_acl(&self, acl: Acl) {
        let _in_order = self.acl_writes();
        self.state.set_acl(acl);
    }

    fn acl_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.state
            .acl_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Streams being relayed now.
    pub fn active_streams(&self) -> usize {
        self.state.lock_active().len()
    }

    /// Per live tunnel: gateway id, minimum RTT (seconds) and bytes buffered for slow readers.
    pub fn tunnel_gauges(&self) -> Vec<(String, Option<f64>, u64)> {
        self.peers
            .iter()
            .flat_map(|l| {
                l.live_tunnels()
                    .iter()
                    .map(|m| {
                        (
                            l.cfg.gateway_id.clone(),
                            m.rtt().map(|r| r.as_secs_f64()),
                            m.stats().buffered.load(Ordering::Relaxed),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// One line per tunnel slot that is down: its number, for how long, failed attempts, and
    /// the last failure's reason code and age; nothing else (`/readyz` is open).
    pub fn slots_down(&self) -> Vec<String> {
        let now = crate::telemetry::unix_ms();
        let secs = |ms: u64| now.saturating_sub(ms) / 1000;
        let mut out = Vec::new();
        for p in &self.peers {
            let slots = p.slots.lock().unwrap_or_else(|e| e.into_inner());
            for (n, h) in slots.iter().filter(|(_, h)| !h.up) {
                let last = h.last_failure.as_ref().map_or(String::new(), |f| {
                    format!("; last failure {} s ago, reason={}", secs(f.at_ms), f.code)
                });
                out.push(format!(
                    "slot {n}: down for {} s, {} failed attempt(s){last}",
                    secs(h.since_ms),
                    h.failures
                ));
            }
        }
        out
    }

    /// Everything `/v1/status` and `sgw status` show: tunnels per gateway with RTT,
    /// destinations, active streams with addresses and live byte counts.
    pub fn snapshot(&self) -> StatusSnapshot {
        snapshot(&self.state, &self.peers)
    }

    /// The rule set new streams are checked against.
    pub fn acl(&self) -> Arc<Acl> {
        self.state.acl()
    }

    /// Reloads the ACL file, all or nothing: on any error the old rules stay and every error
    /// is logged. Returns the errors too (for SIGHUP and the admin API).
    pub fn reload_acl(&self) -> Result<usize, crate::acl::AclError> {
        let Some(file) = &self.state.acl_file else {
            return Err(crate::acl::AclError::NoFile);
        };
        let _in_order = self.acl_writes();
        match file.load() {
            Ok(a) => {
                let n = a.rules.len();
                info!(rules = n, file = %file.path().display(), "ACL reloaded");
                self.state.stats.acl_reloads.fetch_add(1, Ordering::Relaxed);
                self.state.set_acl(a);
                Ok(n)
            }
            Err(errs) => {
                self.state
                    .stats
                    .acl_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                for e in errs.messages() {
                    error!(error = %e, "ACL reload failed, keeping the old rules");
                }
                Err(errs)
            }
        }
    }

    pub(super) fn reload_acl_if_changed(&self) {
        if self.state.acl_file.as_ref().is_some_and(|f| f.changed()) {
            let _ = self.reload_acl();
        }
    }

    /// Adds a rule (before line `before`, or at the end), writes the file back and applies the
    /// new rule set to new streams at once. Returns the rule's line.
    pub fn acl_add(&self, rule: &str, before: Option<usize>) -> Result<usize, AclEditError> {
        let file = self.acl_file()?;
        let _in_order = self.acl_writes();
        let (acl, line) = file.add(rule, before)?;
        info!(acl.line = line, acl.rule = %rule.trim(), "ACL rule added");
        self.state.set_acl(acl);
        Ok(line)
    }

    /// Removes a rule by text or line, writes the file back and applies the new rule set.
    pub fn acl_remove(
        &self,
        rule: Option<&str>,
        line: Option<usize>,
    ) -> Result<usize, AclEditError> {
        let file = self.acl_file()?;
        let _in_order = self.acl_writes();
        let (acl, removed) = file.remove(rule, line)?;
        info!(acl.line = removed, "ACL rule removed");
        self.state.set_acl(acl);
        Ok(removed)
    }

    fn acl_file(&self) -> Result<&AclFile, AclEditError> {
        self.state
            .acl_file
            .as_ref()
            .ok_or_else(|| AclEditError::Invalid("this client has no ACL file".into()))
    }
}

fn snapshot(state: &ClientState, peers: &[Arc<GatewayPeer>]) -> StatusSnapshot {
    let st = state.status.borrow().clone();
    let gateways = peers
        .iter()
        .map(|p| GatewayStatus {
            gateway_id: p.cfg.gateway_id.clone(),
            url: p
                .cfg
                .replicas
                .first()
                .map(|r| r.url.to_string())
                .unwrap_or_default(),
            urls: p.cfg.replicas.iter().map(|r| r.url.to_string()).collect(),
            via_proxy: p
                .cfg
                .replicas
                .first()
                .and_then(|r| r.proxy.as_ref())
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
            slots: p
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(n, h)| SlotStatus {
                    slot: *n,
                    url: h.url.clone(),
                    addr: h.addr.map(|a| a.to_string()),
                    up: h.up,
                    since_unix_ms: h.since_ms,
                    failures: h.failures,
                    last_failure: h.last_failure.as_ref().map(|f| FailureStatus {
                        reason: f.code.to_owned(),
                        message: f.sentence.clone(),
                        at_unix_ms: f.at_ms,
                    }),
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
