//! The compiled form of a rule list: first-match answers without walking every rule.
//!
//! Rules are bucketed by what their host part is (any, exact name, `*.` suffix, address
//! range). Address ranges, and port ranges inside a long bucket, are cut into elementary
//! intervals ("cells"); each cell holds the rules covering it in rule order, cut after the first
//! rule that matches everything in the cell, so a lookup is a binary search plus a short scan,
//! however many rules there are. The answer is the lowest rule index any bucket yields, which
//! is exactly what a top-down walk would find.

use std::collections::HashMap;

use super::{HostPat, Norm, Rule};

/// Candidate lists up to this long are scanned; longer ones get a port index.
const SCAN: usize = 8;

pub(crate) struct Index {
    any: Cands,
    names: HashMap<String, Cands>,
    suffixes: HashMap<String, Cands>,
    /// Cell `i` covers keys `addr_bounds[i] ..= addr_bounds[i + 1] - 1`; `addr_bounds[0] == 0`.
    addr_bounds: Vec<u128>,
    /// Cell -> index into `pool` (equal candidate sets are shared).
    addr_cells: Vec<u32>,
    pool: Vec<Cands>,
}

/// Rules (indexes, ascending) whose host part matched; the rest still has to be checked.
enum Cands {
    List(Box<[u32]>),
    Ports {
        bounds: Vec<u16>,
        cells: Vec<Box<[u32]>>,
    },
}

impl Cands {
    fn build(rules: &[Rule], idxs: &[u32]) -> Cands {
        if idxs.len() <= SCAN {
            return Cands::List(idxs.into());
        }
        let items = idxs.iter().map(|&i| {
            let r = &rules[i as usize];
            (i, r.ports.lo, r.ports.hi, r.unconditional())
        });
        let (bounds, cells) = cells(items, 0u16, |k| k.checked_add(1));
        Cands::Ports {
            bounds,
            cells: cells.into_iter().map(Vec::into_boxed_slice).collect(),
        }
    }

    /// The first rule (below `best`) that also matches port, path, caller and time.
    fn first(&self, rules: &[Rule], n: &Norm<'_>, best: usize) -> Option<usize> {
        let list: &[u32] = match self {
            Cands::List(l) => l,
            Cands::Ports { bounds, cells } => {
                let c = bounds.partition_point(|b| *b <= n.port).saturating_sub(1);
                cells.get(c).map_or(&[], |c| c)
            }
        };
        list.iter()
            .map(|&i| i as usize)
            .take_while(|&i| i < best)
            .find(|&i| rules[i].matches_rest(n))
    }
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Index {
        let mut any = Vec::new();
        let mut names: HashMap<String, Vec<u32>> = HashMap::new();
        let mut suffixes: HashMap<String, Vec<u32>> = HashMap::new();
        let mut addrs = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            match &r.host {
                HostPat::Any => any.push(i),
                HostPat::Name(n) => names.entry(n.clone()).or_default().push(i),
                HostPat::Suffix(s) => suffixes.entry(s.clone()).or_default().push(i),
                HostPat::Addr { lo, hi } => {
                    addrs.push((i, *lo, *hi, r.unconditional() && r.ports.is_any()))
                }
            }
        }
        let (addr_bounds, lists) = cells(addrs.into_iter(), 0u128, |k| k.checked_add(1));
        let mut pool = Vec::new();
        let mut seen: HashMap<Vec<u32>, u32> = HashMap::new();
        let addr_cells = lists
            .into_iter()
            .map(|l| {
                *seen.entry(l).or_insert_with_key(|l| {
                    pool.push(Cands::build(rules, l));
                    (pool.len() - 1) as u32
                })
            })
            .collect();
        Index {
            any: Cands::build(rules, &any),
            names: names
                .into_iter()
                .map(|(k, v)| (k, Cands::build(rules, &v)))
                .collect(),
            suffixes: suffixes
                .into_iter()
                .map(|(k, v)| (k, Cands::build(rules, &v)))
                .collect(),
            addr_bounds,
            addr_cells,
            pool,
        }
    }

    pub(crate) fn first_match(&self, rules: &[Rule], n: &Norm<'_>) -> Option<usize> {
        let mut best = usize::MAX;
        let take = |c: &Cands, best: &mut usize| {
            if let Some(i) = c.first(rules, n, *best) {
                *best = i;
            }
        };
        take(&self.any, &mut best);
        if !n.name.is_empty() {
            if let Some(c) = self.names.get(n.name.as_ref()) {
                take(c, &mut best);
            }
            if !self.suffixes.is_empty() {
                for (pos, _) in n.name.match_indices('.').filter(|(p, _)| *p > 0) {
                    if let Some(c) = self.suffixes.get(&n.name[pos..]) {
                        take(c, &mut best);
                    }
                }
            }
        }
        if let Some(a) = n.addr {
            let c = self
                .addr_bounds
                .partition_point(|b| *b <= a)
                .saturating_sub(1);
            if let Some(&p) = self.addr_cells.get(c) {
                take(&self.pool[p as usize], &mut best);
            }
        }
        (best != usize::MAX).then_some(best)
    }
}

/// Cuts the key space `min..` into elementary intervals at every range end and lists, per
/// cell, the items covering it in order, stopping at the first item flagged as deciding
/// everything in its range. Adjacent cells with equal lists are merged.
///
/// `items`: (rule index, lo, hi inclusive, decides-all) in rule order.
fn cells<K: Copy + Ord>(
    items: impl Iterator<Item = (u32, K, K, bool)>,
    min: K,
    succ: fn(K) -> Option<K>,
) -> (Vec<K>, Vec<Vec<u32>>) {
    let items: Vec<_> = items.collect();
    let mut bounds = vec![min];
    for &(_, lo, hi, _) in &items {
        bounds.push(lo);
        if let Some(h) = succ(hi) {
            bounds.push(h);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let n = bounds.len();
    let mut lists: Vec<Vec<u32>> = vec![Vec::new(); n];
    // `next[c]`: the first cell at or after `c` still open (a union-find "skip closed" chain),
    // so unconditional rules never revisit cells an earlier rule already decided.
    let mut next: Vec<usize> = (0..=n).collect();
    fn find(next: &mut [usize], mut c: usize) -> usize {
        let mut root = c;
        while next[root] != root {
            root = next[root];
        }
        while next[c] != root {
            let up = next[c];
            next[c] = root;
            c = up;
        }
        root
    }
    for (idx, lo, hi, decides) in items {
        let c0 = bounds.partition_point(|b| *b < lo);
        let c1 = succ(hi).map_or(n, |h| bounds.partition_point(|b| *b < h));
        let mut c = find(&mut next, c0);
        while c < c1 {
            lists[c].push(idx);
            if decides {
                next[c] = c + 1;
            }
            c = find(&mut next, c + 1);
        }
    }
    let mut out_b = Vec::with_capacity(n);
    let mut out_l: Vec<Vec<u32>> = Vec::with_capacity(n);
    for (b, l) in bounds.into_iter().zip(lists) {
        if out_l.last() != Some(&l) {
            out_b.push(b);
            out_l.push(l);
        }
    }
    (out_b, out_l)
}
