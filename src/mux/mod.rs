//! The stream multiplexer: many byte streams over one message transport (a tunnel).
//!
//! One `Mux` per tunnel. Three tasks drive it:
//! - the **reader** decodes messages and dispatches frames. It never waits on anything but
//!   the transport: data goes into the stream's buffer (bounded by the credit the stream
//!   granted), control answers go into the bounded urgent queue;
//! - the **writer** batches frames into messages: urgent frames first, then the streams' send
//!   queues round robin, one frame (at most `MAX_DATA` bytes) per stream per turn, up to
//!   [`BATCH_BYTES`] per message, so a bulk stream adds at most a frame to an interactive
//!   stream's wait. A stream that queues DATA while nobody is sending builds and sends that
//!   batch itself, the same way, in its own task (`writer.rs`);
//! - the **keepalive** task sends PINGs (RTT for auto-tuning) and closes a silent tunnel.
//!
//! Send queues are bounded per stream and per tunnel (`limits.stream_send_queue`,
//! `limits.tunnel_send_queue`), so a full tunnel pushes back on the sockets feeding it. The
//! transport is any `Stream`/`Sink` of messages, so benches and tests can run the mux over an
//! in-memory pipe; `tunnel` adapts a WebSocket to it.

mod budget;
pub mod close;
mod incoming;
mod io;
pub mod memory;
mod recv_queue;
mod stream;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::proto::{Frame, OpenMeta, Reason};

pub use budget::{BudgetFull, WindowBudget};
pub use close::{Closed, CLOSE_CODES};
pub use incoming::Incoming;
pub use stream::{DirectSink, MuxStream, StreamError};
use stream::{StreamShared, StreamState};

/// Frames are batched into messages of at most about this many bytes: two bulk DATA frames
/// ([`DATA_CHUNK`](crate::proto::DATA_CHUNK)) exactly. With the WebSocket's header (at most
/// 14 bytes) that is 130,594 bytes, eight TLS records of at most 16 KiB, and with their 22
/// bytes each 130,770 on the wire: two TCP segments on loopback (MSS 65,483).
pub const BATCH_BYTES: usize = 2 * (crate::proto::DATA_CHUNK + crate::proto::HEADER_LEN);
/// LOG frames waiting in the control queue at most; more are dropped.
pub const LOG_QUEUE: usize = 32;

/// Which side of the tunnel this mux is; decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens odd stream ids.
    Gateway,
    /// Opens even stream ids.
    Client,
}

/// Limits and timers of one mux.
#[derive(Debug, Clone)]
pub struct MuxConfig {
    pub role: Role,
    /// Receive window each new stream starts with.
    pub initial_window: u32,
    /// Largest receive window auto-tuning may grow a stream to.
    pub max_window: u32,
    /// Cap on the sum of window growth over all streams of this tunnel.
    pub tunnel_window_budget: u64,
    /// Streams open at once (both directions).
    pub max_streams: usize,
    /// Opens from the peer waiting to be accepted.
    pub accept_backlog: usize,
    /// Streams the peer opens may carry up to [`EARLY_DATA`](crate::proto::EARLY_DATA)
    /// bytes of DATA, and a FIN, before this side's OPEN_OK: the client's side, whose HELLO
    /// lists `early_data`, and the gateway's when it answered that in its WELCOME.
    pub early_data: bool,
    /// The peer takes early data on streams this side opens ([`Mux::open_early`]).
    pub peer_early_data: bool,
    /// DATA bytes one stream may have waiting for the tunnel's writer.
    pub send_queue: usize,
    /// DATA bytes all streams together may have waiting for the tunnel's writer.
    pub tunnel_send_queue: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Receive window promised to peers by every stream of every tunnel of the process.
    pub window_budget: Arc<WindowBudget>,
}

