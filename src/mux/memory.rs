//! An in-memory message transport, optionally delaying every message, for running two muxes
//! against each other in benches and tests (a WAN path without netem).

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

pub type MsgReader = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
pub type MsgWriter = Pin<Box<dyn Sink<Bytes, Error = io::Error> + Send>>;

/// One direction: a writer and the reader that sees its messages `delay` later.
/// At most `capacity` messages are in flight.
pub fn pipe(delay: Duration, capacity: usize) -> (MsgWriter, MsgReader) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Bytes)>(capacity);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(capacity);
    tokio::spawn(async move {
        while let Some((sent, msg)) = rx.recv().await {
            // The timer wheel has 1 ms ticks: never sleep for a deadline already passed.
            if sent + delay > tokio::time::Instant::now() {
                tokio::time::sleep_until(sent + delay).await;
            }
            if out_tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    let writer = PollSender::new(tx)
        .sink_map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed"))
        .with(|m: Bytes| async move { Ok::<_, io::Error>((tokio::time::Instant::now(), m)) });
    let reader = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|m| (Ok(m), rx))
    });
    (Box::pin(writer), Box::pin(reader))
}

/// Two transports wired to each other: `(a_reader, a_writer), (b_reader, b_writer)`.
pub fn link(delay: Duration) -> ((MsgReader, MsgWriter), (MsgReader, MsgWriter)) {
    let (a_w, b_r) = pipe(delay, 1024);
    let (b_w, a_r) = pipe(delay, 1024);
    ((a_r, a_w), (b_r, b_w))
}
