//! The tunnel's sending end: batches of frames into messages, sent by whoever holds it.
//!
//! The transport's sink and the batch being built sit behind one async lock, the
//! [`Outbox`]. The writer task holds it whenever it has work; a stream that has just queued
//! DATA takes it when it is free and sends one batch itself ([`send_now`]). The relay that
//! read the bytes then also sends them, on the same worker thread, with no other task woken.
//! Handing every chunk to the writer task instead cost a wake-up per chunk, and the two
//! tasks kept moving between tokio's workers (docs/PERFORMANCE.md, "Context switches").
//!
//! A batch is built the same way by either: control frames first, then one frame per ready
//! stream in turn, up to [`BATCH_BYTES`]; so who sends does not change the order or the
//! fairness between streams.
//!
//! The rule that keeps frames from being stranded: whoever queues work and finds the outbox
//! held leaves it to the holder, and a holder looks for work again after letting go.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Sink;

use super::{MuxState, BATCH_BYTES};
use crate::proto::{encode_frame, Frame, HEADER_LEN, MAX_DATA};

/// The transport's sending half, type-erased so the mux state need not be generic.
pub(crate) type BoxSink = Pin<Box<dyn Sink<Bytes, Error = io::Error> + Send>>;

/// How long a closing tunnel's sender may take to write what explains the close (and, after
/// a drain, the streams' last frames).
const CLOSING_GRACE: Duration = Duration::from_secs(2);

/// Room in the batch buffer when a batch starts: the most a batch of stream frames can reach
/// (it stops once past [`BATCH_BYTES`], so by at most one DATA frame). A buffer that grew
/// while a batch was in it would first move the frames already encoded: with room for only
/// one chunk left after a message was split off, that was a copy of half of every other
/// message (docs/PERFORMANCE.md, "The batch buffer's room").
const BATCH_ROOM: usize = BATCH_BYTES + MAX_DATA + HEADER_LEN;

/// The batch under construction and the sink it goes to.
pub(crate) struct Outbox {
    /// `None` once the transport failed or was closed: nothing more is sent.
    sink: Option<BoxSink>,
    buf: BytesMut,
    /// Frames in `buf`, for the frames-out counter.
    count: u64,
    /// A message was handed to the sink and not yet flushed: a sender cancelled while
    /// flushing leaves that to the writer task.
    unflushed: bool,
}

impl Outbox {
    pub(crate) fn new(sink: BoxSink) -> Self {
        Outbox {
            sink: Some(sink),
            buf: BytesMut::with_capacity(BATCH_ROOM),
            count: 0,
            unflushed: false,
        }
    }
}

/// Whether an interactive stream's small send first lets the other tasks ready on its worker
/// run, learned from what the tunnel's messages carry.
///
/// A poll of the sockets often wakes several relays of one tunnel at once (many clients,
/// each with a small request). Each sending its own frame costs a message: a TLS record, a
/// write, and a wake-up of the peer's reader. Waiting until the tasks woken with it have run
/// lets the first of them send every frame in one message (docs/PERFORMANCE.md, "Batching
/// across streams"). The wait has costs, so it is only taken while it pays:
/// - beside bulk streams the tasks ready first are bulk relays, each reading and sending up
///   to a batch, so while messages carry bulk frames no send waits;
/// - with nobody else ready a wait costs a poll of the sockets and a wake-up of a second
///   tokio worker, so waits run out a few sends after the last message that carried several
///   interactive streams' frames, and otherwise only one send in [`COALESCE_PROBE`] waits,
///   to notice streams getting busy.
#[derive(Default)]
pub(crate) struct Coalesce {
    /// Interactive sends left that don't wait at all: set to [`BULK_QUIET`] by every message
    /// with a bulk stream's DATA in it; each interactive send takes one.
    bulk_quiet: AtomicU32,
    /// Waits left, once `bulk_quiet` is 0: interactive sends wait while it is above 0, each
    /// taking one. Set to [`COALESCE_SCORE`] when a message carried several interactive
    /// streams' frames, so waiting stops at most that many sends after the last sign that it
    /// pays.
    score: AtomicU32,
    /// Interactive sends with `bulk_quiet` and `score` at 0: every [`COALESCE_PROBE`]th waits
    /// anyway (2^32 is a multiple of it, so wrapping keeps the rhythm).
    sends: AtomicU32,
}

