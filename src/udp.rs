//! UDP destinations. Each caller address is a flow, and a flow is one stream whose bytes are
//! datagram records (PROTOCOL.md §4.2): a 16-bit big-endian length, then the datagram. The
//! mux may cut and join DATA frames as it likes; records keep the datagram boundaries.
//!
//! Datagrams never wait: one that finds no stream credit or no tunnel queue space is dropped
//! and counted, as a congested network would. A flow ends when nothing moved either way for
//! the destination's timeout.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::mux::{MuxStream, StreamError};
use crate::proto::Reason;
use crate::relay::Facing;

/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Record header: the datagram's length.
pub const RECORD_HEADER: usize = 2;

/// One datagram as a record.
pub fn record(datagram: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(RECORD_HEADER + datagram.len());
    b.put_u16(datagram.len() as u16);
    b.put_slice(datagram);
    b.freeze()
}

/// Reassembles records from stream bytes, however they were cut.
#[derive(Default)]
pub struct Records {
    pending: BytesMut,
}

impl Records {
    /// Adds stream bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The next whole datagram, if one has arrived. Lengths over [`MAX_DATAGRAM`] are a
    /// protocol error.
    pub fn next_datagram(&mut self) -> Result<Option<Bytes>, String> {
        let Some(h) = self.pending.get(..RECORD_HEADER) else {
            return Ok(None);
        };
        let len = u16::from_be_bytes([h[0], h[1]]) as usize;
        if len > MAX_DATAGRAM {
            return Err(format!(
                "datagram record of {len} bytes; at most {MAX_DATAGRAM}"
            ));
        }
        if self.pending.len() < RECORD_HEADER + len {
            return Ok(None);
        }
        let mut rec = self.pending.split_to(RECORD_HEADER + len);
        Ok(Some(rec.split_off(RECORD_HEADER).freeze()))
    }
}

/// The socket side of one flow: where its datagrams come from and go to.
pub trait FlowSocket: Send {
    /// The next datagram from the socket side; `None` when that side is gone.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
    /// Sends one datagram out of the socket side.
    fn send(&self, datagram: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// The client's side: a socket connected to the endpoint.
pub struct Connected {
    pub sock: UdpSocket,
    buf: Vec<u8>,
}

impl Connected {
    pub fn new(sock: UdpSocket) -> Self {
        Connected {
            sock,
            buf: vec![0u8; MAX_DATAGRAM + 1],
        }
    }
}

impl FlowSocket for Connected {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        let n = self.sock.recv(&mut self.buf).await?;
        Ok(Some(Bytes::copy_from_slice(&self.buf[..n])))
    }

    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        self.sock.send(datagram).await.map(|_| ())
    }
}

/// Datagram counts of one flow (or summed over many).
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Datagrams from the socket side sent into the stream.
    pub to_stream: AtomicU64,
    /// Datagrams from the stream sent out of the socket.
    pub to_socket: AtomicU64,
    /// Datagrams dropped: no stream credit or tunnel queue space, or too big.
    pub dropped: AtomicU64,
}

impl FlowCounters {
    /// The one line a flow's end gets, with datagram counts named from the caller's point of
    /// view (up: toward the endpoint) on whichever side the flow runs.
    pub fn log_closed(&self, facing: Facing, started: std::time::Instant, ending: &FlowEnding) {
        let (to_stream, to_socket) = (
            self.to_stream.load(Ordering::Relaxed),
            self.to_socket.load(Ordering::Relaxed),
        );
        let (up, down) = match facing {
            Facing::Caller => (to_stream, to_socket),
            Facing::Endpoint => (to_socket, to_stream),
        };
        tracing::info!(
            datagrams.up = up,
            datagrams.down = down,
            datagrams.dropped = self.dropped.load(Ordering::Relaxed),
            duration_ms = started.elapsed().as_millis() as u64,
            reason = ending.reason(),
            "UDP flow closed"
        );
    }
}

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnding {
    /// Nothing moved for the idle timeout; the stream was reset with reason `timeout`.
    Idle,
    /// The peer finished the stream.
    Finished,
    /// The peer reset the stream (or the tunnel went away).
    Stream(Reason),
    /// The socket side failed or went away; the stream was reset.
    Socket(String),
    /// The peer sent a malformed record; the stream was reset with reason `protocol`.
    Protocol(String),
}

