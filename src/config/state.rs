//! The management API's documents: gateways and destinations as JSON, and the state file
//! that keeps the gateways created through the API across restarts.
//!
//! A destination document has exactly the keys of a `[[gateways.destinations]]` table in
//! `gateway.toml` (docs/DESTINATIONS.md) and is validated by the same reader, so the API,
//! the state file and the config file accept and refuse the same things with the same
//! messages. Certificates and keys in documents are inline PEM; paths are refused, so a
//! request can never make the gateway read its own files.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use base64::Engine;
use rustls::pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::endpoint::CallerTls;
use super::gateway::{read_destination, Destination, Protocol, TenantConfig, TlsIdentity};
use super::{ConfigErrors, Secret};

/// Version of the state file format written by this build.
pub const STATE_VERSION: u32 = 1;

/// The state file: every gateway created or imported through the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    pub gateways: Vec<GatewayRecord>,
}

/// One API-managed gateway id.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRecord {
    pub id: String,
    #[serde(default)]
    pub desc: String,
    pub enabled: bool,
    pub enf_tok_sec: bool,
    pub security_token: StoredSecret,
    /// Days the token was issued for (0: does not expire).
    pub token_exp: u32,
    /// Seconds since the Unix epoch.
    pub token_expires_at: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    pub destinations: Vec<DestRecord>,
    /// The record's version in a shared store, for optimistic concurrency: a change names the
    /// revision it started from. Kept by the store, not in the document.
    #[serde(skip)]
    pub revision: i64,
}

impl GatewayRecord {
    /// API destinations listen on each replica's own `cloud_host`: a record read from a
    /// store that replicas share is made this replica's before it is served.
    pub fn localize(&mut self, cloud_host: &str) {
        for d in &mut self.destinations {
            if d.config.get("reverse").and_then(Value::as_bool) != Some(true) {
                d.config.insert("cloud_host".into(), cloud_host.into());
            }
        }
    }
}

impl fmt::Debug for GatewayRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayRecord")
            .field("id", &self.id)
            .field("enabled", &self.enabled)
            .field("security_token", &"<redacted>")
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}

/// One destination: its document and when it was created and last changed (Unix ms).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestRecord {
    pub created_at: u64,
    pub updated_at: u64,
    pub config: Map<String, Value>,
}

impl fmt::Debug for DestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Documents hold keys and proxy passwords: only their field names are shown.
        f.debug_struct("DestRecord")
            .field("id", &self.config.get("id"))
            .field("fields", &self.config.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A secret written to the state file (which is created with mode 0600).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret(pub Secret);

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for StoredSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose())
    }
}

impl<'de> Deserialize<'de> for StoredSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| StoredSecret(Secret::new(s)))
    }
}

impl StateFile {
    pub fn empty() -> Self {
        StateFile {
            version: STATE_VERSION,
            gateways: Vec::new(),
        }
    }

