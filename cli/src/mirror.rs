//! `hyperfs import` and `hyperfs export`: mirror a local folder into a drive folder and back,
//! run by the node for its clients.
//!
//! A mirror adds what the source has and the target lacks, rewrites what differs and removes
//! what the source lacks. Files are compared as rsync does by default: size, modification time
//! (to the nanosecond) and mode; an entry written without times (by JS Hyperdrive) is compared by
//! content. Both sides keep mode, modification time, symlinks and the executable bit; directories
//! get a record in the drive so their mode and time survive the round trip.
//!
//! Imports write many files per signed append ([`BlobBatch`]) and a few thousand entries per
//! drive version; the drive is locked only while one such group is written. Exports write each
//! file beside its final name and rename it into place, so a reader of the folder never sees half
//! a file.
//!
//! Invariant: a dry run reads both sides and changes neither.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use hyperfs_engine::drive::{printable, BlobBatch, Entry, Meta, Op, Special};
use hyperfs_engine::{Drive, SharedDrive};
use rayon::prelude::*;

use crate::api::{MirrorChange, MirrorProgress, Mirrored};
use crate::beneath::Beneath;

/// An import applies at most this many changes per drive version…
const GROUP_OPS: usize = 4096;
/// …and reads at most about this many bytes of files for one.
const GROUP_BYTES: u64 = 256 << 20;
/// Exported files are read this much at a time (the drive reads the chunks in parallel).
const READ_WINDOW: u64 = 8 << 20;
/// Progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// One name of a tree, local or in the drive.
#[derive(Debug, Clone)]
enum Item {
    /// A regular file. `meta` is `None` for a drive entry written without times.
    File {
        size: u64,
        executable: bool,
        meta: Option<Meta>,
        entry: Option<Entry>,
        /// Every name of the file in the tree, sorted, when it has more than one (hard links:
        /// one inode locally, one link group in the drive); empty otherwise.
        group: Vec<String>,
    },
    /// A FIFO, socket or device node.
    Special {
        special: Special,
        meta: Option<Meta>,
    },
    Link {
        target: String,
        meta: Option<Meta>,
    },
    /// A directory; `meta` is `None` for a drive folder that exists only through its files.
    Dir {
        meta: Option<Meta>,
    },
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Item::File { .. } => "file",
            Item::Link { .. } => "symlink",
            Item::Special { .. } => "special file",
            Item::Dir { .. } => "directory",
        }
    }
}

/// What a mirror does to one path of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Add,
    Change,
    Remove,
}

#[derive(Debug)]
struct Change {
    /// Relative to the mirrored folders ("" is the folder itself).
    rel: String,
    action: Action,
    /// The source's item (for `Add`/`Change`), or the target's (for `Remove`).
    item: Item,
}

/// The counts a mirror reports, and as it goes, its progress.
#[derive(Debug, Default)]
struct Tally {
    added: u64,
    changed: u64,
    removed: u64,
    unchanged: u64,
    files: u64,
    total_files: u64,
    bytes: u64,
    total_bytes: u64,
    skipped: Vec<String>,
}

/// Reports progress to the client at most every [`PROGRESS_EVERY`].
struct Progress<'a> {
    emit: &'a mut dyn FnMut(MirrorProgress) -> bool,
    last: Instant,
    /// The client went away: the mirror stops at the next file.
    cancelled: bool,
}

impl Progress<'_> {
    fn report(&mut self, t: &Tally, force: bool) {
        if force || self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            let p = MirrorProgress {
                files: t.files,
                total_files: t.total_files,
                bytes: t.bytes,
                total_bytes: t.total_bytes,
            };
            if !(self.emit)(p) {
                self.cancelled = true;
            }
        }
    }
}

