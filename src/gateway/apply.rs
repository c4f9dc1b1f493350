//! Changing a running gateway: one gateway id's configuration is applied as a whole (at
//! start, on SIGHUP, from the management API). Each enabled destination has its own listener
//! task with its own cancellation token, so a destination can stop listening while its open
//! streams finish, and a changed destination restarts only its own listener.
//!
//! One change's path: [`apply`] → bind what is new (nothing changes if a bind fails) →
//! [`Tenant::set_state`] (pushes CONFIG to connected clients) → stop removed or changed
//! listeners → start new ones → close tunnels whose token is no longer valid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::caller::serve_caller;
use super::registry::{Tenant, TenantState};
use super::state::{bind, GatewayState, Listening};
use super::wire::{config_push, spec_of};
use super::{udp, GatewayError};
use crate::config::{Destination, Protocol, TenantConfig};
use crate::proto::Reason;

/// A bound socket not yet served.
enum Bound {
    Tcp(TcpListener, Option<TlsAcceptor>),
    Udp(UdpSocket),
}

impl Bound {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Tcp(l, _) => l.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }
}

fn cloud_addr(d: &Destination) -> String {
    if d.cloud_host.contains(':') {
        format!("[{}]:{}", d.cloud_host, d.cloud_port)
    } else {
        format!("{}:{}", d.cloud_host, d.cloud_port)
    }
}

/// Same socket: a listener can be kept or rebound in place.
fn same_socket(a: &Destination, b: &Destination) -> bool {
    a.cloud_host == b.cloud_host
        && a.cloud_port == b.cloud_port
        && (a.protocol == Protocol::Udp) == (b.protocol == Protocol::Udp)
}

async fn bind_dest(d: &Destination, tls: Option<TlsAcceptor>) -> Result<Bound, GatewayError> {
    let addr = cloud_addr(d);
    if d.protocol == Protocol::Udp {
        return UdpSocket::bind(&addr)
            .await
            .map(Bound::Udp)
            .map_err(|source| GatewayError::Bind {
                addr: format!("udp {addr}"),
                source,
            });
    }
    Ok(Bound::Tcp(bind(&addr).await?, tls))
}

/// Builds what a configuration needs besides sockets; fails on what `check` would refuse.
fn build_state(cfg: TenantConfig, gw: &GatewayState) -> Result<TenantState, GatewayError> {
    let push = config_push(&cfg, gw.max_destinations)?;
    let mut reverse_tls = HashMap::new();
    for d in cfg.destinations.iter().filter(|d| d.reverse) {
        if let Some(spec) = spec_of(d).tls {
            let ep = crate::tls::endpoint_connector(&spec, &d.ip).map_err(|source| {
                GatewayError::DestTls {
                    gateway: cfg.id.clone(),
                    dest: d.id.clone(),
                    source,
                }
            })?;
            reverse_tls.insert(d.id.clone(), ep);
        }
    }
    let egress = match &cfg.egress {
        crate::config::Egress::FileDefault => gw.egress.clone(),
        crate::config::Egress::Own(list) => {
            super::reverse::egress_acl(list).map_err(|source| GatewayError::Egress {
                gateway: Some(cfg.id.clone()),
                source,
            })?
        }
    };
    Ok(TenantState {
        egress,
        push,
        cfg,
        reverse_tls,
    })
}

fn close_tunnels(tenant: &Tenant, id: &str, (why, reason): (&str, Reason)) {
    let tunnels = tenant.all_tunnels();
    if tunnels.is_empty() {
        return;
    }
    for m in &tunnels {
        m.close(reason, why);
    }
    info!(gateway.id = %id, tunnels = tunnels.len(), reason = why, "closed the gateway's client tunnels");
}

