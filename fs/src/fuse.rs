//! The thin `fuser` adapter: turns kernel requests into [`Fs`] calls on a worker pool and the
//! answers into replies. The session thread only reads requests and hands them on, so a slow
//! commit or a read that waits on a peer never stalls the mount.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};

use crate::guard::Guard;
use crate::{Attr, DirEntry, Errno, Fh, Fs, Ino, Kind, SetAttr};
use hyperfs_engine::drive::Special;

/// How a mount is made.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// What `mount` and `df` show as the source, e.g. `hyperfs:drive-1`.
    pub fsname: String,
    /// Let other users in (their access is still checked against the modes). Off by default:
    /// a mount is its user's alone, as a private drive should be.
    pub allow_other: bool,
    /// Worker threads answering requests.
    pub threads: usize,
    /// The program started as `PROGRAM mount-guard DIR MOUNT_ID` to unmount once this process
    /// is gone (it calls [`crate::run_guard`]); `None` leaves that to `fusermount3`'s
    /// auto-unmount, which can miss when the process is killed (see the `guard` module).
    pub guard: Option<PathBuf>,
    /// The drive also changes from elsewhere while mounted read-write (a multi-writer member's
    /// drive, which shows the others' changes): names not found are not cached either.
    pub changed_elsewhere: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { fsname: "hyperfs".into(), allow_other: false, threads: 8, guard: None, changed_elsewhere: false }
    }
}

/// A mounted drive; [`Mounted::unmount`] (or the end of the process) takes it down.
pub struct Mounted {
    dir: PathBuf,
    session: Option<fuser::BackgroundSession>,
    guard: Option<Guard>,
    fs: Arc<Fs>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // fuser unmounts (unless busy); the guard then detaches whatever is left.
        self.session.take();
        if let Some(guard) = self.guard.take() {
            guard.release();
        }
    }
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    /// Tells the kernel to forget what it cached of this mount (names, attributes, data): the
    /// drive has a version from elsewhere (a peer's append or truncation).
    pub fn invalidate(&self) {
        let Some(session) = &self.session else { return };
        let notifier = session.notifier();
        for (ino, entry) in self.fs.known() {
            if let Some((parent, name)) = entry {
                // ENOENT: the kernel had already dropped it.
                let _ = notifier.inval_entry(parent.0, OsStr::new(&name));
            }
            let _ = notifier.inval_inode(ino.0, 0, 0);
        }
    }

    /// Unmounts; fails (and stays mounted) while the mount is busy, unless `lazy`.
    pub fn unmount(&mut self, lazy: bool) -> std::io::Result<()> {
        if self.session.is_some() {
            unmount(&self.dir, lazy)?;
            self.session.take();
        }
        if let Some(guard) = self.guard.take() {
            guard.release();
        }
        Ok(())
    }
}

/// Mounts `fs` on `dir` (a canonical path). The mount goes away with the process even if it is
/// killed: the guard process of [`MountOptions::guard`] or else `fusermount3`'s auto-unmount
/// watches it.
pub fn mount(fs: Arc<Fs>, dir: &Path, opts: &MountOptions) -> std::io::Result<Mounted> {
    let mut options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("hyperfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
    ];
    if opts.guard.is_none() {
        options.push(MountOption::AutoUnmount);
    }
    if opts.allow_other {
        options.push(MountOption::AllowOther);
    }
    if fs.read_only() {
        options.push(MountOption::RO);
    }
    let ttl = if fs.is_checkout() { Duration::from_secs(30) } else { Duration::from_secs(1) };
    // A live read-only mount changes only from elsewhere (a peer, the CLI): the kernel is told
    // to forget names it knows, but cannot be told of names it learnt are missing, so those are
    // not cached.
    let live = fs.read_only() || opts.changed_elsewhere;
    let negative_ttl = if live && !fs.is_checkout() { Duration::ZERO } else { ttl };
    let adapter = Adapter { fs: fs.clone(), pool: Pool::new(opts.threads.max(1)), ttl, negative_ttl };
    let session = fuser::spawn_mount2(adapter, dir, &options)?;
    let mut mounted = Mounted { dir: dir.to_path_buf(), session: Some(session), guard: None, fs };
    if let Some(program) = &opts.guard {
        match Guard::spawn(program, dir) {
            Ok(guard) => mounted.guard = Some(guard),
            Err(e) => {
                // Unguarded, a killed node would leave a dead mount: refuse the mount instead.
                let _ = mounted.unmount(true);
                return Err(std::io::Error::other(format!("starting the mount guard {}: {e}", program.display())));
            }
        }
    }
    Ok(mounted)
}