/// `hyperfs import DIR DRIVE[:/path]`.
pub fn import(
    drive: &SharedDrive,
    src: &Path,
    folder: &str,
    dry_run: bool,
    emit: &mut dyn FnMut(MirrorProgress) -> bool,
) -> Result<Mirrored> {
    let started = Instant::now();
    let meta = std::fs::metadata(src).with_context(|| format!("{}", src.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory (hyperfs put stores one file)", src.display());
    }
    let mut tally = Tally::default();
    let mut local = BTreeMap::new();
    scan_local(src, &mut local, &mut tally.skipped)?;
    let remote = {
        let d = drive.snapshot();
        if !d.writable() && !dry_run {
            bail!("this node cannot write drive {} (it holds no secret key for it)", hex::encode(d.key()));
        }
        scan_drive(&d, None, folder, true, &mut Vec::new())?
    };
    let changes = plan(&local, &remote, false, &mut tally, |_, l, r| same(l, r, true));
    if dry_run {
        return Ok(summary(&tally, &changes, started, None, folder));
    }
    let mut progress = Progress { emit, last: Instant::now(), cancelled: false };
    progress.report(&tally, true);
    // Removals first (they are cheap), then additions in groups of one version each.
    let (removals, writes): (Vec<&Change>, Vec<&Change>) = changes.iter().partition(|c| c.action == Action::Remove);
    let mut pending = removals.into_iter().chain(writes).peekable();
    // Names written with their hard-link group already.
    let mut linked = std::collections::HashSet::new();
    while pending.peek().is_some() {
        let mut d = drive.write();
        let mut batch = BlobBatch::past_cache();
        let mut ops: Vec<(String, OwnedOp)> = Vec::new();
        let mut group_bytes = 0u64;
        while ops.len() < GROUP_OPS && group_bytes < GROUP_BYTES {
            if progress.cancelled {
                break;
            }
            let Some(c) = pending.next() else { break };
            let path = drive_path(folder, &c.rel);
            if linked.contains(&c.rel) {
                continue;
            }
            match (&c.action, &c.item) {
                (Action::Remove, Item::File { .. } | Item::Link { .. }) => ops.push((path, OwnedOp::Del)),
                (Action::Remove, Item::Special { .. }) => ops.push((path, OwnedOp::DelSpecial)),
                (_, Item::Special { special, meta }) => {
                    let metadata = meta.map(|m| m.to_json(None)).unwrap_or(serde_json::Value::Null);
                    let metadata = Some(special.to_json(metadata));
                    ops.push((path, OwnedOp::Mknod(Entry { executable: false, linkname: None, blob: None, metadata })));
                }
                (Action::Remove, Item::Dir { meta }) => {
                    if meta.is_some() {
                        ops.push((path, OwnedOp::Rmdir));
                    }
                }
                (_, Item::File { executable, meta, group, .. }) => {
                    let local = src.join(&c.rel);
                    let file = match std::fs::File::open(&local) {
                        Ok(f) => f,
                        Err(e) => {
                            tally.skipped.push(format!("{}: {e}", local.display()));
                            continue;
                        }
                    };
                    let mut reader =
                        Counting { inner: DropBehind::new(file), tally: &mut tally, progress: &mut progress };
                    let blob = d
                        .write_blob_into(&mut batch, &mut reader)
                        .with_context(|| format!("storing {}", local.display()))?;
                    group_bytes += blob.byte_length;
                    tally.files += 1;
                    let metadata = meta.map(|m| m.to_json(None));
                    let entry = Entry { executable: *executable, linkname: None, blob: Some(blob), metadata };
                    if group.len() > 1 {
                        // Hard links: the whole group again, its other names linked to this one
                        // (names that held something else first give it up).
                        for name in group {
                            let p = drive_path(folder, name);
                            match remote.get(name) {
                                Some(Item::File { .. } | Item::Link { .. }) => ops.push((p, OwnedOp::Del)),
                                Some(Item::Special { .. }) => ops.push((p, OwnedOp::DelSpecial)),
                                _ => {}
                            }
                            linked.insert(name.clone());
                        }
                        ops.push((path.clone(), OwnedOp::Put(entry)));
                        for name in group.iter().filter(|n| **n != c.rel) {
                            ops.push((path.clone(), OwnedOp::Link(drive_path(folder, name))));
                        }
                        continue;
                    }
                    ops.push((path, OwnedOp::Put(entry)));
                }
                (_, Item::Link { target, meta }) => {
                    let metadata = meta.map(|m| m.to_json(None));
                    ops.push((
                        path,
                        OwnedOp::Put(Entry { executable: false, linkname: Some(target.clone()), blob: None, metadata }),
                    ));
                }
                (_, Item::Dir { meta }) => {
                    let metadata = meta.map(|m| m.to_json(None));
                    ops.push((path, OwnedOp::Mkdir(Entry { executable: false, linkname: None, blob: None, metadata })));
                }
            }
            // A name that changes kind leaves its old kind behind in another db record.
            if let Some(old) = remote.get(&c.rel) {
                let path = drive_path(folder, &c.rel);
                match (old, &c.item) {
                    (Item::Dir { meta: Some(_) }, Item::File { .. } | Item::Link { .. } | Item::Special { .. })
                        if c.action == Action::Change =>
                    {
                        ops.push((path, OwnedOp::Rmdir))
                    }
                    (Item::File { .. } | Item::Link { .. }, Item::Dir { .. } | Item::Special { .. })
                        if c.action == Action::Change =>
                    {
                        ops.push((path, OwnedOp::Del))
                    }
                    (Item::Special { .. }, Item::Dir { .. } | Item::File { .. } | Item::Link { .. })
                        if c.action == Action::Change =>
                    {
                        ops.push((path, OwnedOp::DelSpecial))
                    }
                    _ => {}
                }
            }
        }
        d.finish_blobs(&mut batch)?;
        let borrowed: Vec<Op<'_>> = ops
            .iter()
            .map(|(p, op)| match op {
                OwnedOp::Put(e) => Op::Put(p, e),
                OwnedOp::Mkdir(e) => Op::Mkdir(p, e),
                OwnedOp::Del => Op::Del(p),
                OwnedOp::Rmdir => Op::Rmdir(p),
                OwnedOp::Mknod(e) => Op::Mknod(p, e),
                OwnedOp::DelSpecial => Op::DelSpecial(p),
                OwnedOp::Link(to) => Op::Link(p, to),
            })
            .collect();
        if !borrowed.is_empty() {
            d.apply(&borrowed)?;
        }
        if progress.cancelled {
            bail!("the client went away; the import stopped (what was written stays; run it again to finish)");
        }
        progress.report(&tally, false);
    }
    let version = {
        let d = drive.snapshot();
        d.flush()?;
        d.version()
    };
    progress.report(&tally, true);
    Ok(summary(&tally, &changes, started, Some(version), folder))
}

/// `hyperfs export DRIVE[:/path] DIR`. Everything is written beneath `dst` ([`Beneath`]),
/// whatever the drive's names and links say; entries that cannot be laid out as a tree
/// (`DriveView::walk`) are reported and skipped. A drive this node cannot write is someone
/// else's: its set-uid, set-gid and sticky bits are dropped. Owners are set only with `owners`
/// (as root, like `tar --same-owner`); otherwise files belong to whoever runs the node.
#[allow(clippy::too_many_arguments)]
pub fn export(
    drive: &SharedDrive,
    version: Option<u64>,
    folder: &str,
    dst: &Path,
    dry_run: bool,
    owners: bool,
    emit: &mut dyn FnMut(MirrorProgress) -> bool,
) -> Result<Mirrored> {
    let started = Instant::now();
    if owners && !is_root() {
        bail!("--owners sets the owners a drive records, which only root can do");
    }
    let mut tally = Tally::default();
    let (remote, version) = {
        let d = drive.snapshot();
        let v = version.unwrap_or(d.version());
        let trusted = d.writable();
        (scan_drive(&d, Some(v), folder, trusted, &mut tally.skipped)?, v)
    };
    if remote.len() <= 1 && !matches!(remote.get(""), Some(Item::Dir { meta: Some(_) })) {
        let d = drive.snapshot();
        let view = d.checkout(version)?;
        if view.stat(folder)?.is_some() {
            bail!("{folder} is a file; export a folder (hyperfs cat prints one file)");
        }
        if !view.is_dir(folder)? {
            bail!("no folder {folder} in version {version} of the drive");
        }
    }
    let mut local = BTreeMap::new();
    let mut out = None;
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => {
            scan_local(dst, &mut local, &mut tally.skipped)?;
            out = Some(Beneath::open(dst).with_context(|| format!("opening {}", dst.display()))?);
        }
        Ok(_) => bail!("{} exists and is not a directory", dst.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", dst.display())),
    }
    // The drive is the source here; a file is judged by content when the drive kept no time.
    let changes = plan(&remote, &local, true, &mut tally, |rel, r, l| match (r, l, &out) {
        (Item::File { meta: None, size, entry: Some(e), .. }, Item::File { size: ls, .. }, Some(out)) if size == ls => {
            out.open_file(rel).map_err(anyhow::Error::from).and_then(|f| same_content(drive, e, f)).unwrap_or(false)
        }
        _ => same(r, l, owners),
    });
    if dry_run {
        return Ok(summary(&tally, &changes, started, Some(version), folder));
    }
    let mut progress = Progress { emit, last: Instant::now(), cancelled: false };
    progress.report(&tally, true);
    let out = match out {
        Some(out) => out,
        None => {
            create_folders(dst).with_context(|| format!("creating {}", dst.display()))?;
            Beneath::open(dst).with_context(|| format!("opening {}", dst.display()))?
        }
    };
    let out = &out;
    let shown = |rel: &str| printable(&dst.join(rel).to_string_lossy());
    // Removals, deepest first (a whole removed folder goes at once).
    for c in changes.iter().rev() {
        let replaced = c.action == Action::Change && local.get(&c.rel).is_some_and(|l| l.kind() != c.item.kind());
        if c.action != Action::Remove && !replaced {
            continue;
        }
        let target = match (c.action, local.get(&c.rel)) {
            (Action::Remove, _) => &c.item,
            (_, Some(l)) => l,
            (_, None) => continue,
        };
        let r = match target {
            Item::Dir { .. } => out.remove_dir_all(&c.rel),
            _ => out.remove_file(&c.rel),
        };
        r.with_context(|| format!("removing {}", shown(&c.rel)))?;
    }
    out.forget();
    // Folders and their contents, parents first; folder times are set last. Runs of small files
    // are written several at a time (each is a few system calls that wait on the file system).
    let mut dirs = Vec::new();
    let writes: Vec<&Change> = changes.iter().filter(|c| c.action != Action::Remove).collect();
    let mut at = 0;
    while at < writes.len() {
        let run = writes[at..].iter().take(SMALL_RUN).take_while(|c| is_small_file(c)).count();
        if run > 1 {
            if progress.cancelled {
                bail!("the client went away; the export stopped (run it again to finish)");
            }
            let bytes: Vec<u64> = writes[at..at + run]
                .par_iter()
                .map(|c| match &c.item {
                    Item::File { entry: Some(entry), meta, executable, .. } => {
                        let mut bytes = 0;
                        let fresh = !local.contains_key(&c.rel);
                        write_file(drive, entry, out, &c.rel, fresh, *meta, *executable, owners, &mut |n| bytes += n)
                            .with_context(|| format!("writing {}", shown(&c.rel)))?;
                        Ok(bytes)
                    }
                    _ => Ok(0),
                })
                .collect::<Result<_>>()?;
            tally.files += bytes.len() as u64;
            tally.bytes += bytes.iter().sum::<u64>();
            progress.report(&tally, false);
            at += run;
            continue;
        }
        let c = writes[at];
        at += 1;
        match &c.item {
            Item::Dir { meta } => {
                if !c.rel.is_empty() {
                    out.mkdir(&c.rel, 0o755).with_context(|| format!("creating {}", shown(&c.rel)))?;
                }
                dirs.push((c.rel.clone(), *meta));
            }
            Item::File { group, .. } if group.len() > 1 && group[0] != c.rel => {
                // A further name of a file written under its first name (earlier in path order).
                out.hard_link(&group[0], &c.rel).with_context(|| format!("linking {}", shown(&c.rel)))?;
                tally.files += 1;
            }
            Item::Special { special, meta } => {
                let dev = matches!(special, Special::Char(_) | Special::Block(_));
                if dev && !is_root() {
                    tally.skipped.push(format!("{}: a device node, which only root can make", shown(&c.rel)));
                    continue;
                }
                let kind = match special {
                    Special::Fifo => libc::S_IFIFO,
                    Special::Socket => libc::S_IFSOCK,
                    Special::Char(_) => libc::S_IFCHR,
                    Special::Block(_) => libc::S_IFBLK,
                };
                let mode = meta.map_or(0o644, |m| m.mode);
                out.mknod(&c.rel, kind | mode, special.rdev())
                    .with_context(|| format!("creating {}", shown(&c.rel)))?;
                if let Some(m) = meta {
                    out.set_owner_and_times(&c.rel, owners.then_some((m.uid, m.gid)), timespec(m.mtime))
                        .with_context(|| format!("setting the owner and times of {}", shown(&c.rel)))?;
                }
                tally.files += 1;
            }
            Item::File { entry: Some(entry), meta, executable, .. } => {
                if progress.cancelled {
                    bail!("the client went away; the export stopped (run it again to finish)");
                }
                let fresh = !local.contains_key(&c.rel);
                write_file(drive, entry, out, &c.rel, fresh, *meta, *executable, owners, &mut |n| {
                    tally.bytes += n;
                    progress.report(&tally, false);
                })
                .with_context(|| format!("writing {}", shown(&c.rel)))?;
                tally.files += 1;
                progress.report(&tally, false);
            }
            Item::File { entry: None, .. } => {}
            Item::Link { target, meta } => {
                out.symlink(target, &c.rel).with_context(|| format!("creating {}", shown(&c.rel)))?;
                if let Some(m) = meta {
                    out.set_owner_and_times(&c.rel, owners.then_some((m.uid, m.gid)), timespec(m.mtime))
                        .with_context(|| format!("setting the owner and times of {}", shown(&c.rel)))?;
                }
            }
        }
    }
    // Unchanged folders get their times back too when something inside them changed.
    for c in &changes {
        if let Some(parent) = Path::new(&c.rel).parent() {
            let rel = parent.to_string_lossy().into_owned();
            if let Some(Item::Dir { meta }) = remote.get(&rel) {
                dirs.push((rel, *meta));
            }
        }
    }
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.dedup_by(|a, b| a.0 == b.0);
    for (rel, meta) in dirs {
        if let Some(m) = meta {
            // Owner first: a change of owner clears set-id bits, which the mode then sets.
            out.set_owner_and_times(&rel, owners.then_some((m.uid, m.gid)), timespec(m.mtime))
                .with_context(|| format!("setting the owner and times of {}", shown(&rel)))?;
            out.chmod_dir(&rel, m.mode).with_context(|| format!("setting the mode of {}", shown(&rel)))?;
        }
    }
    progress.report(&tally, true);
    Ok(summary(&tally, &changes, started, Some(version), folder))
}

enum OwnedOp {
    Put(Entry),
    Mkdir(Entry),
    Del,
    Rmdir,
    Mknod(Entry),
    DelSpecial,
    /// A further name (the op's path is the file linked to).
    Link(String),
}

/// A reader that counts the bytes it yields into the progress.
struct Counting<'a, 'b, R> {
    inner: R,
    tally: &'a mut Tally,
    progress: &'a mut Progress<'b>,
}

impl<R: Read> Read for Counting<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.bytes += n as u64;
        self.progress.report(self.tally, false);
        Ok(n)
    }
}

