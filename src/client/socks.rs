//! The optional on-prem SOCKS5 listener (`socks5_listen`): each CONNECT becomes a stream the
//! client opens toward its first gateway, which dials the target within its `egress_allow`
//! (default deny). The gateway's answer maps to a SOCKS5 reply code, so `curl
//! --socks5-hostname` reports a refusal as such. Names are sent to the gateway unresolved:
//! on-prem DNS may not know cloud names.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::state::{ClientState, GatewayPeer};
use crate::mux::OpenError;
use crate::proto::{OpenMeta, Reason};
use crate::relay::{relay, Counters, Facing, Options, Socket};

/// The destination name SOCKS streams carry (for logs; `target` says where to go).
pub const SOCKS_DEST: &str = "socks5";
/// A SOCKS client must finish its greeting and request within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long the gateway may take to dial, and how long a stream may sit idle.
const TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn serve(
    shared: Arc<ClientState>,
    link: Arc<GatewayPeer>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    if let Ok(a) = listener.local_addr() {
        info!(socks5.listen = %a, gateway.id = %link.cfg.gateway_id, "SOCKS5 listener started");
    }
    crate::listen::accept_until(&listener, &stop, |tcp, peer| {
        shared
            .tracker
            .spawn(connect(shared.clone(), link.clone(), tcp, peer));
    })
    .await
}

fn reply_for(reason: Reason) -> ReplyError {
    match reason {
        Reason::AclDenied => ReplyError::ConnectionNotAllowed,
        Reason::Refused => ReplyError::ConnectionRefused,
        Reason::Timeout => ReplyError::TtlExpired,
        Reason::Dns => ReplyError::HostUnreachable,
        Reason::Unreachable => ReplyError::NetworkUnreachable,
        _ => ReplyError::GeneralFailure,
    }
}

async fn connect(
    shared: Arc<ClientState>,
    link: Arc<GatewayPeer>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let span = tracing::info_span!(
        "stream",
        dest.id = SOCKS_DEST,
        caller.addr = %peer,
        dest.addr = tracing::field::Empty,
        stream.id = tracing::field::Empty,
        direction = "reverse",
    );
    async move {
        let started = Instant::now();
        let hs = async {
            Socks5ServerProtocol::accept_no_auth(tcp)
                .await?
                .read_command()
                .await
        };
        let (proto, cmd, target) = match tokio::time::timeout(HANDSHAKE, hs).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                info!(reason = "protocol", error = %e, "SOCKS5 handshake failed");
                return;
            }
            Err(_) => {
                info!(reason = "timeout", "SOCKS5 handshake timed out");
                return;
            }
        };
        if cmd != Socks5Command::TCPConnect {
            let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
            info!(reason = "protocol", "SOCKS5: only CONNECT is supported");
            return;
        }
        let target = match target {
            TargetAddr::Ip(a) => a.to_string(),
            TargetAddr::Domain(h, p) => format!("{h}:{p}"),
        };
        // A local program's name: escaped in the log (the gateway judges the target itself).
        tracing::Span::current().record(
            "dest.addr",
            tracing::field::display(crate::telemetry::clean(&target, 300)),
        );
        let Some(mux) = link.pick() else {
            shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
            warn!(
                reason = "unreachable",
                "SOCKS5 CONNECT refused: no tunnel up"
            );
            let _ = proto.reply_error(&ReplyError::NetworkUnreachable).await;
            return;
        };
        let meta = OpenMeta {
            dest: SOCKS_DEST.into(),
            caller: peer.to_string(),
            compress: None,
            target: Some(target),
        };
        let stream =
            match tokio::time::timeout(TIMEOUT + Duration::from_secs(5), mux.open(&meta)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                    let reason = match &e {
                        OpenError::Refused { .. } => e.reason(),
                        _ => Reason::Unreachable,
                    };
                    warn!(reason = %reason, error = %e, "SOCKS5 CONNECT refused by the gateway");
                    let _ = proto.reply_error(&reply_for(reason)).await;
                    return;
                }
                Err(_) => {
                    shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        reason = "timeout",
                        "SOCKS5 CONNECT: no answer from the gateway"
                    );
                    let _ = proto.reply_error(&ReplyError::TtlExpired).await;
                    return;
                }
            };
        tracing::Span::current().record("stream.id", stream.id());
        let Ok(tcp) = proto
            .reply_success(SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
        else {
            return;
        };
        shared.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(Counters::default());
        let opts = Options {
            compress: false,
            idle: Some(TIMEOUT),
        };
        let out = relay(Socket::Tcp(tcp), stream, &counters, opts).await;
        let d = out.log_closed(Facing::Caller, started);
        shared.stats.bytes_up.fetch_add(d.up, Ordering::Relaxed);
        shared.stats.bytes_down.fetch_add(d.down, Ordering::Relaxed);
    }
    .instrument(span)
    .await
}
