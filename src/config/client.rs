//! `client.toml`: the on-prem daemon's configuration (the example with every key: config/client.toml).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::walk::Table;
use super::{
    read_admin_socket, read_certs, read_keepalive, read_limits, read_log, read_secret, relative_to,
    Keepalive, Limits, LogSettings, OutboundProxy, Policy, Secret,
};

/// A validated `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WssUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl WssUrl {
    pub fn parse(s: &str) -> Result<Self, super::BadValue> {
        Self::read(s).map_err(super::BadValue)
    }

    fn read(s: &str) -> Result<Self, String> {
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("the URL has spaces or control characters".into());
        }
        let rest = s
            .strip_prefix("wss://")
            .ok_or_else(|| format!("`{s}` must start with wss:// (the tunnel is always TLS)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not allowed; use token / token_file".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or("unclosed [ in IPv6 address")?;
            let rest = &v6[end + 1..];
            let port = rest.strip_prefix(':');
            if port.is_none() && !rest.is_empty() {
                return Err(format!("`{s}`: only `:PORT` may follow `]`"));
            }
            (v6[..end].to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?,
        };
        Ok(WssUrl {
            host,
            port,
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for WssUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "wss://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "wss://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// Which certificates the client trusts for the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's trust store.
    System,
    /// Only these CA certificates.
    Certs(Vec<CertificateDer<'static>>),
}

/// One `[[gateway]]` entry: one logical gateway, served by one or more replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayLink {
    /// `url`, or each of `urls`: the client holds `tunnels` tunnels to every one, so a caller
    /// arriving at any replica finds this client there.
    pub replicas: Vec<Replica>,
    pub gateway_id: String,
    pub token: Secret,
    pub trust: Trust,
    /// Tunnels to each replica.
    pub tunnels: usize,
}

/// One address of a gateway and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub url: WssUrl,
    /// The proxy to reach it through (`outbound_proxy` unless `no_proxy` matches).
    pub proxy: Option<OutboundProxy>,
}

/// Most `urls` one `[[gateway]]` may list (each gets `tunnels` tunnels).
pub const MAX_REPLICAS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    pub initial: Duration,
    pub max: Duration,
}

impl Reconnect {
    /// Delay before reconnect attempt `attempt` (0-based): exponential from `initial` to
    /// `max`, with full jitter in the upper half so a fleet does not reconnect in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.min(20));
        let cap = exp.min(self.max);
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Validated client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub gateways: Vec<GatewayLink>,
    pub acl_file: PathBuf,
    pub default_policy: Policy,
    pub reconnect: Reconnect,
    pub keepalive: Keepalive,
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin endpoint (all but `/healthz`, `/readyz`, `/metrics`); none:
    /// status, ACL and log-level calls are refused.
    pub admin_token: Option<Secret>,
    /// Names a request to the admin endpoint may carry in `Host`, besides `localhost` and IP
    /// literals (for a name the operator uses to reach it).
    pub admin_hosts: Vec<String>,
    /// Admin connections served at once (`admin_max_connections`).
    pub admin_max_connections: usize,
    /// The admin endpoint on a Unix socket as well (`admin_socket`): this user and root only,
    /// no token needed.
    pub admin_socket: Option<PathBuf>,
    /// How long open streams may finish after SIGTERM before the process exits.
    pub shutdown_grace: Duration,
    pub limits: Limits,
    pub log: LogSettings,
    /// An on-prem SOCKS5 listener whose CONNECTs go through the first gateway, which dials
    /// them within its `egress_allow`.
    pub socks5_listen: Option<SocketAddr>,
    /// Local certificate material per destination id (`[[destinations]]`): replaces what the
    /// gateway sends, so a client key never has to leave the on-prem host.
    pub destinations: std::collections::HashMap<String, DestOverride>,
    /// Local ports a gateway may make this client listen on for reverse destinations
    /// (`reverse_ports = ["18443", "20000-20100"]`); empty, the default: none.
    pub reverse_ports: Vec<std::ops::RangeInclusive<u16>>,
    /// Threads that run the client's tasks (`workers`).
    pub workers: super::Workers,
}

/// `[[destinations]]` in client.toml: local TLS material for one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestOverride {
    /// Certificate chain (PEM) presented to the endpoint with `tls = "mutualauth"`.
    pub dest_cert: Option<String>,
    pub dest_key: Option<Secret>,
    /// CA certificates (PEM) trusted for the endpoint.
    pub client_certs: Option<Vec<String>>,
    /// Reverse destinations: the address to listen on (default 127.0.0.1).
    pub local_host: Option<std::net::IpAddr>,
}

