//! Logging setup: text (journald-friendly: no timestamps when run under systemd) or JSON lines,
//! level from config or the command line (`RUST_LOG` overrides), changeable at runtime.
//!
//! Each log statement writes at most `log_lines_per_second` lines a second at info and
//! above, the process `log_lines_per_second_total` (`limit`): peers can cause log lines.
//!
//! Lines reach stderr through a bounded queue and a thread of their own (`log_buffer_lines`):
//! a journald or pipe that stops reading must not stop the workers, which may be one. Lines
//! beyond the queue are dropped and counted (`sgw_log_lines_dropped`); [`flush`] writes what
//! is queued before the process exits.
//!
//! JSON lines are flat: the fields of the enclosing spans (`client.id`, `stream.id`,
//! `dest.id`, ...) sit next to the event's own, so `jq .["stream.id"]` works on every line.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, LogSettings};

mod limit;
mod stderr;

/// Changes the log level and line limit of the running process; hands out the warn/error
/// lines to forward.
#[derive(Clone)]
pub struct LogControl {
    handle: Arc<reload::Handle<EnvFilter, Registry>>,
    forwarded: Arc<std::sync::Mutex<Option<mpsc::Receiver<ForwardedLog>>>>,
    limit: Arc<limit::LineLimit>,
    /// The queue to stderr, and its size.
    stderr: stderr::Stderr,
    buffer_lines: usize,
    /// The level came from the command line or `RUST_LOG`, which win over the config file.
    level_fixed: bool,
}

/// How often the lines held back by `log_lines_per_second` are summed up in a line.
pub const SUPPRESSED_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A warn or error line of this process, for the gateway's clientLogs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedLog {
    pub level: String,
    pub message: String,
    /// Unix time, seconds.
    pub time: u64,
}

/// The event fields a forwarded line carries (docs/SECURITY.md): never rule texts, file
/// paths or error texts.
pub const FORWARDED_FIELDS: [&str; 8] = [
    "reason",
    "acl.line",
    "dest.id",
    "stream.id",
    "caller.addr",
    "http.method",
    "gateway.id",
    "tunnel.slot",
];
/// A forwarded line's message is cut to this many bytes, each field value to the next.
pub const FORWARD_MESSAGE_MAX: usize = 512;
pub const FORWARD_FIELD_MAX: usize = 128;

/// Lines waiting to be forwarded; beyond this they are dropped (and counted).
pub const FORWARD_QUEUE: usize = 256;

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown log level `{0}` (trace, debug, info, warn, error, off)")]
    UnknownLevel(String),
    #[error("{what}: {message}")]
    Filter { what: &'static str, message: String },
    #[error("cannot change the log level: {0}")]
    Reload(String),
    #[error("logging is already set up in this process: {0}")]
    Installed(String),
    #[error("this process cannot change its log level")]
    Fixed,
    #[error("cannot start the thread that writes log lines: {0}")]
    Thread(std::io::Error),
}

