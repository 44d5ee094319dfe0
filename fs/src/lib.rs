//! hyperfs-fs: filesystem semantics over a drive — inodes, handles, staging of writes, POSIX
//! rules and the one errno mapping — as a FUSE-free layer tested directly ([`Fs`]), plus a thin
//! `fuser` adapter that mounts it ([`mount`]).
//!
//! Knows nothing of: QUIC, peers or the swarm (`hyperfs-net`). A read of a block that is not
//! local goes through the engine's fetch seam and waits on a worker thread, never on the FUSE
//! session thread.
//!
//! Invariants: every FUSE request that reads or changes the drive is answered from the worker
//! pool; the session thread answers only from memory (`forget`, `readdir` of a listing taken at
//! `opendir`, the dots of a listing without attributes, `releasedir`). A change to the tree is
//! one drive version, written before the reply. A read-only mount (a checkout, a drive without
//! its secret key, `--read-only`) refuses every change with `EROFS`. A mount made with a guard
//! program is taken down by the guard process once the mounting process ends, however it ends.

mod filesystem;
mod fuse;
mod guard;

pub use filesystem::{flags, Attr, Config, DirEntry, Fh, Fs, Ino, Kind, SetAttr, Statfs, ROOT};
pub use fuse::{mount, unmount, MountOptions, Mounted};
pub use guard::run_guard;
pub use hyperfs_engine::drive::Meta;

/// An error number as the kernel gets it; the one place engine errors become errnos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<hyperfs_engine::Error> for Errno {
    fn from(e: hyperfs_engine::Error) -> Errno {
        use hyperfs_engine::Error as E;
        let errno = match &e {
            E::NotWritable => libc::EROFS,
            E::InvalidRequest(_) | E::OutOfBounds(_) => libc::EINVAL,
            // A full disk (or quota) is the caller's to know; other store failures are EIO.
            e if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        };
        if errno == libc::EIO || errno == libc::ENOSPC {
            tracing::warn!(error = %e, "filesystem operation failed");
        }
        Errno(errno)
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests;
