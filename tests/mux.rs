//! The multiplexer against a hostile or slow peer, over an in-memory transport: malformed
//! frames, flow-control violations, fuzz corpus replay, window auto-tuning on a WAN path, and
//! fair sending when a bulk stream fills the tunnel.

use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use sgw::mux::{memory, Events, Mux, MuxConfig, MuxStream, OpenError, Role, StreamError};
use sgw::proto::{decode_message, encode_frame, Frame, OpenMeta, Reason, EARLY_DATA};

const T: Duration = Duration::from_secs(10);

/// A mux whose peer is the test: raw messages in, decoded frames out.
struct Peer {
    mux: Mux,
    events: Events,
    to_mux: mpsc::Sender<io::Result<Bytes>>,
    from_mux: mpsc::Receiver<Bytes>,
}

impl Peer {
    fn new(role: Role, window: u32) -> Peer {
        Peer::with(MuxConfig {
            role,
            initial_window: window,
            max_window: window,
            ..MuxConfig::default()
        })
    }

    fn with(cfg: MuxConfig) -> Peer {
        Peer::with_buffer(cfg, 64)
    }

    /// `messages`: what the transport holds between the mux's writer and the test.
    fn with_buffer(cfg: MuxConfig, messages: usize) -> Peer {
        let (to_mux, rx) = mpsc::channel(64);
        let (tx, from_mux) = mpsc::channel::<Bytes>(messages);
        let (mux, events) = Mux::start(rx, tx.sink_map_err(io::Error::other), cfg);
        Peer {
            mux,
            events,
            to_mux,
            from_mux,
        }
    }

    async fn send(&mut self, frames: &[Frame]) {
        let mut b = BytesMut::new();
        for f in frames {
            encode_frame(f, &mut b);
        }
        self.send_raw(b.freeze()).await;
    }

    async fn send_raw(&mut self, msg: Bytes) {
        self.to_mux.send(Ok(msg)).await.unwrap();
    }

    /// The frames of the next message from the mux, which must come before `deadline`.
    async fn next_frames(&mut self, deadline: tokio::time::Instant) -> Vec<Frame> {
        let msg = tokio::time::timeout_at(deadline, self.from_mux.next())
            .await
            .expect("frame in time")
            .expect("mux writer open");
        let mut frames = Vec::new();
        decode_message(&msg, |f| frames.push(f)).unwrap();
        frames
    }

    /// Next frame from the mux matching `want`, skipping the others.
    async fn expect(&mut self, want: impl Fn(&Frame) -> bool) -> Frame {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(f) = self
                .next_frames(deadline)
                .await
                .into_iter()
                .find(|f| want(f))
            {
                return f;
            }
        }
    }

    /// Frames from the mux up to the first matching `want`, in wire order, without the
    /// PING/PONG/WINDOW noise.
    async fn frames_until(&mut self, want: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + T;
        let mut seen = Vec::new();
        loop {
            for f in self.next_frames(deadline).await {
                if matches!(f, Frame::Ping(_) | Frame::Pong(_) | Frame::Window { .. }) {
                    continue;
                }
                let done = want(&f);
                seen.push(f);
                if done {
                    return seen;
                }
            }
        }
    }

    /// The RESET(protocol) the mux sends for stream `id`, whose message says `why`: a broken
    /// stream rule.
    async fn expect_violation(&mut self, id: u32, why: &str) {
        let f = self
            .expect(|f| matches!(f, Frame::Reset { id: i, .. } if *i == id))
            .await;
        assert!(
            matches!(&f, Frame::Reset { reason: Reason::Protocol, message, .. } if message.contains(why)),
            "{f:?}"
        );
    }

    /// Opens a stream, answered with `window`.
    async fn open_answered(&mut self, window: u32) -> MuxStream {
        let (s, answer) = self.mux.open_early(&meta()).unwrap();
        let id = s.id();
        self.expect(|f| matches!(f, Frame::Open { id: i, .. } if *i == id))
            .await;
        self.send(&[Frame::OpenOk { id, window }]).await;
        tokio::time::timeout(T, answer.wait())
            .await
            .unwrap()
            .unwrap();
        s
    }

    /// Accepts the next stream the peer opened.
    async fn accept(&mut self) -> sgw::mux::MuxStream {
        let inc = tokio::time::timeout(T, self.events.incoming.recv())
            .await
            .expect("open in time");
        inc.expect("mux running").accept().await.unwrap()
    }

    /// DATA bytes the mux holds for readers that have not written them.
    fn buffered(&self) -> u64 {
        self.mux
            .stats()
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn closed_with(&self) -> String {
        tokio::time::timeout(T, self.mux.closed())
            .await
            .expect("mux closed");
        self.mux.close_reason().unwrap().sentence
    }
}

fn open(id: u32, window: u32) -> Frame {
    let meta = serde_json::to_vec(&OpenMeta {
        dest: "d".into(),
        caller: "127.0.0.1:1".into(),
        compress: None,
        target: None,
    })
    .unwrap();
    Frame::Open {
        id,
        window,
        meta: meta.into(),
    }
}

#[tokio::test]
async fn unknown_frame_type_closes_tunnel_with_go_away() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send_raw(Bytes::from_static(&[0x7f, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
        .await;
    let f = p.expect(|f| matches!(f, Frame::GoAway { .. })).await;
    assert!(
        matches!(f, Frame::GoAway { reason: Reason::Protocol, ref message } if message.contains("unknown frame type 0x7f")),
        "{f:?}"
    );
    assert!(p.closed_with().await.contains("protocol error"));
    assert_eq!(
        p.mux
            .stats()
            .protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn frame_for_never_opened_stream_is_a_protocol_error() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[Frame::Data {
        id: 7,
        data: Bytes::from_static(b"x"),
    }])
    .await;
    assert!(p.closed_with().await.contains("never opened"));
}

/// Answers and stream frames for an id of ours that was never handed out close the tunnel as
/// a protocol error; for one we gave up on they were in flight: an OPEN_OK is answered with
/// RESET, the others are ignored, and the tunnel goes on.
#[tokio::test]
async fn answers_for_our_ids_never_opened_are_protocol_errors() {
    let never = |id| {
        [
            Frame::OpenOk { id, window: 65536 },
            Frame::OpenErr {
                id,
                reason: Reason::Refused,
                message: String::new(),
            },
            Frame::Data {
                id,
                data: Bytes::from_static(b"x"),
            },
            Frame::Fin { id },
            Frame::Window { id, increment: 1 },
            Frame::Reset {
                id,
                reason: Reason::Reset,
                message: String::new(),
            },
        ]
    };
    for f in never(2) {
        let mut p = Peer::new(Role::Client, 65536);
        let name = f.name();
        p.send(&[f]).await;
        let why = p.closed_with().await;
        assert!(why.contains("never opened"), "{name}: {why}");
    }
    // Stream 2 opened and given up on; then frames for it, and a PING that must be answered.
    let mut p = Peer::new(Role::Client, 65536);
    let s = p.open_answered(65536).await;
    assert_eq!(s.id(), 2);
    drop(s);
    p.expect(|f| matches!(f, Frame::Reset { id: 2, .. })).await;
    let mut late = never(2).to_vec();
    late.push(Frame::Ping(77));
    p.send(&late).await;
    let deadline = tokio::time::Instant::now() + T;
    let mut seen = Vec::new();
    while !seen.iter().any(|f| matches!(f, Frame::Pong(77))) {
        seen.extend(p.next_frames(deadline).await);
    }
    assert!(
        seen.iter().any(|f| matches!(f, Frame::Reset { id: 2, .. })),
        "the late OPEN_OK is answered with RESET: {seen:?}"
    );
    assert!(p.mux.close_reason().is_none());
}

#[tokio::test]
async fn open_with_wrong_parity_or_reused_id_is_a_protocol_error() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[open(2, 65536)]).await; // the gateway opens odd ids only
    assert!(p.closed_with().await.contains("invalid stream id 2"));
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[open(5, 65536), open(3, 65536)]).await;
    assert!(p.closed_with().await.contains("invalid stream id 3"));
}

#[tokio::test]
async fn flow_control_violation_resets_only_that_stream() {
    let window = 16 * 1024;
    let mut p = Peer::new(Role::Client, window);
    p.send(&[open(1, 65536), open(3, 65536)]).await;
    let s1 = p.accept().await;
    let s3 = p.accept().await;
    // Exactly the window is fine and is buffered, not more.
    let full = Bytes::from(vec![1u8; window as usize]);
    p.send(&[Frame::Data { id: 1, data: full }]).await;
    let deadline = Instant::now() + T;
    while p.buffered() < u64::from(window) {
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    // One byte over the credit: stream 1 is reset with a protocol reason.
    p.send(&[Frame::Data {
        id: 1,
        data: Bytes::from_static(b"!"),
    }])
    .await;
    p.expect_violation(1, "flow-control violation").await;
    let err = s1.recv().await.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Reset {
                reason: Reason::Protocol,
                ..
            }
        ),
        "{err:?}"
    );
    // Stream 3 and the tunnel carry on.
    p.send(&[Frame::Data {
        id: 3,
        data: Bytes::from_static(b"still fine"),
    }])
    .await;
    assert_eq!(
        s3.recv().await.unwrap().unwrap(),
        Bytes::from_static(b"still fine")
    );
    assert!(!p.mux.is_closed());
    assert_eq!(p.buffered(), 0, "reset stream's buffer released");
}

