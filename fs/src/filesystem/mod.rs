//! The filesystem over one drive, without FUSE: inodes, open files, staging of writes, POSIX
//! rules. Every operation takes `&self` and may run on any thread; the FUSE adapter calls these
//! from its worker pool, tests call them directly.
//!
//! Inodes are numbered as paths are first seen, follow their path through renames and keep it
//! for the life of the mount; an unlinked inode keeps its last entry (and its staged bytes), so
//! an open file stays readable.
//!
//! Writes go to a staging file (an unlinked temporary file in the node's data directory), copied
//! from the drive on the first write. `flush`, `fsync` and `release` of a changed file chunk and
//! stage it on a snapshot (without the drive's owner), then commit its chunks and one entry
//! through the owner: one new drive version per close of a changed file.
//! A file created here exists only in the inode table until then.
//!
//! Lock order, never reversed: an open file's lock, then the drive's owner (changes only;
//! reads take the published snapshot and hold nothing), then the inode table.
//!
//! The operations live by kind: names and attributes here, `tree` (changing it), `files`,
//! `dirs` (listings).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use hyperfs_engine::drive::Writing;
use hyperfs_engine::drive::{Blob, Entry, Op, Special};
use hyperfs_engine::{Drive, SharedDrive};

use crate::Errno;
use hyperfs_engine::drive::Meta;

/// The inode tables' map: every listing looks up each entry's path and inode, and SipHash
/// was a tenth of a listing's time; foldhash is keyed per process as well.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// An inode number as the kernel knows it: a name keeps its number for the life of the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

/// A handle of an open file (from [`Fs::open`] or [`Fs::create`]), as the kernel passes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);
pub type Result<T> = std::result::Result<T, Errno>;

/// The root directory's inode.
pub const ROOT: Ino = Ino(1);

/// Longest name in a directory, as on ext4.
const NAME_MAX: usize = 255;
/// The most directory entries handed out for one readdir reply: the kernel's buffer (128 KiB
/// on current kernels) holds about this many 32-byte entries, and it asks again from where a
/// reply stopped.
pub(crate) const READDIR_MAX: usize = 4096;

/// How many listings are kept between readdir calls. Without opendir and releasedir (see
/// `fuse.rs`) a listing ends when its end is read; ones left unfinished go oldest first.
pub(crate) const LISTINGS_MAX: usize = 256;
/// Listings are numbered 1..=this (31 bits), then from 1 again.
pub const LISTING_IDS: u64 = (1 << 31) - 1;

/// Staged files are filled from the drive this many bytes at a time.
const COPY_BYTES: u64 = 8 << 20;

/// Sequential reads fetch ahead up to this many bytes.
const MAX_READ_AHEAD: u64 = 8 << 20;

/// How far ahead of a reader the kernel reads on its own (FUSE's `max_readahead`, asked for at
/// mount), its reads sent at once on several threads.
pub(crate) const KERNEL_READ_AHEAD: u32 = 1 << 20;

/// How far from where a sequential reader was expected its read may land and still count as
/// sequential: twice the kernel's read-ahead, whose reads arrive out of order.
const REORDER: u64 = 2 * KERNEL_READ_AHEAD as u64;

const S_ISGID: u32 = 0o2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device node.
    Special(Special),
}

/// What `stat` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub meta: Meta,
    pub nlink: u32,
}

/// The changes of one `setattr`; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
}

/// One name of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: String,
    /// The attributes taken with the listing (the dots), for `readdirplus`.
    pub attr: Option<Attr>,
    /// A file's or symlink's entry as stored when the listing was taken: its attributes for
    /// `readdirplus` are decoded from it if they are asked for.
    pub value: Option<Arc<[u8]>>,
}

/// What `statfs` shows: the space of the disk the node stores on.
#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// How a drive is mounted.
#[derive(Debug, Clone)]
pub struct Config {
    /// A past version to show (read-only); `None` follows the drive.
    pub version: Option<u64>,
    pub read_only: bool,
    /// Where staging files are made; on the node's disk, not in memory.
    pub staging: PathBuf,
    /// The owner of entries that do not record one (the user who mounted).
    pub uid: u32,
    pub gid: u32,
}

/// Open flags the filesystem cares about (Linux values).
pub mod flags {
    pub const ACCMODE: i32 = libc::O_ACCMODE;
    pub const WRONLY: i32 = libc::O_WRONLY;
    pub const RDWR: i32 = libc::O_RDWR;
    pub const TRUNC: i32 = libc::O_TRUNC;
    pub const APPEND: i32 = libc::O_APPEND;
    pub const EXCL: i32 = libc::O_EXCL;
    /// `renameat2` flags.
    pub const RENAME_NOREPLACE: u32 = 1;
    pub const RENAME_EXCHANGE: u32 = 2;
}

/// A filesystem over one drive.
pub struct Fs {
    drive: Arc<SharedDrive>,
    cfg: Config,
    read_only: bool,
    /// The drive is someone else's (this node cannot write it): the owners and set-id bits
    /// its entries record mean nothing here, and a remote uid would land on an unrelated local
    /// user. Its files show as the mounting user's, set-uid, set-gid and sticky bits masked.
    foreign: bool,
    /// The time shown for entries that record none (JS-written files, implied directories).
    born: SystemTime,
    nodes: Mutex<Nodes>,
    handles: Mutex<HashMap<Fh, Arc<Handle>>>,
    /// Listings taken, by number (numbers grow, so the first is the oldest).
    dirs: Mutex<BTreeMap<u64, Arc<Vec<DirEntry>>>>,
    next_dir: AtomicU64,
    next_fh: AtomicU64,
    /// The drive's (fork, version) whose names and listings the kernel was shown: this
    /// filesystem's own changes keep it current (the kernel made them), any other change
    /// (a peer's, the command line's) leaves it behind; see [`Fs::changed_elsewhere`].
    shown: Mutex<(u64, u64)>,
    /// Counts changes of folder records (made, removed, moved, attributes set) here, and
    /// changes found made elsewhere: a directory's attributes read at the current count, with
    /// nothing unseen in the drive, are still true. The kernel asks for a folder's attributes
    /// again after every change inside it (its permission check), and reading them cost a
    /// search and two JSON decodes.
    dir_epoch: AtomicU64,
    /// Access times moved on by reads (as `relatime` does) and not yet recorded: written in one
    /// version with the folder times ([`Nodes::touched`]) at a sync, with the file's next change,
    /// or once [`TIMES_MAX`] of either gather (as Linux's `lazytime` keeps times in memory). A
    /// crash loses them, and nothing else.
    atimes: Mutex<HashMap<Ino, SystemTime>>,
}

