//! The client's local veto (docs/ACL.md): iptables-style rules, evaluated top-down, the first
//! matching rule decides, `default_policy` when none matches.
//!
//! A pure function of rules and request: [`Acl::check`] takes everything it looks at (name,
//! one resolved address, port, HTTP path, caller, local time) in a [`Request`] and does no I/O.
//! Resolving names, reading clocks and files is the caller's business, so the same engine serves
//! the client's hot path, `sgw acl check` and the tests.
//!
//! Rules compile into an index ([`index`]) so a decision costs about the same with 10 rules as
//! with 10,000; [`Acl::check_naive`] is the plain top-down reference the index is tested against.

mod index;
mod lint;
mod parse;
mod path;

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use crate::config::{IpTableRule, Policy};

pub use lint::{lint, Finding};

/// One bad line of an ACL file: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct LineError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A rule typed at `sgw acl add` (or sent to the admin endpoint) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("column {column}: {message}")]
    At { column: usize, message: String },
    #[error("`no acl` removes a rule; use `sgw acl remove`")]
    Removal,
    #[error("empty rule")]
    Empty,
}

/// Why an ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{file}: cannot read ACL file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Every bad line, in file order (shown on one line, `; ` between them).
    #[error("{}", join_lines(.0))]
    Invalid(Vec<LineError>),
    /// The client runs without an ACL file.
    #[error("this client has no ACL file")]
    NoFile,
}

impl AclError {
    /// One message per problem (each bad line on its own), for logs and the admin endpoint.
    pub fn messages(&self) -> Vec<String> {
        match self {
            AclError::Invalid(lines) => lines.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn join_lines(lines: &[LineError]) -> String {
    lines
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A time given to `sgw acl check --at` that is not `DAY HH:MM` or a local date and time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad time `{0}`: expected `DAY HH:MM` (e.g. `sat 10:00`) or YYYY-MM-DDTHH:MM")]
pub struct BadTime(String);
pub use parse::{parse_rule, same_rule};
pub use path::{normalize_path, path_has_prefix, request_path, PathError};

/// One parsed rule. `text` is the rule as written (trimmed, comment removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    pub allow: bool,
    pub host: HostPat,
    pub ports: PortRange,
    /// Path prefix, normalised. A request without a path never matches an allow rule's; an
    /// opaque stream (a TCP destination) always matches a deny rule's.
    pub path: Option<String>,
    pub from: Option<Source>,
    pub during: Option<Window>,
    pub text: String,
}

/// What a rule says about the destination host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPat {
    Any,
    /// Exact name, lower case, no trailing dot.
    Name(String),
    /// `*.corp.example` stored as `.corp.example`: any name ending in it, at any depth.
    Suffix(String),
    /// Inclusive address range in the unified key space (see [`ip_key`]): a single address,
    /// a CIDR block or an `a-b` range, IPv4 or IPv6.
    Addr {
        lo: u128,
        hi: u128,
    },
}

/// An inclusive port range; `0..=65535` is "any port".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    pub fn is_any(&self) -> bool {
        *self == Self::ANY
    }

    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }

    fn covers(&self, o: &PortRange) -> bool {
        self.lo <= o.lo && o.hi <= self.hi
    }
}

/// `from SRC[:SPORT]`: the caller's address range and source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// Inclusive key range; `0..=u128::MAX` is any address.
    pub lo: u128,
    pub hi: u128,
    pub ports: PortRange,
}

impl Source {
    pub fn matches(&self, caller: SocketAddr) -> bool {
        let k = ip_key(caller.ip());
        self.lo <= k && k <= self.hi && self.ports.contains(caller.port())
    }
}

/// `during DAYS HH:MM-HH:MM` in local time. `start > end` wraps past midnight: the part after
/// midnight belongs to the day after a listed day (`fri 22:00-06:00` includes Saturday 05:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Bit 0 = Monday .. bit 6 = Sunday.
    pub days: u8,
    /// Minutes since midnight; `start` inclusive, `end` exclusive (`24:00` = 1440).
    pub start: u16,
    pub end: u16,
}

impl Window {
    pub fn matches(&self, at: LocalTime) -> bool {
        let day = |d: u8| self.days & (1 << d) != 0;
        let m = at.minute;
        if self.start < self.end {
            day(at.weekday) && self.start <= m && m < self.end
        } else {
            (day(at.weekday) && m >= self.start) || (day((at.weekday + 6) % 7) && m < self.end)
        }
    }
}

/// A local wall-clock instant as the time windows see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    /// Minutes since midnight, 0..1440.
    pub minute: u16,
}