const COALESCE_SCORE: u32 = 8;
const COALESCE_PROBE: u32 = 64;
const BULK_QUIET: u32 = 64;

impl Coalesce {
    fn should_wait(&self) -> bool {
        let take = |n: u32| n.checked_sub(1);
        if self
            .bulk_quiet
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take)
            .is_ok()
        {
            return false;
        }
        if self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take)
            .is_ok()
        {
            return true;
        }
        self.sends.fetch_add(1, Ordering::Relaxed) % COALESCE_PROBE == 0
    }

    /// What a message carried: how many interactive streams had frames in it, and whether a
    /// bulk stream's DATA went too. Stores only on a change: every message passes here, and
    /// senders on both workers read these.
    fn learn(&self, carried: Carried) {
        // Other streams' frames were queued beside one: streams are sending at once.
        if carried.interactive >= 2 && self.score.load(Ordering::Relaxed) != COALESCE_SCORE {
            self.score.store(COALESCE_SCORE, Ordering::Relaxed);
        }
        if carried.bulk && self.bulk_quiet.load(Ordering::Relaxed) != BULK_QUIET {
            self.bulk_quiet.store(BULK_QUIET, Ordering::Relaxed);
        }
    }
}

/// What [`take_stream_frames`] put in a message, for [`Coalesce`].
#[derive(Clone, Copy, Default)]
struct Carried {
    /// Interactive streams (whose last sends were small) with a frame in the message,
    /// counted once each.
    interactive: u64,
    /// DATA of a bulk stream (whose last send was not small).
    bulk: bool,
}

/// [`send_now`] for an interactive stream that just queued a small frame: while streams are
/// seen sending at once ([`Coalesce`]), first lets the tasks ready on this worker run, so the
/// frames they queue go in the same message.
pub(crate) async fn send_small(shared: &MuxState) {
    if shared.coalesce.should_wait() {
        // Cancelled while waiting: the frame is queued and nobody was asked to send it.
        let mut pending = WakeOnDrop {
            shared,
            armed: true,
        };
        tokio::task::yield_now().await;
        pending.armed = false;
    }
    send_now(shared).await;
}

/// Wakes the writer task if dropped while armed.
struct WakeOnDrop<'a> {
    shared: &'a MuxState,
    armed: bool,
}

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.wake_writer.notify_one();
        }
    }
}

/// Called by a stream that just queued frames: sends one batch now if nobody else is
/// sending. At most one batch, so a sender's own socket is not starved by other streams'
/// work; what is left goes to the writer task.
pub(crate) async fn send_now(shared: &MuxState) {
    // Held by someone: they look again after letting go, and will find these frames.
    let Ok(mut out) = shared.outbox.try_lock() else {
        return;
    };
    // Runs when this ends, or just before `out` goes if this is cancelled: the writer task
    // it may wake waits for the lock.
    let mut release = Release {
        shared,
        finished: false,
    };
    if !shared.closed.is_cancelled() {
        if let Err(e) = one_batch(shared, &mut out, Holder::Sender).await {
            failed(shared, &mut out, &e);
        }
    }
    release.finished = true;
    drop(out);
}

/// After a sender lets the outbox go: work left (or a flush a cancelled sender didn't
/// finish) goes to the writer task.
struct Release<'a> {
    shared: &'a MuxState,
    finished: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if !self.finished || self.shared.has_work() {
            self.shared.wake_writer.notify_one();
        }
    }
}

/// Who holds the outbox, which decides what a close does to a send under way.
#[derive(Clone, Copy)]
enum Holder {
    /// The writer task: the send under way gets [`CLOSING_GRACE`], then the closing flush.
    Writer,
    /// A stream's sender: lets go at once, so the writer's closing flush has the outbox.
    Sender,
}

