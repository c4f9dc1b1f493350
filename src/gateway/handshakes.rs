//! Tunnel connections in their handshake: at most `limits.max_pending_handshakes` at once,
//! and `limits.max_pending_handshakes_per_source` from one address (an IPv6 /64 counts as
//! one). Until it shows a good token a connection is a stranger's. When every place is taken,
//! a newcomer takes the place of a stranger instead of being refused: the oldest of the
//! address that holds the most. Addresses holding silent connections can't lock every client
//! out: they lose their own connections first, and a real client's handshake ends long
//! before the places turn over. Authorized handshakes are never displaced; they hold their
//! place until their tunnel registers or fails.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::listen::{source_key, SourceSlot, Sources};

pub(super) struct Handshakes {
    max: usize,
    per_source: usize,
    sources: Sources,
    places: Arc<Mutex<Places>>,
}

#[derive(Default)]
struct Places {
    /// Places held, strangers' and authorized ones'. A displaced stranger's place is its
    /// newcomer's at once; the stranger's own drop (its token cancelled) frees nothing.
    held: usize,
    /// Strangers by source, oldest first, each with what tells it to leave.
    strangers: HashMap<IpAddr, BTreeMap<u64, CancellationToken>>,
    next: u64,
}

impl Places {
    fn forget(&mut self, src: IpAddr, id: u64) -> Option<CancellationToken> {
        let ids = self.strangers.get_mut(&src)?;
        let leave = ids.remove(&id);
        if ids.is_empty() {
            self.strangers.remove(&src);
        }
        leave
    }

    /// The stranger to displace: the oldest of the source holding the most (of those, the
    /// one whose oldest came first).
    fn victim(&self) -> Option<(IpAddr, u64)> {
        self.strangers
            .iter()
            .filter_map(|(src, ids)| Some((ids.len(), *ids.keys().next()?, *src)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, id, src)| (src, id))
    }
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
    src: IpAddr,
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
            let (src, old) = p.victim().ok_or(NoPlace::Full)?;
            if let Some(leave) = p.forget(src, old) {
                leave.cancel();
            }
        } else {
            p.held += 1;
        }
        let id = p.next;
        p.next += 1;
        let leave = CancellationToken::new();
        let src = source_key(ip);
        p.strangers
            .entry(src)
            .or_default()
            .insert(id, leave.clone());
        drop(p);
        Ok(Place {
            places: self.places.clone(),
            src,
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
        lock(&self.places).forget(self.src, self.id).is_some()
    }

    /// Whether a newcomer took this place.
    pub(super) fn was_displaced(&self) -> bool {
        self.leave.is_cancelled()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // Only displacement cancels the token, under this lock, and then the place is
        // another's already: judged under the lock too.
        let mut p = lock(&self.places);
        if !self.leave.is_cancelled() {
            p.forget(self.src, self.id);
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
        assert!(b.was_displaced() && !a.was_displaced() && !c.was_displaced());
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
        assert!(p.strangers.is_empty());
    }

    /// A full house of one flooding address and a few clients: newcomers displace the
    /// flood's connections, oldest first, never the clients' (each holds one).
    #[test]
    fn the_address_holding_the_most_makes_way() {
        let h = Handshakes::new(5, 8);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let flood: Vec<Place> = (0..3)
            .map(|_| h.admit(ip("2001:db8::1")).unwrap())
            .collect();
        let client = h.admit(ip("192.0.2.9")).unwrap();
        let other = h.admit(ip("192.0.2.10")).unwrap();
        // The flood's /64 holds three, each client one.
        let n1 = h.admit(ip("2001:db8::2")).unwrap();
        assert!(flood[0].was_displaced() && !flood[1].was_displaced());
        let _n2 = h.admit(ip("198.51.100.1")).unwrap();
        assert!(flood[1].was_displaced());
        // Now the /64 holds two (flood[2] and n1): still the most.
        let _n3 = h.admit(ip("198.51.100.2")).unwrap();
        assert!(flood[2].was_displaced() && !n1.was_displaced());
        assert!(!client.was_displaced() && !other.was_displaced());
        drop(flood);
        assert_eq!(h.held(), 5);
        // Every source holds one: the oldest goes.
        let _n4 = h.admit(ip("198.51.100.3")).unwrap();
        assert!(client.was_displaced() && !other.was_displaced());
        // A place given back before its taker leaves is counted once.
        drop(_n4);
        drop(client);
        assert_eq!(h.held(), 4);
    }
}
