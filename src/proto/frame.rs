//! Binary frame codec (PROTOCOL.md §2).

use bytes::{BufMut, Bytes, BytesMut};

use super::{MAX_CONTROL_JSON, MAX_CREDIT, MAX_DATA, MAX_LOG_JSON, MAX_OPEN_JSON, MAX_REASON_TEXT};

/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 10;

/// A frame type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Welcome = 0x02,
    Open = 0x03,
    OpenOk = 0x04,
    OpenErr = 0x05,
    Data = 0x06,
    Fin = 0x07,
    Reset = 0x08,
    Window = 0x09,
    Ping = 0x0A,
    Pong = 0x0B,
    GoAway = 0x0C,
    Config = 0x0D,
    Log = 0x0E,
}

impl FrameType {
    fn from_u8(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Welcome,
            0x03 => Open,
            0x04 => OpenOk,
            0x05 => OpenErr,
            0x06 => Data,
            0x07 => Fin,
            0x08 => Reset,
            0x09 => Window,
            0x0A => Ping,
            0x0B => Pong,
            0x0C => GoAway,
            0x0D => Config,
            0x0E => Log,
            _ => return None,
        })
    }

    fn is_connection_level(self) -> bool {
        use FrameType::*;
        matches!(self, Hello | Welcome | Ping | Pong | GoAway | Config | Log)
    }
}

/// Why a stream or tunnel ended, or an open failed (PROTOCOL.md "Reason codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    AclDenied,
    Refused,
    Timeout,
    Dns,
    Tls,
    Proxy,
    Limit,
    UnknownDest,
    Protocol,
    Internal,
    Shutdown,
    Reset,
    Unreachable,
    TunnelLost,
    /// The tunnel's credentials stopped being good (token revoked, expired, id disabled).
    Auth,
    Other(u8),
}

impl Reason {
    pub fn code(self) -> u8 {
        use Reason::*;
        match self {
            AclDenied => 1,
            Refused => 2,
            Timeout => 3,
            Dns => 4,
            Tls => 5,
            Proxy => 6,
            Limit => 7,
            UnknownDest => 8,
            Protocol => 9,
            Internal => 10,
            Shutdown => 11,
            Reset => 12,
            Unreachable => 13,
            TunnelLost => 14,
            Auth => 15,
            Other(c) => c,
        }
    }

    pub fn from_code(c: u8) -> Self {
        use Reason::*;
        match c {
            1 => AclDenied,
            2 => Refused,
            3 => Timeout,
            4 => Dns,
            5 => Tls,
            6 => Proxy,
            7 => Limit,
            8 => UnknownDest,
            9 => Protocol,
            10 => Internal,
            11 => Shutdown,
            12 => Reset,
            13 => Unreachable,
            14 => TunnelLost,
            15 => Auth,
            c => Other(c),
        }
    }

    /// Stable name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        use Reason::*;
        match self {
            AclDenied => "acl_denied",
            Refused => "refused",
            Timeout => "timeout",
            Dns => "dns",
            Tls => "tls",
            Proxy => "proxy",
            Limit => "limit",
            UnknownDest => "unknown_dest",
            Protocol => "protocol",
            Internal => "internal",
            Shutdown => "shutdown",
            Reset => "reset",
            Unreachable => "unreachable",
            TunnelLost => "tunnel_lost",
            Auth => "auth",
            Other(_) => "other",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Other(c) => write!(f, "other({c})"),
            r => f.write_str(r.as_str()),
        }
    }
}

