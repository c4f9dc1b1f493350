//! One multiplexed stream: receive buffer, credit, send queue, half-close and reset state.
//!
//! A stream's outgoing frames (OPEN_OK, DATA, FIN) wait in its own send queue, bounded by
//! `limits.stream_send_queue`; the writer serves the queues of all streams round robin, one
//! frame per turn, so a bulk stream never has more than that ahead of anyone else.
//!
//! Received DATA waits in the stream's receive queue, bounded by the credit granted to the
//! peer, until its reader takes it; a relay's plain socket may instead take small DATA from
//! the tunnel's reader directly, while the queue is empty ([`DirectSink`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::recv_queue::RecvQueue;
use super::MuxState;
use crate::proto::{Frame, Reason, DATA_CHUNK, EARLY_DATA, MAX_CREDIT, MAX_DATA};

/// Why a stream operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("stream reset by peer: {reason}{}", fmt_msg(.message))]
    ResetByPeer { reason: Reason, message: String },
    #[error("stream reset: {reason}{}", fmt_msg(.message))]
    Reset { reason: Reason, message: String },
    #[error("stream already finished sending")]
    AlreadyFinished,
}

fn fmt_msg(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

impl StreamError {
    pub fn reason(&self) -> Reason {
        match self {
            StreamError::ResetByPeer { reason, .. } | StreamError::Reset { reason, .. } => *reason,
            StreamError::AlreadyFinished => Reason::Internal,
        }
    }
}

/// A whole window (the last two half-window updates) consumed within this many minimum RTTs
/// means the window, not the reader, limits the stream: unless the half before it was drained
/// from a backlog (below). A whole window, not a half: a relay that writes what it finds in
/// bursts consumes many a half-window at once though the stream runs far below what its
/// window allows (on loopback eight streams' windows grew to 17 MB with no gain in speed).
const GROWTH_RTTS: u32 = 4;

/// Whole windows that each took this many minimum RTTs or more, and [`SHRINK_SRTTS`]
/// smoothed ones, [`SHRINK_AFTER`] updates in a row, were far more than the stream needed:
/// the window halves, giving back no more than it grew (PROTOCOL.md §5). Well apart from
/// [`GROWTH_RTTS`], and never on one slow window (a busy host pauses a reader now and then),
/// so a fast stream whose speed wobbles does not shrink and regrow. The smoothed RTT as well:
/// the minimum is the path's best ever, and a window-limited stream on a path that got
/// longer takes about one real round trip per window, which must not read as slow.
const SHRINK_RTTS: u32 = 16;
const SHRINK_SRTTS: u32 = 2;
const SHRINK_AFTER: u8 = 4;

type OpenWaiter = oneshot::Sender<Result<(), (Reason, String)>>;

pub(crate) struct StreamState {
    open_waiter: Option<OpenWaiter>,
    /// The peer may send DATA and FIN: once the OPEN_OK is on its way (PROTOCOL.md §4), or
    /// from the OPEN on for a peer allowed early data, which `granted` then bounds to
    /// [`EARLY_DATA`] until the OPEN_OK.
    peer_may_send: bool,
    /// A peer's stream taking early DATA, not yet accepted.
    early: bool,
    // Receive direction.
    recv: RecvQueue,
    recv_bytes: usize,
    recv_fin: bool,
    recv_waker: Option<Waker>,
    /// Total credit granted to the peer and total DATA bytes received: the peer may never
    /// have sent more than it was granted.
    granted: u64,
    received: u64,
    window: u32,
    unacked: u32,
    /// The last window update, and the one before it. None before the first two: the
    /// first window arrives in one burst however slow the stream, so it is no measure.
    epoch: Option<Instant>,
    prev_epoch: Option<Instant>,
    /// Updates in a row whose whole window took long enough to count as slow
    /// ([`SHRINK_RTTS`], [`SHRINK_SRTTS`]).
    slow: u8,
    growth: u64,
    /// At the last window update, half the window or more was still waiting to be written,
    /// and had been waiting for more than [`GROWTH_RTTS`]: the reader had stalled and is
    /// draining what piled up. The next half-window then goes fast because it was already
    /// here, not because the window limits the sender; growing on it would only let more
    /// wait in memory for the next stall (on loopback the windows of eight streams grew to
    /// 30 MB; docs/PERFORMANCE.md). A burst that arrived all at once and is being written as
    /// fast as it came is not a stall.
    backlogged: bool,
    /// A shrink is due and waits for an update that returns half the window or more, which
    /// it takes from ([`StreamState::update_at`]).
    shrink_due: bool,
    /// When received data last started waiting to be written (the queue was empty before).
    backlog_since: Instant,
    // Send direction.
    credit: u64,
    /// The window the peer announced for this stream (0 until it has): its window never
    /// shrinks below it, which is what lets a sender wait for credit instead of sending a
    /// frame cut short by it ([`MuxStream::send_read`]).
    peer_window: u64,
    /// Credit this side counts on before the peer's OPEN_OK: [`EARLY_DATA`] for an early
    /// open, else 0. The OPEN_OK's window stands for all of it, early bytes included.
    presumed: u64,
    /// The OPEN is in a message. Until then what the stream queues (early DATA, a FIN) is not
    /// put on the ready list, or a batch could carry it ahead of the OPEN, which waits in the
    /// control queue; the batch that takes the OPEN schedules the stream, so what is queued
    /// by then can go in the same message, behind it (after other ready streams' turns, if
    /// the batch has room).
    announced: bool,
    /// Woken for credit and for room in the send queue.
    send_waker: Option<Waker>,
    fin_sent: bool,
    /// Frames waiting for the writer, in wire order, and the DATA bytes among them.
    outbox: VecDeque<Frame>,
    outbox_bytes: usize,
    /// In the mux's ready list, or being served by the writer: whoever sets it schedules.
    scheduled: bool,
    // Both.
    error: Option<StreamError>,
    /// Set once the stream is finished or reset; Drop then sends nothing.
    done: bool,
    /// Dropped after finishing its send direction with nothing unread: like a TCP socket
    /// closed after shutdown, it takes the peer's FIN quietly and answers DATA with RESET.
    orphaned: bool,
    /// Where the reader writes small DATA itself while nothing received waits to be written.
    sink: Option<Arc<dyn DirectSink>>,
    /// The tunnel message whose DATA the reader last wrote to `sink`: one write per message,
    /// so a message of many small frames is written by the relay in one call, not one each.
    direct_msg: u64,
}

impl StreamState {
    /// Consumed bytes at which the receiver returns them: half the window, less 1/256 of
    /// it, so that whole bulk frames ([`DATA_CHUNK`], 64 KiB less 1/256) reach it: two of
    /// them in a 256 KiB window. At exactly half it took three, and the sender waited for the
    /// credit (docs/PERFORMANCE.md, "Messages of whole TLS records"). Half exactly while a
    /// shrink is due, which takes half the window from the update.
    fn update_at(&self) -> u32 {
        if self.shrink_due {
            self.window / 2
        } else {
            self.window / 2 - self.window / 256
        }
    }

    /// Whether DATA may be queued now (credit, room in the send queue); an error when it
    /// never may again. An early open's DATA may be queued before its OPEN has left: it is
    /// scheduled only once the OPEN is in a message (`announced`).
    fn may_queue(&self, send_queue: usize) -> Result<bool, StreamError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.fin_sent {
            return Err(StreamError::AlreadyFinished);
        }
        Ok(self.credit > 0 && self.outbox_bytes < send_queue)
    }

    fn new(window: u32, credit: u64) -> Self {
        StreamState {
            open_waiter: None,
            peer_may_send: false,
            early: false,
            recv: RecvQueue::default(),
            recv_bytes: 0,
            recv_fin: false,
            recv_waker: None,
            granted: u64::from(window),
            received: 0,
            window,
            unacked: 0,
            epoch: None,
            prev_epoch: None,
            slow: 0,
            growth: 0,
            backlogged: false,
            shrink_due: false,
            backlog_since: Instant::now(),
            credit,
            peer_window: credit,
            presumed: 0,
            announced: true,
            send_waker: None,
            fin_sent: false,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            scheduled: false,
            error: None,
            done: false,
            orphaned: false,
            sink: None,
            direct_msg: 0,
        }
    }

    /// A stream this side opens; with `early`, it may send [`EARLY_DATA`] bytes before the
    /// answer.
    pub(crate) fn opening(window: u32, waiter: OpenWaiter, early: bool) -> Self {
        let mut s = Self::new(window, 0);
        if early {
            s.presumed = u64::from(EARLY_DATA);
            s.credit = s.presumed;
            s.announced = false;
        }
        s.open_waiter = Some(waiter);
        s
    }

    /// A stream the peer opened, not yet answered; with `early`, the peer may send up to
    /// [`EARLY_DATA`] bytes (and a FIN) before this side accepts it.
    pub(crate) fn accepted(window: u32, peer_window: u32, early: bool) -> Self {
        let mut s = Self::new(window, u64::from(peer_window));
        if early {
            s.peer_may_send = true;
            s.early = true;
            s.granted = u64::from(EARLY_DATA.min(window));
        }
        s
    }

    /// Queues a frame for the writer; true when the caller must put the stream on the ready
    /// list (it was not on it, and its OPEN is in a message).
    fn enqueue(&mut self, frame: Frame) -> bool {
        if let Frame::Data { data, .. } = &frame {
            self.outbox_bytes += data.len();
        }
        self.outbox.push_back(frame);
        self.announced && !std::mem::replace(&mut self.scheduled, true)
    }

    /// Empties the send queue (the stream failed or was abandoned); returns the DATA bytes
    /// it held, for the tunnel's send budget.
    fn drop_queued(&mut self) -> usize {
        self.outbox.clear();
        self.scheduled = false;
        std::mem::take(&mut self.outbox_bytes)
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }
}

