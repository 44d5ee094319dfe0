//! Changes to a local folder that stay beneath it: what `export` writes, wherever a drive's
//! names and links point.
//!
//! A drive is someone else's data. Its names are checked in the engine
//! (`drive::path::check_stored`: plain names only), and here every path is walked one
//! name at a time from the folder, each name opened with `O_NOFOLLOW`: no symlink is ever
//! followed, whether a drive's entry made it (a link `/l -> /elsewhere` and a file `/l/x`),
//! export made it earlier in the run, or another process put it there meanwhile. The last name of
//! every change is used relative to its verified parent (`openat`, `mkdirat`, `symlinkat`,
//! `mknodat`, `linkat`, `renameat`, `unlinkat`, `fchownat` and `utimensat` without following), so a change lands
//! beneath the folder or fails.
//!
//! Invariant: no path handed to the kernel here is resolved from anywhere but the folder's own
//! descriptor, and none passes through a symlink.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A folder that changes are made beneath.
pub struct Beneath {
    root: Arc<OwnedFd>,
    /// Parents opened lately, by relative path: files come in path order, so neighbours share
    /// them (a walk per file cost an open per name).
    parents: Mutex<HashMap<String, Arc<OwnedFd>>>,
}

/// Parents kept open at most.
const KEPT_PARENTS: usize = 64;

