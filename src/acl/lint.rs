//! `sgw acl lint`: rules that can never match (an earlier rule matches everything they do),
//! allow/deny pairs that overlap, and `no acl` lines that removed nothing. Pairwise, so a rule
//! shadowed only by the union of several earlier ones is not reported.

use super::{path_has_prefix, Acl, HostPat, Rule, Source, Window};

/// One warning, anchored at a line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub message: String,
}

pub fn lint(acl: &Acl) -> Vec<Finding> {
    let mut out: Vec<Finding> = acl
        .unmatched_removals
        .iter()
        .map(|(line, text)| Finding {
            line: *line,
            message: format!("`no {text}` removes nothing: no earlier rule is the same"),
        })
        .collect();
    let rules = &acl.rules;
    for (j, b) in rules.iter().enumerate() {
        let earlier = &rules[..j];
        if let Some(a) = earlier.iter().find(|a| covers(a, b)) {
            out.push(Finding {
                line: b.line,
                message: format!(
                    "`{}` can never match: line {} `{}` matches everything it does first",
                    b.text, a.line, a.text
                ),
            });
        } else if let Some(a) = earlier
            .iter()
            .find(|a| a.allow != b.allow && intersects(a, b))
        {
            out.push(Finding {
                line: b.line,
                message: format!(
                    "`{}` overlaps line {} `{}`: where both match, line {} {}",
                    b.text,
                    a.line,
                    a.text,
                    a.line,
                    if a.allow { "allows" } else { "denies" }
                ),
            });
        }
    }
    out.sort_by_key(|f| f.line);
    out
}

/// Every request `b` matches, `a` matches too.
fn covers(a: &Rule, b: &Rule) -> bool {
    host_covers(&a.host, &b.host)
        && a.ports.covers(&b.ports)
        && match (&a.path, &b.path) {
            (None, _) => true,
            (Some(p), Some(q)) => path_has_prefix(q, p),
            (Some(_), None) => false,
        }
        && match (&a.from, &b.from) {
            (None, _) => true,
            (Some(s), Some(t)) => s.lo <= t.lo && t.hi <= s.hi && s.ports.covers(&t.ports),
            (Some(_), None) => false,
        }
        && match (&a.during, &b.during) {
            (None, _) => true,
            (Some(w), Some(v)) => window_covers(w, v),
            (Some(_), None) => false,
        }
}

fn host_covers(a: &HostPat, b: &HostPat) -> bool {
    match (a, b) {
        (HostPat::Any, _) => true,
        (HostPat::Name(x), HostPat::Name(y)) => x == y,
        (HostPat::Suffix(s), HostPat::Name(y)) => y.len() > s.len() && y.ends_with(s.as_str()),
        (HostPat::Suffix(s), HostPat::Suffix(t)) => t.ends_with(s.as_str()),
        (HostPat::Addr { lo, hi }, HostPat::Addr { lo: l2, hi: h2 }) => lo <= l2 && h2 <= hi,
        _ => false,
    }
}

fn window_covers(w: &Window, v: &Window) -> bool {
    w == v
        || (w.start < w.end
            && v.start < v.end
            && v.days & !w.days == 0
            && w.start <= v.start
            && v.end <= w.end)
}

/// Some request may match both. Names and addresses are different kinds: whether a name
/// resolves into a range is not knowable here, so they are not reported as overlapping.
fn intersects(a: &Rule, b: &Rule) -> bool {
    let host = match (&a.host, &b.host) {
        (HostPat::Any, _) | (_, HostPat::Any) => true,
        (HostPat::Name(x), HostPat::Name(y)) => x == y,
        (HostPat::Suffix(s), HostPat::Name(y)) | (HostPat::Name(y), HostPat::Suffix(s)) => {
            y.len() > s.len() && y.ends_with(s.as_str())
        }
        (HostPat::Suffix(s), HostPat::Suffix(t)) => {
            s.ends_with(t.as_str()) || t.ends_with(s.as_str())
        }
        (HostPat::Addr { lo, hi }, HostPat::Addr { lo: l2, hi: h2 }) => lo <= h2 && l2 <= hi,
        _ => false,
    };
    let src = |x: &Source, y: &Source| {
        x.lo <= y.hi && y.lo <= x.hi && x.ports.lo <= y.ports.hi && y.ports.lo <= x.ports.hi
    };
    host && a.ports.lo <= b.ports.hi
        && b.ports.lo <= a.ports.hi
        && match (&a.path, &b.path) {
            (Some(p), Some(q)) => path_has_prefix(p, q) || path_has_prefix(q, p),
            _ => true,
        }
        && match (&a.from, &b.from) {
            (Some(x), Some(y)) => src(x, y),
            _ => true,
        }
        && match (&a.during, &b.during) {
            // Disjoint day sets of same-day windows never meet; anything else might.
            (Some(x), Some(y)) => !(x.start < x.end && y.start < y.end && x.days & y.days == 0),
            _ => true,
        }
}
