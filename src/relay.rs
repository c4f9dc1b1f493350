//! Copies bytes between a socket (TCP, or TLS over TCP) and a mux stream until both
//! directions are done.
//!
//! Half-close travels as FIN (TCP shutdown of the write side on the far end); a TCP reset
//! travels as RESET and comes out as a TCP reset (zero linger) on the other side. Optional per
//! stream: DEFLATE in the tunnel ([`crate::compress`]) and an idle timeout, which resets the
//! stream with reason `timeout` when no byte moved either way for that long.
//!
//! A plain TCP socket without compression is shared with the tunnel's reader ([`SharedTcp`]):
//! small DATA that arrives while nothing waits to be written goes straight to the socket from
//! the reader, without waking the relay's task ([`crate::mux::DirectSink`]).

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::compress::{Decoded, Deflater, Inflater};
use crate::mux::{DirectSink, MuxStream, StreamError};
use crate::proto::{Reason, DATA_CHUNK, MAX_DATA};

/// TCP keepalive on relayed sockets: the first probe after this much silence, then every
/// [`KEEPALIVE_INTERVAL`]. Under the idle limits of common NATs and load balancers (Azure 4
/// min, AWS NAT 350 s, many firewalls 5 min and more), so an idle session stays mapped; a dead
/// peer is noticed after about two minutes of unanswered probes.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_PROBES: u32 = 4;

/// Prepares a socket to relay: `TCP_NODELAY` (the tunnel already batches) and TCP keepalive,
/// so a long idle session (a pooled database connection, a blocking `BLPOP`) keeps its NAT and
/// firewall state. Best effort: a socket that refuses keeps working without.
///
/// Set on a listening socket, the options pass to every connection it accepts (Linux copies
/// them at accept), which saves five system calls per connection: listeners are tuned where
/// they are bound ([`crate::listen::bind`]), sockets we dial where they connect.
pub fn tune<S: std::os::fd::AsFd>(sock: &S) {
    let sock = socket2::SockRef::from(sock);
    let _ = sock.set_tcp_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = sock.set_tcp_keepalive(&ka);
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Both directions finished normally.
    Closed,
    /// The socket failed (usually a reset); the stream was reset.
    SocketError(String),
    /// The stream was reset (by the peer, or the tunnel went away); the socket was reset.
    StreamReset(Reason, String),
    /// Nothing moved for the idle timeout; both sides were reset.
    Idle(Duration),
    /// The peer sent compressed data that does not decode; both sides were reset.
    BadData(String),
}

impl Ending {
    /// Reason name for the closing log line.
    pub fn reason(&self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::SocketError(_) => "reset",
            Ending::StreamReset(r, _) => r.as_str(),
            Ending::Idle(_) => Reason::Timeout.as_str(),
            Ending::BadData(_) => Reason::Protocol.as_str(),
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
    /// The same two as DATA payload bytes in the tunnel (differ when compressed).
    pub wire_to_stream: u64,
    pub wire_to_socket: u64,
    pub ending: Ending,
}

/// Which end of the tunnel a relay's socket faces, so its byte counts can be named from the
/// caller's point of view (up: toward the endpoint) on whichever side the relay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facing {
    /// The socket is the endpoint (client side of ordinary destinations, gateway side of
    /// reverse ones).
    Endpoint,
    /// The socket is the caller.
    Caller,
}

/// A relay's byte totals named from the caller's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directed {
    pub up: u64,
    pub down: u64,
    /// As carried in the tunnel (smaller when compressed).
    pub tunnel_up: u64,
    pub tunnel_down: u64,
}

impl Outcome {
    pub fn directed(&self, facing: Facing) -> Directed {
        match facing {
            Facing::Endpoint => Directed {
                up: self.to_socket,
                down: self.to_stream,
                tunnel_up: self.wire_to_socket,
                tunnel_down: self.wire_to_stream,
            },
            Facing::Caller => Directed {
                up: self.to_stream,
                down: self.to_socket,
                tunnel_up: self.wire_to_stream,
                tunnel_down: self.wire_to_socket,
            },
        }
    }

