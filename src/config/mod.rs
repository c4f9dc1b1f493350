//! Configuration: TOML files parsed into raw spanned values, then converted into validated
//! structs with defaults applied. Every error is reported, each with file, line and dotted
//! path; nothing here touches the network or spawns tasks.

/// `load`, `from_toml` and `from_toml_env` for a config document: `$read` reads the
/// validated struct, `SGW_$env_*` variables override the file's values.
macro_rules! config_document {
    ($ty:ty, $env:literal, $later:expr, $read:path) => {
        impl $ty {
            pub fn load(path: &std::path::Path) -> Result<Self, crate::config::ConfigErrors> {
                let src = crate::config::read_file(path)?;
                Self::from_toml(path, &src)
            }

            pub fn from_toml(
                path: &std::path::Path,
                src: &str,
            ) -> Result<Self, crate::config::ConfigErrors> {
                Self::from_toml_env(path, src, crate::config::walk::sgw_env())
            }

            #[doc = concat!("As [`Self::from_toml`], with these `SGW_", $env, "_*` variables instead of the process's.")]
            pub fn from_toml_env(
                path: &std::path::Path,
                src: &str,
                env: std::collections::BTreeMap<String, String>,
            ) -> Result<Self, crate::config::ConfigErrors> {
                crate::config::walk::read_document(path, src, $env, env, $later, $read)
            }
        }
    };
}

mod client;
mod endpoint;
mod gateway;
mod iptable;
mod proxy;
pub mod state;
mod walk;

use std::fmt;
use std::path::{Path, PathBuf};

pub use client::{
    ClientConfig, DestOverride, GatewayLink, Reconnect, Replica, Trust, WssUrl, MAX_REPLICAS,
};
pub use endpoint::{CallerTls, DestProxy, EndpointTlsConfig, MAX_CLIENT_CERTS};
pub use gateway::{
    check_store_url, AdminConfig, ApiConfig, Destination, Egress, EnrollDefaults, GatewayConfig,
    PgStoreConfig, Protocol, TenantConfig, TlsIdentity,
};
pub use iptable::IpTableRule;
pub use proxy::{bypass as no_proxy_bypass, OutboundProxy, ProxyKind};
pub use walk::{parse_duration, parse_size};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A single value that does not parse (a URL, a proxy URL, a caller rule); the message says
/// what is wrong without repeating secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

/// A secret string (token, password). Never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// A new random token: 256 bits as 64 hex digits (safe in a header, a URL, a shell and a
    /// TOML string). Every token sgw makes (security tokens, admin tokens) comes from here.
    pub fn generate() -> Self {
        Secret(format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        ))
    }

    /// The secret itself, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, so response timing does not reveal a prefix.
    pub fn ct_eq(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// All problems found in a config file, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// What to do when no ACL rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    /// Lines each log statement may write a second at info and above; 0: no limit.
    pub lines_per_second: u32,
    /// Lines the whole process may write a second at info and above; 0: no limit.
    pub lines_per_second_total: u32,
    /// Lines waiting for stderr (`log_buffer_lines`); more are dropped and counted.
    pub buffer_lines: usize,
}

/// `log_lines_per_second` when absent: far above what a healthy process writes from one
/// statement, far below what fills a disk.
pub const LOG_LINES_PER_SECOND: u32 = 100;

/// `log_lines_per_second_total` when absent: under journald's own limit for a whole service
/// (10,000 lines in 30 s by default), so journald never drops sgw's lines itself.
pub const LOG_LINES_PER_SECOND_TOTAL: u32 = 300;

/// `log_buffer_lines` when absent: over ten seconds of `log_lines_per_second_total`, so a
/// journald that stalls for a moment loses nothing. Lines are at most a few KiB (what peers
/// send is cut short in them), so a few MiB when it stalls for good.
pub const LOG_BUFFER_LINES: usize = 4096;

/// The most `log_buffer_lines` may ask for (the queue's slots are allocated up front).
pub const MAX_LOG_BUFFER_LINES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
}

