//! The process-wide receive-window budget (`limits.window_budget`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The receive-window bytes this process has promised its peers, over every stream of every
/// tunnel (`limits.window_budget`): all that peers could make it buffer at once. A stream
/// takes its initial window when it opens and any growth when its window grows; a stream
/// that would go over is refused (`limit`), growth is skipped.
#[derive(Debug)]
pub struct WindowBudget {
    committed: AtomicU64,
    cap: u64,
}

impl WindowBudget {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(WindowBudget {
            committed: AtomicU64::new(0),
            cap,
        })
    }

    /// Takes `n` bytes if they fit under the cap.
    pub(crate) fn take(&self, n: u64) -> bool {
        let before = self.committed.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) <= self.cap {
            return true;
        }
        self.committed.fetch_sub(n, Ordering::AcqRel);
        false
    }

    pub(crate) fn give(&self, n: u64) {
        self.committed.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes promised now.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }
}
