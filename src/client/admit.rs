//! Admission and dial for one stream the gateway opened: is the destination one this
//! client serves, may this caller and the ACL have it, and the connection to the endpoint.
//! Every refusal is a [`Refusal`], counted, logged and answered in one place
//! ([`Refusal::record`], [`refuse`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::state::{ClientState, GatewayPeer, PushedDest};
use crate::acl::{self, Decision, LocalTime, Request};
use crate::dial::{self, DialError, Vetted};
use crate::mux::Incoming;
use crate::proto::{OpenMeta, Protocol, Reason, FEATURE_DEFLATE};
use crate::relay::Socket;

/// Why a stream (or one HTTP request) is not served.
pub(super) enum Refusal {
    /// The gateway named a destination it never pushed.
    UnknownDest(String),
    /// A reverse destination's endpoint is on the cloud side: the gateway dials it.
    ReverseDest,
    /// Something this client does not speak: a compression, a destination protocol.
    Unsupported(String),
    /// `limits.max_udp_flows` flows are open.
    UdpFlows(usize),
    /// `why` is for the local log (the rule's text, or which policy); `line` is the deciding
    /// rule's line, all the gateway is told.
    Denied {
        reason: DenyReason,
        why: String,
        line: Option<usize>,
        /// The destination's SOCKS proxy (`host:port`) when it is what the ACL denied.
        proxy: Option<String>,
    },
    Failed(DialError),
}

/// Discriminants index [`super::stats::DestStats::denied`].
#[derive(Clone, Copy)]
pub(super) enum DenyReason {
    Rule = 0,
    Default = 1,
    Caller = 2,
}

impl DenyReason {
    fn as_str(self) -> &'static str {
        match self {
            DenyReason::Rule => "acl_rule",
            DenyReason::Default => "acl_default",
            DenyReason::Caller => "ip_table_rules",
        }
    }
}

impl Refusal {
    /// The refusal as the operator reads it: a stable code and a sentence with the cause and
    /// the fix, for the log line and `sgw doctor`. `local` (the ACL file's path) is given
    /// only where the sentence stays on this host: a log line may be forwarded to the gateway,
    /// which never learns a rule's text or a path (docs/PROTOCOL.md, client logs).
    pub(super) fn explain(
        &self,
        dest: Option<&PushedDest>,
        local: Option<&str>,
    ) -> (&'static str, String) {
        // The gateway's words: cleaned before they reach a log line or a terminal.
        let clean = |s: &str| crate::telemetry::clean(s, 128);
        let (id, addr) = dest.map_or((String::new(), String::new()), |d| {
            let host = if d.spec.ip.contains(':') {
                format!("[{}]", clean(&d.spec.ip))
            } else {
                clean(&d.spec.ip)
            };
            (clean(&d.spec.id), format!("{host}:{}", d.spec.port))
        });
        // What the ACL denied: the destination, or its SOCKS proxy.
        let (denied, allow) = match self {
            Refusal::Denied { proxy: Some(p), .. } => (
                format!("the SOCKS proxy {p} of destination {id}"),
                p.clone(),
            ),
            _ => (format!("destination {id} at {addr}"), addr.clone()),
        };
        match self {
            Refusal::UnknownDest(id) => (
                "unknown_dest",
                format!(
                    "the gateway asked for destination `{}`, which it never sent this client: the two disagree for a moment after a change; if it persists, restart the client",
                    crate::telemetry::clean(id, 128)
                ),
            ),
            Refusal::ReverseDest => (
                "unknown_dest",
                "the gateway opened a stream for a reverse destination, which only the gateway dials".into(),
            ),
            Refusal::Unsupported(msg) => ("protocol", msg.clone()),
            Refusal::UdpFlows(limit) => (
                "limit",
                format!("{limit} UDP flows are open (limits.max_udp_flows): raise it, or wait for flows to end"),
            ),
            Refusal::Denied {
                reason: DenyReason::Rule,
                why,
                line,
                ..
            } => {
                let l = line.unwrap_or(0);
                let rule = match local {
                    Some(file) => format!("rule `{why}` at {file}:{l}"),
                    None => format!("the rule at line {l}"),
                };
                (
                    "acl_denied",
                    format!(
                        "the ACL denies {denied}: {rule}; change that rule, or allow it above that line (`sgw acl add \"acl allow {allow}\" --before {l}`)"
                    ),
                )
            }
            Refusal::Denied {
                reason: DenyReason::Default,
                ..
            } => (
                "acl_denied",
                format!(
                    "the ACL denies {denied}: no rule{} allows it and the default policy is deny; allow it with `sgw acl add \"acl allow {allow}\"`",
                    local.map(|f| format!(" in {f}")).unwrap_or_default()
                ),
            ),
            Refusal::Denied {
                reason: DenyReason::Caller,
                ..
            } => (
                "acl_denied",
                format!(
                    "the caller is not in the ip_table_rules of private destination {id}: add its address to the destination's rules on the gateway, or make the destination public"
                ),
            ),
            // The error's own text stays on this host: in the doctor's line and in the log
            // line's `error` field (not forwarded). OPEN_ERR carries the sentence without it.
            Refusal::Failed(e) => (
                e.reason.as_str(),
                match local {
                    Some(_) => format!("{}: {}", e.message, dial_advice(e.reason, &id)),
                    None => format!("destination {id} at {addr}: {}", dial_advice(e.reason, &id)),
                },
            ),
        }
    }

