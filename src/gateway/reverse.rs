//! Reverse (cloud) destinations: a client listens on-prem on the destination's `local_port`
//! and opens a stream per connection; the gateway dials the destination's `ip:port` if its
//! `egress_allow` list allows the address (default deny), with the destination's timeout,
//! TLS and compression.
//!
//! One connection's path: the client's OPEN → [`serve_reverse`] finds the destination, checks
//! egress, dials, accepts → relay.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn, Instrument};

use super::registry::Tenant;
use super::state::{GatewayState, Stat};
use crate::acl::Request;
use crate::config::{Destination, TenantConfig};
use crate::dial::{self, Vetted};
use crate::mux::Incoming;
use crate::proto::{Reason, FEATURE_DEFLATE};
use crate::relay::{relay, Counters, Facing, Options};

/// Builds the egress policy: each `egress_allow` entry is an ACL `host[:ports]` form.
pub(super) fn egress_acl(entries: &[String]) -> Result<crate::acl::Acl, crate::acl::AclError> {
    let text: String = entries.iter().map(|e| format!("acl allow {e}\n")).collect();
    crate::acl::Acl::parse("egress_allow", &text, crate::config::Policy::Deny)
}

/// Where a client-opened stream goes: a reverse destination by id, or the `host:port` target
/// of a SOCKS5 CONNECT (30 s timeout, no TLS).
fn reverse_target(cfg: &TenantConfig, meta: &crate::proto::OpenMeta) -> Option<Destination> {
    if !cfg.enabled {
        return None;
    }
    let Some(t) = &meta.target else {
        return cfg
            .destinations
            .iter()
            .find(|d| d.id == meta.dest && d.reverse && d.enabled)
            .cloned();
    };
    let (host, port) = t.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() {
        return None;
    }
    Some(Destination {
        id: meta.dest.clone(),
        desc: String::new(),
        enabled: true,
        protocol: crate::config::Protocol::Tcp,
        ip: host.to_owned(),
        port,
        cloud_host: String::new(),
        cloud_port: 0,
        timeout: std::time::Duration::from_secs(30),
        idle_timeout: None,
        private: false,
        ip_table_rules: Vec::new(),
        endpoint_tls: None,
        caller_tls: crate::config::CallerTls::None,
        proxy: None,
        compression: false,
        host_rewrite: false,
        reverse: true,
        local_port: 0,
    })
}

