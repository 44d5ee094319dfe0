//! A multi-writer drive as one member sees it: its own drive, which it writes, the other
//! members' drives as far as it holds them, and the one tree [`merge`] makes of all their
//! changes ([`members`] says how changes sit in a member's drive).
//!
//! Writes go to the member's own drive, each batch closed with the clock of what it has seen:
//! every member's db as it holds it now. A file another member wrote is deleted with a marker
//! (its bytes stay in that member's drive); a rename is a delete and a put of the same content,
//! copied into this member's blobs (only chunks it lacks are stored).
//!
//! Does not know: how the other members' drives arrive (replication), membership rules beyond
//! the merge's (who may add whom), the node.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Error, Result};

use super::members::{self, Value};
use super::merge::{self, Change, Clock, Merge, Writer};
use super::{Drive, Entry, Op, PutOptions};

/// What the merged tree holds at a path: the member whose drive has the content, its entry,
/// and whether it is a conflict copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub writer: Writer,
    pub entry: Entry,
    pub conflict: bool,
}

/// Where a member's log is read from next, and its changes read so far.
type Read = (u64, Vec<Change<Value>>);

/// Every change held, the members, and where each removed writer is cut.
type Membership = (Vec<Change<Value>>, BTreeSet<Writer>, BTreeMap<Writer, u64>);

/// One member's multi-writer drive; see the module doc.
pub struct MultiDrive {
    /// The member that made the drive: a member until a member removes it.
    founder: Writer,
    own: Drive,
    others: Vec<Drive>,
    /// Each member's changes read so far, and the block to read from next: a merge reads only
    /// what was added since.
    read: std::sync::Mutex<std::collections::HashMap<Writer, Read>>,
}

impl MultiDrive {
    /// The member writing `own` in the drive `founder` made, holding `others` (each as far as
    /// it has it; a drive of a writer that is no member is held but not taken).
    pub fn new(founder: Writer, own: Drive, others: Vec<Drive>) -> MultiDrive {
        MultiDrive { founder, own, others, read: Default::default() }
    }

    /// Who may write, with their names: the founder unless removed, and whom members added
    /// and no member removed since.
    pub fn members(&self) -> Result<Vec<(Writer, String)>> {
        let (all, members, _) = self.membership()?;
        let names = membership_tree(&all, &members, self.founder);
        Ok(members
            .into_iter()
            .map(|w| {
                let name = names.get(&w).cloned().unwrap_or_default();
                (w, name)
            })
            .collect())
    }

    /// Makes `member` a member, named `name`.
    pub fn add_member(&mut self, member: Writer, name: &str) -> Result<()> {
        let key = [members::MEMBER, crate::crypto::to_hex(&member.0).as_bytes()].concat();
        let tail = [(key, Some(name.as_bytes().to_vec())), self.marker()];
        self.own.apply_with(&[], &tail)
    }

    /// Removes `member`: what it writes from now on (what this member has not seen of it) is
    /// not taken by any member.
    pub fn remove_member(&mut self, member: Writer) -> Result<()> {
        let key = [members::REMOVED, crate::crypto::to_hex(&member.0).as_bytes()].concat();
        let tail = [(key, Some(Vec::new())), self.marker()];
        self.own.apply_with(&[], &tail)
    }

    pub fn own(&self) -> &Drive {
        &self.own
    }

    pub fn writer(&self) -> Writer {
        Writer(self.own.key().0)
    }

    /// The other members' drives, to bring up to date (`refresh`) or replace.
    pub fn others_mut(&mut self) -> &mut Vec<Drive> {
        &mut self.others
    }

    fn drives(&self) -> impl Iterator<Item = &Drive> {
        std::iter::once(&self.own).chain(&self.others)
    }

    /// What this member has seen: every member's db length as it holds it.
    pub fn clock(&self) -> Clock {
        let mut clock = Clock::default();
        for d in self.drives() {
            clock.set(Writer(d.key().0), d.db().version());
        }
        clock
    }

    /// Every change held here, the members (to a fixed point: a writer is one when the
    /// membership merged from the members' changes says so, starting from the founder), and
    /// where each removed writer is cut (what its removals had seen of it).
    fn membership(&self) -> Result<Membership> {
        let mut all = Vec::new();
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        for d in self.drives() {
            let writer = Writer(d.key().0);
            let (from, held) = read.entry(writer).or_insert((1, Vec::new()));
            if d.db().version() < *from {
                // Another history than the one read (a drive replaced by an older copy):
                // read it again.
                (*from, *held) = (1, Vec::new());
            }
            if d.db().version() > *from {
                let range = crate::hyperbee::HistoryRange { gte: Some(*from as i64), ..Default::default() };
                let history: Vec<_> = d.db().view().history(&range).collect::<Result<_>>()?;
                let (new, next) = members::changes_and_next(writer, history);
                held.extend(new);
                *from = next.unwrap_or(*from);
            }
            all.extend(held.iter().cloned());
        }
        drop(read);
        let mut members = BTreeSet::from([self.founder]);
        // Each round adds or drops at least one writer, or ends.
        for _ in 0..=self.others.len() + 1 {
            let now: BTreeSet<Writer> = membership_tree(&all, &members, self.founder).into_keys().collect();
            if now == members {
                break;
            }
            members = now;
        }
        let mut cuts = BTreeMap::new();
        for c in all.iter().filter(|c| members.contains(&c.writer) && matches!(c.op, merge::Op::Delete)) {
            if let Some(w) = member_of_path(&c.path).filter(|w| !members.contains(w)) {
                let seen = c.clock.get(&w);
                let cut = cuts.entry(w).or_insert(seen);
                *cut = (*cut).min(seen);
            }
        }
        Ok((all, members, cuts))
    }

