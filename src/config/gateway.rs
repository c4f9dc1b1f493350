//! `gateway.toml`: the cloud side's configuration (the example with every key: config/gateway.toml; destination fields as in docs/API.md).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::endpoint::{
    read_caller_tls, read_dest_proxy, read_endpoint_tls, CallerTls, DestProxy, EndpointTlsConfig,
};
use super::walk::Table;
use super::{
    read_certs, read_keepalive, read_key, read_limits, read_log, read_secret, IpTableRule,
    Keepalive, Limits, LogSettings, Secret,
};

/// Destination protocol (the Secure Gateway API's names, docs/API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    /// Datagrams; each caller address is a flow.
    Udp,
    /// HTTP/1.1 from callers, judged per request by the client's ACL (path rules).
    Http,
    /// As `Http`, with the caller's TLS terminated at the gateway (`client_tls`).
    Https,
    /// TLS carried end to end, not terminated: a TCP relay.
    Tls,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        crate::proto::Protocol::from(self).as_str()
    }
}

/// The wire has one more value (`Unknown`, for what a newer gateway may send); a config never
/// holds it.
impl From<Protocol> for crate::proto::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => crate::proto::Protocol::Tcp,
            Protocol::Udp => crate::proto::Protocol::Udp,
            Protocol::Http => crate::proto::Protocol::Http,
            Protocol::Https => crate::proto::Protocol::Https,
            Protocol::Tls => crate::proto::Protocol::Tls,
        }
    }
}

/// One destination: where callers connect on the gateway, and the on-prem endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub id: String,
    pub desc: String,
    pub enabled: bool,
    pub protocol: Protocol,
    /// On-prem endpoint host (name or address) and port, dialled by the client.
    pub ip: String,
    pub port: u16,
    /// Where the gateway listens for callers; port 0 picks a free port.
    pub cloud_host: String,
    pub cloud_port: u16,
    /// Connect timeout on the client's side (1..=180 s).
    pub timeout: Duration,
    /// A stream with no byte either way for this long is reset (`idle_timeout`, seconds);
    /// `None` (0, the default, as in Secure Gateway): never. UDP flows, which have no close,
    /// expire after this or, when it is off, after `timeout`.
    pub idle_timeout: Option<Duration>,
    /// Only callers matching one of `ip_table_rules` are accepted (none: nobody).
    pub private: bool,
    pub ip_table_rules: Vec<IpTableRule>,
    /// TLS from the client to the endpoint (`enable_client_tls`).
    pub endpoint_tls: Option<EndpointTlsConfig>,
    /// TLS between callers and the gateway (`client_tls`).
    pub caller_tls: CallerTls,
    /// SOCKS proxy the client reaches the endpoint through.
    pub proxy: Option<DestProxy>,
    /// Compress this destination's streams in the tunnel.
    pub compression: bool,
    /// HTTP(S): set `Host` to the endpoint on forwarded requests.
    pub host_rewrite: bool,
    /// A cloud destination: clients listen on `local_port` on-prem, the gateway dials
    /// `ip:port` (within `egress_allow`).
    pub reverse: bool,
    pub local_port: u16,
}

/// The gateway's own certificate and key for the tunnel endpoint.
#[derive(Clone)]
pub struct TlsIdentity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: std::sync::Arc<PrivateKeyDer<'static>>,
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.certs == other.certs && self.key.secret_der() == other.key.secret_der()
    }
}

impl Eq for TlsIdentity {}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The longest gateway id gateway.toml may give.
pub const GATEWAY_ID_MAX: usize = 128;

/// One `[[gateways]]` entry: a gateway id with its token and destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    pub id: String,
    pub desc: String,
    pub token: Secret,
    /// Enforce the security token (docs/API.md `enf_tok_sec`).
    pub enf_tok_sec: bool,
    /// A disabled gateway accepts no tunnels and listens for no callers.
    pub enabled: bool,
    /// When the security token stops being accepted (seconds since the Unix epoch).
    pub token_expires_at: Option<u64>,
    pub destinations: Vec<Destination>,
    /// Where this gateway id's clients may make the gateway connect (reverse destinations,
    /// SOCKS5 targets).
    pub egress: Egress,
}