    /// Reads and validates the state file; `None` when it does not exist yet. A file that
    /// cannot be read, parsed or validated is an error naming what is wrong and where.
    pub fn load(path: &Path) -> Result<Option<StateFile>, ConfigErrors> {
        let at = |m: String| ConfigErrors(vec![format!("state_file {}: {m}", path.display())]);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(at(format!("cannot read: {e}"))),
        };
        let state: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| at(format!("not a valid state file: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(at(format!(
                "version {} is not supported (this build reads version {STATE_VERSION})",
                state.version
            )));
        }
        state.tenants().map_err(|errs| {
            ConfigErrors(
                errs.0
                    .into_iter()
                    .map(|e| format!("state_file {}: {e}", path.display()))
                    .collect(),
            )
        })?;
        Ok(Some(state))
    }

    /// Every gateway as the gateway runs it; errors name the gateway and destination.
    pub fn tenants(&self) -> Result<Vec<TenantConfig>, ConfigErrors> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        let mut ids = HashSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            if !ids.insert(g.id.as_str()) {
                errs.push(format!("gateways[{i}]: duplicate gateway id `{}`", g.id));
            }
            match tenant_from_record(g) {
                Ok(t) => out.push(t),
                Err(e) => errs.extend(
                    e.0.into_iter()
                        .map(|m| format!("gateways[{i}] (`{}`): {m}", g.id)),
                ),
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// A gateway record as the gateway runs it.
pub fn tenant_from_record(g: &GatewayRecord) -> Result<TenantConfig, ConfigErrors> {
    let mut errs = Vec::new();
    let mut dests = Vec::new();
    for (j, d) in g.destinations.iter().enumerate() {
        match destination_from_json(&d.config) {
            Ok(x) => dests.push(x),
            Err(e) => {
                let id = d.config.get("id").and_then(Value::as_str).unwrap_or("?");
                errs.extend(
                    e.0.into_iter()
                        .map(|m| format!("destinations[{j}] (`{id}`): {m}")),
                );
            }
        }
    }
    if let Err(e) = check_unique(&dests) {
        errs.push(e);
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    Ok(TenantConfig {
        id: g.id.clone(),
        desc: g.desc.clone(),
        token: g.security_token.0.clone(),
        enf_tok_sec: g.enf_tok_sec,
        enabled: g.enabled,
        token_expires_at: g.token_expires_at,
        destinations: dests,
        // The API has no egress setting yet: its gateway ids reach nothing through the gateway.
        egress: crate::config::Egress::Own(Vec::new()),
    })
}

/// Destination ids and cloud ports (other than 0) are unique within a gateway.
fn check_unique(dests: &[Destination]) -> Result<(), String> {
    let mut ids = HashSet::new();
    let mut ports = HashSet::new();
    for d in dests {
        if !ids.insert(d.id.as_str()) {
            return Err(format!("duplicate destination id `{}`", d.id));
        }
        let udp = d.protocol == Protocol::Udp;
        if !d.reverse && d.cloud_port != 0 && !ports.insert((&d.cloud_host, d.cloud_port, udp)) {
            return Err(format!(
                "destination `{}`: cloud port {} is used by another destination",
                d.id, d.cloud_port
            ));
        }
    }
    Ok(())
}

/// Validates a destination document with the reader of `gateway.toml`'s destinations, read
/// straight from the JSON; every error names its field.
pub fn destination_from_json(fields: &Map<String, Value>) -> Result<Destination, ConfigErrors> {
    super::walk::read_json(fields, |root| {
        read_destination(root, &mut HashSet::new(), &mut HashSet::new())
    })
}

/// A destination as a document. With `secrets`, keys and the proxy password are included
/// (the state file, exports); without, the document is for display and cannot be read back
/// where a key is needed.
pub fn destination_to_json(d: &Destination, secrets: bool) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("id", d.id.clone().into());
    put("desc", d.desc.clone().into());
    put("enabled", d.enabled.into());
    put("protocol", d.protocol.as_str().into());
    put("ip", d.ip.clone().into());
    put("port", d.port.into());
    if d.reverse {
        put("reverse", true.into());
        put("local_port", d.local_port.into());
    } else {
        put("cloud_host", d.cloud_host.clone().into());
        put("cloud_port", d.cloud_port.into());
    }
    put("timeout", d.timeout.as_secs().into());
    put(
        "idle_timeout",
        d.idle_timeout.map_or(0, |t| t.as_secs()).into(),
    );
    put("private", d.private.into());
    if !d.ip_table_rules.is_empty() {
        let rules = d
            .ip_table_rules
            .iter()
            .map(|r| {
                let mut o = Map::new();
                for (k, v) in [("src", &r.src), ("spt", &r.spt), ("app", &r.app)] {
                    if !v.is_empty() {
                        o.insert(k.into(), v.clone().into());
                    }
                }
                Value::Object(o)
            })
            .collect();
        put("ip_table_rules", Value::Array(rules));
    }
    if let Some(t) = &d.endpoint_tls {
        put("enable_client_tls", true.into());
        put("tls", if t.mutual { "mutualauth" } else { "none" }.into());
        put("reject_unauth", t.reject_unauth.into());
        if !t.sni.is_empty() {
            put("sni", t.sni.clone().into());
        }
        if !t.client_certs.is_empty() {
            put("client_certs", t.client_certs.clone().into());
        }
        if let Some((cert, key)) = &t.identity {
            put("dest_cert", cert.clone().into());
            if secrets {
                put("dest_key", key.expose().into());
            }
        }
    }
    if let CallerTls::ServerSide(id) | CallerTls::Mutual(id) = &d.caller_tls {
        put("client_tls", d.caller_tls.as_str().into());
        put("server_cert", certs_pem(id).into());
        if secrets {
            put("server_key", key_pem(id).expose().into());
        }
    }
    if let Some(p) = &d.proxy {
        let mut o = Map::new();
        o.insert("host".into(), p.host.clone().into());
        o.insert("port".into(), p.port.into());
        o.insert("protocol".into(), p.protocol.into());
        o.insert("enabled".into(), p.enabled.into());
        if !p.username.is_empty() {
            o.insert("username".into(), p.username.clone().into());
        }
        if let (true, Some(pw)) = (secrets, &p.password) {
            o.insert("password".into(), pw.expose().into());
        }
        put("proxy", Value::Object(o));
    }
    put("compression", d.compression.into());
    if matches!(d.protocol, Protocol::Http | Protocol::Https) {
        put("host_rewrite", d.host_rewrite.into());
    }
    m
}

/// PEM text of DER data.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn certs_pem(id: &TlsIdentity) -> String {
    id.certs.iter().map(|c| pem("CERTIFICATE", c)).collect()
}

