//! The mount guard: a small process beside the node that unmounts the node's mount once the node
//! is gone, however it ends (a `SIGKILL` included), so no dead mount is left behind.
//!
//! The node holds the write end of a pipe that is the guard's standard input; the kernel closes
//! it when the node ends. The guard then detaches the mount if the very mount it was given (by
//! mount id and mount point) is still there. `fusermount3`'s auto-unmount does the same job but
//! decides by opening the mount point and unmounting only on `ENOTCONN`; when that open races
//! the node's exit it gets `ECONNABORTED` instead and leaves the dead mount in place (seen under
//! disk load). The guard never touches the mount's files, so it has no such race and cannot hang
//! on them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running guard; [`Guard::release`] ends it once the node has unmounted.
#[derive(Debug)]
pub(crate) struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guard {
    /// Starts `program mount-guard DIR MOUNT_ID` for the mount on `dir` (made by this process
    /// just before). The guard runs in its own process group, so a terminal's Ctrl-C that stops
    /// the node does not stop it too.
    pub(crate) fn spawn(program: &Path, dir: &Path) -> std::io::Result<Guard> {
        use std::os::unix::process::CommandExt;
        let id = mount_id(dir)
            .ok_or_else(|| std::io::Error::other(format!("{} is not in the mount table", dir.display())))?;
        let mut child = Command::new(program)
            .arg("mount-guard")
            .arg(dir)
            .arg(id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Guard { child, stdin })
    }

    /// Closes the pipe and waits for the guard to end: it unmounts whatever of the mount is still
    /// there (the node unmounts first; a mount still busy then is detached).
    pub(crate) fn release(mut self) {
        self.stdin.take();
        if let Err(e) = self.child.wait() {
            tracing::warn!(error = %e, "waiting for the mount guard");
        }
    }
}

/// The guard's body: waits for standard input to end (the node is gone or done), then detaches
/// the mount with id `mount_id` if it is still on `dir`. Says `Ok(true)` if it unmounted.
pub fn run_guard(dir: &Path, mount_id: u64) -> std::io::Result<bool> {
    // Let go of whatever the node let this process inherit (a pipe held open here could keep a
    // reader of the node's waiting for an end that never comes).
    // SAFETY: close_range only closes descriptors; nothing in this process uses those above 2.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
        // SAFETY: setting a signal to SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Any other failure means the pipe is unusable: treat it as the node's end.
            Err(_) => break,
        }
    }
    if mount_id_at(dir, mount_id) {
        crate::fuse::unmount(dir, true)?;
        return Ok(true);
    }
    Ok(false)
}

/// The id of the topmost mount on `dir` (a canonical path), from `/proc/self/mountinfo`.
pub(crate) fn mount_id(dir: &Path) -> Option<u64> {
    mounts().into_iter().rev().find(|(_, point)| point == dir).map(|(id, _)| id)
}

/// Whether the mount `id` is still on `dir`.
fn mount_id_at(dir: &Path, id: u64) -> bool {
    mounts().into_iter().any(|(i, point)| i == id && point == dir)
}

/// Every mount's id and mount point, in mount order.
fn mounts() -> Vec<(u64, PathBuf)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines().filter_map(parse_mountinfo_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw` → `(36, "/mnt2")`; the
/// kernel writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn parse_mountinfo_line(line: &str) -> Option<(u64, PathBuf)> {
    use std::os::unix::ffi::OsStringExt;
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let point = fields.nth(3)?.as_bytes();
    let mut out = Vec::with_capacity(point.len());
    let mut i = 0;
    while i < point.len() {
        let octal =
            point.get(i + 1..i + 4).filter(|d| point[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(point[i]);
                i += 1;
            }
        }
    }
    Some((id, PathBuf::from(std::ffi::OsString::from_vec(out))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_the_id_and_the_unescaped_mount_point() {
        let line = "36 35 98:0 /mnt1 /mnt/a\\040b\\134c rw,noatime master:1 - fuse.hyperfs hyperfs:t rw";
        assert_eq!(parse_mountinfo_line(line), Some((36, PathBuf::from("/mnt/a b\\c"))));
        assert_eq!(parse_mountinfo_line("x 35 98:0 / /"), None);
        assert_eq!(parse_mountinfo_line("36 35"), None);
        // A backslash not followed by three octal digits stays as it is.
        assert_eq!(parse_mountinfo_line("1 0 0:1 / /a\\9"), Some((1, PathBuf::from("/a\\9"))));
    }

    #[test]
    fn the_root_is_in_the_mount_table_of_this_process() {
        assert!(mount_id(Path::new("/")).is_some());
        assert!(mount_id(Path::new("/no/such/mount/point")).is_none());
    }
}
