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
}

impl AdminBackend {
    pub fn new(client: ClientHandle) -> Self {
        AdminBackend { client, log: None }
    }

    /// Lets `PUT /v1/log` change the process's log level.
    pub fn with_log(mut self, log: Option<LogControl>) -> Self {
        self.log = log;
        self
    }
}

fn edit_error(e: AclEditError) -> AclError {
    let status = match e {
        AclEditError::BadRule(_) | AclEditError::Invalid(_) => 400,
        AclEditError::NotFound(_) => 404,
        AclEditError::Io { .. } => 500,
    };
    AclError {
        status,
        message: e.to_string(),
    }
}

impl Backend for AdminBackend {
    fn ready(&self) -> bool {
        self.client.status().borrow().tunnels_up > 0
    }

    fn status(&self) -> serde_json::Value {
        self.client.snapshot()
    }

    fn metrics(&self) -> Vec<Family> {
        let s = self.client.stats();
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
                "sgw_client_streams_failed",
                "Streams whose dial failed or whose destination was unknown.",
                Kind::Counter,
                v(&s.streams_failed),
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
            one(
                "sgw_client_tunnels_up",
                "Tunnels up now.",
                Kind::Gauge,
                self.client.status().borrow().tunnels_up as i64,
            ),
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

    fn acl_show(&self) -> AclView {
        let acl = self.client.acl();
        AclView {
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
        }
    }

    fn acl_add(&self, rule: &str, before: Option<usize>) -> Result<usize, AclError> {
        self.client.acl_add(rule, before).map_err(edit_error)
    }

    fn acl_remove(&self, rule: Option<&str>, line: Option<usize>) -> Result<usize, AclError> {
        self.client.acl_remove(rule, line).map_err(edit_error)
    }

    fn set_log_level(&self, level: &str) -> Result<(), String> {
        match &self.log {
            Some(l) => {
                l.set_level(level)?;
                tracing::info!(level, "log level changed through the admin API");
                Ok(())
            }
            None => Err("this process cannot change its log level".into()),
        }
    }

    fn acl_reload(&self) -> Result<usize, Vec<String>> {
        self.client.reload_acl()
    }
}