/// Unrecorded access times (or folder times) that make them all recorded.
const TIMES_MAX: usize = 1024;

/// The drive, held for a change: on release, a change made on top of what the kernel was shown
/// is shown too.
struct Changing<'a> {
    d: Writing<'a>,
    before: (u64, u64),
    shown: &'a Mutex<(u64, u64)>,
    dir_epoch: &'a AtomicU64,
}

impl Changing<'_> {
    /// [`Drive::apply`], moving [`Fs::dir_epoch`] on if a folder record may have changed
    /// (under the drive's lock, so no reader sees the change with the old count).
    fn apply(&mut self, ops: &[Op<'_>]) -> hyperfs_engine::Result<()> {
        self.apply_touching(ops, &[])
    }

    /// [`Changing::apply`] of `ops` and of `touched`, folder records whose times alone change
    /// (see [`Fs::apply_in`]), which leave [`Fs::dir_epoch`] as it is.
    fn apply_touching(&mut self, ops: &[Op<'_>], touched: &[(String, Entry)]) -> hyperfs_engine::Result<()> {
        let mut all = ops.to_vec();
        all.extend(touched.iter().map(|(p, e)| Op::Mkdir(p, e)));
        let result = self.d.apply(&all);
        if ops.iter().any(|op| matches!(op, Op::Mkdir(..) | Op::Rmdir(_) | Op::Rename(..))) {
            self.dir_epoch.fetch_add(1, Ordering::AcqRel);
        }
        result
    }
}

impl std::ops::Deref for Changing<'_> {
    type Target = Drive;
    fn deref(&self) -> &Drive {
        &self.d
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut Drive {
        &mut self.d
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let mut shown = lock(self.shown);
        if *shown == self.before {
            *shown = shown_state(&self.d);
        }
    }
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").field("cfg", &self.cfg).field("read_only", &self.read_only).finish_non_exhaustive()
    }
}

/// How many listed directories [`Nodes::listed`] remembers.
const LISTED_MAX: usize = 1 << 16;

struct Nodes {
    map: HashMap<Ino, Node>,
    by_path: HashMap<String, Ino>,
    /// Files created here and not yet written to the drive.
    pending: BTreeSet<String>,
    /// Directories listed, by inode (kept across the kernel dropping its caches, as a name
    /// keeps its inode; a directory made again at the same path starts afresh): whether a
    /// lookup of an entry came after a listing (see [`Fs::listing_with_attrs`]).
    listed: HashMap<Ino, bool>,
    /// The inode of each hard-link group seen ([`Entry::link_id`]): every name of a group is
    /// one inode.
    by_link: HashMap<String, Ino>,
    /// Directories' attributes as last read, good while no folder record changed (see
    /// [`Fs::dir_epoch`]); beside the nodes, which stay small for the lookups of listings.
    known_dirs: HashMap<Ino, KnownDir>,
    /// Folders whose names changed, and when: their mtime and ctime show it at once and are
    /// recorded lazily ([`Fs::record_times`]).
    touched: HashMap<Ino, SystemTime>,
    next: Ino,
}

struct Node {
    kind: Kind,
    /// `None` once unlinked.
    path: Option<String>,
    lookups: u64,
    opens: u32,
    /// Files and symlinks: the entry last read or written.
    entry: Option<Entry>,
    /// Created here and not yet in the drive.
    pending: bool,
    /// A file open for writing (or being changed by `setattr`).
    file: Option<Arc<Mutex<OpenFile>>>,
    /// Holders of `file`: write opens and `setattr` calls in progress. Counted under the inode
    /// table's lock, where `file` is taken and dropped, so a release racing a `setattr` (the
    /// kernel sends releases asynchronously) cannot drop the open state it is changing.
    writers: u32,
}

/// A directory's attributes as read at a [`Fs::dir_epoch`].
#[derive(Clone)]
struct KnownDir {
    epoch: u64,
    attr: Attr,
    /// Recorded in the drive, not there only through its contents.
    recorded: bool,
    /// The folder's record as read (its metadata, kept whole when its times change).
    record: Option<Arc<Entry>>,
}

/// The content of a file while it is open for writing.
struct OpenFile {
    /// The bytes, once the first write or truncation copied them out of the drive.
    staged: Option<Staged>,
    size: u64,
    meta: Meta,
    /// Changed since the drive last recorded it.
    dirty: bool,
}

/// A file's bytes while it is written: in memory while small, in an unlinked temporary file in
/// the staging directory once larger.
enum Staged {
    Mem(Vec<u8>),
    File(File),
}

/// Files up to this size are staged in memory.
const MEM_STAGE_MAX: u64 = 1 << 20;

