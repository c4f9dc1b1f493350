//! UDP destinations on the gateway: one socket per destination's `cloud_port`; each caller
//! address is a flow with its own stream to a client. The flow table is bounded by
//! `limits.max_udp_flows`; datagrams of new callers beyond it are dropped, counted and logged.
//!
//! One datagram's path: [`serve_udp`] receives it → the caller's flow queue (bounded; full:
//! dropped) → [`run_flow`] sends it into the stream → the client's socket to the endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::registry::Tenant;
use super::state::{GatewayState, Stat};
use crate::acl;
use crate::config::Destination;
use crate::relay::Facing;
use crate::udp::{relay_flow, FlowCounters, FlowSocket, MAX_DATAGRAM};

/// Most datagrams queued for one flow (also bounded in bytes by `limits.udp_flow_buffer`).
const FLOW_QUEUE: usize = 4096;

/// What a queued datagram costs besides its payload (its slot in the queue, its handle),
/// charged against the byte budgets: empty datagrams must not queue for free.
const DATAGRAM_OVERHEAD: u64 = 64;

/// A datagram's charge against the budgets.
fn charge(len: usize) -> u64 {
    len as u64 + DATAGRAM_OVERHEAD
}

/// A flow's queue: the sender, the bytes waiting in it, and whether its stream is open yet
/// (until then it may hold only `udp_pending_buffer`: a spoofed source never opens).
#[derive(Clone)]
struct FlowTx {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicU64>,
    open: Arc<AtomicBool>,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, FlowTx>>>;

/// Receives on one UDP destination's socket until `shutdown`.
pub(super) async fn serve_udp(
    gw: Arc<GatewayState>,
    tenant: Arc<Tenant>,
    dest: Arc<Destination>,
    sock: Arc<UdpSocket>,
    shutdown: CancellationToken,
) {
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut last_full_log: Option<Instant> = None;
    loop {
        let (n, caller) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; the socket is fine.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        let mut table = flows.lock().unwrap_or_else(|e| e.into_inner());
        let datagram = match table.get(&caller) {
            None => datagram,
            Some(f) => match f.push(datagram, &gw) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    gw.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // That flow just ended: this datagram starts a new one.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    table.remove(&caller);
                    d
                }
            },
        };
        let new = NewFlow {
            gw: &gw,
            tenant: &tenant,
            dest: &dest,
            sock: &sock,
            flows: &flows,
        };
        new.start(&mut table, caller, datagram, &mut last_full_log);
    }
}

/// What a new flow needs from its destination's receive loop.
struct NewFlow<'a> {
    gw: &'a Arc<GatewayState>,
    tenant: &'a Arc<Tenant>,
    dest: &'a Arc<Destination>,
    sock: &'a Arc<UdpSocket>,
    flows: &'a Flows,
}

impl FlowTx {
    /// Queues a datagram unless the flow already holds its budget (`udp_flow_buffer`, or
    /// `udp_pending_buffer` before its stream is open) or all flows hold `udp_buffer_total`.
    fn push(&self, d: Bytes, gw: &GatewayState) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        let len = charge(d.len());
        let budget = if self.open.load(Ordering::Acquire) {
            gw.udp_flow_buffer
        } else {
            gw.udp_pending_buffer
        };
        let total = &gw.stats.udp_queued;
        // Counted before it is sent, so the flow can't take it off first (the counters would
        // wrap below zero). An empty queue takes one datagram whatever its size, so the
        // smallest budgets still pass the largest datagram.
        let (q, t) = (
            self.queued.fetch_add(len, Ordering::Relaxed),
            total.fetch_add(len, Ordering::Relaxed),
        );
        let over = (q > 0 && q.saturating_add(len) > budget)
            || (t > 0 && t.saturating_add(len) > gw.udp_buffer_total);
        let sent = if over {
            Err(mpsc::error::TrySendError::Full(d))
        } else {
            self.tx.try_send(d)
        };
        if sent.is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            total.fetch_sub(len, Ordering::Relaxed);
        }
        sent
    }
}

