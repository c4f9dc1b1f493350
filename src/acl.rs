//! The client's local veto: ordered `acl allow|deny [host]:[port]` rules, first match wins,
//! `default_policy` when none matches. A pure function of rules and request.
//!
//! This is the core's host:port engine. Everything goes through [`Acl::check`], so the full
//! iptables-style engine (CIDR, ranges, wildcards, `from`, `during`) can replace it in place.

use std::path::Path;

use crate::config::Policy;

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    pub allow: bool,
    /// Lower-cased host or address; `None` matches any host.
    pub host: Option<String>,
    /// `None` matches any port.
    pub port: Option<u16>,
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct Acl {
    pub file: String,
    pub rules: Vec<Rule>,
    pub default_policy: Policy,
}

/// What is being asked for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub host: &'a str,
    pub port: u16,
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

impl Acl {
    /// An empty rule set: only the default policy decides.
    pub fn empty(default_policy: Policy) -> Self {
        Acl {
            file: String::new(),
            rules: Vec::new(),
            default_policy,
        }
    }

    pub fn load(path: &Path, default_policy: Policy) -> Result<Self, Vec<String>> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read ACL file: {e}", path.display())])?;
        Self::parse(&path.display().to_string(), &src, default_policy)
    }

    /// Parses a whole file; every bad line is reported with file, line and column.
    pub fn parse(file: &str, src: &str, default_policy: Policy) -> Result<Self, Vec<String>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in src.lines().enumerate() {
            let line = i + 1;
            let text = raw.split('#').next().unwrap_or("").trim();
            if text.is_empty() {
                continue;
            }
            match parse_rule(text) {
                Ok((allow, host, port)) => rules.push(Rule {
                    line,
                    allow,
                    host,
                    port,
                }),
                Err((col, msg)) => {
                    let col = raw.find(text).unwrap_or(0) + col + 1;
                    errors.push(format!("{file}:{line}:{col}: {msg}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(Acl {
                file: file.to_owned(),
                rules,
                default_policy,
            })
        } else {
            Err(errors)
        }
    }

    /// First matching rule decides; no match means the default policy.
    pub fn check(&self, req: &Request<'_>) -> Decision {
        for r in &self.rules {
            let host_ok = r
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(req.host));
            let port_ok = r.port.is_none_or(|p| p == req.port);
            if host_ok && port_ok {
                return Decision {
                    allow: r.allow,
                    line: Some(r.line),
                };
            }
        }
        Decision {
            allow: self.default_policy == Policy::Allow,
            line: None,
        }
    }
}

type Parsed = (bool, Option<String>, Option<u16>);

fn parse_rule(text: &str) -> Result<Parsed, (usize, String)> {
    let mut words = text.split_whitespace();
    if words.next() != Some("acl") {
        return Err((0, "expected `acl allow|deny HOST:PORT`".into()));
    }
    let verb = words.next().ok_or((
        text.len(),
        "expected `allow` or `deny` after `acl`".to_string(),
    ))?;
    let allow = match verb {
        "allow" => true,
        "deny" => false,
        other => {
            return Err((
                text.find(other).unwrap_or(0),
                format!("expected `allow` or `deny`, found `{other}`"),
            ))
        }
    };
    let target = words
        .next()
        .ok_or((text.len(), "expected HOST:PORT".to_string()))?;
    let col = text.find(target).unwrap_or(0);
    if let Some(extra) = words.next() {
        return Err((
            text.find(extra).unwrap_or(0),
            format!("unexpected `{extra}` (this version supports `acl allow|deny HOST:PORT` only)"),
        ));
    }
    let (host, port) = if let Some(v6) = target.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or((col, "unclosed `[` in IPv6 address".to_string()))?;
        let rest = &v6[end + 1..];
        let port = rest
            .strip_prefix(':')
            .ok_or((col, "expected `:` after `]`".to_string()))?;
        (&v6[..end], port)
    } else {
        target.rsplit_once(':').ok_or((col, format!("expected HOST:PORT, found `{target}` (use `:PORT` for any host, `HOST:` for any port)")))?
    };
    if host.contains('/') || port.contains('-') || host.contains('*') || port.contains('/') {
        return Err((col, format!("`{target}`: CIDR, ranges, wildcards and paths are not supported by this version yet")));
    }
    let port = if port.is_empty() {
        None
    } else {
        Some(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or((col, format!("bad port `{port}` (1..=65535)")))?,
        )
    };
    let host = (!host.is_empty()).then(|| host.to_ascii_lowercase());
    Ok((allow, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(src: &str) -> Acl {
        Acl::parse("acl.list", src, Policy::Deny).unwrap()
    }

    #[test]
    fn forms_and_first_match() {
        let a = acl("# comment\nacl deny 10.0.0.5:\nacl allow 127.0.0.1:6379  # redis\nacl allow :22\nacl allow [::1]:80\nacl deny localhost:80\nacl allow LocalHost:\n");
        let d = |h: &str, p| a.check(&Request { host: h, port: p });
        assert_eq!(
            d("127.0.0.1", 6379),
            Decision {
                allow: true,
                line: Some(3)
            }
        );
        assert_eq!(
            d("10.0.0.5", 22),
            Decision {
                allow: false,
                line: Some(2)
            }
        );
        assert_eq!(
            d("anything", 22),
            Decision {
                allow: true,
                line: Some(4)
            }
        );
        assert_eq!(
            d("::1", 80),
            Decision {
                allow: true,
                line: Some(5)
            }
        );
        assert_eq!(
            d("localhost", 80),
            Decision {
                allow: false,
                line: Some(6)
            }
        );
        assert_eq!(
            d("LOCALHOST", 81),
            Decision {
                allow: true,
                line: Some(7)
            }
        );
        assert_eq!(
            d("127.0.0.1", 6380),
            Decision {
                allow: false,
                line: None
            }
        );
        let open = Acl::parse("f", "", Policy::Allow).unwrap();
        assert!(open.check(&Request { host: "x", port: 1 }).allow);
    }

    #[test]
    fn all_errors_with_line_and_column() {
        let errs = Acl::parse("acl.list", "acl allow 1.2.3.4:80\nacl permit x:1\n  acl allow nocolon\nacl allow h:99999\nacl allow 10.0.0.0/8:1\nfoo\n", Policy::Deny).unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(
            errs[0].starts_with("acl.list:2:5: expected `allow` or `deny`, found `permit`"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("acl.list:3:13: expected HOST:PORT"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("acl.list:4:11: bad port `99999`"),
            "{errs:?}"
        );
        assert!(
            errs[3].contains("not supported by this version yet"),
            "{errs:?}"
        );
        assert!(errs[4].starts_with("acl.list:6:1:"), "{errs:?}");
    }
}