/// A stream a client opened for one of its on-prem connections.
pub(super) async fn serve_reverse(
    gw: Arc<GatewayState>,
    tenant: Arc<Tenant>,
    inc: Incoming,
    client_id: String,
) {
    let span = inc.span(&client_id, "reverse");
    async move {
        let started = Instant::now();
        let state = tenant.state();
        let Some(dest) = reverse_target(&state.cfg, &inc.meta) else {
            gw.count(&tenant, Stat::Failed, 1);
            info!(
                reason = "unknown_dest",
                "reverse stream refused: no such reverse destination"
            );
            let msg = match &inc.meta.target {
                Some(t) => format!("`{t}` is not a host:port target"),
                None => format!(
                    "gateway has no enabled reverse destination `{}`",
                    inc.meta.dest
                ),
            };
            inc.reject(Reason::UnknownDest, &msg).await;
            return;
        };
        // The client names a SOCKS target: escaped before any log line or answer holds it.
        let target = crate::telemetry::clean(&format!("{}:{}", dest.ip, dest.port), 300);
        tracing::Span::current().record("dest.addr", tracing::field::display(&target));
        let deadline = tokio::time::Instant::now() + dest.timeout;
        let refuse = |reason: Reason, message: String| {
            gw.count(&tenant, Stat::Failed, 1);
            (reason, message)
        };
        let denied = || {
            gw.count(&tenant, Stat::Denied, 1);
            (
                Reason::AclDenied,
                format!(
                    "egress_allow of gateway {} does not allow {target}",
                    tenant.id
                ),
            )
        };
        let dialled = async {
            // The one way out (crate::dial): a name no egress rule allows costs no lookup
            // (attacker-chosen slow names would tie up the resolver for everyone).
            let req = Request::new(&dest.ip, dest.port);
            // A name costs a blocking thread until the resolver answers or gives up: only a
            // few at a time per gateway id and in all, so slow names can't take them all.
            let lookup = match dest.ip.parse::<std::net::IpAddr>() {
                Ok(_) => None,
                Err(_) => match lookup_places(&tenant.lookups, &gw.lookups, &gw.limits) {
                    Ok(hold) => Some(hold),
                    Err(why) => return Err(refuse(Reason::Limit, why)),
                },
            };
            let addrs = match dial::vet(&state.egress, &req, deadline, lookup).await {
                Ok(Vetted::Addrs(a)) => a,
                Ok(Vetted::Name(e)) => return Err(refuse(e.reason, e.message)),
                Err(_) => return Err(denied()),
            };
            let (tcp, _) = dial::tcp_any(&addrs, deadline)
                .await
                .map_err(|e| refuse(e.reason, e.message))?;
            // SOCKS targets never take a destination's TLS settings, whatever their name.
            let tls = match inc.meta.target {
                None => state.reverse_tls.get(&dest.id),
                Some(_) => None,
            };
            dial::secure(tcp, tls, deadline)
                .await
                .map_err(|e| refuse(e.reason, e.message))
        };
        let conn = match dialled.await {
            Ok(c) => c,
            Err((reason, message)) => {
                // Resolver and dial errors can quote the client's name.
                let message = crate::telemetry::clean(&message, 512);
                warn!(reason = %reason, error = %message, "reverse stream refused");
                inc.reject(reason, &message).await;
                return;
            }
        };
        let compress = inc.meta.compress.as_deref() == Some(FEATURE_DEFLATE);
        let Ok(stream) = inc.accept().await else {
            return;
        };
        gw.count(&tenant, Stat::Opened, 1);
        let opts = Options {
            compress,
            idle: dest.idle_timeout,
        };
        let counters = Arc::new(Counters::default());
        let out = relay(conn, stream, &counters, opts).await;
        let d = out.log_closed(Facing::Endpoint, started);
        gw.count(&tenant, Stat::Up, d.up);
        gw.count(&tenant, Stat::Down, d.down);
    }
    .instrument(span)
    .await
}

/// Places for one name lookup: the gateway id's (`limits.max_lookups_per_gateway`) and the
/// process's (`limits.max_lookups`), or the sentence naming the limit that is full.
fn lookup_places(
    own: &Arc<tokio::sync::Semaphore>,
    all: &Arc<tokio::sync::Semaphore>,
    limits: &crate::config::Limits,
) -> Result<dial::LookupHold, String> {
    let Ok(own) = own.clone().try_acquire_owned() else {
        let n = limits.max_lookups_per_gateway;
        return Err(format!(
            "{n} name lookups of this gateway id are running (limits.max_lookups_per_gateway)"
        ));
    };
    let Ok(all) = all.clone().try_acquire_owned() else {
        let n = limits.max_lookups;
        return Err(format!(
            "{n} name lookups are running on this gateway (limits.max_lookups)"
        ));
    };
    Ok(vec![own, all])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    /// Several ids' slow names stop at the process's cap, not only each at its own: the
    /// blocking threads they hold are the whole process's.
    #[test]
    fn lookups_stop_at_the_ids_cap_and_at_the_processs() {
        let limits = crate::config::Limits {
            max_lookups_per_gateway: 2,
            max_lookups: 3,
            ..Default::default()
        };
        let all = Arc::new(Semaphore::new(limits.max_lookups));
        let (a, b) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(2)));
        let a1 = lookup_places(&a, &all, &limits).unwrap();
        let _a2 = lookup_places(&a, &all, &limits).unwrap();
        let e = lookup_places(&a, &all, &limits).unwrap_err();
        assert!(e.contains("limits.max_lookups_per_gateway"), "{e}");
        let _b1 = lookup_places(&b, &all, &limits).unwrap();
        let e = lookup_places(&b, &all, &limits).unwrap_err();
        assert!(e.contains("(limits.max_lookups)"), "{e}");
        assert_eq!(
            b.available_permits(),
            1,
            "a refusal holds no place of the id's"
        );
        // A lookup that ends gives both places back.
        drop(a1);
        assert_eq!((a.available_permits(), all.available_permits()), (1, 1));
        assert!(lookup_places(&b, &all, &limits).is_ok());
    }
}
