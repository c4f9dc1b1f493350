//! The ACL file syntax (docs/ACL.md): `[no] acl allow|deny TARGET [from SRC[:SPORT]]
//! [during DAYS HH:MM-HH:MM]`, one rule a line, `#` comments. Every bad line is reported with
//! `file:line:col` and what was expected, all in one pass.

use std::net::IpAddr;
use std::str::FromStr;

use super::{
    ip_key, normalize_path, HostPat, LineError, PortRange, Rule, RuleError, Source, Window,
};

/// A whole file after `no acl` removals.
pub(crate) struct Parsed {
    pub rules: Vec<Rule>,
    pub unmatched_removals: Vec<(usize, String)>,
}

/// (byte offset in the line, message)
type Err = (usize, String);

pub(crate) fn parse_file(file: &str, src: &str) -> Result<Parsed, Vec<LineError>> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut unmatched_removals = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in src.lines().enumerate() {
        let line = i + 1;
        match parse_line(raw) {
            Ok(None) => {}
            Ok(Some((false, mut rule))) => {
                rule.line = line;
                rules.push(rule);
            }
            Ok(Some((true, rule))) => {
                // `no acl X` removes the latest earlier `acl X`, as the Secure Gateway client did.
                match rules.iter().rposition(|r| same_rule(r, &rule)) {
                    Some(at) => {
                        rules.remove(at);
                    }
                    None => unmatched_removals.push((line, rule.text)),
                }
            }
            Err((col, message)) => errors.push(LineError {
                file: file.to_owned(),
                line,
                column: col + 1,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(Parsed {
            rules,
            unmatched_removals,
        })
    } else {
        Err(errors)
    }
}

/// Parses one rule (`acl allow ...`, no `no`, no comment) as typed at `sgw acl add`.
/// The error carries the 1-based column.
pub fn parse_rule(text: &str) -> Result<Rule, RuleError> {
    match parse_line(text) {
        Ok(Some((false, r))) => Ok(r),
        Ok(Some((true, _))) => Err(RuleError::Removal),
        Ok(None) => Err(RuleError::Empty),
        Err((col, message)) => Err(RuleError::At {
            column: col + 1,
            message,
        }),
    }
}

/// Same match conditions and verdict, wherever and however written.
pub fn same_rule(a: &Rule, b: &Rule) -> bool {
    a.allow == b.allow
        && a.host == b.host
        && a.ports == b.ports
        && a.path == b.path
        && a.from == b.from
        && a.during == b.during
}

/// Whitespace-separated words with their byte offsets.
fn words(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(st)) => {
                out.push((st, &s[st..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        out.push((st, &s[st..]));
    }
    out
}

/// `Ok(None)` for blank and comment lines; `Ok(Some((is_removal, rule)))` otherwise.
fn parse_line(raw: &str) -> Result<Option<(bool, Rule)>, Err> {
    let text = raw.split('#').next().unwrap_or("");
    let w = words(text);
    if w.is_empty() {
        return Ok(None);
    }
    let end = text.trim_end().len();
    let mut it = w.iter().copied().peekable();
    let mut removal = false;
    if it.peek().is_some_and(|(_, t)| *t == "no") {
        removal = true;
        it.next();
    }
    match it.next() {
        Some((_, "acl")) => {}
        Some((at, t)) => {
            return Err((
                at,
                format!("expected `acl allow|deny HOST:PORT`, found `{t}`"),
            ))
        }
        None => return Err((end, "expected `acl` after `no`".into())),
    }
    let allow = match it.next() {
        Some((_, "allow")) => true,
        Some((_, "deny")) => false,
        Some((at, t)) => return Err((at, format!("expected `allow` or `deny`, found `{t}`"))),
        None => return Err((end, "expected `allow` or `deny` after `acl`".into())),
    };
    let (at, target) = it.next().ok_or((
        end,
        "expected HOST:PORT (`:PORT` for any host, `HOST:` for any port)".to_string(),
    ))?;
    let (host, ports, path) = parse_target(target).map_err(|(o, m)| (at + o, m))?;
    let mut from = None;
    let mut during = None;
    while let Some((at, kw)) = it.next() {
        match kw {
            "from" if from.is_none() => {
                let (a2, src) = it
                    .next()
                    .ok_or((end, "expected SRC[:PORT] after `from`".to_string()))?;
                from = Some(parse_source(src).map_err(|(o, m)| (a2 + o, m))?);
            }
            "during" if during.is_none() => {
                let (a2, first) = it
                    .next()
                    .ok_or((end, "expected DAYS HH:MM-HH:MM after `during`".to_string()))?;
                // The days may be left out: `during 08:00-18:00` means every day.
                let (days, (a3, times)) = if first.contains(':') {
                    (0x7f, (a2, first))
                } else {
                    let days = parse_days(first).map_err(|m| (a2, m))?;
                    let t = it
                        .next()
                        .ok_or((end, "expected HH:MM-HH:MM after the days".to_string()))?;
                    (days, t)
                };
                let (start, end) = parse_times(times).map_err(|m| (a3, m))?;
                during = Some(Window { days, start, end });
            }
            "from" | "during" => return Err((at, format!("`{kw}` given twice"))),
            other => {
                return Err((
                    at,
                    format!(
                    "unexpected `{other}`: expected `from SRC[:PORT]` or `during DAYS HH:MM-HH:MM`"
                ),
                ))
            }
        }
    }
    let canon: Vec<&str> = w
        .iter()
        .skip(usize::from(removal))
        .map(|(_, t)| *t)
        .collect();
    Ok(Some((
        removal,
        Rule {
            line: 0,
            allow,
            host,
            ports,
            path,
            from,
            during,
            text: canon.join(" "),
        },
    )))
}

/// `HOST:PORTS[/PATH]`, `[V6]:PORTS[/PATH]`.
fn parse_target(t: &str) -> Result<(HostPat, PortRange, Option<String>), Err> {
    let (host, rest, rest_at) = split_host(t).ok_or((
        0,
        format!("expected HOST:PORT, found `{t}` (`:PORT` for any host, `HOST:` for any port)"),
    ))?;
    if !t.starts_with('[') && rest.contains(':') {
        return Err((
            0,
            "IPv6 addresses go in brackets: `[2001:db8::1]:443`".to_string(),
        ));
    }
    let host = if t.starts_with('[') {
        match parse_host(host).map_err(|m| (1, m))? {
            h @ HostPat::Addr { .. } => h,
            _ => {
                return Err((
                    1,
                    format!("expected an address in brackets, found `{host}`"),
                ))
            }
        }
    } else {
        parse_host(host).map_err(|m| (0, m))?
    };
    let (ports, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let ports = parse_ports(ports).map_err(|m| (rest_at, m))?;
    Ok((host, ports, path.map(normalize_path)))
}

/// Splits at the host/port colon: after `]` for bracketed addresses, else at the first `:`.
/// Returns (host, rest after the colon, offset of rest).
fn split_host(t: &str) -> Option<(&str, &str, usize)> {
    if let Some(inner) = t.strip_prefix('[') {
        let end = inner.find(']')?;
        let rest = inner[end + 1..].strip_prefix(':')?;
        Some((&inner[..end], rest, end + 3))
    } else {
        let c = t.find(':')?;
        Some((&t[..c], &t[c + 1..], c + 1))
    }
}

fn parse_host(s: &str) -> Result<HostPat, String> {
    if s.is_empty() || s == "*" {
        return Ok(HostPat::Any);
    }
    if let Some(rest) = s.strip_prefix("*.") {
        let name = parse_name(rest)?;
        return Ok(HostPat::Suffix(format!(".{name}")));
    }
    if s.contains('*') {
        return Err(format!(
            "`{s}`: a wildcard is only allowed as a leading `*.` (`*.corp.example`)"
        ));
    }
    if let Some((lo, hi)) = parse_addr_set(s)? {
        return Ok(HostPat::Addr { lo, hi });
    }
    Ok(HostPat::Name(parse_name(s)?))
}

/// An address, CIDR block or `a-b` range as an inclusive key range; `Ok(None)` if `s` is not
/// address-shaped (then it is a name).
fn parse_addr_set(s: &str) -> Result<Option<(u128, u128)>, String> {
    if s.contains('/') {
        let net = ipnet::IpNet::from_str(s).map_err(|_| format!("bad CIDR block `{s}`"))?;
        return Ok(Some((ip_key(net.network()), ip_key(net.broadcast()))));
    }
    if let Some((a, b)) = s.split_once('-') {
        match (IpAddr::from_str(a), IpAddr::from_str(b)) {
            (Ok(a), Ok(b)) if a.is_ipv4() == b.is_ipv4() && ip_key(a) <= ip_key(b) => {
                return Ok(Some((ip_key(a), ip_key(b))))
            }
            (Ok(_), Ok(_)) => {
                return Err(format!(
                    "bad address range `{s}`: both ends of one family, low end first"
                ))
            }
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => return Err(format!("bad address range `{s}`")),
            // A name with a dash in it.
            _ => {}
        }
    }
    if let Ok(a) = IpAddr::from_str(s) {
        let k = ip_key(a);
        return Ok(Some((k, k)));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') || s.contains(':') {
        return Err(format!("bad IP address `{s}`"));
    }
    Ok(None)
}

fn parse_name(s: &str) -> Result<String, String> {
    let n = s.strip_suffix('.').unwrap_or(s);
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(n.to_ascii_lowercase())
    } else {
        Err(format!(
            "bad host `{s}`: expected a name, an address, a CIDR block or an `a-b` range"
        ))
    }
}

fn parse_ports(s: &str) -> Result<PortRange, String> {
    if s.is_empty() || s == "*" {
        return Ok(PortRange::ANY);
    }
    let one = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("bad port `{p}` (1..=65535)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (one(a)?, one(b)?);
            if lo > hi {
                return Err(format!("bad port range `{s}`: low end first"));
            }
            Ok(PortRange { lo, hi })
        }
        None => {
            let p = one(s)?;
            Ok(PortRange { lo: p, hi: p })
        }
    }
}

/// `from` takes addresses only: a caller has no name to match.
fn parse_source(t: &str) -> Result<Source, Err> {
    let (host, ports, at) = match split_host(t) {
        Some(parts) => parts,
        None if t.starts_with('[') => {
            let inner = t
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .ok_or((0, format!("bad source `{t}`")))?;
            (inner, "", 0)
        }
        None => (t, "", 0),
    };
    let off = usize::from(t.starts_with('['));
    let (lo, hi) = if host.is_empty() || host == "*" || host == "any" {
        (0, u128::MAX)
    } else {
        match parse_addr_set(host).map_err(|m| (off, m))? {
            Some(r) => r,
            None => {
                return Err((
                    off,
                    format!("`from` takes an address, CIDR block or range, not the name `{host}`"),
                ))
            }
        }
    };
    let ports = parse_ports(ports).map_err(|m| (at, m))?;
    Ok(Source { lo, hi, ports })
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

pub(crate) fn parse_day(s: &str) -> Option<u8> {
    let s = s.to_ascii_lowercase();
    if s.len() < 3 {
        return None;
    }
    DAYS.iter().position(|d| d.starts_with(&s)).map(|i| i as u8)
}

/// `mon-fri`, `sat,sun`, `mon,wed-fri`, `fri-mon` (wraps), `daily`.
fn parse_days(s: &str) -> Result<u8, String> {
    if matches!(
        s.to_ascii_lowercase().as_str(),
        "daily" | "*" | "all" | "any"
    ) {
        return Ok(0x7f);
    }
    let bad = || format!("bad days `{s}`: expected e.g. `mon-fri`, `sat,sun` or `daily`");
    let mut mask = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_day(a).ok_or_else(bad)?, parse_day(b).ok_or_else(bad)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << parse_day(part).ok_or_else(bad)?,
        }
    }
    Ok(mask)
}

/// `HH:MM-HH:MM`; the end may be `24:00`; a start after the end wraps past midnight.
fn parse_times(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("bad time window `{s}`: expected HH:MM-HH:MM, e.g. 08:00-18:00");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let hm = |t: &str, end: bool| -> Option<u16> {
        let (h, m) = t.split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
        let v = h.checked_mul(60)?.checked_add(m)?;
        (m < 60 && (h < 24 || (end && v == 1440))).then_some(v)
    };
    let (start, end) = (hm(a, false).ok_or_else(bad)?, hm(b, true).ok_or_else(bad)?);
    if start == end {
        return Err(format!("empty time window `{s}`"));
    }
    Ok((start, end))
}
