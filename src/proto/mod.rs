//! The tunnel wire format: frame types, the binary codec and the JSON control messages.
//!
//! `docs/PROTOCOL.md` is the specification; this module is its implementation and knows
//! nothing of sockets, tasks or streams. Decoding never panics on any input: every malformed
//! byte sequence becomes a [`ProtoError`].

mod frame;
mod messages;

pub use frame::{decode_message, encode_frame, Frame, FrameType, ProtoError, Reason, HEADER_LEN};
pub use messages::{
    ConfigPush, DestinationSpec, EndpointTls, Hello, Hidden, IpTableRuleSpec, LogPush, OpenMeta,
    Protocol, ProxySpec, Welcome, FEATURE_DEFLATE, FEATURE_EARLY_DATA, FEATURE_PROBE,
};

/// Protocol major version; part of the WebSocket subprotocol name.
pub const PROTO_MAJOR: u8 = 1;
/// Protocol minor version; additive changes only.
pub const PROTO_MINOR: u8 = 1;
/// The WebSocket subprotocol this build speaks.
pub const SUBPROTOCOL: &str = "sgw.v1";
/// Largest DATA payload.
pub const MAX_DATA: usize = 64 * 1024;
/// The DATA payload sgw cuts a bulk stream's reads into: 64 KiB less 1/256 of it. Two such
/// frames with their headers make a message ([`crate::mux::BATCH_BYTES`]) of eight whole TLS
/// records that fits two TCP segments on loopback, where two 64 KiB frames took a ninth
/// record of 30 bytes and a third segment (docs/PERFORMANCE.md, "Messages of whole TLS
/// records"). Not a wire limit: a peer may send any size up to [`MAX_DATA`].
pub const DATA_CHUNK: usize = MAX_DATA - MAX_DATA / 256;
/// Largest WebSocket message a peer may send.
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;
/// Largest CONFIG/HELLO/WELCOME payload.
pub const MAX_CONTROL_JSON: usize = 1024 * 1024;
/// Largest OPEN JSON part.
pub const MAX_OPEN_JSON: usize = 16 * 1024;
/// Largest reason message in OPEN_ERR/RESET/GO_AWAY.
pub const MAX_REASON_TEXT: usize = 1024;
/// Largest LOG payload.
pub const MAX_LOG_JSON: usize = 64 * 1024;
/// DATA bytes an opener may send on a stream before the OPEN_OK, to a peer that listed
/// `early_data` (PROTOCOL.md §4). No smaller than the smallest window a peer may announce
/// (`limits.stream_window` is at least 16 KiB), so the OPEN_OK's window always covers it.
pub const EARLY_DATA: u32 = 16 * 1024;
/// Largest credit a sender may hold for one stream.
pub const MAX_CREDIT: u64 = (1 << 31) - 1;