/// Bounds on memory and concurrency, per tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_streams: usize,
    pub max_udp_flows: usize,
    pub stream_window: u32,
    pub max_stream_window: u32,
    pub tunnel_buffer: u64,
    /// DATA bytes one stream may have waiting for its tunnel's writer: what a bulk stream can
    /// put ahead of the others (the writer serves streams round robin) and hold in memory.
    pub stream_send_queue: u64,
    /// DATA bytes all streams of one tunnel may have waiting for its writer: what a peer that
    /// stops reading can make the process hold on the sending side.
    pub tunnel_send_queue: u64,
    pub accept_backlog: usize,
    /// Gateway: datagram bytes queued per UDP flow while its stream opens or is short of
    /// credit; beyond it datagrams are dropped.
    pub udp_flow_buffer: u64,
    /// Gateway: tunnels one client process (HELLO `instance`) may hold, and all clients of one
    /// gateway id together.
    pub max_tunnels_per_client: usize,
    pub max_tunnels_per_gateway: usize,
    /// Gateway: destinations one gateway id may have (each costs a listener, and CONFIG size).
    pub max_destinations: usize,
    /// Gateway: datagram bytes one UDP flow may queue while its stream is still opening (a
    /// spoofed source never gets past this), and all flows of the process together.
    pub udp_pending_buffer: u64,
    pub udp_buffer_total: u64,
    /// Receive window all streams of all tunnels may have promised peers at once: what peers
    /// could make this process buffer (`sgw::mux::WindowBudget`).
    pub window_budget: u64,
    /// Gateway: the share of `window_budget` the streams of one gateway id may hold, so the
    /// callers of one id (anyone who reaches its cloud ports) can't starve the others. Unset:
    /// all of `window_budget` (a gateway of one id, the common case, keeps all of it).
    /// Client: each configured gateway's share; unset, `window_budget` split evenly.
    pub window_budget_per_gateway: u64,
    /// Gateway: name lookups the clients of one gateway id may have running at once for
    /// SOCKS targets and reverse destinations. Each holds a blocking thread until the system
    /// resolver gives up, so names that never answer could otherwise take the threads every
    /// gateway id needs.
    pub max_lookups_per_gateway: usize,
    /// Gateway: name lookups running at once for all gateway ids together, so several ids'
    /// slow names can't take every blocking thread (tokio has 512) either.
    pub max_lookups: usize,
    /// Gateway: tunnel connections in their handshake (TLS, upgrade, HELLO) at once, and
    /// from one source address (an IPv6 /64 counts as one). Until its token is judged a
    /// connection is anyone's: these keep strangers from holding the gateway's memory.
    pub max_pending_handshakes: usize,
    pub max_pending_handshakes_per_source: usize,
    /// Gateway: of those, the ones past the upgrade (a token shown) for one gateway id: one
    /// id's token holders can't hold every place.
    pub max_pending_handshakes_per_gateway: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 10_000,
            max_udp_flows: 4096,
            stream_window: 256 * 1024,
            max_stream_window: 16 * 1024 * 1024,
            // benches/wan.sh (25 ms each way, 1 Gbit/s): one stream reaches 47% of the path
            // at 4 MiB, 73% at 8 MiB, 97% at 16 MiB. With each stream's send queue bounded,
            // peers.sh's peak RSS on loopback is about the same at 4 and 16 MiB (38 vs 41 MiB,
            // both processes).
            tunnel_buffer: 16 * 1024 * 1024,
            // Two reads of a bulk socket: enough to keep the writer busy between turns.
            stream_send_queue: 128 * 1024,
            // What the single queue of 256 frames held before streams had their own.
            tunnel_send_queue: 16 * 1024 * 1024,
            accept_backlog: 1024,
            // iperf3 -u at 1 Gbit/s in 1400-byte datagrams (benches/udp.sh): 64 datagrams
            // lost ~24%, 512 (~700 KiB) ~2% against 1.3% direct.
            udp_flow_buffer: 1024 * 1024,
            max_tunnels_per_client: 16,
            max_tunnels_per_gateway: 1024,
            max_destinations: 1000,
            // About two largest datagrams (each is charged 64 bytes over its size): a legitimate
            // first burst (a DNS question, a 60 KB datagram) fits; 4096 spoofed flows together
            // still stop at udp_buffer_total.
            udp_pending_buffer: 128 * 1024,
            udp_buffer_total: 64 * 1024 * 1024,
            // 8,192 streams at the default 256 KiB window, or fewer bigger ones.
            window_budget: 2 * 1024 * 1024 * 1024,
            window_budget_per_gateway: 2 * 1024 * 1024 * 1024,
            // A sixteenth of tokio's 512 blocking threads.
            max_lookups_per_gateway: 32,
            // A quarter of tokio's 512 blocking threads: files, the state store and the
            // system resolver for everything else keep the rest.
            max_lookups: 128,
            // A site behind one NAT address reconnecting 32 clients (two tunnels each) at
            // once fits; more retry after their backoff. A stranger's handshake holds tens of
            // KiB; one past the upgrade (a token holder's) up to a HELLO message of 2 MiB.
            max_pending_handshakes: 512,
            max_pending_handshakes_per_source: 64,
            // 64 clients of one id (two tunnels each) reconnecting at once fit.
            max_pending_handshakes_per_gateway: 128,
        }
    }
}

