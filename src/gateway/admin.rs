//! The gateway's side of the admin endpoint (`admin_listen`): health, readiness, `/metrics`
//! and `/v1/status`, read from a [`GatewayHandle`]. The gateway keeps no ACL, so the ACL
//! calls answer 404 (the trait's default).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::GatewayHandle;
use crate::admin::{limit_family, Backend, Family, Kind};
use crate::config::{ApiConfig, Side};
use crate::telemetry::LogControl;

/// Adapts a running gateway to the admin endpoint.
pub struct AdminBackend {
    gateway: GatewayHandle,
    log: Option<LogControl>,
    /// The API's limits, shown beside `[limits]` when the API is on.
    api: Option<ApiConfig>,
    /// `admin_max_connections`, shown with the other limits.
    admin_max_connections: usize,
}

impl AdminBackend {
    pub fn new(
        gateway: GatewayHandle,
        api: Option<ApiConfig>,
        admin_max_connections: usize,
    ) -> Self {
        AdminBackend {
            gateway,
            log: None,
            api,
            admin_max_connections,
        }
    }

    /// The process's logging: `PUT /v1/log` changes its level, `/metrics` shows its limit.
    pub fn with_log(mut self, log: Option<LogControl>) -> Self {
        self.log = log;
        self
    }

    fn limits(&self) -> Vec<(&'static str, u64)> {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let mut l = self.gateway.limits().entries(Side::Gateway);
        l.push(("admin_max_connections", n(self.admin_max_connections)));
        l.push(("workers", crate::admin::runtime_workers()));
        if let Some(log) = &self.log {
            l.extend(log.limit_entries());
        }
        if let Some(a) = &self.api {
            l.extend([
                ("api_max_body", a.max_body),
                ("api_max_connections", n(a.max_connections)),
                (
                    "api_max_connections_per_source",
                    n(a.max_connections_per_source),
                ),
                ("api_request_timeout_seconds", a.request_timeout.as_secs()),
            ]);
        }
        l
    }
}