    /// Writes the one line every stream ends with (the span carries the ids) and returns the
    /// totals for the caller's counters.
    pub fn log_closed(&self, facing: Facing, started: std::time::Instant) -> Directed {
        let d = self.directed(facing);
        tracing::info!(
            bytes.up = d.up,
            bytes.down = d.down,
            duration_ms = started.elapsed().as_millis() as u64,
            reason = %self.ending.reason(),
            "stream closed"
        );
        d
    }
}

/// Live byte counts of one relay, readable while it runs (for status pages).
#[derive(Debug, Default)]
pub struct Counters {
    pub to_stream: AtomicU64,
    pub to_socket: AtomicU64,
    pub wire_to_stream: AtomicU64,
    pub wire_to_socket: AtomicU64,
}

impl Counters {
    /// Counts that start with `n` bytes already sent on the stream as they were (early data,
    /// `crate::early`).
    pub fn sent_ahead(n: u64) -> Self {
        Counters {
            to_stream: AtomicU64::new(n),
            wire_to_stream: AtomicU64::new(n),
            ..Counters::default()
        }
    }
}

/// Per-stream relay settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// DEFLATE both directions in the tunnel (negotiated in the OPEN).
    pub compress: bool,
    /// Reset the stream when no byte moved either way for this long.
    pub idle: Option<Duration>,
}

/// A socket the relay can serve: two halves to read and write at once, and a reset.
pub trait Endpoint: Send {
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
    /// Makes the coming close send a TCP RST instead of a FIN.
    fn abort(&self);
    /// The plain TCP socket underneath, when the tunnel's reader may write to it directly.
    fn direct(&self) -> Option<Arc<SharedSocket>> {
        None
    }
}

/// A plain TCP socket shared with the tunnel's reader, which writes small DATA to it while
/// the relay has nothing waiting ([`DirectSink`]). The relay's halves and the reader's writes
/// all go through `&TcpStream` (tokio's readiness and `try_*` calls), so no second descriptor
/// is needed.
pub struct SharedTcp(Arc<SharedSocket>);

impl SharedTcp {
    pub fn new(tcp: TcpStream) -> Self {
        SharedTcp(Arc::new(SharedSocket {
            tcp,
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        }))
    }
}

/// The socket of a [`SharedTcp`], and the error a direct write met. The kernel reports a
/// socket's pending error (a reset, a keepalive timeout) to the first call only, and then
/// reads find an end of file: were the reader's write to swallow it, the relay would pass a
/// reset on as a FIN. So the relay's halves return it before touching the socket again.
pub struct SharedSocket {
    tcp: TcpStream,
    failed: AtomicBool,
    error: Mutex<Option<std::io::Error>>,
}

impl SharedSocket {
    fn keep_error(&self, e: std::io::Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
        self.failed.store(true, Ordering::Release);
    }

    fn take_error(&self) -> Option<std::io::Error> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// A kept error first; then tokio's `readiness` and a non-blocking `call`, again
    /// while readiness was stale (the next poll registers for the next edge).
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        readiness: fn(&TcpStream, &mut Context<'_>) -> Poll<std::io::Result<()>>,
        mut call: impl FnMut(&TcpStream) -> std::io::Result<T>,
    ) -> Poll<std::io::Result<T>> {
        if let Some(e) = self.take_error() {
            return Poll::Ready(Err(e));
        }
        loop {
            ready!(readiness(&self.tcp, cx))?;
            match call(&self.tcp) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

impl Endpoint for SharedTcp {
    type Read<'a> = ByRef<'a>;
    type Write<'a> = ByRef<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        (ByRef(&self.0), ByRef(&self.0))
    }
    fn abort(&self) {
        abort(&self.0.tcp);
    }
    fn direct(&self) -> Option<Arc<SharedSocket>> {
        Some(self.0.clone())
    }
}

/// Either half of a [`SharedTcp`]: tokio's readiness, then a non-blocking call, as tokio's
/// own halves do. Reads and writes keep separate wakers, so the halves run at once. An error
/// a direct write met comes first.
pub struct ByRef<'a>(&'a SharedSocket);

impl AsyncRead for ByRef<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0
            .poll_io(cx, TcpStream::poll_read_ready, |t| t.try_read_buf(buf))
            .map(|r| r.map(drop))
    }
}

