//! The client's policy and dialling for HTTP(S) destinations ([`crate::http`] serves the
//! HTTP): each request is judged by the ACL with its path; connections to the endpoint go
//! through the same way as TCP streams (proxy, TLS).

use std::net::IpAddr;
use std::sync::Arc;

use super::admit::{connect, Conn, Refusal};
use super::state::{ClientState, PushedDest};
use crate::acl::{LocalTime, Request};
use crate::http::{HttpSettings, Refused, Upstream};
use crate::proto::DestinationSpec;

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
        proto: if spec.protocol == crate::proto::Protocol::Https {
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
    pub state: Arc<ClientState>,
    pub dest: Arc<PushedDest>,
    pub caller: String,
}

impl Upstream for ClientUpstream {
    type Conn = crate::relay::Socket;
    type Policy = Arc<crate::acl::Acl>;

    fn policy(&self) -> Self::Policy {
        self.state.acl()
    }

    fn judges_paths(acl: &Self::Policy) -> bool {
        acl.has_path_rules()
    }

    fn admit(
        &self,
        acl: &Self::Policy,
        path: &str,
        reached: Option<IpAddr>,
    ) -> Result<(), crate::http::Denied> {
        let spec = &self.dest.spec;
        let mut req = Request::new(&spec.ip, spec.port).path(path);
        req.from = self.caller.parse().ok();
        if acl.has_time_windows() {
            req.at = Some(LocalTime::now());
        }
        // A name only the proxy resolved is judged as when it was dialled: by name, and by
        // the address deny rules above the rule that allows it.
        req.addr = reached.or(req.addr);
        let d = if req.addr.is_some() {
            acl.check(&req)
        } else {
            acl.check_unresolved(&req)
        };
        if d.allow {
            return Ok(());
        }
        let (_, public) =
            Refusal::denied(acl, &d).record(&self.state, Some(&self.dest), "HTTP request denied");
        Err(crate::http::Denied(public))
    }

    async fn connect(
        &self,
        acl: &Self::Policy,
        path: &str,
    ) -> Result<(Self::Conn, Option<IpAddr>), Refused> {
        match connect(acl, &self.dest, &self.caller, Some(path)).await {
            Ok((Conn::Socket(s), ip)) => Ok((s, ip)),
            Ok((Conn::Udp(_) | Conn::Http, _)) => Err(Refused::Failed(crate::dial::DialError {
                reason: crate::proto::Reason::Internal,
                message: "not a TCP endpoint".into(),
            })),
            Err(Refusal::Failed(e)) => Err(Refused::Failed(e)),
            Err(why) => {
                let (_, public) = why.record(&self.state, Some(&self.dest), "HTTP request denied");
                Err(Refused::Denied(public))
            }
        }
    }
}
