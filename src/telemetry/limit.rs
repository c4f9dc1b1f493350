//! A cap on lines per second for each log statement (`log_lines_per_second`).
//!
//! Peers can make sgw log: every cloud caller the ACL refuses is a warn line on the client,
//! every LOG frame a client sends is a line on the gateway. Unbounded, a hostile peer fills
//! the disk, or makes journald's own rate limit drop every line of the service, the ones an
//! operator needs included. Held per statement, a flood of one kind of line leaves the others
//! alone; what is held back is counted (`sgw_log_lines_suppressed`) and named once a second in
//! a summary line. Debug and trace lines are not held back: an operator asked for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};

/// At most this many statements are named in one summary line (the count covers them all).
const NAMED_MAX: usize = 8;

/// Per-statement token buckets. There is one bucket per log statement in the code that has
/// fired, so the map is bounded by the program, not by what peers send.
#[derive(Debug)]
pub(super) struct LineLimit {
    /// Lines a second each statement may write, and its burst; 0: no limit.
    per_second: AtomicU32,
    /// The target of the summary line, never held back (it is one line a report).
    exempt: &'static str,
    buckets: Mutex<HashMap<Identifier, Bucket>>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Lines held back since the last summary.
    held: u64,
    site: &'static Metadata<'static>,
}

impl Bucket {
    /// A token bucket of `rate` tokens that refills at `rate` a second: a second's worth of
    /// lines may come at once, then `rate` a second.
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        let cap = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cap).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.held += 1;
            false
        }
    }
}

/// The statements held back since the last summary: `file:line` and how many lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub total: u64,
    pub sites: Vec<(String, u64)>,
}

impl LineLimit {
    pub(super) fn new(per_second: u32, exempt: &'static str) -> Self {
        LineLimit {
            per_second: AtomicU32::new(per_second),
            exempt,
            buckets: Mutex::new(HashMap::new()),
            suppressed: AtomicU64::new(0),
        }
    }

    pub(super) fn per_second(&self) -> u32 {
        self.per_second.load(Ordering::Relaxed)
    }

    pub(super) fn set_per_second(&self, n: u32) {
        self.per_second.store(n, Ordering::Relaxed);
    }

    /// Lines held back since the process started.
    pub(super) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Whether a line of `site` may be written at `now`.
    pub(super) fn admit(&self, site: &'static Metadata<'static>, now: Instant) -> bool {
        let rate = self.per_second();
        if rate == 0 || *site.level() > Level::INFO || site.target() == self.exempt {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(site.callsite()).or_insert_with(|| Bucket {
            tokens: f64::from(rate),
            at: now,
            held: 0,
            site,
        });
        let ok = bucket.take(now, rate);
        if !ok {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Takes the counts held back since the last call, most held first.
    pub(super) fn take_held(&self) -> Held {
        let mut out = Held::default();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for b in buckets.values_mut().filter(|b| b.held > 0) {
            let site = format!(
                "{}:{}",
                b.site.file().unwrap_or("?"),
                b.site.line().unwrap_or(0)
            );
            out.total += b.held;
            out.sites.push((site, b.held));
            b.held = 0;
        }
        drop(buckets);
        out.sites
            .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.sites.truncate(NAMED_MAX);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn site() -> &'static Metadata<'static> {
        // The metadata of a real statement, caught as it fires.
        static SEEN: std::sync::OnceLock<&'static Metadata<'static>> = std::sync::OnceLock::new();
        struct Catch;
        impl tracing::Subscriber for Catch {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, e: &tracing::Event<'_>) {
                let _ = SEEN.set(e.metadata());
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        tracing::subscriber::with_default(Catch, || tracing::warn!("a line a peer can cause"));
        SEEN.get().copied().unwrap()
    }

    #[test]
    fn a_statement_writes_its_burst_then_its_rate_and_the_rest_is_counted() {
        let l = LineLimit::new(10, "sgw::telemetry");
        let s = site();
        let t0 = Instant::now();
        let first: usize = (0..100).filter(|_| l.admit(s, t0)).count();
        assert_eq!(first, 10, "a second's worth at once");
        assert_eq!(l.suppressed(), 90);
        // Half a second later, five more.
        let t1 = t0 + Duration::from_millis(500);
        let later: usize = (0..100).filter(|_| l.admit(s, t1)).count();
        assert_eq!(later, 5);
        let held = l.take_held();
        assert_eq!(held.total, 185);
        assert_eq!(held.sites.len(), 1);
        assert!(
            held.sites[0].0.starts_with("src/telemetry/limit.rs:"),
            "{:?}",
            held.sites
        );
        assert_eq!(l.take_held(), Held::default(), "counts are taken once");
        assert_eq!(l.suppressed(), 185, "the process total stays");
        // A long quiet time refills the bucket to its burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| l.admit(s, t2)).count(), 10);
    }

    #[test]
    fn zero_means_no_limit_and_the_limit_changes_live() {
        let l = LineLimit::new(0, "sgw::telemetry");
        let s = site();
        let t = Instant::now();
        assert!((0..10_000).all(|_| l.admit(s, t)));
        l.set_per_second(3);
        assert_eq!((0..10).filter(|_| l.admit(s, t)).count(), 3);
        assert_eq!(l.suppressed(), 7);
    }
}