/// Makes the running gateway serve `cfg` for its gateway id (new or changed). Returns the
/// configuration as it runs: destinations asking for `cloud_port = 0` carry the bound port
/// (kept across later changes). On error nothing has changed.
pub(super) async fn apply(
    gw: &Arc<GatewayState>,
    mut cfg: TenantConfig,
) -> Result<TenantConfig, GatewayError> {
    let _one_at_a_time = gw.apply_lock.lock().await;
    let id = cfg.id.clone();
    let mut running: HashMap<String, Listening> = {
        let mut l = gw.lock_listeners();
        let keys: Vec<_> = l.keys().filter(|(g, _)| *g == id).cloned().collect();
        keys.into_iter()
            .filter_map(|k| l.remove(&k).map(|v| (k.1, v)))
            .collect()
    };
    // A destination asking for any port keeps the one it has.
    for d in cfg.destinations.iter_mut() {
        if let Some(r) = running.get(&d.id) {
            let mut asked = r.dest.clone();
            asked.cloud_port = d.cloud_port;
            if d.cloud_port == 0 && same_socket(&asked, d) {
                d.cloud_port = r.addr.port();
            }
        }
    }
    let wanted: Vec<Destination> = cfg
        .destinations
        .iter()
        .filter(|d| cfg.enabled && d.enabled && !d.reverse)
        .cloned()
        .collect();
    // Sort the wanted destinations against what runs; nothing changes yet.
    let mut keep = HashMap::new();
    let mut rebind = Vec::new();
    let mut fresh = Vec::new();
    for d in &wanted {
        match running.remove(&d.id) {
            Some(r) if r.dest == *d => {
                keep.insert(d.id.clone(), r);
            }
            Some(r) if same_socket(&r.dest, d) => rebind.push((d.clone(), Some(r))),
            Some(r) => {
                // Moves: the new socket is bound before the old one is let go.
                running.insert(d.id.clone(), r);
                fresh.push(d.clone());
            }
            None => fresh.push(d.clone()),
        }
    }
    // Everything that can fail comes before anything changes. Kept listeners keep their TLS
    // settings: only listeners that (re)bind get new ones.
    let prepared = (|| {
        let state = build_state(cfg.clone(), gw)?;
        let mut acceptors = HashMap::new();
        for d in fresh.iter().chain(rebind.iter().map(|(d, _)| d)) {
            let tls = crate::tls::caller_acceptor(&d.caller_tls).map_err(|source| {
                GatewayError::DestTls {
                    gateway: id.to_owned(),
                    dest: d.id.clone(),
                    source,
                }
            })?;
            acceptors.insert(d.id.clone(), tls);
        }
        Ok::<_, GatewayError>((state, acceptors))
    })();
    let (mut state, mut acceptors) = match prepared {
        Ok(x) => x,
        Err(e) => {
            put_back(gw, &id, running, keep, rebind);
            return Err(e);
        }
    };
    let mut bound = Vec::new();
    for d in &fresh {
        let tls = acceptors.remove(&d.id).flatten();
        match bind_dest(d, tls).await {
            Ok(b) => bound.push((d.clone(), b)),
            Err(e) => {
                put_back(gw, &id, running, keep, rebind);
                return Err(e);
            }
        }
    }
    // Committed from here on: resolve ports, then switch.
    for (d, b) in &bound {
        if let Ok(a) = b.local_addr() {
            if let Some(x) = state.cfg.destinations.iter_mut().find(|x| x.id == d.id) {
                x.cloud_port = a.port();
            }
        }
    }
    let result_cfg = state.cfg.clone();
    let old = gw.tenant(&id).map(|t| t.state().cfg.clone());
    // Tunnels on a revoked token are closed before the new CONFIG (which may carry secrets)
    // is pushed to the tunnels that stay.
    let revoked = old.as_ref().and_then(|old| {
        // The reason tells the client whether its credentials still work (`auth`: they
        // don't) or it just reconnects (a new expiry: the same token, a new timer).
        if !result_cfg.enabled && old.enabled {
            Some(("gateway disabled", Reason::Auth))
        } else if result_cfg.token != old.token {
            Some(("security token changed", Reason::Auth))
        } else if result_cfg.token_expires_at != old.token_expires_at {
            Some(("security token expiry changed", Reason::Refused))
        } else if result_cfg.enf_tok_sec && !old.enf_tok_sec {
            Some(("security token now enforced", Reason::Auth))
        } else {
            None
        }
    });
    if let (Some(why), Some(t)) = (revoked, gw.tenant(&id)) {
        close_tunnels(&t, &id, why);
    }
    let tenant = match gw.tenant(&id) {
        Some(t) => {
            t.set_state(state);
            t
        }
        None => gw.insert_tenant(Tenant::new(
            state,
            crate::mux::WindowBudget::within(
                &gw.mux_cfg.window_budget,
                gw.limits.window_budget_per_gateway,
                "window_budget_per_gateway",
            ),
            gw.limits.max_lookups_per_gateway,
            gw.limits.max_pending_handshakes_per_gateway,
        )),
    };
    // Stop what is gone or changed; open streams are not touched and finish on their own.
    for (_, r) in running {
        // Logged once the socket is closed: the line tells an operator the port is free.
        let (dest_id, addr) = (r.dest.id.clone(), r.addr);
        r.stop().await;
        info!(gateway.id = %id, dest.id = %dest_id, cloud.addr = %addr, "destination stopped listening");
    }
    for (_, r) in rebind.iter_mut() {
        if let Some(r) = r.take() {
            r.stop().await;
        }
    }
    let mut started = Vec::new();
    for (d, _) in rebind {
        let tls = acceptors.remove(&d.id).flatten();
        match bind_dest(&d, tls).await {
            Ok(b) => started.push((d, b)),
            Err(e) => {
                warn!(gateway.id = %id, dest.id = %d.id, error = %e, "destination changed but its cloud port could not be bound again; it is not listening")
            }
        }
    }
    started.extend(bound);
    let mut l = gw.lock_listeners();
    for (k, v) in keep {
        l.insert((id.clone(), k), v);
    }
    for (mut d, b) in started {
        if let Ok(a) = b.local_addr() {
            d.cloud_port = a.port();
        }
        let listening = start(gw, &tenant, d, b);
        l.insert((id.clone(), listening.dest.id.clone()), listening);
    }
    drop(l);
    // Again after the switch: a tunnel that registered meanwhile came in on the old token.
    if let Some(why) = revoked {
        close_tunnels(&tenant, &id, why);
    }
    Ok(result_cfg)
}