    /// The ACL's decision as a refusal: the deciding rule, or the default policy.
    pub(super) fn denied(acl: &acl::Acl, d: &Decision) -> Refusal {
        match d.line.and_then(|l| acl.rule_at(l)) {
            Some(r) => Refusal::Denied {
                reason: DenyReason::Rule,
                why: r.text.clone(),
                line: d.line,
                proxy: None,
            },
            None => Refusal::Denied {
                reason: DenyReason::Default,
                why: "default policy (deny)".into(),
                line: None,
                proxy: None,
            },
        }
    }

    fn caller() -> Refusal {
        Refusal::Denied {
            reason: DenyReason::Caller,
            why: "ip_table_rules of this private destination".into(),
            line: None,
            proxy: None,
        }
    }

    /// Counts and logs the refusal (`what` names the refused thing in the log line);
    /// returns the reason code and the message the gateway and its caller may see: a
    /// deciding rule's line, never its text.
    pub(super) fn record(
        self,
        state: &ClientState,
        dest: Option<&PushedDest>,
        what: &'static str,
    ) -> (Reason, String) {
        // Only the lines that carry it pay for the sentence (a caller can cause refusals).
        let sentence = if matches!(self, Refusal::Denied { .. } | Refusal::Failed(_)) {
            self.explain(dest, None).1
        } else {
            String::new()
        };
        let stats = &state.stats;
        match self {
            Refusal::UnknownDest(id) => {
                stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                info!(
                    reason = "unknown_dest",
                    "stream refused: no such destination"
                );
                (
                    Reason::UnknownDest,
                    format!("client has no destination `{id}`"),
                )
            }
            Refusal::ReverseDest => {
                stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    reason = "unknown_dest",
                    "stream refused: gateway opened a stream for a reverse destination"
                );
                (
                    Reason::UnknownDest,
                    "a reverse destination is dialled by the gateway".into(),
                )
            }
            Refusal::Unsupported(msg) => {
                stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                warn!(reason = "protocol", error = %msg, "stream refused");
                (Reason::Protocol, msg)
            }
            Refusal::UdpFlows(limit) => {
                stats.udp_flows_rejected.fetch_add(1, Ordering::Relaxed);
                warn!(
                    reason = "limit",
                    limit, "UDP flow refused: max_udp_flows reached"
                );
                (
                    Reason::Limit,
                    format!("client has {limit} UDP flows open (max_udp_flows)"),
                )
            }
            Refusal::Denied {
                reason, why, line, ..
            } => {
                let by_reason = match reason {
                    DenyReason::Rule => &stats.denied_by_rule,
                    DenyReason::Default => &stats.denied_by_default,
                    DenyReason::Caller => &stats.denied_by_caller,
                };
                by_reason.fetch_add(1, Ordering::Relaxed);
                stats.streams_denied.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = dest {
                    d.stats.denied[reason as usize].fetch_add(1, Ordering::Relaxed);
                }
                match line {
                    Some(l) => {
                        warn!(reason = %reason.as_str(), acl.file = %state.acl_path(), acl.line = l, acl.rule = ?why, "{what}: {sentence}")
                    }
                    None => warn!(reason = %reason.as_str(), acl.rule = ?why, "{what}: {sentence}"),
                }
                let public = match (reason, line) {
                    (DenyReason::Caller, _) => {
                        "denied by the client: caller not in ip_table_rules".to_string()
                    }
                    (_, Some(l)) => format!("denied by the client's ACL, rule at line {l}"),
                    (_, None) => "denied by the client's ACL default policy".to_string(),
                };
                (Reason::AclDenied, public)
            }
            Refusal::Failed(e) => {
                stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = dest {
                    *d.stats
                        .failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(e.reason.as_str())
                        .or_default() += 1;
                }
                warn!(reason = %e.reason, error = %e.message, "dial failed: {sentence}");
                // The error's text (resolved addresses, proxies, certificates) stays here;
                // the gateway gets the reason and the destination it named itself.
                (e.reason, sentence)
            }
        }
    }
}

