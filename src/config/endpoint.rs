//! Destination connector fields (docs/API.md): TLS to the endpoint, TLS toward callers, the SOCKS
//! proxy in front of the endpoint, compression. Shared by `gateway.toml` destinations and the
//! client's local `[[destinations]]` overrides.
//!
//! Certificates are kept as PEM text (validated here) because that is what the gateway sends
//! the client in a CONFIG push.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::walk::Table;
use super::{pem_source, Secret, TlsIdentity};

/// Most CA certificates a destination may list in `client_certs` (docs/API.md).
pub const MAX_CLIENT_CERTS: usize = 6;

/// TLS from the client to the on-prem endpoint (`enable_client_tls = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTlsConfig {
    /// Server name sent and verified; empty: the destination's `ip`.
    pub sni: String,
    /// Verify the endpoint's certificate; false is logged as a warning at every connect.
    pub reject_unauth: bool,
    /// CA certificates (PEM, one entry each) trusted for the endpoint; empty: system roots.
    pub client_certs: Vec<String>,
    /// `tls = "mutualauth"`: the client presents a certificate to the endpoint ...
    pub mutual: bool,
    /// ... this chain and key (PEM), or, when absent, its own from client.toml, so the key
    /// need never leave the on-prem host.
    pub identity: Option<(String, Secret)>,
}

/// TLS between callers and the gateway's `cloud_port` (`client_tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerTls {
    None,
    /// The gateway terminates TLS with `server_cert`/`server_key`.
    ServerSide(TlsIdentity),
    /// As `ServerSide`, and callers must present a certificate issued by one of the
    /// certificates in `server_cert` (so the chain there should include its CA).
    Mutual(TlsIdentity),
}

impl CallerTls {
    pub fn as_str(&self) -> &'static str {
        match self {
            CallerTls::None => "none",
            CallerTls::ServerSide(_) => "serverside",
            CallerTls::Mutual(_) => "mutualauth",
        }
    }
}

/// `proxy = { host, port, protocol, enabled }`: the SOCKS proxy in front of the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestProxy {
    pub host: String,
    pub port: u16,
    /// 4 (SOCKS4, or SOCKS4a when the name does not resolve locally) or 5.
    pub protocol: u8,
    /// Kept when false so the setting survives a round trip; only enabled proxies are used.
    pub enabled: bool,
    /// SOCKS5 username/password authentication (SOCKS4: `username` is the user id).
    pub username: String,
    pub password: Option<Secret>,
}

/// One PEM certificate (or chain) field, validated; the PEM text is returned.
pub(super) fn read_cert_pem(t: &Table<'_, '_>, key: &str) -> Option<String> {
    let pem = pem_source(t, key)?;
    match check_certs(&pem) {
        Ok(()) => Some(String::from_utf8_lossy(&pem).into_owned()),
        Err(m) => {
            t.invalid(key, m);
            None
        }
    }
}

/// A PEM private key field, validated; never quoted in errors.
pub(super) fn read_key_pem(t: &Table<'_, '_>, key: &str) -> Option<Secret> {
    let pem = pem_source(t, key)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Some(Secret::new(String::from_utf8_lossy(&pem).into_owned())),
        Err(_) => {
            t.invalid(
                key,
                "contains no usable PEM private key (PKCS#8, PKCS#1 or SEC1)",
            );
            None
        }
    }
}