fn key_pem(id: &TlsIdentity) -> Secret {
    let (label, der) = match id.key.as_ref() {
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        _ => ("PRIVATE KEY", id.key.secret_der()),
    };
    Secret::new(pem(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: serde_json::Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn seed_example_port_as_string_is_read() {
        let d = destination_from_json(&doc(serde_json::json!({
            "id": "d1", "ip": "example.com", "port": "443", "cloud_port": 0, "protocol": "TCP"
        })))
        .map_err(|e| e.0.join("; "));
        assert_eq!(d.map(|d| d.port), Ok(443));
    }

    #[test]
    fn digit_strings_become_integers_only_in_integer_fields() {
        let d = destination_from_json(&doc(serde_json::json!({
            "id": "d1", "ip": "h", "port": "1", "cloud_port": 0,
            "proxy": {"host": "p", "port": "1080", "protocol": "4"}
        })))
        .map_err(|e| e.0.join("; "));
        assert_eq!(
            d.map(|d| d.proxy.map(|p| (p.port, p.protocol))),
            Ok(Some((1080, 4)))
        );
        let e = destination_from_json(&doc(serde_json::json!({
            "id": "d1", "ip": "h", "port": 1, "cloud_port": 0, "protocol": "5", "desc": "7"
        })))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        assert_eq!(
            e,
            ["protocol: `5` is not one of TCP, UDP, TLS, HTTP, HTTPS"]
        );
    }

    #[test]
    fn errors_name_fields_without_positions() {
        let e = destination_from_json(&doc(serde_json::json!({
            "id": "d1", "ip": "h", "port": 1, "cloud_port": 0, "timeout": 500, "bogus": 1
        })))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        assert!(
            e.iter()
                .any(|m| m == "timeout: 500 is out of range 1..=180"),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m == "bogus: unknown key"), "{e:?}");
    }

    #[test]
    fn certificate_paths_are_not_read() {
        let e = destination_from_json(&doc(serde_json::json!({
            "id": "d1", "ip": "h", "port": 1, "cloud_port": 0, "client_tls": "serverside",
            "server_cert": "/etc/passwd", "server_key": "/etc/shadow"
        })))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        assert!(
            e.iter()
                .any(|m| m.starts_with("server_cert: must be PEM text")),
            "{e:?}"
        );
        assert!(!e.iter().any(|m| m.contains("root:")), "{e:?}");
    }

    #[test]
    fn documents_round_trip() {
        let d = destination_from_json(&doc(serde_json::json!({
            "id": "d1", "ip": "h", "port": 1, "cloud_host": "127.0.0.1", "cloud_port": 9,
            "timeout": 7, "private": true,
            "ip_table_rules": [{"src": "127.0.0.1", "spt": "1:2", "app": "a"}],
            "proxy": {"host": "p", "port": 1080, "protocol": 5, "username": "u", "password": "pw"},
            "compression": true
        })));
        let Ok(d) = d else {
            panic!("{d:?}");
        };
        let again = destination_from_json(&destination_to_json(&d, true));
        assert_eq!(again, Ok(d.clone()));
        let shown = destination_to_json(&d, false);
        assert!(!serde_json::to_string(&shown)
            .unwrap_or_default()
            .contains("pw"));
    }
}