/// Whether `b` is a slice of `msg`'s memory rather than a copy.
fn points_into(b: &Bytes, msg: &Bytes) -> bool {
    let (p, start) = (b.as_ptr() as usize, msg.as_ptr() as usize);
    p >= start && p < start + msg.len()
}

/// DATA that waits for its relay is copied out of the message it came in: as a slice it
/// would keep the whole message (and the read buffer around it) alive, and a peer could pin a
/// large message with each byte of a window.
#[tokio::test]
async fn queued_data_does_not_keep_its_message_alive() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[open(1, 65536), open(3, 65536)]).await;
    let small = p.accept().await;
    let bulk = p.accept().await;
    let mut b = BytesMut::new();
    for f in [
        Frame::Data {
            id: 1,
            data: Bytes::from(vec![1u8; 2_000]),
        },
        Frame::Data {
            id: 3,
            data: Bytes::from(vec![3u8; 60_000]),
        },
    ] {
        encode_frame(&f, &mut b);
    }
    let msg = b.freeze();
    p.send_raw(msg.clone()).await;
    for (s, want) in [(small, vec![1u8; 2_000]), (bulk, vec![3u8; 60_000])] {
        let got = tokio::time::timeout(T, s.recv()).await.unwrap().unwrap();
        let got = got.expect("data");
        assert_eq!(got, want);
        assert!(!points_into(&got, &msg), "{} bytes not copied", want.len());
    }
}

#[tokio::test]
async fn data_after_fin_and_bad_open_metadata_are_stream_errors() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[Frame::Open {
        id: 1,
        window: 1000,
        meta: Bytes::from_static(b"{not json"),
    }])
    .await;
    let f = p
        .expect(|f| matches!(f, Frame::OpenErr { id: 1, .. }))
        .await;
    assert!(
        matches!(
            f,
            Frame::OpenErr {
                reason: Reason::Protocol,
                ..
            }
        ),
        "{f:?}"
    );
    p.send(&[open(3, 1000)]).await;
    let s = p.accept().await;
    p.send(&[
        Frame::Fin { id: 3 },
        Frame::Data {
            id: 3,
            data: Bytes::from_static(b"late"),
        },
    ])
    .await;
    p.expect_violation(3, "DATA after FIN").await;
    assert!(s.recv().await.is_err());
    assert!(!p.mux.is_closed());
}

/// Callers that connect and go away while the tunnel cannot send (a slow link, a peer slow to
/// read) do not close it: a stream dropped before its OPEN left takes the OPEN back, and
/// sends no RESET, so the control queue does not fill with frames the peer never needed.
#[tokio::test]
async fn streams_dropped_before_their_open_left_do_not_fill_the_control_queue() {
    let mut p = Peer::with_buffer(
        MuxConfig {
            role: Role::Gateway,
            max_streams: 4,
            ..MuxConfig::default()
        },
        1,
    );
    // Far more than the control queue holds (4 per stream the table holds, and 256).
    for i in 0..2_000 {
        if i % 100 == 0 {
            // Now and then a stream lives while the writer runs: the writer sends its OPEN
            // (until the one-message transport is full), so dropping it sends a RESET.
            let (s, _answer) = p.mux.open_early(&meta()).unwrap();
            tokio::task::yield_now().await;
            drop(s);
            continue;
        }
        match p.mux.open(&meta()).now_or_never() {
            None => {} // dropped while waiting for the answer, as a caller that gave up
            Some(r) => panic!("open {i} ended: {r:?}"),
        }
    }
    assert!(!p.mux.is_closed(), "{:?}", p.mux.close_reason());
    // Only the few OPENs the writer took before the transport filled went out, each with a
    // RESET; then a stream opened now is announced in turn.
    let s = p.mux.open_early(&meta()).unwrap().0;
    let id = s.id();
    let seen = p
        .frames_until(|f| matches!(f, Frame::Open { id: i, .. } if *i == id))
        .await;
    let opens = seen
        .iter()
        .filter(|f| matches!(f, Frame::Open { .. }))
        .count();
    let resets = seen
        .iter()
        .filter(|f| matches!(f, Frame::Reset { .. }))
        .count();
    assert!((2..=8).contains(&opens), "{opens} OPENs sent");
    assert_eq!(
        resets,
        opens - 1,
        "a RESET for each dropped stream the peer heard of"
    );
}

/// A peer that keeps sending (so the keepalive hears it) but never reads would hold the
/// tunnel and its streams forever: once frames have waited for the keepalive timeout with
/// nothing taken by the transport, the tunnel closes, saying why.
#[tokio::test]
async fn a_peer_that_sends_but_never_reads_is_disconnected() {
    let mut p = Peer::with_buffer(
        MuxConfig {
            role: Role::Gateway,
            keepalive_interval: Duration::from_millis(100),
            keepalive_timeout: Duration::from_millis(600),
            ..MuxConfig::default()
        },
        1,
    );
    let s = p.mux.open_early(&meta()).unwrap().0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + T;
    while !p.mux.is_closed() {
        assert!(tokio::time::Instant::now() < deadline, "still open");
        tick.tick().await;
        // Sent, never read: the mux's messages pile up in the one-message transport.
        let mut ping = BytesMut::new();
        encode_frame(&Frame::Ping(1), &mut ping);
        if p.to_mux.send(Ok(ping.freeze())).await.is_err() {
            break; // closed meanwhile
        }
    }
    let why = p.closed_with().await;
    assert!(why.contains("stopped reading"), "{why}");
    assert_eq!(p.mux.close_reason().unwrap().code, "peer_not_reading");
    drop(s);
}

/// A stream the peer opened, dropped before it is done, is reset: the peer hears of it (there
/// is no OPEN of ours to take back).
#[tokio::test]
async fn an_accepted_stream_dropped_unfinished_is_reset() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[open(1, 65536)]).await;
    let s = p.accept().await;
    drop(s);
    let f = p.expect(|f| matches!(f, Frame::Reset { id: 1, .. })).await;
    assert!(
        matches!(&f, Frame::Reset { message, .. } if message.contains("dropped")),
        "{f:?}"
    );
}

#[tokio::test]
async fn ping_is_answered_and_flood_of_opens_is_bounded() {
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[Frame::Ping(77)]).await;
    assert_eq!(
        p.expect(|f| matches!(f, Frame::Pong(77))).await,
        Frame::Pong(77)
    );
    // Nobody accepts: the backlog fills, then opens are refused with `limit`, never queued.
    let backlog = MuxConfig::default().accept_backlog as u32;
    let mut id = 1;
    for _ in 0..(backlog + 10) / 100 + 1 {
        let frames: Vec<Frame> = (0..100)
            .map(|_| {
                let f = open(id, 1000);
                id += 2;
                f
            })
            .collect();
        p.send(&frames).await;
    }
    let f = p.expect(|f| matches!(f, Frame::OpenErr { .. })).await;
    assert!(
        matches!(
            f,
            Frame::OpenErr {
                reason: Reason::Limit,
                ..
            }
        ),
        "{f:?}"
    );
    assert!(!p.mux.is_closed());
}

#[tokio::test]
async fn fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = Bytes::from(std::fs::read(entry.unwrap().path()).unwrap());
        let _ = decode_message(&bytes, |_| {});
        for role in [Role::Client, Role::Gateway] {
            let mut p = Peer::new(role, 65536);
            p.send_raw(bytes.clone()).await;
            p.send(&[Frame::Ping(1)]).await;
            // Either still serving (answers the ping) or closed with a reason; never stuck.
            loop {
                let msg = tokio::time::timeout(T, p.from_mux.next())
                    .await
                    .expect("mux answered or closed");
                let Some(msg) = msg else {
                    assert!(p.mux.close_reason().is_some(), "closed without a reason");
                    break;
                };
                let mut pong = false;
                let _ = decode_message(&msg, |f| pong |= f == Frame::Pong(1));
                if pong {
                    break;
                }
            }
        }
        n += 1;
    }
    assert!(n >= 20, "corpus has {n} files");
}

/// Two muxes over an in-memory link and one stream the gateway opened, with both ends.
struct Pair {
    cl: Mux,
    _gw: Mux,
    _events: (Events, Events),
    sender: MuxStream,
    receiver: MuxStream,
}

/// A [`Pair`] over a link `delay` each way, with `initial` windows, once the first PING/PONG
/// of each side has measured the path.
async fn one_stream_over(delay: Duration, initial: u32) -> Pair {
    let ((ar, aw), (br, bw)) = memory::link(delay);
    let cfg = |role| MuxConfig {
        role,
        initial_window: initial,
        ..MuxConfig::default()
    };
    let (gw, gw_events) = Mux::start(ar, aw, cfg(Role::Gateway));
    let (cl, mut cl_events) = Mux::start(br, bw, cfg(Role::Client));
    // Both sides: each judges its own window growth against its own measure of the path.
    let deadline = Instant::now() + T;
    while gw.rtt().is_none() || cl.rtt().is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let meta = OpenMeta {
        dest: "d".into(),
        caller: "c".into(),
        compress: None,
        target: None,
    };
    let accept = async {
        let incoming = cl_events.incoming.recv().await.unwrap();
        incoming.accept().await.unwrap()
    };
    let (opened, receiver) = tokio::join!(gw.open(&meta), accept);
    Pair {
        cl,
        _gw: gw,
        _events: (gw_events, cl_events),
        sender: opened.unwrap(),
        receiver,
    }
}

/// Both ends of a loopback TCP connection: (the one that connected, the accepted one).
async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = l.accept().await.unwrap();
    (source, tcp)
}

