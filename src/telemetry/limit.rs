//! Caps on log lines: `log_lines_per_second` for each log statement, and
//! `log_lines_per_second_total` for the whole process.
//!
//! Peers can make sgw log: every cloud caller the ACL refuses is a warn line on the client,
//! every LOG frame a client sends is a line on the gateway, every stranger at the admin port
//! a line. Unbounded, a hostile peer fills the disk, or makes journald's own rate limit
//! (10,000 lines in 30 s for the whole service, by default) drop every line of the service,
//! the ones an operator needs included. Held per statement, a flood of one kind of line
//! leaves the others their share; the total keeps the process under journald's limit even
//! when several kinds flood at once, and keeps a fifth of itself for statements that are not
//! busy, so floods of a few kinds can't silence every other line. What is held back is
//! counted (`sgw_log_lines_suppressed`) and named once a second in a summary line, which is
//! itself never held back. Debug and trace lines are not held back: an operator asked for
//! them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};

/// At most this many statements are named in one summary line (the count covers them all).
const NAMED_MAX: usize = 8;

/// The share of the process's bucket that a busy statement (one that has used half its own
/// burst) may not draw on: kept for the statements that are not flooding.
const RESERVE: f64 = 0.2;

/// Per-statement token buckets and one for the process. There is one bucket per log
/// statement in the code that has fired, so the map is bounded by the program, not by what
/// peers send.
#[derive(Debug)]
pub(super) struct LineLimit {
    /// Lines a second each statement may write, and its burst; 0: no limit.
    per_second: AtomicU32,
    /// Lines a second the whole process may write, and its burst; 0: no limit.
    total: AtomicU32,
    state: Mutex<State>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct State {
    sites: HashMap<Identifier, Site>,
    all: Bucket,
}

#[derive(Debug)]
struct Site {
    bucket: Bucket,
    /// Lines held back since the last summary, and whether any of them was an error.
    held: u64,
    held_error: bool,
    meta: &'static Metadata<'static>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// A token bucket of `rate` tokens that refills at `rate` a second: a second's worth of
    /// lines may come at once, then `rate` a second. 0: every line. A line is let through only
    /// while more than `floor` tokens are left.
    fn take(&mut self, now: Instant, rate: u32, floor: f64) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = f64::from(rate);
        // Callers read the clock before the lock: a later reading may arrive first.
        let now = now.max(self.at);
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cap).min(cap);
        self.at = now;
        if self.tokens - 1.0 >= floor {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What was held back since the last summary: the count, the statements most held first
/// (`file:line`, or the target of a line without one), and whether any was an error.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub total: u64,
    pub sites: Vec<(String, u64)>,
    pub error: bool,
}

impl LineLimit {
    pub(super) fn new(per_second: u32, total: u32) -> Self {
        LineLimit {
            per_second: AtomicU32::new(per_second),
            total: AtomicU32::new(total),
            state: Mutex::new(State {
                sites: HashMap::new(),
                all: Bucket::full(total, Instant::now()),
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    pub(super) fn per_second(&self) -> u32 {
        self.per_second.load(Ordering::Relaxed)
    }

    pub(super) fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, per_second: u32, total: u32) {
        self.per_second.store(per_second, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Lines held back since the process started.
    pub(super) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Whether a line of `meta` may be written at `now`.
    pub(super) fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> bool {
        let (rate, total) = (self.per_second(), self.total());
        if (rate == 0 && total == 0)
            || *meta.level() > Level::INFO
            || meta.target() == summary::TARGET
        {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { sites, all } = &mut *state;
        let site = sites.entry(meta.callsite()).or_insert_with(|| Site {
            bucket: Bucket::full(rate, now),
            held: 0,
            held_error: false,
            meta,
        });
        let own = site.bucket.take(now, rate, 0.0);
        // Judged by its own bucket, not by what the total refused it: a quiet statement
        // refused once in a flood must still find the reserve.
        let busy = rate > 0 && site.bucket.tokens < f64::from(rate) / 2.0;
        let floor = if busy {
            f64::from(total) * RESERVE
        } else {
            0.0
        };
        if own && all.take(now, total, floor) {
            return true;
        }
        site.held += 1;
        site.held_error |= *meta.level() == Level::ERROR;
        drop(state);
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Takes the counts held back since the last call.
    pub(super) fn take_held(&self) -> Held {
        let mut out = Held::default();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for s in state.sites.values_mut().filter(|s| s.held > 0) {
            let name = match (s.meta.file(), s.meta.line()) {
                (Some(f), Some(l)) => format!("{f}:{l}"),
                _ => s.meta.target().to_owned(),
            };
            out.total += s.held;
            out.error |= s.held_error;
            out.sites.push((name, s.held));
            s.held = 0;
            s.held_error = false;
        }
        drop(state);
        out.sites
            .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.sites.truncate(NAMED_MAX);
        out
    }
}

/// The summary line, from a module of its own: its target is the one the limits let through.
pub(super) mod summary {
    use super::Held;

    pub(in crate::telemetry) const TARGET: &str = module_path!();

    /// One line naming what was held back: an error if any held line was one (so
    /// `log_level = "error"` still shows it), else a warning.
    pub(in crate::telemetry) fn emit(held: &Held, per_second: u32, total: u32) {
        let sites: Vec<String> = held
            .sites
            .iter()
            .map(|(site, n)| format!("{site} x{n}"))
            .collect();
        let sites = sites.join(", ");
        let n = held.total;
        if held.error {
            tracing::error!(
                suppressed.lines = n,
                suppressed.sites = ?sites,
                "log lines held back: {n} over log_lines_per_second ({per_second} for each statement, {total} in all)"
            );
        } else {
            tracing::warn!(
                suppressed.lines = n,
                suppressed.sites = ?sites,
                "log lines held back: {n} over log_lines_per_second ({per_second} for each statement, {total} in all)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The metadata of the statements `f` fires.
    fn caught(f: impl FnOnce()) -> Vec<&'static Metadata<'static>> {
        struct Catch(Mutex<Vec<&'static Metadata<'static>>>);
        impl tracing::Subscriber for &'static Catch {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, e: &tracing::Event<'_>) {
                self.0.lock().unwrap().push(e.metadata());
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let catch: &'static Catch = Box::leak(Box::new(Catch(Mutex::new(Vec::new()))));
        tracing::subscriber::with_default(catch, f);
        let seen = catch.0.lock().unwrap().clone();
        seen
    }

    fn site(level: Level) -> &'static Metadata<'static> {
        caught(|| match level {
            Level::ERROR => tracing::error!("an error a peer can cause"),
            _ => tracing::warn!("a line a peer can cause"),
        })[0]
    }

    #[test]
    fn a_statement_writes_its_burst_then_its_rate_and_the_rest_is_counted() {
        let l = LineLimit::new(10, 0);
        let s = site(Level::WARN);
        let t0 = Instant::now();
        let first: usize = (0..100).filter(|_| l.admit(s, t0)).count();
        assert_eq!(first, 10, "a second's worth at once");
        assert_eq!(l.suppressed(), 90);
        // Half a second later, five more; a clock reading from before changes nothing.
        let t1 = t0 + Duration::from_millis(500);
        let later: usize = (0..100).filter(|_| l.admit(s, t1)).count();
        assert_eq!(later, 5);
        assert!(!l.admit(s, t0));
        let held = l.take_held();
        assert_eq!(held.total, 186);
        assert!(!held.error);
        assert_eq!(held.sites.len(), 1);
        assert!(
            held.sites[0].0.starts_with("src/telemetry/limit.rs:"),
            "{:?}",
            held.sites
        );
        assert_eq!(l.take_held(), Held::default(), "counts are taken once");
        assert_eq!(l.suppressed(), 186, "the process total stays");
        // A long quiet time refills the bucket to its burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| l.admit(s, t2)).count(), 10);
    }

    #[test]
    fn the_total_holds_back_several_statements_flooding_at_once() {
        let l = LineLimit::new(10, 15);
        let (w, e) = (site(Level::WARN), site(Level::ERROR));
        let t = Instant::now();
        let warns = (0..100).filter(|_| l.admit(w, t)).count();
        let errors = (0..100).filter(|_| l.admit(e, t)).count();
        assert_eq!((warns, errors), (10, 5));
        let held = l.take_held();
        assert_eq!(held.total, 185);
        assert!(
            held.error,
            "an error was held back: the summary is an error"
        );
    }

    /// Floods of two statements use up what they may of the total; a third statement, quiet
    /// but refused by the total in the flood's first burst, finds the reserve from then on.
    #[test]
    fn floods_leave_the_reserve_to_the_statements_not_flooding() {
        let l = LineLimit::new(100, 100);
        let lines = caught(|| {
            tracing::warn!("one flood");
            tracing::warn!("another flood");
            tracing::error!("what the operator needs");
        });
        let (a, b, quiet) = (lines[0], lines[1], lines[2]);
        let mut t = Instant::now();
        let mut quiet_written = 0;
        for _ in 0..50 {
            t += Duration::from_millis(100);
            for _ in 0..1000 {
                l.admit(a, t);
                l.admit(b, t);
            }
            quiet_written += usize::from(l.admit(quiet, t));
        }
        assert_eq!(
            quiet_written, 49,
            "the quiet statement's lines after the first burst"
        );
    }

    #[test]
    fn zero_means_no_limit_and_the_limits_change_live() {
        let l = LineLimit::new(0, 0);
        let s = site(Level::WARN);
        let t = Instant::now();
        assert!((0..10_000).all(|_| l.admit(s, t)));
        l.set(3, 0);
        assert_eq!((0..10).filter(|_| l.admit(s, t)).count(), 3);
        assert_eq!(l.suppressed(), 7);
    }

    #[test]
    fn the_summary_is_never_held_back() {
        let held = Held {
            total: 1,
            sites: vec![("x".into(), 1)],
            error: false,
        };
        let lines = caught(|| {
            summary::emit(&held, 1, 1);
            summary::emit(
                &Held {
                    error: true,
                    ..held
                },
                1,
                1,
            );
        });
        assert_eq!(lines.len(), 2);
        let l = LineLimit::new(1, 1);
        let t = Instant::now();
        for m in lines {
            assert_eq!(m.target(), summary::TARGET);
            assert!((0..100).all(|_| l.admit(m, t)));
        }
        assert_eq!(l.suppressed(), 0);
    }
}