impl LocalTime {
    /// Now, in the system's time zone (`TZ` or `/etc/localtime`).
    pub fn now() -> LocalTime {
        let z = jiff::ZonedDateTime::now();
        LocalTime {
            weekday: z.weekday().to_monday_zero_offset().clamp(0, 6) as u8,
            minute: z.hour().clamp(0, 23) as u16 * 60 + z.minute().clamp(0, 59) as u16,
        }
    }
}

impl std::str::FromStr for LocalTime {
    type Err = BadTime;

    /// `mon 09:30`, or a local date and time `2026-11-23T09:30` (for `sgw acl check --at`).
    fn from_str(s: &str) -> Result<Self, BadTime> {
        let bad = || BadTime(s.to_owned());
        if let Some((day, hm)) = s.trim().split_once(char::is_whitespace) {
            let weekday = parse::parse_day(day).ok_or_else(bad)?;
            let (h, m) = hm.trim().split_once(':').ok_or_else(bad)?;
            let (h, m) = (
                h.parse::<u16>().map_err(|_| bad())?,
                m.parse::<u16>().map_err(|_| bad())?,
            );
            if h > 23 || m > 59 {
                return Err(bad());
            }
            return Ok(LocalTime {
                weekday,
                minute: h * 60 + m,
            });
        }
        let dt: jiff::civil::DateTime = s.trim().parse().map_err(|_| bad())?;
        Ok(LocalTime {
            weekday: dt.weekday().to_monday_zero_offset().clamp(0, 6) as u8,
            minute: dt.hour().clamp(0, 23) as u16 * 60 + dt.minute().clamp(0, 59) as u16,
        })
    }
}

/// Splits `HOST:PORT[/PATH]` (IPv6 in brackets) as typed at `sgw acl check`.
pub fn parse_check_target(s: &str) -> Result<(String, u16, Option<String>), String> {
    let bad = || format!("expected HOST:PORT[/PATH], found `{s}`");
    let (host, rest) = match s.strip_prefix('[') {
        Some(v6) => {
            let (h, r) = v6.split_once(']').ok_or_else(bad)?;
            (h, r.strip_prefix(':').ok_or_else(bad)?)
        }
        None => s.split_once(':').ok_or_else(bad)?,
    };
    let (port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("bad port `{port}` in `{s}`"))?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port, path))
}

/// Maps every address into one ordered space: IPv4 as its IPv4-mapped IPv6 address, so one
/// interval index serves both families and `::ffff:10.0.0.1` is the same host as `10.0.0.1`.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address a connection to `ip` really reaches: the unspecified address (`0.0.0.0`, `::`,
/// from a literal or a DNS answer) connects to this host itself, so it is judged as
/// `127.0.0.1` and `acl deny 127.0.0.0/8:` covers both families (docs/ACL.md); `::` is judged
/// as `::1` too ([`Acl::check`]).
pub fn judged_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        a if a.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        other => other,
    }
}

/// What is being asked for: one candidate address of one destination.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The name (or address literal) the destination asks for.
    pub host: &'a str,
    /// The resolved address being checked; `None` if the name did not resolve, in which case
    /// only name rules and any-host rules can match.
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// The request path, for HTTP(S) destinations only.
    pub path: Option<&'a str>,
    /// The caller as the gateway saw it; `from` rules never match an unknown caller.
    pub from: Option<SocketAddr>,
    /// Local time for `during` rules; unknown matches no time window, as an unknown caller
    /// matches no `from`. The client always sets it.
    pub at: Option<LocalTime>,
    /// A caller's byte stream the client does not parse (a TCP or TLS destination): it could
    /// carry any HTTP path, so a deny rule's path matches it (an allow rule's never does).
    /// Not set for what carries no request (the hop to a SOCKS proxy).
    pub opaque: bool,
}

impl<'a> Request<'a> {
    /// A plain TCP request for `host:port` with no caller, path or time known yet; an address
    /// literal host is also the address.
    pub fn new(host: &'a str, port: u16) -> Self {
        let lit = host.trim_start_matches('[').trim_end_matches(']');
        Request {
            host,
            addr: lit.parse().ok(),
            port,
            path: None,
            from: None,
            at: None,
            opaque: false,
        }
    }

    /// See [`Request::opaque`].
    pub fn opaque(mut self) -> Self {
        self.opaque = true;
        self
    }

    pub fn addr(mut self, a: IpAddr) -> Self {
        self.addr = Some(a);
        self
    }

    pub fn path(mut self, p: &'a str) -> Self {
        self.path = Some(p);
        self
    }

    pub fn from(mut self, c: SocketAddr) -> Self {
        self.from = Some(c);
        self
    }