/// One decoded frame. Payloads borrow the message buffer (`Bytes` slices, no copy).
///
/// `Debug` prints payloads as their length only: CONFIG carries private keys and passwords
/// (`Hidden` in the decoded form), and DATA is the caller's traffic.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Bytes),
    Welcome(Bytes),
    Open {
        id: u32,
        window: u32,
        meta: Bytes,
    },
    OpenOk {
        id: u32,
        window: u32,
    },
    OpenErr {
        id: u32,
        reason: Reason,
        message: String,
    },
    Data {
        id: u32,
        data: Bytes,
    },
    Fin {
        id: u32,
    },
    Reset {
        id: u32,
        reason: Reason,
        message: String,
    },
    Window {
        id: u32,
        increment: u32,
    },
    Ping(u64),
    Pong(u64),
    GoAway {
        reason: Reason,
        message: String,
    },
    Config(Bytes),
    Log(Bytes),
}

/// A payload in `Debug` output: its length, never its bytes.
struct Len(usize);

impl std::fmt::Debug for Len {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct(self.name());
        match self {
            Frame::Hello(b) | Frame::Welcome(b) | Frame::Config(b) | Frame::Log(b) => {
                d.field("payload", &Len(b.len()))
            }
            Frame::Open { id, window, meta } => d
                .field("id", id)
                .field("window", window)
                .field("meta", &Len(meta.len())),
            Frame::OpenOk { id, window } => d.field("id", id).field("window", window),
            Frame::OpenErr {
                id,
                reason,
                message,
            }
            | Frame::Reset {
                id,
                reason,
                message,
            } => d
                .field("id", id)
                .field("reason", reason)
                .field("message", message),
            Frame::Data { id, data } => d.field("id", id).field("data", &Len(data.len())),
            Frame::Fin { id } => d.field("id", id),
            Frame::Window { id, increment } => d.field("id", id).field("increment", increment),
            Frame::Ping(n) | Frame::Pong(n) => d.field("opaque", n),
            Frame::GoAway { reason, message } => {
                d.field("reason", reason).field("message", message)
            }
        };
        d.finish()
    }
}

impl Frame {
    /// Stream id, 0 for connection-level frames.
    pub fn stream_id(&self) -> u32 {
        match self {
            Frame::Open { id, .. }
            | Frame::OpenOk { id, .. }
            | Frame::OpenErr { id, .. }
            | Frame::Data { id, .. }
            | Frame::Fin { id }
            | Frame::Reset { id, .. }
            | Frame::Window { id, .. } => *id,
            _ => 0,
        }
    }

    /// Bytes this frame occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Hello(b) | Frame::Welcome(b) | Frame::Config(b) | Frame::Log(b) => b.len(),
                Frame::Open { meta, .. } => 4 + meta.len(),
                Frame::OpenOk { .. } | Frame::Window { .. } => 4,
                Frame::OpenErr { message, .. }
                | Frame::Reset { message, .. }
                | Frame::GoAway { message, .. } => 1 + clamp_text(message).len(),
                Frame::Data { data, .. } => data.len(),
                Frame::Fin { .. } => 0,
                Frame::Ping(_) | Frame::Pong(_) => 8,
            }
    }

    /// The frame type's name as PROTOCOL.md writes it, for messages and logs.
    pub fn name(&self) -> &'static str {
        match self.frame_type() {
            FrameType::Hello => "HELLO",
            FrameType::Welcome => "WELCOME",
            FrameType::Open => "OPEN",
            FrameType::OpenOk => "OPEN_OK",
            FrameType::OpenErr => "OPEN_ERR",
            FrameType::Data => "DATA",
            FrameType::Fin => "FIN",
            FrameType::Reset => "RESET",
            FrameType::Window => "WINDOW",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::GoAway => "GO_AWAY",
            FrameType::Config => "CONFIG",
            FrameType::Log => "LOG",
        }
    }

    fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Open { .. } => FrameType::Open,
            Frame::OpenOk { .. } => FrameType::OpenOk,
            Frame::OpenErr { .. } => FrameType::OpenErr,
            Frame::Data { .. } => FrameType::Data,
            Frame::Fin { .. } => FrameType::Fin,
            Frame::Reset { .. } => FrameType::Reset,
            Frame::Window { .. } => FrameType::Window,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::GoAway { .. } => FrameType::GoAway,
            Frame::Config(_) => FrameType::Config,
            Frame::Log(_) => FrameType::Log,
        }
    }

    /// Would the peer's decoder accept this frame? The same limits as [`decode_message`], so
    /// a sender checks what it queues and can never make the peer close the tunnel.
    pub fn check(&self) -> Result<(), ProtoError> {
        let kind = self.frame_type();
        let len = self.encoded_len() - HEADER_LEN;
        let (min, max) = length_limits(kind);
        if len < min || len > max {
            return Err(ProtoError::BadLength {
                kind,
                len,
                min,
                max,
            });
        }
        match self {
            Frame::Window { increment, .. }
                if *increment == 0 || u64::from(*increment) > MAX_CREDIT =>
            {
                Err(ProtoError::BadIncrement(*increment))
            }
            Frame::Open { window, .. } | Frame::OpenOk { window, .. }
                if u64::from(*window) > MAX_CREDIT =>
            {
                Err(ProtoError::BadWindow(*window))
            }
            _ => Ok(()),
        }
    }
}

