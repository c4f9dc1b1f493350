//! From configuration to the wire: [`check`] (what binding would refuse, short of
//! sockets), [`spec_of`] (a destination as the client receives it in CONFIG), and warnings
//! about settings that are valid but probably not meant.

use tracing::warn;

use bytes::Bytes;

use super::{reverse, GatewayError};
use crate::config::{Destination, GatewayConfig, TenantConfig};
use crate::proto::{ConfigPush, DestinationSpec, EndpointTls, Hidden, IpTableRuleSpec, ProxySpec};
use crate::tunnel;

/// Warnings about a gateway id's configuration that is valid but probably not meant.
pub(super) fn warn_odd(t: &TenantConfig) {
    if !t.enf_tok_sec {
        warn!(gateway.id = %t.id, "enf_tok_sec = false: clients may join without the security token");
    }
    for d in t
        .destinations
        .iter()
        .filter(|d| d.private && d.ip_table_rules.is_empty())
    {
        warn!(gateway.id = %t.id, dest.id = %d.id, "destination is private with no ip_table_rules: every caller is refused");
    }
}

/// Everything [`super::Gateway::bind`] would refuse in a valid-looking config, short of binding
/// sockets: TLS identities and trust, `egress_allow` entries. For `sgw config check`.
pub fn check(cfg: &GatewayConfig) -> Result<(), crate::config::ConfigErrors> {
    let mut errs = Vec::new();
    if let Err(e) = tunnel::server_tls(&cfg.tls) {
        errs.push(e.to_string());
    }
    if let Err(e) = reverse::egress_acl(&cfg.egress_allow) {
        errs.push(e.to_string());
    }
    for t in &cfg.gateways {
        if let Err(e) = config_push(t, cfg.limits.max_destinations) {
            errs.push(e.to_string());
        }
        if let crate::config::Egress::Own(list) = &t.egress {
            if let Err(e) = reverse::egress_acl(list) {
                errs.push(format!("gateway {}: {e}", t.id));
            }
        }
        for d in &t.destinations {
            let at = format!("gateway {} destination {}", t.id, d.id);
            if let Err(e) = crate::tls::caller_acceptor(&d.caller_tls) {
                errs.push(format!("{at}: {e}"));
            }
            if let Some(Err(e)) = spec_of(d)
                .tls
                .filter(|_| d.reverse)
                .map(|s| crate::tls::endpoint_connector(&s, &d.ip))
            {
                errs.push(format!("{at}: {e}"));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(crate::config::ConfigErrors(errs))
    }
}

/// A destination as clients receive it: what the client needs to reach the endpoint.
pub fn spec_of(d: &Destination) -> DestinationSpec {
    DestinationSpec {
        id: d.id.clone(),
        protocol: d.protocol.into(),
        ip: d.ip.clone(),
        port: d.port,
        timeout: d.timeout.as_secs() as u32,
        idle_timeout: d
            .idle_timeout
            .map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX)),
        private: d.private,
        ip_table_rules: d
            .ip_table_rules
            .iter()
            .map(|r| IpTableRuleSpec {
                src: r.src.clone(),
                spt: r.spt.clone(),
                app: r.app.clone(),
            })
            .collect(),
        tls: d.endpoint_tls.as_ref().map(|t| EndpointTls {
            sni: t.sni.clone(),
            reject_unauth: t.reject_unauth,
            client_certs: t.client_certs.clone(),
            mutual: t.mutual,
            dest_cert: t.identity.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
            dest_key: Hidden(
                t.identity
                    .as_ref()
                    .map(|m| m.1.expose().to_owned())
                    .unwrap_or_default(),
            ),
        }),
        proxy: d.proxy.as_ref().filter(|p| p.enabled).map(|p| ProxySpec {
            host: p.host.clone(),
            port: p.port,
            protocol: p.protocol,
            username: p.username.clone(),
            password: Hidden(
                p.password
                    .as_ref()
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default(),
            ),
        }),
        compression: d.compression,
        host_rewrite: d.host_rewrite,
        reverse: d.reverse,
        local_port: d.local_port,
    }
}

/// The CONFIG payload clients of `cfg` get, or why it can't be sent: more destinations than
/// `max_destinations`, or a payload over the protocol's limit (clients would refuse it and
/// reconnect in a loop). Used by every change and by `sgw config check`.
pub(super) fn config_push(
    cfg: &TenantConfig,
    max_destinations: usize,
) -> Result<Bytes, GatewayError> {
    if cfg.destinations.len() > max_destinations {
        return Err(GatewayError::TooManyDestinations {
            id: cfg.id.clone(),
            count: cfg.destinations.len(),
            max: max_destinations,
        });
    }
    let push = ConfigPush {
        destinations: cfg
            .destinations
            .iter()
            .filter(|d| d.enabled)
            .map(spec_of)
            .collect(),
    };
    let push = Bytes::from(serde_json::to_vec(&push).unwrap_or_default());
    if push.len() > crate::proto::MAX_CONTROL_JSON {
        return Err(GatewayError::ConfigTooLarge {
            id: cfg.id.clone(),
            len: push.len(),
        });
    }
    Ok(push)
}