/// What the reader does with a frame for a stream: the outcome decides map removal.
pub(crate) enum Delivery {
    Ok,
    /// DATA for a stream nobody reads any more: reset it (not a protocol error).
    Orphaned,
    /// Stream finished in both directions: drop it from the table.
    Finished,
    /// The peer broke the stream's rules: reset it.
    Violation(String),
}

pub(crate) struct StreamShared {
    pub(crate) id: u32,
    state: Mutex<StreamState>,
    /// Small sends in a row, up to [`INTERACTIVE`]; a send that is not small sets it to 0.
    /// Starts at 1, so a new stream's first send counts as interactive when it is small.
    small_sends: AtomicU8,
}

/// Small sends in a row that make a stream interactive for [`writer::Coalesce`]: one short
/// read of a bulk stream does not.
///
/// [`writer::Coalesce`]: super::writer::Coalesce
const INTERACTIVE: u8 = 2;

/// A send of at most this many bytes is small: a request or an answer more often than bulk.
const SMALL_SEND: usize = 16 * 1024;

/// DATA of at most this many bytes is written by the reader itself when it can go straight
/// to the socket ([`DirectSink`]): most often a request or an answer, which would otherwise
/// wait for the relay's task to wake. Full frames are left to the relay, which writes what
/// arrived meanwhile in one call, on whichever core it runs: one tunnel's reader making the
/// big writes of all its streams cost more CPU per byte (docs/PERFORMANCE.md, "Direct
/// writes").
const DIRECT_MAX: usize = SMALL_SEND;