impl AsyncWrite for ByRef<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.0.poll_io(cx, TcpStream::poll_write_ready, |t| {
            t.try_write_vectored(bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // As tokio's own: a socket the peer already reset has nothing left to close.
        Poll::Ready(
            match socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
                r => r,
            },
        )
    }
}

/// What the reader's direct writes go through: the socket, and the relay's counts and idle
/// clock, which those writes move as the relay's own do.
struct TcpSink {
    sock: Arc<SharedSocket>,
    counters: Arc<Counters>,
    activity: Arc<Activity>,
}

impl DirectSink for TcpSink {
    fn write_now(&self, data: &[u8]) -> usize {
        let n = match self.sock.tcp.try_write(data) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return 0,
            Err(e) => {
                // The relay's next read or write returns it; the socket's readiness wakes it.
                self.sock.keep_error(e);
                return 0;
            }
        };
        self.activity.touch();
        self.counters
            .wire_to_socket
            .fetch_add(n as u64, Ordering::Relaxed);
        self.counters
            .to_socket
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

/// TLS streams of either side over TCP: split through tokio's lock (TLS state is shared).
macro_rules! tls_endpoint {
    ($t:ty) => {
        impl Endpoint for $t {
            type Read<'a> = tokio::io::ReadHalf<&'a mut Self>;
            type Write<'a> = tokio::io::WriteHalf<&'a mut Self>;
            fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
                tokio::io::split(self)
            }
            fn abort(&self) {
                abort(self.get_ref().0);
            }
        }
    };
}
tls_endpoint!(tokio_rustls::client::TlsStream<TcpStream>);

/// The stream's side of an in-process pipe (HTTP destinations serve the other end).
impl Endpoint for tokio::io::DuplexStream {
    type Read<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut Self>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }
    /// A pipe has no reset: dropping it ends the other side.
    fn abort(&self) {}
}
tls_endpoint!(tokio_rustls::server::TlsStream<TcpStream>);

enum Failure {
    Socket(std::io::Error),
    Stream(StreamError),
    Idle(Duration),
    BadData(String),
}