/// Unmounts whatever FUSE mount is at `dir`, also one whose node is gone (`lazy` detaches a
/// busy one).
pub fn unmount(dir: &Path, lazy: bool) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    // Not root: the setuid helper may unmount what this user mounted.
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(dir).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads answering requests; they end when the pool is dropped.
///
/// A job goes to the worker that went idle last, handed over in its own slot and woken by
/// itself: the same one or two threads answer a run of requests while their caches are warm.
/// Only a worker that has just finished watches for its next job (briefly, then it parks); the
/// others are parked. (A channel shared by all workers woke them in turn, and each spun and
/// yielded before parking: about ten context switches per unlink, which takes three requests,
/// against five with this pool.) Jobs that find no idle worker wait in a queue.
struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<std::thread::Thread>,
}

struct PoolShared {
    state: std::sync::Mutex<PoolState>,
    /// Set when a job is put in the worker's slot: a worker that just went idle watches it for
    /// a moment before it parks, so a request close behind the last one costs no wake-up.
    handed: Vec<std::sync::atomic::AtomicBool>,
}

struct PoolState {
    /// Jobs no worker was idle for, oldest first.
    queue: std::collections::VecDeque<Job>,
    /// Idle workers by number, the one idle last at the end.
    idle: Vec<usize>,
    /// Each worker's handed-over job.
    slots: Vec<Option<Job>>,
    /// The one idle worker watching for a job instead of parked (it gets the next one).
    spinner: Option<usize>,
    closed: bool,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(PoolShared {
            state: std::sync::Mutex::new(PoolState {
                queue: std::collections::VecDeque::new(),
                idle: Vec::with_capacity(threads),
                slots: (0..threads).map(|_| None).collect(),
                spinner: None,
                closed: false,
            }),
            handed: (0..threads).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
        });
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new().name(format!("hyperfs-fuse-{i}")).spawn(move || {
                while let Some(job) = shared.next_job(i) {
                    // A panic answers the request with EIO (the reply's drop) and keeps the worker.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a filesystem request panicked");
                    }
                }
            });
            match spawned {
                Ok(h) => handles.push(h.thread().clone()),
                Err(e) => tracing::error!(error = %e, "starting a filesystem worker"),
            }
        }
        Pool { shared, threads: handles }
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        let mut state = self.shared.lock();
        if self.threads.is_empty() {
            drop(state);
            return job();
        }
        let spinner = state.spinner.take();
        if let Some(w) = spinner {
            state.idle.retain(|&i| i != w);
        }
        match spinner.or_else(|| state.idle.pop()) {
            Some(w) => {
                state.slots[w] = Some(job);
                self.shared.handed[w].store(true, std::sync::atomic::Ordering::Release);
                drop(state);
                // Only a system call if the worker has parked already.
                self.threads[w].unpark();
            }
            None => state.queue.push_back(job),
        }
    }
}

impl PoolShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `w`'s next job: one handed to it, else the oldest queued; `None` once the pool
    /// is closed. Parks while there is none.
    fn next_job(&self, w: usize) -> Option<Job> {
        use std::sync::atomic::Ordering;
        loop {
            let mut state = self.lock();
            if let Some(job) = state.slots[w].take().or_else(|| state.queue.pop_front()) {
                self.handed[w].store(false, Ordering::Relaxed);
                return Some(job);
            }
            if state.closed {
                return None;
            }
            // Woken without a job (park may return spuriously) it is still listed as idle.
            if !state.idle.contains(&w) {
                state.idle.push(w);
            }
            // One idle worker at a time watches for the next job for a moment before it parks:
            // a request close behind the last one then costs no wake-up.
            let spins = state.spinner.is_none();
            if spins {
                state.spinner = Some(w);
            }
            drop(state);
            if spins {
                let until = std::time::Instant::now() + SPIN;
                // Yielding, not spinning: where every core is busy (a sparse read's network
                // threads verifying blocks), the watch gives its core to them; where a core is
                // spare, it returns at once.
                while !self.handed[w].load(Ordering::Acquire) && std::time::Instant::now() < until {
                    std::thread::yield_now();
                }
                let mut state = self.lock();
                if state.spinner == Some(w) {
                    state.spinner = None;
                }
            }
            // A job handed over meanwhile leaves the unpark token, so park returns at once.
            std::thread::park();
        }
    }
}