/// The endpoint socket of a stream's relay, which the tunnel's reader may write DATA to
/// directly (docs/PERFORMANCE.md, "Direct writes"). Only for a relay that takes what it
/// receives with [`MuxStream::recv_batch`] and reports it with [`MuxStream::written`]: that
/// is how the reader knows nothing received is still waiting to be written.
pub trait DirectSink: Send + Sync {
    /// Writes what the socket takes now, without waiting, and returns how many bytes that
    /// was: 0 when it would wait or failed. A failure is the relay's to report: the sink
    /// keeps the error for the relay's next call on the socket. Counts what it wrote as the
    /// relay's own writes.
    fn write_now(&self, data: &[u8]) -> usize;
}

impl StreamShared {
    pub(crate) fn new(id: u32, state: StreamState) -> Self {
        StreamShared {
            id,
            state: Mutex::new(state),
            small_sends: AtomicU8::new(1),
        }
    }

    /// Records a send of `len` bytes; says whether the stream is now interactive.
    fn note_send(&self, len: usize) -> bool {
        if len > SMALL_SEND {
            self.small_sends.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.small_sends.load(Ordering::Relaxed);
        if n < INTERACTIVE {
            // Not a read-modify-write: two sends racing on one stream only blur a heuristic.
            self.small_sends.store(n + 1, Ordering::Relaxed);
        }
        n + 1 >= INTERACTIVE
    }

    /// Whether the stream's last sends were all small: requests and answers, not bulk.
    pub(crate) fn is_interactive(&self) -> bool {
        self.small_sends.load(Ordering::Relaxed) >= INTERACTIVE
    }

    /// Whether the stream's last send was not small: its frames are bulk, whatever their size.
    pub(crate) fn is_bulk(&self) -> bool {
        self.small_sends.load(Ordering::Relaxed) == 0
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// DATA from the peer, in tunnel message `msg` (numbered from 1). Never blocks: the peer's
    /// credit bounds what we hold, and a direct write ([`DirectSink`]) takes only what the
    /// socket takes at once.
    pub(crate) fn on_data(&self, mut data: Bytes, msg: u64, mux: &MuxState) -> Delivery {
        let mut st = self.lock();
        // Refused or dropped while this frame was on its way: nobody will read it.
        if st.error.is_some() || st.done {
            return Delivery::Ok;
        }
        if !st.peer_may_send {
            return Delivery::Violation("DATA before OPEN_OK".into());
        }
        if st.recv_fin {
            return Delivery::Violation("DATA after FIN".into());
        }
        if st.orphaned {
            st.done = true;
            return Delivery::Orphaned;
        }
        st.received += data.len() as u64;
        if st.early && st.received > st.granted {
            return Delivery::Violation(format!(
                "{} bytes of DATA before OPEN_OK, over the {} allowed early",
                st.received, st.granted
            ));
        }
        if st.received > st.granted {
            return Delivery::Violation(format!(
                "flow-control violation: {} bytes received, {} granted",
                st.received, st.granted
            ));
        }
        // Nothing received waits to be written (queued, or taken by the relay and not yet
        // written: the relay takes with `recv_batch`), so these bytes are next on the socket:
        // write them here rather than wake the relay to do it. Only the reader adds to the
        // queue, so it stays empty while the lock is released for the write.
        if data.len() <= DIRECT_MAX && st.recv_bytes == 0 && st.direct_msg != msg {
            if let Some(sink) = st.sink.clone() {
                st.direct_msg = msg;
                drop(st);
                let n = sink.write_now(&data).min(data.len());
                if n > 0 {
                    self.consumed(n, mux);
                }
                if n == data.len() {
                    return Delivery::Ok;
                }
                data = data.slice(n..);
                st = self.lock();
                if st.error.is_some() {
                    return Delivery::Ok;
                }
                if st.orphaned {
                    st.done = true;
                    return Delivery::Orphaned;
                }
                // Finished or abandoned meanwhile: nobody will take the rest.
                if st.done {
                    return Delivery::Ok;
                }
            }
        }
        mux.stats
            .buffered
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if st.recv_bytes == 0 {
            st.backlog_since = Instant::now();
        }
        st.recv_bytes += data.len();
        st.recv.push(&data);
        if let Some(w) = st.recv_waker.take() {
            w.wake();
        }
        Delivery::Ok
    }

    pub(crate) fn on_fin(&self) -> Delivery {
        let mut st = self.lock();
        if st.error.is_some() {
            return Delivery::Ok;
        }
        if !st.peer_may_send {
            return Delivery::Violation("FIN before OPEN_OK".into());
        }
        if st.recv_fin {
            return Delivery::Violation("second FIN".into());
        }
        st.recv_fin = true;
        if let Some(w) = st.recv_waker.take() {
            w.wake();
        }
        if st.orphaned {
            st.done = true;
            return Delivery::Finished;
        }
        if st.fin_sent {
            st.done = true;
            Delivery::Finished
        } else {
            Delivery::Ok
        }
    }

    pub(crate) fn on_window(&self, increment: u32) -> Delivery {
        let mut st = self.lock();
        st.credit += u64::from(increment);
        if st.credit > MAX_CREDIT {
            return Delivery::Violation(format!("credit above 2^31-1 ({})", st.credit));
        }
        if let Some(w) = st.send_waker.take() {
            w.wake();
        }
        Delivery::Ok
    }

    /// The peer's answer to this side's OPEN: `Ok(false)` when nobody waits for one (a
    /// duplicate, or the stream already ended), `Err` when the answer breaks the stream's rules.
    pub(crate) fn on_open_result(
        &self,
        result: Result<u32, (Reason, String)>,
        mux: &MuxState,
    ) -> Result<bool, String> {
        let mut st = self.lock();
        let Some(waiter) = st.open_waiter.take() else {
            return Ok(false);
        };
        match result {
            Ok(window) if u64::from(window) < st.presumed => {
                st.open_waiter = Some(waiter);
                Err(format!(
                    "OPEN_OK window {window} below the {} bytes of early DATA it must cover",
                    st.presumed
                ))
            }
            // The OPEN is announced before the message carrying it is sent: an answer to an
            // OPEN that never left can only be a peer guessing ids.
            Ok(_) if !st.announced => {
                st.open_waiter = Some(waiter);
                Err("OPEN_OK for an OPEN not yet sent".into())
            }
            Ok(window) => {
                // The window counts the early bytes already sent; a WINDOW that came first
                // stays added.
                st.credit = st.credit + u64::from(window) - st.presumed;
                st.presumed = 0;
                st.peer_window = u64::from(window);
                if st.credit > MAX_CREDIT {
                    st.open_waiter = Some(waiter);
                    return Err(format!("credit above 2^31-1 ({})", st.credit));
                }
                st.peer_may_send = true;
                let _ = waiter.send(Ok(()));
                if let Some(w) = st.send_waker.take() {
                    w.wake();
                }
                Ok(true)
            }
            Err((reason, message)) => {
                let _ = waiter.send(Err((reason, message.clone())));
                drop(st);
                // Early DATA still queued has nowhere to go; a sender waiting learns why.
                self.fail_with(StreamError::ResetByPeer { reason, message }, mux);
                Ok(true)
            }
        }
    }

    /// The writer put this stream's OPEN in a message. Returns whether the stream must go on
    /// the ready list now: it queued early DATA or a FIN while the OPEN waited, which the
    /// writer can then take into the same message, behind the OPEN.
    pub(crate) fn announced(&self) -> bool {
        let mut st = self.lock();
        if st.announced {
            return false;
        }
        st.announced = true;
        !st.outbox.is_empty() && !std::mem::replace(&mut st.scheduled, true)
    }

    /// Returns credit to the peer once about half the window is consumed, growing the window when
    /// the reader keeps up with a window-limited sender (PROTOCOL.md §5).
    fn consumed(&self, n: usize, mux: &MuxState) {
        let update = {
            let mut st = self.lock();
            st.unacked = st.unacked.saturating_add(n as u32);
            if st.recv_fin || st.error.is_some() || st.done || st.unacked < st.update_at() {
                return;
            }
            st.shrink_due = false;
            let cfg = &mux.cfg;
            let now = Instant::now();
            // Judge against the minimum RTT: the smoothed RTT includes the queueing that
            // bigger windows themselves cause, and growing on it feeds on itself.
            let rtt = mux.min_rtt();
            let mut inc = st.unacked;
            let whole = st.prev_epoch.map(|t| now.duration_since(t));
            let slow = (SHRINK_RTTS * rtt).max(SHRINK_SRTTS * mux.smoothed_rtt());
            st.slow = match whole {
                Some(d) if d >= slow => st.slow.saturating_add(1),
                _ => 0,
            };
            if whole.is_some_and(|d| d < GROWTH_RTTS * rtt)
                && !st.backlogged
                && st.window < cfg.max_window
            {
                let grow = st.window.min(cfg.max_window - st.window);
                let budget = &mux.window_growth;
                let before = budget.fetch_add(u64::from(grow), Ordering::AcqRel);
                if before + u64::from(grow) <= cfg.tunnel_window_budget
                    && cfg.window_budget.take(u64::from(grow)).is_ok()
                {
                    st.window += grow;
                    st.growth += u64::from(grow);
                    inc += grow;
                } else {
                    budget.fetch_sub(u64::from(grow), Ordering::AcqRel);
                }
            } else if st.growth > 0 && st.slow >= SHRINK_AFTER && inc < st.window / 2 {
                // Credit already granted is never taken back, only not returned, and this
                // update returns less than half the window, which the shrink may take: the
                // next one waits until it returns that much.
                st.shrink_due = true;
            } else if st.growth > 0 && st.slow >= SHRINK_AFTER {
                st.slow = 0;
                // The window grew when the stream was fast (the only stream on its path, a
                // burst) and now waits mostly unused: a slow reader, or one stream among
                // many. Holding less back costs it nothing and frees what it held for
                // others; it grows again when it is fast again. Credit already granted is
                // never taken back, only not returned: inc >= window / 2 >= shrink.
                let shrink = (st.window / 2).min(u32::try_from(st.growth).unwrap_or(u32::MAX));
                st.window -= shrink;
                st.growth -= u64::from(shrink);
                inc -= shrink;
                mux.window_growth
                    .fetch_sub(u64::from(shrink), Ordering::AcqRel);
                cfg.window_budget.give(u64::from(shrink));
            }
            st.backlogged = st.recv_bytes >= st.window as usize / 2
                && now.duration_since(st.backlog_since) >= GROWTH_RTTS * rtt;
            st.prev_epoch = st.epoch;
            st.epoch = Some(now);
            st.unacked = 0;
            st.granted += u64::from(inc);
            inc
        };
        if update > 0 {
            mux.push_urgent(Frame::Window {
                id: self.id,
                increment: update,
            });
        }
    }

    /// Ends the stream with an error (peer reset, violation): what it had queued is dropped.
    pub(crate) fn fail(&self, reason: Reason, message: &str, mux: &MuxState) {
        self.fail_with(
            StreamError::Reset {
                reason,
                message: message.to_owned(),
            },
            mux,
        )
    }

    pub(crate) fn fail_with(&self, err: StreamError, mux: &MuxState) {
        let scheduled = self.end(err, mux, true);
        if scheduled {
            mux.unschedule(self);
        }
    }

    /// The tunnel closed: the stream fails. Its queued frames stay for the writer when
    /// `keep_queued` (a drained close still sends a finished stream's last DATA and FIN);
    /// the writer, which is stopping, empties its ready list itself.
    pub(crate) fn fail_tunnel_closed(&self, mux: &MuxState, keep_queued: bool) {
        let err = StreamError::Reset {
            reason: Reason::TunnelLost,
            message: "tunnel closed".into(),
        };
        self.end(err, mux, !keep_queued);
    }

    /// Fails the stream; true when it is (still) on the ready list.
    fn end(&self, err: StreamError, mux: &MuxState, drop_queued: bool) -> bool {
        let mut st = self.lock();
        let scheduled = st.scheduled;
        if drop_queued {
            mux.send_budget.add_permits(st.drop_queued());
        }
        if let Some(w) = st.open_waiter.take() {
            let _ = w.send(Err((err.reason(), err.to_string())));
        }
        if st.error.is_none() {
            st.error = Some(err);
        }
        st.done = true;
        mux.stats
            .buffered
            .fetch_sub(st.recv_bytes as u64, Ordering::Relaxed);
        st.recv_bytes = 0;
        st.recv.clear();
        st.sink = None;
        st.wake_all();
        scheduled && drop_queued
    }
}

impl StreamShared {
    /// The writer's turn on this stream: its next queued frame, and whether more wait (then
    /// the writer puts it back at the end of the ready list; otherwise it leaves the list).
    pub(crate) fn next_frame(&self, send_queue: usize) -> (Option<Frame>, bool) {
        let mut st = self.lock();
        let frame = st.outbox.pop_front();
        if let Some(Frame::Data { data, .. }) = &frame {
            st.outbox_bytes -= data.len();
            if st.outbox_bytes < send_queue {
                if let Some(w) = st.send_waker.take() {
                    w.wake();
                }
            }
        }
        let more = !st.outbox.is_empty();
        st.scheduled = more;
        (frame, more)
    }
}

/// Credit a send took and has not queued yet: given back if the send is dropped while it
/// waits for room in the tunnel's send budget, so credit taken is always credit sent.
struct Refund<'a> {
    shared: &'a StreamShared,
    credit: u64,
}

impl Drop for Refund<'_> {
    fn drop(&mut self) {
        if self.credit > 0 {
            let mut st = self.shared.lock();
            st.credit += self.credit;
            if let Some(w) = st.send_waker.take() {
                w.wake();
            }
        }
    }
}