    pub fn at(mut self, t: LocalTime) -> Self {
        self.at = Some(t);
        self
    }
}

/// A request with its parts normalised once, so rules compare without allocating.
pub(crate) struct Norm<'a> {
    name: Cow<'a, str>,
    addr: Option<u128>,
    port: u16,
    path: Option<String>,
    from: Option<SocketAddr>,
    at: Option<LocalTime>,
    opaque: bool,
}

impl<'a> Norm<'a> {
    fn new(r: &Request<'a>) -> Norm<'a> {
        let name = r.host.trim_end_matches('.');
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        Norm {
            name,
            addr: r.addr.map(|a| ip_key(judged_as(a))),
            port: r.port,
            path: r.path.map(normalize_path),
            from: r.from,
            at: r.at,
            opaque: r.opaque,
        }
    }
}

impl Rule {
    /// Does this rule match? The reference semantics every index must agree with.
    pub(crate) fn matches(&self, n: &Norm<'_>) -> bool {
        let host = match &self.host {
            HostPat::Any => true,
            HostPat::Name(h) => *h == *n.name,
            HostPat::Suffix(s) => n.name.len() > s.len() && n.name.ends_with(s.as_str()),
            HostPat::Addr { lo, hi } => n.addr.is_some_and(|a| *lo <= a && a <= *hi),
        };
        host && self.matches_rest(n)
    }

    /// Everything but the host: the index has already matched that.
    ///
    /// A stream whose path can't be seen (`opaque`) fails closed: a deny rule's path matches
    /// it, an allow rule's does not. Otherwise the gateway could step around
    /// `deny web:80/admin` by defining `web:80` as TCP.
    pub(crate) fn matches_rest(&self, n: &Norm<'_>) -> bool {
        let any_path = !self.allow && n.opaque;
        self.ports.contains(n.port)
            && self.path.as_deref().is_none_or(|pre| {
                n.path
                    .as_deref()
                    .map_or(any_path, |p| path_has_prefix(p, pre))
            })
            && self
                .from
                .is_none_or(|s| n.from.is_some_and(|c| s.matches(c)))
            && self
                .during
                .is_none_or(|w| n.at.is_some_and(|at| w.matches(at)))
    }

    /// True when only host and port decide: the rule matches every request those match.
    pub(crate) fn unconditional(&self) -> bool {
        self.path.is_none() && self.from.is_none() && self.during.is_none()
    }
}

/// Seed 000 private destinations: only a caller matching one of the destination's
/// `ip_table_rules` is let in (none configured: nobody); an unknown caller never is.
pub fn caller_admitted(private: bool, rules: &[IpTableRule], caller: Option<SocketAddr>) -> bool {
    !private || caller.is_some_and(|c| rules.iter().any(|r| r.matches(c)))
}

/// The verdict and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The deciding rule's line, `None` for the default policy.
    pub line: Option<usize>,
}

impl Decision {
    /// Short explanation for logs and refusals: `rule acl.list:4` or `default policy`.
    pub fn explain(&self, file: &str) -> String {
        match self.line {
            Some(l) => format!("rule {file}:{l}"),
            None => "default policy".into(),
        }
    }
}

/// A compiled rule set.
#[derive(Clone)]
pub struct Acl {
    pub file: String,
    pub rules: Arc<[Rule]>,
    pub default_policy: Policy,
    /// `no acl` lines that removed nothing: not errors, but `acl lint` reports them.
    pub unmatched_removals: Vec<(usize, String)>,
    index: Arc<index::Index>,
    time_windows: bool,
}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("file", &self.file)
            .field("rules", &self.rules.len())
            .field("default_policy", &self.default_policy)
            .finish()
    }
}

impl Acl {
    /// An empty rule set: only the default policy decides.
    pub fn empty(default_policy: Policy) -> Self {
        Self::from_rules(String::new(), Vec::new(), default_policy)
    }

    /// Compiles an already-parsed rule list (order is evaluation order).
    pub fn from_rules(file: String, rules: Vec<Rule>, default_policy: Policy) -> Self {
        let index = Arc::new(index::Index::build(&rules));
        let time_windows = rules.iter().any(|r| r.during.is_some());
        Acl {
            file,
            rules: rules.into(),
            default_policy,
            unmatched_removals: Vec::new(),
            index,
            time_windows,
        }
    }