/// Which process a limit binds: `[limits]` is one table, read alike by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Gateway,
}

impl Limits {
    /// Every limit that binds `side`, by its key in `[limits]`: what `/metrics` shows, so an
    /// operator can tell a limit being hit from a fault.
    pub fn entries(&self, side: Side) -> Vec<(&'static str, u64)> {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let mut v = vec![
            ("max_streams", n(self.max_streams)),
            ("max_udp_flows", n(self.max_udp_flows)),
            ("stream_window", u64::from(self.stream_window)),
            ("max_stream_window", u64::from(self.max_stream_window)),
            ("tunnel_buffer", self.tunnel_buffer),
            ("stream_send_queue", self.stream_send_queue),
            ("tunnel_send_queue", self.tunnel_send_queue),
            ("accept_backlog", n(self.accept_backlog)),
            ("window_budget", self.window_budget),
            ("window_budget_per_gateway", self.window_budget_per_gateway),
        ];
        if side == Side::Gateway {
            v.extend([
                ("udp_flow_buffer", self.udp_flow_buffer),
                ("max_tunnels_per_client", n(self.max_tunnels_per_client)),
                ("max_tunnels_per_gateway", n(self.max_tunnels_per_gateway)),
                ("max_destinations", n(self.max_destinations)),
                ("udp_pending_buffer", self.udp_pending_buffer),
                ("udp_buffer_total", self.udp_buffer_total),
                ("max_lookups_per_gateway", n(self.max_lookups_per_gateway)),
                ("max_lookups", n(self.max_lookups)),
                ("max_pending_handshakes", n(self.max_pending_handshakes)),
                (
                    "max_pending_handshakes_per_source",
                    n(self.max_pending_handshakes_per_source),
                ),
                (
                    "max_pending_handshakes_per_gateway",
                    n(self.max_pending_handshakes_per_gateway),
                ),
            ]);
        }
        v
    }
}

fn read_limits(t: Option<walk::Table<'_, '_>>) -> Limits {
    let mut l = Limits::default();
    let Some(t) = t else { return l };
    for (key, slot, range) in [
        ("max_streams", &mut l.max_streams, 1..=1_000_000),
        ("max_udp_flows", &mut l.max_udp_flows, 1..=1_000_000),
        ("accept_backlog", &mut l.accept_backlog, 1..=65_536),
        (
            "max_tunnels_per_client",
            &mut l.max_tunnels_per_client,
            1..=1024,
        ),
        (
            "max_tunnels_per_gateway",
            &mut l.max_tunnels_per_gateway,
            1..=1_000_000,
        ),
        ("max_destinations", &mut l.max_destinations, 1..=100_000),
        (
            "max_lookups_per_gateway",
            &mut l.max_lookups_per_gateway,
            1..=256,
        ),
        ("max_lookups", &mut l.max_lookups, 1..=256),
        (
            "max_pending_handshakes",
            &mut l.max_pending_handshakes,
            1..=1_000_000,
        ),
        (
            "max_pending_handshakes_per_source",
            &mut l.max_pending_handshakes_per_source,
            1..=1_000_000,
        ),
        (
            "max_pending_handshakes_per_gateway",
            &mut l.max_pending_handshakes_per_gateway,
            1..=1_000_000,
        ),
    ] {
        if let Some(v) = t.int_in(key, range) {
            *slot = v as usize;
        }
    }
    let range = 16 * 1024..=(1u64 << 30);
    for (key, slot) in [
        ("stream_window", &mut l.stream_window),
        ("max_stream_window", &mut l.max_stream_window),
    ] {
        if let Some(v) = t.size(key) {
            if range.contains(&v) {
                *slot = v as u32;
            } else if let Some(val) = t.get(key) {
                t.err(key, val, format!("{v} is out of range 16KiB..=1GiB"));
            }
        }
    }
    if let Some(v) = t.size("tunnel_buffer") {
        l.tunnel_buffer = v;
    }
    if let Some(v) = t.size("udp_flow_buffer") {
        if (64 * 1024..=(1u64 << 30)).contains(&v) {
            l.udp_flow_buffer = v;
        } else if let Some(val) = t.get("udp_flow_buffer") {
            t.err(
                "udp_flow_buffer",
                val,
                format!("{v} is out of range 64KiB..=1GiB"),
            );
        }
    }
    for (key, slot, range) in [
        (
            "udp_pending_buffer",
            &mut l.udp_pending_buffer,
            1024..=(1u64 << 30),
        ),
        (
            "udp_buffer_total",
            &mut l.udp_buffer_total,
            64 * 1024..=(1u64 << 40),
        ),
        (
            "window_budget",
            &mut l.window_budget,
            1024 * 1024..=(1u64 << 44),
        ),
        (
            "window_budget_per_gateway",
            &mut l.window_budget_per_gateway,
            1024 * 1024..=(1u64 << 44),
        ),
        (
            "stream_send_queue",
            &mut l.stream_send_queue,
            16 * 1024..=16 * 1024 * 1024,
        ),
        (
            "tunnel_send_queue",
            &mut l.tunnel_send_queue,
            1024 * 1024..=(1u64 << 30),
        ),
    ] {
        if let Some(v) = t.size(key) {
            if range.contains(&v) {
                *slot = v;
            } else if let Some(val) = t.get(key) {
                t.err(
                    key,
                    val,
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                );
            }
        }
    }
    if l.max_stream_window < l.stream_window {
        l.max_stream_window = l.stream_window;
    }
    if t.get("window_budget_per_gateway").is_none() {
        l.window_budget_per_gateway = l.window_budget;
    }
    t.finish(&[]);
    l
}