/// Why a send found the tunnel closed: the stream's own error, which the close set.
fn closed_error(st: &StreamState) -> StreamError {
    st.error.clone().unwrap_or(StreamError::Reset {
        reason: Reason::TunnelLost,
        message: "tunnel closed".into(),
    })
}

/// An open stream. Send and receive take `&self`, so one task can drive both directions.
///
/// Dropping a stream that has not finished both directions resets it on the peer.
pub struct MuxStream {
    pub(super) shared: Arc<StreamShared>,
    pub(super) mux: Arc<MuxState>,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl MuxStream {
    pub(crate) fn new(shared: Arc<StreamShared>, mux: Arc<MuxState>) -> Self {
        MuxStream { shared, mux }
    }

    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Current receive window (grows with auto-tuning).
    pub fn window(&self) -> u32 {
        self.shared.lock().window
    }

    /// Forgets the stream without telling the peer (it already knows: open failed).
    pub(crate) fn forget(&self) {
        self.shared.lock().done = true;
        self.mux.remove_stream(self.shared.id);
    }

    /// Sends `data` (1..=MAX_DATA bytes) as one DATA frame if the peer's credit and the
    /// stream's send queue allow it right now; otherwise sends nothing and returns
    /// `Ok(false)`. For datagrams, where dropping beats waiting.
    pub fn try_send(&self, data: Bytes) -> Result<bool, StreamError> {
        if data.is_empty() || data.len() > MAX_DATA {
            return Ok(false);
        }
        self.shared.note_send(data.len());
        let schedule = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.fin_sent {
                return Err(StreamError::AlreadyFinished);
            }
            if st.credit < data.len() as u64
                || st.outbox_bytes + data.len() > self.mux.cfg.send_queue
            {
                return Ok(false);
            }
            // At most MAX_DATA: fits in u32.
            match self.mux.send_budget.try_acquire_many(data.len() as u32) {
                Ok(room) => room.forget(),
                Err(tokio::sync::TryAcquireError::NoPermits) => return Ok(false),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(closed_error(&st)),
            }
            st.credit -= data.len() as u64;
            st.enqueue(Frame::Data {
                id: self.shared.id,
                data,
            })
        };
        if schedule {
            self.mux.schedule(&self.shared);
        }
        Ok(true)
    }

