//! The config reader: a typed walk over a document tree ([`node`]) that collects every error
//! (with file, line, column and dotted path) instead of stopping at the first, and reports
//! unknown keys. `SGW_<SECTION>_...` environment variables are laid over each table as it is
//! opened, before any of its keys is read, so every value is read once, by one accessor,
//! whatever its origin.

mod node;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use node::{Entries, Entry, Kind, Node, Origin};

/// One document being read: its errors, and the `SGW_<SECTION>_<KEY>` overrides.
pub(crate) struct Source<'a> {
    file: &'a Path,
    src: &'a str,
    errors: RefCell<Vec<(usize, String)>>,
    section: &'static str,
    env: BTreeMap<String, String>,
    /// Stands in for a table the file leaves out when the environment sets keys in it.
    empty: Entries,
    /// A document that came over the network (management API, state file): errors carry
    /// no file position and certificate fields must be inline PEM, never paths to read.
    inline: bool,
}

/// Reads a JSON document (see [`Source`]`::inline`) with `read`: no environment overrides.
pub(crate) fn read_json<T>(
    doc: &serde_json::Map<String, serde_json::Value>,
    read: impl FnOnce(&Table<'_, '_>) -> Option<T>,
) -> Result<T, super::ConfigErrors> {
    let mut cx = Source::new(Path::new("<document>"), "");
    cx.inline = true;
    let tree = node::from_json(doc);
    let root = Table::root(&cx, &tree);
    let out = read(&root);
    root.finish(&[]);
    match out {
        Some(c) if !cx.has_errors() => Ok(c),
        _ => Err(super::ConfigErrors(cx.into_errors())),
    }
}

/// Parses `src`, reads it with `read` (env overrides from `section`), reports unknown keys
/// (`later`: known but not built yet) and returns the value only if nothing was wrong.
pub(crate) fn read_document<T>(
    path: &Path,
    src: &str,
    section: &'static str,
    env: BTreeMap<String, String>,
    later: &[&str],
    read: fn(&Table<'_, '_>) -> Option<T>,
) -> Result<T, super::ConfigErrors> {
    let cx = Source::new(path, src).with_env(section, env);
    let Some(doc) = cx.parse() else {
        return Err(super::ConfigErrors(cx.into_errors()));
    };
    let root = Table::root(&cx, &doc);
    let cfg = read(&root);
    root.finish(later);
    match cfg {
        Some(c) if !cx.has_errors() => Ok(c),
        _ => Err(super::ConfigErrors(cx.into_errors())),
    }
}

/// The process's `SGW_*` variables.
pub(crate) fn sgw_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("SGW_"))
        .collect()
}

impl<'a> Source<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Source {
            file,
            src,
            errors: RefCell::new(Vec::new()),
            section: "",
            env: BTreeMap::new(),
            empty: Entries::default(),
            inline: false,
        }
    }

    /// Values in `env` named `SGW_<SECTION>_<TABLE>_<KEY>` override the file's.
    pub fn with_env(mut self, section: &'static str, env: BTreeMap<String, String>) -> Self {
        self.section = section;
        self.env = env;
        self
    }

    pub fn file(&self) -> &Path {
        self.file
    }

    pub fn inline(&self) -> bool {
        self.inline
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        (line, col)
    }

    /// An error about the value at `origin`, whose dotted path is `path`.
    fn error(&self, origin: &Origin, path: &str, msg: impl std::fmt::Display) {
        let where_ = if path.is_empty() {
            String::new()
        } else {
            format!("{path}: ")
        };
        let (at, text) = match origin {
            // Environment errors are listed after the file's.
            Origin::Env(var) => (usize::MAX, format!("environment {var}: {msg}")),
            Origin::Doc(n) => (*n, format!("{where_}{msg}")),
            Origin::File(span) => {
                let (line, col) = self.position(span.start);
                let file = self.file.display();
                (span.start, format!("{file}:{line}:{col}: {where_}{msg}"))
            }
        };
        self.errors.borrow_mut().push((at, text));
    }

    /// Every error, in document order.
    pub fn into_errors(self) -> Vec<String> {
        let mut e = self.errors.into_inner();
        e.sort_by_key(|(at, _)| *at);
        e.into_iter().map(|(_, m)| m).collect()
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// Parses the file; syntax errors are recorded and give `None`.
    pub fn parse(&self) -> Option<Node> {
        let (doc, errs) = toml::de::DeTable::parse_recoverable(self.src);
        for e in &errs {
            let span = e.span().unwrap_or(0..0);
            let msg = format!("TOML syntax: {}", e.message());
            self.error(&Origin::File(span), "", msg);
        }
        errs.is_empty().then(|| node::from_toml(&doc))
    }
}

/// One table being read: the document's entries under the environment's, and which keys
/// were asked for.
pub(crate) struct Table<'c, 'a> {
    pub cx: &'c Source<'a>,
    pub path: String,
    map: &'c Entries,
    origin: Origin,
    /// `SGW_*` values for this table's keys; they win over the file's.
    overlay: Vec<Entry>,
    used: RefCell<BTreeSet<String>>,
}

