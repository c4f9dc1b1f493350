//! A small typed walker over a spanned TOML document that collects every error (with file,
//! line, column and dotted path) instead of stopping at the first, and reports unknown keys.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Error collector for one file, plus the `SGW_<SECTION>_<KEY>` environment overrides.
pub(crate) struct Cx<'a> {
    file: &'a Path,
    src: &'a str,
    errors: RefCell<Vec<(usize, String)>>,
    section: &'static str,
    env: BTreeMap<String, String>,
    /// Stands in for a table the file leaves out when the environment sets keys in it.
    empty: DeTable<'a>,
    /// A document that came over the network (management API, state file): errors carry
    /// no file position and certificate fields must be inline PEM, never paths to read.
    inline: bool,
}

/// Reads `src` as an inline document (see [`Cx`]`::inline`): no environment overrides.
pub(crate) fn read_inline<T>(
    src: &str,
    read: impl FnOnce(&Tbl<'_, '_>) -> Option<T>,
) -> Result<T, Vec<String>> {
    let mut cx = Cx::new(Path::new("<document>"), src);
    cx.inline = true;
    let Some(doc) = cx.parse() else {
        return Err(cx.into_errors());
    };
    let root = Tbl::root(&cx, &doc);
    let out = read(&root);
    root.finish(&[]);
    match out {
        Some(c) if !cx.has_errors() => Ok(c),
        _ => Err(cx.into_errors()),
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
    read: fn(&Tbl<'_, '_>) -> Option<T>,
) -> Result<T, super::ConfigErrors> {
    let cx = Cx::new(path, src).with_env(section, env);
    let Some(doc) = cx.parse() else {
        return Err(super::ConfigErrors(cx.into_errors()));
    };
    let root = Tbl::root(&cx, &doc);
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

impl<'a> Cx<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Cx {
            file,
            src,
            errors: RefCell::new(Vec::new()),
            section: "",
            env: BTreeMap::new(),
            empty: DeTable::new(),
            inline: false,
        }
    }

    /// Values in `env` named `SGW_<SECTION>_<TABLE>_<KEY>` override the file's.
    pub fn with_env(mut self, section: &'static str, env: BTreeMap<String, String>) -> Self {
        self.section = section;
        self.env = env;
        self
    }

    /// An error in a value that came from the environment (listed after the file's errors).
    pub fn error_env(&self, var: &str, msg: impl std::fmt::Display) {
        let text = format!("environment {var}: {msg}");
        self.errors.borrow_mut().push((usize::MAX, text));
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

    pub fn error_at(&self, span: Range<usize>, path: &str, msg: impl std::fmt::Display) {
        let (line, col) = self.position(span.start);
        let where_ = if path.is_empty() {
            String::new()
        } else {
            format!("{path}: ")
        };
        let text = if self.inline {
            format!("{where_}{msg}")
        } else {
            format!("{}:{line}:{col}: {where_}{msg}", self.file.display())
        };
        self.errors.borrow_mut().push((span.start, text));
    }

    /// Every error, in file order.
    pub fn into_errors(self) -> Vec<String> {
        let mut e = self.errors.into_inner();
        e.sort_by_key(|(at, _)| *at);
        e.into_iter().map(|(_, m)| m).collect()
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// Parses the document; syntax errors are recorded and give `None`.
    pub fn parse(&self) -> Option<Spanned<DeTable<'a>>> {
        let (doc, errs) = DeTable::parse_recoverable(self.src);
        for e in &errs {
            let span = e.span().unwrap_or(0..0);
            self.error_at(span, "", format!("TOML syntax: {}", e.message()));
        }
        errs.is_empty().then_some(doc)
    }
}

/// One TOML table being read; remembers which keys were used.
pub(crate) struct Tbl<'c, 'a> {
    pub cx: &'c Cx<'a>,
    pub path: String,
    map: &'c DeTable<'a>,
    span: Range<usize>,
    used: RefCell<BTreeSet<String>>,
}

pub(crate) type Val<'c, 'a> = &'c Spanned<DeValue<'a>>;

