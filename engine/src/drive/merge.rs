//! Multi-writer drives' merge, sans IO: the one tree every member computes from the members'
//! changes, the same on all of them once they hold the same changes.
//!
//! Each member writes its own log; each change there says what its writer had seen of every
//! writer's log when it made it (a [`Clock`]: how many changes of each). Change `a` happened
//! before change `b` when `b`'s writer had seen `a` (`b.clock[a.writer] > a.seq`, or the same
//! writer and an earlier place in its log). Per path:
//!
//! - the changes no other change on the path happened after (the *latest*) decide it; one
//!   writer's changes are ordered, so only each writer's last change on the path can be one;
//! - if a latest change puts content, the path holds the winner among the latest puts, the
//!   later `mtime` first, then the larger writer key, then the later place in its log; a
//!   modify beats a concurrent delete;
//! - every put that lost to a concurrent put of other content keeps it as a conflict copy
//!   beside the path, named as Syncthing names them (`NAME.sync-conflict-YYYYMMDD-HHMMSS-
//!   WRITER.EXT`), from then on: as Syncthing's copies, it stays until a member who had seen
//!   that put deletes or rewrites the copy;
//! - if all the latest changes delete, the path is gone.
//!
//! So every content a member saved is in the tree, in a conflict copy, or was overwritten or
//! deleted by a change whose writer had seen it. Folders merge on their own (paths are whole
//! keys); a rename is a delete and a put.
//!
//! A removed member's changes from a place in its log on ([`Merge::ignore_from`]) are not
//! taken: what the removal had not seen.
//!
//! Does not know: where changes are stored, how they travel, what a value holds beyond its
//! `mtime` and whether two are the same content (the caller says).

use std::collections::{BTreeMap, HashMap};

/// A writer: its log's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Writer(pub [u8; 32]);

impl Writer {
    /// The short name a conflict copy carries (as Syncthing's seven characters of a device id).
    pub fn short(&self) -> String {
        crate::crypto::z32_encode(&self.0)[..7].to_uppercase()
    }
}

/// What a writer had seen of each writer's log when it made a change: how many changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clock(BTreeMap<Writer, u64>);

impl Clock {
    pub fn get(&self, w: &Writer) -> u64 {
        self.0.get(w).copied().unwrap_or(0)
    }

    pub fn set(&mut self, w: Writer, seen: u64) {
        if seen == 0 {
            self.0.remove(&w);
        } else {
            self.0.insert(w, seen);
        }
    }

    /// What both clocks saw.
    pub fn merge(&mut self, other: &Clock) {
        for (w, n) in &other.0 {
            if self.get(w) < *n {
                self.0.insert(*w, *n);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Writer, &u64)> {
        self.0.iter()
    }
}

/// What a change did to its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<V> {
    Put { value: V, mtime_ms: u64 },
    Delete,
}

/// One change to one path, at `seq` in `writer`'s log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<V> {
    pub writer: Writer,
    pub seq: u64,
    pub clock: Clock,
    pub path: String,
    pub op: Op<V>,
}

impl<V> Change<V> {
    /// Whether this change happened before `other` (`other`'s writer had seen it).
    pub fn before(&self, other: &Change<V>) -> bool {
        if self.writer == other.writer {
            self.seq < other.seq
        } else {
            other.clock.get(&self.writer) > self.seq
        }
    }

    fn mtime(&self) -> u64 {
        match self.op {
            Op::Put { mtime_ms, .. } => mtime_ms,
            Op::Delete => 0,
        }
    }

    /// The order among concurrent puts: the later mtime, then the larger writer, then the
    /// later place in its log.
    fn rank(&self) -> (u64, Writer, u64) {
        (self.mtime(), self.writer, self.seq)
    }
}

/// What the tree holds at a path: the change whose content it is, and whether it is a conflict
/// copy (a concurrent put that lost to the one at its original path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a, V> {
    pub change: &'a Change<V>,
    pub conflict: bool,
}

/// The changes taken in, by path; see the module doc.
#[derive(Debug, Clone)]
pub struct Merge<V> {
    /// Each path's changes, each writer's last first-class: `(writer → its changes on the path,
    /// in log order)`.
    paths: BTreeMap<String, HashMap<Writer, Vec<Change<V>>>>,
    /// Writers whose changes from a place on are not taken.
    ignored: HashMap<Writer, u64>,
}

impl<V> Default for Merge<V> {
    fn default() -> Self {
        Merge { paths: BTreeMap::new(), ignored: HashMap::new() }
    }
}

impl<V> Merge<V> {
    pub fn new() -> Merge<V> {
        Merge::default()
    }

    /// Takes `change` in (a change at a place already taken replaces it: the same log).
    pub fn add(&mut self, change: Change<V>) {
        let log = self.paths.entry(change.path.clone()).or_default().entry(change.writer).or_default();
        match log.binary_search_by_key(&change.seq, |c| c.seq) {
            Ok(i) => log[i] = change,
            Err(i) => log.insert(i, change),
        }
    }

    /// Changes of `writer` from `seq` on are not taken (a member removed by a change that had
    /// seen `seq` of its changes); the earliest cut given holds.
    pub fn ignore_from(&mut self, writer: Writer, seq: u64) {
        let cut = self.ignored.entry(writer).or_insert(seq);
        *cut = (*cut).min(seq);
    }