/// Whether `dest`'s `dest_key`, which CONFIG carries to the gateway id's clients, is the key
/// the gateway serves its tunnels and API with.
fn shares_gateway_key(dest: &Destination, gateway_key: Option<&PrivateKeyDer<'static>>) -> bool {
    let (Some(gateway_key), Some(tls)) = (gateway_key, &dest.endpoint_tls) else {
        return false;
    };
    let Some((_, key)) = &tls.identity else {
        return false;
    };
    let Ok(key) = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()) else {
        return false;
    };
    // By public key: the same key in another encoding (PKCS#1, PKCS#8, SEC1) is the same key.
    let public = |k: &PrivateKeyDer<'_>| {
        rustls::crypto::aws_lc_rs::sign::any_supported_type(k)
            .ok()
            .and_then(|s| s.public_key().map(|p| p.as_ref().to_vec()))
    };
    key.secret_der() == gateway_key.secret_der()
        || public(&key).is_some_and(|p| Some(p) == public(gateway_key))
}

/// A gateway id's egress policy (docs/SECURITY.md: egress is per gateway id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// The top-level `egress_allow` of gateway.toml: only for gateway ids defined in that file
    /// without a list of their own (the file's operator wrote both).
    FileDefault,
    /// This gateway id's own `egress_allow`; empty: none (API-managed gateway ids).
    Own(Vec<String>),
}

impl TenantConfig {
    /// Whether `token` is this gateway's security token and has not expired; compared in
    /// constant time.
    pub fn token_valid(&self, token: &str, now_unix: u64) -> bool {
        let fresh = self.token_expires_at.is_none_or(|t| now_unix < t);
        self.token.ct_eq(token) && fresh
    }
}

/// Validated gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub tls: TlsIdentity,
    pub keepalive: Keepalive,
    pub limits: Limits,
    pub log: LogSettings,
    /// How long open streams may finish after SIGTERM before the process exits.
    pub shutdown_grace: Duration,
    pub gateways: Vec<TenantConfig>,
    /// What reverse destinations may dial: ACL `host[:ports]` forms (CIDR, ranges, names),
    /// default deny. Checked when the gateway binds.
    pub egress_allow: Vec<String>,
    /// The management API (docs/API.md), when `api_listen` is set.
    pub api: Option<ApiConfig>,
    /// The local admin endpoint (health, readiness, metrics, status), when `admin_listen`
    /// is set.
    pub admin: Option<AdminConfig>,
    /// What enrollment strings tell clients (`public_url`, `enroll_ca_file`).
    pub enroll: EnrollDefaults,
    /// Threads that run the gateway's tasks (`workers`).
    pub workers: super::Workers,
}

/// What `sgw enroll` and the API's enrollment call hand to clients unless told otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollDefaults {
    /// `public_url`: the tunnel URL as clients reach it (through NAT, a load balancer, DNS).
    pub url: Option<super::WssUrl>,
    /// `enroll_ca_file`: PEM of the CA clients should trust; absent: the system's roots.
    pub ca_pem: Option<String>,
}

/// `admin_listen` and what goes with it: the same endpoint the client has, without ACL calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `admin_token`, shared with the API: needed for everything but `/healthz`, `/readyz` and
    /// `/metrics`.
    pub token: Option<Secret>,
    /// Names besides `localhost` and IP literals a request's `Host` may carry.
    pub hosts: Vec<String>,
    /// Connections served at once (`admin_max_connections`).
    pub max_connections: usize,
    /// `admin_socket`: the same endpoint on a Unix socket for this user and root, no token.
    pub socket: Option<std::path::PathBuf>,
}

/// `api_listen` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// For account-level calls (create, list, import, export gateways).
    pub admin_token: Option<Secret>,
    /// Where gateways created through the API are kept (absent: lost at restart).
    pub state_file: Option<std::path::PathBuf>,
    /// `state_store`: PostgreSQL shared by gateway replicas instead of `state_file`.
    pub state_store: Option<PgStoreConfig>,
    /// `replica`: this process's name among replicas (logs, `/metrics`); the host name by
    /// default.
    pub replica: String,
    /// Largest request body accepted.
    pub max_body: u64,
    /// `cloud_host` for destinations created through the API without one.
    pub cloud_host: String,
    /// API connections served at once (`api_max_connections`), and from one source address
    /// (`api_max_connections_per_source`), so one caller can't lock the admin out.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Deadline for a whole request, body included (`api_request_timeout`).
    pub request_timeout: std::time::Duration,
    /// For the enrollment call: the same as [`GatewayConfig::enroll`].
    pub enroll: EnrollDefaults,
}