impl MuxConfig {
    /// A tunnel's settings from a config file's `[limits]` and `[keepalive]` (the client's
    /// and the gateway's are the same keys).
    pub fn from_limits(
        role: Role,
        l: &crate::config::Limits,
        keepalive: &crate::config::Keepalive,
    ) -> MuxConfig {
        MuxConfig {
            role,
            initial_window: l.stream_window,
            max_window: l.max_stream_window,
            tunnel_window_budget: l.tunnel_buffer,
            max_streams: l.max_streams,
            accept_backlog: l.accept_backlog,
            early_data: role == Role::Client,
            peer_early_data: false,
            send_queue: bytes(l.stream_send_queue),
            tunnel_send_queue: bytes(l.tunnel_send_queue),
            keepalive_interval: keepalive.interval,
            keepalive_timeout: keepalive.timeout,
            window_budget: WindowBudget::new(l.window_budget),
        }
    }
}

/// A byte limit from the config (at most 1 GiB there) as a length.
fn bytes(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Default for MuxConfig {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        MuxConfig {
            role: Role::Client,
            initial_window: 256 * 1024,
            max_window: 16 * 1024 * 1024,
            tunnel_window_budget: l.tunnel_buffer,
            max_streams: 10_000,
            accept_backlog: 1024,
            early_data: false,
            peer_early_data: false,
            send_queue: bytes(l.stream_send_queue),
            tunnel_send_queue: bytes(l.tunnel_send_queue),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(45),
            window_budget: WindowBudget::new(u64::MAX),
        }
    }
}

/// Why opening a stream failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("peer refused the stream: {reason}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Refused { reason: Reason, message: String },
    #[error("tunnel is closed")]
    TunnelClosed,
    #[error("tunnel is going away")]
    GoingAway,
    #[error("stream limit of {0} reached on this tunnel")]
    Limit(usize),
    #[error("OPEN metadata of {0} bytes is over the protocol's limit")]
    TooLarge(usize),
    #[error("the window budget of {} bytes is committed (limits.{})", .0.cap, .0.key)]
    Budget(BudgetFull),
    #[error("the tunnel's control queue is full: the peer is not reading")]
    Congested,
}

impl OpenError {
    pub fn reason(&self) -> Reason {
        match self {
            OpenError::Refused { reason, .. } => *reason,
            OpenError::TunnelClosed => Reason::TunnelLost,
            OpenError::GoingAway => Reason::Shutdown,
            OpenError::Limit(_) => Reason::Limit,
            OpenError::TooLarge(_) => Reason::Internal,
            OpenError::Budget(_) => Reason::Limit,
            OpenError::Congested => Reason::Limit,
        }
    }
}

/// The peer's answer to an OPEN, to come ([`Mux::open_early`]).
pub struct OpenAnswer {
    rx: oneshot::Receiver<Result<(), (Reason, String)>>,
    mux: Arc<MuxState>,
}

impl std::fmt::Debug for OpenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAnswer").finish_non_exhaustive()
    }
}

impl OpenAnswer {
    /// Waits for the OPEN_OK (`Ok`) or the refusal.
    pub async fn wait(self) -> Result<(), OpenError> {
        match self.rx.await {
            Ok(Ok(())) => {
                self.mux
                    .stats
                    .streams_opened
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err((Reason::TunnelLost, _))) | Err(_) => Err(OpenError::TunnelClosed),
            // The peer's words reach log lines and HTTP answers: escaped here, once.
            Ok(Err((reason, message))) => Err(OpenError::Refused {
                reason,
                message: crate::telemetry::clean(&message, 512),
            }),
        }
    }
}

/// Why a CONFIG push was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("CONFIG not sent: {0}")]
    TooLarge(crate::proto::ProtoError),
    #[error("tunnel is closed")]
    Closed,
    #[error("control queue is full")]
    QueueFull,
}

/// Counters of one mux, read by status and metrics.
#[derive(Debug, Default)]
pub struct MuxStats {
    /// Bytes of DATA currently buffered for readers that have not read them.
    pub buffered: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub streams_opened: AtomicU64,
    pub protocol_errors: AtomicU64,
}

pub(crate) struct StreamTable {
    map: HashMap<u32, Arc<StreamShared>>,
    next_local: u32,
    max_peer: u32,
}

