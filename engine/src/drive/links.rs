//! Hard links: several names of one file, kept consistent by every change of a batch.
//!
//! A group is several file entries whose metadata carries the same `"inode"` (32 hex digits,
//! [`Entry::link_id`]) and the record `links\0ID`, a JSON array of the names. JS Hyperdrive reads
//! each name as an ordinary file naming the same blob. [`Plan`] turns a batch's operations into
//! the keys it writes, so that in one version:
//! - a put of a linked entry (a write through one name) is written to every name of its group;
//! - a name put over, removed or moved leaves its group's record, or joins the one its new
//!   entry names;
//! - a record left with fewer than two names goes (the last name keeps its id, harmlessly).

use std::collections::HashMap;

use serde_json::Value;

use super::entry::LINK_KEY;
use super::{key_in, Entry, FILES, SPECIAL};
use crate::hyperbee::View;
use crate::hypercore::Hypercore;
use crate::{Error, Result};

/// The sub-database of hard-link records, outside what JS Hyperdrive lists.
pub(super) const LINKS: &[u8] = b"links\0";

/// The most names one file may have (ext4's limit).
pub const MAX_LINKS: usize = 65_000;

/// The keys a batch writes, worked out against the drive as it is and the batch's own writes.
pub(super) struct Plan<'v> {
    view: &'v View<&'v Hypercore>,
    /// Whether any group may be touched: the drive has a link record, or the batch links. Most
    /// drives have none, and their batches then read nothing before writing.
    linked: bool,
    /// File and special entries as this batch leaves them so far (`None`: removed), by key.
    files: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Link records as this batch leaves them so far, by id.
    records: HashMap<String, Vec<String>>,
    /// Every key written, in order (`None`: deleted).
    pub(super) writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl<'v> Plan<'v> {
    /// A plan against `view`; `linked` says whether any group may be touched.
    pub(super) fn new(view: &'v View<&'v Hypercore>, linked: bool) -> Plan<'v> {
        Plan { view, linked, files: HashMap::new(), records: HashMap::new(), writes: Vec::new() }
    }

    /// A key written as is (folder records, special files).
    pub(super) fn raw(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.writes.push((key, value));
    }

    /// The stored entry at `path` of sub-database `space` as the batch leaves it so far.
    fn file(&self, space: &[u8], path: &str) -> Result<Option<Vec<u8>>> {
        let key = key_in(space, path);
        if let Some(v) = self.files.get(&key) {
            return Ok(v.clone());
        }
        Ok(self.view.get(&key)?.map(|e| e.value))
    }

    /// The names of group `id` as the batch leaves them so far.
    fn record(&mut self, id: &str) -> Result<&mut Vec<String>> {
        if !self.records.contains_key(id) {
            let names = read_record(self.view, id)?;
            self.records.insert(id.to_owned(), names);
        }
        Ok(self.records.get_mut(id).expect("just inserted"))
    }

    fn set(&mut self, space: &[u8], path: &str, value: Option<Vec<u8>>) {
        let key = key_in(space, path);
        self.writes.push((key.clone(), value.clone()));
        self.files.insert(key, value);
    }

    /// Writes an entry at `path` of `space` (files or special files). A linked entry joins its
    /// group if the group exists, and with `through` (a write through this name, not a move)
    /// goes to the group's other names.
    pub(super) fn put(&mut self, space: &[u8], path: &str, value: Vec<u8>, through: bool) -> Result<()> {
        if !self.linked {
            self.set(space, path, Some(value));
            return Ok(());
        }
        let old = self.file(space, path)?.and_then(|v| Entry::link_id_of(&v));
        let new = Entry::link_id_of(&value);
        if let Some(old) = old.as_deref().filter(|o| Some(*o) != new.as_deref()) {
            self.record(old)?.retain(|n| n != path);
        }
        self.set(space, path, Some(value.clone()));
        let Some(id) = new else { return Ok(()) };
        let names = self.record(&id)?;
        if names.is_empty() {
            return Ok(());
        }
        if !names.iter().any(|n| n == path) {
            names.push(path.to_owned());
        }
        if through {
            for other in names.clone() {
                // Only names that still hold this group's entry: a record is never trusted to
                // name files outside its group.
                let current = self.file(space, &other)?;
                if other != path
                    && current.as_deref() != Some(&value[..])
                    && current.and_then(|v| Entry::link_id_of(&v)).as_deref() == Some(&id)
                {
                    self.set(space, &other, Some(value.clone()));
                }
            }
        }
        Ok(())
    }

    /// Removes the entry at `path` of `space`, and the name from its group.
    pub(super) fn del(&mut self, space: &[u8], path: &str) -> Result<()> {
        if !self.linked {
            self.set(space, path, None);
            return Ok(());
        }
        if let Some(id) = self.file(space, path)?.and_then(|v| Entry::link_id_of(&v)) {
            self.record(&id)?.retain(|n| n != path);
        }
        self.set(space, path, None);
        Ok(())
    }

    /// Gives the file (or special file) at `from` the further name `to` (which must be free).
    pub(super) fn link(&mut self, from: &str, to: &str) -> Result<()> {
        let space = if self.file(FILES, from)?.is_some() { FILES } else { SPECIAL };
        let value =
            self.file(space, from)?.ok_or_else(|| Error::InvalidRequest(format!("no file at {from} to link")))?;
        if self.file(FILES, to)?.is_some() || self.file(SPECIAL, to)?.is_some() {
            return Err(Error::InvalidRequest(format!("{to} exists")));
        }
        let mut entry = Entry::decode(&value)?;
        let id = match entry.link_id() {
            Some(id) => id.to_owned(),
            None => {
                let id = hex::encode(rand::random::<[u8; 16]>());
                let mut m = match entry.metadata.take() {
                    Some(Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                m.insert(LINK_KEY.into(), Value::from(id.as_str()));
                entry.metadata = Some(Value::Object(m));
                id
            }
        };
        let value = entry.encode();
        let names = self.record(&id)?;
        if !names.iter().any(|n| n == from) {
            names.push(from.to_owned());
        }
        if names.len() >= MAX_LINKS {
            return Err(Error::InvalidRequest(format!("{from} has {} names, the most a file may have", names.len())));
        }
        names.push(to.to_owned());
        self.set(space, from, Some(value.clone()));
        self.set(space, to, Some(value));
        Ok(())
    }

    /// Every key to write: the entries, then the link records changed.
    pub(super) fn finish(mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut records: Vec<_> = self.records.into_iter().collect();
        records.sort();
        for (id, names) in records {
            let value = (names.len() >= 2).then(|| Value::from(names).to_string().into_bytes());
            self.writes.push((key_in(LINKS, &id), value));
        }
        self.writes
    }
}

/// The names of group `id`: at most [`MAX_LINKS`] paths; a record that is not a JSON array of
/// strings names nobody.
pub(super) fn read_record<B: crate::fetch::Blocks>(view: &View<B>, id: &str) -> Result<Vec<String>> {
    let Some(e) = view.get(&key_in(LINKS, id))? else { return Ok(Vec::new()) };
    let names: Vec<String> = serde_json::from_slice(&e.value).unwrap_or_default();
    Ok(names.into_iter().take(MAX_LINKS).collect())
}