const LATER: &[&str] = &[];

impl ClientConfig {
    /// Warnings for `sgw config check`: settings that load but likely don't do what the
    /// operator wants. `file` is where this config was read from.
    pub fn warnings(&self, file: &Path) -> Vec<String> {
        let beside = file.parent().map(|d| d.join("gateway.toml"));
        let gateway_here = beside.as_ref().is_some_and(|g| g.exists());
        let mut out = Vec::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let Some(url) = g.replicas.first().map(|r| &r.url) else {
                continue;
            };
            let host = url.host.as_str();
            let loopback = host == "localhost"
                || host.ends_with(".localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if loopback && !gateway_here {
                out.push(format!(
                    "gateway[{i}].url: {} points at this host, but no gateway.toml is next to {}: \
                     on an on-prem host the url must name the gateway host \
                     (on the gateway host: sgw init --public NAME, then sgw enroll)",
                    url,
                    file.display()
                ));
            }
        }
        out
    }
}

/// `url = "wss://..."`, or `urls = [...]` for a gateway run as several replicas.
fn read_urls(g: &Table<'_, '_>) -> Option<Vec<WssUrl>> {
    let list = match (g.str("url"), g.strs("urls")) {
        (Some(_), Some(_)) => {
            g.invalid("urls", "give either url or urls, not both");
            return None;
        }
        (Some(u), None) => {
            return match WssUrl::parse(&u) {
                Ok(u) => Some(vec![u]),
                Err(e) => {
                    g.invalid("url", e);
                    None
                }
            }
        }
        (None, Some(list)) => list,
        (None, None) => {
            g.missing("url");
            return None;
        }
    };
    if list.is_empty() || list.len() > MAX_REPLICAS {
        g.invalid("urls", format!("list 1 to {MAX_REPLICAS} gateway URLs"));
        return None;
    }
    let mut out: Vec<WssUrl> = Vec::new();
    for (i, u) in list.iter().enumerate() {
        match WssUrl::parse(u) {
            Ok(u) if out.contains(&u) => {
                g.invalid("urls", format!("`{u}` is listed twice"));
                return None;
            }
            Ok(u) => out.push(u),
            Err(e) => {
                g.invalid("urls", format!("[{i}]: {e}"));
                return None;
            }
        }
    }
    Some(out)
}