/// `state_store` and what goes with it (docs/HA.md).
#[derive(Clone, PartialEq, Eq)]
pub struct PgStoreConfig {
    /// The URL as given, without a password (one is refused there), so safe to log.
    pub url: String,
    /// `state_store_password_file`.
    pub password: Option<Secret>,
    /// `state_store_ca_file`: roots for TLS to the database; absent: the system's roots.
    pub ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl std::fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("url", &self.url)
            .field("password", &self.password)
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .finish()
    }
}

const LATER: &[&str] = &[];

/// Default `api_max_body`: certificates and imports are small.
const API_MAX_BODY: u64 = 1 << 20;
const DEST_LATER: &[&str] = &[];
/// Longest `idle_timeout`: a week, far beyond any NAT's patience.
const MAX_IDLE_TIMEOUT: i64 = 7 * 24 * 3600;

config_document!(GatewayConfig, "GATEWAY", LATER, read);

fn read(root: &Table<'_, '_>) -> Option<GatewayConfig> {
    let listen = root
        .req_str("listen")
        .and_then(|s| match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                root.invalid("listen", format!("`{s}` is not an ip:port address"));
                None
            }
        });
    if !root.has("tls_cert") {
        root.missing("tls_cert");
    }
    if !root.has("tls_key") {
        root.missing("tls_key");
    }
    let certs = read_certs(root, "tls_cert");
    let key = read_key(root, "tls_key");
    let keepalive = read_keepalive(root.table("keepalive"));
    let limits = read_limits(root.table("limits"));
    let log = read_log(root);
    let admin_token = read_admin_token(root);
    let mut gateways = Vec::new();
    let mut ids = HashSet::new();
    let mut cloud_ports = HashSet::new();
    for g in root.tables("gateways") {
        let id = g.req_str("id");
        if let (Some(id), Some(v)) = (&id, g.get("id")) {
            if !ids.insert(id.clone()) {
                g.err("id", v, format!("duplicate gateway id `{id}`"));
            }
            // Clients send it in a header and get back a client id made from it, which they
            // refuse past 256 bytes (PROTOCOL.md §3).
            if id.is_empty()
                || id.len() > GATEWAY_ID_MAX
                || !id.bytes().all(|b| b.is_ascii_graphic())
            {
                g.err(
                    "id",
                    v,
                    format!("a gateway id is 1 to {GATEWAY_ID_MAX} printable ASCII characters without spaces"),
                );
            }
        }
        let desc = g.str("desc").unwrap_or_default();
        let token = read_secret(&g, "security_token", "token_file");
        let enf_tok_sec = g.bool("enf_tok_sec").unwrap_or(true);
        let enabled = g.bool("enabled").unwrap_or(true);
        let egress = match g.strs("egress_allow") {
            Some(list) => Egress::Own(list),
            None => Egress::FileDefault,
        };
        let mut dests = Vec::new();
        let mut dest_ids = HashSet::new();
        for d in g.tables("destinations") {
            if let Some(dest) = read_destination(&d, &mut dest_ids, &mut cloud_ports) {
                if shares_gateway_key(&dest, key.as_ref()) {
                    d.invalid(
                        "dest_key",
                        "is the gateway's own tls_key; dest_key is sent to every client of this \
                         gateway id, so give the endpoint's client certificate a key of its own",
                    );
                }
                dests.push(dest);
            }
            d.finish(DEST_LATER);
        }
        g.finish(&["token_exp"]);
        if let (Some(id), Some(token)) = (id, token) {
            gateways.push(TenantConfig {
                id,
                desc,
                token,
                enf_tok_sec,
                enabled,
                token_expires_at: None,
                destinations: dests,
                egress,
            });
        }
    }
    // Read before any `?` below, so their errors are reported beside a broken TLS key.
    let enroll = read_enroll(root);
    let api = read_api(root, admin_token.clone(), &enroll);
    let admin = read_admin(root, admin_token);
    let shutdown_grace = root
        .duration("shutdown_grace")
        .unwrap_or(Duration::from_secs(30));
    let egress_allow = root.strs("egress_allow").unwrap_or_default();
    let workers = super::read_workers(root);
    Some(GatewayConfig {
        listen: listen?,
        tls: TlsIdentity {
            certs: certs?,
            key: std::sync::Arc::new(key?),
        },
        keepalive,
        limits,
        log,
        shutdown_grace,
        gateways,
        egress_allow,
        api,
        admin,
        enroll,
        workers,
    })
}

