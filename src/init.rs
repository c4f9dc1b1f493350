//! `sgw init`: writes a CA, a gateway certificate, a token and matching gateway/client
//! configs and ACL, so a gateway and a client work together out of the box.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

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
    type Err = String;

    /// `HOST:PORT[@CLOUD_PORT]`
    fn from_str(s: &str) -> Result<Self, String> {
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
    /// Tunnel endpoint address the gateway listens on and the client dials.
    pub listen: String,
    /// Host where destinations listen for callers.
    pub cloud_host: String,
    pub expose: Vec<Expose>,
    /// Names and addresses the gateway certificate is valid for.
    pub names: Vec<String>,
    /// The client's admin endpoint (health, metrics, ACL changes).
    pub admin_listen: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            listen: "127.0.0.1:9000".into(),
            cloud_host: "127.0.0.1".into(),
            expose: Vec::new(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            admin_listen: "127.0.0.1:9003".into(),
        }
    }
}

/// Paths of the files written.
#[derive(Debug, Clone)]
pub struct Written {
    pub gateway_toml: PathBuf,
    pub client_toml: PathBuf,
    pub acl: PathBuf,
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
    let (ca, gw_cert, gw_key) = ca_and_server("sgw local CA", "sgw gateway", opts.names.clone())?;
    let token = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );

    // The client's admin token: ACL changes and status need it (docs/SECURITY.md).
    let admin_token = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );

    let files = [
        ("ca.pem", ca.pem(), false),
        ("gateway.pem", gw_cert.pem(), false),
        ("gateway.key", gw_key.serialize_pem(), true),
        ("token", format!("{token}\n"), true),
        ("admin.token", format!("{admin_token}\n"), true),
    ];
    for (name, body, private) in &files {
        write_file(&dir.join(name), body, *private)?;
    }

    let mut gw = String::new();
    let _ = writeln!(gw, "# sgw gateway, written by `sgw init`.\nlisten = {}\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n", toml_str(&opts.listen));
    let _ = writeln!(
        gw,
        "[[gateways]]\nid = \"gw1\"\ndesc = \"written by sgw init\"\ntoken_file = \"token\"\n"
    );
    for (i, e) in opts.expose.iter().enumerate() {
        let _ = writeln!(
            gw,
            "[[gateways.destinations]]\nid = \"dest{}\"\nprotocol = \"TCP\"\nip = {}\nport = {}\ncloud_host = {}\ncloud_port = {}\ntimeout = 30\n",
            i + 1,
            toml_str(&e.host),
            e.port,
            toml_str(&opts.cloud_host),
            e.cloud_port
        );
    }
    let host = opts.listen.rsplit_once(':').map_or("localhost", |(h, _)| h);
    let port = opts.listen.rsplit_once(':').map_or("9000", |(_, p)| p);
    let host = if host == "127.0.0.1" || host == "0.0.0.0" {
        "localhost"
    } else {
        host
    };
    let admin = &opts.admin_listen;
    let client = format!(
        "# sgw client, written by `sgw init`.\nacl_file = \"acl.list\"\ndefault_policy = \"deny\"\nadmin_listen = \"{admin}\"\nadmin_token_file = \"admin.token\"\n\n[[gateway]]\nurl = \"wss://{host}:{port}/tunnel\"\ngateway_id = \"gw1\"\ntoken_file = \"token\"\nca_file = \"ca.pem\"\ntunnels = 2\n\n[reconnect]\ninitial = \"1s\"\nmax = \"60s\"\n\n[keepalive]\ninterval = \"15s\"\ntimeout = \"45s\"\n"
    );
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
    };
    write_file(&w.gateway_toml, &gw, false)?;
    write_file(&w.client_toml, &client, false)?;
    write_file(&w.acl, &acl, false)?;
    Ok(w)
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
