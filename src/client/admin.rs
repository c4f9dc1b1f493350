//! The client's side of the admin endpoint: what [`crate::admin`] serves, read from a
//! [`ClientHandle`].

use std::sync::atomic::Ordering;

use crate::admin::{AclError, AclView, Backend, Family, Kind, RuleView};
use crate::config::Policy;
use crate::telemetry::LogControl;

use super::{AclEditError, ClientHandle};

/// Adapts a running client to the admin endpoint.
pub struct AdminBackend {
    client: ClientHandle,
    log: Option<LogControl>,
    /// `admin_max_connections`, shown with the other limits.
    admin_max_connections: usize,
}

impl AdminBackend {
    pub fn new(client: ClientHandle) -> Self {
        AdminBackend {
            client,
            log: None,
            admin_max_connections: crate::config::ADMIN_MAX_CONNECTIONS,
        }
    }

    /// The admin endpoint's own connection limit, for `/metrics`.
    pub fn with_admin_max_connections(mut self, n: usize) -> Self {
        self.admin_max_connections = n;
        self
    }

    /// `[limits]` and the admin endpoint's own.
    fn limits(&self) -> Vec<(&'static str, u64)> {
        let mut l = self.client.limits().entries(crate::config::Side::Client);
        let n = u64::try_from(self.admin_max_connections).unwrap_or(u64::MAX);
        l.push(("admin_max_connections", n));
        l.push(("workers", crate::admin::runtime_workers()));
        if let Some(log) = &self.log {
            l.extend(log.limit_entries());
        }
        l
    }

    /// The process's logging: `PUT /v1/log` changes its level, `/metrics` shows its limit.
    pub fn with_log(mut self, log: Option<LogControl>) -> Self {
        self.log = log;
        self
    }
}

fn edit_error(e: AclEditError) -> AclError {
    let status = match e {
        AclEditError::BadRule(_) | AclEditError::Invalid(_) | AclEditError::Acl(_) => 400,
        AclEditError::NotFound(_) => 404,
        AclEditError::Io { .. } => 500,
    };
    AclError {
        status,
        message: e.to_string(),
        errors: Vec::new(),
    }
}