/// Sends `total` bytes over `sender` in 64 KiB chunks of `byte`, then FIN.
fn send_all(sender: MuxStream, total: usize, byte: u8) -> tokio::task::JoinHandle<()> {
    send_all_in(sender, total, byte, 64 * 1024)
}

/// Sends `total` bytes over `sender` in sends of `piece` bytes of `byte` (the last one
/// shorter if need be), then FIN.
fn send_all_in(
    sender: MuxStream,
    total: usize,
    byte: u8,
    piece: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![byte; piece]);
        let mut left = total;
        while left > 0 {
            let n = left.min(piece);
            sender.send(chunk.slice(..n)).await.unwrap();
            left -= n;
        }
        sender.finish().await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_grows_on_a_slow_path_so_one_stream_is_not_window_bound() {
    // 25 ms each way, like a WAN; the initial window alone would cap the stream at
    // 256 KiB per 50 ms round trip.
    let delay_ms = std::env::var("SGW_WAN_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let initial = 256 * 1024;
    // Every part bound, so the muxes live to the end of the test.
    let Pair {
        cl: _cl,
        _gw,
        _events,
        sender,
        receiver,
    } = one_stream_over(Duration::from_millis(delay_ms), initial).await;
    let total: usize = std::env::var("SGW_WAN_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
        * 1024
        * 1024;
    let started = Instant::now();
    let send = async {
        let chunk = Bytes::from(vec![3u8; 64 * 1024]);
        for _ in 0..total / chunk.len() {
            sender.send(chunk.clone()).await.unwrap();
        }
        sender.finish().await.unwrap();
    };
    let recv = async {
        let mut got = 0;
        while let Some(b) = receiver.recv().await.unwrap() {
            got += b.len();
        }
        got
    };
    let (_, got) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(send, recv) })
            .await
            .unwrap();
    assert_eq!(got, total);
    let secs = started.elapsed().as_secs_f64();
    let fixed_window_secs = total as f64 / initial as f64 * 0.050;
    eprintln!("64 MiB over a 50 ms RTT path: {secs:.2} s (a fixed 256 KiB window needs {fixed_window_secs:.1} s); window grew to {} KiB", receiver.window() / 1024);
    assert!(
        receiver.window() >= 16 * initial,
        "window only grew to {}",
        receiver.window()
    );
}

/// Sends `rounds` bursts of `burst` bytes over `p`, the sender idling `idle` before each.
/// With a `stall`, the reader waits until a whole window (`initial`) is here, stays away that
/// much longer, then reads the burst at once; without one it reads as data comes. Returns
/// the receiver's window at the end.
async fn bursts(
    p: Pair,
    initial: u32,
    burst: usize,
    rounds: usize,
    idle: Duration,
    stall: Option<Duration>,
) -> u32 {
    let Pair {
        cl,
        _gw,
        _events,
        sender,
        receiver,
    } = p;
    let send = tokio::spawn(async move {
        let chunk = Bytes::from(vec![5u8; 64 * 1024]);
        for _ in 0..rounds {
            tokio::time::sleep(idle).await;
            for _ in 0..burst / chunk.len() {
                sender.send(chunk.clone()).await.unwrap();
            }
        }
        sender.finish().await.unwrap();
    });
    let buffered = || {
        cl.stats()
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let got = tokio::time::timeout(T, async {
        let mut got = 0;
        for _ in 0..rounds {
            if let Some(stall) = stall {
                while buffered() < u64::from(initial) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(stall).await;
            }
            let done = got + burst;
            while got < done {
                got += receiver.recv().await.unwrap().expect("more data").len();
            }
        }
        while let Some(b) = receiver.recv().await.unwrap() {
            got += b.len();
        }
        got
    })
    .await
    .expect("the transfer finished");
    send.await.unwrap();
    assert_eq!(got, rounds * burst);
    receiver.window()
}

/// A reader that stalls and then drains its backlog consumes half a window within a few
/// round trips too, but the window is not what limits it: growing would only let more data
/// wait in memory for its next stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_and_drains_does_not_grow_the_window() {
    let initial = 1024 * 1024;
    let p = one_stream_over(Duration::from_millis(1), initial).await;
    // The stall is what this test is about: many round trips, however slow this machine
    // makes them.
    let stall = Duration::from_millis(50).max(12 * p.cl.rtt().expect("measured"));
    let window = bursts(p, initial, initial as usize, 4, Duration::ZERO, Some(stall)).await;
    assert_eq!(window, initial, "the window grew for a stalled reader");
}

/// The other side of the rule above: bursts of several windows after the sender was idle,
/// read as they come, are window-limited once the first window of each is in: the window
/// grows, though the idle time falls inside the first window of every burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_after_idle_read_as_they_come_grow_the_window() {
    let initial = 256 * 1024;
    let p = one_stream_over(Duration::from_millis(5), initial).await;
    // The sender idles for several round trips before each burst.
    let burst = 4 * initial as usize;
    let window = bursts(p, initial, burst, 3, Duration::from_millis(60), None).await;
    assert!(
        window > initial,
        "the window stayed at {window} over three window-limited bursts"
    );
}

/// A window's worth that arrives at once is no measure of the stream's speed: the sender had
/// it all in flight before the first update. A reader taking eight streams' first windows
/// quickly and then reading each slowly, as a busy host does, leaves the windows as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fast_window_then_a_slow_reader_does_not_grow_the_window() {
    let initial = 256 * 1024;
    let p = one_stream_over(Duration::from_millis(1), initial).await;
    let rtt = p.cl.rtt().expect("measured");
    let total = 4 * initial as usize;
    let send = send_all(p.sender, total, 6);
    let receiver = p.receiver;
    let got = tokio::time::timeout(T, async {
        let mut got = 0;
        while let Some(b) = receiver.recv().await.unwrap() {
            got += b.len();
            // After the first window, each 64 KiB takes several round trips to be written.
            if got > initial as usize {
                tokio::time::sleep(Duration::from_millis(5).max(4 * rtt)).await;
            }
        }
        got
    })
    .await
    .expect("the transfer finished");
    send.await.unwrap();
    assert_eq!(got, total);
    assert_eq!(
        receiver.window(),
        initial,
        "the window grew for a slow reader"
    );
}

/// A window grown while its stream was fast goes back down when the stream turns slow (its
/// reader, or many streams sharing the host): what it held was memory doing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_grown_when_fast_shrinks_when_its_reader_turns_slow() {
    // Sends of 64 KiB, and of two bulk chunks as a relay's bulk reads go: credit then comes
    // back at half the window less 1/256, and a shrink waits for an update that can take it.
    for piece in [64 * 1024, 2 * sgw::proto::DATA_CHUNK] {
        grown_window_shrinks(piece).await;
    }
}

async fn grown_window_shrinks(piece: usize) {
    let initial = 256 * 1024;
    let p = one_stream_over(Duration::from_millis(1), initial).await;
    // Two round trips per 64 KiB, however slow this machine makes them: any window of 1 MiB
    // takes 32 at least, and four updates in a row find it slow.
    let pace = Duration::from_millis(1).max(2 * p.cl.rtt().expect("measured"));
    let fast = 4 * 1024 * 1024;
    let slow = 40 * 1024 * 1024;
    let send = send_all_in(p.sender, fast + slow, 8, piece);
    let receiver = p.receiver;
    let (grown, end) = tokio::time::timeout(3 * T, async {
        let mut got = 0;
        while got < fast {
            got += receiver.recv().await.unwrap().expect("more data").len();
        }
        let mut grown = receiver.window();
        // Then slowly: a whole window takes many round trips.
        while let Some(b) = receiver.recv().await.unwrap() {
            got += b.len();
            grown = grown.max(receiver.window());
            tokio::time::sleep(pace).await;
        }
        assert_eq!(got, fast + slow);
        (grown, receiver.window())
    })
    .await
    .expect("the transfer finished");
    send.await.unwrap();
    assert!(grown >= 4 * initial, "the window only grew to {grown}");
    assert!(
        end <= grown / 2,
        "the window stayed at {end} (grown to {grown}) for a slow reader ({piece}-byte sends)"
    );
    assert!(end >= initial, "the window shrank below its start: {end}");
    // Halved each time, never cut short by what an update returned: still a power of two
    // times the start.
    assert!(
        end % initial == 0 && (end / initial).is_power_of_two(),
        "the window shrank to {end} ({piece}-byte sends)"
    );
}

