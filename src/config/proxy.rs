//! `outbound_proxy` / `no_proxy`: how the client reaches its gateways from a network that only
//! lets traffic out through a corporate proxy.

use std::net::IpAddr;
use std::str::FromStr;

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// HTTP CONNECT.
    Http,
    Socks5,
}

/// A parsed `http://[user:pass@]host:port` or `socks5://[user:pass@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundProxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// User name and password; the password never prints.
    pub auth: Option<(String, Secret)>,
}

impl OutboundProxy {
    /// Errors never repeat the URL: it may hold a password.
    pub fn parse(s: &str) -> Result<Self, super::BadValue> {
        Self::read(s).map_err(super::BadValue)
    }

    fn read(s: &str) -> Result<Self, String> {
        let (kind, rest, default_port) = if let Some(r) = s.strip_prefix("http://") {
            (ProxyKind::Http, r, 3128)
        } else if let Some(r) = s
            .strip_prefix("socks5://")
            .or_else(|| s.strip_prefix("socks5h://"))
        {
            (ProxyKind::Socks5, r, 1080)
        } else {
            return Err("must start with http:// (HTTP CONNECT) or socks5://".into());
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((cred, hp)) => {
                let (u, p) = cred
                    .split_once(':')
                    .ok_or("credentials must be user:password")?;
                if u.is_empty() {
                    return Err("empty proxy user name".into());
                }
                (
                    Some((percent_decode(u)?, Secret::new(percent_decode(p)?))),
                    hp,
                )
            }
            None => (None, rest),
        };
        if hostport.contains('/') {
            return Err("a proxy URL has no path".into());
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or("unclosed [ in IPv6 address")?;
            (h, p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("proxy URL has no host".into());
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad proxy port `{p}`"))?,
        };
        Ok(OutboundProxy {
            kind,
            host: host.to_owned(),
            port,
            auth,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in proxy credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "proxy credentials are not UTF-8".to_string())
}

/// `no_proxy` semantics as curl's: `*` matches everything; `corp.example` or `.corp.example`
/// matches that name and every name under it; an address or CIDR block matches addresses.
pub fn bypass(no_proxy: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip = IpAddr::from_str(host.trim_start_matches('[').trim_end_matches(']')).ok();
    no_proxy.iter().any(|e| {
        let e = e.trim().trim_end_matches('.').to_ascii_lowercase();
        if e == "*" {
            return true;
        }
        if let Some(ip) = ip {
            if let Ok(net) = ipnet::IpNet::from_str(&e) {
                return net.contains(&ip);
            }
            return IpAddr::from_str(&e).is_ok_and(|a| a == ip);
        }
        let suffix = e.trim_start_matches('.');
        !suffix.is_empty() && (host == suffix || host.ends_with(&format!(".{suffix}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = OutboundProxy::parse("http://u%40x:p%3Ass@proxy.corp:8080").unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (ProxyKind::Http, "proxy.corp", 8080)
        );
        let (u, pw) = p.auth.clone().unwrap();
        assert_eq!((u.as_str(), pw.expose()), ("u@x", "p:ss"));
        assert!(
            !format!("{p:?}").contains("p:ss"),
            "password must not print"
        );
        let s = OutboundProxy::parse("socks5://[::1]:1081").unwrap();
        assert_eq!(
            (s.kind, s.host.as_str(), s.port, s.auth),
            (ProxyKind::Socks5, "::1", 1081, None)
        );
        assert_eq!(OutboundProxy::parse("http://p").unwrap().port, 3128);
        for bad in [
            "ftp://p:1",
            "http://:1",
            "http://p:0",
            "http://u@p:1",
            "http://p:1/x",
        ] {
            assert!(OutboundProxy::parse(bad).is_err(), "{bad}");
        }
        let e = OutboundProxy::parse("http://user:hunter2@p:99999").unwrap_err();
        assert!(!e.0.contains("hunter2"), "{e}");
    }

    #[test]
    fn no_proxy() {
        let np: Vec<String> = ["corp.example", ".lan", "10.0.0.0/8", "192.0.2.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(bypass(&np, "corp.example"));
        assert!(bypass(&np, "gw.corp.example."));
        assert!(!bypass(&np, "notcorp.example"));
        assert!(bypass(&np, "x.lan"));
        assert!(bypass(&np, "10.9.8.7"));
        assert!(bypass(&np, "192.0.2.1"));
        assert!(!bypass(&np, "192.0.2.2"));
        assert!(!bypass(&np, "gw.example.com"));
        assert!(bypass(&["*".to_string()], "anything"));
    }
}