/// Builds and sends one batch; returns whether it did (`false`: nothing was queued, or the
/// tunnel closed).
///
/// Cancellation safe: frames leave the queues only once the sink has room, and the message
/// is handed to it in the same step; a flush cut short is finished by the next holder.
async fn one_batch(shared: &MuxState, out: &mut Outbox, holder: Holder) -> io::Result<bool> {
    let Outbox {
        sink,
        buf,
        count,
        unflushed,
    } = out;
    let Some(sink) = sink.as_mut() else {
        return Ok(false);
    };
    if step(shared, holder, poll_fn(|cx| sink.as_mut().poll_ready(cx)))
        .await?
        .is_none()
        || shared.closed.is_cancelled()
    {
        // Closed while waiting: what is still sent is the writer's closing flush's to choose.
        return Ok(false);
    }
    drain_urgent(shared, buf, count);
    let carried = take_stream_frames(shared, buf, count);
    shared.coalesce.learn(carried);
    if buf.is_empty() {
        if *unflushed
            && step(shared, holder, poll_fn(|cx| sink.as_mut().poll_flush(cx)))
                .await?
                .is_some()
        {
            *unflushed = false;
        }
        return Ok(false);
    }
    shared
        .stats
        .frames_out
        .fetch_add(std::mem::take(count), Ordering::Relaxed);
    sink.as_mut().start_send(buf.split().freeze())?;
    shared.last_tx_ms.store(shared.now_ms(), Ordering::Relaxed);
    *unflushed = true;
    if step(shared, holder, poll_fn(|cx| sink.as_mut().poll_flush(cx)))
        .await?
        .is_some()
    {
        *unflushed = false;
    }
    // Once the sink has let go of the message just sent (tungstenite copies it), this takes
    // the same allocation back without copying anything: the buffer is empty.
    if buf.capacity() < BATCH_ROOM {
        buf.reserve(BATCH_ROOM);
    }
    Ok(true)
}

/// Runs a step of sending until it completes, or the tunnel closes: then a sender lets go
/// (`None`; the sink keeps its state, so the step can be taken up again), and the writer
/// task gives it at most [`CLOSING_GRACE`], since a peer that stops reading must not keep a
/// closed tunnel's writer, and all it holds, forever.
async fn step<T>(
    shared: &MuxState,
    holder: Holder,
    work: impl Future<Output = io::Result<T>>,
) -> io::Result<Option<T>> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r.map(Some),
        _ = shared.closed.cancelled() => match holder {
            Holder::Sender => Ok(None),
            Holder::Writer => match tokio::time::timeout(CLOSING_GRACE, &mut work).await {
                Ok(r) => r.map(Some),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")),
            },
        },
    }
}

/// The transport failed: the tunnel closes and nothing more is sent on it.
fn failed(shared: &MuxState, out: &mut Outbox, e: &io::Error) {
    shared.close(super::close::write_failed(shared.cfg.role, e));
    out.sink = None;
    shared.clear_ready();
}

/// The writer task: sends whatever senders left queued (control frames, and stream frames
/// queued while the outbox was held), until the tunnel closes; then the closing flush.
pub(crate) async fn writer_loop(shared: Arc<MuxState>) {
    // However the writer ends, a `close_flushed` waiting on it learns.
    let _flushed = shared.flushed.clone().drop_guard();
    loop {
        if shared.closed.is_cancelled() {
            break;
        }
        {
            let mut out = shared.outbox.lock().await;
            loop {
                match one_batch(&shared, &mut out, Holder::Writer).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        failed(&shared, &mut out, &e);
                        return;
                    }
                }
            }
            if out.sink.is_none() {
                return;
            }
        }
        // Let go: a sender that found the outbox held left its frames for this look.
        if shared.has_work() {
            continue;
        }
        // A notification sent since the queues were looked at is kept as a permit, so this
        // never sleeps past work.
        tokio::select! {
            biased;
            _ = shared.closed.cancelled() => break,
            _ = shared.wake_writer.notified() => {}
        }
    }
    // Closing: flush what explains the close (GO_AWAY, resets) and, after a drain, the stream
    // frames already queued — a finished stream's last DATA and FIN (a drain closes as soon as
    // the last stream is done) — in batches the peer accepts, then close the transport; all
    // bounded in time.
    let graceful = shared.graceful.load(Ordering::Acquire);
    // Senders let go of the outbox as soon as the tunnel closes: this wait is short.
    let sink = match tokio::time::timeout(CLOSING_GRACE, shared.outbox.lock()).await {
        Ok(mut out) => {
            let sink = out.sink.take();
            sink.map(|s| (s, out))
        }
        Err(_) => None,
    };
    if let Some((mut sink, mut out)) = sink {
        let Outbox { buf, count, .. } = &mut *out;
        let _ = tokio::time::timeout(CLOSING_GRACE, async {
            loop {
                drain_urgent(&shared, buf, count);
                if graceful {
                    take_stream_frames(&shared, buf, count);
                }
                if buf.is_empty() {
                    break;
                }
                poll_fn(|cx| sink.as_mut().poll_ready(cx)).await?;
                sink.as_mut().start_send(buf.split().freeze())?;
                poll_fn(|cx| sink.as_mut().poll_flush(cx)).await?;
            }
            poll_fn(|cx| sink.as_mut().poll_close(cx)).await
        })
        .await;
    }
    // The transport was taken out above and is dropped by now; nothing more is sent.
    shared.clear_ready();
}