fn read_enroll(root: &Table<'_, '_>) -> EnrollDefaults {
    let url = root
        .str("public_url")
        .and_then(|u| match super::WssUrl::parse(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                root.invalid("public_url", e);
                None
            }
        });
    // Read as certificates so a bad file is reported here, kept as text for the string.
    let ca_pem = read_certs(root, "enroll_ca_file").and_then(|_| {
        super::pem_source(root, "enroll_ca_file").and_then(|b| String::from_utf8(b).ok())
    });
    EnrollDefaults { url, ca_pem }
}

/// `admin_token` serves both the API and the admin endpoint; alone it would guard nothing.
fn read_admin_token(root: &Table<'_, '_>) -> Option<Secret> {
    if !(root.has("admin_token") || root.has("admin_token_file")) {
        return None;
    }
    if !root.has("api_listen") && !root.has("admin_listen") {
        for k in ["admin_token", "admin_token_file"] {
            if root.has(k) {
                root.invalid(k, "only applies with api_listen or admin_listen");
            }
        }
        return None;
    }
    read_secret(root, "admin_token", "admin_token_file")
}

fn read_admin(root: &Table<'_, '_>, token: Option<Secret>) -> Option<AdminConfig> {
    let Some(s) = root.str("admin_listen") else {
        for k in ["admin_hosts", "admin_max_connections", "admin_socket"] {
            if root.has(k) {
                root.invalid(k, "only applies with admin_listen");
            }
        }
        return None;
    };
    let Ok(listen) = s.parse::<SocketAddr>() else {
        root.invalid("admin_listen", format!("`{s}` is not an ip:port address"));
        return None;
    };
    Some(AdminConfig {
        listen,
        token,
        hosts: root.strs("admin_hosts").unwrap_or_default(),
        max_connections: root
            .int_in("admin_max_connections", 1..=10_000)
            .map_or(super::ADMIN_MAX_CONNECTIONS, |n| n as usize),
        socket: super::read_admin_socket(root),
    })
}

fn read_api(
    root: &Table<'_, '_>,
    admin_token: Option<Secret>,
    enroll: &EnrollDefaults,
) -> Option<ApiConfig> {
    let keys = [
        "state_file",
        "state_store",
        "state_store_password_file",
        "state_store_ca_file",
        "replica",
        "api_max_body",
        "cloud_host",
        "api_max_connections",
        "api_max_connections_per_source",
        "api_request_timeout",
    ];
    let listen = match root.str("api_listen") {
        None => {
            for k in keys.iter().filter(|k| root.has(k)) {
                root.invalid(k, "only applies with api_listen (the management API)");
            }
            return None;
        }
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                root.invalid("api_listen", format!("`{s}` is not an ip:port address"));
                return None;
            }
        },
    };
    let state_file = root
        .str("state_file")
        .map(|p| super::relative_to(root.cx.file(), &p));
    let state_store = read_store(root);
    if let (Some(_), Some(v)) = (&state_store, root.get("state_file")) {
        root.err(
            "state_file",
            v,
            "give either state_file or state_store, not both (`sgw state migrate` moves a state file into the store)",
        );
    }
    let replica = root
        .str("replica")
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let max_body = match root.size("api_max_body") {
        Some(n) if !(1024..=(64 << 20)).contains(&n) => {
            root.invalid("api_max_body", "must be between 1KiB and 64MiB");
            API_MAX_BODY
        }
        Some(n) => n,
        None => API_MAX_BODY,
    };
    let max_connections = root
        .int_in("api_max_connections", 1..=100_000)
        .map_or(256, |n| n as usize);
    let max_connections_per_source = root
        .int_in("api_max_connections_per_source", 1..=100_000)
        .map_or(16, |n| n as usize);
    let request_timeout = root
        .duration("api_request_timeout")
        .unwrap_or(std::time::Duration::from_secs(30));
    if request_timeout.is_zero() {
        root.invalid("api_request_timeout", "must be above 0");
    }
    Some(ApiConfig {
        listen,
        admin_token,
        state_file,
        state_store,
        replica,
        max_body,
        cloud_host: root.str("cloud_host").unwrap_or_else(|| "0.0.0.0".into()),
        max_connections,
        max_connections_per_source,
        request_timeout,
        enroll: enroll.clone(),
    })
}

