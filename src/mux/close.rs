//! Why a tunnel closed, as the operator reads it: a stable code (the `reason` field of the
//! `tunnel down` line, docs/OPERATIONS.md) and one sentence with the fact and the next step.
//! The peer's goodbye (GO_AWAY) is remembered, so a tunnel the other side closed on purpose
//! (shutdown, a revoked token, a deleted gateway id) says so instead of "connection closed".

use super::Role;
use crate::proto::Reason;

/// Why a tunnel closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: &'static str,
    pub sentence: String,
    /// Reconnecting will not help until a setting changes (a revoked or expired token).
    pub needs_change: bool,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sentence)
    }
}

/// Every code a tunnel closes with, in docs/OPERATIONS.md's order (a test compares them).
pub const CLOSE_CODES: &[&str] = &[
    "closed_here",
    "peer_shutdown",
    "credentials_revoked",
    "peer_closed_tunnel",
    "peer_closed",
    "peer_vanished",
    "connection_reset",
    "network_timeout",
    "keepalive_timeout",
    "peer_not_reading",
    "write_failed",
    "protocol_error",
];

/// The other side, named from this side's role.
fn peer(role: Role) -> &'static str {
    match role {
        Role::Client => "gateway",
        Role::Gateway => "client",
    }
}

fn closed(code: &'static str, sentence: String) -> Closed {
    Closed {
        code,
        sentence,
        needs_change: false,
    }
}

/// This side closed the tunnel, for `why` (shutdown, an API disconnect, a revoked token).
pub fn here(why: &str) -> Closed {
    closed("closed_here", why.to_owned())
}

/// The peer said goodbye with `reason` and `message` (its GO_AWAY), then closed.
pub fn goodbye(role: Role, reason: Reason, message: &str) -> Closed {
    let p = peer(role);
    // The peer's words: cleaned and cut short before they reach a log line.
    let said = crate::telemetry::clean(message, 256);
    match reason {
        Reason::Shutdown => closed(
            "peer_shutdown",
            format!("the {p} is shutting down or restarting ({said}); the tunnel is reconnected when it is back"),
        ),
        Reason::Auth => Closed {
            code: "credentials_revoked",
            sentence: format!(
                "the {p} closed the tunnel because its credentials are no longer good ({said}): the token was regenerated, expired or the gateway id was disabled; get the current token (`sgw enroll` on the gateway) and update token_file"
            ),
            needs_change: true,
        },
        r => closed(
            "peer_closed_tunnel",
            format!("the {p} closed the tunnel: {said} (reason {r})"),
        ),
    }
}

/// The transport ended cleanly (a WebSocket close) without a goodbye first.
pub fn ended(role: Role) -> Closed {
    closed(
        "peer_closed",
        format!(
            "the {} closed the tunnel without saying why; it is reconnected",
            peer(role)
        ),
    )
}

/// Reading the tunnel failed with `e`: in words an operator acts on (the TLS library's own
/// text for a missing close_notify is a link to its manual).
pub fn read_failed(role: Role, e: &std::io::Error) -> Closed {
    use std::io::ErrorKind;
    let p = peer(role);
    match e.kind() {
        ErrorKind::UnexpectedEof => closed(
            "peer_vanished",
            format!("the {p} closed the connection without a goodbye: its process ended or the network cut it"),
        ),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => closed(
            "connection_reset",
            format!("the connection was reset: the {p}'s process ended or something on the path (a firewall, a load balancer) cut it"),
        ),
        ErrorKind::TimedOut => closed(
            "network_timeout",
            format!("the connection to the {p} timed out: the network path stopped carrying it"),
        ),
        ErrorKind::InvalidData => closed(
            "protocol_error",
            format!(
                "the {p} sent something that is not a tunnel message ({}): check that nothing on the path rewrites the connection",
                crate::telemetry::clean(&e.to_string(), 256)
            ),
        ),
        k => closed(
            "connection_reset",
            format!("reading from the {p} failed ({}): the connection broke", crate::telemetry::io_words(k)),
        ),
    }
}

/// Nothing came from the peer for `silent_ms` (pings included).
pub fn keepalive(role: Role, silent_ms: u64) -> Closed {
    closed(
        "keepalive_timeout",
        format!(
            "nothing came from the {} for {silent_ms} ms, not even a keepalive answer: the path is down or the {} is stuck; the tunnel is reconnected",
            peer(role),
            peer(role)
        ),
    )
}

/// Frames waited for `stalled_ms` and the transport took nothing: the peer stopped reading
/// (it may still be sending).
pub fn not_reading(role: Role, stalled_ms: u64) -> Closed {
    closed(
        "peer_not_reading",
        format!(
            "the {} took nothing for {stalled_ms} ms while frames waited to be sent: it stopped reading; the tunnel is reconnected",
            peer(role)
        ),
    )
}

/// Writing to the tunnel failed.
pub fn write_failed(role: Role, e: &std::io::Error) -> Closed {
    closed(
        "write_failed",
        format!(
            "sending to the {} failed ({}): the connection broke",
            peer(role),
            crate::telemetry::io_words(e.kind())
        ),
    )
}

/// The peer broke the protocol (`what` says how).
pub fn protocol(role: Role, what: &str) -> Closed {
    closed(
        "protocol_error",
        format!(
            "protocol error: {what}; the {} may run an incompatible version",
            peer(role)
        ),
    )
}
