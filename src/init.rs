//! `sgw init`: writes a CA, a gateway certificate, a token and matching gateway/client
//! configs and ACL, so a gateway and a client work together out of the box, on one host or
//! (with `--public`, then `sgw enroll`) on two.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Secret;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// One exposed on-prem service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub host: String,
    pub port: u16,
    /// 0 lets the gateway pick.
    pub cloud_port: u16,
}

impl std::str::FromStr for Expose {
    type Err = crate::config::BadValue;

    /// `HOST:PORT[@CLOUD_PORT]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expose::read(s).map_err(crate::config::BadValue)
    }
}

impl Expose {
    fn read(s: &str) -> Result<Self, String> {
        let (target, cloud) = match s.split_once('@') {
            Some((t, c)) => (
                t,
                c.parse::<u16>()
                    .map_err(|_| format!("bad cloud port `{c}`"))?,
            ),
            None => (s, 0),
        };
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT[@CLOUD_PORT]"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("bad port `{port}`"))?;
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(Expose {
            host: host.to_owned(),
            port,
            cloud_port: cloud,
        })
    }
}

/// Options for [`write`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Tunnel endpoint address the gateway listens on.
    pub listen: String,
    /// Names and addresses clients reach the gateway by (`--public`): all go into the gateway
    /// certificate, beside loopback; the first is the client URL's host. Empty: see
    /// [`public_names`].
    pub public: Vec<String>,
    /// Host where destinations listen for callers.
    pub cloud_host: String,
    pub expose: Vec<Expose>,
    /// The client's admin endpoint (health, metrics, ACL changes).
    pub admin_listen: String,
    /// The gateway's management API and admin endpoint (loopback by default).
    pub api_listen: String,
    pub gateway_admin_listen: String,
    /// Where the API keeps what it creates; `None`: `state.json` beside gateway.toml, or for
    /// `/etc/sgw` (the packaged layout, where the gateway's unit may write only there)
    /// `/var/lib/sgw/state.json`.
    pub state_file: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            listen: "127.0.0.1:9000".into(),
            public: Vec::new(),
            cloud_host: "127.0.0.1".into(),
            expose: Vec::new(),
            admin_listen: "127.0.0.1:9003".into(),
            api_listen: "127.0.0.1:9443".into(),
            gateway_admin_listen: "127.0.0.1:9004".into(),
            state_file: None,
        }
    }
}

/// Paths of the files written, and what init chose.
#[derive(Debug, Clone)]
pub struct Written {
    pub gateway_toml: PathBuf,
    pub client_toml: PathBuf,
    pub acl: PathBuf,
    /// The management API's admin token.
    pub api_token: PathBuf,
    /// The tunnel URL clients are given (client.toml, `public_url`).
    pub url: String,
    /// Names the gateway certificate holds.
    pub names: Vec<String>,
    /// Set when no `--public` was given: what init chose, and why.
    pub chosen: Option<String>,
    /// `state_file` as written into gateway.toml.
    pub state_file: String,
}