/// A relay reads from its socket no more than the stream may send: what the peer's window
/// holds back stays in the socket (TCP flow control), not in memory of the relay's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reads_no_more_than_the_peer_window_lets_it_send() {
    use sgw::relay::{relay, Counters, Options, Socket};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let initial = 256 * 1024;
    let p = one_stream_over(Duration::ZERO, initial).await;
    let (mut source, tcp) = tcp_pair().await;
    // Far more than the window, and much of it waiting in the socket before the relay starts,
    // so every read finds more than it asks for. The receiver never reads: the writer stalls
    // once the window, the relay and both sockets' buffers are full.
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let writing = tokio::spawn(async move {
        let chunk = vec![9u8; 64 * 1024];
        while source.write_all(&chunk).await.is_ok() {
            w.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let deadline = Instant::now() + T;
    while written.load(std::sync::atomic::Ordering::Relaxed) < 256 * 1024 {
        assert!(
            Instant::now() < deadline,
            "the socket took less than 256 KiB"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let sender = p.sender;
    let relaying = tokio::spawn(async move {
        relay(Socket::Tcp(tcp), sender, &c, Options::default()).await;
    });
    let buffered = || {
        p.cl.stats()
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The window fills but for less than a bulk frame: what is left of the credit is not
    // sent as a small frame of its own (the receiver's next WINDOW is certain), and the
    // frame it would be cut from waits for that WINDOW in the relay's hands.
    let window = u64::from(initial);
    // Less than a 64 KiB frame: after a short read a relay reads 64 KiB, not a chunk.
    let full = window - sgw::proto::MAX_DATA as u64;
    let deadline = Instant::now() + T;
    while buffered() <= full {
        assert!(
            Instant::now() < deadline,
            "the window never filled: {}",
            buffered()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // What the relay would read beyond the window it reads at once, data waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read = counters
        .to_stream
        .load(std::sync::atomic::Ordering::Relaxed);
    let got = buffered();
    assert!(
        got > full && got < window,
        "{got} bytes sent in a window of {window}"
    );
    assert!(
        read <= u64::from(initial) + sgw::proto::MAX_DATA as u64,
        "the relay read {read} bytes for a window of {initial}"
    );
    writing.abort();
    relaying.abort();
    drop(p.receiver);
}

/// A bulk send goes in DATA_CHUNK frames, two to a message: messages of eight whole TLS
/// records (docs/PERFORMANCE.md, "Messages of whole TLS records"). A send of up to 64 KiB
/// (a request, an answer) stays one frame.
#[tokio::test]
async fn bulk_goes_in_chunks_two_to_a_message_and_a_64_kib_send_in_one_frame() {
    use sgw::proto::{DATA_CHUNK, MAX_DATA};
    let mut p = Peer::new(Role::Gateway, 65536);
    let s = p.open_answered(4 << 20).await;
    // DATA of stream 1 in each message, until `total` bytes came.
    async fn data_per_message(p: &mut Peer, total: usize) -> Vec<Vec<usize>> {
        let deadline = tokio::time::Instant::now() + T;
        let (mut got, mut messages) = (0, Vec::new());
        while got < total {
            let sizes: Vec<usize> = p
                .next_frames(deadline)
                .await
                .into_iter()
                .filter_map(|f| match f {
                    Frame::Data { id: 1, data } => Some(data.len()),
                    _ => None,
                })
                .collect();
            got += sizes.iter().sum::<usize>();
            if !sizes.is_empty() {
                messages.push(sizes);
            }
        }
        assert_eq!(got, total);
        messages
    }
    tokio::time::timeout(T, s.send(Bytes::from(vec![1u8; MAX_DATA])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data_per_message(&mut p, MAX_DATA).await, [[MAX_DATA]]);
    tokio::time::timeout(T, s.send(Bytes::from(vec![2u8; 4 * DATA_CHUNK])))
        .await
        .unwrap()
        .unwrap();
    let messages = data_per_message(&mut p, 4 * DATA_CHUNK).await;
    assert_eq!(messages, [[DATA_CHUNK; 2]; 2]);
    assert_eq!(
        2 * (DATA_CHUNK + sgw::proto::HEADER_LEN),
        sgw::mux::BATCH_BYTES
    );
}

/// The receiver returns credit once two bulk frames of a 256 KiB window are consumed, not a
/// third: at exactly half the window the sender waited for it.
#[tokio::test]
async fn credit_comes_back_after_two_bulk_frames_of_a_256_kib_window() {
    use sgw::proto::DATA_CHUNK;
    let window = 256 * 1024;
    let mut p = Peer::new(Role::Client, window);
    p.send(&[open(1, window)]).await;
    let s = p.accept().await;
    p.expect(|f| matches!(f, Frame::OpenOk { id: 1, .. })).await;
    let chunk = |b| Frame::Data {
        id: 1,
        data: Bytes::from(vec![b; DATA_CHUNK]),
    };
    p.send(&[chunk(1), chunk(2)]).await;
    let mut got = 0;
    while got < 2 * DATA_CHUNK {
        got += tokio::time::timeout(T, s.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .len();
    }
    let w = p.expect(|f| matches!(f, Frame::Window { id: 1, .. })).await;
    assert!(
        matches!(w, Frame::Window { increment, .. } if increment as usize == 2 * DATA_CHUNK),
        "{w:?}"
    );
}

/// A frame that credit would cut short waits for the next WINDOW instead while that is
/// certain (the peer's window is two frames or more); with a smaller window what credit
/// allows goes at once, or the stream could wait for an update that never comes.
#[tokio::test]
async fn a_frame_credit_would_cut_short_waits_while_the_next_window_is_certain() {
    use futures::FutureExt;
    for (window, waits) in [(256 * 1024, true), (100 * 1024, false)] {
        let mut p = Peer::new(Role::Gateway, 65536);
        let s = p.open_answered(window).await;
        let first = window as usize - 768;
        tokio::time::timeout(T, s.send(Bytes::from(vec![1u8; first])))
            .await
            .unwrap()
            .unwrap();
        // 1000 bytes with 768 of credit: one poll, then dropped.
        assert!(s
            .send(Bytes::from(vec![2u8; 1000]))
            .now_or_never()
            .is_none());
        p.send(&[Frame::Window {
            id: 1,
            increment: 128 * 1024,
        }])
        .await;
        tokio::time::timeout(T, s.send(Bytes::from(vec![3u8; 1000])))
            .await
            .unwrap()
            .unwrap();
        // The DATA after the first `first` bytes, up to the answer to a PING sent once the
        // last 1000 bytes came.
        let deadline = tokio::time::Instant::now() + T;
        let (mut seen, mut after, mut pinged) = (0, Vec::new(), false);
        loop {
            let frames = p.next_frames(deadline).await;
            let ponged = frames.iter().any(|f| matches!(f, Frame::Pong(7)));
            for f in frames {
                if let Frame::Data { data, .. } = f {
                    if seen >= first {
                        after.push(data.len());
                    }
                    seen += data.len();
                }
            }
            if ponged {
                break;
            }
            if seen >= first + 1000 && !pinged {
                p.send(&[Frame::Ping(7)]).await;
                pinged = true;
            }
        }
        if waits {
            assert_eq!(after, [1000], "window {window}");
        } else {
            assert_eq!(after[0], 768, "window {window}: {after:?}");
        }
    }
}

/// A send dropped while it waits for room in the tunnel's send budget gives back the credit
/// it took: a stream whose credit leaked could wait for a WINDOW that never comes.
#[tokio::test]
async fn a_send_dropped_waiting_for_the_tunnel_gives_its_credit_back() {
    use futures::FutureExt;
    let mut p = Peer::with_buffer(
        MuxConfig {
            role: Role::Gateway,
            initial_window: 65536,
            max_window: 65536,
            tunnel_send_queue: 64 * 1024,
            send_queue: 1 << 20,
            ..MuxConfig::default()
        },
        1,
    );
    let s = p.open_answered(4 << 20).await;
    // Nobody reads the transport now: its two messages fill, the writer waits on it, and
    // queued frames keep the tunnel's budget until no send finds room.
    let piece = Bytes::from(vec![5u8; 16 * 1024]);
    let credit = || match s.writable().now_or_never() {
        Some(Ok(c)) => c,
        other => panic!("credit: {other:?}"),
    };
    let mut refunded = false;
    for _ in 0..64 {
        let before = credit();
        if s.send(piece.clone()).now_or_never().is_none() {
            let after = credit();
            // Queued and then waiting to send it (credit spent), or waiting for room.
            assert!(
                after == before || after == before - piece.len(),
                "{before} -> {after}"
            );
            if after == before {
                refunded = true;
                break;
            }
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    assert!(refunded, "no send ever waited for the tunnel's budget");
}

/// A relay fed faster than its window holds back credit short of a bulk frame only while the
/// peer's next WINDOW is certain: with a window under two frames it sends what it may, and
/// the transfer never stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_relay_finishes_whatever_the_peer_window() {
    use sgw::relay::{relay, Counters, Options, Socket};
    use tokio::io::AsyncWriteExt;
    for window in [32 * 1024, 100 * 1024, 256 * 1024] {
        let p = one_stream_over(Duration::ZERO, window).await;
        let (mut source, tcp) = tcp_pair().await;
        let total = 8 << 20;
        let writing = tokio::spawn(async move {
            let block: Vec<u8> = (0..128 * 1024).map(|i| (i % 251) as u8).collect();
            for _ in 0..total / block.len() {
                source.write_all(&block).await.unwrap();
            }
            source.shutdown().await.unwrap();
        });
        let sender = p.sender;
        let relaying = tokio::spawn(async move {
            let c = std::sync::Arc::new(Counters::default());
            relay(Socket::Tcp(tcp), sender, &c, Options::default()).await;
        });
        let receiver = p.receiver;
        let got = tokio::time::timeout(T, async {
            let mut got = 0usize;
            while let Some(b) = receiver.recv().await.unwrap() {
                for (i, &x) in b.iter().enumerate() {
                    assert_eq!(x, ((got + i) % (128 * 1024) % 251) as u8, "at {}", got + i);
                }
                got += b.len();
            }
            got
        })
        .await
        .unwrap_or_else(|_| panic!("a window of {window} stalled"));
        assert_eq!(got, total, "window {window}");
        writing.await.unwrap();
        relaying.abort();
    }
}

// ---- Hostile peers (docs/SECURITY.md): each case ends one stream, never the tunnel. ----

#[tokio::test]
async fn data_before_open_ok_is_a_stream_violation_and_buffers_nothing() {
    let mut p = Peer::new(Role::Client, 256 * 1024);
    // The gateway opens and sends data before the client accepted: nothing may be buffered.
    p.send(&[
        open(1, 65536),
        Frame::Data {
            id: 1,
            data: Bytes::from(vec![7u8; 60_000]),
        },
    ])
    .await;
    p.expect_violation(1, "DATA before OPEN_OK").await;
    assert_eq!(p.buffered(), 0);
    // A FIN before OPEN_OK likewise; then a well-behaved stream works on the same tunnel.
    p.send(&[open(3, 65536), Frame::Fin { id: 3 }]).await;
    p.expect(|f| matches!(f, Frame::Reset { id: 3, .. })).await;
    p.send(&[open(5, 65536)]).await;
    // The two violated streams were queued for accept; they come out already failed.
    let mut ok = None;
    for _ in 0..3 {
        let inc = tokio::time::timeout(T, p.events.incoming.recv())
            .await
            .unwrap()
            .unwrap();
        if inc.id() == 5 {
            ok = Some(inc.accept().await.unwrap());
        } else {
            assert!(inc.accept().await.is_err());
        }
    }
    let s5 = ok.expect("stream 5 accepted");
    p.expect(|f| matches!(f, Frame::OpenOk { id: 5, .. })).await;
    p.send(&[Frame::Data {
        id: 5,
        data: Bytes::from_static(b"fine"),
    }])
    .await;
    assert_eq!(
        s5.recv().await.unwrap().unwrap(),
        Bytes::from_static(b"fine")
    );
    assert!(!p.mux.is_closed());
}

fn meta() -> OpenMeta {
    OpenMeta {
        dest: "d".into(),
        caller: "127.0.0.1:1".into(),
        compress: None,
        target: None,
    }
}

/// The client's side: a mux that takes early data (its HELLO lists `early_data`).
fn early_client() -> Peer {
    Peer::with(MuxConfig {
        role: Role::Client,
        initial_window: 256 * 1024,
        max_window: 256 * 1024,
        early_data: true,
        ..MuxConfig::default()
    })
}

#[tokio::test]
async fn a_client_that_takes_early_data_keeps_it_until_it_accepts_or_refuses() {
    let mut p = early_client();
    let early = EARLY_DATA as usize;
    // All it allows, in two frames, then FIN, before any answer.
    p.send(&[
        open(1, 65536),
        Frame::Data {
            id: 1,
            data: Bytes::from(vec![1u8; early - 100]),
        },
        Frame::Data {
            id: 1,
            data: Bytes::from(vec![2u8; 100]),
        },
        Frame::Fin { id: 1 },
    ])
    .await;
    let inc = tokio::time::timeout(T, p.events.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.buffered(), early as u64, "held until accepted");
    let s = inc.accept().await.unwrap();
    p.expect(|f| matches!(f, Frame::OpenOk { id: 1, window } if *window == 256 * 1024))
        .await;
    let mut got = Vec::new();
    while let Some(b) = tokio::time::timeout(T, s.recv()).await.unwrap().unwrap() {
        got.extend_from_slice(&b);
    }
    assert_eq!(got.len(), early);
    assert!(
        got[..early - 100].iter().all(|&b| b == 1) && got[early - 100..].iter().all(|&b| b == 2)
    );
    assert_eq!(p.buffered(), 0);

    // One byte over: that stream is reset, nothing of it stays, the tunnel goes on.
    p.send(&[
        open(3, 65536),
        Frame::Data {
            id: 3,
            data: Bytes::from(vec![3u8; early]),
        },
        Frame::Data {
            id: 3,
            data: Bytes::from_static(b"x"),
        },
    ])
    .await;
    p.expect_violation(3, "before OPEN_OK").await;
    assert_eq!(p.buffered(), 0);
    let inc = tokio::time::timeout(T, p.events.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        inc.accept().await.is_err(),
        "the violated stream comes out failed"
    );

    // Refused (the veto): what came early is dropped with it.
    p.send(&[
        open(5, 65536),
        Frame::Data {
            id: 5,
            data: Bytes::from_static(b"GET /admin HTTP/1.1\r\n\r\n"),
        },
    ])
    .await;
    let inc = tokio::time::timeout(T, p.events.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    inc.reject(Reason::AclDenied, "denied").await;
    p.expect(|f| {
        matches!(
            f,
            Frame::OpenErr {
                id: 5,
                reason: Reason::AclDenied,
                ..
            }
        )
    })
    .await;
    assert_eq!(p.buffered(), 0);
    assert!(!p.mux.is_closed());
}

#[tokio::test]
async fn an_early_open_sends_behind_its_open_and_the_answer_settles_its_credit() {
    let mut p = Peer::new(Role::Gateway, 65536);
    let early = EARLY_DATA as usize;
    let (s, answer) = p.mux.open_early(&meta()).unwrap();
    tokio::time::timeout(T, s.send(Bytes::from(vec![9u8; early])))
        .await
        .expect("early bytes need no answer")
        .unwrap();
    let frames = p
        .frames_until(|f| matches!(f, Frame::Data { id: 1, .. }))
        .await;
    assert!(
        matches!(frames.first(), Some(Frame::Open { id: 1, .. })),
        "the OPEN goes first: {frames:?}"
    );
    assert!(
        !s.try_send(Bytes::from_static(b"x")).unwrap(),
        "no credit beyond the early bytes"
    );
    // The OPEN_OK's window counts the early bytes: 65536 in all.
    p.send(&[Frame::OpenOk {
        id: 1,
        window: 65536,
    }])
    .await;
    tokio::time::timeout(T, answer.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(s.try_send(Bytes::from(vec![9u8; 65536 - early])).unwrap());
    assert!(!s.try_send(Bytes::from_static(b"x")).unwrap());

    // An OPEN_OK whose window would not cover the early bytes breaks the stream's rules.
    let (s3, answer) = p.mux.open_early(&meta()).unwrap();
    p.expect(|f| matches!(f, Frame::Open { id: 3, .. })).await;
    p.send(&[Frame::OpenOk {
        id: 3,
        window: 1000,
    }])
    .await;
    let f = p.expect(|f| matches!(f, Frame::Reset { id: 3, .. })).await;
    assert!(
        matches!(
            f,
            Frame::Reset {
                reason: Reason::Protocol,
                ..
            }
        ),
        "{f:?}"
    );
    assert!(tokio::time::timeout(T, answer.wait())
        .await
        .unwrap()
        .is_err());
    assert!(s3.send(Bytes::from_static(b"x")).await.is_err());

    // Refused: the answer says why, and the stream fails.
    let (s5, answer) = p.mux.open_early(&meta()).unwrap();
    tokio::time::timeout(T, s5.send(Bytes::from_static(b"hello")))
        .await
        .unwrap()
        .unwrap();
    p.expect(|f| matches!(f, Frame::Data { id: 5, .. })).await;
    p.send(&[Frame::OpenErr {
        id: 5,
        reason: Reason::AclDenied,
        message: "no\n2026-12-05T00:00:00Z  INFO forged".into(),
    }])
    .await;
    // The peer's words reach log lines: a line break in them can't start a line of its own.
    match tokio::time::timeout(T, answer.wait()).await.unwrap() {
        Err(OpenError::Refused {
            reason: Reason::AclDenied,
            message,
        }) => assert_eq!(message, "no\\n2026-12-05T00:00:00Z  INFO forged"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(s5.send(Bytes::from_static(b"more")).await.is_err());
    assert!(!p.mux.is_closed());
}

#[tokio::test]
async fn an_early_open_carries_the_data_queued_before_it_left_in_its_own_message() {
    let mut p = Peer::new(Role::Gateway, 65536);
    // A caller that spoke first (a request on a fresh connection): its bytes are queued
    // before the writer has sent the OPEN, which waits in the control queue.
    let (s, _answer) = p.mux.open_early(&meta()).unwrap();
    tokio::time::timeout(T, s.send(Bytes::from_static(b"PING\r\n")))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(T, s.finish()).await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let first = loop {
        let frames = p.next_frames(deadline).await;
        if frames.iter().any(|f| matches!(f, Frame::Open { .. })) {
            break frames;
        }
    };
    let open = first
        .iter()
        .position(|f| matches!(f, Frame::Open { id: 1, .. }))
        .unwrap();
    assert!(
        matches!(&first[open + 1..], [Frame::Data { id: 1, data }, ..] if &data[..] == b"PING\r\n"),
        "the OPEN, then its early DATA, in one message: {first:?}"
    );
    if !first.iter().any(|f| matches!(f, Frame::Fin { .. })) {
        p.expect(|f| matches!(f, Frame::Fin { id: 1 })).await;
    }

    // Dropped before its OPEN left: the OPEN is taken back, so the peer hears nothing of it,
    // neither a RESET nor what it queued; the next stream's OPEN is the next frame.
    let (s3, _answer) = p.mux.open_early(&meta()).unwrap();
    assert!(s3.try_send(Bytes::from_static(b"lost")).unwrap());
    drop(s3);
    let (s5, _answer) = p.mux.open_early(&meta()).unwrap();
    let frames = p
        .frames_until(|f| matches!(f, Frame::Open { id: 5, .. }))
        .await;
    assert!(
        matches!(&frames[..], [Frame::Open { id: 5, .. }]),
        "{frames:?}"
    );
    drop(s5);
}

#[tokio::test]
async fn open_err_after_open_ok_fails_the_stream_instead_of_orphaning_it() {
    let mut p = Peer::new(Role::Gateway, 65536);
    let mux = p.mux.clone();
    let opener = tokio::spawn(async move {
        mux.open(&OpenMeta {
            dest: "d".into(),
            caller: "127.0.0.1:1".into(),
            compress: None,
            target: None,
        })
        .await
    });
    let Frame::Open { id, .. } = p.expect(|f| matches!(f, Frame::Open { .. })).await else {
        unreachable!()
    };
    p.send(&[Frame::OpenOk { id, window: 65536 }]).await;
    let s = opener.await.unwrap().unwrap();
    assert_eq!(p.mux.active_streams(), 1);
    p.send(&[Frame::OpenErr {
        id,
        reason: Reason::Refused,
        message: "changed my mind".into(),
    }])
    .await;
    // The relay waiting on the stream wakes with an error; the slot is free again.
    let err = tokio::time::timeout(T, s.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Reset {
                reason: Reason::Protocol,
                ..
            }
        ),
        "{err:?}"
    );
    p.expect(|f| matches!(f, Frame::Reset { id: i, reason: Reason::Protocol, .. } if *i == id))
        .await;
    assert_eq!(p.mux.active_streams(), 0);
    assert!(!p.mux.is_closed());
}

#[tokio::test]
async fn windows_above_2_pow_31_are_refused() {
    for f in [
        open(1, 1 << 31),
        Frame::OpenOk {
            id: 2,
            window: u32::MAX,
        },
    ] {
        let mut b = BytesMut::new();
        encode_frame(&f, &mut b);
        let err = decode_message(&b.freeze(), |_| {}).unwrap_err();
        assert!(err.to_string().contains("above 2^31-1"), "{err}");
        assert!(f.check().is_err());
    }
    let mut p = Peer::new(Role::Client, 65536);
    p.send(&[open(1, 1 << 31)]).await;
    assert!(p.closed_with().await.contains("above 2^31-1"));
}

#[tokio::test]
async fn oversized_log_and_config_are_never_sent() {
    let mut p = Peer::new(Role::Client, 65536);
    let big = Bytes::from(vec![b'x'; sgw::proto::MAX_LOG_JSON + 1]);
    assert!(!p.mux.send_log(big), "an over-limit LOG is dropped");
    assert!(p.mux.send_log(Bytes::from_static(b"{\"level\":\"warn\"}")));
    let f = p.expect(|f| matches!(f, Frame::Log(_))).await;
    assert!(matches!(f, Frame::Log(ref b) if b.len() < 100));
    let g = Peer::new(Role::Gateway, 65536);
    let huge = Bytes::from(vec![b' '; sgw::proto::MAX_CONTROL_JSON + 1]);
    assert!(g.mux.push_config(huge).is_err());
    assert!(!g.mux.is_closed());
}

/// A client that does not read gets one CONFIG, the newest, not one per change: each
/// replaces the one still queued (a CONFIG is up to a MiB; a change a second would otherwise
/// pile up on the gateway).
#[tokio::test]
async fn a_queued_config_is_replaced_by_a_newer_one() {
    let mut g = Peer::with_buffer(
        MuxConfig {
            role: Role::Gateway,
            ..MuxConfig::default()
        },
        1,
    );
    let payload = |i: usize| Bytes::from(format!("{{\"v\":{i},\"pad\":\"{}\"}}", "p".repeat(4096)));
    for i in 0..200 {
        g.mux.push_config(payload(i)).expect("queued");
        // The writer sends a few, until the one-message transport is full.
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut configs = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while configs.last() != Some(&payload(199)) {
        for f in g.next_frames(deadline).await {
            if let Frame::Config(b) = f {
                configs.push(b);
            }
        }
    }
    assert!(
        (2..=4).contains(&configs.len()),
        "{} CONFIG frames sent",
        configs.len()
    );
}

#[tokio::test]
async fn a_burst_of_control_frames_is_spread_over_messages_the_peer_accepts() {
    let mut p = Peer::new(Role::Client, 65536);
    // 200 log lines of 60 KiB; those queued (LOG_QUEUE) are far over one 2 MiB message.
    let line = Bytes::from(vec![b'l'; 60 * 1024]);
    let mut queued = 0;
    for _ in 0..200 {
        queued += usize::from(p.mux.send_log(line.clone()));
    }
    assert!(queued >= 16, "queued {queued}");
    let mut got = 0;
    while got < queued {
        let msg = tokio::time::timeout(T, p.from_mux.next())
            .await
            .unwrap()
            .unwrap();
        assert!(msg.len() <= sgw::proto::MAX_MESSAGE, "{} bytes", msg.len());
        assert!(
            msg.len() <= sgw::mux::BATCH_BYTES + 64 * 1024 + 16,
            "{} bytes",
            msg.len()
        );
        decode_message(&msg, |f| got += usize::from(matches!(f, Frame::Log(_)))).unwrap();
    }
    assert!(!p.mux.is_closed());
}

/// SECURITY.md: the receive window promised over all streams of all tunnels is capped
/// (`limits.window_budget`); peers can't open streams past it, and closing gives it back.
#[tokio::test]
async fn the_window_budget_caps_streams_across_tunnels() {
    let window = 64 * 1024;
    let budget = sgw::mux::WindowBudget::new(3 * u64::from(window));
    let cfg = MuxConfig {
        role: Role::Client,
        initial_window: window,
        max_window: window,
        window_budget: budget.clone(),
        ..MuxConfig::default()
    };
    let mut a = Peer::with(cfg.clone());
    let mut b = Peer::with(cfg);
    a.send(&[open(1, window), open(3, window)]).await;
    let a1 = a.accept().await;
    let _a3 = a.accept().await;
    b.send(&[open(1, window), open(3, window)]).await;
    let _b1 = b.accept().await;
    let f = b
        .expect(|f| matches!(f, Frame::OpenErr { id: 3, .. }))
        .await;
    assert!(
        matches!(f, Frame::OpenErr { reason: Reason::Limit, ref message, .. } if message.contains("window budget")),
        "{f:?}"
    );
    assert_eq!(budget.committed(), 3 * u64::from(window));
    // A stream that ends gives its window back: the next one opens.
    drop(a1);
    assert_eq!(budget.committed(), 2 * u64::from(window));
    // So does one the peer resets, accepted or still waiting: opening and resetting streams
    // in a loop must not use the budget up.
    a.send(&[
        open(5, window),
        Frame::Reset {
            id: 5,
            reason: Reason::Reset,
            message: String::new(),
        },
    ])
    .await;
    let gone = tokio::time::timeout(T, a.events.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        gone.accept().await.is_err(),
        "the reset stream comes out failed"
    );
    assert_eq!(budget.committed(), 2 * u64::from(window));
    a.send(&[open(7, window)]).await;
    let a7 = a.accept().await;
    a.send(&[Frame::Reset {
        id: 7,
        reason: Reason::Reset,
        message: String::new(),
    }])
    .await;
    // The reader gives the window back before it fails the stream.
    let r = tokio::time::timeout(T, a7.recv())
        .await
        .expect("the reset in time");
    assert!(r.is_err(), "{r:?}");
    assert_eq!(budget.committed(), 2 * u64::from(window));
    drop(a7);
    assert_eq!(budget.committed(), 2 * u64::from(window));
    b.send(&[open(5, window)]).await;
    let _b5 = b.accept().await;
    assert!(!a.mux.is_closed() && !b.mux.is_closed());
    // A locally opened stream is refused the same way, with a reason.
    let err = a
        .mux
        .open(&OpenMeta {
            dest: "d".into(),
            caller: "127.0.0.1:1".into(),
            compress: None,
            target: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::Limit, "{err}");
}

/// The next message's DATA bytes of stream 1 (the bulk one), and whether stream 3's DATA (the
/// small write) is in it.
async fn bulk_bytes_then_small(p: &mut Peer) -> (usize, bool) {
    let msg = tokio::time::timeout(T, p.from_mux.next())
        .await
        .expect("message in time")
        .expect("mux writer open");
    let (mut bulk_bytes, mut small) = (0, false);
    decode_message(&msg, |f| match f {
        Frame::Data { id: 1, data } => bulk_bytes += data.len(),
        Frame::Data { id: 3, .. } => small = true,
        _ => {}
    })
    .unwrap();
    (bulk_bytes, small)
}

/// A bulk stream with plenty of credit fills the tunnel: a small write on another stream must
/// reach the wire after at most a few messages' worth of the bulk stream's bytes, not after
/// everything the bulk stream has queued (each stream's send queue is bounded and the writer
/// takes turns between streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_does_not_queue_ahead_of_an_interactive_one() {
    let send_queue = 128 * 1024;
    let cfg = MuxConfig {
        role: Role::Client,
        send_queue,
        ..MuxConfig::default()
    };
    // One message waits in the transport: the rest queues inside the mux.
    let mut p = Peer::with_buffer(cfg, 1);
    let credit = 32 * 1024 * 1024;
    p.send(&[open(1, credit), open(3, credit)]).await;
    let bulk = p.accept().await;
    let interactive = p.accept().await;
    let total = 24 * 1024 * 1024;
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
        for _ in 0..total / chunk.len() {
            bulk.send(chunk.clone()).await.unwrap();
        }
        bulk
    });
    // The bulk stream is in full flow: its queue and the transport are full.
    let mut seen = 0;
    while seen < 2 * 1024 * 1024 {
        seen += bulk_bytes_then_small(&mut p).await.0;
    }
    interactive.send(Bytes::from_static(b"PING")).await.unwrap();
    let mut ahead = 0;
    loop {
        let (b, small) = bulk_bytes_then_small(&mut p).await;
        ahead += b;
        if small {
            break;
        }
        assert!(seen + ahead < total, "the small write never came");
    }
    // At most the transport's message, the writer's batch and one turn of the bulk stream.
    let bound = 4 * sgw::mux::BATCH_BYTES;
    assert!(
        ahead <= bound,
        "{ahead} bytes of the bulk stream went ahead of a 4-byte write (bound {bound})"
    );
    // The bulk stream still gets all its bytes through.
    while seen + ahead < total {
        ahead += bulk_bytes_then_small(&mut p).await.0;
    }
    let bulk = tokio::time::timeout(T, sender).await.unwrap().unwrap();
    assert!(!p.mux.is_closed());
    drop((bulk, interactive));
}

/// SECURITY.md: a peer that stops reading makes the streams of its tunnel hold at most
/// `tunnel_send_queue` bytes together (each stream's own queue is smaller, but there may be
/// thousands), and closing the tunnel then frees them and stops its writer although the peer
/// still reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_makes_a_tunnel_queue_a_bounded_amount() {
    let budget = 1024 * 1024;
    let cfg = MuxConfig {
        role: Role::Client,
        send_queue: 128 * 1024,
        tunnel_send_queue: budget,
        ..MuxConfig::default()
    };
    // The test never reads: one message fits in the transport, one more in the writer.
    let mut p = Peer::with_buffer(cfg, 1);
    let streams = 20u32;
    let credit = 4 * 1024 * 1024;
    let opens: Vec<_> = (0..streams).map(|i| open(2 * i + 1, credit)).collect();
    p.send(&opens).await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut senders = Vec::new();
    for _ in 0..streams {
        let s = p.accept().await;
        let (sent, progress) = (sent.clone(), progress.clone());
        senders.push(tokio::spawn(async move {
            let chunk = Bytes::from(vec![b's'; 64 * 1024]);
            loop {
                if let Err(e) = s.send(chunk.clone()).await {
                    return e;
                }
                sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                progress.notify_one();
            }
        }));
    }
    // Wait until every sender is stuck: no progress for 300 ms, at most T in all.
    let deadline = Instant::now() + T;
    while tokio::time::timeout(Duration::from_millis(300), progress.notified())
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "senders never stopped");
    }
    let queued = sent.load(std::sync::atomic::Ordering::Relaxed);
    // The budget, plus what the writer took: a batch in the transport, one in the writer.
    let bound = budget + 4 * sgw::mux::BATCH_BYTES;
    assert!(
        queued <= bound,
        "{queued} bytes queued by {streams} streams of a tunnel nobody reads (bound {bound})"
    );
    // Closing ends every sender and the writer, though the peer still reads nothing.
    p.mux.close(Reason::Shutdown, "test over");
    for s in senders {
        let e = tokio::time::timeout(T, s)
            .await
            .expect("sender ended")
            .unwrap();
        assert_eq!(e.reason(), Reason::TunnelLost, "{e}");
    }
    tokio::time::timeout(T, p.mux.flushed())
        .await
        .expect("the writer stopped");
}

/// Bytes stream `i` sends in direction `dir`, so a receiver can tell any loss or mix-up.
fn pattern(i: usize, dir: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k * 7 + i * 13 + dir as usize) as u8)
        .collect()
}

/// Senders take the tunnel's sending end themselves when it is free and leave their frames
/// to whoever holds it otherwise: with many streams sending both ways at once, in pieces of
/// odd sizes that small windows split further, every byte must still arrive, in order, and
/// no stream may be left waiting for good (a PING answer would only rescue a stranded frame
/// within a keepalive tick, so this guards integrity and deadlocks, not short stalls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_sending_both_ways_deliver_every_byte() {
    const STREAMS: usize = 32;
    const LEN: usize = 384 * 1024;
    let cfg = |role| MuxConfig {
        role,
        initial_window: 24 * 1024,
        max_window: 24 * 1024,
        send_queue: 32 * 1024,
        tunnel_send_queue: 256 * 1024,
        ..MuxConfig::default()
    };
    let ((ar, aw), (br, bw)) = memory::link(Duration::ZERO);
    let (a, _ae) = Mux::start(ar, aw, cfg(Role::Gateway));
    let (_b, mut be) = Mux::start(br, bw, cfg(Role::Client));
    // Each side sends its pattern and reads the other's, on the same stream, at once.
    async fn exchange(s: sgw::mux::MuxStream, i: usize, out: u8, inn: u8) -> Result<(), String> {
        let mine = Bytes::from(pattern(i, out, LEN));
        let send = async {
            let mut at = 0;
            let mut piece = 1 + i * 997 % 70_000;
            while at < LEN {
                let n = piece.min(LEN - at);
                s.send(mine.slice(at..at + n))
                    .await
                    .map_err(|e| e.to_string())?;
                at += n;
                piece = 1 + (piece * 31 + 17) % 90_000;
            }
            s.finish().await.map_err(|e| e.to_string())
        };
        let recv = async {
            let mut got = Vec::with_capacity(LEN);
            while let Some(b) = s.recv().await.map_err(|e| e.to_string())? {
                got.extend_from_slice(&b);
            }
            if got != pattern(i, inn, LEN) {
                return Err(format!(
                    "stream {i}: {} bytes, not what was sent",
                    got.len()
                ));
            }
            Ok(())
        };
        tokio::try_join!(send, recv).map(|_| ())
    }
    let accepting = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let inc = be.incoming.recv().await.expect("an open");
            let i: usize = inc.meta.caller.parse().expect("the stream's index");
            let s = inc.accept().await.expect("accepted");
            tasks.push(tokio::spawn(exchange(s, i, 1, 0)));
        }
        tasks
    });
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let meta = OpenMeta {
            dest: "d".into(),
            caller: i.to_string(),
            compress: None,
            target: None,
        };
        let s = a.open(&meta).await.expect("opened");
        tasks.push(tokio::spawn(exchange(s, i, 0, 1)));
    }
    let done = async {
        tasks.extend(accepting.await.expect("accepting"));
        for t in tasks {
            t.await.expect("no panic")?;
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(60), done).await {
        Ok(r) => r.expect("every byte arrives"),
        Err(_) => panic!("streams stalled: frames were left with nobody to send them"),
    }
}

#[tokio::test]
async fn recv_batch_takes_all_queued_and_gives_credit_back_only_once_written() {
    let mut p = Peer::new(Role::Client, 64 * 1024);
    p.send(&[open(1, 65536)]).await;
    let s = p.accept().await;
    p.expect(|f| matches!(f, Frame::OpenOk { id: 1, .. })).await;
    let sizes = [10_000usize, 20_000, 30_000];
    let frames: Vec<Frame> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Frame::Data {
            id: 1,
            data: Bytes::from(vec![i as u8; n]),
        })
        .collect();
    p.send(&frames).await;
    let mut got = Vec::new();
    // One message's frames are dispatched together; a batch may still start with the first.
    // At most two chunks per call, as asked.
    while got.iter().map(Bytes::len).sum::<usize>() < 60_000 {
        let before = got.len();
        assert!(tokio::time::timeout(T, s.recv_batch(&mut got, 2))
            .await
            .unwrap()
            .unwrap());
        assert!(
            (1..=2).contains(&(got.len() - before)),
            "{}",
            got.len() - before
        );
    }
    assert_eq!(got.len(), sizes.len());
    for (i, (c, &n)) in got.iter().zip(&sizes).enumerate() {
        assert_eq!(c.len(), n);
        assert!(c.iter().all(|&b| b == i as u8));
    }
    // Handed out but not written: still held, and still counted.
    assert_eq!(p.buffered(), 60_000);
    // Control frames leave in the order they were queued: no WINDOW for the stream may come
    // before the answer to a PING sent now, as the bytes were not written yet.
    p.send(&[Frame::Ping(42)]).await;
    loop {
        let msg = tokio::time::timeout(T, p.from_mux.next())
            .await
            .unwrap()
            .unwrap();
        let mut frames = Vec::new();
        decode_message(&msg, |f| frames.push(f)).unwrap();
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, Frame::Window { id: 1, .. })),
            "credit came back before the bytes were written: {frames:?}"
        );
        if frames.iter().any(|f| matches!(f, Frame::Pong(42))) {
            break;
        }
    }
    s.written(60_000);
    assert_eq!(p.buffered(), 0);
    let w = p.expect(|f| matches!(f, Frame::Window { id: 1, .. })).await;
    assert!(
        matches!(w, Frame::Window { increment, .. } if increment >= 60_000),
        "{w:?}"
    );
    // The peer finishes: the batch reports the end.
    p.send(&[Frame::Fin { id: 1 }]).await;
    got.clear();
    assert!(!tokio::time::timeout(T, s.recv_batch(&mut got, 2))
        .await
        .unwrap()
        .unwrap());
    assert!(got.is_empty());
}