impl Staged {
    fn new(dir: &std::path::Path, size: u64) -> Result<Staged> {
        Ok(if size <= MEM_STAGE_MAX {
            Staged::Mem(Vec::new())
        } else {
            Staged::File(tempfile::tempfile_in(dir).map_err(Errno::from)?)
        })
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past what was written read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            Staged::Mem(v) => {
                let start = (offset as usize).min(v.len());
                let end = (start + buf.len()).min(v.len());
                buf[..end - start].copy_from_slice(&v[start..end]);
                buf[end - start..].fill(0);
                Ok(())
            }
            Staged::File(f) => {
                let mut r = ReadAt { file: f, at: offset, end: offset + buf.len() as u64 };
                r.read_exact(buf).map_err(Errno::from)
            }
        }
    }

    /// Writes `data` at `offset`, moving to a temporary file in `dir` when it grows large.
    fn write_at(&mut self, data: &[u8], offset: u64, dir: &std::path::Path) -> Result<()> {
        let end = offset + data.len() as u64;
        if let Staged::Mem(v) = self {
            if end <= MEM_STAGE_MAX {
                if v.len() < end as usize {
                    v.resize(end as usize, 0);
                }
                v[offset as usize..end as usize].copy_from_slice(data);
                return Ok(());
            }
            let f = tempfile::tempfile_in(dir).map_err(Errno::from)?;
            f.write_all_at(v, 0).map_err(Errno::from)?;
            *self = Staged::File(f);
        }
        match self {
            Staged::File(f) => f.write_all_at(data, offset).map_err(Errno::from),
            Staged::Mem(_) => Err(Errno(libc::EIO)),
        }
    }

    fn set_len(&mut self, len: u64, dir: &std::path::Path) -> Result<()> {
        match self {
            Staged::Mem(v) if len <= MEM_STAGE_MAX => {
                v.resize(len as usize, 0);
                Ok(())
            }
            Staged::Mem(_) => {
                // Grow through a write of nothing at the new end: the file takes over.
                self.write_at(&[], len, dir)?;
                self.set_len(len, dir)
            }
            Staged::File(f) => f.set_len(len).map_err(Errno::from),
        }
    }

    /// The first `size` bytes as a reader.
    fn reader(&self, size: u64) -> Box<dyn Read + '_> {
        match self {
            Staged::Mem(v) => Box::new(
                std::io::Cursor::new(&v[..v.len().min(size as usize)])
                    .chain(std::io::repeat(0).take(size.saturating_sub(v.len() as u64))),
            ),
            Staged::File(f) => Box::new(ReadAt { file: f, at: 0, end: size }),
        }
    }
}

struct Handle {
    ino: Ino,
    write: bool,
    append: bool,
    /// Read through at least once (its first read moves the access time on).
    read: std::sync::atomic::AtomicBool,
    ahead: Mutex<ReadAhead>,
}

/// The bytes fetched past the last read of a handle.
#[derive(Default)]
struct ReadAhead {
    blob: Option<Blob>,
    start: u64,
    /// The window's bytes: the first `held` of `buf`, which is reused from window to window
    /// (it only grows, so its bytes are not cleared for each).
    buf: Vec<u8>,
    held: usize,
    /// Where a sequential reader reads next.
    next: u64,
    window: u64,
}

/// What a path names in the drive.
enum Found {
    File(Entry, u64),
    Symlink(Entry),
    Special(Entry),
    Dir(Option<Entry>),
    Nothing,
}

/// Reads of the mounted version: the current one, or the checkout a read-only mount shows.
macro_rules! view {
    ($fs:expr, $d:expr, |$v:ident| $body:expr) => {{
        match $fs.cfg.version {
            Some(version) => {
                let $v = $d.checkout(version)?;
                $body
            }
            None => {
                let $v = $d.view();
                $body
            }
        }
    }};
}

mod dirs;
mod files;
mod tree;

impl Fs {
    pub fn new(drive: Arc<SharedDrive>, cfg: Config) -> Result<Fs> {
        let d = drive.snapshot();
        let (writable, version, shown) = (d.writable(), d.version(), shown_state(&d));
        if let Some(v) = cfg.version {
            // A version inside an atomic batch (a rename's put before its delete) has no tree
            // of its own; it is refused here rather than failing every read.
            let readable = |view: hyperfs_engine::drive::DriveView<'_, _>| view.dir_entry("/").and(view.children("/"));
            if v > version || d.checkout(v).and_then(readable).is_err() {
                return Err(Errno(libc::EINVAL));
            }
        }
        let read_only = cfg.read_only || cfg.version.is_some() || !writable;
        let root = Node {
            kind: Kind::Dir,
            path: Some(String::new()),
            lookups: 1,
            opens: 0,
            entry: None,
            pending: false,
            file: None,
            writers: 0,
        };
        let nodes = Nodes {
            map: HashMap::from_iter([(ROOT, root)]),
            by_path: HashMap::from_iter([(String::new(), ROOT)]),
            pending: BTreeSet::new(),
            listed: HashMap::default(),
            by_link: HashMap::default(),
            known_dirs: HashMap::default(),
            touched: HashMap::default(),
            next: Ino(ROOT.0 + 1),
        };
        Ok(Fs {
            drive,
            cfg,
            read_only,
            foreign: !writable,
            born: SystemTime::now(),
            nodes: Mutex::new(nodes),
            handles: Mutex::new(HashMap::default()),
            dirs: Mutex::new(BTreeMap::new()),
            next_dir: AtomicU64::new(0),
            next_fh: AtomicU64::new(1),
            shown: Mutex::new(shown),
            dir_epoch: AtomicU64::new(0),
            atimes: Mutex::new(HashMap::default()),
        })
    }

    /// Whether changes are refused with `EROFS`.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether this mount shows a fixed past version (its contents never change).
    pub fn is_checkout(&self) -> bool {
        self.cfg.version.is_some()
    }

    /// Every inode the kernel may cache, with the directory entry naming it (none for the
    /// root): what a new version arriving from elsewhere invalidates.
    pub fn known(&self) -> Vec<(Ino, Option<(Ino, String)>)> {
        let nodes = self.nodes();
        nodes
            .map
            .iter()
            .map(|(&ino, n)| {
                let entry = n.path.as_deref().filter(|p| !p.is_empty()).and_then(|p| {
                    let parent = nodes.by_path.get(parent_of(p)).copied()?;
                    Some((parent, p.rsplit('/').next().unwrap_or(p).to_owned()))
                });
                (ino, entry)
            })
            .collect()
    }

