//! JSON control messages carried in HELLO, WELCOME, OPEN, CONFIG and LOG frames.
//!
//! Unknown fields are ignored on purpose: minor protocol versions add fields.

use serde::{Deserialize, Serialize};

/// First message of a tunnel, client to gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: String,
    pub proto: [u8; 2],
    pub hostname: String,
    pub env: String,
    /// Random per client process; groups the tunnels of one client.
    pub instance: String,
    /// Optional protocol features this client speaks (minor-version additions): `deflate`,
    /// `early_data`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// Caps on HELLO's strings: the gateway keeps them per client, so they must be small.
pub const MAX_HELLO_FIELD: usize = 256;
/// Caps on HELLO's `features` list.
pub const MAX_HELLO_FEATURES: usize = 16;

impl Hello {
    /// Refuses a HELLO whose strings or lists are over their caps (PROTOCOL.md §3).
    pub fn validate(&self) -> Result<(), HelloError> {
        for (field, v) in [
            ("version", &self.version),
            ("hostname", &self.hostname),
            ("env", &self.env),
            ("instance", &self.instance),
        ] {
            capped(field, v)?;
        }
        if self.instance.is_empty() {
            return Err(HelloError::NoInstance);
        }
        features_capped(&self.features)
    }
}

/// A HELLO or WELCOME string over [`MAX_HELLO_FIELD`] bytes.
fn capped(field: &'static str, v: &str) -> Result<(), HelloError> {
    match v.len() {
        len if len > MAX_HELLO_FIELD => Err(HelloError::TooLong { field, len }),
        _ => Ok(()),
    }
}

fn features_capped(features: &[String]) -> Result<(), HelloError> {
    if features.len() > MAX_HELLO_FEATURES || features.iter().any(|f| f.len() > MAX_HELLO_FIELD) {
        return Err(HelloError::Features);
    }
    Ok(())
}

/// A HELLO over its caps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("`{field}` is {len} bytes, over the limit of {MAX_HELLO_FIELD}")]
    TooLong { field: &'static str, len: usize },
    #[error("`instance` is empty")]
    NoInstance,
    #[error("`features` holds more than {MAX_HELLO_FEATURES} entries or an entry over {MAX_HELLO_FIELD} bytes")]
    Features,
    #[error("`{field}` holds a control character")]
    Unprintable { field: &'static str },
}

/// The `features` value for per-stream deflate compression.
pub const FEATURE_DEFLATE: &str = "deflate";

/// The `features` value for early data (PROTOCOL.md §4.3): in HELLO, the client takes up to
/// [`EARLY_DATA`](super::EARLY_DATA) bytes of DATA (and a FIN) on a stream the gateway opens
/// before it answers the OPEN; in WELCOME, the gateway does the same for the streams the
/// client opens. A caller's first bytes then travel with the OPEN, a round trip sooner.
pub const FEATURE_EARLY_DATA: &str = "early_data";

/// The `features` value of a probe (`sgw doctor`): the gateway answers the handshake (WELCOME,
/// CONFIG) and closes, without registering the tunnel, so no caller is ever routed to it.
pub const FEATURE_PROBE: &str = "probe";

/// The gateway's answer to HELLO.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    pub client_id: String,
    pub gateway_id: String,
    pub proto: [u8; 2],
    /// The HELLO features this gateway honours for this tunnel (`probe`, `early_data`); absent
    /// from older gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Welcome {
    /// Refuses a WELCOME the client could not log or show as it is: its ids go into every log
    /// line of the tunnel and into `sgw status`, so a gateway must not be able to forge lines
    /// or flood them (PROTOCOL.md §3). The caps are HELLO's.
    pub fn validate(&self) -> Result<(), HelloError> {
        for (field, v) in [
            ("client_id", &self.client_id),
            ("gateway_id", &self.gateway_id),
        ] {
            capped(field, v)?;
            if v.chars().any(char::is_control) {
                return Err(HelloError::Unprintable { field });
            }
        }
        features_capped(&self.features)
    }
}

/// The JSON part of an OPEN frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenMeta {
    /// Destination id.
    pub dest: String,
    /// The caller's address as the gateway saw it (`ip:port`).
    pub caller: String,
    /// `deflate` when both directions of this stream's DATA are compressed; only sent to a
    /// client whose HELLO listed the feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// Client-opened streams from its SOCKS5 listener: the `host:port` the gateway should
    /// dial (within its egress policy) instead of a destination's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A destination's protocol on the wire (`"TCP"`, `"UDP"`, `"HTTP"`, `"HTTPS"`, `"TLS"`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Http,
    Https,
    Tls,
    /// A protocol a newer gateway added: this client refuses its streams rather than guess.
    #[serde(other)]
    Unknown,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Unknown => "UNKNOWN",
        }
    }

    /// HTTP(S) destinations are judged and dialled per request.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One destination as the gateway sends it to clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationSpec {
    pub id: String,
    pub protocol: Protocol,
    pub ip: String,
    pub port: u16,
    /// Connect timeout on the client's side, seconds.
    pub timeout: u32,
    /// Seconds without a byte either way after which a stream is reset; 0 (the default, and
    /// what a gateway that predates the field means to new clients): never.
    #[serde(default)]
    pub idle_timeout: u32,
    /// Seed 000 `private`: only callers matching `ip_table_rules` may use the destination.
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub ip_table_rules: Vec<IpTableRuleSpec>,
    /// TLS from the client to the endpoint (`enable_client_tls`); absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTls>,
    /// SOCKS proxy the client reaches the endpoint through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// Compress this destination's streams in the tunnel.
    #[serde(default)]
    pub compression: bool,
    /// HTTP(S): set `Host` to the endpoint on forwarded requests.
    #[serde(default)]
    pub host_rewrite: bool,
    /// A cloud destination: the client listens on `local_port` and opens a stream per
    /// connection; the gateway dials `ip:port`.
    #[serde(default)]
    pub reverse: bool,
    #[serde(default)]
    pub local_port: u16,
}

