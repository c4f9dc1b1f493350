//! One caller on a destination's `cloud_port`, from accept to close: the private
//! destination's caller rules, TLS toward the caller when asked, a stream opened on a
//! connected client of the gateway id, then the relay.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn, Instrument};

use super::registry::Tenant;
use super::state::{GatewayState, Stat};
use crate::acl;
use crate::config::Destination;
use crate::early::Ahead;
use crate::proto::{OpenMeta, Reason};
use crate::relay::{self, Counters, Facing, Options, Socket};

/// How long a caller may take to finish its TLS handshake (`client_tls`).
pub const CALLER_TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a stream for `caller` on some client of `tenant`, within the destination's timeout
/// (the client enforces it on its dial; five more seconds allow for the tunnel), sending
/// what the caller says meanwhile ahead when `ahead` is given. Returns the client id, the
/// stream, and whether it is compressed.
pub(super) async fn open_for_caller(
    tenant: &Tenant,
    dest: &Destination,
    caller: SocketAddr,
    ahead: Option<&mut Ahead<'_>>,
) -> Result<(String, crate::mux::MuxStream, bool), (Reason, String)> {
    let meta = OpenMeta {
        dest: dest.id.clone(),
        caller: caller.to_string(),
        compress: None,
        target: None,
    };
    let limit = dest.timeout + Duration::from_secs(5);
    match tokio::time::timeout(limit, tenant.open(&meta, dest.compression, ahead)).await {
        Ok(r) => r,
        Err(_) => Err((
            Reason::Timeout,
            format!("no answer from the client within {} s", limit.as_secs()),
        )),
    }
}

/// The span of one caller's stream (TCP connection or UDP flow); client and stream ids are
/// filled in by [`record_stream`] once the stream is open.
pub(super) fn caller_span(dest: &Destination, caller: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "stream",
        dest.id = %dest.id,
        caller.addr = %caller,
        client.id = tracing::field::Empty,
        stream.id = tracing::field::Empty,
    )
}

pub(super) fn record_stream(client_id: &str, stream: &crate::mux::MuxStream) {
    let span = tracing::Span::current();
    span.record("client.id", tracing::field::display(client_id));
    span.record("stream.id", stream.id());
}

/// One caller from accept to close.
pub(super) async fn serve_caller(
    gw: Arc<GatewayState>,
    tenant: Arc<Tenant>,
    dest: Arc<Destination>,
    tls: Option<TlsAcceptor>,
    tcp: TcpStream,
    caller: SocketAddr,
) {
    let span = caller_span(&dest, caller);
    async move {
        let started = Instant::now();
        // Private destinations drop unknown callers here, before any tunnel traffic; the
        // client checks again (it trusts nothing it did not decide itself).
        if !acl::caller_admitted(dest.private, &dest.ip_table_rules, Some(caller)) {
            gw.count(&tenant, Stat::Denied, 1);
            warn!(reason = "ip_table_denied", "caller refused: no ip_table_rules entry of this private destination matches it");
            relay::abort(&tcp);
            return;
        }
        // TLS toward the caller first: a caller that cannot complete it costs no stream.
        let mut conn = match tls {
            None => Socket::Tcp(tcp),
            Some(acceptor) => match tokio::time::timeout(CALLER_TLS_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Socket::TlsFrom(Box::new(s)),
                Ok(Err(e)) => {
                    gw.stats.caller_tls_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(reason = "tls", error = %e, client_tls = dest.caller_tls.as_str(), "caller TLS handshake failed");
                    return;
                }
                Err(_) => {
                    gw.stats.caller_tls_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(reason = "timeout", "caller TLS handshake timed out after {} s", CALLER_TLS_TIMEOUT.as_secs());
                    return;
                }
            },
        };
        // The caller's first bytes go with the OPEN where the client takes them.
        let mut ahead = Ahead::new(&mut conn);
        let opened = open_for_caller(&tenant, &dest, caller, Some(&mut ahead)).await;
        let sent_ahead = match ahead.finish() {
            Ok(n) => n,
            Err(e) => {
                // Its stream was dropped: a reset on the client's side too, as the caller's was.
                gw.count(&tenant, Stat::Failed, 1);
                info!(reason = "reset", error = %e, "caller failed while its stream opened");
                conn.abort();
                return;
            }
        };
        let (client_id, stream, compress) = match opened {
            Ok(x) => x,
            Err((reason, message)) => {
                gw.count(&tenant, Stat::Failed, 1);
                info!(reason = %reason, error = %message, duration_ms = started.elapsed().as_millis() as u64, "stream refused");
                conn.abort();
                return;
            }
        };
        record_stream(&client_id, &stream);
        if sent_ahead > 0 {
            gw.stats.streams_early_data.fetch_add(1, Ordering::Relaxed);
        }
        gw.count(&tenant, Stat::Opened, 1);
        tracing::debug!(sent_ahead, "stream opened");
        // The client enforces `idle_timeout` too, but a client that stopped answering (or never
        // meant to) must not hold this caller beyond it: the gateway bounds it as well. Off
        // (the default), a live but silent client holds its callers (docs/SECURITY.md).
        let opts = Options {
            compress,
            idle: dest.idle_timeout,
        };
        let counters = Arc::new(Counters::sent_ahead(sent_ahead));
        let out = relay::relay(conn, stream, &counters, opts).await;
        let d = out.log_closed(Facing::Caller, started);
        gw.count(&tenant, Stat::Up, d.up);
        gw.count(&tenant, Stat::Down, d.down);
    }
    .instrument(span)
    .await
}