fn read_keepalive(t: Option<walk::Table<'_, '_>>) -> Keepalive {
    let mut k = Keepalive {
        interval: std::time::Duration::from_secs(15),
        timeout: std::time::Duration::from_secs(45),
    };
    let Some(t) = t else { return k };
    if let Some(d) = t.duration("interval") {
        k.interval = d;
    }
    if let Some(d) = t.duration("timeout") {
        k.timeout = d;
    }
    if k.interval.is_zero() || k.timeout <= k.interval {
        t.invalid(
            "timeout",
            "must be longer than keepalive.interval, which must be > 0",
        );
    }
    t.finish(&[]);
    k
}

fn read_log(t: &walk::Table<'_, '_>) -> LogSettings {
    let level = t.str("log_level").unwrap_or_else(|| "info".into());
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        t.invalid(
            "log_level",
            format!("`{level}` is not one of trace, debug, info, warn, error"),
        );
    }
    let format = match t.str("log_format").as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            t.invalid("log_format", format!("`{other}` is not one of text, json"));
            LogFormat::Text
        }
    };
    let lines = |key, default| {
        t.int_in(key, 0..=1_000_000)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default)
    };
    LogSettings {
        level,
        format,
        lines_per_second: lines("log_lines_per_second", LOG_LINES_PER_SECOND),
        lines_per_second_total: lines("log_lines_per_second_total", LOG_LINES_PER_SECOND_TOTAL),
        buffer_lines: t
            .int_in("log_buffer_lines", 1..=MAX_LOG_BUFFER_LINES as i64)
            .map_or(LOG_BUFFER_LINES, |n| n as usize),
    }
}

/// `admin_socket`: a path relative to the config file, short enough for a Unix socket.
fn read_admin_socket(t: &walk::Table<'_, '_>) -> Option<PathBuf> {
    let given = t.str("admin_socket")?;
    if given.is_empty() || given.ends_with('/') {
        t.invalid(
            "admin_socket",
            "must name a file (the socket), like /run/sgw-client/admin.sock",
        );
        return None;
    }
    let path = relative_to(t.cx.file(), &given);
    // sun_path holds 108 bytes with the terminating NUL.
    if path.as_os_str().len() > 107 {
        t.invalid("admin_socket", "a Unix socket's path is at most 107 bytes");
        return None;
    }
    Some(path)
}

/// Resolves a path in a config file relative to the file's directory.
fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Reads a secret given inline (`key`) or as a file (`key_file`); exactly one is required.
fn read_secret(t: &walk::Table<'_, '_>, key: &str, file_key: &str) -> Option<Secret> {
    let inline = t.str(key);
    let file = t.str(file_key);
    match (inline, file) {
        (Some(_), Some(_)) => {
            if let Some(v) = t.get(file_key) {
                t.err(
                    file_key,
                    v,
                    format!("give either {key} or {file_key}, not both"),
                );
            }
            None
        }
        (Some(s), None) if !s.is_empty() => Some(Secret::new(s)),
        (Some(_), None) => {
            if let Some(v) = t.get(key) {
                t.err(key, v, "must not be empty");
            }
            None
        }
        (None, Some(f)) => {
            let path = relative_to(t.cx.file(), &f);
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => Some(Secret::new(s.trim())),
                Ok(_) => {
                    if let Some(v) = t.get(file_key) {
                        t.err(file_key, v, format!("{} is empty", path.display()));
                    }
                    None
                }
                Err(e) => {
                    if let Some(v) = t.get(file_key) {
                        t.err(file_key, v, format!("cannot read {}: {e}", path.display()));
                    }
                    None
                }
            }
        }
        (None, None) => {
            t.missing(&format!("{key}` or `{file_key}"));
            None
        }
    }
}

