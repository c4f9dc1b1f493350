//! What a caller sends while its stream is being opened. A peer that takes early data (a
//! client whose HELLO lists `early_data`, a gateway whose WELCOME does; PROTOCOL.md §4.3)
//! gets up to [`EARLY_DATA`] bytes of it right behind the OPEN, so a caller that speaks first
//! (an HTTP request, a TLS ClientHello, a redis command) does not wait a round trip through
//! the tunnel for the OPEN_OK. The gateway uses it for callers on cloud ports, the client for
//! on-prem connections to reverse destinations.

use std::io;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::mux::{MuxStream, OpenAnswer, OpenError};
use crate::proto::EARLY_DATA;
use crate::relay::Socket;

/// What one read ahead takes at most: a TLS ClientHello or a request's headers fit.
const READ_STEP: usize = 4096;

/// A caller's first bytes, read and sent while its stream opens.
pub struct Ahead<'a> {
    conn: &'a mut Socket,
    /// Bytes read from the caller and handed to the stream. Once any were, that stream is
    /// the caller's only one: its client may have written them to the endpoint before its
    /// tunnel broke, and sending them again on another tunnel would repeat them (a second
    /// INSERT). So an attempt that fails with bytes sent is not retried, and every attempt
    /// starts with none.
    sent: usize,
    /// The caller finished sending: nothing more is read here.
    ended: bool,
    failed: Option<io::Error>,
}

/// An early open that gave no stream.
pub enum Unanswered {
    /// Nothing of the caller's left: another tunnel may be tried.
    Retry(OpenError),
    /// Some of the caller's bytes left: this was its only attempt.
    Final(OpenError),
    /// Reading from the caller failed ([`Ahead::finish`] says how).
    CallerFailed,
}

impl<'a> Ahead<'a> {
    pub fn new(conn: &'a mut Socket) -> Self {
        Ahead {
            conn,
            sent: 0,
            ended: false,
            failed: None,
        }
    }

    /// The bytes the accepted stream carried before its OPEN_OK (for the relay's counts), or
    /// the error a read from the caller met while its stream opened. The relay must not start
    /// then: the socket would report an end of file next, and the caller's reset would reach
    /// the endpoint as a FIN. Lets go of the socket and the read buffer.
    pub fn finish(self) -> Result<u64, io::Error> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.sent as u64),
        }
    }

    /// Sends what the caller says on `stream` until the peer answers the OPEN (at most
    /// [`EARLY_DATA`] bytes), and returns the answer.
    pub async fn send_until_answered(
        &mut self,
        stream: &MuxStream,
        answer: OpenAnswer,
    ) -> Result<(), Unanswered> {
        let answer = answer.wait();
        tokio::pin!(answer);
        // One step at a time: a caller costs READ_STEP while its stream opens (usually a
        // round trip), more only as it sends more.
        let mut buf = BytesMut::new();
        let answer = loop {
            let room = (EARLY_DATA as usize).saturating_sub(self.sent);
            if self.ended || room == 0 {
                break answer.await;
            }
            if buf.capacity() == buf.len() {
                buf.reserve(room.min(READ_STEP));
            }
            // Reading is cancel safe: bytes the caller sent stay in the socket (or in rustls)
            // when the answer comes first.
            let mut conn = (&mut *self.conn).take(room as u64);
            tokio::select! {
                r = &mut answer => break r,
                r = conn.read_buf(&mut buf) => match r {
                    Ok(0) => self.ended = true,
                    Ok(n) => {
                        self.sent += n;
                        // A send fails only when the stream did (refused, or the tunnel
                        // closed): the answer says which.
                        if stream.send(buf.split().freeze()).await.is_err() {
                            break answer.await;
                        }
                    }
                    Err(e) => {
                        // Dropping the stream resets it, even if the client accepts it.
                        self.failed = Some(e);
                        return Err(Unanswered::CallerFailed);
                    }
                },
            }
        };
        match answer {
            Ok(()) => Ok(()),
            Err(e) if self.sent == 0 => Err(Unanswered::Retry(e)),
            Err(e) => Err(Unanswered::Final(e)),
        }
    }
}