    /// Makes every recorded change durable.
    pub fn sync(&self) -> Result<()> {
        self.record_times()?;
        Ok(self.drive().flush()?)
    }

    /// A first read through a handle of file `ino`: its access time moves on as `relatime`
    /// says (when it is not later than the mtime or ctime, or is a day old).
    pub(super) fn accessed(&self, ino: Ino) {
        if self.read_only {
            return;
        }
        let Ok(attr) = self.getattr(ino) else { return };
        let now = SystemTime::now();
        let m = attr.meta;
        let day_old = now.duration_since(m.atime).is_ok_and(|d| d >= std::time::Duration::from_secs(86_400));
        if m.atime > m.mtime && m.atime > m.ctime && !day_old {
            return;
        }
        let full = {
            let mut atimes = lock(&self.atimes);
            atimes.insert(ino, now);
            atimes.len() >= TIMES_MAX
        };
        if full {
            if let Err(e) = self.record_times() {
                tracing::warn!(error = ?e, "recording access times");
            }
        }
    }

    /// Writes the access times reads moved on and the folder times changes of names moved on,
    /// in one version.
    pub(super) fn record_times(&self) -> Result<()> {
        let mut d = self.drive_mut();
        self.record_times_in(&mut d)
    }

    /// [`Fs::record_times`] with the drive already held for a change (which it joins in the
    /// version after it). Takes no open file's lock: those come before the drive.
    fn record_times_in(&self, d: &mut Changing<'_>) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.atimes));
        let folders = std::mem::take(&mut self.nodes().touched);
        if pending.is_empty() && folders.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::new();
        let mut open = Vec::new();
        for (ino, t) in pending {
            let (path, entry, writing, kind) = {
                let nodes = self.nodes();
                let Some(n) = nodes.map.get(&ino) else { continue };
                (n.path.clone(), n.entry.clone(), n.file.is_some(), n.kind)
            };
            if writing {
                // Open for writing: its commit records it.
                open.push((ino, t));
                continue;
            }
            let (Some(path), Some(e)) = (path, entry) else { continue };
            let e = self.restamped(Some(&e), kind, |m| m.atime = t);
            changes.push((path, e, matches!(kind, Kind::Special(_))));
        }
        let folders: Vec<(String, SystemTime)> = {
            let nodes = self.nodes();
            folders
                .into_iter()
                .filter_map(|(ino, t)| Some((nodes.map.get(&ino).filter(|n| n.kind == Kind::Dir)?.path.clone()?, t)))
                .collect()
        };
        lock(&self.atimes).extend(open);
        let mut ops = Vec::new();
        for (path, e, special) in &changes {
            // Only names that still hold the entry read.
            let same = match self.find(d, path)? {
                Found::File(now, _) | Found::Symlink(now) | Found::Special(now) => now.blob == e.blob,
                _ => false,
            };
            if same {
                ops.push(if *special { Op::Mknod(path, e) } else { Op::Put(path, e) });
            }
        }
        let mut records = Vec::new();
        for (path, t) in &folders {
            // Only folders that are still there; their record as last read, or from the drive.
            let old = match self.known_dir(d, path) {
                Some(k) if k.recorded => k.record.map(|e| (*e).clone()),
                Some(_) => None,
                None => match self.find(d, path)? {
                    Found::Dir(record) => record,
                    _ => continue,
                },
            };
            records.push((path.clone(), self.restamped(old.as_ref(), Kind::Dir, |m| (m.mtime, m.ctime) = (*t, *t))));
        }
        if !ops.is_empty() || !records.is_empty() {
            d.apply_touching(&ops, &records)?;
        }
        let mut nodes = self.nodes();
        let nodes = &mut *nodes;
        for (path, e, _) in changes {
            if let Some(n) = nodes.by_path.get(&path).copied().and_then(|i| nodes.map.get_mut(&i)) {
                if n.file.is_none() {
                    n.entry = Some(e);
                }
            }
        }
        // Known folders keep their link counts: only their times changed.
        for (p, e) in records {
            let Some(k) = nodes.by_path.get(&p).and_then(|ino| nodes.known_dirs.get_mut(ino)) else { continue };
            k.attr.meta = self.shown(Meta::from_json(e.metadata.as_ref(), k.attr.meta));
            k.recorded = true;
            k.record = Some(Arc::new(e));
        }
        Ok(())
    }

    /// `attr` with an access time not yet recorded.
    fn with_atime(&self, mut attr: Attr) -> Attr {
        if let Some(&t) = lock(&self.atimes).get(&attr.ino) {
            attr.meta.atime = t;
        }
        attr
    }

    // ---- names and attributes

    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr> {
        if let Some(after_listing) = self.nodes().listed.get_mut(&parent) {
            *after_listing = true;
        }
        let path = self.child_path(parent, name)?;
        let attr = self.attr_at(&path)?;
        self.note_lookup(attr.ino);
        Ok(attr)
    }