fn read(root: &Table<'_, '_>) -> Option<ClientConfig> {
    let outbound_proxy = root
        .str("outbound_proxy")
        .and_then(|s| match OutboundProxy::parse(&s) {
            Ok(p) => Some(p),
            Err(e) => {
                root.invalid("outbound_proxy", e);
                None
            }
        });
    let no_proxy = root.strs("no_proxy").unwrap_or_default();
    let mut gateways = Vec::new();
    let entries = root.tables("gateway");
    if entries.is_empty() && !root.has("gateway") {
        root.missing("gateway");
    }
    for g in entries {
        let urls = read_urls(&g);
        let gateway_id = g.req_str("gateway_id");
        let token = read_secret(&g, "token", "token_file");
        let trust = match g.has("ca_file") {
            false => Some(Trust::System),
            true => read_certs(&g, "ca_file").map(Trust::Certs),
        };
        let tunnels = g.int_in("tunnels", 1..=16).unwrap_or(2) as usize;
        g.finish(&[]);
        if let (Some(urls), Some(gateway_id), Some(token), Some(trust)) =
            (urls, gateway_id, token, trust)
        {
            let replicas = urls
                .into_iter()
                .map(|url| Replica {
                    proxy: outbound_proxy
                        .clone()
                        .filter(|_| !super::no_proxy_bypass(&no_proxy, &url.host)),
                    url,
                })
                .collect();
            gateways.push(GatewayLink {
                replicas,
                gateway_id,
                token,
                trust,
                tunnels,
            });
        }
    }
    let acl_file = relative_to(
        root.cx.file(),
        &root.str("acl_file").unwrap_or_else(|| "acl.list".into()),
    );
    let default_policy = match root.str("default_policy").as_deref() {
        None | Some("deny") => Policy::Deny,
        Some("allow") => Policy::Allow,
        Some(other) => {
            root.invalid(
                "default_policy",
                format!("`{other}` is not one of deny, allow"),
            );
            Policy::Deny
        }
    };
    let mut reconnect = Reconnect {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    if let Some(t) = root.table("reconnect") {
        if let Some(d) = t.duration("initial") {
            reconnect.initial = d;
        }
        if let Some(d) = t.duration("max") {
            reconnect.max = d;
        }
        if reconnect.initial.is_zero() || reconnect.max < reconnect.initial {
            if t.has("max") {
                t.invalid(
                    "max",
                    "must be at least reconnect.initial, which must be > 0",
                );
            } else {
                t.invalid("initial", "must be > 0 and at most reconnect.max");
            }
        }
        t.finish(&[]);
    }
    let keepalive = read_keepalive(root.table("keepalive"));
    let admin_listen = match root.str("admin_listen") {
        None => SocketAddr::from(([127, 0, 0, 1], 9003)),
        Some(s) => match s.parse() {
            Ok(a) => a,
            Err(_) => {
                root.invalid("admin_listen", format!("`{s}` is not an ip:port address"));
                SocketAddr::from(([127, 0, 0, 1], 9003))
            }
        },
    };
    let admin_token = (root.has("admin_token") || root.has("admin_token_file"))
        .then(|| read_secret(root, "admin_token", "admin_token_file"))
        .flatten();
    let admin_hosts = root.strs("admin_hosts").unwrap_or_default();
    let admin_max_connections = root
        .int_in("admin_max_connections", 1..=10_000)
        .map_or(super::ADMIN_MAX_CONNECTIONS, |n| n as usize);
    let admin_socket = read_admin_socket(root);
    let mut reverse_ports = Vec::new();
    for p in root.strs("reverse_ports").unwrap_or_default() {
        match super::parse_port_range(&p) {
            Some(r) => reverse_ports.push(r),
            None => root.invalid(
                "reverse_ports",
                format!("`{p}` is not a port or a `low-high` port range (1..=65535)"),
            ),
        }
    }
    let mut limits = read_limits(root.table("limits"));
    // On the client each gateway's share; unset, the gateways split the budget evenly, so
    // one gateway's callers can't refuse the others'.
    if !root
        .table("limits")
        .is_some_and(|t| t.has("window_budget_per_gateway"))
    {
        let n = u64::try_from(gateways.len()).unwrap_or(1).max(1);
        limits.window_budget_per_gateway = limits.window_budget / n;
    }
    // A share that can't hold one stream's first window would refuse every stream.
    let window = u64::from(limits.stream_window);
    if limits.window_budget_per_gateway < window {
        if let Some(t) = root.table("limits") {
            let share = limits.window_budget_per_gateway;
            let why = format!("leaves each gateway {share} bytes, less than one stream's stream_window ({window})");
            if t.has("window_budget_per_gateway") {
                t.invalid("window_budget_per_gateway", why);
            } else if t.has("window_budget") {
                t.invalid(
                    "window_budget",
                    format!("split over {} gateways {why}", gateways.len()),
                );
            } else {
                t.invalid("stream_window", why);
            }
        }
    }
    let log = read_log(root);
    let mut destinations = std::collections::HashMap::new();
    for d in root.tables("destinations") {
        let id = d.req_str("id");
        let o = DestOverride {
            dest_cert: d
                .has("dest_cert")
                .then(|| super::endpoint::read_cert_pem(&d, "dest_cert"))
                .flatten(),
            dest_key: d
                .has("dest_key")
                .then(|| super::endpoint::read_key_pem(&d, "dest_key"))
                .flatten(),
            client_certs: d
                .has("client_certs")
                .then(|| super::endpoint::read_client_certs(&d))
                .flatten(),
            local_host: d.str("local_host").and_then(|h| match h.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    d.invalid("local_host", format!("`{h}` is not an IP address"));
                    None
                }
            }),
        };
        if d.has("dest_cert") != d.has("dest_key") {
            let k = if d.has("dest_cert") {
                "dest_cert"
            } else {
                "dest_key"
            };
            d.invalid(k, "dest_cert and dest_key go together");
        }
        if let (Some(id), Some(v)) = (id, d.get("id")) {
            if destinations.insert(id.clone(), o).is_some() {
                d.err("id", v, format!("duplicate destination id `{id}`"));
            }
        }
        d.finish(&[]);
    }
    let socks5_listen = root.str("socks5_listen").and_then(|s| match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            root.invalid("socks5_listen", format!("`{s}` is not an ip:port address"));
            None
        }
    });
    Some(ClientConfig {
        socks5_listen,
        destinations,
        gateways,
        acl_file,
        default_policy,
        reconnect,
        keepalive,
        admin_listen,
        admin_token,
        admin_hosts,
        admin_max_connections,
        admin_socket,
        reverse_ports,
        shutdown_grace: root
            .duration("shutdown_grace")
            .unwrap_or(Duration::from_secs(30)),
        limits,
        log,
        workers: super::read_workers(root),
    })
}