impl<'c, 'a> Table<'c, 'a> {
    pub fn root(cx: &'c Source<'a>, doc: &'c Node) -> Self {
        let map = match &doc.kind {
            Kind::Table(t) => t,
            _ => &cx.empty,
        };
        Table::open(cx, String::new(), map, doc.origin.clone())
    }

    /// Opens a table, laying the environment over it: `SGW_<SECTION>_<PATH>_<KEY>` with the
    /// table path upper-cased (`SGW_CLIENT_LIMITS_MAX_STREAMS`). Keys of the first
    /// `[[gateway]]`/`[[gateways]]` entry may also drop the table (`SGW_CLIENT_TOKEN_FILE`).
    /// Later array entries cannot be overridden.
    fn open(cx: &'c Source<'a>, path: String, map: &'c Entries, origin: Origin) -> Self {
        let mut t = Table {
            cx,
            path,
            map,
            origin,
            overlay: Vec::new(),
            used: Default::default(),
        };
        let mut prefixes: Vec<String> = t.env_prefix().into_iter().collect();
        if !cx.section.is_empty() && matches!(t.path.as_str(), "gateway[0]" | "gateways[0]") {
            prefixes.push(format!("SGW_{}_", cx.section));
        }
        for prefix in prefixes {
            for (var, text) in cx.env.range(prefix.clone()..) {
                let Some(rest) = var.strip_prefix(&prefix) else {
                    break;
                };
                // Only the upper-case spelling names a key, as documented.
                if rest.bytes().any(|b| b.is_ascii_lowercase()) {
                    continue;
                }
                t.overlay.push(Entry {
                    key: rest.to_ascii_lowercase(),
                    key_origin: Origin::Env(var.clone()),
                    value: Node {
                        origin: Origin::Env(var.clone()),
                        kind: Kind::Text(text.clone()),
                    },
                });
            }
        }
        t
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// `SGW_<SECTION>_<PATH>_` for this table (None where overrides do not apply).
    fn env_prefix(&self) -> Option<String> {
        if self.cx.section.is_empty() {
            return None;
        }
        let mut segs = Vec::new();
        for seg in self.path.split('.').filter(|s| !s.is_empty()) {
            let (name, idx) = match seg.split_once('[') {
                Some((n, i)) => (n, Some(i.trim_end_matches(']'))),
                None => (seg, None),
            };
            if idx.is_some_and(|i| i != "0") {
                return None;
            }
            segs.push(name.to_ascii_uppercase());
        }
        Some(if segs.is_empty() {
            format!("SGW_{}_", self.cx.section)
        } else {
            format!("SGW_{}_{}_", self.cx.section, segs.join("_"))
        })
    }

    /// The value of `key`: the environment's, else the document's.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.used.borrow_mut().insert(key.to_owned());
        self.overlay
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .or_else(|| self.map.get(key))
    }

    /// Reports a bad value of `key` where it came from: its place in the document, or the
    /// environment variable that set it.
    pub fn err(&self, key: &str, v: &Node, msg: impl std::fmt::Display) {
        self.cx.error(&v.origin, &self.child_path(key), msg);
    }

    /// As [`Table::err`], for the value `key` has.
    pub fn invalid(&self, key: &str, msg: impl std::fmt::Display) {
        if let Some(v) = self.get(key) {
            self.err(key, v, msg);
        }
    }

    pub fn missing(&self, key: &str) {
        let path = self.child_path(key);
        self.cx.error(&self.origin, &path, "missing required key");
    }

    fn wrong_type(&self, key: &str, v: &Node, what: &str) {
        let found = v.kind.type_str();
        self.err(key, v, format!("expected {what}, found {found}"));
    }