/// A file read once from start to end whose pages leave the page cache behind the reader, a
/// few MiB at a time (as `rsync --drop-cache` does): importing big files does not fill memory
/// with their bytes and push out the user's working set. The store writes an import's big files
/// past the page cache too ([`BlobBatch::past_cache`]).
struct DropBehind {
    file: std::fs::File,
    read: u64,
    dropped: u64,
}

impl DropBehind {
    /// Pages are let go in steps of this many bytes (a file smaller than it is left alone).
    const STEP: u64 = 8 << 20;

    fn new(file: std::fs::File) -> Self {
        DropBehind { file, read: 0, dropped: 0 }
    }
}

impl Read for DropBehind {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if self.read - self.dropped >= Self::STEP {
            // SAFETY: posix_fadvise on a descriptor we hold; it only drops clean cached pages.
            unsafe {
                libc::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    self.dropped as libc::off_t,
                    (self.read - self.dropped) as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
            self.dropped = self.read;
        }
        Ok(n)
    }
}

/// The changes that make `target` like `source`, counted into `tally`. With `whole_folders`,
/// a folder the source lacks is one removal (a local folder goes with everything in it); a
/// drive folder's files are removed one by one.
fn plan(
    source: &BTreeMap<String, Item>,
    target: &BTreeMap<String, Item>,
    whole_folders: bool,
    tally: &mut Tally,
    same: impl Fn(&str, &Item, &Item) -> bool,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (rel, s) in source {
        let action = match target.get(rel) {
            Some(t) if same(rel, s, t) => {
                tally.unchanged += 1;
                continue;
            }
            Some(_) => Action::Change,
            None => Action::Add,
        };
        if let Item::File { size, .. } = s {
            tally.total_files += 1;
            tally.total_bytes += size;
        }
        changes.push(Change { rel: rel.clone(), action, item: s.clone() });
    }
    for (rel, t) in target {
        if source.contains_key(rel) {
            continue;
        }
        // Inside a folder that is removed whole, or that stops being a folder.
        let covered = whole_folders
            && Path::new(rel).ancestors().skip(1).any(|a| {
                let a = a.to_string_lossy();
                !a.is_empty()
                    && (!source.contains_key(a.as_ref()) || !matches!(source.get(a.as_ref()), Some(Item::Dir { .. })))
            });
        if !covered {
            changes.push(Change { rel: rel.clone(), action: Action::Remove, item: t.clone() });
        }
    }
    for c in &changes {
        match c.action {
            Action::Add => tally.added += 1,
            Action::Change => tally.changed += 1,
            Action::Remove => tally.removed += 1,
        }
    }
    changes.sort_by(|a, b| a.rel.cmp(&b.rel));
    changes
}

