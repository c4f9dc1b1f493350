//! `sgw doctor --gateway gateway.toml` on the cloud side: the config; the tunnel
//! certificate (matches its key, not a CA, its names and expiry); every port the gateway
//! listens on (free, or held by the running gateway); the API's state store and the API;
//! and, from the running gateway's admin endpoint, whether each gateway id has clients.

use std::net::SocketAddr;
use std::path::Path;

use hyper::Method;

use super::{admin_addr, describe_cert, Report, EXPIRY_WARN_DAYS};
use crate::config::GatewayConfig;

pub(super) async fn check(path: &Path, admin: Option<SocketAddr>, r: &mut Report) {
    let file = path.display().to_string();
    let loaded = GatewayConfig::load(path)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            crate::gateway::check(&c)
                .map(|()| c)
                .map_err(|e| e.0.join("; "))
        });
    let ids = |c: &GatewayConfig| format!("valid, {} gateway id(s) in the file", c.gateways.len());
    let Some(cfg) = r.config(&file, loaded, ids) else {
        return;
    };
    check_certificate(&cfg, r);
    let running = running_admin(&cfg, admin).await;
    check_ports(&cfg, running.is_some(), r).await;
    check_store(&cfg, r).await;
    check_api(&cfg, r).await;
    check_clients(running, r).await;
}

/// tls_cert: the leaf is not a CA, its names and expiry.
fn check_certificate(cfg: &GatewayConfig, r: &mut Report) {
    // That tls_key is tls_cert's key is checked with the config (it would not load).
    let subject = "tls_cert";
    let Some(facts) = cfg
        .tls
        .certs
        .first()
        .and_then(|c| crate::tls::CertFacts::of(c))
    else {
        r.fail(
            "certificate",
            subject,
            "cert_unreadable",
            "tls_cert's first certificate cannot be read: it must be a PEM X.509 certificate",
        );
        return;
    };
    if facts.is_ca {
        r.fail(
            "certificate",
            subject,
            "tls_ca_as_leaf",
            "tls_cert is a CA certificate: clients refuse it; tls_cert must be the gateway's own certificate (gateway.pem), signed by that CA",
        );
        return;
    }
    let (text, days) = describe_cert(&facts);
    if days < 0 {
        r.fail(
            "certificate",
            subject,
            "tls_expired",
            format!("{text}: expired; renew it (clients refuse it)"),
        );
    } else if days < EXPIRY_WARN_DAYS {
        r.warn(
            "certificate",
            subject,
            Some("tls_expiring"),
            format!("{text}: renew it before it expires"),
        );
    } else {
        r.ok(
            "certificate",
            subject,
            format!("{text}; tls_key is its key"),
        );
    }
}

/// The running gateway's admin endpoint, if it answers.
async fn running_admin(
    cfg: &GatewayConfig,
    flag: Option<SocketAddr>,
) -> Option<(SocketAddr, Option<String>)> {
    let a = cfg.admin.as_ref()?;
    let addr = admin_addr(a.listen, flag)?;
    let token = a.token.as_ref().map(|t| t.expose().to_owned());
    match crate::admin::client::call(addr, Method::GET, "/healthz", None, None).await {
        Ok((200, _)) => Some((addr, token)),
        _ => None,
    }
}