impl<'c, 'a> Tbl<'c, 'a> {
    pub fn root(cx: &'c Cx<'a>, doc: &'c Spanned<DeTable<'a>>) -> Self {
        Tbl {
            cx,
            path: String::new(),
            map: doc.get_ref(),
            span: doc.span(),
            used: Default::default(),
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&self, key: &str) -> Option<Val<'c, 'a>> {
        self.used.borrow_mut().insert(key.to_owned());
        self.map
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    pub fn err(&self, key: &str, v: Val<'c, 'a>, msg: impl std::fmt::Display) {
        self.cx.error_at(v.span(), &self.child_path(key), msg);
    }

    pub fn missing(&self, key: &str) {
        self.cx.error_at(
            self.span.clone(),
            &self.child_path(key),
            "missing required key",
        );
    }

    fn typed<T>(&self, key: &str, what: &str, f: impl Fn(&DeValue<'a>) -> Option<T>) -> Option<T> {
        let v = self.get(key)?;
        let out = f(v.get_ref());
        if out.is_none() {
            self.err(
                key,
                v,
                format!("expected {what}, found {}", v.get_ref().type_str()),
            );
        }
        out
    }

    /// The environment variable overriding `key` here, if set: `SGW_<SECTION>_<PATH>_<KEY>`
    /// with the table path upper-cased (`SGW_CLIENT_LIMITS_MAX_STREAMS`). Keys of the first
    /// `[[gateway]]`/`[[gateways]]` entry may also drop the table (`SGW_CLIENT_TOKEN_FILE`).
    /// Later array entries cannot be overridden.
    fn env(&self, key: &str) -> Option<(String, String)> {
        if self.cx.env.is_empty() {
            return None;
        }
        let key_up = key.to_ascii_uppercase();
        let mut names = vec![format!("{}{key_up}", self.env_prefix()?)];
        if matches!(self.path.as_str(), "gateway[0]" | "gateways[0]") {
            names.push(format!("SGW_{}_{key_up}", self.cx.section));
        }
        let found = names
            .into_iter()
            .find_map(|n| self.cx.env.get(&n).map(|v| (n, v.clone())));
        if found.is_some() {
            self.used.borrow_mut().insert(key.to_owned());
        }
        found
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

    /// Reports a bad value of `key` where it came from: the environment variable that set
    /// it, or its place in the file.
    pub fn invalid(&self, key: &str, msg: impl std::fmt::Display) {
        if let Some((n, _)) = self.env(key) {
            self.cx.error_env(&n, msg);
        } else if let Some(v) = self.get(key) {
            self.err(key, v, msg);
        }
    }

    /// Whether `key` is given, in the file or the environment.
    pub fn has(&self, key: &str) -> bool {
        self.env(key).is_some() || self.get(key).is_some()
    }

    pub fn str(&self, key: &str) -> Option<String> {
        if let Some((_, v)) = self.env(key) {
            return Some(v);
        }
        self.typed(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    /// An array of strings (a single string is taken as a one-element list).
    pub fn strs(&self, key: &str) -> Option<Vec<String>> {
        if let Some((_, v)) = self.env(key) {
            // Comma-separated in the environment.
            return Some(
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        self.typed(key, "an array of strings", |v| match v {
            DeValue::String(s) => Some(vec![s.to_string()]),
            DeValue::Array(a) => a
                .iter()
                .map(|i| i.get_ref().as_str().map(str::to_owned))
                .collect(),
            _ => None,
        })
    }

    pub fn req_str(&self, key: &str) -> Option<String> {
        if !self.has(key) {
            self.missing(key);
            return None;
        }
        self.str(key)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        if let Some((n, v)) = self.env(key) {
            return match v.trim() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                other => {
                    self.cx
                        .error_env(&n, format!("`{other}` is not a boolean (true/false)"));
                    None
                }
            };
        }
        self.typed(key, "a boolean", |v| v.as_bool())
    }

    pub fn int_in(&self, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        if let Some((n, v)) = self.env(key) {
            return match v.trim().replace('_', "").parse::<i64>() {
                Ok(i) if range.contains(&i) => Some(i),
                Ok(i) => {
                    self.cx.error_env(
                        &n,
                        format!("{i} is out of range {}..={}", range.start(), range.end()),
                    );
                    None
                }
                Err(_) => {
                    self.cx.error_env(&n, format!("`{v}` is not an integer"));
                    None
                }
            };
        }
        let n = self.typed(key, "an integer", |v| {
            let i = v.as_integer()?;
            i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
        })?;
        if !range.contains(&n) {
            if let Some(v) = self.get(key) {
                self.err(
                    key,
                    v,
                    format!("{n} is out of range {}..={}", range.start(), range.end()),
                );
            }
            return None;
        }
        Some(n)
    }

    /// Duration given as `"30s"`, `"5m"`, `"250ms"`, `"1h"`.
    pub fn duration(&self, key: &str) -> Option<Duration> {
        let s = self.str(key)?;
        match parse_duration(&s) {
            Some(d) => Some(d),
            None => {
                let msg = format!("`{s}` is not a duration (use e.g. \"500ms\", \"30s\", \"5m\")");
                if let Some((n, _)) = self.env(key) {
                    self.cx.error_env(&n, msg);
                } else if let Some(v) = self.get(key) {
                    self.err(key, v, msg);
                }
                None
            }
        }
    }

    /// Byte size given as an integer or `"256KiB"`, `"16MiB"`.
    pub fn size(&self, key: &str) -> Option<u64> {
        if let Some((n, v)) = self.env(key) {
            let parsed = v
                .trim()
                .parse::<u64>()
                .ok()
                .or_else(|| parse_size(v.trim()));
            if parsed.is_none() {
                self.cx.error_env(
                    &n,
                    format!("`{v}` is not a size in bytes (e.g. 262144 or 256KiB)"),
                );
            }
            return parsed;
        }
        let v = self.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            DeValue::String(s) => parse_size(s),
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                key,
                v,
                "expected a size in bytes (e.g. 262144 or \"256KiB\")",
            );
        }
        parsed
    }

    pub fn table(&self, key: &str) -> Option<Tbl<'c, 'a>> {
        let Some(v) = self.get(key) else {
            // Absent from the file: still readable if the environment sets keys in it.
            let probe = Tbl {
                cx: self.cx,
                path: self.child_path(key),
                map: &self.cx.empty,
                span: self.span.clone(),
                used: Default::default(),
            };
            let prefix = probe.env_prefix()?;
            return self
                .cx
                .env
                .keys()
                .any(|k| k.starts_with(&prefix))
                .then_some(probe);
        };
        match v.get_ref() {
            DeValue::Table(t) => Some(Tbl {
                cx: self.cx,
                path: self.child_path(key),
                map: t,
                span: v.span(),
                used: Default::default(),
            }),
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
    pub fn tables(&self, key: &str) -> Vec<Tbl<'c, 'a>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(arr) = v.get_ref().as_array() else {
            self.err(
                key,
                v,
                format!(
                    "expected an array of tables, found {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            let path = format!("{}[{i}]", self.child_path(key));
            match item.get_ref() {
                DeValue::Table(t) => out.push(Tbl {
                    cx: self.cx,
                    path,
                    map: t,
                    span: item.span(),
                    used: Default::default(),
                }),
                other => self.cx.error_at(
                    item.span(),
                    &path,
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// Reports every key that was never asked for. `later` names keys this version knows
    /// but does not implement yet, so the message says so instead of "unknown".
    pub fn finish(self, later: &[&str]) {
        let used = self.used.borrow();
        for (k, v) in self.map.iter() {
            let key = k.get_ref().as_ref();
            if used.contains(key) {
                continue;
            }
            let path = self.child_path(key);
            if later.contains(&key) {
                self.cx.error_at(
                    k.span(),
                    &path,
                    "is not supported by this version of sgw yet",
                );
            } else {
                self.cx.error_at(k.span(), &path, "unknown key");
            }
            let _ = v;
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