    pub fn load(path: &Path, default_policy: Policy) -> Result<Self, AclError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => Self::parse(&file, &src, default_policy),
            Err(source) => Err(AclError::Read { file, source }),
        }
    }

    /// Parses a whole file; every bad line is reported as `file:line:col: message`.
    pub fn parse(file: &str, src: &str, default_policy: Policy) -> Result<Self, AclError> {
        let parsed = parse::parse_file(file, src).map_err(AclError::Invalid)?;
        let mut acl = Self::from_rules(file.to_owned(), parsed.rules, default_policy);
        acl.unmatched_removals = parsed.unmatched_removals;
        Ok(acl)
    }

    /// Whether any rule matches resolved addresses (`10.0.0.0/8:`): only then can a name that
    /// no name rule allows still be allowed after a lookup.
    pub fn has_address_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.host, HostPat::Addr { .. }))
    }

    /// The decision for a name that does not resolve here, so that only a proxy would learn
    /// its address: the name rules' decision, unless an address deny rule above the deciding
    /// rule (or anywhere, for the default policy) could have denied the address the proxy
    /// finds. Such a name is denied by that rule, since it could be an alias of any address.
    pub fn check_unresolved(&self, req: &Request<'_>) -> Decision {
        let n = Norm::new(&Request { addr: None, ..*req });
        let first = self.index.first_match(&self.rules, &n);
        let d = self.decide(first);
        if !d.allow {
            return d;
        }
        match self.rules[..first.unwrap_or(self.rules.len())]
            .iter()
            .find(|r| !r.allow && matches!(r.host, HostPat::Addr { .. }) && r.matches_rest(&n))
        {
            Some(r) => Decision {
                allow: false,
                line: Some(r.line),
            },
            None => d,
        }
    }

    /// Whether any rule has an HTTP path: only then does a request's path decide anything.
    pub fn has_path_rules(&self) -> bool {
        self.rules.iter().any(|r| r.path.is_some())
    }

    /// Whether any rule has a `during` window (only then does a decision need the clock).
    pub fn has_time_windows(&self) -> bool {
        self.time_windows
    }

    /// The rule at `line`, if one is in force there.
    pub fn rule_at(&self, line: usize) -> Option<&Rule> {
        self.rules.iter().find(|r| r.line == line)
    }

    /// First matching rule decides; no match means the default policy. Uses the index.
    pub fn check(&self, req: &Request<'_>) -> Decision {
        self.check_by(req, |n| self.index.first_match(&self.rules, n))
    }

    /// The same decision by walking every rule top-down: the reference for tests and benches.
    pub fn check_naive(&self, req: &Request<'_>) -> Decision {
        self.check_by(req, |n| self.rules.iter().position(|r| r.matches(n)))
    }

    fn check_by(&self, req: &Request<'_>, first: impl Fn(&Norm<'_>) -> Option<usize>) -> Decision {
        let n = Norm::new(req);
        let d = self.decide(first(&n));
        // `::` from an IPv6 socket reaches `::1`, which `judged_as` can't say alone (it keeps
        // `acl deny 127.0.0.0/8:` covering both families): both must be allowed.
        if d.allow && req.addr == Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)) {
            let n = Norm {
                addr: Some(ip_key(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST))),
                ..n
            };
            return self.decide(first(&n));
        }
        d
    }

    /// Checks every resolved candidate of `req` and returns the allowed ones, in resolver
    /// order; the caller connects only to these. All denied: the first candidate's decision.
    pub fn allowed_addrs(
        &self,
        req: &Request<'_>,
        addrs: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, Decision> {
        let mut allowed = Vec::with_capacity(addrs.len());
        let mut first_denial = None;
        for a in addrs {
            let d = self.check(&req.addr(a.ip()));
            if d.allow {
                allowed.push(*a);
            } else {
                first_denial.get_or_insert(d);
            }
        }
        if allowed.is_empty() {
            return Err(first_denial.unwrap_or_else(|| self.decide(None)));
        }
        Ok(allowed)
    }

    fn decide(&self, hit: Option<usize>) -> Decision {
        match hit {
            Some(i) => Decision {
                allow: self.rules[i].allow,
                line: Some(self.rules[i].line),
            },
            None => Decision {
                allow: self.default_policy == Policy::Allow,
                line: None,
            },
        }
    }

    /// Explanation with the rule text: ``rule acl.list:4 `acl deny 10.0.0.5:` `` or
    /// `default policy (deny)`.
    pub fn explain(&self, d: &Decision) -> String {
        match d.line.and_then(|l| self.rule_at(l)) {
            Some(r) => format!("rule {}:{} `{}`", self.file, r.line, r.text),
            None => format!(
                "default policy ({})",
                if d.allow { "allow" } else { "deny" }
            ),
        }
    }
}

#[cfg(test)]
mod tests;
