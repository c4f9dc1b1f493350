//! The mux's reader (decodes messages, dispatches frames) and keepalive tasks; the sending
//! end is in [`super::writer`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use super::incoming::Incoming;
use super::stream::{Delivery, MuxStream, StreamShared, StreamState};
use super::{MuxState, Role};
use crate::proto::{decode_message, Frame, OpenMeta, Reason};

pub(crate) struct ReaderSinks {
    pub incoming: mpsc::Sender<Incoming>,
    pub config: watch::Sender<Option<Bytes>>,
    pub logs: mpsc::Sender<Bytes>,
}

pub(crate) async fn reader_loop<R>(shared: Arc<MuxState>, mut reader: R, sinks: ReaderSinks)
where
    R: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    // Numbers the messages, for the one direct write per stream and message (`on_data`).
    let mut msg_no = 0u64;
    loop {
        let msg = tokio::select! {
            m = reader.next() => m,
            _ = shared.closed.cancelled() => return,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                shared.close(shared.ended(super::close::read_failed(shared.cfg.role, &e)));
                return;
            }
            None => {
                shared.close(shared.ended(super::close::ended(shared.cfg.role)));
                return;
            }
        };
        shared.last_rx_ms.store(shared.now_ms(), Ordering::Relaxed);
        msg_no += 1;
        // Each frame is dispatched as it is decoded: a message of 2 MiB holds up to 200,000
        // frames, and a list of them would be memory the peer chooses. After a tunnel-level
        // error the rest is decoded and dropped, not dispatched.
        let (mut count, mut failed) = (0u64, None);
        let decoded = decode_message(&msg, |f| {
            count += 1;
            if failed.is_none() {
                failed = dispatch(&shared, f, msg_no, &sinks).err();
            }
        });
        shared.stats.frames_in.fetch_add(count, Ordering::Relaxed);
        if let Some(e) = failed {
            shared.protocol_error(e);
            return;
        }
        if let Err(e) = decoded {
            shared.protocol_error(e.to_string());
            return;
        }
    }
}

pub(super) fn is_local(role: Role, id: u32) -> bool {
    match role {
        Role::Gateway => id % 2 == 1,
        Role::Client => id % 2 == 0,
    }
}