/// What to do about a failed dial, by its reason.
fn dial_advice(reason: Reason, id: &str) -> String {
    match reason {
        Reason::Refused => format!("nothing accepts connections there: start the service, or correct destination {id}'s address and port on the gateway"),
        Reason::Timeout => "no answer within the destination's timeout: check that the host is up and that no firewall drops the connection".into(),
        Reason::Dns => "the name does not resolve on this host: check the destination's host name and this host's DNS".into(),
        Reason::Unreachable => "this host has no route there: check its network and routes".into(),
        Reason::Reset => "the endpoint reset the connection: check the service and its logs".into(),
        Reason::Tls => "check the endpoint's certificate against the destination's TLS settings (CA, server name, client certificate)".into(),
        Reason::Proxy => "check the destination's SOCKS proxy (address, credentials) and that its rules allow this endpoint".into(),
        _ => "check the endpoint and the destination's settings".into(),
    }
}

/// Refuses the stream: counted, logged, and the gateway told why.
pub(super) async fn refuse(
    state: &ClientState,
    dest: Option<&PushedDest>,
    inc: Incoming,
    why: Refusal,
) {
    let (reason, message) = why.record(state, dest, "stream denied");
    inc.reject(reason, &message).await;
}

/// The pushed destination an OPEN names, if this client serves it, and whether the stream
/// is compressed.
pub(super) fn admit(
    peer: &GatewayPeer,
    meta: &OpenMeta,
) -> Result<(Arc<PushedDest>, bool), Refusal> {
    let dest = peer
        .dest(&meta.dest)
        .ok_or_else(|| Refusal::UnknownDest(meta.dest.clone()))?;
    if dest.spec.reverse {
        return Err(Refusal::ReverseDest);
    }
    if dest.spec.protocol == Protocol::Unknown {
        return Err(Refusal::Unsupported(
            "this client does not know the destination's protocol; upgrade it".into(),
        ));
    }
    let compress = match meta.compress.as_deref() {
        None => false,
        Some(FEATURE_DEFLATE) => true,
        Some(other) => {
            let other = crate::telemetry::clean(other, 64);
            return Err(Refusal::Unsupported(format!(
                "unknown compression `{other}`"
            )));
        }
    };
    Ok((dest, compress))
}

/// A private destination's caller rules, which apply before anything else.
pub(super) fn admit_caller(dest: &PushedDest, caller: Option<SocketAddr>) -> Result<(), Refusal> {
    if acl::caller_admitted(dest.spec.private, &dest.ip_rules, caller) {
        Ok(())
    } else {
        Err(Refusal::caller())
    }
}

/// The connection to the endpoint.
pub(super) enum Conn {
    /// An HTTP(S) destination: connections are made per request (client/http.rs).
    Http,
    Udp(tokio::net::UdpSocket),
    Socket(Socket),
}

