//! One stream the gateway opened, from OPEN to close: admit (the destination, the
//! compression, a UDP flow slot) → connect (caller rules, ACL, dial, TLS) → accept → relay.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::admit::{admit, connect, refuse, Conn, Refusal};
use super::http;
use super::state::{ActiveStream, ClientState, GatewayPeer, PushedDest};
use super::stats::FlowSlot;
use crate::mux::{Incoming, MuxStream};
use crate::relay::{relay, relay_with, Facing, Options};

pub(super) async fn serve_open(
    state: Arc<ClientState>,
    peer: Arc<GatewayPeer>,
    inc: Incoming,
    client_id: String,
) {
    let span = inc.span(&client_id, "forward");
    async move {
        let started = Instant::now();
        let (dest, compress) = match admit(&peer, &inc.meta) {
            Ok(d) => d,
            Err(why) => return refuse(&state, None, inc, why).await,
        };
        let dest_addr = format!("{}:{}", dest.spec.ip, dest.spec.port);
        tracing::Span::current().record("dest.addr", tracing::field::display(&dest_addr));
        // Counted from here so concurrent opens cannot overshoot the limit.
        let udp = dest.spec.protocol == crate::proto::Protocol::Udp;
        let _flow = if udp {
            match FlowSlot::take(&state.stats, state.cfg.limits.max_udp_flows) {
                Some(slot) => Some(slot),
                None => {
                    let why = Refusal::UdpFlows(state.cfg.limits.max_udp_flows);
                    return refuse(&state, Some(&dest), inc, why).await;
                }
            }
        } else {
            None
        };
        // HTTP is judged and dialled per request, once the stream is open.
        let http = dest.spec.protocol.is_http();
        let conn = if http {
            super::admit::admit_caller(&dest, inc.meta.caller.parse().ok()).map(|()| Conn::Http)
        } else {
            connect(&state.acl(), &dest, &inc.meta.caller, None)
                .await
                .map(|(c, _)| c)
        };
        let conn = match conn {
            Ok(c) => c,
            Err(why) => return refuse(&state, Some(&dest), inc, why).await,
        };
        let caller = inc.meta.caller.clone();
        let Ok(stream) = inc.accept().await else {
            return;
        };
        state.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        dest.stats.opened.fetch_add(1, Ordering::Relaxed);
        let opts = Options {
            compress,
            idle: dest.spec.idle(),
        };
        let (entry, _listed) = state.track(ActiveStream {
            stream_id: stream.id(),
            dest_id: dest.spec.id.clone(),
            dest_addr,
            caller,
            started: Instant::now(),
            counters: Arc::default(),
        });
        let out = match conn {
            Conn::Socket(s) => relay(s, stream, &entry.counters, opts).await,
            Conn::Http => serve_http(&state, &dest, stream, &entry, opts).await,
            Conn::Udp(sock) => {
                let c = crate::udp::FlowCounters::default();
                let idle = dest.spec.udp_expiry();
                let sock = crate::udp::Connected::new(sock);
                let e = crate::udp::relay_flow(sock, stream, idle, &c, &state.stats.udp).await;
                c.log_closed(Facing::Endpoint, started, &e);
                return;
            }
        };
        let d = out.log_closed(Facing::Endpoint, started);
        state.stats.record(&dest.stats, &d);
    }
    .instrument(span)
    .await
}

/// An HTTP(S) destination's stream: [`crate::http::serve`] reads the caller's requests from
/// one end of a pipe, judges and forwards each; the relay moves the other end's bytes.
async fn serve_http(
    state: &Arc<ClientState>,
    dest: &Arc<PushedDest>,
    stream: MuxStream,
    entry: &ActiveStream,
    opts: Options,
) -> crate::relay::Outcome {
    let (ours, theirs) = tokio::io::duplex(crate::proto::MAX_DATA);
    let up = http::ClientUpstream {
        state: state.clone(),
        dest: dest.clone(),
        caller: entry.caller.clone(),
    };
    let mut settings = http::settings(&dest.spec);
    settings.caller = entry.caller.parse().ok();
    let (out, counts) = tokio::join!(
        relay_with(ours, stream, &entry.counters, opts),
        crate::http::serve(theirs, up, settings)
    );
    // Shown on the closing line with the stream's other fields.
    let span = tracing::Span::current();
    span.record("http.requests", counts.requests);
    span.record("http.denied", counts.denied);
    out
}
