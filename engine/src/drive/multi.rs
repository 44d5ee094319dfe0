//! A multi-writer drive as one member sees it: its own drive, which it writes, the other
//! members' drives as far as it holds them, and the one tree [`merge`] makes of all their
//! changes ([`members`] says how changes sit in a member's drive).
//!
//! Writes go to the member's own drive, each batch closed with the clock of what it has seen:
//! every member's db as it holds it now. A file another member wrote is deleted with a marker
//! (its bytes stay in that member's drive); a rename is a delete and a put of the same content,
//! copied into this member's blobs (only chunks it lacks are stored).
//!
//! The member's own drive also *shows* the merged tree ([`MultiDrive::view_steps`],
//! [`MultiDrive::apply_view`]): its `files\0` are made what the merge holds, in batches closed
//! by a `view` marker that are no change of its own. What a mount, `put` or `rm` then changes
//! in it is closed as a change by [`closing`], with the clock of the view it was made on. So
//! every command that reads a drive reads a multi-writer one, and a reader who is no member
//! reads the merged tree from any member's drive.
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
    /// The change's place in its writer's log.
    pub seq: u64,
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
    /// What the own drive's files were last made from, per path copied from another member:
    /// the merged tree's entry and the own entry that shows it.
    shown: Shown,
}

/// A key of a member's db and its value (`None`: deleted), as [`Drive::apply_with`] takes them.
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// The steps of a view made ready beside the drive's owner: each put with its content
/// prepared (when copied from another member), and the deletions.
pub struct PreparedView {
    /// Puts whose content could not be read (another member's entry naming blocks it does not
    /// give, or not yet): left out of this view, with their writer and place.
    pub skipped: Vec<(Writer, u64, Error)>,
    puts: Vec<(String, Held, Option<super::PreparedBlob>)>,
    dels: Vec<String>,
    /// Folder records to make (with their attributes) or forget.
    dirs: Vec<(String, Option<Entry>)>,
}

impl PreparedView {
    /// What a view of `clock` with these puts left out has seen: each skipped put's writer
    /// counted only up to it (a later change of this member's on that path must not pass for
    /// one that saw it).
    pub fn seen(&self, clock: &Clock) -> Clock {
        let mut out = clock.clone();
        for (w, seq, _) in &self.skipped {
            out.set(*w, out.get(w).min(*seq));
        }
        out
    }
}

/// One step that makes the member's own files show the merged tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Show `held` at `path` (its content copied into the member's blobs unless its own).
    Put { path: String, held: Held },
    /// Nothing is at `path` in the merged tree.
    Del { path: String },
    /// The merged tree records folder `path` with these attributes.
    Mkdir { path: String, entry: Entry },
    /// … or has no record of it.
    Rmdir { path: String },
}

