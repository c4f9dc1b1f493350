//! `sgw doctor` on the on-prem host: client.toml, the ACL, then for each gateway replica the
//! name, TCP (directly or through the outbound proxy), TLS, the upgrade with the token, the
//! protocol version and the destinations pushed; then each destination as a stream would go
//! (the ACL, a connection within its timeout, TLS); last, the running client's admin
//! endpoint. The tunnel made here is a probe: the gateway answers and closes it, and never
//! routes a caller to it.

use std::net::SocketAddr;
use std::path::Path;

use hyper::Method;

use super::{admin_addr, describe_cert, Report, EXPIRY_WARN_DAYS};
use crate::acl::Acl;
use crate::client::{probe_destination, Probe};
use crate::config::{ClientConfig, GatewayLink, Replica, Trust};
use crate::proto::{ConfigPush, FEATURE_PROBE, SUBPROTOCOL};
use crate::tunnel::{self, why, ConnectError};

pub(super) async fn check(path: &Path, admin: Option<SocketAddr>, r: &mut Report) {
    let file = path.display().to_string();
    let loaded = ClientConfig::load(path).map_err(|e| e.to_string());
    let Some(cfg) = r.config(&file, loaded, |c| {
        format!("valid, {} gateway(s)", c.gateways.len())
    }) else {
        return;
    };
    for w in cfg.warnings(path) {
        r.warn("config", &file, None, w);
    }
    let acl = check_acl(&cfg, r);
    for link in &cfg.gateways {
        let mut pushed = None;
        for replica in &link.replicas {
            let got = check_replica(link, replica, r).await;
            pushed = pushed.or(got);
        }
        match (&acl, pushed) {
            (Some(acl), Some(push)) => {
                check_destinations(&cfg, acl, &link.gateway_id, push, r).await
            }
            (None, _) => r.skip(
                "destination",
                &link.gateway_id,
                "not checked: the ACL did not load",
            ),
            (_, None) => r.skip(
                "destination",
                &link.gateway_id,
                "not checked: no replica of the gateway sent its destinations",
            ),
        }
    }
    check_admin(&cfg, admin, r).await;
}

fn check_acl(cfg: &ClientConfig, r: &mut Report) -> Option<Acl> {
    let file = cfg.acl_file.display().to_string();
    match Acl::load(&cfg.acl_file, cfg.default_policy) {
        Ok(acl) => {
            let findings = crate::acl::lint(&acl);
            r.ok(
                "acl",
                &file,
                format!(
                    "{} rule(s), default policy {}",
                    acl.rules.len(),
                    match cfg.default_policy {
                        crate::config::Policy::Allow => "allow",
                        crate::config::Policy::Deny => "deny",
                    }
                ),
            );
            for f in findings {
                r.warn(
                    "acl",
                    format!("{file}:{}", f.line),
                    Some("acl_lint"),
                    f.message,
                );
            }
            Some(acl)
        }
        Err(e) => {
            r.fail(
                "acl",
                &file,
                "acl_invalid",
                format!(
                    "{}; the client will not start (or keeps its old rules on reload) until these lines are fixed",
                    e.messages().join("; ")
                ),
            );
            None
        }
    }
}

/// A failed connect step as a report line, with its code and sentence.
fn failed(
    r: &mut Report,
    step: &'static str,
    subject: &str,
    e: &ConnectError,
    link: &GatewayLink,
    replica: &Replica,
) {
    let w = why::explain(e, link, replica);
    r.fail(step, subject, w.code, w.sentence);
}