/// The names clients reach the gateway by: `--public` as given; else the listen address when
/// it is a concrete one (`localhost` for loopback); else, for a wildcard, this host's name.
/// The second value says what was chosen when nothing was given.
pub fn public_names(listen: &str, public: &[String]) -> (Vec<String>, Option<String>) {
    if !public.is_empty() {
        return (public.to_vec(), None);
    }
    let host = listen
        .rsplit_once(':')
        .map_or(listen, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
        || host == "localhost";
    let wildcard = host.is_empty() || host == "0.0.0.0" || host == "::";
    if loopback {
        (vec!["localhost".into()], None)
    } else if wildcard {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let why = format!(
            "--listen {listen} is a wildcard, so clients are told to connect to this host's name `{name}`; \
             if they reach it by another name or address, run init again with --public NAME_OR_IP"
        );
        (vec![name], Some(why))
    } else {
        (vec![host.to_owned()], None)
    }
}

/// client.toml for one gateway: the token in `token`, the CA in `ca.pem` when `with_ca`, the
/// ACL in `acl.list`, default deny. Shared by `sgw init` and `sgw client --enroll`.
pub fn client_toml(url: &str, gateway_id: &str, with_ca: bool, admin_listen: &str) -> String {
    let ca = if with_ca {
        "ca_file = \"ca.pem\"\n"
    } else {
        "# no ca_file: the system's trusted roots verify the gateway\n"
    };
    format!(
        "# sgw client. Paths are relative to this file.\nacl_file = \"acl.list\"\ndefault_policy = \"deny\"\nadmin_listen = {}\nadmin_token_file = \"admin.token\"\n\n[[gateway]]\nurl = {}\ngateway_id = {}\ntoken_file = \"token\"\n{ca}tunnels = 2\n\n[reconnect]\ninitial = \"1s\"\nmax = \"60s\"\n\n[keepalive]\ninterval = \"15s\"\ntimeout = \"45s\"\n",
        toml_str(admin_listen),
        toml_str(url),
        toml_str(gateway_id),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0} already exists; remove it or choose another directory")]
    Exists(String),
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), InitError> {
    let io_err = |source| InitError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            InitError::Exists(path.display().to_string())
        } else {
            io_err(e)
        }
    })?;
    if let Some(dir) = path.parent() {
        crate::fsutil::own_like_dir(&f, dir);
    }
    io::Write::write_all(&mut f, contents.as_bytes()).map_err(io_err)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A new CA and a server certificate it signs for `names`, with the server's key.
pub fn ca_and_server(
    ca_name: &str,
    server_name: &str,
    names: Vec<String>,
) -> Result<
    (
        CertifiedIssuer<'static, KeyPair>,
        rcgen::Certificate,
        KeyPair,
    ),
    rcgen::Error,
> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, server_name);
    let cert = params.signed_by(&key, &ca)?;
    Ok((ca, cert, key))
}

/// Writes everything into `dir` (created if missing). Refuses to overwrite existing files.
pub fn write(dir: &Path, opts: &InitOptions) -> Result<Written, InitError> {
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (public, chosen) = public_names(&opts.listen, &opts.public);
    let mut names = public.clone();
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|p| p == n) {
            names.push(n.to_owned());
        }
    }
    let (ca, gw_cert, gw_key) = ca_and_server("sgw local CA", "sgw gateway", names.clone())?;
    let token = Secret::generate();
    // The client's admin token (ACL changes and status need it, docs/SECURITY.md), and the
    // gateway's (API account-level calls, admin endpoint status).
    let admin_token = Secret::generate();
    let api_token = Secret::generate();

    let files = [
        ("ca.pem", ca.pem(), false),
        ("gateway.pem", gw_cert.pem(), false),
        ("gateway.key", gw_key.serialize_pem(), true),
        ("token", format!("{}\n", token.expose()), true),
        ("admin.token", format!("{}\n", admin_token.expose()), true),
        ("api.token", format!("{}\n", api_token.expose()), true),
    ];
    for (name, body, private) in &files {
        write_file(&dir.join(name), body, *private)?;
    }

    let port = opts.listen.rsplit_once(':').map_or("443", |(_, p)| p);
    let first = &public[0];
    let url = if first.contains(':') {
        format!("wss://[{first}]:{port}/tunnel")
    } else {
        format!("wss://{first}:{port}/tunnel")
    };
    let state_file = opts.state_file.clone().unwrap_or_else(|| {
        // However it was named (`cd /etc && sgw init sgw`).
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if dir == Path::new("/etc/sgw") {
            "/var/lib/sgw/state.json".into()
        } else {
            "state.json".into()
        }
    });
    let mut gw = String::new();
    let _ = writeln!(
        gw,
        "# sgw gateway, written by `sgw init`. Paths are relative to this file.\n\
         listen = {}\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
         # What `sgw enroll` hands to clients: the URL they dial and the CA they trust.\n\
         public_url = {}\nenroll_ca_file = \"ca.pem\"\n\n\
         # Management API (docs/API.md) and admin endpoint (/metrics), on loopback.\n\
         api_listen = {}\nadmin_listen = {}\nadmin_token_file = \"api.token\"\nstate_file = {}\n",
        toml_str(&opts.listen),
        toml_str(&url),
        toml_str(&opts.api_listen),
        toml_str(&opts.gateway_admin_listen),
        toml_str(&state_file),
    );
    let _ = writeln!(
        gw,
        "[[gateways]]\nid = \"gw1\"\ndesc = \"written by sgw init\"\ntoken_file = \"token\"\n"
    );
    for (i, e) in opts.expose.iter().enumerate() {
        let _ = writeln!(
            gw,
            "[[gateways.destinations]]\nid = \"dest{}\"\nprotocol = \"TCP\"\nip = {}\nport = {}\ncloud_host = {}\ncloud_port = {}\n",
            i + 1,
            toml_str(&e.host),
            e.port,
            toml_str(&opts.cloud_host),
            e.cloud_port
        );
    }
    let client = client_toml(&url, "gw1", true, &opts.admin_listen);
    let mut acl = String::from(
        "# sgw ACL, written by `sgw init`: first matching rule decides, default deny.\n",
    );
    for e in &opts.expose {
        let h = if e.host.contains(':') {
            format!("[{}]", e.host)
        } else {
            e.host.clone()
        };
        let _ = writeln!(acl, "acl allow {h}:{}", e.port);
    }
    let w = Written {
        gateway_toml: dir.join("gateway.toml"),
        client_toml: dir.join("client.toml"),
        acl: dir.join("acl.list"),
        api_token: dir.join("api.token"),
        url,
        names,
        chosen,
        state_file,
    };
    write_file(&w.gateway_toml, &gw, false)?;
    write_file(&w.client_toml, &client, false)?;
    write_file(&w.acl, &acl, false)?;
    Ok(w)
}