    /// Counts a lookup the kernel made through `readdirplus`.
    pub fn note_lookup(&self, ino: Ino) {
        if let Some(n) = self.nodes().map.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        let mut nodes = self.nodes();
        let Some(node) = nodes.map.get_mut(&ino) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if ino != ROOT && node.lookups == 0 && node.opens == 0 && node.file.is_none() && !node.pending {
            if node.path.is_some() {
                // A name keeps its inode for the life of the mount: a lookup answered on a
                // worker while this forget ran (the kernel sends forgets apart from lookups)
                // may be handing the kernel this very number, and dropping it here made the
                // next lookup under it fail with ENOENT. Only the cached entry goes.
                node.entry = None;
            } else {
                // Unlinked or replaced: no lookup can find it by name any more.
                nodes.map.remove(&ino);
                nodes.known_dirs.remove(&ino);
            }
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let (path, file) = {
            let nodes = self.nodes();
            let node = nodes.map.get(&ino).ok_or(Errno(libc::ENOENT))?;
            (node.path.clone(), node.file.clone())
        };
        if let Some(file) = file {
            let nlink = self.nlink_of(ino);
            let f = lock(&file);
            return Ok(self.with_atime(Attr { ino, kind: Kind::File, size: f.size, meta: f.meta, nlink }));
        }
        match path {
            Some(p) => {
                let attr = self.attr_at(&p)?;
                if attr.ino != ino {
                    // The name now holds something else (changed outside this mount).
                    return Err(Errno(libc::ESTALE));
                }
                Ok(attr)
            }
            None => {
                // Unlinked but still open: its last entry.
                let entry = self.nodes().map.get(&ino).and_then(|n| n.entry.clone()).ok_or(Errno(libc::ENOENT))?;
                let size = self.entry_size(&entry)?;
                let kind = match self.nodes().map.get(&ino) {
                    Some(n) => n.kind,
                    None => Kind::File,
                };
                Ok(Attr { ino, kind, size, meta: self.entry_meta(&entry, kind), nlink: 0 })
            }
        }
    }

    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.writable()?;
        let now = SystemTime::now();
        let change_meta = |m: &mut Meta| {
            if let Some(mode) = set.mode {
                m.mode = mode & 0o7777;
            }
            if let Some(uid) = set.uid {
                m.uid = uid;
            }
            if let Some(gid) = set.gid {
                m.gid = gid;
            }
            if let Some(t) = set.mtime {
                m.mtime = t;
            }
            if let Some(t) = set.atime {
                m.atime = t;
            }
            m.ctime = now;
        };
        let (kind, path) = {
            let nodes = self.nodes();
            let n = nodes.map.get(&ino).ok_or(Errno(libc::ENOENT))?;
            (n.kind, n.path.clone())
        };
        match kind {
            Kind::File => {
                let file = self.open_file(ino)?;
                let result = (|| {
                    let mut f = lock(&file);
                    if let Some(size) = set.size {
                        self.resize(ino, &mut f, size)?;
                        f.meta.mtime = now;
                    }
                    change_meta(&mut f.meta);
                    f.dirty = true;
                    Ok::<_, Errno>(())
                })();
                // Recorded now if nobody else holds the file, else when the last holder lets go.
                let closed = self.close_file(ino);
                result?;
                closed?;
                self.getattr(ino)
            }
            Kind::Dir | Kind::Symlink | Kind::Special(_) => {
                if set.size.is_some() {
                    return Err(Errno(if kind == Kind::Dir { libc::EISDIR } else { libc::EINVAL }));
                }
                let path = path.ok_or(Errno(libc::ENOENT))?;
                let mut d = self.drive_mut();
                let mut attr = self.attr_in(&d, &path)?;
                // A folder's times moved by changes of its names and not yet recorded are its
                // times now; what is set here goes over them and is recorded at once.
                if let Some(t) = self.nodes().touched.remove(&ino) {
                    (attr.meta.mtime, attr.meta.ctime) = (t, t);
                }
                change_meta(&mut attr.meta);
                let entry = match kind {
                    Kind::Dir => {
                        let old = view!(self, d, |v| v.dir_entry(&path)?);
                        let metadata = Some(attr.meta.to_json(old.as_ref().and_then(|e| e.metadata.as_ref())));
                        let e = Entry { executable: false, linkname: None, blob: None, metadata };
                        d.apply(&[Op::Mkdir(&path, &e)])?;
                        e
                    }
                    _ => {
                        let mut e =
                            self.nodes().map.get(&ino).and_then(|n| n.entry.clone()).ok_or(Errno(libc::ENOENT))?;
                        e.metadata = Some(attr.meta.to_json(e.metadata.as_ref()));
                        match kind {
                            Kind::Special(_) => d.apply(&[Op::Mknod(&path, &e)])?,
                            _ => d.apply(&[Op::Put(&path, &e)])?,
                        }
                        e
                    }
                };
                if let Some(n) = self.nodes().map.get_mut(&ino) {
                    n.entry = (kind != Kind::Dir).then_some(entry);
                }
                Ok(attr)
            }
        }
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let attr = self.getattr(ino)?;
        if attr.kind != Kind::Symlink {
            return Err(Errno(libc::EINVAL));
        }
        let entry = self.nodes().map.get(&ino).and_then(|n| n.entry.clone());
        entry.and_then(|e| e.linkname).map(String::into_bytes).ok_or(Errno(libc::EINVAL))
    }

    // ---- internals