/// `client_certs`: up to [`MAX_CLIENT_CERTS`] entries, each inline PEM or a file path.
pub(super) fn read_client_certs(t: &Table<'_, '_>) -> Option<Vec<String>> {
    let entries = t.strs("client_certs")?;
    if entries.len() > MAX_CLIENT_CERTS {
        t.invalid(
            "client_certs",
            format!(
                "{} entries; at most {MAX_CLIENT_CERTS} CA certificates are allowed",
                entries.len()
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, e) in entries.iter().enumerate() {
        let pem = if e.trim_start().starts_with("-----BEGIN") {
            Ok(e.clone().into_bytes())
        } else if t.cx.inline() {
            Err(super::NOT_PEM.to_owned())
        } else {
            let path = super::relative_to(t.cx.file(), e);
            std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))
        };
        match pem.and_then(|p| check_certs(&p).map(|()| p)) {
            Ok(p) => out.push(String::from_utf8_lossy(&p).into_owned()),
            Err(m) => {
                t.invalid("client_certs", format!("entry {i}: {m}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn check_certs(pem: &[u8]) -> Result<(), String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(()),
        Ok(_) => Err("contains no PEM certificate".into()),
        Err(e) => Err(format!("bad PEM certificate: {e}")),
    }
}

/// The client-to-endpoint TLS fields of a gateway destination.
pub(super) fn read_endpoint_tls(d: &Table<'_, '_>) -> Option<Option<EndpointTlsConfig>> {
    let enabled = d.bool("enable_client_tls").unwrap_or(false);
    if !enabled {
        // Settings that would do nothing are mistakes worth a message, not silence.
        for k in [
            "tls",
            "reject_unauth",
            "client_certs",
            "sni",
            "dest_cert",
            "dest_key",
        ] {
            if d.has(k) {
                d.invalid(
                    k,
                    "has no effect unless enable_client_tls = true (TLS from the client to the endpoint)",
                );
            }
        }
        return Some(None);
    }
    let mutual = match d.str("tls").as_deref() {
        None | Some("none") => false,
        Some("mutualauth") => true,
        Some(other) => {
            d.invalid("tls", format!("`{other}` is not one of none, mutualauth"));
            return None;
        }
    };
    let client_certs = if d.has("client_certs") {
        read_client_certs(d)?
    } else {
        Vec::new()
    };
    let identity = if mutual {
        match (d.has("dest_cert"), d.has("dest_key")) {
            // The client brings its own (client.toml `[[destinations]]`).
            (false, false) => None,
            (true, true) => {
                let cert = read_cert_pem(d, "dest_cert");
                let key = read_key_pem(d, "dest_key");
                Some((cert?, key?))
            }
            (has_cert, _) => {
                let (k, missing) = if has_cert {
                    ("dest_cert", "dest_key")
                } else {
                    ("dest_key", "dest_cert")
                };
                d.invalid(k, format!("needs `{missing}` as well"));
                return None;
            }
        }
    } else {
        for k in ["dest_cert", "dest_key"] {
            if d.has(k) {
                d.invalid(k, "is only used with tls = \"mutualauth\"");
            }
        }
        None
    };
    Some(Some(EndpointTlsConfig {
        sni: d.str("sni").unwrap_or_default(),
        reject_unauth: d.bool("reject_unauth").unwrap_or(true),
        client_certs,
        mutual,
        identity,
    }))
}

/// `client_tls` with `server_cert`/`server_key`.
pub(super) fn read_caller_tls(d: &Table<'_, '_>, tls_protocol: bool) -> Option<CallerTls> {
    let mode = d.str("client_tls").unwrap_or_else(|| "none".into());
    if !matches!(mode.as_str(), "none" | "serverside" | "mutualauth") {
        d.invalid(
            "client_tls",
            format!("`{mode}` is not one of none, serverside, mutualauth"),
        );
        return None;
    }
    if mode == "none" {
        for k in ["server_cert", "server_key"] {
            if d.has(k) {
                d.invalid(k, "is only used with client_tls = serverside or mutualauth");
            }
        }
        return Some(CallerTls::None);
    }
    if tls_protocol {
        d.invalid(
            "client_tls",
            "protocol TLS carries the caller's TLS to the endpoint untouched; the gateway cannot also terminate it (use protocol TCP with client_tls)",
        );
        return None;
    }
    for k in ["server_cert", "server_key"] {
        if !d.has(k) {
            d.invalid(
                "client_tls",
                format!("`{mode}` needs `{k}` (what the gateway presents to callers)"),
            );
        }
    }
    let certs = super::read_certs(d, "server_cert");
    let key = super::read_key(d, "server_key");
    let id = TlsIdentity {
        certs: certs?,
        key: std::sync::Arc::new(key?),
    };
    Some(if mode == "serverside" {
        CallerTls::ServerSide(id)
    } else {
        CallerTls::Mutual(id)
    })
}

/// The `proxy` table of a destination (absent: `None`).
pub(super) fn read_dest_proxy(d: &Table<'_, '_>) -> Option<Option<DestProxy>> {
    if !d.has("proxy") {
        return Some(None);
    }
    let p = d.table("proxy")?;
    let host = p.req_str("host");
    let port = p.int_in("port", 1..=65535);
    if !p.has("port") {
        p.missing("port");
    }
    let protocol = p.int_in("protocol", 4..=5).unwrap_or(5) as u8;
    let username = p.str("username").unwrap_or_default();
    let password = p.str("password").map(Secret::new);
    if protocol == 4 && password.is_some() {
        p.invalid(
            "password",
            "SOCKS4 has no password authentication (use protocol = 5)",
        );
    }
    if password.is_some() && username.is_empty() {
        p.invalid("password", "a password needs a username");
    }
    let enabled = p.bool("enabled").unwrap_or(true);
    p.finish(&[]);
    Some(Some(DestProxy {
        host: host?,
        port: port? as u16,
        protocol,
        enabled,
        username,
        password,
    }))
}