/// Small sends of streams woken together share a message (`writer::Coalesce`): many clients
/// with a small request each cost the tunnel a few messages, not one each.
#[tokio::test]
async fn small_sends_of_streams_woken_together_share_a_message() {
    const STREAMS: u32 = 8;
    let mut p = Peer::with_buffer(
        MuxConfig {
            role: Role::Client,
            initial_window: 65536,
            max_window: 65536,
            ..MuxConfig::default()
        },
        256,
    );
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        p.send(&[open(id, 65536)]).await;
        streams.push(p.accept().await);
        p.expect(|f| matches!(f, Frame::OpenOk { id: got, .. } if *got == id))
            .await;
    }
    // All woken at once, as by one poll of their sockets.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(STREAMS as usize));
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                s.send(Bytes::from(format!("request {i}"))).await.unwrap();
                s
            })
        })
        .collect();
    let mut got = Vec::new();
    let mut messages = 0;
    while got.len() < STREAMS as usize {
        let msg = tokio::time::timeout(T, p.from_mux.next())
            .await
            .expect("a message in time")
            .expect("mux writer open");
        let mut data = Vec::new();
        decode_message(&msg, |f| {
            if let Frame::Data { id, data: d } = f {
                data.push((id, d));
            }
        })
        .unwrap();
        messages += usize::from(!data.is_empty());
        got.extend(data);
    }
    got.sort();
    for (i, (id, d)) in got.iter().enumerate() {
        assert_eq!(*id, 2 * i as u32 + 1);
        assert_eq!(&d[..], format!("request {i}").as_bytes());
    }
    assert!(
        messages <= 3,
        "{STREAMS} small frames took {messages} messages"
    );
    for t in tasks {
        let _stream = tokio::time::timeout(T, t).await.unwrap().unwrap();
    }
}