/// The client's veto, then the dial: caller rules; one resolution; the ACL on every
/// candidate address (with `path` for an HTTP request) and on any proxy; a connection only
/// to an address the ACL allowed, direct or through SOCKS; then TLS when asked. Also
/// returns the endpoint address reached, when known (not for names only a proxy resolves).
pub(super) async fn connect(
    acl: &acl::Acl,
    dest: &PushedDest,
    caller: &str,
    path: Option<&str>,
) -> Result<(Conn, Option<IpAddr>), Refusal> {
    let spec = &dest.spec;
    let caller: Option<SocketAddr> = caller.parse().ok();
    admit_caller(dest, caller)?;
    // One deadline for the whole way in: lookup, connect, SOCKS, TLS.
    let timeout = Duration::from_secs(u64::from(spec.timeout.clamp(1, 180)));
    let deadline = tokio::time::Instant::now() + timeout;
    // Reading the zoned clock costs more than the decision itself: only when a rule asks.
    let at = acl.has_time_windows().then(LocalTime::now);
    let ask = |host, port, path| Request {
        at,
        from: caller,
        path,
        ..Request::new(host, port)
    };
    // A destination the client does not parse (TCP, TLS) carries whatever path the caller
    // sends: deny rules with a path hold against it.
    let target = Request {
        opaque: path.is_none(),
        ..ask(&spec.ip, spec.port, path)
    };
    let target = vet(acl, target, deadline).await?;
    if spec.protocol == Protocol::Udp {
        // Config forbids proxies and TLS for UDP destinations.
        return match target {
            Vetted::Addrs(a) => dial::udp(&a).await.map(|s| (Conn::Udp(s), None)),
            Vetted::Name(e) => Err(e),
        }
        .map_err(Refusal::Failed);
    }
    let (tcp, reached) = match (&spec.proxy, target) {
        (None, Vetted::Addrs(a)) => dial::tcp_any(&a, deadline)
            .await
            .map(|(t, at)| (t, Some(at.ip()))),
        (None, Vetted::Name(e)) => Err(e),
        (Some(p), target) => {
            // The proxy is an on-prem dial like any other: the ACL must allow it too.
            let proxy_denied = |r| match r {
                Refusal::Denied {
                    reason, why, line, ..
                } => Refusal::Denied {
                    reason,
                    why,
                    line,
                    proxy: Some(format!(
                        "{}:{}",
                        crate::telemetry::clean(&p.host, 128),
                        p.port
                    )),
                },
                other => other,
            };
            let via = match vet(acl, ask(&p.host, p.port, None), deadline)
                .await
                .map_err(proxy_denied)?
            {
                Vetted::Addrs(a) => a,
                Vetted::Name(e) => return Err(Refusal::Failed(as_proxy(e))),
            };
            let (t, ip) = match target {
                Vetted::Addrs(a) => (dial::Target::Addr(a[0]), Some(a[0].ip())),
                Vetted::Name(_) => (dial::Target::Name(spec.ip.clone(), spec.port), None),
            };
            match dial::tcp_any(&via, deadline).await.map_err(as_proxy) {
                Ok((tcp, _)) => dial::socks_connect(tcp, p, &t, deadline)
                    .await
                    .map(|s| (s, ip)),
                Err(e) => Err(e),
            }
        }
    }
    .map_err(Refusal::Failed)?;
    let tls = match &dest.tls {
        None => None,
        Some(Ok(ep)) => {
            if ep.unverified {
                warn!(
                    reason = "reject_unauth_false",
                    "endpoint certificate NOT verified (reject_unauth = false): anyone on the path can impersonate it"
                );
            }
            Some(ep)
        }
        Some(Err(e)) => {
            return Err(Refusal::Failed(DialError {
                reason: Reason::Tls,
                message: e.to_string(),
            }))
        }
    };
    let socket = dial::secure(tcp, tls, deadline)
        .await
        .map_err(Refusal::Failed)?;
    Ok((Conn::Socket(socket), reached))
}

/// [`dial::vet`], a denial as a [`Refusal`].
async fn vet(
    acl: &acl::Acl,
    req: Request<'_>,
    deadline: tokio::time::Instant,
) -> Result<Vetted, Refusal> {
    dial::vet(acl, &req, deadline, None)
        .await
        .map_err(|d| Refusal::denied(acl, &d))
}

/// A failure reaching the proxy itself is the proxy's failure.
fn as_proxy(e: DialError) -> DialError {
    DialError {
        reason: Reason::Proxy,
        message: format!("cannot reach the SOCKS proxy: {}", e.message),
    }
}