    fn nodes(&self) -> MutexGuard<'_, Nodes> {
        lock(&self.nodes)
    }

    /// The drive as last published: reads never wait on a change in progress, and a read that
    /// needs blocks from a peer waits for them holding only this snapshot (a peer that stalls
    /// stalls only that read; listings, other files, writes and refreshes go on).
    fn drive(&self) -> Arc<Drive> {
        self.drive.snapshot()
    }

    /// The drive for a change, after the changes before it (of this mount or elsewhere).
    fn drive_mut(&self) -> Changing<'_> {
        let d = self.drive.write();
        let before = shown_state(&d);
        Changing { d, before, shown: &self.shown, dir_epoch: &self.dir_epoch }
    }

    /// Whether `d` (a state the drive published) is later than what the kernel was shown: a
    /// change made elsewhere, which [`Fs::changed_elsewhere`] will find. A change made through
    /// this filesystem was counted as shown before it was published.
    pub fn is_behind(&self, d: &Drive) -> bool {
        self.cfg.version.is_none() && shown_state(d) > *lock(&self.shown)
    }

    /// Whether the drive has changes the kernel was not shown (from a peer or the command
    /// line, not through this filesystem); they count as shown from now on, so the caller
    /// tells the kernel to forget what it cached.
    pub fn changed_elsewhere(&self) -> bool {
        let d = self.drive();
        let now = shown_state(&d);
        let mut shown = lock(&self.shown);
        // States only grow (a truncation moves to a later fork); a snapshot older than what was
        // shown is one taken before this mount's own change was published.
        let changed = now > *shown;
        if changed {
            *shown = now;
            self.dir_epoch.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// The [`Fs::dir_epoch`] at which known directory attributes hold for drive state `d`:
    /// `None` while the drive holds changes not yet found ([`Fs::changed_elsewhere`]).
    fn dir_epoch_in(&self, d: &Drive) -> Option<u64> {
        let epoch = self.dir_epoch.load(Ordering::Acquire);
        // A checkout shows one version: its folders never change.
        if self.cfg.version.is_none() && *lock(&self.shown) != shown_state(d) {
            return None;
        }
        Some(epoch)
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn handle(&self, fh: Fh) -> Result<Arc<Handle>> {
        lock(&self.handles).get(&fh).cloned().ok_or(Errno(libc::EBADF))
    }

    fn new_handle(&self, ino: Ino, write: bool, append: bool) -> Fh {
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        if let Some(n) = self.nodes().map.get_mut(&ino) {
            n.opens += 1;
        }
        let h = Handle { ino, write, append, read: Default::default(), ahead: Mutex::new(ReadAhead::default()) };
        lock(&self.handles).insert(fh, Arc::new(h));
        fh
    }

    /// The path of `name` in directory `parent`.
    fn child_path(&self, parent: Ino, name: &str) -> Result<String> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(Errno(libc::EINVAL));
        }
        if name.len() > NAME_MAX {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        let nodes = self.nodes();
        let node = nodes.map.get(&parent).ok_or(Errno(libc::ENOENT))?;
        if node.kind != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        let path = node.path.as_ref().ok_or(Errno(libc::ENOENT))?;
        Ok(format!("{path}/{name}"))
    }

    /// The gid a new entry in `parent` gets, and the set-group-ID bit a new directory inherits.
    fn inherit_gid(&self, parent: Ino, gid: u32) -> Result<(u32, u32)> {
        let p = self.getattr(parent)?;
        Ok(if p.meta.mode & S_ISGID != 0 { (p.meta.gid, S_ISGID) } else { (gid, 0) })
    }

    /// What `path` names in the mounted version.
    fn find(&self, d: &Drive, path: &str) -> Result<Found> {
        view!(self, d, |v| {
            if path.is_empty() {
                return Ok(Found::Dir(v.dir_entry("")?));
            }
            match v.entry(path)? {
                Some((_, e)) if e.linkname.is_some() => Ok(Found::Symlink(e)),
                Some((_, e)) => {
                    let size = match &e.blob {
                        Some(b) => d.blob_size(b)?,
                        None => 0,
                    };
                    Ok(Found::File(e, size))
                }
                None => match v.special(path)? {
                    Some(e) => Ok(Found::Special(e)),
                    None => Ok(v.dir(path)?.map_or(Found::Nothing, Found::Dir)),
                },
            }
        })
    }

    fn is_empty_dir(&self, d: &Drive, path: &str) -> Result<bool> {
        let prefix = format!("{path}/");
        if self.nodes().pending.range(prefix.clone()..).next().is_some_and(|p| p.starts_with(&prefix)) {
            return Ok(false);
        }
        Ok(view!(self, d, |v| v.children(path)?).is_empty())
    }

    /// Applies `ops`, a change of the names in folders `dirs`: those folders' mtime and ctime
    /// move to now. The new times show at once and are recorded as access times are (see
    /// [`Fs::record_times`]): a record in every version a name changes cost creates and unlinks
    /// a seventh of their rate.
    fn apply_in(&self, d: &mut Changing<'_>, ops: &[Op<'_>], dirs: &[&str]) -> Result<()> {
        d.apply(ops)?;
        if self.touch(dirs, SystemTime::now()) {
            // With the drive this change holds (taking it again here would wait on itself).
            if let Err(e) = self.record_times_in(d) {
                tracing::warn!(error = ?e, "recording folder times");
            }
        }
        Ok(())
    }

    /// Moves the mtime and ctime of folders `dirs` to `t` (shown at once, recorded lazily);
    /// returns whether enough times wait to be recorded now ([`Fs::record_times`]).
    pub(super) fn touch(&self, dirs: &[&str], t: SystemTime) -> bool {
        let mut nodes = self.nodes();
        for dir in dirs {
            if let Some(&ino) = nodes.by_path.get(*dir) {
                nodes.touched.insert(ino, t);
            }
        }
        nodes.touched.len() >= TIMES_MAX
    }

    /// When removing `path` (or moving it to `moved_to`) would leave its parent directory
    /// empty and that directory exists only through its contents, the record that keeps it.
    fn keep_parent(&self, d: &Drive, path: &str, moved_to: Option<&str>) -> Result<Option<(String, Entry)>> {
        let parent = parent_of(path);
        if parent.is_empty() || moved_to.is_some_and(|t| t.starts_with(&format!("{parent}/"))) {
            return Ok(None);
        }
        // A recorded directory stays by itself; only one that exists through its contents is
        // listed (the costlier check).
        if self.known_dir(d, parent).is_some_and(|k| k.recorded) || view!(self, d, |v| v.dir_entry(parent)?).is_some() {
            return Ok(None);
        }
        if view!(self, d, |v| v.children(parent)?).len() > 1 {
            return Ok(None);
        }
        let meta = self.default_meta(Kind::Dir);
        Ok(Some((
            parent.to_owned(),
            Entry { executable: false, linkname: None, blob: None, metadata: Some(meta.to_json(None)) },
        )))
    }

    /// `old` (a file's entry, a folder's record, or `None` for a folder that has none) with its
    /// attributes changed by `change`; the rest of its metadata is kept.
    fn restamped(&self, old: Option<&Entry>, kind: Kind, change: impl FnOnce(&mut Meta)) -> Entry {
        let base = old.cloned().unwrap_or(Entry { executable: false, linkname: None, blob: None, metadata: None });
        let mut meta = self.entry_meta(&base, kind);
        change(&mut meta);
        Entry { metadata: Some(meta.to_json(base.metadata.as_ref())), ..base }
    }

    /// When the name `gone` of a hard-link group whose entry is `e` goes (unlinked, or put over;
    /// `also` is a name that goes with it), another name of the group and the entry it gets: the
    /// link count changed, so the ctime moves to `now` (written to all the remaining names).
    fn survivor(
        &self,
        d: &Drive,
        e: &Entry,
        gone: &str,
        also: &str,
        now: SystemTime,
    ) -> Result<Option<(String, Entry)>> {
        let Some(id) = e.link_id() else { return Ok(None) };
        let names = view!(self, d, |v| v.link_names(id)?);
        let Some(other) = names.into_iter().find(|n| n != gone && n != also) else { return Ok(None) };
        let kind = if e.linkname.is_some() { Kind::Symlink } else { Kind::File };
        Ok(Some((other, self.restamped(Some(e), kind, |m| m.ctime = now))))
    }

    fn default_meta(&self, kind: Kind) -> Meta {
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            Kind::File | Kind::Special(_) => 0o644,
        };
        Meta { mode, uid: self.cfg.uid, gid: self.cfg.gid, mtime: self.born, ctime: self.born, atime: self.born }
    }

    fn entry_meta(&self, e: &Entry, kind: Kind) -> Meta {
        let mut default = self.default_meta(kind);
        if e.executable {
            default.mode = 0o755;
        }
        self.shown(Meta::from_json(e.metadata.as_ref(), default))
    }

    /// `m` as this mount shows it: a foreign drive's as the mounting user's, without set-id and
    /// sticky bits.
    fn shown(&self, mut m: Meta) -> Meta {
        if self.foreign {
            m.uid = self.cfg.uid;
            m.gid = self.cfg.gid;
            m.mode &= 0o777;
        }
        m
    }

    fn entry_size(&self, e: &Entry) -> Result<u64> {
        if let Some(l) = &e.linkname {
            return Ok(l.len() as u64);
        }
        match &e.blob {
            Some(b) => Ok(self.drive().blob_size(b)?),
            None => Ok(0),
        }
    }

    /// The attributes at `path`, registering its inode.
    fn attr_at(&self, path: &str) -> Result<Attr> {
        if let Some(attr) = self.open_attr(path) {
            return Ok(attr);
        }
        let d = self.drive();
        let mut attr = match self.known_dir(&d, path) {
            Some(k) => k.attr,
            None => self.attr_in(&d, path)?,
        };
        if attr.kind == Kind::Dir {
            if let Some(&t) = self.nodes().touched.get(&attr.ino) {
                (attr.meta.mtime, attr.meta.ctime) = (t, t);
            }
            return Ok(attr);
        }
        Ok(self.with_atime(attr))
    }

    /// The attributes of a file at `path` that is open for writing here.
    fn open_attr(&self, path: &str) -> Option<Attr> {
        let (ino, file) = {
            let nodes = self.nodes();
            let ino = *nodes.by_path.get(path)?;
            (ino, nodes.map.get(&ino)?.file.clone()?)
        };
        let nlink = self.nlink_of(ino);
        let f = lock(&file);
        Some(Attr { ino, kind: Kind::File, size: f.size, meta: f.meta, nlink })
    }

    /// The directory at `path` as last read, if that still holds for drive state `d`.
    fn known_dir(&self, d: &Drive, path: &str) -> Option<KnownDir> {
        let k = {
            let nodes = self.nodes();
            nodes.known_dirs.get(nodes.by_path.get(path)?)?.clone()
        };
        (self.dir_epoch_in(d) == Some(k.epoch)).then_some(k)
    }

    fn attr_in(&self, d: &Drive, path: &str) -> Result<Attr> {
        // Read before the drive: a folder record changed after it leaves this count behind.
        let epoch = self.dir_epoch_in(d);
        let found = self.find(d, path)?;
        let mut recorded = false;
        let mut dir_record = None;
        let (kind, size, meta, entry) = match found {
            Found::Nothing => return Err(Errno(libc::ENOENT)),
            Found::Dir(record) => {
                recorded = record.is_some();
                dir_record = record.clone().map(Arc::new);
                let meta = match record {
                    Some(e) => self.shown(Meta::from_json(e.metadata.as_ref(), self.default_meta(Kind::Dir))),
                    None => self.default_meta(Kind::Dir),
                };
                (Kind::Dir, 4096, meta, None)
            }
            Found::Symlink(e) => {
                let size = e.linkname.as_ref().map_or(0, |l| l.len() as u64);
                (Kind::Symlink, size, self.entry_meta(&e, Kind::Symlink), Some(e))
            }
            Found::File(e, size) => (Kind::File, size, self.entry_meta(&e, Kind::File), Some(e)),
            Found::Special(e) => {
                // A special file of no known type is not shown (as `walk` rejects it).
                let kind = Kind::Special(Special::of(&e).ok_or(Errno(libc::ENOENT))?);
                (kind, 0, self.entry_meta(&e, kind), Some(e))
            }
        };
        let nlink = match (&entry, kind) {
            // A count is cosmetic: a folder whose listing fails (a damaged tree) still stats.
            (_, Kind::Dir) => self.dir_nlink(d, path).unwrap_or(2),
            (Some(e), _) if e.link_id().is_some() => view!(self, d, |v| v.nlink(path, e)?),
            _ => 1,
        };
        let mut nodes = self.nodes();
        let group = entry.as_ref().and_then(|e| e.link_id()).filter(|_| nlink > 1);
        let ino = match group.and_then(|id| nodes.linked(id, path, kind)) {
            Some(ino) => ino,
            None => {
                let ino = nodes.ino_for(path, kind);
                if let Some(id) = group {
                    nodes.by_link.insert(id.to_owned(), ino);
                }
                ino
            }
        };
        let attr = Attr { ino, kind, size, meta, nlink };
        if let Some(n) = nodes.map.get_mut(&ino) {
            if n.file.is_none() {
                n.entry = entry;
            }
        }
        match epoch.filter(|_| kind == Kind::Dir) {
            Some(epoch) => nodes.known_dirs.insert(ino, KnownDir { epoch, attr, recorded, record: dir_record }),
            None => nodes.known_dirs.remove(&ino),
        };
        Ok(attr)
    }

    /// A folder's link count: 2 and one for each sub-folder's `..`.
    fn dir_nlink(&self, d: &Drive, path: &str) -> Result<u32> {
        let children = view!(self, d, |v| v.children_with(if path.is_empty() { "/" } else { path }, |_| Ok(()))?);
        let folders = children.iter().filter(|(_, l)| matches!(l, hyperfs_engine::drive::Listed::Folder)).count();
        Ok(2u32.saturating_add(u32::try_from(folders).unwrap_or(u32::MAX)))
    }

    /// How many names the file `ino` has (0 once unlinked).
    fn nlink_of(&self, ino: Ino) -> u32 {
        let (path, entry) = match self.nodes().map.get(&ino) {
            Some(n) => (n.path.clone(), n.entry.clone()),
            None => return 0,
        };
        let Some(path) = path else { return 0 };
        match entry {
            Some(e) if e.link_id().is_some() => {
                let d = self.drive();
                (|| Ok::<_, Errno>(view!(self, d, |v| v.nlink(&path, &e)?)))().unwrap_or(1)
            }
            _ => 1,
        }
    }

    /// Forgets the name `path` after an unlink or rmdir; its inode lives on while open (and
    /// its staged bytes with it; a closed one's go now).
    fn detach(&self, path: &str) {
        self.nodes().unlink(path);
    }

    /// Moves the inodes at `from` (and under it) to `to`; whatever was at `to` is unlinked.
    /// A file at `to` with another name `other` keeps its inode under that name.
    fn move_nodes(&self, from: &str, to: &str, other: Option<&str>) {
        let mut nodes = self.nodes();
        let nodes = &mut *nodes;
        nodes.unlink_name(to, other);
        let prefix = format!("{from}/");
        let moved: Vec<(String, Ino)> = nodes
            .by_path
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&prefix))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old_path, ino) in moved {
            let new_path = format!("{to}{}", &old_path[from.len()..]);
            nodes.by_path.remove(&old_path);
            if nodes.pending.remove(&old_path) {
                nodes.pending.insert(new_path.clone());
            }
            if let Some(n) = nodes.map.get_mut(&ino) {
                n.path = Some(new_path.clone());
            }
            nodes.by_path.insert(new_path, ino);
        }
    }
}