/// The most a pushed destination's names and addresses may hold (a DNS name is 253).
pub const MAX_PUSHED_TEXT: usize = 256;

impl DestinationSpec {
    /// The first field that logs, `sgw status` or a terminal could be fooled by: control
    /// characters (a newline forging a log line, an escape sequence) or over
    /// [`MAX_PUSHED_TEXT`] bytes. These strings come from the gateway, which the client does
    /// not trust.
    pub fn unprintable_field(&self) -> Option<&'static str> {
        let bad = |s: &str| s.len() > MAX_PUSHED_TEXT || s.chars().any(char::is_control);
        let mut fields = vec![("id", self.id.as_str()), ("ip", self.ip.as_str())];
        if let Some(t) = &self.tls {
            fields.push(("sni", t.sni.as_str()));
        }
        if let Some(p) = &self.proxy {
            fields.push(("proxy.host", p.host.as_str()));
            fields.push(("proxy.username", p.username.as_str()));
        }
        for r in &self.ip_table_rules {
            fields.extend([
                ("ip_table_rules.src", r.src.as_str()),
                ("ip_table_rules.spt", r.spt.as_str()),
                ("ip_table_rules.app", r.app.as_str()),
            ]);
        }
        fields.into_iter().find(|(_, v)| bad(v)).map(|(k, _)| k)
    }

    /// How long a stream may go without a byte either way; `None`: forever.
    pub fn idle(&self) -> Option<std::time::Duration> {
        (self.idle_timeout > 0).then(|| std::time::Duration::from_secs(self.idle_timeout.into()))
    }

    /// When a UDP flow, which has no close, is forgotten: `idle_timeout`, else `timeout`.
    pub fn udp_expiry(&self) -> std::time::Duration {
        self.idle()
            .unwrap_or_else(|| std::time::Duration::from_secs(self.timeout.clamp(1, 180).into()))
    }
}

/// A string kept out of `Debug` output: private keys and passwords travel in CONFIG pushes.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// How the client speaks TLS to the endpoint (docs/API.md `enable_client_tls` and friends).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointTls {
    /// Server name to send and verify; empty: the destination's `ip`.
    #[serde(default)]
    pub sni: String,
    /// Verify the endpoint's certificate (against `client_certs`, or the system roots).
    #[serde(default = "yes")]
    pub reject_unauth: bool,
    /// Up to 6 CA certificates (PEM) the client trusts for this endpoint.
    #[serde(default)]
    pub client_certs: Vec<String>,
    /// `tls = "mutualauth"`: the client presents `dest_cert`/`dest_key`, or its own from
    /// client.toml when these are empty.
    #[serde(default)]
    pub mutual: bool,
    /// The certificate chain (PEM) and key the client presents.
    #[serde(default)]
    pub dest_cert: String,
    #[serde(default)]
    pub dest_key: Hidden,
}

fn yes() -> bool {
    true
}

/// A SOCKS proxy in front of the endpoint (docs/API.md `proxy`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxySpec {
    pub host: String,
    pub port: u16,
    /// 4 (SOCKS4, SOCKS4a for names) or 5.
    pub protocol: u8,
    /// SOCKS5 username/password authentication when `username` is set.
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Hidden,
}

/// Seed 000 ip table rule as the API writes it: `src` address or `a-b` range, `spt` port or
/// `a:b` range, `app` the rule's name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpTableRuleSpec {
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub spt: String,
    #[serde(default)]
    pub app: String,
}

/// Gateway to client: the full destination list of the gateway (replaces the previous one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigPush {
    pub destinations: Vec<DestinationSpec>,
}

/// Client to gateway: a warn/error log line for the clientLogs API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogPush {
    pub level: String,
    pub message: String,
    pub time: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> DestinationSpec {
        let mut doc = serde_json::json!({
            "id": "d1", "protocol": "TCP", "ip": "10.0.0.1", "port": 80, "timeout": 30
        });
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        match serde_json::from_value(doc) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn pushed_text_that_could_forge_a_log_line_is_named() {
        assert_eq!(spec(serde_json::json!({})).unprintable_field(), None);
        let cases = [
            (
                serde_json::json!({"ip": "10.0.0.1\n2026 INFO forged"}),
                "ip",
            ),
            (serde_json::json!({"id": "d\u{1b}[2J"}), "id"),
            (
                serde_json::json!({"id": "x".repeat(MAX_PUSHED_TEXT + 1)}),
                "id",
            ),
            (
                serde_json::json!({"ip_table_rules": [{"src": "1.2.3.4", "app": "a\rb"}]}),
                "ip_table_rules.app",
            ),
            (
                serde_json::json!({"proxy": {"host": "p\n", "port": 1080, "protocol": 5}}),
                "proxy.host",
            ),
        ];
        for (extra, field) in cases {
            assert_eq!(
                spec(extra.clone()).unprintable_field(),
                Some(field),
                "{extra}"
            );
        }
        // Non-ASCII is fine: an IDN host or a description in any language.
        assert_eq!(
            spec(serde_json::json!({"ip": "bücher.example"})).unprintable_field(),
            None
        );
    }
}
