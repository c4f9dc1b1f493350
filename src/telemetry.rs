//! Logging setup: text (journald-friendly without timestamps when run under systemd) or
//! JSON lines, with the level from config or the command line (`RUST_LOG` overrides).

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber; logs go to stderr. Safe to call once per process.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::try_new(format!("sgw={level},warn")).map_err(|e| e.to_string())?,
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let res = match (format, journald) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.with_ansi(false).try_init(),
    };
    res.map_err(|e| e.to_string())
}