/// Whether target item `t` already equals source item `s`. Owners count only on import (an
/// export by a user who is not root cannot set them).
fn same(s: &Item, t: &Item, owners: bool) -> bool {
    let meta_same = |a: &Option<Meta>, b: &Option<Meta>| match (a, b) {
        (Some(a), Some(b)) => a.mode == b.mode && a.mtime == b.mtime && (!owners || (a.uid == b.uid && a.gid == b.gid)),
        _ => false,
    };
    match (s, t) {
        (Item::File { size: a, meta: ma, group: ga, .. }, Item::File { size: b, meta: mb, group: gb, .. }) => {
            a == b && meta_same(ma, mb) && ga == gb
        }
        (Item::Special { special: a, meta: ma }, Item::Special { special: b, meta: mb }) => a == b && meta_same(ma, mb),
        (Item::Link { target: a, meta: ma }, Item::Link { target: b, meta: mb }) => {
            a == b && ma.zip(*mb).is_none_or(|(x, y)| x.mtime == y.mtime)
        }
        (Item::Dir { meta: ma }, Item::Dir { meta: mb }) => ma.is_none() || meta_same(ma, mb),
        _ => false,
    }
}

/// Whether the local file `f` holds exactly the bytes of the drive entry.
fn same_content(drive: &SharedDrive, entry: &Entry, mut f: std::fs::File) -> Result<bool> {
    let Some(blob) = entry.blob else { return Ok(false) };
    let mut offset = 0u64;
    loop {
        let chunk = drive.snapshot().read_blob(&blob, offset, READ_WINDOW)?;
        let mut mine = vec![0u8; chunk.len()];
        f.read_exact(&mut mine)?;
        if mine != chunk {
            return Ok(false);
        }
        if chunk.is_empty() {
            return Ok(f.read(&mut [0u8; 1])? == 0);
        }
        offset += chunk.len() as u64;
    }
}