/// How long the idle worker watches for its next job before parking. Measured on the mount
/// (10k files): 30 µs caught too few requests; 100 µs doubled stats per second against parking
/// at once and raised unlinks by a third; 300 µs gained no more and burnt more processor. The
/// watch yields instead of spinning since a sparse read showed spinning at 8% of its CPU on two
/// cores: two runs each, stats/s 17,081 and 17,155 spinning against 19,007 and 24,564 yielding,
/// unlinks/s 5,935 and 7,501 against 6,842 and 8,237; the sparse read 1.03 s -> 0.97 s.
const SPIN: Duration = Duration::from_micros(100);

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        for t in &self.threads {
            t.unpark();
        }
    }
}

struct Adapter {
    fs: Arc<Fs>,
    pool: Pool,
    ttl: Duration,
    /// How long the kernel may remember that a name does not exist.
    negative_ttl: Duration,
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Special(Special::Fifo) => FileType::NamedPipe,
        Kind::Special(Special::Socket) => FileType::Socket,
        Kind::Special(Special::Char(_)) => FileType::CharDevice,
        Kind::Special(Special::Block(_)) => FileType::BlockDevice,
    }
}

/// A device number as the kernel's FUSE protocol carries it (`new_encode_dev`), from the
/// `dev_t` a drive records (glibc's `makedev`).
fn kernel_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The `dev_t` of a device number the kernel sent (`new_decode_dev`).
fn user_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.meta.atime,
        mtime: a.meta.mtime,
        ctime: a.meta.ctime,
        crtime: a.meta.ctime,
        kind: file_type(a.kind),
        perm: (a.meta.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.meta.uid,
        gid: a.meta.gid,
        rdev: match a.kind {
            Kind::Special(s) => kernel_dev(s.rdev()),
            _ => 0,
        },
        blksize: 128 << 10,
        flags: 0,
    }
}

/// Where a readdir reads: which listing, and the index of the next entry in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Position {
    pub(crate) listing: u64,
    pub(crate) index: u64,
    /// Whether the listing is named by the offset (a directory listed without opening):
    /// offsets then carry the listing's number in their high 32 bits and the next index in
    /// the low 32. An opened directory's offsets are plain indexes.
    named: bool,
}

impl Position {
    pub(crate) fn of(fh: u64, offset: i64) -> Position {
        let offset = offset.max(0) as u64;
        if fh != 0 {
            return Position { listing: fh, index: offset, named: false };
        }
        // Offset 0 names no listing (listings are numbered from 1): a new one is taken.
        Position { listing: offset >> 32, index: offset & 0xffff_ffff, named: true }
    }

    /// The offset the kernel hands back to read on past the `i`th entry from here.
    pub(crate) fn offset_after(&self, i: u64) -> i64 {
        let next = self.index + i + 1;
        if self.named {
            ((self.listing << 32) | (next & 0xffff_ffff)) as i64
        } else {
            next as i64
        }
    }

    /// The entries from here, of a listing kept: `None` if the listing named by the offset is
    /// gone (read to its end, or made way for newer ones).
    pub(crate) fn read_kept(self, fs: &Fs) -> Result<Option<(Position, Vec<DirEntry>)>, Errno> {
        match fs.readdir(self.listing, self.index) {
            Err(Errno(libc::EBADF)) if self.named => Ok(None),
            read => Ok(Some(self.finish(fs, read?))),
        }
    }

    /// The entries from here; a listing named by the offset but gone is taken again and read on
    /// from the same index.
    pub(crate) fn read(self, fs: &Fs, dir: Ino) -> Result<(Position, Vec<DirEntry>), Errno> {
        if let Some(read) = self.read_kept(fs)? {
            return Ok(read);
        }
        let (listing, page) = fs.take_listing_at(dir, self.index)?;
        Ok(Position { listing, ..self }.finish(fs, page))
    }