impl NewFlow<'_> {
    /// Starts a flow for a new caller, unless the table is full or the caller is not admitted.
    fn start(
        &self,
        table: &mut HashMap<SocketAddr, FlowTx>,
        caller: SocketAddr,
        first: Bytes,
        last_full_log: &mut Option<Instant>,
    ) {
        let NewFlow {
            gw,
            tenant,
            dest,
            sock,
            flows,
        } = *self;
        if !acl::caller_admitted(dest.private, &dest.ip_table_rules, Some(caller)) {
            gw.count(tenant, Stat::Denied, 1);
            gw.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if table.len() >= gw.max_udp_flows {
            gw.stats.udp_flows_rejected.fetch_add(1, Ordering::Relaxed);
            gw.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
            // One line per second at most: a flood must not become a log flood.
            if last_full_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last_full_log = Some(Instant::now());
                warn!(dest.id = %dest.id, caller.addr = %caller, limit = gw.max_udp_flows, reason = "limit", "UDP flow table full: datagrams from new callers dropped");
            }
            return;
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let f = FlowTx {
            tx,
            queued: Arc::default(),
            open: Arc::default(),
        };
        if f.push(first, gw).is_err() {
            gw.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
        }
        table.insert(caller, f.clone());
        gw.stats.udp_flows.fetch_add(1, Ordering::Relaxed);
        let flow = run_flow(
            gw.clone(),
            tenant.clone(),
            dest.clone(),
            GatewayFlow {
                rx,
                queued: f.queued.clone(),
                total: gw.stats.udp_queued.clone(),
                open: f.open.clone(),
                sock: sock.clone(),
                caller,
            },
            (flows.clone(), f.tx),
        );
        gw.tracker.spawn(flow);
    }
}

/// The gateway's side of a flow: datagrams demultiplexed from the shared socket, replies
/// sent back to the caller from it.
struct GatewayFlow {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicU64>,
    /// The process-wide count ([`super::GatewayStats::udp_queued`]).
    total: Arc<AtomicU64>,
    open: Arc<AtomicBool>,
    sock: Arc<UdpSocket>,
    caller: SocketAddr,
}

impl GatewayFlow {
    fn dequeued(&self, len: usize) {
        self.queued.fetch_sub(charge(len), Ordering::Relaxed);
        self.total.fetch_sub(charge(len), Ordering::Relaxed);
    }
}

impl Drop for GatewayFlow {
    /// Datagrams still queued when the flow ends leave the process-wide count with it.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(d) = self.rx.try_recv() {
            self.dequeued(d.len());
        }
    }
}

impl FlowSocket for GatewayFlow {
    async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        let d = self.rx.recv().await;
        if let Some(d) = &d {
            self.dequeued(d.len());
        }
        Ok(d)
    }

    async fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        self.sock.send_to(datagram, self.caller).await.map(|_| ())
    }
}

/// One flow from its first datagram to expiry.
async fn run_flow(
    gw: Arc<GatewayState>,
    tenant: Arc<Tenant>,
    dest: Arc<Destination>,
    flow: GatewayFlow,
    (flows, mine): (Flows, mpsc::Sender<Bytes>),
) {
    let caller = flow.caller;
    let span = super::caller::caller_span(&dest, caller);
    async move {
        let started = Instant::now();
        // UDP destinations never compress (config refuses it), so no deflate is offered.
        match super::caller::open_for_caller(&tenant, &dest, caller, None).await {
            Ok((client_id, stream, _)) => {
                flow.open.store(true, Ordering::Release);
                super::caller::record_stream(&client_id, &stream);
                gw.count(&tenant, Stat::Opened, 1);
                let counters = FlowCounters::default();
                let e = relay_flow(
                    flow,
                    stream,
                    dest.idle_timeout.unwrap_or(dest.timeout),
                    &counters,
                    &gw.stats.udp,
                )
                .await;
                counters.log_closed(Facing::Caller, started, &e);
            }
            Err((reason, message)) => {
                gw.count(&tenant, Stat::Failed, 1);
                info!(reason = %reason, error = %message, "UDP flow refused");
            }
        }
        // Only this flow's entry: the caller may already have a newer one.
        let mut table = flows.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(&caller).is_some_and(|t| t.tx.same_channel(&mine)) {
            table.remove(&caller);
        }
        drop(table);
        gw.stats.udp_flows.fetch_sub(1, Ordering::Relaxed);
    }
    .instrument(span)
    .await
}