/// Whether `send` let the tasks ready before it run first (`writer::Coalesce`'s wait): a
/// task spawned just before has run by the time `send` returns only if `send` yielded.
async fn send_waited(s: &sgw::mux::MuxStream, data: &'static [u8]) -> bool {
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let task = tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
    s.send(Bytes::from_static(data)).await.unwrap();
    let waited = ran.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(T, task).await.unwrap().unwrap();
    waited
}

/// Beside a bulk stream, an interactive stream's small send goes at once: the tasks ready
/// first are bulk relays, and waiting behind them is what made a request's p99 beside bulk
/// worse (`writer::Coalesce`). On a quiet tunnel the same send may wait (a probe for other
/// streams sending at once), which is what shows the check can see a wait.
#[tokio::test]
async fn beside_bulk_an_interactive_send_does_not_wait_for_other_tasks() {
    let mut p = Peer::with_buffer(
        MuxConfig {
            role: Role::Client,
            ..MuxConfig::default()
        },
        256,
    );
    let credit = 4 * 1024 * 1024;
    let mut streams = Vec::new();
    for id in [1, 3] {
        p.send(&[open(id, credit)]).await;
        streams.push(p.accept().await);
        p.expect(|f| matches!(f, Frame::OpenOk { id: got, .. } if *got == id))
            .await;
    }
    let (interactive, bulk) = (&streams[0], &streams[1]);
    let data = |want: u32| move |f: &Frame| matches!(f, Frame::Data { id, .. } if *id == want);
    // A quiet tunnel's first small send probes.
    assert!(send_waited(interactive, b"PING").await);
    p.expect(data(1)).await;
    // While bulk frames keep going out, no small send waits (a probe would come every 64).
    for _ in 0..4 {
        bulk.send(Bytes::from(vec![b'b'; 64 * 1024])).await.unwrap();
        p.expect(data(3)).await;
        for _ in 0..32 {
            assert!(!send_waited(interactive, b"PING").await);
            p.expect(data(1)).await;
        }
    }
    // The same with the bulk stream sending at the same time, well compressed or short of
    // credit: its frames are small, its sends are not. Long enough for a probe to come due
    // if its frames were taken for interactive ones.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let bulk = streams.pop().unwrap();
        let stop = stop.clone();
        tokio::spawn(async move {
            for _ in 0..10_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let read = 64 * 1024;
                bulk.send_read(Bytes::from(vec![b'z'; 100]), read)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            bulk
        })
    };
    for _ in 0..200 {
        assert!(!send_waited(&streams[0], b"PING").await);
        p.expect(data(1)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _bulk = tokio::time::timeout(T, sender).await.unwrap().unwrap();
    assert!(!p.mux.is_closed());
}

/// An endpoint socket for the reader's direct writes that takes at most `max` bytes a call.
struct TestSink {
    got: std::sync::Mutex<Vec<u8>>,
    max: std::sync::atomic::AtomicUsize,
}

impl TestSink {
    fn got(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }
    fn take_at_most(&self, max: usize) {
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }
}

impl sgw::mux::DirectSink for TestSink {
    fn write_now(&self, data: &[u8]) -> usize {
        let k = data
            .len()
            .min(self.max.load(std::sync::atomic::Ordering::Relaxed));
        self.got.lock().unwrap().extend_from_slice(&data[..k]);
        k
    }
}

/// Every frame sent so far has been dispatched: the reader handles a tunnel's frames in order.
async fn dispatched(p: &mut Peer, n: u64) {
    p.send(&[Frame::Ping(n)]).await;
    p.expect(|f| matches!(f, Frame::Pong(v) if *v == n)).await;
}

#[tokio::test]
async fn the_reader_writes_small_data_to_the_socket_itself_only_when_nothing_waits_before_it() {
    let mut p = Peer::new(Role::Client, 64 * 1024);
    p.send(&[open(1, 65536)]).await;
    let s = p.accept().await;
    p.expect(|f| matches!(f, Frame::OpenOk { id: 1, .. })).await;
    let sink = std::sync::Arc::new(TestSink {
        got: Default::default(),
        max: usize::MAX.into(),
    });
    s.set_sink(Some(sink.clone()));
    let data = |b: &[u8]| Frame::Data {
        id: 1,
        data: Bytes::copy_from_slice(b),
    };
    // Small frames go straight to the socket, in order, and nothing is held: their credit
    // comes back though the stream is never read.
    let mut want = Vec::new();
    for i in 0..5u8 {
        let chunk = vec![i; 8 * 1024];
        want.extend_from_slice(&chunk);
        p.send(&[data(&chunk)]).await;
    }
    let w = p.expect(|f| matches!(f, Frame::Window { id: 1, .. })).await;
    assert!(
        matches!(w, Frame::Window { increment, .. } if increment >= 32 * 1024),
        "{w:?}"
    );
    dispatched(&mut p, 1).await;
    assert_eq!(sink.got(), want);
    assert_eq!(p.buffered(), 0);
    // A bulk-sized frame is the relay's to write. While it waits, and while the relay holds it
    // unwritten, small frames behind it must wait their turn too, or they would reach the
    // socket first.
    p.send(&[data(&[7; 20_000])]).await;
    dispatched(&mut p, 2).await;
    p.send(&[data(b"abc")]).await;
    dispatched(&mut p, 3).await;
    assert_eq!(sink.got().len(), want.len(), "the sink jumped the queue");
    let mut batch = Vec::new();
    assert!(take(&s, &mut batch).await);
    assert_eq!(
        batch,
        [Bytes::from(vec![7; 20_000]), Bytes::from_static(b"abc")]
    );
    p.send(&[data(b"def")]).await;
    dispatched(&mut p, 4).await;
    assert_eq!(
        sink.got().len(),
        want.len(),
        "the sink jumped a taken batch"
    );
    batch.clear();
    assert!(take(&s, &mut batch).await);
    assert_eq!(batch, [Bytes::from_static(b"def")]);
    s.written(20_006);
    assert_eq!(p.buffered(), 0);
    // One direct write per stream and message: a message of many small frames is written by
    // the relay in one call, not one write each.
    p.send(&[data(b"1"), data(b"2"), data(b"3")]).await;
    dispatched(&mut p, 5).await;
    want.extend_from_slice(b"1");
    assert_eq!(sink.got(), want);
    batch.clear();
    assert!(take(&s, &mut batch).await);
    assert_eq!(batch.concat(), b"23");
    s.written(2);
    // All written: the socket is next again. What it does not take waits for the relay.
    sink.take_at_most(2);
    p.send(&[data(b"ghij")]).await;
    dispatched(&mut p, 6).await;
    want.extend_from_slice(b"gh");
    assert_eq!(sink.got(), want);
    assert_eq!(p.buffered(), 2);
    batch.clear();
    assert!(take(&s, &mut batch).await);
    assert_eq!(batch, [Bytes::from_static(b"ij")]);
    s.written(2);
    // A socket that takes nothing now: the relay writes it all.
    sink.take_at_most(0);
    p.send(&[data(b"kl")]).await;
    dispatched(&mut p, 7).await;
    assert_eq!(sink.got(), want);
    batch.clear();
    assert!(take(&s, &mut batch).await);
    assert_eq!(batch, [Bytes::from_static(b"kl")]);
    s.written(2);
    // No socket any more: nothing goes to it, however much it would take.
    s.set_sink(None);
    sink.take_at_most(usize::MAX);
    p.send(&[data(b"mn")]).await;
    dispatched(&mut p, 8).await;
    assert_eq!(sink.got(), want);
    batch.clear();
    assert!(take(&s, &mut batch).await);
    assert_eq!(batch, [Bytes::from_static(b"mn")]);
    // A dropped stream lets go of its socket, whatever ended its relay.
    s.set_sink(Some(sink.clone()));
    assert_eq!(std::sync::Arc::strong_count(&sink), 2);
    drop(s);
    assert_eq!(std::sync::Arc::strong_count(&sink), 1);
}

/// `recv_batch` of up to 4 chunks, bounded in time.
async fn take(s: &sgw::mux::MuxStream, batch: &mut Vec<Bytes>) -> bool {
    tokio::time::timeout(T, s.recv_batch(batch, 4))
        .await
        .expect("data in time")
        .unwrap()
}
