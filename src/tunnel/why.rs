//! Why a tunnel could not come up, as the operator of an on-prem host reads it: a stable
//! code (the log's `reason` field, docs/OPERATIONS.md) and one sentence with the fact and the
//! next step. rustls, io and DNS errors are mapped here by kind, so their own wording (`Other(
//! OtherError(...))`, `Os { code: 111, .. }`) never reaches the operator unexplained.

use std::io::ErrorKind;

use rustls::CertificateError;

use super::ConnectError;
use crate::config::{Replica, Trust};

/// A reason: its code and the sentence for this occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    pub code: &'static str,
    pub sentence: String,
    /// Waiting will not help: a setting must change (logged as an error, not a warning).
    pub needs_change: bool,
}

/// Every code [`explain`] gives, in docs/OPERATIONS.md's order (a test compares them).
pub const CODES: &[&str] = &[
    "dns_failed",
    "gateway_refused",
    "gateway_unreachable",
    "proxy_failed",
    "tls_unknown_ca",
    "tls_wrong_name",
    "tls_ca_as_leaf",
    "tls_expired",
    "tls_failed",
    "token_rejected",
    "version_mismatch",
    "upgrade_refused",
    "handshake_failed",
    "timeout",
];

fn why(code: &'static str, needs_change: bool, sentence: String) -> Why {
    Why {
        code,
        sentence,
        needs_change,
    }
}

/// Why connecting to `replica` failed with `e`; `trust` is what the client trusts (for the
/// advice on certificates).
pub fn explain(e: &ConnectError, replica: &Replica, trust: &Trust) -> Why {
    let at = format!("{}:{}", replica.url.host, replica.url.port);
    let ca = match trust {
        Trust::System => "this host's trusted CAs (no ca_file is set)".to_string(),
        Trust::Certs(_) => "ca_file".to_string(),
    };
    match e {
        ConnectError::Dns(_) => dns_failed(&replica.url.host),
        ConnectError::Tcp(io) if io.kind() == ErrorKind::ConnectionRefused => why(
            "gateway_refused",
            false,
            format!(
                "nothing accepts connections at {at}: the gateway is not running there, or listens on another port, or a firewall rejects the connection; check the gateway process and the URL's port"
            ),
        ),
        ConnectError::Tcp(io) => why(
            "gateway_unreachable",
            false,
            format!(
                "cannot reach the gateway at {at} ({}): check the network path and firewalls between this host and the gateway",
                io_kind(io)
            ),
        ),
        ConnectError::Proxy(p) => why(
            "proxy_failed",
            false,
            format!("outbound proxy did not open the tunnel: {p}; check outbound_proxy and the proxy's rules for {at}"),
        ),
        ConnectError::Tls(io) => tls(io, &at, &ca),
        ConnectError::Unauthorized => why(
            "token_rejected",
            true,
            "gateway rejected the security token (HTTP 401) for this gateway id: check gateway_id and token / token_file, or enroll again with a fresh `sgw enroll` string".into(),
        ),
        ConnectError::Version(v) => why(
            "version_mismatch",
            true,
            format!(
                "the gateway does not speak this client's protocol ({}): upgrade the older of the two",
                crate::telemetry::clean(v, 256)
            ),
        ),
        ConnectError::Http { status, .. } => why(
            "upgrade_refused",
            false,
            format!(
                "{at} answered the tunnel request with HTTP {status}, not an upgrade: the URL may point at another service or a proxy in front of the gateway; check the URL's port and path"
            ),
        ),
        ConnectError::Ws(_) | ConnectError::Send(_) | ConnectError::Handshake(_) => why(
            "handshake_failed",
            false,
            format!(
                "the tunnel handshake with {at} failed ({}); it is retried, and if it persists check that the URL is a gateway's tunnel endpoint",
                // Partly the peer's words (a close reason): cleaned and cut short.
                crate::telemetry::clean(&e.to_string(), 256)
            ),
        ),
        ConnectError::Timeout(step, after) => why(
            "timeout",
            false,
            format!("{step} with {at} got no answer within {after:?}: the gateway or the path to it is overloaded or dropping packets"),
        ),
    }
}

/// The gateway's name `host` does not resolve (no answer, or no address).
pub fn dns_failed(host: &str) -> Why {
    why(
        "dns_failed",
        false,
        format!(
            "the gateway's name {host} does not resolve: check the host in the gateway URL, and this host's DNS (resolv.conf)"
        ),
    )
}

fn tls(io: &std::io::Error, at: &str, ca: &str) -> Why {
    let Some(err) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return why(
            "tls_failed",
            false,
            format!(
                "the TLS handshake with {at} failed ({}): the gateway closed it or is not speaking TLS on this port",
                io_kind(io)
            ),
        );
    };
    match err {
        // A bad signature while building the chain: an issuer of the same name, another key
        // (two `sgw init` CAs look alike by name).
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => why(
            "tls_unknown_ca",
            true,
            format!(
                "the gateway's certificate at {at} is not signed by a CA in {ca}: use the ca.pem written by the gateway's `sgw init` (or the one in its enrollment string)"
            ),
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => why(
            "tls_wrong_name",
            true,
            format!(
                "the gateway's certificate holds {}, not {}: connect by one of those names, or add this one to the certificate (`sgw init --public {}` on the gateway)",
                names_held(presented),
                expected.to_str(),
                expected.to_str()
            ),
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => why(
            "tls_wrong_name",
            true,
            format!(
                "the gateway's certificate at {at} does not hold the name this client asked for: add it (`sgw init --public NAME` on the gateway) or use a name it holds"
            ),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => why(
            "tls_expired",
            true,
            format!("the gateway's certificate at {at} has expired: renew tls_cert on the gateway"),
        ),
        rustls::Error::InvalidCertificate(CertificateError::Other(o))
            if format!("{o:?}").contains("CaUsedAsEndEntity") =>
        {
            why(
                "tls_ca_as_leaf",
                true,
                format!(
                    "the gateway at {at} presents a CA certificate as its own: on the gateway, tls_cert must be the gateway's certificate (gateway.pem), not the CA (ca.pem)"
                ),
            )
        }
        other => why(
            "tls_failed",
            false,
            format!(
                "the TLS handshake with {at} failed: {}",
                crate::telemetry::clean(&other.to_string(), 256)
            ),
        ),
    }
}

/// The names a certificate holds, as the peer sent them: the first few, each cleaned of
/// control characters and cut short, so a certificate can't flood or forge log lines.
fn names_held(presented: &[String]) -> String {
    const SHOWN: usize = 8;
    if presented.is_empty() {
        return "no names".into();
    }
    let mut out: Vec<String> = presented
        .iter()
        .take(SHOWN)
        .map(|n| crate::telemetry::clean(n, 64))
        .collect();
    if presented.len() > SHOWN {
        out.push(format!("and {} more", presented.len() - SHOWN));
    }
    out.join(", ")
}

/// An io error as words, without `Os { code: .. }`.
fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::ConnectionAborted => "connection aborted".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::HostUnreachable => "no route to the host".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::UnexpectedEof => "closed during the handshake".into(),
        k => k.to_string(),
    }
}