/// What `sgw init` prints: what it wrote, the names it chose, how to run both sides, how to
/// call the API, and how an on-prem host joins.
pub fn summary(w: &Written, opts: &InitOptions) -> String {
    let dir = w
        .gateway_toml
        .parent()
        .map_or_else(|| ".".into(), |d| d.display().to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wrote {}, {}, {}, certificates and tokens",
        w.gateway_toml.display(),
        w.client_toml.display(),
        w.acl.display()
    );
    let _ = writeln!(
        out,
        "the gateway certificate is valid for: {}",
        w.names.join(", ")
    );
    let _ = writeln!(out, "clients dial: {}", w.url);
    let _ = writeln!(
        out,
        "the management API keeps its changes in {}",
        w.state_file
    );
    if let Some(why) = &w.chosen {
        let _ = writeln!(out, "note: {why}");
    }
    let _ = writeln!(
        out,
        "run the gateway: sgw gateway --config {}",
        w.gateway_toml.display()
    );
    let _ = writeln!(
        out,
        "a client on this host: sgw client --config {}",
        w.client_toml.display()
    );
    let _ = writeln!(
        out,
        "a client on another host: sgw enroll gw1 --config {} (prints the line to give it)",
        w.gateway_toml.display()
    );
    let api = opts.api_listen.replacen("127.0.0.1", "localhost", 1);
    let _ = writeln!(
        out,
        "management API: curl --cacert {dir}/ca.pem -H \"Authorization: Bearer $(cat {})\" https://{api}/v1/sgconfig",
        w.api_token.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_syntax() {
        assert_eq!(
            "127.0.0.1:5201@7501".parse::<Expose>().unwrap(),
            Expose {
                host: "127.0.0.1".into(),
                port: 5201,
                cloud_port: 7501
            }
        );
        assert_eq!("db:5432".parse::<Expose>().unwrap().cloud_port, 0);
        assert_eq!("[::1]:80".parse::<Expose>().unwrap().host, "::1");
        assert!("nohost".parse::<Expose>().is_err());
        assert!("h:0".parse::<Expose>().is_err());
        assert!("h:1@x".parse::<Expose>().is_err());
    }
}