/// Files written several at a time by export: at most this many in a run, each at most
/// [`READ_WINDOW`] bytes and plain (one read from the drive).
const SMALL_RUN: usize = 256;

fn is_small_file(c: &Change) -> bool {
    matches!(&c.item, Item::File { entry: Some(e), group, .. }
        if group.is_empty() && e.blob.is_none_or(|b| !b.block_map && b.byte_length <= READ_WINDOW))
}

/// Writes one exported file: a replacement beside its place, then renamed over the old file (which
/// stays whole until then); a new file (`fresh`: nothing there to keep whole) in its place, which
/// saves the file system a second name and a rename per file. A new file cut short by a failure
/// is removed; one cut short by a kill has the wrong time and size, so the next export redoes
/// it. `written` hears of the bytes as they go.
#[allow(clippy::too_many_arguments)]
fn write_file(
    drive: &SharedDrive,
    entry: &Entry,
    out: &Beneath,
    rel: &str,
    fresh: bool,
    meta: Option<Meta>,
    executable: bool,
    owners: bool,
    written: &mut dyn FnMut(u64),
) -> Result<()> {
    let mode = meta.map_or(if executable { 0o755 } else { 0o644 }, |m| m.mode);
    let in_place = if fresh {
        match out.create(rel, true) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
            Err(e) => return Err(e).context("creating it"),
        }
    } else {
        None
    };
    let (tmp, mut f) = match in_place {
        Some(f) => (rel.to_owned(), f),
        None => {
            let tmp = match rel.rsplit_once('/') {
                Some((dir, name)) => format!("{dir}/.{name}.hyperfs-export"),
                None => format!(".{rel}.hyperfs-export"),
            };
            // A name left by an earlier run, or one the drive itself has, goes first: the
            // replacement is always a new file.
            out.remove_file(&tmp).context("clearing its replacement's name")?;
            let f = out.create(&tmp, true).context("creating its replacement")?;
            (tmp, f)
        }
    };
    let written = (|| -> Result<()> {
        if let Some(blob) = entry.blob.filter(|b| !b.block_map && b.byte_length <= READ_WINDOW) {
            // A small file: one read.
            let bytes = drive.snapshot().read_blob(&blob, 0, READ_WINDOW)?;
            f.write_all(&bytes)?;
            written(bytes.len() as u64);
        } else if let Some(blob) = entry.blob {
            // The next window is read from the drive while this one is written out, in two
            // page-aligned buffers that go back and forth (no fresh memory to zero and fault in
            // per window), written past the page cache.
            let mut out = DirectWriter::new(&mut f);
            std::thread::scope(|scope| -> Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Vec<u8>, usize)>>(2);
                let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
                for _ in 0..2 {
                    let _ = give_back.send(vec![0u8; READ_WINDOW as usize + PAGE]);
                }
                scope.spawn(move || {
                    let mut offset = 0u64;
                    for mut buf in returned {
                        let read = drive.snapshot().read_blob_into(&blob, offset, window(&mut buf));
                        let n = read.as_ref().map_or(0, |&n| n);
                        offset += n as u64;
                        if tx.send(read.map(|n| (buf, n)).map_err(anyhow::Error::from)).is_err() || n == 0 {
                            return;
                        }
                    }
                });
                for chunk in rx {
                    let (buf, n) = chunk?;
                    if n == 0 {
                        break;
                    }
                    let mut buf = buf;
                    out.write(&window(&mut buf)[..n])?;
                    written(n as u64);
                    let _ = give_back.send(buf);
                }
                Ok(())
            })?;
        }
        // Owner first: a change of owner clears set-id bits, which the mode then sets.
        if let (true, Some(m)) = (owners, &meta) {
            std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid)).context("setting its owner")?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(m) = &meta {
            let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, timespec(m.mtime)];
            // SAFETY: a descriptor we hold and two initialised timespecs.
            if unsafe { libc::futimens(std::os::fd::AsRawFd::as_raw_fd(&f), times.as_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setting its times");
            }
        }
        Ok(())
    })();
    drop(f);
    if let Err(e) = written.and_then(|()| {
        if tmp != rel {
            out.rename(&tmp, rel)?;
        }
        Ok(())
    }) {
        let _ = out.remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// The unit of direct I/O: buffers, lengths and offsets of direct writes are multiples of it.
const PAGE: usize = 4096;

/// The page-aligned [`READ_WINDOW`] inside a buffer of `READ_WINDOW + PAGE` bytes.
fn window(buf: &mut [u8]) -> &mut [u8] {
    let skip = buf.as_ptr().align_offset(PAGE).min(PAGE);
    &mut buf[skip..skip + READ_WINDOW as usize]
}

/// Writes a large exported file straight to the disk (`O_DIRECT`), past the page cache: on the
/// machines measured, a gigabyte copied into fresh page-cache pages ran at a fraction of the
/// disk's own speed, and a mirror of big files should not push the user's working set out of
/// memory either. Whole pages go direct; the file's unaligned tail, and every write on a file
/// system that refuses direct I/O, go through the page cache.
struct DirectWriter<'a> {
    f: &'a mut std::fs::File,
    direct: bool,
}