    /// A listing named by offsets is released once its end is read: the kernel sends no
    /// releasedir for it.
    fn finish(self, fs: &Fs, page: Vec<DirEntry>) -> (Position, Vec<DirEntry>) {
        if page.is_empty() && self.named {
            fs.releasedir(self.listing);
        }
        (self, page)
    }
}

/// A plain readdir reply from `list`, read from `at`.
fn fill_listing(at: Position, list: &[DirEntry], mut reply: ReplyDirectory) {
    for (i, e) in list.iter().enumerate() {
        if reply.add(e.ino.0, at.offset_after(i as u64), file_type(e.kind), &e.name) {
            break;
        }
    }
    reply.ok()
}

/// What `lookup` answers for a name that does not exist: inode 0, which the kernel caches as
/// "no such entry".
fn negative() -> FileAttr {
    let mut a = file_attr(&Attr {
        ino: Ino(0),
        kind: Kind::File,
        size: 0,
        meta: crate::Meta {
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            atime: SystemTime::UNIX_EPOCH,
        },
        nlink: 0,
    });
    a.ino = 0;
    a
}

/// A name as the drive keeps it (UTF-8), or `EILSEQ`.
fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_owned).ok_or(Errno(libc::EILSEQ))
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

macro_rules! answer {
    ($reply:ident, $result:expr, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(Errno(e)) => $reply.error(e),
        }
    };
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        use fuser::consts::*;
        let _ = config
            .add_capabilities(FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_ATOMIC_O_TRUNC | FUSE_PARALLEL_DIROPS);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(crate::filesystem::KERNEL_READ_AHEAD);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let (fs, ttl, negative_ttl, name) = (self.fs.clone(), self.ttl, self.negative_ttl, name_of(name));
        self.pool.run(move || match name.and_then(|n| fs.lookup(Ino(parent), &n)) {
            Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
            // A negative entry the kernel may keep for the TTL (a create here replaces it).
            Err(Errno(libc::ENOENT)) => reply.entry(&negative_ttl, &negative(), 0),
            Err(Errno(e)) => reply.error(e),
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.fs.forget(Ino(ino), nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.pool.run(move || answer!(reply, fs.getattr(Ino(ino)), |a| reply.attr(&ttl, &file_attr(&a))));
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        let set = SetAttr { mode, uid, gid, size, mtime: mtime.map(time_of), atime: atime.map(time_of) };
        self.pool.run(move || answer!(reply, fs.setattr(Ino(ino), set), |a| reply.attr(&ttl, &file_attr(&a))));
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let fs = self.fs.clone();
        self.pool.run(move || answer!(reply, fs.readlink(Ino(ino)), |t| reply.data(&t)));
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (fs, ttl, name, uid, gid) = (self.fs.clone(), self.ttl, name_of(name), req.uid(), req.gid());
        if mode & libc::S_IFMT != libc::S_IFREG {
            // FIFOs, sockets and device nodes (the kernel let only a privileged caller make one).
            return self.pool.run(move || {
                let made = name.and_then(|n| fs.mknod(Ino(parent), &n, mode, user_dev(rdev), uid, gid));
                answer!(reply, made, |a| reply.entry(&ttl, &file_attr(&a), 0))
            });
        }
        self.pool.run(move || {
            let made = name.and_then(|n| fs.create(Ino(parent), &n, mode, libc::O_EXCL | libc::O_WRONLY, uid, gid));
            let made = made.and_then(|(a, fh)| fs.release(fh).map(|()| a));
            answer!(reply, made, |a| reply.entry(&ttl, &file_attr(&a), 0))
        });
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let (fs, ttl, name, uid, gid) = (self.fs.clone(), self.ttl, name_of(name), req.uid(), req.gid());
        self.pool.run(move || {
            answer!(reply, name.and_then(|n| fs.mkdir(Ino(parent), &n, mode, uid, gid)), |a| reply.entry(
                &ttl,
                &file_attr(&a),
                0
            ))
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name_of(name));
        self.pool.run(move || answer!(reply, name.and_then(|n| fs.unlink(Ino(parent), &n)), |()| reply.ok()));
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name_of(name));
        self.pool.run(move || answer!(reply, name.and_then(|n| fs.rmdir(Ino(parent), &n)), |()| reply.ok()));
    }

    fn symlink(&mut self, req: &Request<'_>, parent: u64, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (fs, ttl, name, uid, gid) = (self.fs.clone(), self.ttl, name_of(link_name), req.uid(), req.gid());
        let target = name_of(target.as_os_str());
        self.pool.run(move || {
            let made = name.and_then(|n| fs.symlink(Ino(parent), &n, &target?, uid, gid));
            answer!(reply, made, |a| reply.entry(&ttl, &file_attr(&a), 0))
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (fs, name, newname) = (self.fs.clone(), name_of(name), name_of(newname));
        self.pool.run(move || {
            let done = name.and_then(|n| fs.rename(Ino(parent), &n, Ino(newparent), &newname?, flags));
            answer!(reply, done, |()| reply.ok())
        });
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let (fs, ttl, name) = (self.fs.clone(), self.ttl, name_of(newname));
        self.pool.run(move || {
            let made = name.and_then(|n| fs.link(Ino(ino), Ino(newparent), &n));
            answer!(reply, made, |a| reply.entry(&ttl, &file_attr(&a), 0))
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let keep = if fs.is_checkout() { fuser::consts::FOPEN_KEEP_CACHE } else { 0 };
        self.pool.run(move || answer!(reply, fs.open(Ino(ino), flags), |fh| reply.opened(fh.0, keep)));
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.pool.run(move || {
            let mut reply = Some(reply);
            let read = fs.read_with(Fh(fh), offset.max(0) as u64, size, &mut |d| {
                if let Some(r) = reply.take() {
                    r.data(d);
                }
            });
            if let (Err(Errno(e)), Some(r)) = (read, reply.take()) {
                r.error(e);
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let (fs, data) = (self.fs.clone(), data.to_vec());
        self.pool
            .run(move || answer!(reply, fs.write(Fh(fh), offset.max(0) as u64, &data), |n| reply.written(n as u32)));
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.pool.run(move || answer!(reply, fs.flush(Fh(fh)), |()| reply.ok()));
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.pool.run(move || answer!(reply, fs.release(Fh(fh)), |()| reply.ok()));
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.pool.run(move || answer!(reply, fs.fsync(Fh(fh)), |()| reply.ok()));
    }

    /// A live mount answers `ENOSYS`, and the kernel then lists its directories without
    /// opening them: no OPENDIR and RELEASEDIR round trips per listing. Its readdir takes the
    /// listing at offset 0 and names it in the offsets it hands out (see [`Position`]). A
    /// checkout never changes, so its listings are opened and kept in the kernel's cache.
    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if !self.fs.is_checkout() {
            return reply.error(libc::ENOSYS);
        }
        let fs = self.fs.clone();
        let keep = fuser::consts::FOPEN_KEEP_CACHE | fuser::consts::FOPEN_CACHE_DIR;
        self.pool.run(move || answer!(reply, fs.opendir(Ino(ino)), |fh| reply.opened(fh, keep)));
    }

    /// Answered here on the session thread when the listing is taken already: reading it takes
    /// one short lock that no slow work holds (handing it to a worker cost more than the
    /// answer). Taking a listing is work for the pool.
    fn readdir(&mut self, _req: &Request<'_>, ino: u64, fh: u64, offset: i64, reply: ReplyDirectory) {
        let at = Position::of(fh, offset);
        match at.read_kept(&self.fs) {
            Ok(Some((at, list))) => fill_listing(at, &list, reply),
            Ok(None) => {
                let fs = self.fs.clone();
                self.pool
                    .run(move || answer!(reply, at.read(&fs, Ino(ino)), |(at, list)| fill_listing(at, &list, reply)));
            }
            Err(Errno(e)) => reply.error(e),
        }
    }

    fn readdirplus(&mut self, _req: &Request<'_>, ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectoryPlus) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        let at = Position::of(fh, offset);
        // A listing without attributes: the first reply holds the dots alone, and the kernel
        // asks for the rest as a plain listing (it asks for attributes past the first reply
        // only after lookups of entries).
        let dots_only = at.index == 0 && !fs.listing_with_attrs(Ino(ino));
        if dots_only && !at.named {
            // An opened listing has its dots' attributes already: answered here, as readdir is.
            if let Ok(list) = fs.readdir(at.listing, 0) {
                if let [a, b, ..] = &list[..] {
                    if let (Some(x), Some(y)) = (a.attr, b.attr) {
                        let _ = reply.add(a.ino.0, at.offset_after(0), &a.name, &ttl, &file_attr(&x), 0);
                        let _ = reply.add(b.ino.0, at.offset_after(1), &b.name, &ttl, &file_attr(&y), 0);
                        return reply.ok();
                    }
                }
            }
        }
        self.pool.run(move || {
            answer!(reply, at.read(&fs, Ino(ino)), |(at, list)| {
                for (i, e) in list.iter().enumerate() {
                    if dots_only && i >= 2 {
                        break;
                    }
                    // A name removed or renamed since the listing was taken is skipped.
                    let Some(a) = fs.listed_attr(Ino(ino), e) else { continue };
                    let dots = e.name == "." || e.name == "..";
                    if reply.add(e.ino.0, at.offset_after(i as u64), &e.name, &ttl, &file_attr(&a), 0) {
                        break;
                    }
                    // The kernel takes a reference on every entry it was given but the dots.
                    if !dots {
                        fs.note_lookup(e.ino);
                    }
                }
                reply.ok()
            })
        });
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.fs.releasedir(fh);
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.pool.run(move || answer!(reply, fs.sync(), |()| reply.ok()));
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let fs = self.fs.clone();
        self.pool.run(move || {
            answer!(reply, fs.statfs(), |s| reply
                .statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize))
        });
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        // The kernel checks modes itself (default_permissions); this only says it exists.
        let fs = self.fs.clone();
        self.pool.run(move || answer!(reply, fs.getattr(Ino(ino)), |_| reply.ok()));
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, ttl, name, uid, gid) = (self.fs.clone(), self.ttl, name_of(name), req.uid(), req.gid());
        self.pool.run(move || {
            answer!(reply, name.and_then(|n| fs.create(Ino(parent), &n, mode, flags, uid, gid)), |(a, fh)| reply
                .created(&ttl, &file_attr(&a), 0, fh.0, 0))
        });
    }

    fn getxattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(libc::ENODATA);
    }

    fn listxattr(&mut self, _req: &Request<'_>, _ino: u64, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::ENOTSUP);
    }

    fn removexattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::ENODATA);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_pool_runs_every_job_also_when_all_workers_are_busy_and_after_a_panic() {
        let pool = Pool::new(2);
        let (tx, rx) = mpsc::channel();
        // Two jobs hold both workers until released; the rest queue behind them.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        for _ in 0..2 {
            let (rx, tx) = (release_rx.clone(), tx.clone());
            pool.run(move || {
                let _ = rx.lock().map(|r| r.recv());
                let _ = tx.send(usize::MAX);
            });
        }
        pool.run(|| panic!("a request that panics"));
        for i in 0..100 {
            let tx = tx.clone();
            pool.run(move || {
                let _ = tx.send(i);
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "a job ran while both workers were held");
        release_tx.send(()).expect("release");
        release_tx.send(()).expect("release");
        let mut got: Vec<usize> = (0..102).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a job")).collect();
        got.sort_unstable();
        assert_eq!(got[..100], (0..100).collect::<Vec<_>>()[..]);
        assert_eq!(got[100..], [usize::MAX, usize::MAX]);
        // The workers are still there after the panic, and one handed a job right away runs it.
        let tx2 = tx.clone();
        pool.run(move || {
            let _ = tx2.send(7);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("a job"), 7);
    }

    #[test]
    fn a_dropped_pool_finishes_what_was_queued() {
        let pool = Pool::new(1);
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..10 {
            let tx = tx.clone();
            pool.run(move || {
                std::thread::sleep(Duration::from_millis(2));
                let _ = tx.send(i);
            });
        }
        drop(pool);
        let got: Vec<i32> = (0..10).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a job")).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