/// Handles one frame of message `msg`. `Err` is a tunnel-level protocol error.
fn dispatch(
    shared: &Arc<MuxState>,
    frame: Frame,
    msg: u64,
    sinks: &ReaderSinks,
) -> Result<(), String> {
    let role = shared.cfg.role;
    match frame {
        Frame::Ping(v) => {
            shared.push_urgent(Frame::Pong(v));
            Ok(())
        }
        Frame::Pong(v) => {
            let sample = shared.now_us().saturating_sub(v).max(1);
            let old = shared.rtt_us.load(Ordering::Relaxed);
            let srtt = if old == 0 {
                sample
            } else {
                (old * 7 + sample) / 8
            };
            shared.rtt_us.store(srtt, Ordering::Relaxed);
            let min = shared.min_rtt_us.load(Ordering::Relaxed);
            if min == 0 || sample < min {
                shared.min_rtt_us.store(sample, Ordering::Relaxed);
            }
            Ok(())
        }
        Frame::GoAway { reason, message } => {
            tracing::info!(%reason, message = %crate::telemetry::clean(&message, 256), "peer sent go-away");
            shared.heard_goodbye(reason, message);
            Ok(())
        }
        // Both are kept after the message is gone, so they are copied out of it: a slice
        // would keep the whole message (up to 2 MiB) alive for each queued line.
        Frame::Config(payload) if role == Role::Client => {
            sinks
                .config
                .send_replace(Some(Bytes::copy_from_slice(&payload)));
            Ok(())
        }
        Frame::Log(payload) if role == Role::Gateway => {
            // Logs are best effort: a slow consumer loses lines, never memory.
            if let Ok(room) = sinks.logs.try_reserve() {
                room.send(Bytes::copy_from_slice(&payload));
            }
            Ok(())
        }
        Frame::Hello(_) | Frame::Welcome(_) | Frame::Config(_) | Frame::Log(_) => {
            Err(format!("unexpected {} frame", frame.name()))
        }
        Frame::Open { id, window, meta } => on_open(shared, id, window, meta, sinks),
        Frame::OpenOk { id, window } => {
            if !is_local(role, id) {
                return Err(format!("OPEN_OK for peer stream {id}"));
            }
            match find(shared, id)? {
                Some(s) => match s.on_open_result(Ok(window), shared) {
                    Ok(true) => {}
                    Ok(false) => return Err(format!("duplicate OPEN_OK for stream {id}")),
                    Err(what) => violation(shared, &s, what),
                },
                // We gave up on it while the peer was opening: tell it.
                None => shared.push_urgent(Frame::Reset {
                    id,
                    reason: Reason::Reset,
                    message: "opener went away".into(),
                }),
            }
            Ok(())
        }
        Frame::OpenErr {
            id,
            reason,
            message,
        } => {
            if !is_local(role, id) {
                return Err(format!("OPEN_ERR for peer stream {id}"));
            }
            match find(shared, id)? {
                Some(s) if s.on_open_result(Err((reason, message)), shared) == Ok(true) => {
                    shared.remove_stream(id)
                }
                // Refusing a stream it already accepted: fail it, so nothing waits on it.
                Some(s) => violation(shared, &s, "OPEN_ERR after OPEN_OK".into()),
                None => {}
            }
            Ok(())
        }
        Frame::Reset {
            id,
            reason,
            message,
        } => {
            if let Some(s) = find(shared, id)? {
                // Through `remove_stream`, which gives the stream's window back to the
                // process's budget: a peer opening and resetting streams must not use it up.
                shared.remove_stream(id);
                s.fail_with(super::StreamError::ResetByPeer { reason, message }, shared);
            }
            Ok(())
        }
        Frame::Data { id, data } => with_stream(shared, id, |s| s.on_data(data, msg, shared)),
        Frame::Fin { id } => with_stream(shared, id, |s| s.on_fin()),
        Frame::Window { id, increment } => with_stream(shared, id, |s| s.on_window(increment)),
    }
}

/// The stream a frame is for; `None` for one that already ended (its frames may have been in
/// flight). An id neither side ever opened is a tunnel protocol error: ours not yet handed
/// out, or the peer's above the last it opened.
fn find(shared: &MuxState, id: u32) -> Result<Option<Arc<StreamShared>>, String> {
    let t = shared.lock_streams();
    match t.map.get(&id) {
        Some(s) => Ok(Some(s.clone())),
        None if is_local(shared.cfg.role, id) && id >= t.next_local => {
            Err(format!("frame for our stream {id}, which was never opened"))
        }
        None if !is_local(shared.cfg.role, id) && id > t.max_peer => {
            Err(format!("frame for stream {id} that was never opened"))
        }
        None => Ok(None),
    }
}

/// Routes a stream frame to its stream (see [`find`] for frames of streams not in the table).
fn with_stream(
    shared: &Arc<MuxState>,
    id: u32,
    f: impl FnOnce(&StreamShared) -> Delivery,
) -> Result<(), String> {
    let Some(stream) = find(shared, id)? else {
        return Ok(());
    };
    match f(&stream) {
        Delivery::Ok => {}
        Delivery::Finished => shared.remove_stream(id),
        Delivery::Orphaned => {
            shared.remove_stream(id);
            shared.push_urgent(Frame::Reset {
                id,
                reason: Reason::Reset,
                message: "reader closed the stream".into(),
            });
        }
        Delivery::Violation(what) => violation(shared, &stream, what),
    }
    Ok(())
}

/// The peer broke one stream's rules: that stream fails and is reset, the tunnel goes on.
fn violation(shared: &MuxState, stream: &StreamShared, what: String) {
    let id = stream.id;
    shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(stream.id = id, error = %what, "stream protocol error, resetting stream");
    shared.remove_stream(id);
    stream.fail(Reason::Protocol, &what, shared);
    shared.push_urgent(Frame::Reset {
        id,
        reason: Reason::Protocol,
        message: what,
    });
}