    /// Whether `key` is given, in the document or the environment.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` when it is a string, without complaint when it is not: for keys
    /// that take a word or a number.
    pub fn text(&self, key: &str) -> Option<String> {
        match &self.get(key)?.kind {
            Kind::Str(s) | Kind::Text(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match &v.kind {
            Kind::Str(s) | Kind::Text(s) => Some(s.clone()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// An array of strings (a single string is taken as a one-element list; in the
    /// environment, a comma-separated list).
    pub fn strs(&self, key: &str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        let list = match &v.kind {
            Kind::Text(t) => Some(
                t.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
            Kind::Str(s) => Some(vec![s.clone()]),
            Kind::Array(a) => a
                .iter()
                .map(|i| match &i.kind {
                    Kind::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        if list.is_none() {
            self.wrong_type(key, v, "an array of strings");
        }
        list
    }

    pub fn req_str(&self, key: &str) -> Option<String> {
        if !self.has(key) {
            self.missing(key);
            return None;
        }
        self.str(key)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match &v.kind {
            Kind::Bool(b) => Some(*b),
            Kind::Text(t) => match t.trim() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                other => {
                    self.err(key, v, format!("`{other}` is not a boolean (true/false)"));
                    None
                }
            },
            _ => {
                self.wrong_type(key, v, "a boolean");
                None
            }
        }
    }

    /// An integer within `range`. Documents may give it as a digit string (the Secure
    /// Gateway API's examples, docs/API.md, send `"port": "443"`).
    pub fn int_in(&self, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let v = self.get(key)?;
        let out_of_range = |shown: &dyn std::fmt::Display| {
            let (lo, hi) = (range.start(), range.end());
            self.err(key, v, format!("{shown} is out of range {lo}..={hi}"));
        };
        let n = match &v.kind {
            Kind::Int(Some(i)) => *i,
            Kind::Int(None) => {
                out_of_range(&"the integer");
                return None;
            }
            Kind::Text(t) => match t.trim().replace('_', "").parse::<i64>() {
                Ok(i) => i,
                Err(_) => {
                    self.err(key, v, format!("`{t}` is not an integer"));
                    return None;
                }
            },
            Kind::Str(s) if matches!(v.origin, Origin::Doc(_)) => match s.trim().parse::<i64>() {
                Ok(i) => i,
                Err(_) => {
                    self.wrong_type(key, v, "an integer");
                    return None;
                }
            },
            _ => {
                self.wrong_type(key, v, "an integer");
                return None;
            }
        };
        if !range.contains(&n) {
            out_of_range(&n);
            return None;
        }
        Some(n)
    }

    /// Duration given as `"30s"`, `"5m"`, `"250ms"`, `"1h"`.
    pub fn duration(&self, key: &str) -> Option<Duration> {
        let s = self.str(key)?;
        let d = parse_duration(&s);
        if d.is_none() {
            self.invalid(
                key,
                format!("`{s}` is not a duration (use e.g. \"500ms\", \"30s\", \"5m\")"),
            );
        }
        d
    }

    /// Byte size given as an integer or `"256KiB"`, `"16MiB"`.
    pub fn size(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        let parsed = match &v.kind {
            Kind::Int(Some(i)) => u64::try_from(*i).ok(),
            Kind::Str(s) => parse_size(s),
            Kind::Text(t) => t
                .trim()
                .parse::<u64>()
                .ok()
                .or_else(|| parse_size(t.trim())),
            _ => None,
        };
        if parsed.is_none() {
            match &v.kind {
                Kind::Text(t) => self.err(
                    key,
                    v,
                    format!("`{t}` is not a size in bytes (e.g. 262144 or 256KiB)"),
                ),
                _ => self.err(
                    key,
                    v,
                    "expected a size in bytes (e.g. 262144 or \"256KiB\")",
                ),
            }
        }
        parsed
    }

    pub fn table(&self, key: &str) -> Option<Table<'c, 'a>> {
        let path = self.child_path(key);
        self.used.borrow_mut().insert(key.to_owned());
        let Some(v) = self.map.get(key) else {
            // Absent from the file: still readable if the environment sets keys in it.
            let probe = Table::open(self.cx, path, &self.cx.empty, self.origin.clone());
            return (!probe.overlay.is_empty()).then_some(probe);
        };
        match &v.kind {
            Kind::Table(t) => Some(Table::open(self.cx, path, t, v.origin.clone())),
            other => {
                self.err(
                    key,
                    v,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An array of tables (`[[key]]`); each element's path is `key[i]`.
    pub fn tables(&self, key: &str) -> Vec<Table<'c, 'a>> {
        self.used.borrow_mut().insert(key.to_owned());
        let Some(v) = self.map.get(key) else {
            return Vec::new();
        };
        let Kind::Array(arr) = &v.kind else {
            let found = v.kind.type_str();
            self.err(
                key,
                v,
                format!("expected an array of tables, found {found}"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            let path = format!("{}[{i}]", self.child_path(key));
            match &item.kind {
                Kind::Table(t) => out.push(Table::open(self.cx, path, t, item.origin.clone())),
                other => self.cx.error(
                    &item.origin,
                    &path,
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// Reports every key of the document that was never asked for. `later` names keys this
    /// version knows but does not implement yet, so the message says so instead of
    /// "unknown". Environment variables that name no key are not errors: the process's
    /// environment holds other programs' settings too.
    pub fn finish(self, later: &[&str]) {
        let used = self.used.borrow();
        for e in self.map.0.iter().filter(|e| !used.contains(&e.key)) {
            let path = self.child_path(&e.key);
            let msg = if later.contains(&e.key.as_str()) {
                "is not supported by this version of sgw yet"
            } else {
                "unknown key"
            };
            self.cx.error(&e.key_origin, &path, msg);
        }
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let idx = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(idx);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    // `try_from_secs_f64` refuses what does not fit a Duration (`1e30h`) instead of panicking.
    Duration::try_from_secs_f64(secs).ok()
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let idx = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(idx);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests;