/// What closes the changes a member made through its own drive since its last marker (a
/// mount's writes, `put`, `rm`, `mv`, `mkdir`), as a tail for [`Drive::apply_with`]: a `gone`
/// marker for each file or folder record whose last change there deleted it, then a clock
/// marker: what the view they
/// were made on had merged ([`view_clock`]), and `seen` (what the merge had when the drive last
/// showed it whole, which a view marker is written for only when the tree changed). `None`
/// when no file or folder record changed since.
pub fn closing(own: &Drive, seen: &Clock) -> Result<Option<Vec<Record>>> {
    let db = own.db();
    let last = [members::CLOCK, members::VIEW]
        .into_iter()
        .map(|k| db.get(k).map(|e| e.map_or(0, |e| e.seq)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    if db.version() <= last + 1 {
        return Ok(None);
    }
    let range = crate::hyperbee::HistoryRange { gte: Some(last as i64 + 1), ..Default::default() };
    let (mut changed, mut gone) = (false, BTreeSet::new());
    for h in db.view().history(&range) {
        let h = h?;
        let key = h.entry.key.as_slice();
        let path = match (key.strip_prefix(members::FILES), key.strip_prefix(members::DIRS)) {
            (Some(file), _) => String::from_utf8_lossy(file).into_owned(),
            (_, Some(folder)) if folder != b"/" => members::dir_path(&String::from_utf8_lossy(folder)),
            _ => continue,
        };
        changed = true;
        if h.deletion {
            gone.insert(path);
        } else {
            gone.remove(&path);
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut tail: Vec<_> =
        gone.into_iter().map(|p| ([members::GONE, p.as_bytes()].concat(), Some(Vec::new()))).collect();
    tail.push(clock_marker(own, seen)?);
    Ok(Some(tail))
}

/// What the merge had of the other members' dbs when a member's drive last changed to show
/// it (its last view marker); empty before the first.
pub fn view_clock(own: &Drive) -> Result<Clock> {
    Ok(own.db().get(members::VIEW)?.and_then(|e| members::decode_clock(&e.value)).unwrap_or_default())
}

/// The clock marker closing a batch a member writes in its drive: its view's clock with `seen`.
fn clock_marker(own: &Drive, seen: &Clock) -> Result<Record> {
    let mut clock = view_clock(own)?;
    clock.merge(seen);
    clock.set(Writer(own.key().0), own.db().version());
    Ok((members::CLOCK.to_vec(), Some(members::encode_clock(&clock))))
}

/// Records in a member's drive `own` that `member` was added with its name, or removed
/// (`None`), after closing what was open ([`closing`]; `seen` as there).
pub fn change_membership(own: &mut Drive, seen: &Clock, member: Writer, name: Option<&str>) -> Result<()> {
    if let Some(tail) = closing(own, seen)? {
        own.apply_with(&[], &tail)?;
    }
    let hex = crate::crypto::to_hex(&member.0);
    let record = match name {
        Some(n) => ([members::MEMBER, hex.as_bytes()].concat(), Some(n.as_bytes().to_vec())),
        None => ([members::REMOVED, hex.as_bytes()].concat(), Some(Vec::new())),
    };
    let marker = clock_marker(own, seen)?;
    own.apply_with(&[], &[record, marker])
}

/// Reads a blob a window at a time (a file copied from another member's drive).
struct BlobReader<'a> {
    drive: &'a Drive,
    blob: super::Blob,
    offset: u64,
}

impl std::io::Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (buf.len() as u64).min(4 << 20);
        let got = self.drive.read_blob(&self.blob, self.offset, want).map_err(std::io::Error::other)?;
        buf[..got.len()].copy_from_slice(&got);
        self.offset += got.len() as u64;
        Ok(got.len())
    }
}

impl MultiDrive {
    /// The member writing `own` in the drive `founder` made, holding `others` (each as far as
    /// it has it; a drive of a writer that is no member is held but not taken).
    pub fn new(founder: Writer, own: Drive, others: Vec<Drive>) -> MultiDrive {
        MultiDrive { founder, own, others, read: Default::default(), shown: Default::default() }
    }

    /// The founder: the drive's key, by which readers find it.
    pub fn founder(&self) -> Writer {
        self.founder
    }

    /// Takes a newer state of the member's own drive (a frozen copy of it, for reading).
    pub fn set_own(&mut self, own: Drive) {
        self.own = own;
    }

    /// The steps that make the own drive's files what the merged tree holds, and the clock of
    /// the other members' dbs the merge was made of. A path no drive can hold (another
    /// member's log is its data) is left out.
    pub fn view_steps(&self) -> Result<(Vec<Step>, Clock)> {
        // Files of edits not closed yet are in no member's changes: a view would delete them
        // (and its marker would make them no change at all).
        if closing(&self.own, &Clock::default())?.is_some() {
            return Err(Error::InvalidRequest(
                "the member's drive holds edits not closed yet: close them first".into(),
            ));
        }
        let (tree, dirs) = self.resolved()?;
        let me = self.writer();
        // What the merge took of each other member: up to its last closed batch (a batch that
        // arrived without its marker yet is not seen; a clock saying so would put this
        // member's next change after it unseen).
        let mut clock = Clock::default();
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.others {
            let w = Writer(d.key().0);
            clock.set(w, read.get(&w).map_or(0, |r| r.0));
        }
        drop(read);
        let current: BTreeMap<String, Entry> = self.own.list("/")?.into_iter().collect();
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut steps = Vec::new();
        let held_paths: BTreeSet<String> = tree.keys().cloned().collect();
        for (path, held) in tree {
            if super::path::file(&path).ok().as_deref() != Some(path.as_str()) {
                continue;
            }
            let cur = current.get(&path);
            let same = match cur {
                None => false,
                Some(c) if held.writer == me => *c == held.entry,
                Some(c) => match shown.get(&path) {
                    Some((w, src, applied)) if *w == held.writer && *src == held.entry => applied == c,
                    _ if self.same_content(c, &held)? => {
                        shown.insert(path.clone(), (held.writer, held.entry.clone(), c.clone()));
                        true
                    }
                    _ => false,
                },
            };
            if !same {
                steps.push(Step::Put { path, held });
            }
        }
        steps.extend(current.into_keys().filter(|p| !held_paths.contains(p)).map(|path| Step::Del { path }));
        let shown_dirs: BTreeMap<String, Entry> = self.own.view().list_dirs("/")?.into_iter().collect();
        for (path, entry) in &dirs {
            let plain = super::path::folder(path).ok().as_deref() == Some(path.as_str());
            if plain && shown_dirs.get(path) != Some(entry) {
                steps.push(Step::Mkdir { path: path.clone(), entry: entry.clone() });
            }
        }
        steps.extend(shown_dirs.into_keys().filter(|p| !dirs.contains_key(p)).map(|path| Step::Rmdir { path }));
        Ok((steps, clock))
    }

    /// Whether the own entry `own` shows `held` (a cold start, before this member noted what it
    /// copied): the same kind, mode, metadata and bytes.
    fn same_content(&self, own: &Entry, held: &Held) -> Result<bool> {
        if (own.executable, &own.linkname, &own.metadata)
            != (held.entry.executable, &held.entry.linkname, &held.entry.metadata)
        {
            return Ok(false);
        }
        let Some(from) = self.drives().find(|d| d.key().0 == held.writer.0) else { return Ok(false) };
        match (&own.blob, &held.entry.blob) {
            (None, None) => Ok(true),
            (Some(a), Some(b)) => {
                let size = self.own.blob_size(a)?;
                if size != from.blob_size(b)? {
                    return Ok(false);
                }
                let mut offset = 0;
                while offset < size {
                    let x = self.own.read_blob(a, offset, 4 << 20)?;
                    if x.is_empty() || x != from.read_blob(b, offset, 4 << 20)? {
                        return Ok(false);
                    }
                    offset += x.len() as u64;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reads and chunks, beside the member's drive (on the copy of it this holds), the content
    /// the `steps` copy from other members: the slow part of showing the merged tree, which may
    /// wait for blocks still on their way. [`MultiDrive::apply_view`] then commits it.
    pub fn prepare_view(&self, steps: Vec<Step>) -> Result<PreparedView> {
        let me = self.writer();
        let mut out = PreparedView { skipped: Vec::new(), puts: Vec::new(), dels: Vec::new(), dirs: Vec::new() };
        for s in steps {
            match s {
                Step::Put { path, held } => {
                    let blob = match &held.entry.blob {
                        Some(b) if held.writer != me => {
                            let from = self
                                .others
                                .iter()
                                .find(|d| d.key().0 == held.writer.0)
                                .ok_or_else(|| Error::InvalidRequest("the member holding it is gone".into()));
                            let prepared = from.and_then(|from| {
                                self.own.prepare_blob(BlobReader { drive: from, blob: *b, offset: 0 }, false)
                            });
                            match prepared {
                                Ok(p) => Some(p),
                                Err(e) => {
                                    out.skipped.push((held.writer, held.seq, e));
                                    continue;
                                }
                            }
                        }
                        _ => None,
                    };
                    out.puts.push((path, held, blob));
                }
                Step::Del { path } => out.dels.push(path),
                Step::Mkdir { path, entry } => out.dirs.push((path, Some(entry))),
                Step::Rmdir { path } => out.dirs.push((path, None)),
            }
        }
        Ok(out)
    }

    /// Makes `own` (the member's drive, of which this holds a copy) show the merged tree: what
    /// [`MultiDrive::prepare_view`] made ready, in one batch closed by a view marker of `clock`
    /// — which must not count a skipped put as seen ([`PreparedView::seen`]).
    pub fn apply_view(&self, own: &mut Drive, view: PreparedView, clock: &Clock) -> Result<()> {
        let me = Writer(own.key().0);
        let mut entries = Vec::new();
        for (path, held, blob) in view.puts {
            let entry = match blob {
                Some(prepared) => Entry { blob: Some(own.write_prepared(prepared)?), ..held.entry.clone() },
                None => held.entry.clone(),
            };
            entries.push((path, held, entry));
        }
        let mut ops: Vec<Op<'_>> = entries.iter().map(|(p, _, e)| Op::Put(p, e)).collect();
        ops.extend(view.dels.iter().map(|p| Op::Del(p)));
        ops.extend(view.dirs.iter().map(|(p, e)| match e {
            Some(e) => Op::Mkdir(p, e),
            None => Op::Rmdir(p),
        }));
        own.apply_with(&ops, &[(members::VIEW.to_vec(), Some(members::encode_clock(clock)))])?;
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for (path, held, entry) in entries {
            if held.writer != me {
                shown.insert(path, (held.writer, held.entry, entry));
            }
        }
        Ok(())
    }

    /// Makes the own drive this holds show the merged tree (prepared and applied on it);
    /// returns how many steps that took.
    pub fn show(&mut self) -> Result<usize> {
        let (steps, clock) = self.view_steps()?;
        let n = steps.len();
        if n > 0 {
            let view = self.prepare_view(steps)?;
            let clock = view.seen(&clock);
            let mut own = self.own.frozen_copy();
            std::mem::swap(&mut own, &mut self.own);
            let applied = self.apply_view(&mut own, view, &clock);
            std::mem::swap(&mut own, &mut self.own);
            applied?;
        }
        Ok(n)
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

    /// Every change of a member (and of a removed member up to its cut) held here, in no
    /// particular order: what `log` tells the members of.
    pub fn changes(&self) -> Result<Vec<Change<Value>>> {
        let (all, members, cuts) = self.membership()?;
        Ok(all
            .into_iter()
            .filter(|c| members.contains(&c.writer) || cuts.get(&c.writer).is_some_and(|cut| c.seq < *cut))
            .collect())
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
        Ok(self.resolved()?.0)
    }

    /// The merged tree's files (as [`MultiDrive::tree`]) and folder records (by folder).
    fn resolved(&self) -> Result<(BTreeMap<String, Held>, BTreeMap<String, Entry>)> {
        let merge = self.merge()?;
        // The same content is the same entry: a member's copy of another's file is written to
        // its own blobs, so identical bytes from two members still make a conflict copy. Two
        // records of one folder never do: the later wins.
        let tree = merge.tree(|a, b| matches!((a, b), (Value::Dir(_), Value::Dir(_))) || a == b);
        let (mut files, mut dirs) = (BTreeMap::new(), BTreeMap::new());
        for (path, r) in tree {
            match &r.change.op {
                merge::Op::Put { value: Value::File(entry), .. } => {
                    let (writer, seq) = (r.change.writer, r.change.seq);
                    files.insert(path, Held { writer, seq, entry: entry.clone(), conflict: r.conflict });
                }
                merge::Op::Put { value: Value::Dir(entry), .. } if !r.conflict => {
                    if let Some(folder) = path.strip_prefix("dir:") {
                        dirs.insert(folder.to_owned(), entry.clone());
                    }
                }
                _ => {}
            }
        }
        Ok((files, dirs))
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
    fn marker(&self) -> Record {
        (members::CLOCK.to_vec(), Some(members::encode_clock(&self.clock())))
    }
}

/// What a member copied to show the merged tree: per path, the other member, its entry and the
/// own entry showing it.
type Shown = std::sync::Mutex<std::collections::HashMap<String, (Writer, Entry, Entry)>>;

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