    /// Waits until DATA may be queued (credit, room in the stream's send queue) and returns
    /// the credit: a relay that reads no more than it may send leaves what the peer's window
    /// holds back in the socket, where TCP's own flow control holds it, not in a buffer per
    /// stream (docs/PERFORMANCE.md).
    pub async fn writable(&self) -> Result<usize, StreamError> {
        let send_queue = self.mux.cfg.send_queue;
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            match st.may_queue(send_queue) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(true) => Poll::Ready(Ok(usize::try_from(st.credit).unwrap_or(usize::MAX))),
                Ok(false) => {
                    st.send_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Sends bytes, waiting for credit and room in the stream's send queue; splits into DATA
    /// frames as needed, and queues as many as credit and queue allow before sending, so they
    /// can share a message. Poll it to completion or drop it: it may be sending the tunnel's
    /// next message. Dropped part way, some of `data` may still go out (what was queued).
    pub async fn send(&self, data: Bytes) -> Result<(), StreamError> {
        let read = data.len();
        self.send_read(data, read).await
    }

    /// [`send`](Self::send) for `data` that `read` bytes from a socket became (compressed):
    /// the read's size, not the payload's, says whether the stream is interactive or bulk,
    /// which decides whether its sends wait to share messages ([`writer::Coalesce`]).
    ///
    /// A frame that credit would cut short waits for the peer's next WINDOW instead, while
    /// that is certain to come, so a bulk stream does not send a small frame of what is left
    /// of its credit before every update (TCP's silly window): the part the credit allowed
    /// goes with the rest of its frame, one update later. The update is certain when the
    /// credit is at most half the window the peer announced, below which its window never
    /// shrinks: its receiver returns credit by the time half its window is consumed
    /// (PROTOCOL.md §5). Frames are at most [`MAX_DATA`], so a window of twice that is
    /// enough. That needs every byte of credit taken to be sent: a send dropped before it
    /// queues what it took gives the credit back.
    ///
    /// [`writer::Coalesce`]: super::writer::Coalesce
    pub async fn send_read(&self, mut data: Bytes, read: usize) -> Result<(), StreamError> {
        let id = self.shared.id;
        let send_queue = self.mux.cfg.send_queue;
        if data.is_empty() {
            return Ok(());
        }
        let interactive = self.shared.note_send(read);
        // A read of up to a frame goes as one; more (a bulk stream's) in chunks, two to a
        // message ([`DATA_CHUNK`]).
        let piece = if data.len() > MAX_DATA {
            DATA_CHUNK
        } else {
            MAX_DATA
        };
        // Frames this call queued that nobody has been asked to send yet.
        let mut unsent = false;
        while !data.is_empty() {
            let n = poll_fn(|cx| {
                let mut st = self.shared.lock();
                let cut = (st.credit as usize) < data.len().min(piece)
                    && st.peer_window >= 2 * MAX_DATA as u64;
                if !st.may_queue(send_queue)? || cut {
                    if unsent {
                        // Send what is queued before waiting for what it frees.
                        return Poll::Ready(Ok(0));
                    }
                    st.send_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let n = (st.credit as usize).min(data.len()).min(piece);
                st.credit -= n as u64;
                Poll::Ready(Ok(n))
            })
            .await?;
            if n == 0 {
                super::writer::send_now(&self.mux).await;
                unsent = false;
                continue;
            }
            let mut refund = Refund {
                shared: &self.shared,
                credit: n as u64,
            };
            // Room in the tunnel's send budget too: all streams of a tunnel whose peer stops
            // reading hold at most `tunnel_send_queue`. At most MAX_DATA: fits in u32. The
            // budget comes back as queued frames are sent: ours first, before waiting.
            let room = match self.mux.send_budget.try_acquire_many(n as u32) {
                Ok(room) => Ok(room),
                Err(_) => {
                    if std::mem::take(&mut unsent) {
                        super::writer::send_now(&self.mux).await;
                    }
                    self.mux.send_budget.acquire_many(n as u32).await
                }
            };
            match room {
                Ok(room) => room.forget(),
                Err(_) => {
                    // The lock goes before `refund` takes it.
                    let e = closed_error(&self.shared.lock());
                    return Err(e);
                }
            }
            let schedule = {
                let mut st = self.shared.lock();
                if let Some(e) = &st.error {
                    let e = e.clone();
                    drop(st);
                    self.mux.send_budget.add_permits(n);
                    return Err(e);
                }
                refund.credit = 0;
                st.enqueue(Frame::Data {
                    id,
                    data: data.split_to(n),
                })
            };
            if schedule {
                self.mux.schedule_quietly(&self.shared);
            }
            unsent = true;
        }
        if unsent {
            // Sent from this task if the outbox is free (the bytes stay on this worker), or
            // left to whoever holds it.
            if interactive {
                super::writer::send_small(&self.mux).await;
            } else {
                super::writer::send_now(&self.mux).await;
            }
        }
        Ok(())
    }

    /// Queues a frame that must follow everything this stream queued before (OPEN_OK).
    pub(super) fn queue_frame(&self, frame: Frame) -> Result<(), StreamError> {
        let schedule = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            st.enqueue(frame)
        };
        if schedule {
            self.mux.schedule(&self.shared);
        }
        Ok(())
    }

    /// Half-closes the sending direction (FIN, after the queued DATA); receiving continues.
    pub async fn finish(&self) -> Result<(), StreamError> {
        let schedule = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.fin_sent {
                return Ok(());
            }
            st.fin_sent = true;
            st.enqueue(Frame::Fin { id: self.shared.id })
        };
        if schedule {
            self.mux.schedule(&self.shared);
        }
        let finished = {
            let mut st = self.shared.lock();
            let f = st.recv_fin && st.error.is_none();
            if f {
                st.done = true;
            }
            f
        };
        if finished {
            self.mux.remove_stream(self.shared.id);
        }
        Ok(())
    }

    /// Next chunk of data; `Ok(None)` once the peer finished sending.
    pub async fn recv(&self) -> Result<Option<Bytes>, StreamError> {
        let chunk = self
            .wait_recv(|st| {
                let b = st.recv.pop()?;
                st.recv_bytes -= b.len();
                Some(b)
            })
            .await?;
        if let Some(b) = &chunk {
            self.mux
                .stats
                .buffered
                .fetch_sub(b.len() as u64, Ordering::Relaxed);
            self.consumed(b.len());
        }
        Ok(chunk)
    }

    /// Takes the chunks received so far, at least one, waiting for one if none is queued:
    /// `Ok(false)` once the peer finished and nothing is left. For a relay that writes them to
    /// its socket in one call: each write wakes the reader on the other end, so fewer and
    /// larger writes cost both sides less (docs/PERFORMANCE.md, "Wake-ups of the endpoint").
    ///
    /// Unlike [`recv`](Self::recv), what this hands out still counts as buffered, and against
    /// the window, until the caller says it is gone ([`written`](Self::written)): a stream
    /// holds at most a window however large the batch, and `/metrics` shows it.
    ///
    /// At most `max` chunks at a time: a peer sending 1-byte frames could otherwise make the
    /// caller's list as long as the window, and keep it that long.
    pub async fn recv_batch(&self, out: &mut Vec<Bytes>, max: usize) -> Result<bool, StreamError> {
        let taken = self
            .wait_recv(|st| (st.recv.take(out, max) > 0).then_some(()))
            .await?;
        Ok(taken.is_some())
    }

    /// Waits until `take` finds something received; `Ok(None)` once the peer finished and
    /// `take` found nothing.
    async fn wait_recv<T>(
        &self,
        mut take: impl FnMut(&mut StreamState) -> Option<T>,
    ) -> Result<Option<T>, StreamError> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(t) = take(&mut st) {
                return Poll::Ready(Ok(Some(t)));
            }
            if let Some(e) = &st.error {
                return Poll::Ready(Err(e.clone()));
            }
            if st.recv_fin {
                return Poll::Ready(Ok(None));
            }
            st.recv_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// `n` bytes from [`recv_batch`](Self::recv_batch) have left: they stop counting as
    /// buffered, and their credit may go back to the peer.
    pub fn written(&self, n: usize) {
        let gone = {
            let mut st = self.shared.lock();
            // A failed stream stopped counting them already.
            let gone = n.min(st.recv_bytes);
            st.recv_bytes -= gone;
            gone
        };
        self.mux
            .stats
            .buffered
            .fetch_sub(gone as u64, Ordering::Relaxed);
        self.consumed(n);
    }

    fn consumed(&self, n: usize) {
        self.shared.consumed(n, &self.mux);
    }

    /// Makes the reader write small DATA straight to `sink` while nothing received waits to
    /// be written; `None` stops it (before the socket behind it closes). The stream must then
    /// be read with [`recv_batch`](Self::recv_batch) and [`written`](Self::written), never
    /// [`recv`](Self::recv), which stops counting a chunk before the caller writes it: a
    /// direct write could overtake it.
    pub fn set_sink(&self, sink: Option<Arc<dyn DirectSink>>) {
        let mut st = self.shared.lock();
        st.sink = if st.error.is_some() { None } else { sink };
    }

    /// Resets the stream on both sides with a reason.
    pub fn reset(&self, reason: Reason, message: &str) {
        let send = {
            let st = self.shared.lock();
            !st.done
        };
        self.shared.fail(reason, message, &self.mux);
        self.mux.remove_stream(self.shared.id);
        // Unlike a drop, no OPEN is taken back: a stream is reset once it has an answer (the
        // relays reset only after the OPEN_OK), so its OPEN has left.
        if send {
            self.mux.push_urgent(Frame::Reset {
                id: self.shared.id,
                reason,
                message: message.to_owned(),
            });
        }
    }

    /// Before OPEN_OK is queued: fails if the stream already failed, else lets the peer send
    /// (set first, so the peer's first DATA can never arrive earlier) its whole window, of
    /// which early DATA took part.
    pub(super) fn accepting(&self) -> Result<(), StreamError> {
        let mut st = self.shared.lock();
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        st.peer_may_send = true;
        st.early = false;
        st.granted = u64::from(st.window);
        Ok(())
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let (done, orphan, growth, buffered) = {
            let mut st = self.shared.lock();
            let g = std::mem::take(&mut st.growth);
            let b = std::mem::take(&mut st.recv_bytes);
            st.recv.clear();
            // The socket behind it must close with its relay, whatever ended the relay.
            st.sink = None;
            let orphan = !st.done && st.fin_sent && b == 0 && st.error.is_none();
            st.orphaned = orphan;
            let was_done = st.done;
            // DATA the reader is delivering right now must not land in a queue nobody reads.
            st.done |= !orphan;
            (was_done, orphan, g, b)
        };
        self.mux.window_growth.fetch_sub(growth, Ordering::AcqRel);
        self.mux.cfg.window_budget.give(growth);
        self.mux
            .stats
            .buffered
            .fetch_sub(buffered as u64, Ordering::Relaxed);
        if orphan {
            // Stays in the table until the peer's FIN (or DATA, answered with RESET).
            return;
        }
        self.mux.remove_stream(self.shared.id);
        if !done {
            let (freed, scheduled) = {
                // Abandoned: what it still had queued would only be thrown away by the peer.
                let mut st = self.shared.lock();
                let scheduled = st.scheduled;
                (st.drop_queued(), scheduled)
            };
            self.mux.send_budget.add_permits(freed);
            if scheduled {
                self.mux.unschedule(&self.shared);
            }
            // An OPEN still queued is taken back instead: the peer never hears of the stream.
            // Callers opening and dropping connections while the tunnel is slow would
            // otherwise fill the control queue with OPENs and RESETs, whose overflow closes
            // the tunnel.
            let taken_back = self.mux.unqueue_open(self.shared.id);
            if !taken_back && !self.mux.closed.is_cancelled() {
                // Abortive, like a TCP close with data unread: it may overtake queued DATA.
                self.mux.push_urgent(Frame::Reset {
                    id: self.shared.id,
                    reason: Reason::Reset,
                    message: "stream dropped".into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bulk stream's one short read does not make it interactive; two small sends in a row
    /// do, and one large send makes it bulk again.
    #[test]
    fn a_stream_is_interactive_after_two_small_sends_in_a_row() {
        let s = StreamShared::new(1, StreamState::accepted(65536, 65536, false));
        // A new stream's first small send counts.
        assert!(!s.is_interactive() && !s.is_bulk());
        assert!(s.note_send(SMALL_SEND));
        assert!(!s.note_send(SMALL_SEND + 1));
        assert!(s.is_bulk() && !s.is_interactive());
        assert!(!s.note_send(100), "one short read after bulk");
        assert!(!s.is_bulk() && !s.is_interactive());
        assert!(s.note_send(100));
        assert!(s.is_interactive() && !s.is_bulk());
    }
}
