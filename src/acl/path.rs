//! Request paths as path rules judge them: one canonical form (escapes of unreserved
//! characters decoded, dot segments resolved) and refusal of what servers read differently
//! (encoded slashes and the like), so `..%2f` can't slip past a prefix rule.

/// `pre` is a path prefix of `p` on segment boundaries: `/api` matches `/api` and `/api/v1`,
/// not `/apix`; `/api/` matches `/api/v1` only.
pub fn path_has_prefix(p: &str, pre: &str) -> bool {
    p.starts_with(pre)
        && (p.len() == pre.len() || pre.ends_with('/') || p.as_bytes()[pre.len()] == b'/')
}

/// Canonical form of a request path for matching: query and fragment dropped, percent-escapes
/// of unreserved characters decoded, `.`/`..` segments resolved and empty segments collapsed,
/// so `/my/%61pi/../api//x` is checked as `/my/api/x` (no traversal past a prefix rule). What
/// servers decode alike has one spelling: escapes of the characters a path may hold as they
/// are (`:`, `@`, `!$&'()*+,=`) are decoded too, and the rest are escapes in upper-case hex,
/// with bytes outside printable ASCII and the few a target may not hold as they are
/// (`"<>\^`{|}`) escaped, so `/café`, `/caf%c3%a9` and `/caf%C3%A9` are one path, and so
/// are `/x:y` and `/x%3ay`. `%2F`, `%3F`, `%23` and `%25` stay escaped: decoded, they would
/// change the path's shape.
pub fn normalize_path(p: &str) -> String {
    let p = p.split(['?', '#']).next().unwrap_or("");
    let mut decoded = String::with_capacity(p.len());
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if as_is_in_path(c) {
                    decoded.push(c as char);
                } else {
                    push_escape(&mut decoded, c);
                }
                i += 3;
                continue;
            }
        }
        if as_is_in_path(b[i]) || matches!(b[i], b'/' | b'%' | b'?' | b'#' | b';') {
            decoded.push(b[i] as char);
        } else {
            push_escape(&mut decoded, b[i]);
        }
        i += 1;
    }
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len() + 1);
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    s
}

/// `%XX` in upper-case hex, without a formatter: this runs for every judged request.
fn push_escape(out: &mut String, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(c >> 4)]));
    out.push(char::from(HEX[usize::from(c & 0xf)]));
}

/// A character a path segment holds as it is (RFC 3986 `pchar` less `;`, which is refused or
/// kept apart): an escape of it means the same to servers, so it is decoded.
fn as_is_in_path(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&c)
}

/// Why an HTTP request path cannot be judged safely (docs/ACL.md, "HTTP paths").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not an absolute path")]
    NotAbsolute,
    #[error("a `%` is not followed by two hex digits")]
    BadEscape,
    #[error("an escaped `/`, `\\`, `%`, `;` or control character (%2F, %5C, %25, %3B, %00 ...)")]
    EscapedSeparator,
    #[error("a backslash")]
    Backslash,
    #[error("a `;` path parameter")]
    Parameter,
    #[error("a `.` or `..` segment")]
    DotSegment,
    #[error("a control character")]
    Control,
}

/// The path a request will be judged and forwarded with, or why it is refused.
///
/// Servers disagree on `%2F`, `\`, `;` parameters, dot segments and double escapes: some
/// decode or resolve them after a proxy has judged the path, which is how `/public/..%2fadmin`
/// reaches `/admin`. Such paths are refused; what is left means the same to every server, and
/// is returned normalised ([`normalize_path`]) with the query kept, so the endpoint acts on
/// exactly the path the ACL judged.
pub fn request_path(target: &str) -> Result<String, PathError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) else {
                    return Err(PathError::BadEscape);
                };
                let c = (h * 16 + l) as u8;
                if matches!(c, b'/' | b'\\' | b'%' | b';') || c.is_ascii_control() {
                    return Err(PathError::EscapedSeparator);
                }
                decoded.push(c);
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameter),
            c if c.is_ascii_control() => return Err(PathError::Control),
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    if decoded
        .split(|c| *c == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(PathError::DotSegment);
    }
    if query.bytes().any(|c| c.is_ascii_control()) {
        return Err(PathError::Control);
    }
    let mut out = normalize_path(path);
    out.push_str(query);
    Ok(out)
}
