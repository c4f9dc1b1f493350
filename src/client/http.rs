//! The client's policy and dialling for HTTP(S) destinations ([`crate::http`] serves the
//! HTTP): each request is judged by the ACL with its path; connections to the endpoint go
//! through the same way as TCP streams (proxy, TLS).

use std::net::IpAddr;
use std::sync::Arc;

use super::{record_denial, vet_and_dial, Conn, DenyReason, Dest, Refusal, Shared};
use crate::acl::{self, LocalTime, Request};
use crate::http::{HttpSettings, Refused, Upstream};
use crate::proto::DestinationSpec;

/// Any socket to the endpoint (TCP, or TLS over TCP).
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A private destination's caller rules apply to the connection, before any request.
pub(super) fn admit_caller(dest: &Dest, caller: &str) -> Result<(), Refusal> {
    if acl::caller_admitted(dest.spec.private, &dest.ip_rules, caller.parse().ok()) {
        return Ok(());
    }
    Err(Refusal::Denied {
        reason: DenyReason::Caller,
        why: "ip_table_rules of this private destination".into(),
        line: None,
    })
}

/// What [`crate::http::serve`] needs to know about the destination.
pub(super) fn settings(spec: &DestinationSpec) -> HttpSettings {
    let tls = spec.tls.is_some();
    // The endpoint as a Host value: the port only when it is not the scheme's default.
    let host = if (tls && spec.port == 443) || (!tls && spec.port == 80) {
        bracket(&spec.ip)
    } else {
        format!("{}:{}", bracket(&spec.ip), spec.port)
    };
    HttpSettings {
        caller: None,
        proto: if spec.protocol == "HTTPS" {
            "https"
        } else {
            "http"
        },
        host_rewrite: spec.host_rewrite.then_some(host),
    }
}

fn bracket(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_owned()
    }
}

pub(super) struct ClientUpstream {
    pub shared: Arc<Shared>,
    pub dest: Arc<Dest>,
    pub caller: String,
}

impl Upstream for ClientUpstream {
    type Conn = Box<dyn Io>;

    fn judges_paths(&self) -> bool {
        self.shared
            .acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has_path_rules()
    }

    fn admit(&self, path: &str, reached: Option<IpAddr>) -> Result<(), String> {
        let spec = &self.dest.spec;
        let acl = self
            .shared
            .acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut req = Request::new(&spec.ip, spec.port).path(path);
        req.from = self.caller.parse().ok();
        if acl.has_time_windows() {
            req.at = Some(LocalTime::now());
        }
        // A name only the proxy resolved is judged by name, as when it was dialled.
        req.addr = reached.or(req.addr);
        let d = acl.check(&req);
        if d.allow {
            return Ok(());
        }
        let (reason, why) = match d.line.and_then(|l| acl.rule_at(l)) {
            Some(r) => (DenyReason::Rule, r.text.clone()),
            None => (DenyReason::Default, "default policy (deny)".into()),
        };
        Err(record_denial(
            &self.shared,
            &self.dest,
            reason,
            &why,
            d.line,
            "HTTP request denied",
        ))
    }

    async fn connect(&self, path: &str) -> Result<(Self::Conn, Option<IpAddr>), Refused> {
        match vet_and_dial(&self.shared, &self.dest, &self.caller, Some(path)).await {
            Ok((Conn::Tcp(t), ip)) => Ok((Box::new(t), ip)),
            Ok((Conn::Tls(t), ip)) => Ok((Box::new(*t), ip)),
            Ok((Conn::Udp(_) | Conn::Http, _)) => Err(Refused::Failed(crate::dial::DialError {
                reason: crate::proto::Reason::Internal,
                message: "not a TCP endpoint".into(),
            })),
            Err(Refusal::Denied { reason, why, line }) => Err(Refused::Denied(record_denial(
                &self.shared,
                &self.dest,
                reason,
                &why,
                line,
                "HTTP request denied",
            ))),
            Err(Refusal::Failed(e)) => Err(Refused::Failed(e)),
        }
    }
}