config_document!(ClientConfig, "CLIENT", LATER, read);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = WssUrl::parse("wss://gw.example:8443/tunnel").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("gw.example", 8443, "/tunnel")
        );
        let u = WssUrl::parse("wss://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(WssUrl::parse("wss://h").unwrap().port, 443);
        assert!(WssUrl::parse("ws://h").is_err());
        assert!(WssUrl::parse("wss://u:p@h").is_err());
        assert!(WssUrl::parse("wss://h:99999").is_err());
    }

    /// A one-gateway client.toml `c.toml` with `top` in front, read under `env`; the errors
    /// joined.
    fn load_with(top: &str, env: &[(&str, &str)]) -> Result<ClientConfig, String> {
        let base = "acl_file = \"acl.list\"\n[[gateway]]\nurl = \"wss://a:1/t\"\ngateway_id = \"a\"\ntoken = \"t\"\n";
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientConfig::from_toml_env(Path::new("c.toml"), &format!("{top}{base}"), env)
            .map_err(|e| e.0.join("\n"))
    }

    /// `workers`: "auto" (also when unset) or a count, from the file or the environment;
    /// anything else is an error naming the file, line and key.
    #[test]
    fn workers_is_auto_or_a_count() {
        let load = |top: &str, env: &[(&str, &str)]| load_with(top, env).map(|c| c.workers);
        use super::super::Workers::{Auto, Count};
        assert_eq!(load("", &[]), Ok(Auto));
        assert_eq!(load("workers = \"auto\"\n", &[]), Ok(Auto));
        assert_eq!(load("workers = 4\n", &[]), Ok(Count(4)));
        assert_eq!(load("workers = \"4\"\n", &[]), Ok(Count(4)));
        assert_eq!(load("workers = \" Auto \"\n", &[]), Ok(Auto));
        assert_eq!(load("workers = 1024\n", &[]), Ok(Count(1024)));
        for bad in ["-1", "1025", "2.5", "true", "\"1025\"", "\"\""] {
            let e = load(&format!("workers = {bad}\n"), &[]).unwrap_err();
            assert!(e.contains("c.toml:1:11: workers: "), "{bad}: {e}");
        }
        assert_eq!(
            load("workers = 4\n", &[("SGW_CLIENT_WORKERS", "1")]),
            Ok(Count(1))
        );
        assert_eq!(load("", &[("SGW_CLIENT_WORKERS", "auto")]), Ok(Auto));
        let e = load("workers = 0\n", &[]).unwrap_err();
        assert!(
            e.contains("c.toml:1:11: workers: 0 is out of range 1..=1024"),
            "{e}"
        );
        let e = load("workers = \"all\"\n", &[]).unwrap_err();
        assert!(
            e.contains(
                "c.toml:1:11: workers: `all` is neither \"auto\" nor a number of threads 1..=1024"
            ),
            "{e}"
        );
        let e = load("", &[("SGW_CLIENT_WORKERS", "lots")]).unwrap_err();
        assert!(e.contains("SGW_CLIENT_WORKERS"), "{e}");
        assert!(e.contains("`lots` is neither"), "{e}");
    }

    /// `log_buffer_lines`: 4096 when unset, a count from the file or the environment, and
    /// anything else an error with file, line and key.
    #[test]
    fn log_buffer_lines_is_a_count_of_lines() {
        let load =
            |top: &str, env: &[(&str, &str)]| load_with(top, env).map(|c| c.log.buffer_lines);
        assert_eq!(load("", &[]), Ok(super::super::LOG_BUFFER_LINES));
        assert_eq!(load("log_buffer_lines = 64\n", &[]), Ok(64));
        assert_eq!(load("log_buffer_lines = 100_000\n", &[]), Ok(100_000));
        assert_eq!(
            load(
                "log_buffer_lines = 64\n",
                &[("SGW_CLIENT_LOG_BUFFER_LINES", "128")]
            ),
            Ok(128)
        );
        for bad in ["0", "100001", "\"many\"", "2.5"] {
            let e = load(&format!("log_buffer_lines = {bad}\n"), &[]).unwrap_err();
            assert!(e.contains("c.toml:1:20: log_buffer_lines: "), "{bad}: {e}");
        }
    }

    /// Unset, the configured gateways split the window budget evenly; set, each gets it.
    #[test]
    fn each_gateway_gets_a_share_of_the_window_budget() {
        let two = "acl_file = \"acl.list\"\n[[gateway]]\nurl = \"wss://a:1/t\"\ngateway_id = \"a\"\ntoken = \"t\"\n[[gateway]]\nurl = \"wss://b:1/t\"\ngateway_id = \"b\"\ntoken = \"t\"\n";
        let load = |src: &str| ClientConfig::from_toml(Path::new("c.toml"), src).unwrap();
        let c = load(&format!("{two}[limits]\nwindow_budget = \"8MiB\"\n"));
        assert_eq!(c.limits.window_budget_per_gateway, 4 << 20);
        let c = load(&format!(
            "{two}[limits]\nwindow_budget = \"8MiB\"\nwindow_budget_per_gateway = \"6MiB\"\n"
        ));
        assert_eq!(c.limits.window_budget_per_gateway, 6 << 20);
        // A share too small for one stream's window is an error naming the key that set it.
        let errs = |limits: &str| {
            ClientConfig::from_toml(Path::new("c.toml"), &format!("{two}[limits]\n{limits}"))
                .map(|_| String::new())
                .unwrap_or_else(|e| e.0.join("\n"))
        };
        let e = errs("window_budget = \"1MiB\"\nstream_window = \"1MiB\"\n");
        assert!(
            e.contains("c.toml:11:17: limits.window_budget: split over 2 gateways leaves each gateway 524288 bytes, less than one stream's stream_window (1048576)"),
            "{e}"
        );
        let e = errs("window_budget_per_gateway = \"1MiB\"\nstream_window = \"2MiB\"\n");
        assert!(
            e.contains("limits.window_budget_per_gateway: leaves each gateway 1048576 bytes"),
            "{e}"
        );
        let one = two
            .split("[[gateway]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("[[gateway]]");
        let c = load(&one);
        assert_eq!(c.limits.window_budget_per_gateway, c.limits.window_budget);
    }

    #[test]
    fn environment_overrides_every_kind_of_value() {
        let src = "acl_file = \"acl.list\"\n[[gateway]]\nurl = \"wss://gw:1/t\"\ngateway_id = \"g\"\ntoken = \"from-file\"\n";
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = ClientConfig::from_toml_env(
            Path::new("c.toml"),
            src,
            env(&[
                ("SGW_CLIENT_DEFAULT_POLICY", "allow"),
                ("SGW_CLIENT_TOKEN", "from-env"),
                ("SGW_CLIENT_GATEWAY_TUNNELS", "3"),
                ("SGW_CLIENT_LIMITS_STREAM_WINDOW", "1MiB"),
                ("SGW_CLIENT_KEEPALIVE_INTERVAL", "5s"),
                ("SGW_CLIENT_NO_PROXY", "a.example, 10.0.0.0/8"),
                ("SGW_CLIENT_OUTBOUND_PROXY", "http://p:3128"),
                ("SGW_CLIENT_CONFIG", "ignored: a command-line option"),
            ]),
        )
        .unwrap();
        assert_eq!(c.default_policy, Policy::Allow);
        assert_eq!(c.gateways[0].token.expose(), "from-env");
        assert_eq!(c.gateways[0].tunnels, 3);
        assert_eq!(c.limits.stream_window, 1 << 20);
        assert_eq!(c.keepalive.interval, Duration::from_secs(5));
        assert!(
            c.gateways[0].replicas[0].proxy.is_some(),
            "gw not in no_proxy"
        );
        let errs = ClientConfig::from_toml_env(
            Path::new("c.toml"),
            src,
            env(&[
                ("SGW_CLIENT_GATEWAY_TUNNELS", "99"),
                ("SGW_CLIENT_DEFAULT_POLICY", "maybe"),
            ]),
        )
        .unwrap_err()
        .0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter().any(
                |e| e.starts_with("environment SGW_CLIENT_GATEWAY_TUNNELS: 99 is out of range")
            ),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("SGW_CLIENT_DEFAULT_POLICY")),
            "{errs:?}"
        );
    }

    #[test]
    fn an_admin_socket_must_name_a_file() {
        for v in ["\"\"", "\"/run/sgw-client/\""] {
            let src = format!("admin_socket = {v}\n[[gateway]]\nurl = \"wss://gw:1/t\"\ngateway_id = \"g\"\ntoken = \"t\"\n");
            let errs = ClientConfig::from_toml(Path::new("c.toml"), &src)
                .unwrap_err()
                .0
                .join("\n");
            assert!(
                errs.contains("c.toml:1:16: admin_socket: must name a file"),
                "{v}: {errs}"
            );
        }
    }

    #[test]
    fn all_errors_at_once_with_lines() {
        let src = r#"
log_level = "loud"
bogus = 1
[[gateway]]
url = "http://x"
gateway_id = "g"
token = "t"
tunnels = 99
[reconnect]
initial = "soon"
[limits]
stream_window = "1KiB"
"#;
        let src = format!("log_lines_per_second = -1\n{src}");
        let src = src.as_str();
        let errs = ClientConfig::from_toml(Path::new("c.toml"), src)
            .unwrap_err()
            .0;
        let all = errs.join("\n");
        for want in [
            "c.toml:3:13: log_level: `loud` is not one of",
            "c.toml:4:1: bogus: unknown key",
            "c.toml:6:7: gateway[0].url: `http://x` must start with wss://",
            "c.toml:9:11: gateway[0].tunnels: 99 is out of range 1..=16",
            "c.toml:11:11: reconnect.initial: `soon` is not a duration",
            "c.toml:13:17: limits.stream_window: 1024 is out of range",
            "c.toml:1:24: log_lines_per_second: -1 is out of range 0..=1000000",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert_eq!(errs.len(), 7, "{all}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let src = "[[gateway]]\nurl = \"wss://127.0.0.1:1/\"\ngateway_id = \"g\"\ntoken = \"s3cr3t-token\"\n";
        let c = ClientConfig::from_toml(Path::new("c.toml"), src).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.gateways[0].tunnels, 2);
        assert_eq!(c.default_policy, Policy::Deny);
    }
}
