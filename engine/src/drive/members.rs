//! How a member of a multi-writer drive records its changes in its own Hyperdrive-13 db, and
//! how they are read back as [`merge::Change`]s (the merge that makes the one tree is
//! [`merge`]'s).
//!
//! A member's drive is an ordinary drive: its `files\0` holds the files it wrote, so JS's
//! Hyperdrive reads it as it is. What the merge needs beside lives under keys JS does not list:
//!
//! - `dirs\0FOLDER`, hyperfs's folder records (an empty folder, a folder's attributes), are
//!   changes too, merged on paths of their own ([`dir_path`]).
//! - `mw\0gone\0PATH`: this member deleted `PATH` (whoever wrote it; a folder record's is
//!   `dir:FOLDER`). A file of its own it deletes goes from its `files\0` too; the marker is
//!   what the merge reads.
//! - `mw\0member\0KEY` (64 hex digits) with the member's name: `KEY` became a member;
//!   `mw\0removed\0KEY`: it was removed.
//! - `mw\0clock`: closes each batch of changes with what this member had seen of every
//!   member's db (`uint count ‖ (fixed32 key ‖ uint length)…`, its own db as it was before the
//!   batch). Every operation since the previous marker is a change with that clock.
//!
//! - `mw\0view`: closes a batch that is not a change: the member's own `files\0` made to show
//!   the merged tree (others' files copied in, files the merge took away deleted), with the
//!   clock of what the merge had of the other members' dbs. A member's drive is so the whole
//!   merged tree as that member last saw it: it mounts, lists and exports as any drive.
//!
//! A change's place (`seq`) is its block in the member's db; a clock counts blocks. Operations
//! after the last marker (a batch not finished) are not changes yet. A deletion of a `files\0`
//! key is not a change (its `mw\0gone\0` marker is); neither is anything else in the db.
//!
//! Membership is merged as files are, on paths of its own ([`member_path`]): a member is one
//! while its latest changes there say added.

use crate::encoding::{Decoder, Encoder};
use crate::hyperbee::HistoryEntry;

use super::merge::{Change, Clock, Op, Writer};
use super::meta::Meta;
use super::Entry;

/// The keys of a member log, outside Hyperdrive's `files\0`.
pub const GONE: &[u8] = b"mw\0gone\0";
pub const MEMBER: &[u8] = b"mw\0member\0";
pub const REMOVED: &[u8] = b"mw\0removed\0";
pub const CLOCK: &[u8] = b"mw\0clock";
pub const VIEW: &[u8] = b"mw\0view";
pub(super) const FILES: &[u8] = b"files\0";
/// Folder records (an empty folder, a folder's attributes), kept beside `files\0`.
pub(super) const DIRS: &[u8] = b"dirs\0";
/// A member's name at most, in bytes (longer ones are cut).
pub const MAX_NAME: usize = 64;
/// Members a clock names at most (a larger one is not read: a member's log is anyone's).
pub const MAX_MEMBERS: usize = 1024;

/// What a member's change holds: a file's entry (its content is in that member's blobs), a
/// folder's record (merged on [`dir_path`]), or a member added with its name.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    File(Entry),
    Dir(Entry),
    Member(String),
}

/// The path a folder record is merged on: apart from the files' (a folder record and a file
/// inside it are no conflict).
pub fn dir_path(folder: &str) -> String {
    format!("dir:{folder}")
}

/// The path a membership change is merged on: one no file path can be (files' start with `/`).
pub fn member_path(member: &Writer) -> String {
    format!("member:{}", crate::crypto::to_hex(&member.0))
}

/// A clock as the `mw\0clock` marker holds it.
pub fn encode_clock(clock: &Clock) -> Vec<u8> {
    let mut e = Encoder::new();
    let n = clock.iter().count();
    e.uint(n as u64);
    for (w, len) in clock.iter() {
        e.fixed(&w.0).uint(*len);
    }
    e.finish()
}