    fn taken(&self, c: &Change<V>) -> bool {
        self.ignored.get(&c.writer).is_none_or(|cut| c.seq < *cut)
    }

    /// The latest changes on `path`, the winner first: each writer's last change there that
    /// no other writer's last change there happened after.
    pub fn latest(&self, path: &str) -> Vec<&Change<V>> {
        let Some(writers) = self.paths.get(path) else { return Vec::new() };
        let last: Vec<&Change<V>> =
            writers.values().filter_map(|log| log.iter().rev().find(|c| self.taken(c))).collect();
        let mut latest: Vec<&Change<V>> =
            last.iter().copied().filter(|c| !last.iter().any(|d| !std::ptr::eq(*c, *d) && c.before(d))).collect();
        latest.sort_by_key(|c| std::cmp::Reverse(c.rank()));
        latest
    }

    /// The merged tree: each path the winner holds, and the conflict copies beside it. Two puts
    /// whose content `same` says is one need no copy. A copy whose name a path already holds is
    /// not made (that path's own change decides it).
    pub fn tree(&self, same: impl Fn(&V, &V) -> bool) -> BTreeMap<String, Resolved<'_, V>> {
        let mut tree = BTreeMap::new();
        let mut copies = Vec::new();
        for path in self.paths.keys() {
            let latest = self.latest(path);
            let winner = latest.iter().copied().find(|c| matches!(c.op, Op::Put { .. }));
            if let Some(w) = winner {
                tree.insert(path.clone(), Resolved { change: w, conflict: false });
            }
            let mut kept: Vec<&Change<V>> = winner.into_iter().collect();
            for loser in self.losers(path, &same) {
                let duplicate = kept.iter().any(|k| same_put(k, loser, &same));
                if !duplicate && !kept.iter().any(|k| std::ptr::eq(*k, loser)) {
                    kept.push(loser);
                    copies.push((conflict_name(path, loser.mtime(), &loser.writer), loser));
                }
            }
        }
        // One writer's puts within one second share a copy's name: the latest of them (which
        // saw the others) keeps it.
        copies.sort_by(|(a, x), (b, y)| a.cmp(b).then(y.rank().cmp(&x.rank())));
        copies.dedup_by(|later, first| later.0 == first.0);
        for (name, change) in copies {
            // A member that had seen the conflicting put and then deleted or rewrote its copy
            // decided it.
            let decided = self
                .paths
                .get(&name)
                .is_some_and(|ws| ws.values().flatten().any(|c| self.taken(c) && change.before(c)));
            if !decided {
                tree.entry(name).or_insert(Resolved { change, conflict: true });
            }
        }
        tree
    }

    /// The puts on `path` that lost to a concurrent put of other content (ranked above them):
    /// each keeps its content in a conflict copy from then on, as Syncthing's copies stay until
    /// someone deletes them.
    fn losers<'a>(&'a self, path: &str, same: &impl Fn(&V, &V) -> bool) -> Vec<&'a Change<V>> {
        let Some(writers) = self.paths.get(path) else { return Vec::new() };
        // Each writer's puts, in log order.
        let per: Vec<(Writer, Vec<&Change<V>>)> = writers
            .iter()
            .map(|(w, log)| (*w, log.iter().filter(|c| self.taken(c) && matches!(c.op, Op::Put { .. })).collect()))
            .collect();
        let mut lost: Vec<&Change<V>> = Vec::new();
        for (wa, puts) in &per {
            for p in puts {
                let beaten = per.iter().filter(|(wb, _)| wb != wa).any(|(wb, theirs)| {
                    // Another writer's puts concurrent with `p` are a run of its log: from the
                    // first `p` had not seen to the last that had not seen `p` (clocks only
                    // grow along a log).
                    let from = theirs.partition_point(|q| q.seq < p.clock.get(wb));
                    let to = theirs.partition_point(|q| q.clock.get(wa) <= p.seq).max(from);
                    theirs[from..to].iter().rev().any(|q| q.rank() > p.rank() && !same_put(q, p, same))
                });
                if beaten {
                    lost.push(p);
                }
            }
        }
        // In rank order, highest first: of two losers with one content, the higher keeps the
        // copy, on every member alike.
        lost.sort_by_key(|c| std::cmp::Reverse(c.rank()));
        lost
    }

    /// How many changes are taken in.
    pub fn len(&self) -> usize {
        self.paths.values().flat_map(|w| w.values()).map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Whether two changes put the same content.
fn same_put<V>(a: &Change<V>, b: &Change<V>, same: &impl Fn(&V, &V) -> bool) -> bool {
    match (&a.op, &b.op) {
        (Op::Put { value: x, .. }, Op::Put { value: y, .. }) => same(x, y),
        _ => false,
    }
}

/// The name of a conflict copy of `path` from a put at `mtime_ms` by `writer`, as Syncthing
/// names them: `NAME.sync-conflict-YYYYMMDD-HHMMSS-WRITER.EXT` (UTC), the extension kept last.
pub fn conflict_name(path: &str, mtime_ms: u64, writer: &Writer) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let (y, mo, d, h, mi, s) = super::meta::utc((mtime_ms / 1000) as i64);
    format!("{dir}{stem}.sync-conflict-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{}{ext}", writer.short())
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