impl LogControl {
    /// `level` is a level (`debug`) or a full filter directive (`sgw=debug,hyper=warn`).
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let f = filter(level)?;
        self.handle
            .reload(f)
            .map_err(|e| LogError::Reload(e.to_string()))
    }

    /// A reloaded config's log settings: the line limits, and the level unless the command
    /// line or `RUST_LOG` set it.
    pub fn apply(&self, s: &LogSettings) -> Result<(), LogError> {
        self.limit.set(s.lines_per_second, s.lines_per_second_total);
        match self.level_fixed {
            true => Ok(()),
            false => self.set_level(&s.level),
        }
    }

    /// The line limits in force by their config keys, for `/metrics` (0: no limit).
    pub fn limit_entries(&self) -> [(&'static str, u64); 3] {
        [
            ("log_lines_per_second", u64::from(self.limit.per_second())),
            ("log_lines_per_second_total", u64::from(self.limit.total())),
            ("log_buffer_lines", self.buffer_lines as u64),
        ]
    }

    /// Lines dropped since the process started: `log_buffer_lines` were already waiting for
    /// stderr, or stderr refused them.
    pub fn lines_dropped(&self) -> u64 {
        self.stderr.dropped()
    }

    /// Lines held back by the limit since the process started.
    pub fn lines_suppressed(&self) -> u64 {
        self.limit.suppressed()
    }

    /// Writes one warn line every [`SUPPRESSED_REPORT_EVERY`] in which lines were held back,
    /// naming the statements; a last one at `shutdown`.
    pub async fn report_suppressed(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SUPPRESSED_REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let done = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.cancelled() => true,
            };
            let held = self.limit.take_held();
            if held.total > 0 {
                limit::summary::emit(&held, self.limit.per_second(), self.limit.total());
            }
            if done {
                break;
            }
        }
    }

    /// The warn/error lines of this process (once; later calls get `None`).
    pub fn take_forwarded(&self) -> Option<mpsc::Receiver<ForwardedLog>> {
        self.forwarded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn filter(level: &str) -> Result<EnvFilter, LogError> {
    let spec = if level.contains('=') || level.contains(',') {
        level.to_owned()
    } else {
        match level {
            "trace" | "debug" | "info" | "warn" | "error" | "off" => format!("sgw={level},warn"),
            other => return Err(LogError::UnknownLevel(other.to_owned())),
        }
    };
    EnvFilter::try_new(spec).map_err(|e| LogError::Filter {
        what: "log_level",
        message: e.to_string(),
    })
}

/// The process's queue to stderr, for [`flush`].
static STDERR: std::sync::OnceLock<stderr::Stderr> = std::sync::OnceLock::new();

/// How long [`flush`] waits for stderr to take the queued lines.
pub const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the lines queued for stderr so far, waiting [`FLUSH_WITHIN`] at most (a stderr that
/// takes nothing loses them). Call before the process exits; a no-op without [`init`].
pub fn flush() {
    if let Some(s) = STDERR.get() {
        s.flush(FLUSH_WITHIN);
    }
}

/// Writes `text` after the queued lines, through the queue when there is one (a stderr that
/// takes nothing must not hold the process at exit), waiting [`FLUSH_WITHIN`] at most.
pub fn write_last(text: &str) {
    match STDERR.get() {
        Some(s) => {
            for line in text.lines() {
                s.push(format!("{line}\n").as_bytes());
            }
            s.flush(FLUSH_WITHIN);
        }
        None => eprintln!("{text}"),
    }
}

/// A panic (a bug) becomes a line in the queue, in order with the rest, instead of a write
/// to stderr that could block. It goes around the subscriber, whose filters could hide it and
/// whose locks the panicking code may hold. On the main thread, which is about to end the
/// process, the queue is flushed; the writer thread itself keeps the standard hook.
fn log_panics(format: LogFormat) {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let Some(queue) = STDERR.get().filter(|_| thread.name() != Some("sgw-log")) else {
            return standard(info);
        };
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let name = thread.name().unwrap_or("unnamed");
        // `RUST_BACKTRACE` decides, as with the standard hook.
        let trace = std::backtrace::Backtrace::capture();
        let trace = match trace.status() {
            std::backtrace::BacktraceStatus::Captured => trace.to_string(),
            _ => String::new(),
        };
        let line = panic_line(format, message, &location, name, &trace);
        queue.push(line.as_bytes());
        if thread.name() == Some("main") {
            flush();
        }
    }));
}

/// The line a panic is logged as, in the process's log format.
fn panic_line(
    format: LogFormat,
    message: &str,
    location: &str,
    thread: &str,
    trace: &str,
) -> String {
    match format {
        LogFormat::Json => {
            let mut o = Map::new();
            o.insert("timestamp".into(), jiff::Timestamp::now().to_string().into());
            o.insert("level".into(), "ERROR".into());
            o.insert("message".into(), "panicked (a bug: please report it)".into());
            o.insert("panic.message".into(), message.into());
            o.insert("panic.location".into(), location.into());
            o.insert("panic.thread".into(), thread.into());
            if !trace.is_empty() {
                o.insert("panic.backtrace".into(), trace.into());
            }
            format!("{}\n", Value::Object(o))
        }
        LogFormat::Text => format!(
            "ERROR panicked (a bug: please report it) panic.message={message:?} panic.location={location} panic.thread={thread}\n{trace}"
        ),
    }
}