/// `state_store = "postgres://user@host:port/db?sslmode=require"`, the password in
/// `state_store_password_file`.
fn read_store(root: &Table<'_, '_>) -> Option<PgStoreConfig> {
    let Some(url) = root.str("state_store") else {
        for k in ["state_store_password_file", "state_store_ca_file"] {
            if root.has(k) {
                root.invalid(k, "only applies with state_store");
            }
        }
        return None;
    };
    if let Err(e) = check_store_url(&url) {
        root.invalid("state_store", e);
        return None;
    }
    let password = root
        .has("state_store_password_file")
        .then(|| read_secret(root, "state_store_password", "state_store_password_file"))
        .flatten();
    let ca = if root.has("state_store_ca_file") {
        Some(read_certs(root, "state_store_ca_file")?)
    } else {
        None
    };
    Some(PgStoreConfig { url, password, ca })
}

/// A PostgreSQL URL the driver reads, naming a host and a user, and no password. The password
/// never crosses a network in plain text: TLS is required (`sslmode=require`, the default
/// here) unless the database is on this host (`sslmode=disable` for loopback or a socket).
/// `prefer` is refused: anyone on the path can turn it into plain text. Returns the TLS mode
/// to connect with.
pub fn check_store_url(url: &str) -> Result<tokio_postgres::config::SslMode, String> {
    use tokio_postgres::config::{Host, SslMode};
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected a `postgres://user@host:port/database` URL".into());
    }
    // The driver's own error could quote the URL, password and all: say only what is wrong.
    let cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|_| "not a PostgreSQL URL the driver can read (postgres://user@host:port/database?sslmode=...)".to_string())?;
    if cfg.get_password().is_some() {
        return Err(
            "a password in the URL would show in logs and process listings; put it in state_store_password_file"
                .into(),
        );
    }
    if cfg.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    if cfg.get_user().is_none() {
        return Err("names no user (postgres://USER@host/database)".into());
    }
    let local = cfg.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
        _ => true,
    });
    if !url.contains("sslmode=") {
        // The driver's default (`prefer`) would fall back to plain text.
        return Ok(SslMode::Require);
    }
    match cfg.get_ssl_mode() {
        SslMode::Prefer => Err(
            "sslmode=prefer falls back to plain text whenever someone on the path asks, password included; use sslmode=require (the default)"
                .into(),
        ),
        SslMode::Disable if !local => Err(
            "sslmode=disable would send the password in plain text across the network; it is only for a database on this host (localhost or a socket directory); use sslmode=require"
                .into(),
        ),
        mode => Ok(mode),
    }
}