    /// The changes of members (and of removed members, up to their cut), merged.
    pub fn merge(&self) -> Result<Merge<Value>> {
        let (all, members, cuts) = self.membership()?;
        let mut merge = Merge::new();
        for c in all {
            if members.contains(&c.writer) || cuts.contains_key(&c.writer) {
                merge.add(c);
            }
        }
        for (w, cut) in cuts {
            merge.ignore_from(w, cut);
        }
        Ok(merge)
    }

    /// The merged tree of files: each path's content, and the conflict copies beside them.
    pub fn tree(&self) -> Result<BTreeMap<String, Held>> {
        let merge = self.merge()?;
        // The same content is the same entry: a member's copy of another's file is written to
        // its own blobs, so identical bytes from two members still make a conflict copy.
        let tree = merge.tree(|a, b| a == b);
        let mut out = BTreeMap::new();
        for (path, r) in tree {
            if let merge::Op::Put { value: Value::File(entry), .. } = &r.change.op {
                out.insert(path, Held { writer: r.change.writer, entry: entry.clone(), conflict: r.conflict });
            }
        }
        Ok(out)
    }

    /// The bytes of what the tree holds at `path`.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let tree = self.tree()?;
        let Some(held) = tree.get(path) else { return Ok(None) };
        self.content(held).map(Some)
    }

    fn content(&self, held: &Held) -> Result<Vec<u8>> {
        let drive = self
            .drives()
            .find(|d| d.key().0 == held.writer.0)
            .ok_or_else(|| Error::InvalidRequest("the member holding it is gone".into()))?;
        match &held.entry.blob {
            None => Ok(Vec::new()),
            Some(b) => drive.read_blob(b, 0, drive.blob_size(b)?),
        }
    }

    /// Writes a file of `data` at `path` (its mtime, which orders concurrent edits, in `opts`'
    /// metadata).
    pub fn put(&mut self, path: &str, data: &[u8], opts: &PutOptions) -> Result<()> {
        let blob = self.own.write_blob(data)?;
        let entry =
            Entry { executable: opts.executable, linkname: None, blob: Some(blob), metadata: opts.metadata.clone() };
        let tail = [self.marker()];
        self.own.apply_with(&[Op::Put(path, &entry)], &tail)
    }

    /// Deletes the file the tree holds at `path` (whoever wrote it); false if it holds none.
    pub fn delete(&mut self, path: &str) -> Result<bool> {
        if !self.tree()?.contains_key(path) {
            return Ok(false);
        }
        let own = self.own.exists(path)?;
        let ops: Vec<Op<'_>> = if own { vec![Op::Del(path)] } else { Vec::new() };
        let tail = [([members::GONE, path.as_bytes()].concat(), Some(Vec::new())), self.marker()];
        self.own.apply_with(&ops, &tail)?;
        Ok(true)
    }

    /// Moves the file the tree holds at `from` to `to`: a delete and a put of its content.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let tree = self.tree()?;
        let held = tree.get(from).ok_or_else(|| Error::InvalidRequest(format!("no file at {from}")))?;
        let data = self.content(held)?;
        let blob = self.own.write_blob(&data[..])?;
        let entry = Entry { blob: Some(blob), ..held.entry.clone() };
        let mut ops = vec![Op::Put(to, &entry)];
        if self.own.exists(from)? {
            ops.push(Op::Del(from));
        }
        let tail = [([members::GONE, from.as_bytes()].concat(), Some(Vec::new())), self.marker()];
        self.own.apply_with(&ops, &tail)
    }

    /// The clock marker that closes a batch.
    fn marker(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        (members::CLOCK.to_vec(), Some(members::encode_clock(&self.clock())))
    }
}

/// The membership that the membership changes of `members` make: each member with its name
/// (the founder, whom nobody added, without one), the founder unless its latest changes
/// there remove it.
fn membership_tree(all: &[Change<Value>], members: &BTreeSet<Writer>, founder: Writer) -> BTreeMap<Writer, String> {
    let mut m = Merge::new();
    for c in all.iter().filter(|c| members.contains(&c.writer) && member_of_path(&c.path).is_some()) {
        m.add(c.clone());
    }
    let mut out = BTreeMap::new();
    for (path, r) in m.tree(|a, b| a == b) {
        if let (Some(w), merge::Op::Put { value: Value::Member(name), .. }, false) =
            (member_of_path(&path), &r.change.op, r.conflict)
        {
            out.insert(w, name.clone());
        }
    }
    let removed = m.latest(&members::member_path(&founder)).iter().any(|c| matches!(c.op, merge::Op::Delete));
    if !removed {
        out.entry(founder).or_default();
    }
    out
}

/// The writer a membership path names.
fn member_of_path(path: &str) -> Option<Writer> {
    members::member_key(path.strip_prefix("member:")?.as_bytes())
}

#[cfg(test)]
#[path = "multi_tests.rs"]
mod tests;