pub(crate) struct MuxState {
    cfg: MuxConfig,
    streams: Mutex<StreamTable>,
    urgent: Mutex<VecDeque<Frame>>,
    urgent_cap: usize,
    /// The id of the last OPEN the writer took from `urgent` (changed under its lock).
    last_open_sent: AtomicU32,
    /// LOG frames in `urgent` now (at most [`LOG_QUEUE`]); taken out by `drain_urgent`.
    queued_logs: AtomicUsize,
    wake_writer: Notify,
    /// The transport's sending half and the batch being built: whoever holds it sends.
    outbox: tokio::sync::Mutex<writer::Outbox>,
    /// Whether interactive streams' small sends wait for the other streams woken with them.
    coalesce: writer::Coalesce,
    /// Streams with frames in their send queue, served round robin by the writer.
    ready: Mutex<VecDeque<Arc<StreamShared>>>,
    /// Room for DATA bytes in all send queues together (`tunnel_send_queue`), taken before a
    /// frame is queued and given back when the writer takes it or a failed stream drops it.
    /// Closed with the tunnel, which fails every wait for it.
    send_budget: tokio::sync::Semaphore,
    /// Woken when the last open stream goes: a drain waits on it.
    streams_gone: Notify,
    closed: CancellationToken,
    /// Cancelled when the writer has stopped: queued frames written, transport closed.
    flushed: CancellationToken,
    /// Set by a drained close: the writer sends the stream frames still queued (a finished
    /// stream's last DATA and FIN). Any other close (revoked token, protocol error, API
    /// disconnect) sends nothing more of the streams.
    graceful: AtomicBool,
    close_reason: Mutex<Option<Closed>>,
    /// The peer's GO_AWAY, kept to explain the close that follows it.
    peer_goodbye: Mutex<Option<(Reason, String)>>,
    local_go_away: AtomicBool,
    peer_go_away: AtomicBool,
    rtt_us: AtomicU64,
    /// Smallest RTT seen: the path's own delay, without the queueing that big windows add.
    min_rtt_us: AtomicU64,
    window_growth: AtomicU64,
    started: Instant,
    last_rx_ms: AtomicU64,
    /// When the transport last took a message (ms since `started`).
    last_tx_ms: AtomicU64,
    stats: MuxStats,
}

/// Events for the layer above the mux.
pub struct Events {
    /// Peer-opened streams, waiting for `accept` or `reject`.
    pub incoming: mpsc::Receiver<Incoming>,
    /// Latest CONFIG payload (gateway to client); each replaces the previous.
    pub config: watch::Receiver<Option<Bytes>>,
    /// LOG payloads (client to gateway); dropped, not queued without bound, when slow.
    pub logs: mpsc::Receiver<Bytes>,
}

/// By hand: the derived `Debug` would print the latest CONFIG, which carries private keys and
/// passwords.
impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("incoming", &self.incoming.len())
            .field("logs", &self.logs.len())
            .finish_non_exhaustive()
    }
}

/// How long [`Mux::close_flushed`] waits for the writer (it gives its closing flush 2 s).
pub const CLOSE_FLUSH: Duration = Duration::from_secs(3);