impl Backend for AdminBackend {
    fn ready(&self) -> bool {
        self.client.status().borrow().tunnels_up > 0
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.client.snapshot()).unwrap_or_default()
    }

    /// Every slot that is down, with its last failure's code and age: a slot that keeps
    /// failing shows here without the logs. Codes only: `/readyz` is open to any caller, so
    /// no URL, gateway id or sentence (those are in `/v1/status`, behind the token).
    fn readiness_detail(&self) -> Vec<String> {
        self.client.slots_down()
    }

    /// Destination ids are not credentials: every series, token or not.
    fn metrics(&self, _per_id: bool) -> Vec<Family> {
        let s = self.client.stats();
        let per_dest = s.per_dest();
        let tunnels = self.client.tunnel_gauges();
        let v = |a: &std::sync::atomic::AtomicU64| {
            i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        };
        let one = |name, help, kind, value| Family {
            name,
            help,
            kind,
            samples: vec![(Vec::new(), value)],
        };
        vec![
            one(
                "sgw_client_streams_opened",
                "Streams dialled and relayed.",
                Kind::Counter,
                v(&s.streams_opened),
            ),
            one(
                "sgw_client_udp_flows",
                "UDP flows open now (bounded by limits.max_udp_flows).",
                Kind::Gauge,
                v(&s.udp_flows),
            ),
            one(
                "sgw_client_udp_flows_rejected",
                "UDP flows refused because max_udp_flows were open.",
                Kind::Counter,
                v(&s.udp_flows_rejected),
            ),
            Family {
                name: "sgw_client_udp_datagrams",
                help: "Datagrams over UDP flows: up (toward the endpoint), down, dropped (no credit or queue space).",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("direction", "up".into())], v(&s.udp.to_socket)),
                    (vec![("direction", "down".into())], v(&s.udp.to_stream)),
                    (vec![("direction", "dropped".into())], v(&s.udp.dropped)),
                ],
            },
            one(
                "sgw_client_streams_failed",
                "Streams whose dial failed or whose destination was unknown.",
                Kind::Counter,
                v(&s.streams_failed),
            ),
            one(
                "sgw_client_streams_early_data",
                "On-prem connections to reverse destinations whose first bytes went with the OPEN.",
                Kind::Counter,
                v(&s.streams_early_data),
            ),
            Family {
                name: "sgw_client_streams_denied",
                help: "Streams refused by the client's veto, by reason.",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("reason", "acl_rule".into())], v(&s.denied_by_rule)),
                    (
                        vec![("reason", "acl_default".into())],
                        v(&s.denied_by_default),
                    ),
                    (
                        vec![("reason", "ip_table_rules".into())],
                        v(&s.denied_by_caller),
                    ),
                ],
            },
            {
                let b = self.client.window_budget();
                Family {
                    name: "sgw_client_window_budget_bytes",
                    help: "Receive window promised to the gateway over all streams (committed), and its cap (limits.window_budget).",
                    kind: Kind::Gauge,
                    samples: vec![
                        (vec![("state", "committed".into())], i64::try_from(b.committed()).unwrap_or(i64::MAX)),
                        (vec![("state", "limit".into())], i64::try_from(b.cap()).unwrap_or(i64::MAX)),
                    ],
                }
            },
            {
                let n = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
                Family {
                    name: "sgw_client_gateway_window_budget_bytes",
                    help: "Receive window promised to each gateway's streams (committed), and its share of limits.window_budget (limit: limits.window_budget_per_gateway).",
                    kind: Kind::Gauge,
                    samples: self
                        .client
                        .gateway_window_budgets()
                        .into_iter()
                        .enumerate()
                        // `link`: the [[gateway]]'s place in client.toml, as two may share an id.
                        .flat_map(|(i, (id, b))| {
                            let l = |state: &str| vec![("gateway", id.clone()), ("link", i.to_string()), ("state", state.into())];
                            [(l("committed"), n(b.committed())), (l("limit"), n(b.cap()))]
                        })
                        .collect(),
                }
            },
            Family {
                name: "sgw_client_bytes",
                help: "Payload bytes relayed, by direction (up: toward the endpoint).",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("direction", "up".into())], v(&s.bytes_up)),
                    (vec![("direction", "down".into())], v(&s.bytes_down)),
                ],
            },
            one(
                "sgw_client_tunnel_connects",
                "Tunnels established.",
                Kind::Counter,
                v(&s.tunnel_connects),
            ),
            one(
                "sgw_client_tunnel_failures",
                "Failed tunnel connection attempts.",
                Kind::Counter,
                v(&s.tunnel_failures),
            ),
            s.tunnel_reasons.family(
                "sgw_client_tunnel_failures_by_reason",
                "Failed tunnel connects and tunnels that went down, by reason code (docs/OPERATIONS.md).",
            ),
            one(
                "sgw_client_tunnels_up",
                "Tunnels up now.",
                Kind::Gauge,
                self.client.status().borrow().tunnels_up as i64,
            ),
            one(
                "sgw_client_active_streams",
                "Streams being relayed now.",
                Kind::Gauge,
                self.client.active_streams() as i64,
            ),
            Family {
                name: "sgw_client_tunnel_buffered_bytes",
                help: "Bytes received on a tunnel and not yet read by their stream's socket.",
                kind: Kind::Gauge,
                samples: tunnels
                    .iter()
                    .enumerate()
                    .map(|(i, (g, _, b))| {
                        (
                            vec![("gateway", g.clone()), ("tunnel", i.to_string())],
                            *b as i64,
                        )
                    })
                    .collect(),
            },
            Family {
                name: "sgw_client_tunnel_rtt_microseconds",
                help: "Minimum PING round trip of a tunnel.",
                kind: Kind::Gauge,
                samples: tunnels
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (g, r, _))| {
                        r.map(|r| {
                            (
                                vec![("gateway", g.clone()), ("tunnel", i.to_string())],
                                (r * 1e6) as i64,
                            )
                        })
                    })
                    .collect(),
            },
            Family {
                name: "sgw_client_dest_streams_opened",
                help: "Streams dialled and relayed, by destination.",
                kind: Kind::Counter,
                samples: per_dest
                    .iter()
                    .map(|(d, c)| (vec![("dest", d.clone())], v(&c.opened)))
                    .collect(),
            },
            Family {
                name: "sgw_client_dest_streams_denied",
                help: "Streams refused by the client's veto, by destination and reason.",
                kind: Kind::Counter,
                samples: per_dest
                    .iter()
                    .flat_map(|(d, c)| {
                        ["acl_rule", "acl_default", "ip_table_rules"]
                            .iter()
                            .enumerate()
                            .map(move |(i, r)| {
                                (
                                    vec![("dest", d.clone()), ("reason", r.to_string())],
                                    v(&c.denied[i]),
                                )
                            })
                    })
                    .collect(),
            },
            Family {
                name: "sgw_client_dest_streams_failed",
                help: "Streams whose dial failed, by destination and reason.",
                kind: Kind::Counter,
                samples: per_dest
                    .iter()
                    .flat_map(|(d, c)| {
                        let m = c.failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let mut m: Vec<_> = m.into_iter().collect();
                        m.sort();
                        m.into_iter().map(move |(r, n)| {
                            (
                                vec![("dest", d.clone()), ("reason", r.to_string())],
                                i64::try_from(n).unwrap_or(i64::MAX),
                            )
                        })
                    })
                    .collect(),
            },
            Family {
                name: "sgw_client_dest_bytes",
                help:
                    "Payload bytes relayed, by destination and direction (up: toward the endpoint).",
                kind: Kind::Counter,
                samples: per_dest
                    .iter()
                    .flat_map(|(d, c)| {
                        [
                            (
                                vec![("dest", d.clone()), ("direction", "up".to_string())],
                                v(&c.bytes_up),
                            ),
                            (
                                vec![("dest", d.clone()), ("direction", "down".to_string())],
                                v(&c.bytes_down),
                            ),
                        ]
                    })
                    .collect(),
            },
            Family {
                name: "sgw_client_dest_tunnel_bytes",
                help: "DATA payload bytes in the tunnel, by destination and direction: below sgw_client_dest_bytes when compression pays.",
                kind: Kind::Counter,
                samples: per_dest
                    .iter()
                    .flat_map(|(d, c)| {
                        [
                            (
                                vec![("dest", d.clone()), ("direction", "up".to_string())],
                                v(&c.tunnel_bytes_up),
                            ),
                            (
                                vec![("dest", d.clone()), ("direction", "down".to_string())],
                                v(&c.tunnel_bytes_down),
                            ),
                        ]
                    })
                    .collect(),
            },
            crate::admin::limit_family("sgw_client_limit", &self.limits()),
            one(
                "sgw_client_acl_rules",
                "Rules in force.",
                Kind::Gauge,
                self.client.acl().rules.len() as i64,
            ),
            one(
                "sgw_client_acl_reloads",
                "ACL reloads applied (SIGHUP, file change, API).",
                Kind::Counter,
                v(&s.acl_reloads),
            ),
            one(
                "sgw_client_acl_reload_failures",
                "ACL reloads refused because the file was invalid (old rules kept).",
                Kind::Counter,
                v(&s.acl_reload_failures),
            ),
        ]
    }

    fn acl_show(&self) -> Result<AclView, AclError> {
        let acl = self.client.acl();
        Ok(AclView {
            file: acl.file.clone(),
            default_policy: match acl.default_policy {
                Policy::Allow => "allow".into(),
                Policy::Deny => "deny".into(),
            },
            rules: acl
                .rules
                .iter()
                .map(|r| RuleView {
                    line: r.line,
                    action: if r.allow { "allow" } else { "deny" }.into(),
                    text: r.text.clone(),
                })
                .collect(),
        })
    }

    fn acl_add(&self, rule: &str, before: Option<usize>) -> Result<usize, AclError> {
        self.client.acl_add(rule, before).map_err(edit_error)
    }

    fn acl_remove(&self, rule: Option<&str>, line: Option<usize>) -> Result<usize, AclError> {
        self.client.acl_remove(rule, line).map_err(edit_error)
    }

    fn log(&self) -> Option<&LogControl> {
        self.log.as_ref()
    }

    fn acl_reload(&self) -> Result<usize, AclError> {
        self.client.reload_acl().map_err(|e| AclError {
            status: 422,
            message: "ACL file invalid; old rules kept".into(),
            errors: e.messages(),
        })
    }
}