/// Each address the gateway listens on: free to bind, or held by the running gateway.
async fn check_ports(cfg: &GatewayConfig, running: bool, r: &mut Report) {
    let mut ports: Vec<(String, SocketAddr)> = vec![("listen".into(), cfg.listen)];
    if let Some(a) = &cfg.api {
        ports.push(("api.listen".into(), a.listen));
    }
    if let Some(a) = &cfg.admin {
        ports.push(("admin_listen".into(), a.listen));
    }
    for t in &cfg.gateways {
        for d in &t.destinations {
            if d.cloud_port != 0 && !d.reverse {
                let ip = d.cloud_host.parse().unwrap_or(cfg.listen.ip());
                ports.push((
                    format!("{}/{} cloud_port", t.id, d.id),
                    SocketAddr::new(ip, d.cloud_port),
                ));
            }
        }
    }
    for (what, addr) in ports {
        if addr.port() == 0 {
            r.ok(
                "port",
                &what,
                format!("{addr}: a free port is chosen at start"),
            );
            continue;
        }
        match tokio::net::TcpListener::bind(addr).await {
            Ok(_) => r.ok("port", &what, format!("{addr} can be bound")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && running => r.ok(
                "port",
                &what,
                format!("{addr} is in use, by the running gateway (its admin endpoint answers)"),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.warn(
                "port",
                &what,
                Some("port_in_use"),
                format!("{addr} is in use: if this gateway runs without an admin endpoint that is it; otherwise another program holds it (`ss -ltnp`), stop it or change {what}"),
            ),
            Err(e) => r.fail(
                "port",
                &what,
                "port_unbindable",
                format!(
                    "cannot bind {addr} ({}): a port below 1024 needs root or CAP_NET_BIND_SERVICE; an address must be one of this host's",
                    crate::telemetry::io_words(e.kind())
                ),
            ),
        }
    }
}

/// The API's store: the state file reads, or PostgreSQL answers and holds the schema.
async fn check_store(cfg: &GatewayConfig, r: &mut Report) {
    let Some(api) = &cfg.api else {
        r.skip(
            "store",
            "api",
            "no [api]: gateway ids come from gateway.toml only",
        );
        return;
    };
    let store = match crate::store::Store::open(api) {
        Ok(s) => s,
        Err(e) => {
            r.fail("store", "api", "store_invalid", format!("{e}"));
            return;
        }
    };
    let what = store.describe();
    match tokio::time::timeout(std::time::Duration::from_secs(10), store.load()).await {
        Ok(Ok((state, skipped))) => {
            r.ok("store", &what, format!("reachable; {} gateway id(s) kept there", state.gateways.len()));
            if !skipped.is_empty() {
                r.warn("store", &what, Some("store_bad_rows"), format!("{} record(s) unreadable and left out: {}", skipped.len(), skipped.join(", ")));
            }
        }
        Ok(Err(e)) => r.fail(
            "store",
            &what,
            "store_unreachable",
            format!("{e}: the API cannot keep changes; check the database (or the state file's directory) and the credentials"),
        ),
        Err(_) => r.fail("store", &what, "store_unreachable", "no answer within 10 s: check the database host, port and firewall"),
    }
}

/// The management API answers over HTTPS. The certificate is not checked and no token is
/// sent: this asks only whether the API is up (it answers 401 without a token).
async fn check_api(cfg: &GatewayConfig, r: &mut Report) {
    let Some(api) = &cfg.api else {
        return;
    };
    let Some(addr) = admin_addr(api.listen, None) else {
        r.skip(
            "api",
            api.listen.to_string(),
            "api.listen has port 0: no fixed address to check",
        );
        return;
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), https_status(addr)).await {
        Ok(Ok(st)) => r.ok("api", addr.to_string(), format!("the management API answers over HTTPS (HTTP {st} to a call without a token)")),
        Ok(Err(e)) => r.fail("api", addr.to_string(), "api_not_running", format!("no HTTPS answer at {addr} ({e}): the gateway is not running (`systemctl start sgw-gateway`), or api.listen differs")),
        Err(_) => r.fail("api", addr.to_string(), "api_not_running", format!("no answer at {addr} within 5 s: the gateway is stuck or something else holds api.listen")),
    }
}

/// The status code of `GET /v1/sgconfig` over TLS at `addr`.
async fn https_status(addr: SocketAddr) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| crate::telemetry::io_words(e.kind()))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = crate::tls::unverified_connector()
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {}", crate::telemetry::io_words(e.kind())))?;
    tls.write_all(
        format!("GET /v1/sgconfig HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| crate::telemetry::io_words(e.kind()))?;
    let mut head = [0u8; 64];
    let n = tls
        .read(&mut head)
        .await
        .map_err(|e| crate::telemetry::io_words(e.kind()))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())
}

/// Each gateway id of the running gateway has a client connected.
async fn check_clients(running: Option<(SocketAddr, Option<String>)>, r: &mut Report) {
    let Some((addr, token)) = running else {
        r.fail(
            "clients",
            "admin_listen",
            "gateway_not_running",
            "the running gateway's admin endpoint does not answer (no admin_listen, or the gateway is not running): start it, set admin_listen, or give --admin ADDR",
        );
        return;
    };
    let answer =
        crate::admin::client::call(addr, Method::GET, "/v1/status", None, token.as_deref()).await;
    let v: serde_json::Value = match answer {
        Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        Ok((st, _)) => {
            let fix = if token.is_none() {
                "its status needs a token and gateway.toml sets none: set admin_token_file, and restart the gateway"
            } else {
                "gateway.toml's admin token is not the running gateway's: restart it after a token change"
            };
            r.fail(
                "clients",
                addr.to_string(),
                "admin_refused",
                format!("the admin endpoint answered HTTP {st}: {fix}"),
            );
            return;
        }
        Err(e) => {
            r.fail(
                "clients",
                addr.to_string(),
                "gateway_not_running",
                e.to_string(),
            );
            return;
        }
    };
    let ids = v["gateways"].as_array().cloned().unwrap_or_default();
    if ids.is_empty() {
        r.warn(
            "clients",
            addr.to_string(),
            Some("no_gateway_ids"),
            "the gateway serves no gateway id: add one (gateway.toml [[gateways]] or the API)",
        );
    }
    for g in ids {
        let id = g["id"].as_str().unwrap_or("").to_owned();
        let clients = g["clients"].as_u64().unwrap_or(0);
        if g["enabled"].as_bool() == Some(false) {
            r.skip("clients", &id, "disabled");
        } else if clients == 0 {
            r.fail(
                "clients",
                &id,
                "no_clients",
                format!("no client is connected for gateway id {id}: on the on-prem host, run `sgw doctor` there; to enroll a host: `sgw enroll {id}` here"),
            );
        } else {
            r.ok(
                "clients",
                &id,
                format!(
                    "{clients} client(s), {} tunnel(s) up",
                    g["tunnels"].as_u64().unwrap_or(0)
                ),
            );
        }
    }
}
