//! Why a tunnel could not come up, as the operator of an on-prem host reads it: a stable
//! code (the log's `reason` field, docs/OPERATIONS.md) and one sentence with the fact and the
//! next step. rustls, io and DNS errors are mapped here by kind, so their own wording (`Other(
//! OtherError(...))`, `Os { code: 111, .. }`) never reaches the operator unexplained.

use std::io::ErrorKind;

use rustls::CertificateError;

use super::{AcceptError, ConnectError};
use crate::config::{GatewayLink, Replica, Trust};
use crate::telemetry::io_words;

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
    "gateway_busy",
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

/// Why connecting to `replica` of `link` failed with `e`.
pub fn explain(e: &ConnectError, link: &GatewayLink, replica: &Replica) -> Why {
    let trust = &link.trust;
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
                io_words(io.kind())
            ),
        ),
        ConnectError::Proxy(p) => proxy(p),
        ConnectError::Tls(io) => tls(io, &at, &ca),
        // One answer for both on purpose: the gateway does not tell a caller which gateway
        // ids exist (docs/SECURITY.md), so the sentence names both checks.
        ConnectError::Unauthorized => why(
            "token_rejected",
            true,
            format!(
                "the gateway at {at} refused gateway id `{}` with this token (HTTP 401): the token is wrong or was regenerated, or no gateway with that id exists there; compare gateway_id and token / token_file with the gateway (`sgw enroll ID` there prints both), or enroll again",
                crate::telemetry::clean(&link.gateway_id, 128)
            ),
        ),
        ConnectError::Version(v) => why(
            "version_mismatch",
            true,
            format!(
                "the gateway does not speak this client's protocol ({}): upgrade the older of the two",
                crate::telemetry::clean(v, 256)
            ),
        ),
        ConnectError::Http { status: 503, body } if body.starts_with("gateway busy") => why(
            "gateway_busy",
            false,
            format!(
                "{at} is busy ({}): this client tries again after its backoff",
                crate::telemetry::clean(body, 256)
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

fn proxy(e: &super::proxy::ProxyError) -> Why {
    use super::proxy::ProxyError;
    match e {
        ProxyError::Connect { proxy, source } => why(
            "proxy_failed",
            false,
            format!(
                "cannot reach the outbound proxy {proxy} ({}): check outbound_proxy's host and port, and that the proxy runs",
                io_words(source.kind())
            ),
        ),
        ProxyError::Refused {
            proxy,
            target,
            reply,
        } => {
            // The proxy's words: cleaned and cut short.
            let reply = crate::telemetry::clean(reply, 128);
            let fix = if reply.contains(" 407") || reply.contains(" 401") {
                "it wants credentials: set user and password in outbound_proxy".to_string()
            } else {
                format!("its rules must allow CONNECT to {target}: ask the proxy's administrator, or use another proxy")
            };
            why(
                "proxy_failed",
                true,
                format!("the outbound proxy {proxy} refused to open a connection to the gateway at {target} (it answered `{reply}`): {fix}"),
            )
        }
        ProxyError::Protocol { proxy, message } => why(
            "proxy_failed",
            false,
            format!(
                "the outbound proxy {proxy} broke off the tunnel request ({}): check that outbound_proxy names a proxy of that kind (http:// or socks5://)",
                crate::telemetry::clean(message, 128)
            ),
        ),
    }
}

/// Every code [`refused`] gives (the gateway's side), in docs/OPERATIONS.md's order.
pub const ACCEPT_CODES: &[&str] = &[
    "client_distrusts_certificate",
    "not_tls",
    "tls_abandoned",
    "tls_failed",
    "token_rejected",
    "version_mismatch",
    "not_an_upgrade",
    "handshake_failed",
    "timeout",
    "limit",
];

/// Why the gateway did not accept an incoming tunnel, as the cloud side's operator reads it.
/// The peer may be anything that reaches the port (a scanner, a health check), so none of
/// these needs a change on the gateway by itself.
pub fn refused(e: &AcceptError) -> Why {
    match e {
        AcceptError::Tls(io) => accept_tls(io),
        AcceptError::Refused(msg) if msg.starts_with("unsupported protocol version") => why(
            "version_mismatch",
            false,
            format!("{msg}: the client is of another protocol version; upgrade the older side"),
        ),
        AcceptError::Refused(msg) => why(
            "token_rejected",
            false,
            format!(
                "{msg}, or no such gateway id (answered 401): the client needs the gateway id and its current token (`sgw enroll ID` prints both)"
            ),
        ),
        AcceptError::Busy(msg) => why(
            "limit",
            false,
            format!("{msg} (answered 503): the client retries after its backoff"),
        ),
        AcceptError::Ws(_) => why(
            "not_an_upgrade",
            false,
            "the request after TLS is not a WebSocket upgrade: something other than an sgw client (a browser, a health check) reached the tunnel port; point it at the API or admin port instead".into(),
        ),
        AcceptError::Handshake(m) => why(
            "handshake_failed",
            false,
            format!(
                "the client broke off the tunnel handshake ({}): it may be of an incompatible version",
                crate::telemetry::clean(m, 256)
            ),
        ),
        AcceptError::Send(_) => why(
            "handshake_failed",
            false,
            "the connection broke while WELCOME and the destinations were sent".into(),
        ),
        AcceptError::Timeout(step, after) => why(
            "timeout",
            false,
            format!("the client did not finish the {step} within {after:?}: a slow or stuck client, or a path dropping packets"),
        ),
    }
}

fn accept_tls(io: &std::io::Error) -> Why {
    use rustls::AlertDescription as A;
    let inner = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(
            // DecryptError: the chain's signature did not verify, as when the client trusts
            // another CA of the same name (two `sgw init` CAs look alike by name).
            a @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::AccessDenied
            | A::DecryptError),
        )) => why(
            "client_distrusts_certificate",
            false,
            format!(
                "the client refused this gateway's certificate (its TLS alert: {a:?}): it must trust the CA that signed tls_cert (ca_file = the gateway's ca.pem) and dial a name the certificate holds (`sgw init --public NAME`)"
            ),
        ),
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
            why(
                "not_tls",
                false,
                "the peer did not speak TLS: something other than an sgw client (a plain HTTP client, a scanner) reached the tunnel port".into(),
            )
        }
        Some(other) => why(
            "tls_failed",
            false,
            format!(
                "the TLS handshake with the client failed: {}",
                crate::telemetry::clean(&other.to_string(), 256)
            ),
        ),
        None if io.kind() == ErrorKind::UnexpectedEof
            || io.kind() == ErrorKind::ConnectionReset =>
        {
            why(
                "tls_abandoned",
                false,
                "the peer closed the connection during the TLS handshake: a port check, a load balancer's health check, or a client that gave up".into(),
            )
        }
        None => why(
            "tls_failed",
            false,
            format!("the TLS handshake with the client failed ({})", io_words(io.kind())),
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
                io_words(io.kind())
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