/// Default `admin_max_connections`: the admin endpoint is local and answers quickly.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// `workers`: how many threads run the program's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// `"auto"`, the default: half the CPUs the process may use, at least one. The program
    /// shares its host with the traffic's other ends, and a worker per CPU cost more than
    /// it gained (docs/OPERATIONS.md, "Worker threads").
    Auto,
    /// A number of threads, 1 ..= [`MAX_WORKERS`].
    Count(usize),
}

/// The most `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// `workers = "auto"` or a count.
fn read_workers(t: &walk::Table<'_, '_>) -> Workers {
    let Some(w) = t.text("workers") else {
        return t
            .int_in("workers", 1..=MAX_WORKERS as i64)
            .map_or(Workers::Auto, |n| Workers::Count(n as usize));
    };
    let w = w.trim();
    if w.eq_ignore_ascii_case("auto") {
        return Workers::Auto;
    }
    match w.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Workers::Count(n),
        _ => {
            t.invalid(
                "workers",
                format!("`{w}` is neither \"auto\" nor a number of threads 1..={MAX_WORKERS}"),
            );
            Workers::Auto
        }
    }
}

/// PEM text inline (starting with `-----BEGIN`) or a path relative to the config file.
/// Certificates and keys from the network are PEM text; a path would read the gateway's files.
const NOT_PEM: &str = "must be PEM text starting with `-----BEGIN` (file paths are not read here)";

fn pem_source(t: &walk::Table<'_, '_>, key: &str) -> Option<Vec<u8>> {
    let s = t.str(key)?;
    if s.trim_start().starts_with("-----BEGIN") {
        return Some(s.into_bytes());
    }
    if t.cx.inline() {
        t.invalid(key, NOT_PEM);
        return None;
    }
    let path = relative_to(t.cx.file(), &s);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            if let Some(v) = t.get(key) {
                t.err(key, v, format!("cannot read {}: {e}", path.display()));
            }
            None
        }
    }
}

fn read_certs(t: &walk::Table<'_, '_>, key: &str) -> Option<Vec<CertificateDer<'static>>> {
    let pem = pem_source(t, key)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            if let Some(v) = t.get(key) {
                t.err(key, v, "contains no PEM certificate");
            }
            None
        }
        Err(e) => {
            if let Some(v) = t.get(key) {
                t.err(key, v, format!("bad PEM certificate: {e}"));
            }
            None
        }
    }
}

fn read_key(t: &walk::Table<'_, '_>, key: &str) -> Option<PrivateKeyDer<'static>> {
    let pem = pem_source(t, key)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(k) => Some(k),
        Err(_) => {
            // The error text could quote key material; say only what is wrong.
            if let Some(v) = t.get(key) {
                t.err(
                    key,
                    v,
                    "contains no usable PEM private key (PKCS#8, PKCS#1 or SEC1)",
                );
            }
            None
        }
    }
}

fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))
}

/// A client or gateway config, told apart by their top-level keys.
#[derive(Debug)]
pub enum AnyConfig {
    Client(Box<ClientConfig>),
    Gateway(Box<GatewayConfig>),
}

/// Loads a file as a client config if it has `[[gateway]]`, else as a gateway config.
pub fn load_any(path: &Path) -> Result<AnyConfig, ConfigErrors> {
    let src = read_file(path)?;
    let is_client = src
        .lines()
        .any(|l| l.trim_start().starts_with("[[gateway]]"));
    if is_client {
        ClientConfig::from_toml(path, &src).map(|c| AnyConfig::Client(Box::new(c)))
    } else {
        GatewayConfig::from_toml(path, &src).map(|c| AnyConfig::Gateway(Box::new(c)))
    }
}

/// `"443"` or `"20000-20100"`: a port or an inclusive range of ports, never 0.
pub fn parse_port_range(s: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo != 0 && lo <= hi).then_some(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert!(s.ct_eq("hunter2"));
        assert!(!s.ct_eq("hunter"));
        assert!(!s.ct_eq("hunter23"));
        assert!(!s.ct_eq(""));
    }
}
