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

use std::collections::BTreeMap;

use crate::{Error, Result};

use super::members::{self, Value};
use super::merge::{Clock, Merge, Op as Change, Writer};
use super::{Drive, Entry, Op, PutOptions};

/// What the merged tree holds at a path: the member whose drive has the content, its entry,
/// and whether it is a conflict copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub writer: Writer,
    pub entry: Entry,
    pub conflict: bool,
}

/// One member's multi-writer drive; see the module doc.
pub struct MultiDrive {
    own: Drive,
    others: Vec<Drive>,
}

impl MultiDrive {
    /// The member writing `own`, holding `others` (each as far as it has it).
    pub fn new(own: Drive, others: Vec<Drive>) -> MultiDrive {
        MultiDrive { own, others }
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

    /// Every member's changes held here, merged.
    pub fn merge(&self) -> Result<Merge<Value>> {
        let mut merge = Merge::new();
        for d in self.drives() {
            let view = d.db().view();
            let history: Vec<_> = view.history(&members::HistoryRange::default()).collect::<Result<_>>()?;
            for c in members::changes(Writer(d.key().0), history) {
                merge.add(c);
            }
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
            if let Change::Put { value: Value::File(entry), .. } = &r.change.op {
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

#[cfg(test)]
#[path = "multi_tests.rs"]
mod tests;