/// Errors found while decoding a message. Each is a tunnel-level protocol error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("truncated frame header at offset {offset}")]
    TruncatedHeader { offset: usize },
    #[error("frame at offset {offset} declares {len} payload bytes but only {left} remain")]
    TruncatedPayload {
        offset: usize,
        len: usize,
        left: usize,
    },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{kind:?} frame has stream id {id}, expected {expected}")]
    BadStreamId {
        kind: FrameType,
        id: u32,
        expected: &'static str,
    },
    #[error("{kind:?} frame payload of {len} bytes is outside {min}..={max}")]
    BadLength {
        kind: FrameType,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("WINDOW increment {0} is outside 1..=2^31-1")]
    BadIncrement(u32),
    #[error("initial window {0} is above 2^31-1")]
    BadWindow(u32),
    #[error("reason text is not UTF-8")]
    BadText,
    #[error("empty message")]
    Empty,
}

fn clamp_text(s: &str) -> &str {
    if s.len() <= MAX_REASON_TEXT {
        return s;
    }
    let mut end = MAX_REASON_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends `frame` to `buf`. Reason texts longer than the limit are cut at a char boundary;
/// every other payload must already respect the limits (the mux guarantees it).
pub fn encode_frame(frame: &Frame, buf: &mut BytesMut) {
    let (ty, id) = (frame.frame_type(), frame.stream_id());
    let len = frame.encoded_len() - HEADER_LEN;
    buf.reserve(HEADER_LEN + len);
    buf.put_u8(ty as u8);
    buf.put_u8(0);
    buf.put_u32(id);
    buf.put_u32(len as u32);
    match frame {
        Frame::Hello(b) | Frame::Welcome(b) | Frame::Config(b) | Frame::Log(b) => buf.put_slice(b),
        Frame::Open { window, meta, .. } => {
            buf.put_u32(*window);
            buf.put_slice(meta);
        }
        Frame::OpenOk { window, .. } => buf.put_u32(*window),
        Frame::Window { increment, .. } => buf.put_u32(*increment),
        Frame::OpenErr {
            reason, message, ..
        }
        | Frame::Reset {
            reason, message, ..
        }
        | Frame::GoAway { reason, message } => {
            buf.put_u8(reason.code());
            buf.put_slice(clamp_text(message).as_bytes());
        }
        Frame::Data { data, .. } => buf.put_slice(data),
        Frame::Fin { .. } => {}
        Frame::Ping(v) | Frame::Pong(v) => buf.put_u64(*v),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// An announced initial window: like credit, at most 2^31-1.
fn window(b: &[u8]) -> Result<u32, ProtoError> {
    let w = be32(b);
    if u64::from(w) > MAX_CREDIT {
        return Err(ProtoError::BadWindow(w));
    }
    Ok(w)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn length_limits(ty: FrameType) -> (usize, usize) {
    use FrameType::*;
    match ty {
        Hello | Welcome | Config => (2, MAX_CONTROL_JSON),
        Log => (2, MAX_LOG_JSON),
        Open => (4 + 2, 4 + MAX_OPEN_JSON),
        OpenOk | Window => (4, 4),
        OpenErr | Reset | GoAway => (1, 1 + MAX_REASON_TEXT),
        Data => (1, MAX_DATA),
        Fin => (0, 0),
        Ping | Pong => (8, 8),
    }
}

fn reason_and_text(p: &[u8]) -> Result<(Reason, String), ProtoError> {
    let reason = Reason::from_code(p[0]);
    let text = std::str::from_utf8(&p[1..]).map_err(|_| ProtoError::BadText)?;
    Ok((reason, text.to_owned()))
}

/// Decodes every frame of one WebSocket message, calling `f` for each in order.
///
/// Stops at the first malformed frame and returns its error; frames before it have been
/// delivered (the caller closes the tunnel either way).
pub fn decode_message(msg: &Bytes, mut f: impl FnMut(Frame)) -> Result<(), ProtoError> {
    if msg.is_empty() {
        return Err(ProtoError::Empty);
    }
    let mut off = 0usize;
    while off < msg.len() {
        let rest = &msg[off..];
        if rest.len() < HEADER_LEN {
            return Err(ProtoError::TruncatedHeader { offset: off });
        }
        let ty = FrameType::from_u8(rest[0]).ok_or(ProtoError::UnknownType(rest[0]))?;
        let id = be32(&rest[2..6]);
        let len = be32(&rest[6..10]) as usize;
        let left = rest.len() - HEADER_LEN;
        if len > left {
            return Err(ProtoError::TruncatedPayload {
                offset: off,
                len,
                left,
            });
        }
        let (min, max) = length_limits(ty);
        if len < min || len > max {
            return Err(ProtoError::BadLength {
                kind: ty,
                len,
                min,
                max,
            });
        }
        if ty.is_connection_level() != (id == 0) {
            let expected = if ty.is_connection_level() {
                "0"
            } else {
                "non-zero"
            };
            return Err(ProtoError::BadStreamId {
                kind: ty,
                id,
                expected,
            });
        }
        let start = off + HEADER_LEN;
        let payload = msg.slice(start..start + len);
        let p = &payload[..];
        let frame = match ty {
            FrameType::Hello => Frame::Hello(payload),
            FrameType::Welcome => Frame::Welcome(payload),
            FrameType::Config => Frame::Config(payload),
            FrameType::Log => Frame::Log(payload),
            FrameType::Open => Frame::Open {
                id,
                window: window(p)?,
                meta: payload.slice(4..),
            },
            FrameType::OpenOk => Frame::OpenOk {
                id,
                window: window(p)?,
            },
            FrameType::OpenErr => {
                let (reason, message) = reason_and_text(p)?;
                Frame::OpenErr {
                    id,
                    reason,
                    message,
                }
            }
            FrameType::Data => Frame::Data { id, data: payload },
            FrameType::Fin => Frame::Fin { id },
            FrameType::Reset => {
                let (reason, message) = reason_and_text(p)?;
                Frame::Reset {
                    id,
                    reason,
                    message,
                }
            }
            FrameType::Window => {
                let increment = be32(p);
                if increment == 0 || u64::from(increment) > MAX_CREDIT {
                    return Err(ProtoError::BadIncrement(increment));
                }
                Frame::Window { id, increment }
            }
            FrameType::Ping => Frame::Ping(be64(p)),
            FrameType::Pong => Frame::Pong(be64(p)),
            FrameType::GoAway => {
                let (reason, message) = reason_and_text(p)?;
                Frame::GoAway { reason, message }
            }
        };
        f(frame);
        off = start + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