/// Installs the global subscriber; logs go to stderr through a queue of `buffer_lines`. Once
/// per process. `level_fixed`: the level came from the command line, so a reload keeps it.
pub fn init(
    level: &str,
    level_fixed: bool,
    format: LogFormat,
    (per_statement, total): (u32, u32),
    buffer_lines: usize,
) -> Result<LogControl, LogError> {
    let (f, level_fixed) = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => {
            let f = EnvFilter::try_new(f).map_err(|e| LogError::Filter {
                what: "RUST_LOG",
                message: e.to_string(),
            })?;
            (f, true)
        }
        _ => (filter(level)?, level_fixed),
    };
    let (filter_layer, handle) = reload::Layer::new(f);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let stderr = stderr::Stderr::start(buffer_lines).map_err(LogError::Thread)?;
    let base = tracing_subscriber::fmt::layer()
        .with_writer(stderr.clone())
        .with_target(false)
        .with_ansi(false);
    let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
    let limit = Arc::new(limit::LineLimit::new(per_statement, total));
    // A line held back is held back everywhere: not written, not forwarded.
    let registry = tracing_subscriber::registry()
        .with(filter_layer)
        .with(Limit(limit.clone()))
        .with(Forward { tx });
    let res = match (format, journald) {
        (LogFormat::Json, _) => registry
            .with(base.fmt_fields(JsonFields::new()).event_format(FlatJson))
            .try_init(),
        (LogFormat::Text, true) => registry.with(base.without_time()).try_init(),
        (LogFormat::Text, false) => registry.with(base).try_init(),
    };
    res.map_err(|e| LogError::Installed(e.to_string()))?;
    let _ = STDERR.set(stderr.clone());
    log_panics(format);
    Ok(LogControl {
        handle: Arc::new(handle),
        forwarded: Arc::new(std::sync::Mutex::new(Some(rx))),
        limit,
        stderr,
        buffer_lines,
        level_fixed,
    })
}

/// Holds back the lines over `log_lines_per_second` before any layer sees them.
struct Limit(Arc<limit::LineLimit>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for Limit {
    fn event_enabled(
        &self,
        event: &Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.0.admit(event.metadata(), std::time::Instant::now())
    }
}

/// Copies sgw's own warn and error events into a bounded queue (dropping when full: a log
/// storm must never cost memory or block the hot path).
struct Forward {
    tx: mpsc::Sender<ForwardedLog>,
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Forward {
    fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("sgw") {
            return;
        }
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let mut message = match fields.remove("message") {
            Some(Value::String(m)) => clean(&m, FORWARD_MESSAGE_MAX),
            _ => String::new(),
        };
        // Only fields the gateway may see, each cut short: a caller controls some of them
        // (paths, names), and rule texts and file paths are the client's own business.
        for k in FORWARDED_FIELDS {
            let v = match fields.get(k) {
                Some(Value::String(s)) => clean(s, FORWARD_FIELD_MAX),
                Some(other) => clean(&other.to_string(), FORWARD_FIELD_MAX),
                None => continue,
            };
            message.push_str(&format!(" {k}={v}"));
        }
        let time = unix_ms() / 1000;
        let _ = self.tx.try_send(ForwardedLog {
            level: meta.level().to_string().to_ascii_lowercase(),
            message,
            time,
        });
    }
}

/// One JSON object per line: `timestamp`, `level`, `message`, then span fields (outermost
/// first), then the event's fields.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            Value::String(jiff::Timestamp::now().to_string()),
        );
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f) {
                        obj.extend(m);
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut obj));
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::String(v.into()));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        // `?text` fields are quoted for the text format; JSON quotes anyway.
        let d = format!("{v:?}");
        let s = match d.starts_with('"') {
            true => serde_json::from_str::<String>(&d).unwrap_or(d),
            false => d,
        };
        self.0.insert(f.name().into(), Value::String(s));
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An io error's kind as words, without the `Os { code: .. }` of its `Debug`.
pub fn io_words(kind: std::io::ErrorKind) -> String {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::ConnectionAborted => "connection aborted".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::HostUnreachable => "no route to the host".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::UnexpectedEof => "closed before the end".into(),
        ErrorKind::BrokenPipe => "the other side closed it".into(),
        ErrorKind::AddrInUse => "address already in use".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::NotFound => "not found".into(),
        k => k.to_string(),
    }
}

/// A peer- or user-supplied string made safe for a log line: control characters escaped
/// (so it cannot forge lines or terminal escapes) and cut to `max` bytes, marked with `…`.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for c in s.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic's line is one JSON object in JSON mode (the backtrace a field of it), one text
    /// line plus the backtrace in text mode, with a message that can't start a line of its own.
    #[test]
    fn a_panic_is_a_line_in_the_log_format() {
        let json = panic_line(
            LogFormat::Json,
            "boom\nERROR forged",
            "src/x.rs:7",
            "tokio-runtime-worker",
            "0: frame\n1: frame\n",
        );
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["panic.message"], "boom\nERROR forged");
        assert_eq!(v["panic.location"], "src/x.rs:7");
        assert_eq!(v["panic.backtrace"], "0: frame\n1: frame\n");
        let text = panic_line(
            LogFormat::Text,
            "boom\nERROR forged",
            "src/x.rs:7",
            "main",
            "",
        );
        assert_eq!(
            text,
            "ERROR panicked (a bug: please report it) panic.message=\"boom\\nERROR forged\" panic.location=src/x.rs:7 panic.thread=main\n"
        );
    }
}