/// A change that failed: the listeners taken out for it go back as they were.
fn put_back(
    gw: &GatewayState,
    id: &str,
    running: HashMap<String, Listening>,
    keep: HashMap<String, Listening>,
    rebind: Vec<(Destination, Option<Listening>)>,
) {
    let mut l = gw.lock_listeners();
    let again = rebind.into_iter().filter_map(|(d, r)| r.map(|r| (d.id, r)));
    for (k, v) in running.into_iter().chain(keep).chain(again) {
        l.insert((id.to_owned(), k), v);
    }
}

/// Stops a gateway id: its listeners close, its clients are disconnected.
pub(super) async fn remove(gw: &Arc<GatewayState>, id: &str) {
    let _one_at_a_time = gw.apply_lock.lock().await;
    let Some(tenant) = gw.remove_tenant(id) else {
        return;
    };
    let stopping: Vec<Listening> = {
        let mut l = gw.lock_listeners();
        let keys: Vec<_> = l.keys().filter(|(g, _)| g == id).cloned().collect();
        keys.into_iter().filter_map(|k| l.remove(&k)).collect()
    };
    for r in stopping {
        r.stop().await;
    }
    for m in tenant.retire() {
        m.close(Reason::Auth, "gateway id deleted");
    }
    info!(gateway.id = %id, "gateway removed");
}

/// Serves a bound destination socket until its token (a child of the gateway's) is cancelled.
fn start(gw: &Arc<GatewayState>, tenant: &Arc<Tenant>, dest: Destination, b: Bound) -> Listening {
    let stop = gw.root.child_token();
    let addr = b
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let d = Arc::new(dest.clone());
    info!(gateway.id = %tenant.id, dest.id = %dest.id, cloud.addr = %addr, protocol = dest.protocol.as_str(), dest.addr = %format!("{}:{}", dest.ip, dest.port), client_tls = dest.caller_tls.as_str(), "destination listening");
    let done = match b {
        Bound::Udp(sock) => {
            let fut = udp::serve_udp(gw.clone(), tenant.clone(), d, Arc::new(sock), stop.clone());
            gw.tracker.spawn(fut)
        }
        Bound::Tcp(listener, tls) => {
            let (task_gw, tenant, task_stop) = (gw.clone(), tenant.clone(), stop.clone());
            gw.tracker.spawn(async move {
                crate::listen::accept_until(&listener, &task_stop, |tcp, caller| {
                    let fut = serve_caller(
                        task_gw.clone(),
                        tenant.clone(),
                        d.clone(),
                        tls.clone(),
                        tcp,
                        caller,
                    );
                    task_gw.tracker.spawn(fut);
                })
                .await
            })
        }
    };
    Listening {
        dest,
        addr,
        stop,
        done,
    }
}