impl Nodes {
    /// Takes the name `path` from its inode; a file with another name `other` keeps its inode
    /// under that name.
    fn unlink_name(&mut self, path: &str, other: Option<&str>) {
        let Some(other) = other else { return self.unlink(path) };
        self.pending.remove(path);
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.map.get_mut(&ino) {
                if n.path.as_deref() == Some(path) || n.path.is_none() {
                    n.path = Some(other.to_owned());
                }
            }
            self.by_path.entry(other.to_owned()).or_insert(ino);
        }
    }

    /// Takes the name `path` from its inode (an unlink, or a rename over it). The inode lives
    /// on while open; a closed one's staged bytes go now.
    fn unlink(&mut self, path: &str) {
        self.pending.remove(path);
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.map.get_mut(&ino) {
                n.path = None;
                n.pending = false;
                if n.opens == 0 {
                    n.file = None;
                }
            }
        }
    }

    /// The inode of hard-link group `id`, if one is known, given `path` as one more name.
    fn linked(&mut self, id: &str, path: &str, kind: Kind) -> Option<Ino> {
        let ino = *self.by_link.get(id)?;
        let n = self.map.get_mut(&ino).filter(|n| n.kind == kind)?;
        if n.path.is_none() {
            n.path = Some(path.to_owned());
        }
        if let Some(old) = self.by_path.insert(path.to_owned(), ino).filter(|&old| old != ino) {
            if let Some(o) = self.map.get_mut(&old) {
                if o.path.as_deref() == Some(path) {
                    o.path = None;
                }
            }
        }
        Some(ino)
    }

    /// The inode of `path`, made if new; a name whose kind changed gets a new inode.
    fn ino_for(&mut self, path: &str, kind: Kind) -> Ino {
        if let Some(&ino) = self.by_path.get(path) {
            if self.map.get(&ino).is_some_and(|n| n.kind == kind) {
                return ino;
            }
            if let Some(n) = self.map.get_mut(&ino) {
                n.path = None;
            }
        }
        let ino = self.next;
        self.next = Ino(self.next.0 + 1);
        let node = Node {
            kind,
            path: Some(path.to_owned()),
            lookups: 0,
            opens: 0,
            entry: None,
            pending: false,
            file: None,
            writers: 0,
        };
        self.map.insert(ino, node);
        self.by_path.insert(path.to_owned(), ino);
        ino
    }
}

/// The drive state a mount shows, compared with [`Fs::shown`]: (db fork, version). States
/// only grow (a truncation moves to a later fork).
fn shown_state(d: &Drive) -> (u64, u64) {
    (d.db().core().fork(), d.version())
}

/// The directory part of a path (`""` for the root).
fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A staged file as a reader of its first `end` bytes.
struct ReadAt<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.at).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            // The staged file is shorter than its size: the rest reads as zeros (a hole).
            buf[..want].fill(0);
            self.at += want as u64;
            return Ok(want);
        }
        self.at += n as u64;
        Ok(n)
    }
}