impl<'a> DirectWriter<'a> {
    fn new(f: &'a mut std::fs::File) -> Self {
        let direct = set_direct(f, true);
        DirectWriter { f, direct }
    }

    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while self.direct && buf.len() >= PAGE {
            let whole = buf.len() / PAGE * PAGE;
            match self.f.write(&buf[..whole]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Refused (alignment, or the file system): the rest goes through the cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.buffered(),
                Err(e) => return Err(e),
            }
        }
        if !buf.is_empty() {
            self.buffered();
            self.f.write_all(buf)?;
        }
        Ok(())
    }

    fn buffered(&mut self) {
        if self.direct {
            set_direct(self.f, false);
            self.direct = false;
        }
    }
}

/// Turns `O_DIRECT` on or off for an open file; whether that worked.
fn set_direct(f: &std::fs::File, on: bool) -> bool {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    // SAFETY: fcntl on a descriptor we hold; only the status flags change.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0
            && libc::fcntl(fd, libc::F_SETFL, if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT }) == 0
    }
}

/// Makes `dir` and any missing folders above it 0755 as `mkdir -p` with the usual umask would:
/// the node's own umask (077, for its private files) is not the user's.
fn create_folders(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn timespec(t: SystemTime) -> libc::timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long },
        Err(e) => {
            let d = e.duration();
            let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
            if ns < 0 {
                s -= 1;
                ns += 1_000_000_000;
            }
            libc::timespec { tv_sec: s as libc::time_t, tv_nsec: ns as libc::c_long }
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every name under `dir` (and `dir` itself as ""), by relative path, hard links grouped. Names
/// that are not UTF-8 are skipped with a note.
fn scan_local(dir: &Path, out: &mut BTreeMap<String, Item>, skipped: &mut Vec<String>) -> Result<()> {
    let mut inodes: std::collections::HashMap<(u64, u64), Vec<String>> = std::collections::HashMap::new();
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    out.insert(String::new(), Item::Dir { meta: Some(meta_of(&m)) });
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("reading {}", path.display()))?;
            let full = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                skipped.push(format!("{}: the name is not UTF-8", full.display()));
                continue;
            };
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) => {
                    skipped.push(format!("{}: {e}", full.display()));
                    continue;
                }
            };
            let ft = m.file_type();
            let meta = Some(meta_of(&m));
            let item = if ft.is_file() {
                if m.nlink() > 1 {
                    inodes.entry((m.dev(), m.ino())).or_default().push(child.clone());
                }
                Item::File { size: m.len(), executable: m.mode() & 0o100 != 0, meta, entry: None, group: Vec::new() }
            } else if ft.is_fifo() || ft.is_socket() || ft.is_char_device() || ft.is_block_device() {
                let special = if ft.is_fifo() {
                    Special::Fifo
                } else if ft.is_socket() {
                    Special::Socket
                } else if ft.is_char_device() {
                    Special::Char(m.rdev())
                } else {
                    Special::Block(m.rdev())
                };
                Item::Special { special, meta }
            } else if ft.is_symlink() {
                match std::fs::read_link(&full).map(|t| t.to_str().map(str::to_owned)) {
                    Ok(Some(target)) => Item::Link { target, meta },
                    Ok(None) => {
                        skipped.push(format!("{}: the link target is not UTF-8", full.display()));
                        continue;
                    }
                    Err(e) => {
                        skipped.push(format!("{}: {e}", full.display()));
                        continue;
                    }
                }
            } else if ft.is_dir() {
                stack.push((full, child.clone()));
                Item::Dir { meta }
            } else {
                skipped.push(format!("{}: not a file, directory, symlink or special file", full.display()));
                continue;
            };
            out.insert(child, item);
        }
    }
    set_groups(out, inodes.into_values());
    Ok(())
}

