//! What a caller sends while its stream is being opened. A client that takes early data
//! (`early_data` in its HELLO, PROTOCOL.md §4.3) gets up to [`EARLY_DATA`] bytes of it right
//! behind the OPEN, so a caller that speaks first (an HTTP request, a TLS ClientHello, a redis
//! command) does not wait a round trip through the tunnel for the OPEN_OK.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::mux::{MuxStream, OpenAnswer, OpenError, StreamError};
use crate::proto::EARLY_DATA;
use crate::relay::Socket;

/// What one read ahead reserves at most: a TLS ClientHello or a request's headers fit, and
/// a caller that never speaks first costs nothing.
const READ_STEP: usize = 4096;

/// A caller's first bytes, read while its stream opens. They are kept until a stream is
/// accepted, for the next tunnel when the one tried fails before any of them left.
pub(super) struct Ahead<'a> {
    conn: &'a mut Socket,
    read: BytesMut,
    /// The caller finished sending, or its read failed: nothing more is read here.
    ended: bool,
    failed: Option<io::Error>,
    /// Bytes were handed to the stream of the attempt under way: they may have reached the
    /// endpoint, so that attempt is the only one.
    handed: bool,
    /// The accepted stream carried bytes before its OPEN_OK.
    went_early: bool,
}

/// An early open that gave no stream: why, and whether another tunnel may be tried.
pub(super) struct Unanswered {
    pub(super) error: OpenError,
    /// False once bytes were handed to the failed stream: the client may have accepted it and
    /// written them to the endpoint before its tunnel broke, and sending them again elsewhere
    /// would repeat them (a second INSERT).
    pub(super) retry: bool,
}

impl<'a> Ahead<'a> {
    pub(super) fn new(conn: &'a mut Socket) -> Self {
        Ahead {
            conn,
            read: BytesMut::new(),
            ended: false,
            failed: None,
            handed: false,
            went_early: false,
        }
    }

    /// Bytes read from the caller so far: sent on the stream that was accepted.
    pub(super) fn len(&self) -> usize {
        self.read.len()
    }

    /// The accepted stream carried the caller's first bytes before the client answered.
    pub(super) fn went_early(&self) -> bool {
        self.went_early
    }

    /// A read from the caller failed while its stream opened: no other tunnel is tried.
    pub(super) fn caller_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The error a read from the caller met while its stream opened. The relay must not
    /// start then: the socket would report an end of file next, and the caller's reset
    /// would reach the endpoint as a FIN.
    pub(super) fn take_error(&mut self) -> Option<io::Error> {
        self.failed.take()
    }

    /// Sends what was read so far on `stream`, opened (and accepted) on a client that takes
    /// no early data after an attempt that read some failed.
    pub(super) async fn resend(&mut self, stream: &MuxStream) -> Result<(), StreamError> {
        self.went_early = false;
        if self.read.is_empty() {
            return Ok(());
        }
        stream.send(Bytes::copy_from_slice(&self.read)).await
    }

    /// Sends what was read so far on `stream`, then what the caller sends until the peer
    /// answers the OPEN (at most [`EARLY_DATA`] bytes in all), and returns the answer.
    pub(super) async fn send_until_answered(
        &mut self,
        stream: &MuxStream,
        answer: OpenAnswer,
    ) -> Result<(), Unanswered> {
        self.handed = false;
        let answer = answer.wait();
        tokio::pin!(answer);
        let answer = loop {
            // A send fails only when the stream did (refused, or the tunnel closed): the
            // answer says which.
            if !self.read.is_empty() && !self.handed {
                self.handed = true;
                if stream
                    .send(Bytes::copy_from_slice(&self.read))
                    .await
                    .is_err()
                {
                    break answer.await;
                }
            }
            let room = (EARLY_DATA as usize).saturating_sub(self.read.len());
            if self.ended || room == 0 {
                break answer.await;
            }
            if self.read.capacity() == self.read.len() {
                self.read.reserve(room.min(READ_STEP));
            }
            let before = self.read.len();
            // Reading is cancel safe: bytes the caller sent stay in the socket (or in rustls)
            // when the answer comes first.
            let mut conn = (&mut *self.conn).take(room as u64);
            tokio::select! {
                r = &mut answer => break r,
                r = conn.read_buf(&mut self.read) => match r {
                    Ok(0) => self.ended = true,
                    Ok(_) => {
                        self.handed = true;
                        let new = Bytes::copy_from_slice(&self.read[before..]);
                        if stream.send(new).await.is_err() {
                            break answer.await;
                        }
                    }
                    Err(e) => {
                        self.ended = true;
                        self.failed = Some(e);
                    }
                },
            }
        };
        match answer {
            Ok(()) => {
                self.went_early = self.handed;
                Ok(())
            }
            Err(error) => Err(Unanswered {
                retry: !self.handed && self.failed.is_none(),
                error,
            }),
        }
    }
}
