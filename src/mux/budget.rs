//! Receive-window budgets: the process's (`limits.window_budget`) and, on the gateway, each
//! gateway id's share of it (`limits.window_budget_per_gateway`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The receive-window bytes this process has promised its peers, over every stream of every
/// tunnel (`limits.window_budget`): all that peers could make it buffer at once. A stream
/// takes its initial window when it opens and any growth when its window grows; a stream
/// that would go over is refused (`limit`), growth is skipped.
///
/// A budget [`within`](WindowBudget::within) another takes from both: a gateway id's callers
/// can use up its share, not what the process has for the other ids.
#[derive(Debug)]
pub struct WindowBudget {
    committed: AtomicU64,
    cap: u64,
    /// The config key of `cap`, named when a stream is refused.
    key: &'static str,
    parent: Option<Arc<WindowBudget>>,
}

/// A budget with no room for what was asked: which one, and its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFull {
    pub key: &'static str,
    pub cap: u64,
}

impl WindowBudget {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(WindowBudget {
            committed: AtomicU64::new(0),
            cap,
            key: "window_budget",
            parent: None,
        })
    }

    /// A share of `parent` of at most `cap` (config key `key`).
    pub fn within(parent: &Arc<WindowBudget>, cap: u64, key: &'static str) -> Arc<Self> {
        Arc::new(WindowBudget {
            committed: AtomicU64::new(0),
            cap,
            key,
            parent: Some(parent.clone()),
        })
    }

    /// Takes `n` bytes if they fit under this cap and every enclosing one.
    pub(crate) fn take(&self, n: u64) -> Result<(), BudgetFull> {
        let before = self.committed.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.cap {
            self.committed.fetch_sub(n, Ordering::AcqRel);
            return Err(self.full());
        }
        if let Some(p) = &self.parent {
            if let Err(e) = p.take(n) {
                self.committed.fetch_sub(n, Ordering::AcqRel);
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn give(&self, n: u64) {
        self.committed.fetch_sub(n, Ordering::AcqRel);
        if let Some(p) = &self.parent {
            p.give(n);
        }
    }

    fn full(&self) -> BudgetFull {
        BudgetFull {
            key: self.key,
            cap: self.cap,
        }
    }

    /// Bytes promised now.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_binds_its_holder_and_leaves_the_rest_to_the_others() {
        let process = WindowBudget::new(10);
        let a = WindowBudget::within(&process, 4, "window_budget_per_gateway");
        let b = WindowBudget::within(&process, 8, "window_budget_per_gateway");
        assert!(a.take(4).is_ok());
        let full = a.take(1).unwrap_err();
        assert_eq!((full.key, full.cap), ("window_budget_per_gateway", 4));
        assert_eq!(process.committed(), 4, "a refusal takes nothing");
        // b has its own share, and the process's cap binds them together.
        assert!(b.take(6).is_ok());
        let full = b.take(1).unwrap_err();
        assert_eq!((full.key, full.cap), ("window_budget", 10));
        assert_eq!((b.committed(), process.committed()), (6, 10));
        a.give(4);
        assert_eq!((a.committed(), process.committed()), (0, 6));
        assert!(b.take(2).is_ok());
        assert_eq!(b.take(1).unwrap_err().key, "window_budget_per_gateway");
    }
}