pub fn meta_of(m: &Metadata) -> Meta {
    let time = |s: i64, ns: i64| {
        if s >= 0 {
            UNIX_EPOCH + Duration::new(s as u64, ns as u32)
        } else {
            UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
        }
    };
    Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        // Not kept: an import reads every file, which is itself an access.
        atime: time(m.mtime(), m.mtime_nsec()),
    }
}

/// Every name under `folder` of the drive (at `version`, else the latest), by relative path.
/// What cannot be laid out as a tree goes to `skipped` with why (`DriveView::walk`), as does a
/// link whose target the system cannot hold. Unless `trusted` (a drive this node writes), modes
/// lose their set-uid, set-gid and sticky bits.
fn scan_drive(
    d: &Drive,
    version: Option<u64>,
    folder: &str,
    trusted: bool,
    skipped: &mut Vec<String>,
) -> Result<BTreeMap<String, Item>> {
    let view = d.checkout(version.unwrap_or(d.version()))?;
    let base = hyperfs_engine::drive::path::folder(folder)?;
    let rel_of = |p: &str| p.strip_prefix(&base).unwrap_or(p).trim_start_matches('/').to_owned();
    let meta_of = |e: &Entry| {
        let has_time = e.metadata.as_ref().is_some_and(|m| m.get("mtime").is_some());
        has_time.then(|| {
            let mut m = Meta::from_json(e.metadata.as_ref(), default_meta(e));
            if !trusted {
                m.mode &= 0o777;
            }
            m
        })
    };
    let walk = view.walk(folder)?;
    let mut groups: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for r in &walk.rejected {
        skipped.push(format!("{}: {}", r.path, r.why));
    }
    let mut out = BTreeMap::new();
    out.insert(String::new(), Item::Dir { meta: view.dir_entry(folder)?.as_ref().and_then(meta_of) });
    for (path, e) in walk.dirs {
        out.insert(rel_of(&path), Item::Dir { meta: meta_of(&e) });
    }
    for (path, e) in walk.files {
        if let Some(t) = &e.linkname {
            if t.is_empty() || t.len() > hyperfs_engine::drive::path::MAX_PATH || t.contains('\0') {
                skipped.push(format!("{}: the link target is empty, over 4096 bytes or holds a NUL", printable(&path)));
                continue;
            }
        }
        let rel = rel_of(&path);
        // The folders a file sits in exist even without a record.
        for a in Path::new(&rel).ancestors().skip(1) {
            let a = a.to_string_lossy();
            if !a.is_empty() && !out.contains_key(a.as_ref()) {
                out.insert(a.into_owned(), Item::Dir { meta: None });
            }
        }
        let meta = meta_of(&e);
        let item = match (&e.linkname, e.blob) {
            (Some(target), _) => Item::Link { target: target.clone(), meta },
            (None, blob) => {
                let size = match blob {
                    Some(b) => d.blob_size(&b)?,
                    None => 0,
                };
                if let Some(id) = e.link_id() {
                    groups.entry(id.to_owned()).or_default().push(rel.clone());
                }
                Item::File { size, executable: e.executable, meta, entry: Some(e), group: Vec::new() }
            }
        };
        out.insert(rel, item);
    }
    set_groups(&mut out, groups.into_values());
    for (path, e) in walk.specials {
        let Some(special) = Special::of(&e) else { continue };
        let rel = rel_of(&path);
        for a in Path::new(&rel).ancestors().skip(1) {
            let a = a.to_string_lossy();
            if !a.is_empty() && !out.contains_key(a.as_ref()) {
                out.insert(a.into_owned(), Item::Dir { meta: None });
            }
        }
        out.insert(rel, Item::Special { special, meta: meta_of(&e) });
    }
    Ok(out)
}