/// A connection the relay serves, whatever it is: the one type every caller hands over.
pub enum Socket {
    Tcp(TcpStream),
    /// TLS this side started: to an endpoint (`enable_client_tls`, reverse TLS).
    TlsTo(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS this side accepted: from a caller (`caller_tls`).
    TlsFrom(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Socket {
    /// Makes the coming close send a TCP RST instead of a FIN.
    pub fn abort(&self) {
        match self {
            Socket::Tcp(t) => abort(t),
            Socket::TlsTo(t) => t.abort(),
            Socket::TlsFrom(t) => t.abort(),
        }
    }
}

/// `$s` bound to whichever stream `$sock` holds, pinned.
macro_rules! each {
    ($sock:expr, $s:ident => $e:expr) => {
        match $sock.get_mut() {
            Socket::Tcp(t) => {
                let $s = std::pin::Pin::new(t);
                $e
            }
            Socket::TlsTo(t) => {
                let $s = std::pin::Pin::new(t.as_mut());
                $e
            }
            Socket::TlsFrom(t) => {
                let $s = std::pin::Pin::new(t.as_mut());
                $e
            }
        }
    };
}

/// So code that reads and writes whole connections (the HTTP forwarder) takes any socket.
impl AsyncRead for Socket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(t) => t.is_write_vectored(),
            Socket::TlsTo(t) => t.is_write_vectored(),
            Socket::TlsFrom(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

/// Relays `socket` and `stream` until both directions end or either fails, keeping
/// `counters` current.
pub async fn relay(
    socket: Socket,
    stream: MuxStream,
    counters: &Arc<Counters>,
    opts: Options,
) -> Outcome {
    match socket {
        Socket::Tcp(t) => relay_with(SharedTcp::new(t), stream, counters, opts).await,
        Socket::TlsTo(t) => relay_with(*t, stream, counters, opts).await,
        Socket::TlsFrom(t) => relay_with(*t, stream, counters, opts).await,
    }
}

/// Relays any [`Endpoint`] with these options, keeping `counters` current.
pub async fn relay_with<E: Endpoint>(
    mut io: E,
    stream: MuxStream,
    counters: &Arc<Counters>,
    opts: Options,
) -> Outcome {
    let activity = Arc::new(Activity::new(opts.idle.is_some()));
    // Compressed DATA must be inflated first: only the relay writes it.
    // The stream lets go of it when it fails or is dropped below, before the socket closes.
    if let Some(sock) = io.direct().filter(|_| !opts.compress) {
        stream.set_sink(Some(Arc::new(TcpSink {
            sock,
            counters: counters.clone(),
            activity: activity.clone(),
        })));
    }
    let result = {
        let (rd, wr) = io.halves();
        let work = async {
            tokio::try_join!(
                up(rd, &stream, counters, opts, &activity),
                down(wr, &stream, counters, opts, &activity)
            )
        };
        match opts.idle {
            None => work.await.map(|_| ()),
            Some(idle) => tokio::select! {
                r = work => r.map(|_| ()),
                f = activity.watch(idle) => Err(f),
            },
        }
    };
    let ending = match result {
        Ok(()) => Ending::Closed,
        Err(Failure::Socket(e)) => {
            stream.reset(Reason::Reset, &e.to_string());
            Ending::SocketError(e.to_string())
        }
        Err(Failure::Stream(e)) => {
            io.abort();
            let msg = match &e {
                StreamError::ResetByPeer { message, .. } | StreamError::Reset { message, .. } => {
                    message.clone()
                }
                StreamError::AlreadyFinished => String::new(),
            };
            Ending::StreamReset(e.reason(), msg)
        }
        Err(Failure::Idle(d)) => {
            let msg = format!("idle for {} s", d.as_secs());
            stream.reset(Reason::Timeout, &msg);
            io.abort();
            Ending::Idle(d)
        }
        Err(Failure::BadData(m)) => {
            stream.reset(Reason::Protocol, &m);
            io.abort();
            Ending::BadData(m)
        }
    };
    drop(stream);
    Outcome {
        to_stream: counters.to_stream.load(Ordering::Relaxed),
        to_socket: counters.to_socket.load(Ordering::Relaxed),
        wire_to_stream: counters.wire_to_stream.load(Ordering::Relaxed),
        wire_to_socket: counters.wire_to_socket.load(Ordering::Relaxed),
        ending,
    }
}

/// The most one read from a socket takes at a time: four bulk DATA frames, two messages.
const READ_MAX: usize = 4 * DATA_CHUNK;

/// Socket to stream.
async fn up<R: AsyncRead + Unpin>(
    mut rd: R,
    stream: &MuxStream,
    counters: &Counters,
    opts: Options,
    activity: &Activity,
) -> Result<(), Failure> {
    let mut deflater = opts.compress.then(Deflater::default);
    let (chunk_min, chunk_max) = if opts.compress {
        (Deflater::MAX_INPUT, Deflater::MAX_INPUT)
    } else {
        (MAX_DATA, READ_MAX)
    };
    let mut want = chunk_min;
    let mut buf = BytesMut::new();
    loop {
        // Nothing is read that the peer's window would hold back: it waits in the socket, not
        // in a buffer of this stream's (one read's worth more than the credit at most, so
        // reads stay big). Compressed output has no size to hold to the credit.
        let credit = stream.writable().await.map_err(Failure::Stream)?;
        let take = if opts.compress {
            want
        } else if want > MAX_DATA {
            // A bulk stream's reads are whole chunks, which is how `send_read` cuts them, so
            // its messages are two whole chunks each (`mux::BATCH_BYTES`); what is left
            // waits in the socket for the next read. At least one, beyond the credit if need
            // be: a last piece that fits the credit, or the stream's end, is then seen
            // without waiting for the next WINDOW.
            let t = want.min(credit.max(DATA_CHUNK));
            t - t % DATA_CHUNK
        } else {
            want.min(credit.max(chunk_min))
        };
        // Room for `take`; a small read may use what is left of the last buffer.
        if buf.capacity() < take && (buf.capacity() < 4096 || take > chunk_min) {
            buf.reserve(take);
        }
        let n = (&mut rd)
            .take(take as u64)
            .read_buf(&mut buf)
            .await
            .map_err(Failure::Socket)?;
        if n == 0 {
            return stream.finish().await.map_err(Failure::Stream);
        }
        // A read that filled its room found more waiting (a bulk sender): read more at a time,
        // so the frames share a message and the far end writes them at once.
        want = if n == take {
            (want * 2).min(chunk_max)
        } else {
            chunk_min
        };
        activity.touch();
        counters.to_stream.fetch_add(n as u64, Ordering::Relaxed);
        let payload = match &mut deflater {
            Some(d) => {
                let p = d.encode(&buf);
                buf.clear();
                p
            }
            None => buf.split().freeze(),
        };
        counters
            .wire_to_stream
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        stream
            .send_read(payload, n)
            .await
            .map_err(Failure::Stream)?;
    }
}

/// Stream to socket: what was received so far (up to one vectored write's worth) in one write
/// where the socket takes it.
async fn down<W: AsyncWrite + Unpin>(
    mut wr: W,
    stream: &MuxStream,
    counters: &Counters,
    opts: Options,
    activity: &Activity,
) -> Result<(), Failure> {
    let mut inflater = opts.compress.then(Inflater::default);
    let mut piece = Vec::new();
    let mut batch = Vec::new();
    loop {
        match stream.recv_batch(&mut batch, MAX_IOV).await {
            Ok(true) => {}
            Ok(false) => return wr.shutdown().await.map_err(Failure::Socket),
            Err(e) => return Err(Failure::Stream(e)),
        }
        activity.touch();
        let wire: usize = batch.iter().map(Bytes::len).sum();
        counters
            .wire_to_socket
            .fetch_add(wire as u64, Ordering::Relaxed);
        match &mut inflater {
            // A batch may be a whole window going to a slow reader: each write that takes
            // some of it counts as activity and gives that much credit back at once.
            None => write_all_vectored(&mut wr, &mut batch, |n| {
                activity.touch();
                counters.to_socket.fetch_add(n as u64, Ordering::Relaxed);
                stream.written(n);
            })
            .await
            .map_err(Failure::Socket)?,
            Some(inf) => {
                for chunk in &batch {
                    inflate_to(&mut wr, inf, chunk, &mut piece, counters, activity).await?;
                    stream.written(chunk.len());
                }
            }
        }
        batch.clear();
    }
}

/// Writes all of `chunks`, as many at a time as one vectored write takes, telling `wrote`
/// how many bytes each write took.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    chunks: &mut [Bytes],
    mut wrote: impl FnMut(usize),
) -> std::io::Result<()> {
    let mut first = 0;
    loop {
        while chunks.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(());
        }
        // The slices are built in each poll, so they stay on the stack and out of the
        // relay's future: 1 KiB per stream held across the await otherwise.
        let mut n = std::future::poll_fn(|cx| {
            let mut io = [IoSlice::new(&[]); MAX_IOV];
            let k = io.len().min(chunks.len() - first);
            for (slot, c) in io.iter_mut().zip(&chunks[first..first + k]) {
                *slot = IoSlice::new(c);
            }
            std::pin::Pin::new(&mut *wr).poll_write_vectored(cx, &io[..k])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        wrote(n);
        while let Some(c) = chunks.get_mut(first) {
            if n < c.len() {
                c.advance(n);
                break;
            }
            n -= c.len();
            first += 1;
        }
    }
}

/// Slices per vectored write, and chunks per batch taken from a stream (Linux takes up to 1024
/// slices; 64 chunks are up to 4 MiB).
const MAX_IOV: usize = 64;

/// One compressed chunk from the peer, inflated and written in bounded pieces.
async fn inflate_to<W: AsyncWrite + Unpin>(
    wr: &mut W,
    inf: &mut Inflater,
    chunk: &[u8],
    piece: &mut Vec<u8>,
    counters: &Counters,
    activity: &Activity,
) -> Result<(), Failure> {
    inf.feed(chunk);
    while let Some(rec) = inf.next_record().map_err(|e| Failure::BadData(e.0))? {
        match rec {
            Decoded::Raw(r) => {
                wr.write_all(&r).await.map_err(Failure::Socket)?;
                counters
                    .to_socket
                    .fetch_add(r.len() as u64, Ordering::Relaxed);
            }
            Decoded::Deflate(body) => {
                let mut rest = &body[..];
                loop {
                    // Bounded pieces: a small record may inflate to a great deal.
                    let used = inf
                        .next_piece(rest, piece, MAX_DATA)
                        .map_err(|e| Failure::BadData(e.0))?;
                    rest = &rest[used..];
                    if !piece.is_empty() {
                        wr.write_all(piece).await.map_err(Failure::Socket)?;
                        counters
                            .to_socket
                            .fetch_add(piece.len() as u64, Ordering::Relaxed);
                        activity.touch();
                    }
                    if rest.is_empty() && piece.len() < MAX_DATA {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// When bytes last moved, for the idle timeout (milliseconds since the relay started).
struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
    enabled: bool,
}

impl Activity {
    fn new(enabled: bool) -> Self {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            enabled,
        }
    }

    fn touch(&self) {
        if self.enabled {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Completes once nothing moved for `idle`.
    async fn watch(&self, idle: Duration) -> Failure {
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            let due = self.start + Duration::from_millis(last) + idle;
            tokio::time::sleep_until(due).await;
            if self.last_ms.load(Ordering::Relaxed) == last {
                return Failure::Idle(idle);
            }
        }
    }
}

/// Makes the coming close send a TCP RST instead of a FIN.
pub fn abort(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A vectored writer that takes at most `max` bytes per call, across slices.
    struct Dribble {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Dribble {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.max;
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(left);
                self.got.extend_from_slice(&b[..k]);
                n += k;
                left -= k;
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The kernel reports a reset to the first call on the socket only. When that call is the
    /// reader's direct write, the relay must still see the reset, not an end of file, or it
    /// would pass the reset on as a FIN.
    #[tokio::test]
    async fn a_reset_that_a_direct_write_meets_reaches_the_relay_as_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        abort(&theirs);
        drop(theirs);
        ours.readable().await.unwrap();
        let shared = SharedTcp::new(ours);
        let counters = Arc::new(Counters::default());
        let sink = TcpSink {
            sock: shared.0.clone(),
            counters: counters.clone(),
            activity: Arc::new(Activity::new(false)),
        };
        assert_eq!(sink.write_now(b"request"), 0);
        // The write met the reset (and so took it from the kernel), and kept it.
        assert!(shared.0.failed.load(Ordering::Acquire));
        assert_eq!(counters.to_socket.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; 16];
        let e = ByRef(&shared.0).read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    }

    fn chunks(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[tokio::test]
    async fn vectored_writes_deliver_every_chunk_in_order_across_partial_writes() {
        let parts: &[&[u8]] = &[b"", b"abc", b"", b"defghij", b"k", b""];
        for max in 1..=12 {
            let mut w = Dribble {
                got: Vec::new(),
                max,
                calls: 0,
            };
            let mut told = Vec::new();
            write_all_vectored(&mut w, &mut chunks(parts), |n| told.push(n))
                .await
                .unwrap();
            assert_eq!(w.got, b"abcdefghijk", "max {max}");
            // Progress as it happens: every write, none bigger than the writer took.
            assert_eq!(told.iter().sum::<usize>(), 11, "max {max}");
            assert!(told.iter().all(|&n| n > 0 && n <= max), "max {max}");
            // Each call takes all it may, across chunk boundaries.
            assert_eq!(w.calls, 11usize.div_ceil(max), "max {max}");
        }
        // More chunks than one call carries: the rest in the next call.
        let many: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i])).collect();
        let mut w = Dribble {
            got: Vec::new(),
            max: usize::MAX,
            calls: 0,
        };
        write_all_vectored(&mut w, &mut many.clone(), |_| {})
            .await
            .unwrap();
        assert_eq!(w.got, (0..100u8).collect::<Vec<_>>());
        assert_eq!(w.calls, 100usize.div_ceil(MAX_IOV));
        // Only empty chunks: nothing to write, no call. A socket that takes nothing: an error,
        // not a loop.
        let mut w = Dribble {
            got: Vec::new(),
            max: 0,
            calls: 0,
        };
        write_all_vectored(&mut w, &mut chunks(&[b"", b""]), |_| {})
            .await
            .unwrap();
        assert_eq!(w.calls, 0);
        let e = write_all_vectored(&mut w, &mut chunks(&[b"x"]), |_| {})
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }
}
