//! Tunnel connections in their handshake: at most `limits.max_pending_handshakes` at once,
//! and `limits.max_pending_handshakes_per_source` from one address (an IPv6 /64 counts as
//! one). Until its upgrade is authorized a connection is a stranger's. When every place is
//! taken, a newcomer takes the place of the oldest stranger instead of being refused: a few
//! addresses holding silent connections can't lock every client out, since a real client's
//! handshake ends long before the places turn over. Authorized handshakes (a token was
//! shown) are never displaced; they hold their place until their tunnel registers or fails.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::listen::{SourceSlot, Sources};

pub(super) struct Handshakes {
    max: usize,
    per_source: usize,
    sources: Sources,
    places: Arc<Mutex<Places>>,
}

#[derive(Default)]
struct Places {
    /// Places held, strangers' and authorized ones'.
    held: usize,
    /// Strangers by arrival, oldest first, each with what tells it to leave.
    strangers: BTreeMap<u64, CancellationToken>,
    /// Strangers told to leave whose place went to a newcomer: their own drop frees nothing.
    /// Bounded by `max`, and emptied as each one's task ends.
    displaced: HashSet<u64>,
    next: u64,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoPlace {
    /// Its address holds `max_pending_handshakes_per_source` already.
    PerSource,
    /// Every place is an authorized handshake's.
    Full,
}

impl NoPlace {
    /// The limit's config key.
    pub(super) fn key(self) -> &'static str {
        match self {
            NoPlace::PerSource => "max_pending_handshakes_per_source",
            NoPlace::Full => "max_pending_handshakes",
        }
    }
}

/// A connection's place; given back when dropped.
pub(super) struct Place {
    places: Arc<Mutex<Places>>,
    id: u64,
    leave: CancellationToken,
    _source: SourceSlot,
}

impl Handshakes {
    pub(super) fn new(max: usize, per_source: usize) -> Self {
        Handshakes {
            max,
            per_source,
            sources: Sources::default(),
            places: Arc::default(),
        }
    }

    /// Places held now.
    pub(super) fn held(&self) -> usize {
        lock(&self.places).held
    }

    /// A place for a connection from `ip`, taken from the oldest stranger when none is free.
    pub(super) fn admit(&self, ip: IpAddr) -> Result<Place, NoPlace> {
        let source = self
            .sources
            .take(ip, self.per_source)
            .ok_or(NoPlace::PerSource)?;
        let mut p = lock(&self.places);
        if p.held >= self.max {
            let (old, leave) = p.strangers.pop_first().ok_or(NoPlace::Full)?;
            leave.cancel();
            p.displaced.insert(old);
        } else {
            p.held += 1;
        }
        let id = p.next;
        p.next += 1;
        let leave = CancellationToken::new();
        p.strangers.insert(id, leave.clone());
        drop(p);
        Ok(Place {
            places: self.places.clone(),
            id,
            leave,
            _source: source,
        })
    }
}

impl Place {
    /// Fires when a newcomer took this stranger's place: the handshake must end.
    pub(super) fn displaced(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.leave.cancelled()
    }

    /// The connection showed a good token: it is no stranger and keeps its place. False if it
    /// was displaced first.
    pub(super) fn authorize(&self) -> bool {
        lock(&self.places).strangers.remove(&self.id).is_some()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut p = lock(&self.places);
        if !p.displaced.remove(&self.id) {
            p.strangers.remove(&self.id);
            p.held = p.held.saturating_sub(1);
        }
    }
}

fn lock(m: &Mutex<Places>) -> MutexGuard<'_, Places> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_displaces_the_oldest_stranger_never_an_authorized_one() {
        let h = Handshakes::new(3, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = h.admit(ip("192.0.2.1")).unwrap();
        let b = h.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            h.admit(ip("192.0.2.1")).err(),
            Some(NoPlace::PerSource),
            "a third from one address"
        );
        assert!(a.authorize(), "a shows a token");
        let c = h.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(h.held(), 3);
        // Full: the oldest stranger (b; a is authorized) makes way.
        let d = h.admit(ip("192.0.2.3")).unwrap();
        assert!(b.leave.is_cancelled() && !a.leave.is_cancelled() && !c.leave.is_cancelled());
        assert!(
            !b.authorize(),
            "a displaced stranger can't authorize any more"
        );
        assert_eq!(h.held(), 3);
        drop(b);
        assert_eq!(h.held(), 3, "b's place is d's now");
        assert!(c.authorize() && d.authorize());
        assert_eq!(
            h.admit(ip("192.0.2.4")).err(),
            Some(NoPlace::Full),
            "every place authorized"
        );
        drop((a, c));
        assert_eq!(h.held(), 1);
        drop(d);
        assert_eq!(h.held(), 0);
        let p = lock(&h.places);
        assert!(p.strangers.is_empty() && p.displaced.is_empty());
    }
}