/// Gives every name of each group of more than one name (hard links) the group's sorted names.
fn set_groups(out: &mut BTreeMap<String, Item>, groups: impl Iterator<Item = Vec<String>>) {
    for mut names in groups.filter(|g| g.len() > 1) {
        names.sort();
        for n in &names {
            if let Some(Item::File { group, .. }) = out.get_mut(n) {
                group.clone_from(&names);
            }
        }
    }
}

fn default_meta(e: &Entry) -> Meta {
    let mode = if e.linkname.is_some() {
        0o777
    } else if e.executable {
        0o755
    } else {
        0o644
    };
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Meta { mode, uid, gid, mtime: UNIX_EPOCH, ctime: UNIX_EPOCH, atime: UNIX_EPOCH }
}

fn drive_path(folder: &str, rel: &str) -> String {
    let f = folder.trim_end_matches('/');
    if rel.is_empty() {
        if f.is_empty() {
            "/".into()
        } else {
            f.to_owned()
        }
    } else {
        format!("{f}/{rel}")
    }
}

fn summary(t: &Tally, changes: &[Change], started: Instant, version: Option<u64>, folder: &str) -> Mirrored {
    let changes = changes
        .iter()
        .map(|c| MirrorChange {
            path: drive_path(folder, &c.rel),
            rel: c.rel.clone(),
            action: match c.action {
                Action::Add => "add",
                Action::Change => "change",
                Action::Remove => "remove",
            }
            .into(),
            kind: c.item.kind().into(),
        })
        .collect();
    Mirrored {
        added: t.added,
        changed: t.changed,
        removed: t.removed,
        unchanged: t.unchanged,
        files: t.files,
        bytes: t.bytes,
        seconds: started.elapsed().as_secs_f64(),
        version,
        skipped: t.skipped.clone(),
        changes,
    }
}

/// Checks what an import or export is given before any work starts.
pub fn check_dir_arg(dir: &Path) -> Result<PathBuf> {
    if !dir.is_absolute() {
        return Err(anyhow!("the node needs an absolute path, not {dir:?}"));
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of the file's pages are in the page cache.
    fn resident_pages(f: &std::fs::File, len: usize) -> usize {
        let fd = std::os::fd::AsRawFd::as_raw_fd(f);
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of our own file, unmapped before return; mincore
        // fills one byte per page of it.
        unsafe {
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
            assert_ne!(map, libc::MAP_FAILED, "mmap");
            assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0, "mincore");
            libc::munmap(map, len);
        }
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn a_big_file_read_for_import_leaves_the_page_cache_behind_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let len = 40 << 20;
        std::fs::write(&path, vec![7u8; len]).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        // Written back, so its pages are clean and may be dropped; then all read into the cache.
        f.sync_all().expect("sync");
        std::io::copy(&mut std::fs::File::open(&path).expect("open"), &mut std::io::sink()).expect("read");
        assert!(resident_pages(&f, len) > len / 4096 / 2, "the file starts in the page cache");
        let mut reader = DropBehind::new(std::fs::File::open(&path).expect("open"));
        let mut back = Vec::new();
        reader.read_to_end(&mut back).expect("read");
        assert!(back.len() == len && back.iter().all(|&b| b == 7), "the reader reads the file");
        // All but the last step's pages (8 MiB at most) are gone.
        let left = resident_pages(&f, len);
        assert!(left * 4096 <= 8 << 20, "{left} of {} pages still cached", len / 4096);
    }
}