/// Fills `buf` up to a batch from the streams' send queues: one frame per ready stream per
/// turn, round robin, so every stream with something to send gets a turn within one pass.
/// Says what went in, for [`Coalesce`].
fn take_stream_frames(shared: &MuxState, buf: &mut BytesMut, count: &mut u64) -> Carried {
    // Streams are counted in the first turn: those ready when it starts, each popped once.
    let mut turn: Option<usize> = None;
    let mut carried = Carried::default();
    while buf.len() < BATCH_BYTES {
        let (stream, counting) = {
            let mut ready = shared.lock_ready();
            let Some(stream) = ready.pop_front() else {
                break;
            };
            let left = turn.get_or_insert(ready.len() + 1);
            let counting = *left > 0;
            *left = left.saturating_sub(1);
            (stream, counting)
        };
        let (frame, more) = stream.next_frame(shared.cfg.send_queue);
        if let Some(f) = frame {
            if let Frame::Data { data, .. } = &f {
                shared.send_budget.add_permits(data.len());
                // By the stream's sends, not the frame: a bulk stream's frames are small
                // when compressed well or when the peer grants little credit.
                carried.bulk |= stream.is_bulk();
            }
            encode_frame(&f, buf);
            *count += 1;
            carried.interactive += u64::from(counting && stream.is_interactive());
        }
        if more {
            shared.lock_ready().push_back(stream);
        }
    }
    carried
}

/// Moves queued control frames into `buf`, at most one batch: a burst of control frames (logs,
/// resets, a CONFIG) is spread over several messages so none exceeds what the peer accepts.
///
/// The streams whose OPEN went in are told (`StreamShared::announced`), after the queue's
/// lock is released: an early open's DATA and FIN are not scheduled before its OPEN is in a
/// message. Those already queued go on the ready list here, so [`take_stream_frames`] can
/// put them in this message, behind the OPEN: usually a caller's first request then costs
/// the tunnel one message, not two.
fn drain_urgent(shared: &MuxState, buf: &mut BytesMut, count: &mut u64) {
    let mut opened = Vec::new();
    {
        let mut q = shared.urgent.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(f) = q.front() {
            if !buf.is_empty() && buf.len() + f.encoded_len() > BATCH_BYTES {
                // The rest goes in the next message; whoever holds the outbox comes back.
                break;
            }
            if let Some(f) = q.pop_front() {
                match &f {
                    Frame::Log(_) => {
                        shared.queued_logs.fetch_sub(1, Ordering::Relaxed);
                    }
                    Frame::Open { id, .. } => {
                        shared.last_open_sent.store(*id, Ordering::Relaxed);
                        opened.push(*id);
                    }
                    _ => {}
                }
                encode_frame(&f, buf);
                *count += 1;
            }
        }
    }
    for id in opened {
        let stream = shared.lock_streams().map.get(&id).cloned();
        if let Some(s) = stream {
            if s.announced() {
                shared.lock_ready().push_back(s);
            }
        }
    }
}