fn v(a: &AtomicU64) -> i64 {
    i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

fn n(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn one(name: &'static str, help: &'static str, kind: Kind, value: i64) -> Family {
    Family {
        name,
        help,
        kind,
        samples: vec![(Vec::new(), value)],
    }
}

impl Backend for AdminBackend {
    fn ready(&self) -> bool {
        self.gateway.is_serving()
    }

    fn status(&self) -> serde_json::Value {
        let gateways: Vec<_> = self
            .gateway
            .gateway_ids()
            .into_iter()
            .filter_map(|id| {
                let cfg = self.gateway.tenant_config(&id)?;
                let c = self.gateway.tenant_stats(&id)?;
                Some(json!({
                    "id": id,
                    "enabled": cfg.enabled,
                    "destinations": cfg.destinations.len(),
                    "clients": c.clients,
                    "tunnels": c.tunnels,
                    "active_streams": c.streams_active,
                }))
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "tunnel_listen": self.gateway.tunnel_addr().to_string(),
            "active_streams": self.gateway.active_streams(),
            "gateways": gateways,
        })
    }

    fn metric_labels(&self) -> Vec<(&'static str, String)> {
        // Replicas of one gateway are told apart on a shared dashboard.
        match &self.api {
            Some(a) if a.state_store.is_some() => vec![("replica", a.replica.clone())],
            _ => Vec::new(),
        }
    }

    fn metrics(&self, per_id: bool) -> Vec<Family> {
        let s = self.gateway.stats();
        // One row per gateway id: its counts and its number of destinations. An id whose
        // token is not enforced is all a client needs: its row only for a scrape with the
        // admin token. The others' ids are no secret.
        let rows: Vec<_> = self
            .gateway
            .gateway_ids()
            .into_iter()
            .filter_map(|id| {
                let cfg = self.gateway.tenant_config(&id)?;
                if !(per_id || cfg.enf_tok_sec) {
                    return None;
                }
                let counts = self.gateway.tenant_stats(&id)?;
                Some((id, counts, cfg.destinations.len()))
            })
            .collect();
        let by_id = |f: fn(&crate::api::IdCounts) -> u64| {
            rows.iter()
                .map(|(id, c, _)| (vec![("gateway", id.clone())], n(f(c))))
                .collect()
        };
        let budget = self.gateway.window_budget();
        vec![
            one(
                "sgw_gateway_tunnels_accepted",
                "Tunnels that completed the handshake and registered.",
                Kind::Counter,
                v(&s.tunnels_accepted),
            ),
            one(
                "sgw_gateway_tunnels_rejected",
                "Tunnel handshakes refused (token, gateway id, caps, protocol).",
                Kind::Counter,
                v(&s.tunnels_rejected),
            ),
            s.tunnels_rejected_by_reason.family(
                "sgw_gateway_tunnels_rejected_by_reason",
                "Tunnels refused at TLS or upgrade, by reason code (docs/OPERATIONS.md).",
            ),
            one(
                "sgw_gateway_tunnel_handshakes_pending",
                "Tunnel connections in their handshake now (bounded by limits.max_pending_handshakes, and per source address by limits.max_pending_handshakes_per_source).",
                Kind::Gauge,
                n(self.gateway.handshakes_pending() as u64),
            ),
            Family {
                name: "sgw_gateway_tunnels_up",
                help: "Tunnels connected now, by gateway id (bounded by limits.max_tunnels_per_gateway).",
                kind: Kind::Gauge,
                samples: by_id(|c| c.tunnels),
            },
            Family {
                name: "sgw_gateway_clients",
                help: "Client processes connected now, by gateway id.",
                kind: Kind::Gauge,
                samples: by_id(|c| c.clients),
            },
            one(
                "sgw_gateway_streams_opened",
                "Caller streams opened to a client.",
                Kind::Counter,
                v(&s.streams_opened),
            ),
            one(
                "sgw_gateway_streams_failed",
                "Caller streams that no client could open.",
                Kind::Counter,
                v(&s.streams_failed),
            ),
            one(
                "sgw_gateway_streams_denied",
                "Callers refused by a destination's ip_table_rules.",
                Kind::Counter,
                v(&s.streams_denied),
            ),
            one(
                "sgw_gateway_caller_tls_failures",
                "Callers whose TLS handshake (client_tls) failed or timed out.",
                Kind::Counter,
                v(&s.caller_tls_failures),
            ),
            one(
                "sgw_gateway_streams_early_data",
                "Caller streams whose first bytes went with the OPEN, a round trip sooner.",
                Kind::Counter,
                v(&s.streams_early_data),
            ),
            one(
                "sgw_gateway_active_streams",
                "Streams being relayed now (bounded per tunnel by limits.max_streams).",
                Kind::Gauge,
                n(self.gateway.active_streams() as u64),
            ),
            Family {
                name: "sgw_gateway_bytes",
                help: "Payload bytes relayed, by direction (up: toward the client).",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("direction", "up".into())], v(&s.bytes_up)),
                    (vec![("direction", "down".into())], v(&s.bytes_down)),
                ],
            },
            one(
                "sgw_gateway_tunnel_buffered_bytes",
                "Bytes received from clients and not yet written to callers (bounded per tunnel by limits.tunnel_buffer).",
                Kind::Gauge,
                n(self.gateway.buffered_bytes()),
            ),
            Family {
                name: "sgw_gateway_window_budget_bytes",
                help: "Receive window promised to clients over all streams (committed), and its cap (limits.window_budget).",
                kind: Kind::Gauge,
                samples: vec![
                    (vec![("state", "committed".into())], n(budget.committed())),
                    (vec![("state", "limit".into())], n(budget.cap())),
                ],
            },
            one(
                "sgw_gateway_udp_flows",
                "UDP flows open now (bounded by limits.max_udp_flows).",
                Kind::Gauge,
                v(&s.udp_flows),
            ),
            one(
                "sgw_gateway_udp_flows_rejected",
                "UDP callers turned away because max_udp_flows were open.",
                Kind::Counter,
                v(&s.udp_flows_rejected),
            ),
            one(
                "sgw_gateway_udp_queued_bytes",
                "Datagram bytes queued in all UDP flows now, each datagram counted at its size plus 64 (bounded by limits.udp_buffer_total).",
                Kind::Gauge,
                v(&s.udp_queued),
            ),
            Family {
                name: "sgw_gateway_udp_datagrams",
                help: "Datagrams over UDP flows: up (toward the client), down, dropped (queue or credit exhausted).",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("direction", "up".into())], v(&s.udp.to_stream)),
                    (vec![("direction", "down".into())], v(&s.udp.to_socket)),
                    (vec![("direction", "dropped".into())], v(&s.udp.dropped)),
                ],
            },
            Family {
                name: "sgw_gateway_destinations",
                help: "Destinations configured, by gateway id (bounded by limits.max_destinations).",
                kind: Kind::Gauge,
                samples: rows
                    .iter()
                    .map(|(id, _, d)| (vec![("gateway", id.clone())], n(*d as u64)))
                    .collect(),
            },
            limit_family("sgw_gateway_limit", &self.limits()),
        ]
    }

    fn log(&self) -> Option<&LogControl> {
        self.log.as_ref()
    }
}
