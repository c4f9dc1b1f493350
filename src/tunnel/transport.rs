//! Adapts a WebSocket to the mux's message transport: binary messages in and out.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

pub struct WsReader<S>(SplitStream<WebSocketStream<S>>);
pub struct WsWriter<S>(SplitSink<WebSocketStream<S>, Message>);

/// Splits a WebSocket into the mux's reader and writer halves.
pub fn split<S>(ws: WebSocketStream<S>) -> (WsReader<S>, WsWriter<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (w, r) = ws.split();
    (WsReader(r), WsWriter(w))
}

fn io_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsReader<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.0.poll_next_unpin(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(tungstenite::Error::ConnectionClosed))) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io_err(e)))),
                Poll::Ready(Some(Ok(Message::Binary(b)))) => Poll::Ready(Some(Ok(b))),
                // Pings are answered by tungstenite itself.
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                    continue
                }
                Poll::Ready(Some(Ok(Message::Close(_)))) => Poll::Ready(None),
                Poll::Ready(Some(Ok(Message::Text(_)))) => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text message on a binary tunnel",
                )))),
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Bytes> for WsWriter<S> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(io_err)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Pin::new(&mut self.0)
            .start_send(Message::Binary(item))
            .map_err(io_err)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = ready!(Pin::new(&mut self.0).poll_flush(cx)).map_err(io_err);
        if flushed.is_ok() {
            // tokio-tungstenite wakes the task that last wrote whenever the socket turns
            // readable, and keeps its waker until then. With nothing left to write, that is a
            // wake-up of a relay for every message read, and two tasks ready at once make
            // tokio wake a second worker thread: a futex and a context switch per message
            // each way (docs/PERFORMANCE.md, "Spurious wake-ups"). A flush with a waker that
            // does nothing puts that one in its place. Nothing is pending, so it writes at most
            // a reply the reader queued just now; an error it meets stays with tungstenite,
            // which reports it to the next write or read.
            let _ = Pin::new(&mut self.0).poll_flush(&mut Context::from_waker(Waker::noop()));
        }
        Poll::Ready(flushed)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_finished_write_is_not_woken_when_a_message_arrives() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut rd, mut wr) = split(WebSocketStream::from_raw_socket(a, Role::Client, None).await);
        let mut peer = WebSocketStream::from_raw_socket(b, Role::Server, None).await;

        let writer = Arc::new(Counted::default());
        let writer_waker = Waker::from(writer.clone());
        let mut cx = Context::from_waker(&writer_waker);
        assert!(matches!(
            Pin::new(&mut wr).poll_ready(&mut cx),
            Poll::Ready(Ok(()))
        ));
        Pin::new(&mut wr)
            .start_send(Bytes::from_static(b"out"))
            .expect("start_send");
        assert!(matches!(
            Pin::new(&mut wr).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));

        let reader = Arc::new(Counted::default());
        let reader_waker = Waker::from(reader.clone());
        let mut rcx = Context::from_waker(&reader_waker);
        assert!(Pin::new(&mut rd).poll_next(&mut rcx).is_pending());

        let got = peer.next().await.expect("a message").expect("readable");
        assert_eq!(got, Message::Binary(Bytes::from_static(b"out")));
        peer.send(Message::Binary(Bytes::from_static(b"in")))
            .await
            .expect("peer sends");

        assert_eq!(reader.0.load(Ordering::SeqCst), 1, "the reader is woken");
        assert_eq!(
            writer.0.load(Ordering::SeqCst),
            0,
            "the task that wrote last is left alone"
        );
        match Pin::new(&mut rd).poll_next(&mut rcx) {
            Poll::Ready(Some(Ok(b))) => assert_eq!(&b[..], b"in"),
            other => panic!("expected the message, got {other:?}"),
        }
    }
}
