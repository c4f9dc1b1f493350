//! Seed 000 `ip_table_rules` of a `private` destination: which callers (source address and
//! port) may use it. Kept as written (`src`, `spt`, `app` strings, as the API and the wire carry
//! them) plus the parsed ranges.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// One rule: `src` is an address, an `a-b` range or a CIDR block (empty: any); `spt` is a port
/// or an `a:b` range (empty: any); `app` names the rule (a new rule with the same `app`
/// replaces the old one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpTableRule {
    pub src: String,
    pub spt: String,
    pub app: String,
    /// Inclusive, same family; `None` is any address.
    src_range: Option<(IpAddr, IpAddr)>,
    spt_range: (u16, u16),
}

impl IpTableRule {
    pub fn new(src: &str, spt: &str, app: &str) -> Result<Self, super::BadValue> {
        Self::read(src, spt, app).map_err(super::BadValue)
    }

    fn read(src: &str, spt: &str, app: &str) -> Result<Self, String> {
        let (src, spt) = (src.trim(), spt.trim());
        if src.is_empty() && spt.is_empty() {
            return Err("a rule needs `src` or `spt`".into());
        }
        Ok(IpTableRule {
            src_range: parse_src(src)?,
            spt_range: parse_spt(spt)?,
            src: src.to_owned(),
            spt: spt.to_owned(),
            app: app.to_owned(),
        })
    }

    pub fn matches(&self, caller: SocketAddr) -> bool {
        let ip = caller.ip().to_canonical();
        let addr_ok = self
            .src_range
            .is_none_or(|(lo, hi)| lo.is_ipv4() == ip.is_ipv4() && lo <= ip && ip <= hi);
        addr_ok && self.spt_range.0 <= caller.port() && caller.port() <= self.spt_range.1
    }
}

fn parse_src(s: &str) -> Result<Option<(IpAddr, IpAddr)>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.contains('/') {
        let net = ipnet::IpNet::from_str(s).map_err(|_| format!("`{s}` is not a CIDR block"))?;
        return Ok(Some((net.network(), net.broadcast())));
    }
    let one = |a: &str| {
        IpAddr::from_str(a.trim())
            .map(|a| a.to_canonical())
            .map_err(|_| format!("`{a}` is not an IP address"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a.is_ipv4() != b.is_ipv4() || a > b {
                return Err(format!(
                    "bad range `{s}`: both ends of one family, low end first"
                ));
            }
            Ok(Some((a, b)))
        }
        None => {
            let a = one(s)?;
            Ok(Some((a, a)))
        }
    }
}

fn parse_spt(s: &str) -> Result<(u16, u16), String> {
    if s.is_empty() {
        return Ok((0, u16::MAX));
    }
    let one = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{p}` is not a port (1..=65535)"))
    };
    match s.split_once(':') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("bad port range `{s}`: low end first"));
            }
            Ok((a, b))
        }
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let c = |s: &str| s.parse::<SocketAddr>().unwrap();
        let r = IpTableRule::new("192.0.0.1-192.0.0.5", "1000:2000", "myRule01").unwrap();
        assert!(r.matches(c("192.0.0.3:1500")));
        assert!(r.matches(c("[::ffff:192.0.0.5]:1000")));
        assert!(!r.matches(c("192.0.0.6:1500")));
        assert!(!r.matches(c("192.0.0.3:999")));
        let r = IpTableRule::new("1.2.3.4", "", "a").unwrap();
        assert!(r.matches(c("1.2.3.4:1")));
        assert!(!r.matches(c("[::1]:1")));
        let r = IpTableRule::new("10.0.0.0/8", "80", "a").unwrap();
        assert!(r.matches(c("10.9.9.9:80")));
        for (src, spt) in [
            ("", ""),
            ("1.2.3", ""),
            ("2.0.0.0-1.0.0.0", ""),
            ("", "0"),
            ("", "9:8"),
            ("1.1.1.1-::1", ""),
        ] {
            assert!(IpTableRule::new(src, spt, "x").is_err(), "{src} {spt}");
        }
    }
}