impl Beneath {
    /// Opens the folder `path` (the user's own argument: a symlink here is followed).
    pub fn open(path: &Path) -> io::Result<Beneath> {
        let root = open_at(
            libc::AT_FDCWD,
            &cstr(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))?,
            DIR_FLAGS & !libc::O_NOFOLLOW,
        )?;
        Ok(Beneath { root: Arc::new(root), parents: Mutex::new(HashMap::new()) })
    }

    /// Forgets the parents kept open (after folders were removed or replaced).
    pub fn forget(&self) {
        self.parents.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Creates the file `rel` for writing (mode 0600 until set): `new` refuses an existing
    /// name; otherwise an existing file is truncated. Never through a symlink.
    pub fn create(&self, rel: &str, new: bool) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let flags = libc::O_WRONLY
            | libc::O_CREAT
            | libc::O_TRUNC
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if new { libc::O_EXCL } else { 0 };
        // SAFETY: a descriptor we hold and a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Opens the regular file `rel` for reading, not following a symlink.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let fd = open_at(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC)?;
        Ok(File::from(fd))
    }

    /// Makes the folder `rel` with `mode` (set exactly, whatever the umask) unless a folder is
    /// there (which keeps its mode); anything else there is an error.
    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: a descriptor we hold and a NUL-terminated name.
        let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) } == 0;
        if !made {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        // Opening it refuses a symlink or a file in its place.
        let fd = open_at(dir.as_raw_fd(), &name, DIR_FLAGS)?;
        if made {
            fchmod(&fd, mode)?;
        }
        Ok(())
    }

    /// Sets the mode of the folder `rel` (not through a symlink).
    pub fn chmod_dir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let fd = if rel.is_empty() {
            open_at(self.root.as_raw_fd(), c".", DIR_FLAGS)?
        } else {
            let (dir, name) = self.parent(rel)?;
            open_at(dir.as_raw_fd(), &name, DIR_FLAGS)?
        };
        fchmod(&fd, mode)
    }

    /// Makes `rel` a symlink to `target`, replacing a file or link there.
    pub fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let target = cstr(target.as_bytes())?;
        self.unlink_name(&dir, &name)?;
        // SAFETY: a descriptor we hold and NUL-terminated strings.
        if unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `rel` a FIFO, socket or device node (`mode` holds the type and the permission
    /// bits, set exactly whatever the umask), replacing a file or link there.
    pub fn mknod(&self, rel: &str, mode: u32, dev: u64) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        self.unlink_name(&dir, &name)?;
        // SAFETY: a descriptor we hold and a NUL-terminated name.
        if unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), (mode & libc::S_IFMT) | 0o600, dev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The mode through a descriptor of exactly what was made (a link put there meanwhile is
        // not followed): a path descriptor, seen through its magic link.
        let fd = open_at(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a descriptor we hold and a stat to fill.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != mode & libc::S_IFMT {
            return Err(io::Error::other(format!("{rel:?} changed while it was made")));
        }
        let at = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::chmod(at.as_ptr(), (mode & 0o7777) as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Gives the file `from` the further name `to` (a hard link; neither name followed),
    /// replacing a file or link at `to`.
    pub fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        self.unlink_name(&td, &tname)?;
        // SAFETY: descriptors we hold and NUL-terminated names; no AT_SYMLINK_FOLLOW.
        if unsafe { libc::linkat(fd.as_raw_fd(), fname.as_ptr(), td.as_raw_fd(), tname.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes a name that is not a folder from `dir`; one already gone is not an error.
    fn unlink_name(&self, dir: &OwnedFd, name: &std::ffi::CStr) -> io::Result<()> {
        // SAFETY: a descriptor we hold and a NUL-terminated name.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Renames `from` over `to` (both in one folder, names not followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        // SAFETY: descriptors we hold and NUL-terminated names.
        if unsafe { libc::renameat(fd.as_raw_fd(), fname.as_ptr(), td.as_raw_fd(), tname.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes the file or link `rel`; a name already gone is not an error.
    pub fn remove_file(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        self.unlink_name(&dir, &name)
    }

    /// Removes the folder `rel` with everything in it (a link there is removed, not followed).
    pub fn remove_dir_all(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        // The verified parent by its descriptor (a magic link to exactly that folder); the standard
        // library's removal opens the last name and everything below it without following.
        let at = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes()));
        match std::fs::remove_dir_all(&at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Sets the owner (when `owner` is given) and the modification time of `rel`, not following a
    /// symlink.
    pub fn set_owner_and_times(&self, rel: &str, owner: Option<(u32, u32)>, mtime: libc::timespec) -> io::Result<()> {
        let (dir, name) = self.at(rel)?;
        if let Some((uid, gid)) = owner {
            // SAFETY: a descriptor we hold and a NUL-terminated name.
            if unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }, mtime];
        // SAFETY: as above, and two initialised timespecs.
        if unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `rel`'s parent and last name; the folder itself is its own `.`.
    fn at(&self, rel: &str) -> io::Result<(Arc<OwnedFd>, CString)> {
        if rel.is_empty() {
            return Ok((self.root.clone(), c".".to_owned()));
        }
        self.parent(rel)
    }

    /// The folder holding `rel` (a relative path of plain names), opened one name at a time
    /// without following symlinks, and `rel`'s last name.
    fn parent(&self, rel: &str) -> io::Result<(Arc<OwnedFd>, CString)> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        for n in rel.split('/') {
            if matches!(n, "" | "." | "..") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{rel:?} is not a plain relative path"),
                ));
            }
        }
        let name = cstr(name.as_bytes())?;
        if parent.is_empty() {
            return Ok((self.root.clone(), name));
        }
        if let Some(fd) = self.parents.lock().unwrap_or_else(|e| e.into_inner()).get(parent) {
            return Ok((fd.clone(), name));
        }
        let mut fd = self.root.clone();
        for n in parent.split('/') {
            fd = Arc::new(open_at(fd.as_raw_fd(), &cstr(n.as_bytes())?, DIR_FLAGS)?);
        }
        let mut kept = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= KEPT_PARENTS {
            kept.clear();
        }
        kept.insert(parent.to_owned(), fd.clone());
        Ok((fd, name))
    }
}

/// A folder opened to walk through: a symlink is refused (`ELOOP`), as is anything not a folder.
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn open_at(dir: libc::c_int, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a descriptor we hold (or AT_FDCWD) and `name` is NUL-terminated.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fchmod(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    // SAFETY: a descriptor we hold.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
}