/// Handle to one multiplexed tunnel. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<MuxState>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("role", &self.shared.cfg.role)
            .field("active_streams", &self.active_streams())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Mux {
    /// Starts the mux over a message transport and returns its handle and event receivers.
    /// The tasks stop when the transport ends, on a protocol error, or on [`Mux::close`].
    pub fn start<R, W>(reader: R, writer: W, cfg: MuxConfig) -> (Mux, Events)
    where
        R: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
        W: Sink<Bytes, Error = std::io::Error> + Send + Unpin + 'static,
    {
        let (incoming_tx, incoming) = mpsc::channel(cfg.accept_backlog.max(1));
        let (config_tx, config) = watch::channel(None);
        let (logs_tx, logs) = mpsc::channel(256);
        // Per stream at most an OPEN or OPEN_ERR, two window updates and one reset can be
        // pending (each update needs the peer to use half a window first), plus pings and
        // go-away.
        let urgent_cap = cfg.max_streams.saturating_mul(4).saturating_add(256);
        let next_local = match cfg.role {
            Role::Gateway => 1,
            Role::Client => 2,
        };
        // A semaphore holds at most MAX_PERMITS; the config caps the queue far below it.
        let send_budget = cfg
            .tunnel_send_queue
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let shared = Arc::new(MuxState {
            cfg,
            streams: Mutex::new(StreamTable {
                map: HashMap::new(),
                next_local,
                max_peer: 0,
            }),
            urgent: Mutex::new(VecDeque::new()),
            last_open_sent: AtomicU32::new(0),
            urgent_cap,
            queued_logs: AtomicUsize::new(0),
            wake_writer: Notify::new(),
            outbox: tokio::sync::Mutex::new(writer::Outbox::new(Box::pin(writer))),
            coalesce: writer::Coalesce::default(),
            ready: Mutex::new(VecDeque::new()),
            send_budget: tokio::sync::Semaphore::new(send_budget),
            streams_gone: Notify::new(),
            closed: CancellationToken::new(),
            flushed: CancellationToken::new(),
            graceful: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            peer_goodbye: Mutex::new(None),
            local_go_away: AtomicBool::new(false),
            peer_go_away: AtomicBool::new(false),
            rtt_us: AtomicU64::new(0),
            min_rtt_us: AtomicU64::new(0),
            window_growth: AtomicU64::new(0),
            started: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
            last_tx_ms: AtomicU64::new(0),
            stats: MuxStats::default(),
        });
        let sinks = io::ReaderSinks {
            incoming: incoming_tx,
            config: config_tx,
            logs: logs_tx,
        };
        tokio::spawn(io::reader_loop(shared.clone(), reader, sinks));
        tokio::spawn(writer::writer_loop(shared.clone()));
        tokio::spawn(io::keepalive_loop(shared.clone()));
        (
            Mux { shared },
            Events {
                incoming,
                config,
                logs,
            },
        )
    }

    /// Opens a stream to the peer and waits for its answer.
    ///
    /// Dropping the future before it completes resets the stream on the peer.
    pub async fn open(&self, meta: &OpenMeta) -> Result<MuxStream, OpenError> {
        let (stream, answer) = self.start_open(meta, false)?;
        match answer.wait().await {
            Ok(()) => Ok(stream),
            Err(e) => {
                stream.forget();
                Err(e)
            }
        }
    }

    /// Opens a stream to a peer that takes early data ([`Mux::peer_takes_early_data`]): the
    /// stream is returned at once and may send up to [`EARLY_DATA`](crate::proto::EARLY_DATA)
    /// bytes before the peer's answer, which [`OpenAnswer::wait`] tells. A refusal fails the
    /// stream, and what it sent is discarded by the peer.
    ///
    /// Dropping the stream before the answer resets it on the peer.
    pub fn open_early(&self, meta: &OpenMeta) -> Result<(MuxStream, OpenAnswer), OpenError> {
        self.start_open(meta, true)
    }

    /// Queues an OPEN for a new stream: the stream, and its answer to come.
    fn start_open(
        &self,
        meta: &OpenMeta,
        early: bool,
    ) -> Result<(MuxStream, OpenAnswer), OpenError> {
        let s = &self.shared;
        if s.closed.is_cancelled() {
            return Err(OpenError::TunnelClosed);
        }
        if s.peer_go_away.load(Ordering::Acquire) || s.local_go_away.load(Ordering::Acquire) {
            return Err(OpenError::GoingAway);
        }
        let meta = Bytes::from(serde_json::to_vec(meta).unwrap_or_default());
        if meta.len() > crate::proto::MAX_OPEN_JSON {
            return Err(OpenError::TooLarge(meta.len()));
        }
        let (tx, rx) = oneshot::channel();
        let stream = {
            let mut t = s.lock_streams();
            if t.map.len() >= s.cfg.max_streams {
                return Err(OpenError::Limit(s.cfg.max_streams));
            }
            // Given back when the stream leaves the table (`remove_stream`, `close`).
            s.cfg
                .window_budget
                .take(u64::from(s.cfg.initial_window))
                .map_err(OpenError::Budget)?;
            let id = t.next_local;
            let Some(next) = id.checked_add(2) else {
                drop(t);
                s.cfg.window_budget.give(u64::from(s.cfg.initial_window));
                // Ids are exhausted after 2^31 opens: drain this tunnel, the owner reconnects.
                self.go_away(Reason::Shutdown, "stream ids exhausted");
                return Err(OpenError::GoingAway);
            };
            t.next_local = next;
            let shared = Arc::new(StreamShared::new(
                id,
                StreamState::opening(s.cfg.initial_window, tx, early),
            ));
            // Ids must reach the wire in increasing order: the id is picked and the OPEN
            // queued inside one critical section. The control queue has room for an OPEN per
            // stream the table can hold.
            let open = Frame::Open {
                id,
                window: s.cfg.initial_window,
                meta,
            };
            if let Err(e) = s.push_control(open) {
                s.cfg.window_budget.give(u64::from(s.cfg.initial_window));
                return Err(e);
            }
            t.map.insert(id, shared.clone());
            MuxStream::new(shared, self.shared.clone())
        };
        let answer = OpenAnswer {
            rx,
            mux: self.shared.clone(),
        };
        Ok((stream, answer))
    }

    /// The peer takes early data on streams this side opens ([`Mux::open_early`]).
    pub fn peer_takes_early_data(&self) -> bool {
        self.shared.cfg.peer_early_data
    }

    /// Streams currently open on this tunnel.
    pub fn active_streams(&self) -> usize {
        self.shared.lock_streams().map.len()
    }

    /// Smoothed round-trip time from PING/PONG, if measured yet.
    pub fn rtt(&self) -> Option<Duration> {
        match self.shared.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn stats(&self) -> &MuxStats {
        &self.shared.stats
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// True once either side said it takes no new streams.
    pub fn is_going_away(&self) -> bool {
        self.shared.peer_go_away.load(Ordering::Acquire)
            || self.shared.local_go_away.load(Ordering::Acquire)
    }

    /// Resolves when the tunnel is closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Why the tunnel closed, once it has.
    pub fn close_reason(&self) -> Option<Closed> {
        self.shared.close_reason.lock().ok().and_then(|g| g.clone())
    }

    /// Resolves once no stream is open, or the tunnel is closed.
    pub async fn idle(&self) {
        loop {
            let gone = self.shared.streams_gone.notified();
            tokio::pin!(gone);
            // Registered before the check, so a stream ending in between still wakes us.
            gone.as_mut().enable();
            if self.active_streams() == 0 || self.is_closed() {
                return;
            }
            tokio::select! {
                _ = gone => {}
                _ = self.closed() => return,
            }
        }
    }

    /// Takes no new streams and waits, at most `grace`, for the open ones to finish.
    /// Returns how many are still open.
    pub async fn drain(&self, reason: Reason, message: &str, grace: Duration) -> usize {
        self.go_away(reason, message);
        let _ = tokio::time::timeout(grace, self.idle()).await;
        self.active_streams()
    }

    /// Tells the peer no new streams will be accepted here; open streams continue.
    pub fn go_away(&self, reason: Reason, message: &str) {
        if !self.shared.local_go_away.swap(true, Ordering::AcqRel) {
            self.shared.push_urgent(Frame::GoAway {
                reason,
                message: message.to_owned(),
            });
        }
    }

    /// Sends a LOG frame (client to gateway), best effort: dropped (returns false) when the
    /// control queue is half full, so logs can never crowd out flow control or close the
    /// tunnel.
    pub fn send_log(&self, payload: Bytes) -> bool {
        let frame = Frame::Log(payload);
        if frame.check().is_err() {
            return false;
        }
        {
            let mut q = self.shared.urgent.lock().unwrap_or_else(|e| e.into_inner());
            // Callers can cause log lines (every refusal makes one): only a few may wait, so
            // they never crowd out flow control or data.
            let logs = &self.shared.queued_logs;
            if logs.load(Ordering::Relaxed) >= LOG_QUEUE || self.is_closed() {
                return false;
            }
            q.push_back(frame);
            logs.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.wake_writer.notify_one();
        true
    }

    /// Sends a CONFIG frame (gateway to client) ahead of data: the client applies it at once.
    /// Fails when the payload is over the CONFIG limit (nothing is sent: the peer would close
    /// the tunnel), the tunnel is closed or its control queue is full (the client then gets
    /// the configuration when it reconnects).
    ///
    /// A CONFIG still queued is replaced: each is the whole configuration, so only the last
    /// matters, and a client that stops reading must not make every API edit queue another
    /// copy of up to a MiB.
    pub fn push_config(&self, payload: Bytes) -> Result<(), PushError> {
        let frame = Frame::Config(payload);
        frame.check().map_err(PushError::TooLarge)?;
        {
            let mut q = self.shared.urgent.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_closed() {
                return Err(PushError::Closed);
            }
            q.retain(|f| !matches!(f, Frame::Config(_)));
            if q.len() >= self.shared.urgent_cap {
                return Err(PushError::QueueFull);
            }
            q.push_back(frame);
        }
        self.shared.wake_writer.notify_one();
        Ok(())
    }

    /// Closes the tunnel now: every open stream is reset with `tunnel_lost`. The peer is
    /// told `reason` and `why` first (a GO_AWAY ahead of anything queued), so its log says
    /// why instead of "connection closed": no secrets in `why`.
    pub fn close(&self, reason: Reason, why: &str) {
        self.shared.say_goodbye(reason, why);
        self.shared.close(close::here(why));
    }

    /// Closes the tunnel and waits, at most [`CLOSE_FLUSH`], until the frames queued before
    /// (a finished stream's last DATA and FIN) are written and the transport is closed: how
    /// a drained tunnel ends without losing what its last stream sent.
    pub async fn close_flushed(&self, reason: Reason, why: &str) {
        self.close_graceful(reason, why);
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.flushed()).await;
    }

    /// Closes the tunnel after a drain: as [`Mux::close`], but the frames already queued are
    /// still written (bounded); [`Mux::flushed`] says when.
    pub fn close_graceful(&self, reason: Reason, why: &str) {
        self.shared.graceful.store(true, Ordering::Release);
        self.close(reason, why);
    }

    /// Resolves once the writer has stopped (after a close: queued frames written,
    /// transport closed). Unbounded on its own: a close must come first.
    pub async fn flushed(&self) {
        self.shared.flushed.cancelled().await
    }
}

impl MuxState {
    fn lock_streams(&self) -> MutexGuard<'_, StreamTable> {
        // A poisoned lock means a panic elsewhere already; the table itself is still sound.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ready(&self) -> MutexGuard<'_, VecDeque<Arc<StreamShared>>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a stream that has frames to send on the writer's ready list.
    fn schedule(&self, stream: &Arc<StreamShared>) {
        self.lock_ready().push_back(stream.clone());
        self.wake_writer.notify_one();
    }

    /// Puts a stream on the ready list without waking the writer task: for a sender that
    /// goes on to [`writer::send_now`], which sends or leaves the frames to whoever holds
    /// the outbox.
    fn schedule_quietly(&self, stream: &Arc<StreamShared>) {
        self.lock_ready().push_back(stream.clone());
    }

    /// Frames wait to be sent: control frames, or streams on the ready list.
    fn has_work(&self) -> bool {
        !self.lock_ready().is_empty()
            || !self
                .urgent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    /// Takes a failed stream off the ready list: it has nothing left to send.
    fn unschedule(&self, stream: &StreamShared) {
        self.lock_ready()
            .retain(|s| !std::ptr::eq(Arc::as_ptr(s), stream));
    }

    /// The writer has stopped: nothing queued will be sent.
    fn clear_ready(&self) {
        self.lock_ready().clear();
    }

    /// Queues a control frame of this side's own making, or says why not (nothing queued).
    /// Never closes the tunnel, so callers may hold the stream table's lock.
    fn push_control(&self, frame: Frame) -> Result<(), OpenError> {
        {
            let mut q = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
            if self.closed.is_cancelled() {
                return Err(OpenError::TunnelClosed);
            }
            if q.len() >= self.urgent_cap {
                return Err(OpenError::Congested);
            }
            q.push_back(frame);
        }
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Takes stream `id`'s OPEN out of the control queue if the writer has not taken it yet.
    fn unqueue_open(&self, id: u32) -> bool {
        // OPENs are queued in id order and leave in that order: one at or below the last
        // that left is gone, and the queue (up to thousands of frames) need not be searched.
        // The mark only grows, so reading it before the lock is safe: one that leaves
        // meanwhile is simply not found.
        if !io::is_local(self.cfg.role, id) || id <= self.last_open_sent.load(Ordering::Relaxed) {
            return false;
        }
        let mut q = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
        // Looked for from the back: an OPEN still queued is among the newest frames.
        let at = q
            .iter()
            .rposition(|f| matches!(f, Frame::Open { id: i, .. } if *i == id));
        at.and_then(|i| q.remove(i)).is_some()
    }

    /// Queues a control frame for the writer without waiting. Overflow means the peer makes
    /// us answer faster than we can write: the tunnel is closed rather than buffering more.
    fn push_urgent(&self, frame: Frame) {
        {
            let mut q = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.urgent_cap {
                drop(q);
                self.protocol_error(
                    "control queue overflow: the peer floods requests or stopped reading".into(),
                );
                return;
            }
            q.push_back(frame);
        }
        self.wake_writer.notify_one();
    }

    fn protocol_error(&self, what: String) {
        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %what, "tunnel protocol error");
        {
            let mut q = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
            // First in line: it explains the close, whatever else is still queued.
            q.push_front(Frame::GoAway {
                reason: Reason::Protocol,
                message: what.clone(),
            });
        }
        self.close(close::protocol(self.cfg.role, &what));
    }

    /// Puts a GO_AWAY first in line (unless one went already and the tunnel is closing):
    /// the writer's closing flush sends it before the transport closes.
    fn say_goodbye(&self, reason: Reason, why: &str) {
        if self.closed.is_cancelled() {
            return;
        }
        self.local_go_away.store(true, Ordering::Release);
        let mut q = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
        q.push_front(Frame::GoAway {
            reason,
            message: why.to_owned(),
        });
    }

    /// The peer said goodbye; the close that follows is explained by it.
    fn heard_goodbye(&self, reason: Reason, message: String) {
        self.peer_go_away.store(true, Ordering::Release);
        *self.peer_goodbye.lock().unwrap_or_else(|e| e.into_inner()) = Some((reason, message));
    }

    /// Why the transport ended: the peer's goodbye if it said one, else `otherwise`.
    fn ended(&self, otherwise: Closed) -> Closed {
        match self
            .peer_goodbye
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some((reason, message)) => close::goodbye(self.cfg.role, reason, &message),
            None => otherwise,
        }
    }

    fn close(&self, why: Closed) {
        {
            let mut r = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_some() {
                return;
            }
            *r = Some(why);
        }
        self.closed.cancel();
        self.send_budget.close();
        self.wake_writer.notify_one();
        let streams: Vec<_> = self.lock_streams().map.drain().map(|(_, s)| s).collect();
        self.cfg
            .window_budget
            .give(u64::from(self.cfg.initial_window) * streams.len() as u64);
        // Only a drained close still sends what the streams queued.
        let keep = self.graceful.load(Ordering::Acquire);
        for s in streams {
            s.fail_tunnel_closed(self, keep);
        }
    }

    /// Forgets a stream (once: later calls find nothing) and gives back its initial window.
    fn remove_stream(&self, id: u32) {
        let (removed, empty) = {
            let mut t = self.lock_streams();
            let removed = t.map.remove(&id).is_some();
            (removed, t.map.is_empty())
        };
        if removed {
            self.cfg
                .window_budget
                .give(u64::from(self.cfg.initial_window));
            if empty {
                self.streams_gone.notify_waiters();
            }
        }
    }

    fn min_rtt(&self) -> Duration {
        Duration::from_micros(self.min_rtt_us.load(Ordering::Relaxed))
    }

    fn smoothed_rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Milliseconds since the mux started: the clock of `last_rx_ms` and `last_tx_ms`.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl Mux {
    /// True when both handles drive the same tunnel.
    pub fn ptr_eq(&self, other: &Mux) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