pub fn decode_clock(bytes: &[u8]) -> Option<Clock> {
    let mut d = Decoder::new(bytes);
    let n = d.count("clock", 33).ok()?;
    if n > MAX_MEMBERS {
        return None;
    }
    let mut clock = Clock::default();
    for _ in 0..n {
        let w = Writer(d.array("member").ok()?);
        let len = d.uint("length").ok()?;
        clock.set(w, len);
    }
    Some(clock)
}

/// The changes in `writer`'s db history (oldest first), each with the clock of the marker that
/// closed its batch. What is not a change is skipped; an undecodable entry or marker drops its
/// batch (a member log is anyone's data).
pub fn changes(writer: Writer, history: impl IntoIterator<Item = HistoryEntry>) -> Vec<Change<Value>> {
    changes_and_next(writer, history).0
}

/// As [`changes`], with where to read from next time: the block after the last marker (a
/// batch not closed yet is read again then).
pub fn changes_and_next(
    writer: Writer,
    history: impl IntoIterator<Item = HistoryEntry>,
) -> (Vec<Change<Value>>, Option<u64>) {
    let mut next = None;
    let mut out = Vec::new();
    let mut batch: Vec<(u64, String, Op<Value>)> = Vec::new();
    let mut broken = false;
    for h in history {
        let (key, seq) = (&h.entry.key, h.entry.seq);
        if key.as_slice() == CLOCK && !h.deletion {
            next = Some(seq + 1);
            match decode_clock(&h.entry.value) {
                Some(clock) if !broken => {
                    for (seq, path, op) in batch.drain(..) {
                        out.push(Change { writer, seq, clock: clock.clone(), path, op });
                    }
                }
                _ => batch.clear(),
            }
            broken = false;
            continue;
        }
        if key.as_slice() == VIEW && !h.deletion {
            // What came since the last marker showed the merge: no change of this member's.
            next = Some(seq + 1);
            batch.clear();
            broken = false;
            continue;
        }
        if h.deletion {
            continue;
        }
        let utf8 = |rest: &[u8]| std::str::from_utf8(rest).ok().map(str::to_owned);
        let op = if let Some(rest) = key.strip_prefix(FILES) {
            match (utf8(rest), Entry::decode(&h.entry.value)) {
                (Some(path), Ok(entry)) => {
                    let mtime_ms = mtime_ms(&entry);
                    Some((path, Op::Put { value: Value::File(entry), mtime_ms }))
                }
                _ => {
                    broken = true;
                    None
                }
            }
        } else if let Some(rest) = key.strip_prefix(DIRS).filter(|r| *r != b"/") {
            match (utf8(rest), Entry::decode(&h.entry.value)) {
                (Some(path), Ok(entry)) => Some((dir_path(&path), Op::Put { value: Value::Dir(entry), mtime_ms: 0 })),
                _ => {
                    broken = true;
                    None
                }
            }
        } else if let Some(rest) = key.strip_prefix(GONE) {
            utf8(rest).map(|path| (path, Op::Delete))
        } else if let Some(member) = key.strip_prefix(MEMBER).and_then(member_key) {
            let mut name = String::from_utf8_lossy(&h.entry.value).into_owned();
            let mut end = name.len().min(MAX_NAME);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            Some((member_path(&member), Op::Put { value: Value::Member(name), mtime_ms: 0 }))
        } else {
            key.strip_prefix(REMOVED).and_then(member_key).map(|m| (member_path(&m), Op::Delete))
        };
        if let Some((path, op)) = op {
            batch.push((seq, path, op));
        }
    }
    (out, next)
}

/// A member's key from its 64 hex digits.
pub(super) fn member_key(hex: &[u8]) -> Option<Writer> {
    let s = std::str::from_utf8(hex).ok()?;
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Writer(key))
}

/// An entry's mtime in milliseconds (0 without one): what orders concurrent puts.
fn mtime_ms(entry: &Entry) -> u64 {
    let epoch = std::time::UNIX_EPOCH;
    let none = Meta { mode: 0, uid: 0, gid: 0, mtime: epoch, ctime: epoch, atime: epoch };
    let meta = Meta::from_json(entry.metadata.as_ref(), none);
    meta.mtime.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[path = "members_tests.rs"]
mod tests;