/// Name, TCP, TLS, upgrade, version and destinations of one replica; its CONFIG when all
/// of them passed.
async fn check_replica(
    link: &GatewayLink,
    replica: &Replica,
    r: &mut Report,
) -> Option<ConfigPush> {
    let subject = replica.url.to_string();
    let url = &replica.url;
    match &replica.proxy {
        Some(p) => r.skip(
            "dns",
            &subject,
            format!(
                "the outbound proxy {}:{} resolves {}",
                p.host, p.port, url.host
            ),
        ),
        None => match tunnel::resolve(&url.host, url.port).await {
            Ok(addrs) => {
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                r.ok(
                    "dns",
                    &subject,
                    format!("{} resolves to {}", url.host, list.join(", ")),
                );
            }
            Err(e) => {
                failed(r, "dns", &subject, &e, link, replica);
                return None;
            }
        },
    }
    let tcp = match tunnel::reach(replica, None).await {
        Ok(t) => {
            let to = match &replica.proxy {
                Some(p) => format!("through the outbound proxy {}:{}", p.host, p.port),
                None => t.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            };
            r.ok("tcp", &subject, format!("connected {to}"));
            t
        }
        Err(e) => {
            failed(r, "tcp", &subject, &e, link, replica);
            return None;
        }
    };
    let tls = match tunnel::client_tls(&link.trust) {
        Ok(t) => t,
        Err(e) => {
            r.fail("tls", &subject, "tls_failed", format!("{e}: fix ca_file"));
            return None;
        }
    };
    match tunnel::tls_handshake(replica, &tls, tcp).await {
        Ok(s) => {
            let trusted = match &link.trust {
                Trust::System => "this host's trusted CAs",
                Trust::Certs(_) => "ca_file",
            };
            let leaf = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::CertFacts::of(c));
            match leaf {
                Some(f) => {
                    let (text, days) = describe_cert(&f);
                    let msg = format!(
                        "{text}; signed by a CA in {trusted}, valid for {}",
                        url.host
                    );
                    if days < EXPIRY_WARN_DAYS {
                        r.warn(
                            "tls",
                            &subject,
                            Some("tls_expiring"),
                            format!("{msg}: renew tls_cert on the gateway before it expires"),
                        );
                    } else {
                        r.ok("tls", &subject, msg);
                    }
                }
                None => r.ok(
                    "tls",
                    &subject,
                    format!("handshake done; signed by a CA in {trusted}"),
                ),
            }
        }
        Err(e) => {
            failed(r, "tls", &subject, &e, link, replica);
            return None;
        }
    }
    let mut hello = crate::client::hello();
    hello.features.push(FEATURE_PROBE.to_owned());
    let (mut ws, welcome) = match tunnel::connect(link, replica, None, &tls, &hello).await {
        Ok(x) => x,
        Err(e @ ConnectError::Version(_)) => {
            r.ok("upgrade", &subject, "the gateway answered the upgrade");
            failed(r, "version", &subject, &e, link, replica);
            return None;
        }
        Err(e) => {
            failed(r, "upgrade", &subject, &e, link, replica);
            return None;
        }
    };
    r.ok(
        "upgrade",
        &subject,
        format!(
            "HTTP 101: the gateway accepted gateway id {} and its token",
            link.gateway_id
        ),
    );
    r.ok(
        "version",
        &subject,
        format!(
            "protocol {SUBPROTOCOL} agreed (gateway speaks {}.{}, this client {})",
            welcome.proto[0],
            welcome.proto[1],
            env!("CARGO_PKG_VERSION")
        ),
    );
    if !welcome.features.iter().any(|f| f == FEATURE_PROBE) {
        r.warn(
            "version",
            &subject,
            Some("probe_unknown"),
            "this gateway predates `sgw doctor` probes: it took this check for a client tunnel for a moment; upgrade it",
        );
    }
    let push = tunnel::read_config(&mut ws).await;
    let _ = tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, ws.close(None)).await;
    match push {
        Ok(p) if p.destinations.is_empty() => {
            r.warn(
                "destinations",
                &subject,
                Some("no_destinations"),
                "the gateway has no destinations for this gateway id: add them on the gateway (its API or gateway.toml), then this client serves them at once",
            );
            Some(p)
        }
        Ok(p) => {
            let ids: Vec<String> = p
                .destinations
                .iter()
                .take(20)
                .map(|d| dest_name(&d.id, d))
                .collect();
            let more = p.destinations.len().saturating_sub(ids.len());
            r.ok(
                "destinations",
                &subject,
                format!(
                    "{} pushed: {}{}",
                    p.destinations.len(),
                    ids.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            );
            Some(p)
        }
        Err(e) => {
            failed(r, "destinations", &subject, &e, link, replica);
            None
        }
    }
}

/// Destinations probed at most per gateway: each may take its whole timeout.
const MAX_PROBED: usize = 64;

/// `id (PROTOCOL host:port)`, the gateway's words cleaned for a terminal.
fn dest_name(id: &str, d: &crate::proto::DestinationSpec) -> String {
    let clean = |s: &str| crate::telemetry::clean(s, 128);
    format!(
        "{} ({} {}:{})",
        clean(id),
        d.protocol.as_str(),
        clean(&d.ip),
        d.port
    )
}

/// Each destination the gateway pushed, the way a stream to it would go.
async fn check_destinations(
    cfg: &ClientConfig,
    acl: &Acl,
    gateway_id: &str,
    push: ConfigPush,
    r: &mut Report,
) {
    let acl_file = cfg.acl_file.display().to_string();
    let total = push.destinations.len();
    for d in push.destinations.into_iter().take(MAX_PROBED) {
        let subject = format!("{gateway_id}/{}", dest_name(&d.id, &d));
        let local = cfg.destinations.get(&d.id);
        match probe_destination(acl, d, local, &acl_file).await {
            Probe::Reached(how) => {
                r.ok("destination", subject, format!("allowed by the ACL; {how}"))
            }
            Probe::Note(n) => r.warn("destination", subject, None, n),
            Probe::Failed { code, sentence } => r.fail("destination", subject, code, sentence),
        }
    }
    if total > MAX_PROBED {
        r.skip(
            "destination",
            gateway_id,
            format!(
                "{} more destination(s) not probed (at most {MAX_PROBED})",
                total - MAX_PROBED
            ),
        );
    }
}

/// The running client's admin endpoint: `/readyz`, whose body names failing tunnel slots.
async fn check_admin(cfg: &ClientConfig, flag: Option<SocketAddr>, r: &mut Report) {
    let Some(addr) = admin_addr(cfg.admin_listen, flag) else {
        r.skip(
            "admin",
            cfg.admin_listen.to_string(),
            "admin_listen has port 0 (a new port at each start): give --admin ADDR to check the running client",
        );
        return;
    };
    // `/readyz` is open: no token is sent, so a program squatting on the port while the
    // client is down learns nothing.
    match crate::admin::client::call(addr, Method::GET, "/readyz", None, None).await {
        Ok((200, _)) => r.ok("admin", addr.to_string(), "the running client answers and has a tunnel up"),
        Ok((503, body)) => r.fail(
            "admin",
            addr.to_string(),
            "client_not_ready",
            format!(
                "the running client has no tunnel up: {}",
                crate::telemetry::clean(&body.trim().replace('\n', "; "), 2048)
            ),
        ),
        Ok((st, _)) => r.fail(
            "admin",
            addr.to_string(),
            "admin_unexpected",
            format!("answered HTTP {st}: is another program on admin_listen?"),
        ),
        Err(_) => r.fail(
            "admin",
            addr.to_string(),
            "client_not_running",
            format!(
                "nothing answers at {addr}: the client is not running (`systemctl start sgw-client`, or `sgw client --config FILE`), or admin_listen differs from the running one's"
            ),
        ),
    }
}