pub(super) fn read_destination(
    d: &Table<'_, '_>,
    ids: &mut HashSet<String>,
    ports: &mut HashSet<(String, u16, bool)>,
) -> Option<Destination> {
    let id = d.req_str("id");
    if let (Some(id), Some(v)) = (&id, d.get("id")) {
        if !ids.insert(id.clone()) {
            d.err("id", v, format!("duplicate destination id `{id}`"));
        }
    }
    let protocol = match d.str("protocol").as_deref() {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("TLS") => Some(Protocol::Tls),
        Some("UDP") => Some(Protocol::Udp),
        Some("HTTP") => Some(Protocol::Http),
        Some("HTTPS") => Some(Protocol::Https),
        Some(other) => {
            d.invalid(
                "protocol",
                format!("`{other}` is not one of TCP, UDP, TLS, HTTP, HTTPS"),
            );
            None
        }
    };
    let ip = d.req_str("ip");
    let port = d.int_in("port", 1..=65535);
    if !d.has("port") {
        d.missing("port");
    }
    let cloud_host = d.str("cloud_host").unwrap_or_else(|| "0.0.0.0".into());
    let reverse = d.bool("reverse").unwrap_or(false);
    let local_port = d.int_in("local_port", 1..=65535).unwrap_or(0) as u16;
    if reverse && !d.has("local_port") {
        d.invalid(
            "reverse",
            "a reverse destination needs `local_port` (where clients listen on-prem)",
        );
    }
    if !reverse && d.has("local_port") {
        d.invalid("local_port", "only applies to reverse destinations");
    }
    // A reverse destination has no listener on the gateway.
    let cloud_port = if reverse {
        if d.has("cloud_port") {
            d.invalid(
                "cloud_port",
                "a reverse destination has no cloud_port (the gateway dials out)",
            );
        }
        Some(0)
    } else {
        d.int_in("cloud_port", 0..=65535)
    };
    if !reverse && !d.has("cloud_port") {
        d.missing("cloud_port");
    }
    if let (Some(p), Some(v)) = (cloud_port, d.get("cloud_port")) {
        // TCP and UDP may share a port number (DNS, iperf3 -u): they are different sockets.
        let udp = protocol == Some(Protocol::Udp);
        if p != 0 && !ports.insert((cloud_host.clone(), p as u16, udp)) {
            d.err(
                "cloud_port",
                v,
                format!("cloud port {p} is used by another destination"),
            );
        }
    }
    let timeout = d.int_in("timeout", 1..=180).unwrap_or(30);
    let idle_timeout = d.int_in("idle_timeout", 0..=MAX_IDLE_TIMEOUT).unwrap_or(0);
    let private = d.bool("private").unwrap_or(false);
    let mut ip_table_rules = Vec::new();
    let mut apps = HashSet::new();
    for t in d.tables("ip_table_rules") {
        let src = t.str("src").unwrap_or_default();
        let spt = t.str("spt").unwrap_or_default();
        let app = t.str("app").unwrap_or_default();
        let at = ["src", "spt", "app"]
            .into_iter()
            .find_map(|k| t.get(k).map(|v| (k, v)));
        match IpTableRule::new(&src, &spt, &app) {
            Ok(r) => {
                if !app.is_empty() && !apps.insert(app.clone()) {
                    t.invalid("app", format!("duplicate rule app `{app}`"));
                }
                ip_table_rules.push(r);
            }
            Err(m) => match at {
                Some((k, v)) => t.err(k, v, m),
                None => t.missing("src"),
            },
        }
        t.finish(&[]);
    }
    let endpoint_tls = read_endpoint_tls(d);
    let caller_tls = read_caller_tls(d, protocol == Some(Protocol::Tls));
    let proxy = read_dest_proxy(d);
    let compression = d.bool("compression").unwrap_or(false);
    let http = matches!(protocol, Some(Protocol::Http | Protocol::Https));
    let host_rewrite = d.bool("host_rewrite").unwrap_or(false);
    if host_rewrite && !http && protocol.is_some() {
        d.invalid(
            "host_rewrite",
            "only applies to HTTP and HTTPS destinations",
        );
    }
    // HTTPS means the caller speaks TLS to the gateway, which must terminate it.
    if let Some(ct) = &caller_tls {
        match (protocol, *ct == CallerTls::None) {
            (Some(Protocol::Https), true) => d.invalid(
                "protocol",
                "HTTPS needs client_tls = \"serverside\" or \"mutualauth\" (with server_cert/server_key): the gateway terminates the caller's TLS",
            ),
            (Some(Protocol::Http), false) => d.invalid(
                "client_tls",
                "callers of an HTTP destination speak plain HTTP; use protocol = \"HTTPS\" with client_tls",
            ),
            _ => {}
        }
    }
    if reverse {
        if protocol.is_some_and(|p| p != Protocol::Tcp) {
            d.invalid("protocol", "reverse destinations carry TCP");
        }
        if caller_tls.as_ref().is_some_and(|c| *c != CallerTls::None) {
            d.invalid(
                "client_tls",
                "a reverse destination has no callers at the gateway",
            );
        }
    }
    if protocol == Some(Protocol::Udp) {
        // Datagram flows carry no TLS and go through no SOCKS CONNECT.
        let used = [
            ("enable_client_tls", matches!(endpoint_tls, Some(Some(_)))),
            (
                "client_tls",
                caller_tls.as_ref().is_some_and(|c| *c != CallerTls::None),
            ),
            ("proxy", matches!(proxy, Some(Some(_)))),
            ("compression", compression),
        ];
        for (k, _) in used.iter().filter(|(_, on)| *on) {
            d.invalid(k, "is not supported for UDP destinations");
        }
    }
    Some(Destination {
        endpoint_tls: endpoint_tls?,
        caller_tls: caller_tls?,
        proxy: proxy?,
        compression,
        host_rewrite,
        reverse,
        local_port,
        id: id?,
        desc: d.str("desc").unwrap_or_default(),
        enabled: d.bool("enabled").unwrap_or(true),
        protocol: protocol?,
        ip: ip?,
        port: port? as u16,
        cloud_host,
        cloud_port: cloud_port? as u16,
        timeout: Duration::from_secs(timeout as u64),
        idle_timeout: (idle_timeout > 0).then(|| Duration::from_secs(idle_timeout as u64)),
        private,
        ip_table_rules,
    })
}