fn on_open(
    shared: &Arc<MuxState>,
    id: u32,
    window: u32,
    meta: Bytes,
    sinks: &ReaderSinks,
) -> Result<(), String> {
    let refuse = |reason: Reason, message: &str| {
        shared.push_urgent(Frame::OpenErr {
            id,
            reason,
            message: message.to_owned(),
        });
        Ok(())
    };
    let stream = {
        let mut t = shared.lock_streams();
        // A close emptied the table while this message was being dispatched: a stream added
        // now would never be failed.
        if shared.closed.is_cancelled() {
            return Ok(());
        }
        if is_local(shared.cfg.role, id) || id <= t.max_peer {
            return Err(format!(
                "OPEN with invalid stream id {id} (last peer id {})",
                t.max_peer
            ));
        }
        t.max_peer = id;
        if shared.local_go_away.load(Ordering::Acquire) {
            drop(t);
            return refuse(Reason::Shutdown, "tunnel is going away");
        }
        if t.map.len() >= shared.cfg.max_streams {
            drop(t);
            return refuse(Reason::Limit, "stream limit reached");
        }
        if let Err(full) = shared
            .cfg
            .window_budget
            .take(u64::from(shared.cfg.initial_window))
        {
            drop(t);
            tracing::warn!(
                stream.id = id,
                reason = "limit",
                limit = full.key,
                "window budget committed: refusing stream"
            );
            return refuse(Reason::Limit, "window budget reached");
        }
        let s = Arc::new(StreamShared::new(
            id,
            StreamState::accepted(shared.cfg.initial_window, window, shared.cfg.early_data),
        ));
        t.map.insert(id, s.clone());
        s
    };
    let stream = MuxStream::new(stream, shared.clone());
    let meta: OpenMeta = match serde_json::from_slice(&meta) {
        Ok(m) => m,
        Err(e) => {
            stream.forget();
            return refuse(Reason::Protocol, &format!("bad OPEN metadata: {e}"));
        }
    };
    if let Err(e) = sinks.incoming.try_send(Incoming::new(meta, stream)) {
        let incoming = match e {
            mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
        };
        tracing::warn!(
            stream.id = incoming.id(),
            "accept backlog full, refusing stream"
        );
        incoming.refuse_now(Reason::Limit, "accept backlog full");
    }
    Ok(())
}

pub(crate) async fn keepalive_loop(shared: Arc<MuxState>) {
    let interval = shared.cfg.keepalive_interval;
    let timeout = shared.cfg.keepalive_timeout;
    // Ping often while streams are active: auto-tuning needs a current RTT.
    let tick = interval.min(Duration::from_secs(1));
    let mut last_ping = None::<tokio::time::Instant>;
    shared.push_urgent(Frame::Ping(shared.now_us()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shared.closed.cancelled() => return,
        }
        let now_ms = shared.now_ms();
        let silent = now_ms.saturating_sub(shared.last_rx_ms.load(Ordering::Relaxed));
        if silent > timeout.as_millis() as u64 {
            shared.close(super::close::keepalive(shared.cfg.role, silent));
            return;
        }
        // A peer that sends (so is not silent) but never reads would otherwise hold every
        // stream of the tunnel, and the callers routed to it, until the queues fill.
        let stalled = now_ms.saturating_sub(shared.last_tx_ms.load(Ordering::Relaxed));
        if stalled > timeout.as_millis() as u64 && shared.has_work() {
            shared.close(super::close::not_reading(shared.cfg.role, stalled));
            return;
        }
        let now = tokio::time::Instant::now();
        let active = !shared.lock_streams().map.is_empty();
        if active || last_ping.is_none_or(|t| now.duration_since(t) >= interval) {
            last_ping = Some(now);
            shared.push_urgent(Frame::Ping(shared.now_us()));
        }
    }
}
