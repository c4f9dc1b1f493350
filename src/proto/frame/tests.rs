use super::*;

fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello(Bytes::from_static(b"{\"a\":1}")),
        Frame::Welcome(Bytes::from_static(b"{}")),
        Frame::Open {
            id: 1,
            window: 262144,
            meta: Bytes::from_static(b"{\"dest\":\"d\"}"),
        },
        Frame::OpenOk {
            id: 1,
            window: 65536,
        },
        Frame::OpenErr {
            id: 3,
            reason: Reason::AclDenied,
            message: "rule 4".into(),
        },
        Frame::Data {
            id: 1,
            data: Bytes::from(vec![7u8; 1000]),
        },
        Frame::Fin { id: 1 },
        Frame::Reset {
            id: 5,
            reason: Reason::Other(200),
            message: String::new(),
        },
        Frame::Window {
            id: 1,
            increment: 131072,
        },
        Frame::Ping(42),
        Frame::Pong(u64::MAX),
        Frame::GoAway {
            reason: Reason::Shutdown,
            message: "bye".into(),
        },
        Frame::Config(Bytes::from_static(b"{\"destinations\":[]}")),
        Frame::Log(Bytes::from_static(b"{}")),
    ]
}

fn encode_all(frames: &[Frame]) -> Bytes {
    let mut buf = BytesMut::new();
    for f in frames {
        encode_frame(f, &mut buf);
    }
    buf.freeze()
}

fn decode_all(msg: &Bytes) -> Result<Vec<Frame>, ProtoError> {
    let mut out = Vec::new();
    decode_message(msg, |f| out.push(f))?;
    Ok(out)
}

#[test]
fn round_trip_every_type_in_one_message() {
    let frames = samples();
    let msg = encode_all(&frames);
    assert_eq!(
        msg.len(),
        frames.iter().map(Frame::encoded_len).sum::<usize>()
    );
    assert_eq!(decode_all(&msg).unwrap(), frames);
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let msg = encode_all(&samples());
    for cut in 0..msg.len() {
        let part = msg.slice(..cut);
        let res = decode_all(&part);
        // Only cuts on a frame boundary decode; all others must be reported.
        let boundary = {
            let mut off = 0;
            let mut ok = cut == 0;
            for f in samples() {
                off += f.encoded_len();
                ok |= off == cut;
            }
            ok
        };
        if cut == 0 {
            assert_eq!(res, Err(ProtoError::Empty));
        } else if boundary {
            assert!(res.is_ok(), "cut {cut}");
        } else {
            assert!(res.is_err(), "cut {cut} decoded");
        }
    }
}

fn raw(ty: u8, id: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(ty);
    b.put_u8(0);
    b.put_u32(id);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

#[test]
fn hand_written_malformed_frames() {
    let cases: Vec<(Bytes, &str)> = vec![
        (raw(0x7f, 1, b""), "unknown frame type 0x7f"),
        (raw(0x06, 0, b"x"), "stream id 0"),
        (raw(0x0A, 3, &[0; 8]), "stream id 3"),
        (raw(0x06, 1, b""), "outside 1..=65536"),
        (raw(0x06, 1, &vec![0; MAX_DATA + 1]), "outside 1..=65536"),
        (raw(0x09, 1, &[0, 0, 0, 0]), "WINDOW increment 0"),
        (
            raw(0x09, 1, &[0x80, 0, 0, 0]),
            "WINDOW increment 2147483648",
        ),
        (raw(0x04, 1, &[0, 0]), "outside 4..=4"),
        (raw(0x07, 1, b"x"), "outside 0..=0"),
        (raw(0x08, 1, &[9, 0xff, 0xfe]), "not UTF-8"),
        (raw(0x0A, 0, &[1, 2, 3]), "outside 8..=8"),
        (raw(0x03, 1, &[0, 0, 0, 1]), "outside 6..="),
        (
            Bytes::from_static(&[6, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1]),
            "declares 9 payload bytes",
        ),
        (Bytes::from_static(&[6, 0, 0]), "truncated frame header"),
    ];
    for (msg, want) in cases {
        let err = decode_all(&msg).expect_err(want).to_string();
        assert!(err.contains(want), "got {err:?}, want {want:?}");
    }
}

#[test]
fn reason_codes_round_trip_and_unknown_is_kept() {
    for c in 0..=255u8 {
        assert_eq!(Reason::from_code(c).code(), c);
    }
    assert_eq!(Reason::from_code(99).to_string(), "other(99)");
    assert_eq!(Reason::AclDenied.to_string(), "acl_denied");
}

#[test]
fn long_reason_text_is_cut_on_a_char_boundary() {
    let f = Frame::Reset {
        id: 1,
        reason: Reason::Internal,
        message: "é".repeat(2000),
    };
    let msg = encode_all(std::slice::from_ref(&f));
    match decode_all(&msg).unwrap().pop() {
        Some(Frame::Reset { message, .. }) => assert!(message.len() <= MAX_REASON_TEXT),
        other => panic!("{other:?}"),
    }
}

/// CONFIG carries private keys and passwords; DATA is the caller's traffic. Neither reaches
/// `Debug` output, which panics and error paths may print.
#[test]
fn debug_output_shows_payload_lengths_not_payloads() {
    let secret = "-----BEGIN PRIVATE KEY----- hunter2";
    let frames = [
        Frame::Config(Bytes::from(format!("{{\"key\":\"{secret}\"}}"))),
        Frame::Data {
            id: 3,
            data: Bytes::from(secret),
        },
        Frame::Open {
            id: 5,
            window: 9,
            meta: Bytes::from(secret),
        },
        Frame::Log(Bytes::from(secret)),
    ];
    for f in &frames {
        let shown = format!("{f:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(f.name()), "{shown}");
        assert!(shown.contains(" bytes>"), "{shown}");
    }
    assert_eq!(
        format!("{:?}", frames[1]),
        format!("DATA {{ id: 3, data: <{} bytes> }}", secret.len())
    );
}