impl FlowEnding {
    pub fn reason(&self) -> &'static str {
        match self {
            FlowEnding::Idle => Reason::Timeout.as_str(),
            FlowEnding::Finished => "closed",
            FlowEnding::Stream(r) => r.as_str(),
            FlowEnding::Socket(_) => Reason::Reset.as_str(),
            FlowEnding::Protocol(_) => Reason::Protocol.as_str(),
        }
    }
}

/// Relays one flow's datagrams both ways until it is idle for `idle`, either side ends, or
/// the peer breaks the record format. `total` (shared across flows) is kept current too.
pub async fn relay_flow<S: FlowSocket>(
    mut sock: S,
    stream: MuxStream,
    idle: Duration,
    counters: &FlowCounters,
    total: &Arc<FlowCounters>,
) -> FlowEnding {
    let mut records = Records::default();
    let mut last = Instant::now();
    let count = |c: fn(&FlowCounters) -> &AtomicU64| {
        c(counters).fetch_add(1, Ordering::Relaxed);
        c(total).fetch_add(1, Ordering::Relaxed);
    };
    let ending = loop {
        tokio::select! {
            d = sock.recv() => match d {
                Ok(Some(d)) => {
                    last = Instant::now();
                    if d.len() > MAX_DATAGRAM {
                        count(|c| &c.dropped);
                        continue;
                    }
                    match stream.try_send(record(&d)) {
                        Ok(true) => count(|c| &c.to_stream),
                        Ok(false) => count(|c| &c.dropped),
                        Err(e) => break stream_ended(&e),
                    }
                }
                Ok(None) => break FlowEnding::Socket("socket side closed".into()),
                // ICMP port unreachable on a connected socket: the endpoint is not there
                // (yet); UDP carries on, as the caller's would.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => break FlowEnding::Socket(e.to_string()),
            },
            r = stream.recv() => match r {
                Ok(Some(chunk)) => {
                    last = Instant::now();
                    records.feed(&chunk);
                    loop {
                        match records.next_datagram() {
                            Ok(Some(d)) => {
                                // A send error is a lost datagram, not the end of the flow.
                                match sock.send(&d).await {
                                    Ok(()) => count(|c| &c.to_socket),
                                    Err(_) => count(|c| &c.dropped),
                                }
                            }
                            Ok(None) => break,
                            Err(m) => {
                                stream.reset(Reason::Protocol, &m);
                                return FlowEnding::Protocol(m);
                            }
                        }
                    }
                }
                Ok(None) => break FlowEnding::Finished,
                Err(e) => break stream_ended(&e),
            },
            _ = tokio::time::sleep_until(last + idle) => {
                stream.reset(Reason::Timeout, &format!("UDP flow idle for {} s", idle.as_secs()));
                break FlowEnding::Idle;
            }
        }
    };
    if let FlowEnding::Socket(m) = &ending {
        stream.reset(Reason::Reset, m);
    }
    ending
}

fn stream_ended(e: &StreamError) -> FlowEnding {
    FlowEnding::Stream(e.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_boundaries_across_any_cut() {
        let sizes = [0usize, 1, 2, 1000, MAX_DATAGRAM, 7];
        let mut wire = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            wire.extend_from_slice(&record(&vec![i as u8; *n]));
        }
        for cut in [1, 2, 3, 1500, 65_536, wire.len()] {
            let mut r = Records::default();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                r.feed(piece);
                while let Some(d) = r.next_datagram().unwrap() {
                    got.push(d);
                }
            }
            let lens: Vec<usize> = got.iter().map(|d| d.len()).collect();
            assert_eq!(lens, sizes, "cut {cut}");
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, d)| d.iter().all(|b| *b == i as u8)));
        }
    }

    #[test]
    fn oversize_record_is_an_error() {
        let mut r = Records::default();
        r.feed(&[0xff, 0xff, 1, 2, 3]);
        assert!(r.next_datagram().is_err());
    }
}
