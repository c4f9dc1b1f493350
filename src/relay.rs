//! Copies bytes between a TCP socket and a mux stream until both directions are done.
//!
//! Half-close travels as FIN (TCP shutdown of the write side on the far end); a TCP reset
//! travels as RESET and comes out as a TCP reset (zero linger) on the other side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mux::{MuxStream, StreamError};
use crate::proto::{Reason, MAX_DATA};

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Both directions finished normally.
    Closed,
    /// The socket failed (usually a reset); the stream was reset.
    SocketError(String),
    /// The stream was reset (by the peer, or the tunnel went away); the socket was reset.
    StreamReset(Reason, String),
}

impl Ending {
    /// Reason name for the closing log line.
    pub fn reason(&self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::SocketError(_) => "reset",
            Ending::StreamReset(r, _) => r.as_str(),
        }
    }
}

/// Byte totals and how the relay ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Bytes read from the socket and sent into the stream.
    pub to_stream: u64,
    /// Bytes received from the stream and written to the socket.
    pub to_socket: u64,
    pub ending: Ending,
}

/// Live byte counts of one relay, readable while it runs (for status pages).
#[derive(Debug, Default)]
pub struct Counters {
    pub to_stream: AtomicU64,
    pub to_socket: AtomicU64,
}

enum Failure {
    Socket(std::io::Error),
    Stream(StreamError),
}

/// Relays until both directions end or either fails.
pub async fn relay(tcp: TcpStream, stream: MuxStream) -> Outcome {
    relay_counted(tcp, stream, &Counters::default()).await
}

/// [`relay`], keeping `counters` current as bytes move.
pub async fn relay_counted(mut tcp: TcpStream, stream: MuxStream, counters: &Counters) -> Outcome {
    let (mut rd, mut wr) = tcp.split();
    let up = async {
        let mut buf = BytesMut::with_capacity(MAX_DATA);
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(MAX_DATA);
            }
            let n = rd.read_buf(&mut buf).await.map_err(Failure::Socket)?;
            if n == 0 {
                return stream.finish().await.map_err(Failure::Stream);
            }
            counters.to_stream.fetch_add(n as u64, Ordering::Relaxed);
            stream
                .send(buf.split().freeze())
                .await
                .map_err(Failure::Stream)?;
        }
    };
    let down = async {
        loop {
            match stream.recv().await {
                Ok(Some(chunk)) => {
                    wr.write_all(&chunk).await.map_err(Failure::Socket)?;
                    counters
                        .to_socket
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Ok(None) => return wr.shutdown().await.map_err(Failure::Socket),
                Err(e) => return Err(Failure::Stream(e)),
            }
        }
    };
    let result = tokio::try_join!(up, down);
    let ending = match result {
        Ok(_) => Ending::Closed,
        Err(Failure::Socket(e)) => {
            stream.reset(Reason::Reset, &e.to_string());
            Ending::SocketError(e.to_string())
        }
        Err(Failure::Stream(e)) => {
            abort(&tcp);
            let msg = match &e {
                StreamError::ResetByPeer { message, .. } | StreamError::Reset { message, .. } => {
                    message.clone()
                }
                StreamError::AlreadyFinished => String::new(),
            };
            Ending::StreamReset(e.reason(), msg)
        }
    };
    drop(stream);
    Outcome {
        to_stream: counters.to_stream.load(Ordering::Relaxed),
        to_socket: counters.to_socket.load(Ordering::Relaxed),
        ending,
    }
}

/// Makes the coming close send a TCP RST instead of a FIN.
pub fn abort(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}
