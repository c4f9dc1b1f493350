//! What `sgw doctor` asks of one destination, the way a stream to it would go: the ACL on
//! its address (and on its SOCKS proxy), one connection within its timeout, and TLS where
//! the destination asks for it. No caller is involved, so a private destination's caller
//! rules are not checked.

use super::admit::{connect, Conn, Refusal};
use super::state::PushedDest;
use super::stats::ClientStats;
use crate::acl::Acl;
use crate::config::DestOverride;
use crate::proto::{DestinationSpec, Protocol};

/// A destination probed: what was reached, or a refusal's code and sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Reached(String),
    /// Not a failure: nothing to connect to from here (a reverse destination), or only a
    /// partial answer (an HTTP destination whose ACL allows only some paths).
    Note(String),
    Failed {
        code: &'static str,
        sentence: String,
    },
}

/// Probes `spec` as this client would serve it; `local` is client.toml's entry for it,
/// `acl_file` names the ACL in sentences (they stay on this host).
pub async fn probe_destination(
    acl: &Acl,
    mut spec: DestinationSpec,
    local: Option<&DestOverride>,
    acl_file: &str,
) -> Probe {
    if spec.reverse {
        return Probe::Note(
            "a reverse destination: the gateway dials its endpoint, not this client".into(),
        );
    }
    spec.private = false;
    let http = matches!(spec.protocol, Protocol::Http | Protocol::Https);
    let dest = PushedDest::new(spec, &ClientStats::default(), local);
    if dest.spec.protocol == Protocol::Unknown {
        let (code, sentence) = Refusal::Unsupported(
            "this client does not know the destination's protocol; upgrade it".into(),
        )
        .explain(Some(&dest), Some(acl_file));
        return Probe::Failed { code, sentence };
    }
    let path = http.then_some("/");
    match connect(acl, &dest, "", path).await {
        Ok((Conn::Udp(s), _)) => Probe::Reached(format!(
            "UDP socket ready{} (a UDP endpoint is not asked for an answer)",
            s.peer_addr()
                .map(|a| format!(" to {a}"))
                .unwrap_or_default()
        )),
        Ok((_, reached)) => Probe::Reached(format!(
            "TCP connect to {} within its {} s timeout{}",
            match reached {
                Some(ip) => std::net::SocketAddr::new(ip, dest.spec.port).to_string(),
                // A name only the SOCKS proxy resolved.
                None => format!(
                    "{}:{}",
                    crate::telemetry::clean(&dest.spec.ip, 128),
                    dest.spec.port
                ),
            },
            dest.spec.timeout,
            match (&dest.tls, &dest.spec.proxy) {
                (Some(_), _) => ", and the TLS handshake",
                (None, Some(_)) => " through its SOCKS proxy",
                _ => "",
            }
        )),
        Err(r @ Refusal::Denied { .. }) if http && acl.has_path_rules() => {
            let (_, sentence) = r.explain(Some(&dest), Some(acl_file));
            Probe::Note(format!(
                "{sentence} (checked for path /: the ACL has path rules, so other paths may be allowed)"
            ))
        }
        Err(r) => {
            let (code, sentence) = r.explain(Some(&dest), Some(acl_file));
            Probe::Failed { code, sentence }
        }
    }
}
