//! A stream the peer opened: its OPEN metadata, waiting for this side to accept or refuse it.

use super::stream::{MuxStream, StreamError};
use crate::proto::{Frame, OpenMeta, Reason};

/// A stream the peer opened, waiting for this side's decision.
pub struct Incoming {
    pub meta: OpenMeta,
    stream: MuxStream,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.stream.id())
            .field("meta", &self.meta)
            .finish()
    }
}

impl Incoming {
    pub(crate) fn new(meta: OpenMeta, stream: MuxStream) -> Self {
        Incoming { meta, stream }
    }

    pub fn id(&self) -> u32 {
        self.stream.id()
    }

    /// The span one accepted stream's log lines carry, the same on both sides:
    /// `direction` is `forward` (a caller at the gateway) or `reverse` (on-prem). `dest.addr`
    /// and the `http.*` counts are recorded as they become known.
    pub fn span(&self, client_id: &str, direction: &'static str) -> tracing::Span {
        tracing::info_span!(
            "stream",
            client.id = %client_id,
            stream.id = self.id(),
            dest.id = %crate::telemetry::clean(&self.meta.dest, 128),
            caller.addr = %crate::telemetry::clean(&self.meta.caller, 64),
            dest.addr = tracing::field::Empty,
            http.requests = tracing::field::Empty,
            http.denied = tracing::field::Empty,
            direction,
        )
    }

    /// Accepts the stream (OPEN_OK) and returns it.
    pub async fn accept(self) -> Result<MuxStream, StreamError> {
        let s = &self.stream;
        s.accepting()?;
        // In the stream's own queue, so its DATA can never reach the wire first.
        s.queue_frame(Frame::OpenOk {
            id: s.id(),
            window: s.mux.cfg.initial_window,
        })?;
        Ok(self.stream)
    }

    /// Refuses without waiting for queue space (used by the reader, which must not block).
    pub(crate) fn refuse_now(self, reason: Reason, message: &str) {
        let s = &self.stream;
        s.forget();
        s.mux.push_urgent(Frame::OpenErr {
            id: s.id(),
            reason,
            message: message.to_owned(),
        });
    }

    /// Refuses the stream (OPEN_ERR) with a reason the gateway shows the caller.
    pub async fn reject(self, reason: Reason, message: &str) {
        self.refuse_now(reason, message);
    }
}
