//! The project's POSIX behaviour suite, through a real kernel mount: permissions and ownership
//! (checked by the kernel against the modes, for a caller that is not root), rename cases,
//! unlink while open, truncate and extend, O_APPEND, sparse files, timestamps, symlinks, statfs,
//! and the errno of every refused operation.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use hyperfs_tests::{c_path as c, errno_of, MountedDrive};

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (c(from), c(to));
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Runs a shell command as user `nobody` (uid/gid 65534); returns its exit status and stderr.
fn as_nobody(cmd: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", cmd])
        .output()
        .expect("setpriv");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn permissions_and_ownership_are_checked_like_a_local_disk() {
    // Other users reach a mount only when it lets them in.
    let m = MountedDrive::with(&["--allow-other"]);
    fs::set_permissions(&m.dir, fs::Permissions::from_mode(0o755)).expect("chmod root");
    fs::write(m.path("secret"), b"s").expect("write");
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(m.path("public"), b"p").expect("write");
    fs::set_permissions(m.path("public"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let secret = m.path("secret");
    let public = m.path("public");

    let (ok, err) = as_nobody(&format!("cat {}", secret.display()));
    assert!(!ok && err.contains("Permission denied"), "nobody read a 0600 root file: {err}");
    let (ok, err) = as_nobody(&format!("cat {}", public.display()));
    assert!(ok, "nobody cannot read a 0644 file: {err}");
    let (ok, err) = as_nobody(&format!("echo x >> {}", public.display()));
    assert!(!ok && err.contains("Permission denied"), "nobody wrote a 0644 root file: {err}");
    let (ok, _) = as_nobody(&format!("touch {}", m.path("new-by-nobody").display()));
    assert!(!ok, "nobody created a file in a 0755 root directory");

    // A directory given to nobody: they create there, own what they create, and cannot chown.
    fs::create_dir(m.path("shared")).expect("mkdir");
    std::os::unix::fs::chown(m.path("shared"), Some(65534), Some(65534)).expect("chown");
    let mine = m.path("shared/mine");
    let (ok, err) = as_nobody(&format!("echo hi > {} && chmod 640 {}", mine.display(), mine.display()));
    assert!(ok, "{err}");
    let md = fs::metadata(&mine).expect("stat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (65534, 65534, 0o640));
    let (ok, _) = as_nobody(&format!("chown 0 {}", mine.display()));
    assert!(!ok, "nobody gave a file to root");

    // Root may chown; the owner survives a remount.
    std::os::unix::fs::chown(&public, Some(1234), Some(5678)).expect("chown");
    m.ok(&["unmount", m.dir.to_str().expect("utf-8")]);
    m.ok(&["mount", "t", m.dir.to_str().expect("utf-8")]);
    let md = fs::metadata(&public).expect("stat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1234, 5678, 0o644));
    assert_eq!(fs::metadata(&secret).expect("stat").mode() & 0o777, 0o600);
}

#[test]
fn rename_cases() {
    let m = MountedDrive::new();
    let p = |s: &str| m.path(s);
    fs::write(p("a"), b"A").expect("write");
    fs::write(p("b"), b"B").expect("write");
    // Replacing: a reader of the old file keeps reading it.
    let mut old = fs::File::open(p("b")).expect("open");
    fs::rename(p("a"), p("b")).expect("rename over");
    assert_eq!(fs::read(p("b")).expect("read"), b"A");
    assert!(!p("a").exists());
    let mut s = String::new();
    old.read_to_string(&mut s).expect("read old");
    assert_eq!(s, "B");

    fs::create_dir_all(p("d/sub")).expect("mkdir");
    fs::write(p("d/sub/f"), b"f").expect("write");
    fs::create_dir(p("e")).expect("mkdir");
    fs::write(p("e/g"), b"g").expect("write");
    fs::create_dir(p("empty")).expect("mkdir");
    assert_eq!(errno_of(fs::rename(p("b"), p("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(p("d"), p("b"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::rename(p("d"), p("e"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::rename(p("d"), p("d/sub/inside"))), libc::EINVAL);
    assert_eq!(errno_of(fs::rename(p("missing"), p("x"))), libc::ENOENT);
    assert_eq!(renameat2(&p("b"), &p("e/g"), libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(renameat2(&p("b"), &p("e/g"), libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(p("b")).expect("read"), b"g");
    assert_eq!(fs::read(p("e/g")).expect("read"), b"A");

    // A directory with everything in it, over an empty one; an open file inside moves along.
    let mut inside = OpenOptions::new().append(true).open(p("d/sub/f")).expect("open");
    fs::rename(p("d"), p("empty")).expect("rename dir");
    inside.write_all(b"+").expect("write");
    drop(inside);
    assert_eq!(fs::read(p("empty/sub/f")).expect("read"), b"f+");
    assert!(!p("d").exists());
    let mut names: Vec<String> = fs::read_dir(&m.dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["b", "e", "empty"]);
}

#[test]
fn unlink_while_open_truncate_append_and_sparse_files() {
    let m = MountedDrive::new();
    let f = m.path("f");
    fs::write(&f, b"0123456789").expect("write");
    let mut reader = fs::File::open(&f).expect("open");
    fs::remove_file(&f).expect("unlink");
    assert!(!f.exists());
    let mut s = String::new();
    reader.read_to_string(&mut s).expect("read unlinked");
    assert_eq!(s, "0123456789");
    assert_eq!(reader.metadata().expect("fstat").nlink(), 0);

    // Truncate down, extend with zeros, write past the end.
    fs::write(&f, b"0123456789").expect("write");
    let file = OpenOptions::new().read(true).write(true).open(&f).expect("open");
    file.set_len(4).expect("truncate");
    file.set_len(8).expect("extend");
    drop(file);
    assert_eq!(fs::read(&f).expect("read"), b"0123\0\0\0\0");
    let mut file = OpenOptions::new().write(true).open(&f).expect("open");
    file.seek(SeekFrom::Start(3 << 20)).expect("seek");
    file.write_all(b"tail").expect("write past end");
    drop(file);
    let data = fs::read(&f).expect("read");
    assert_eq!(data.len(), (3 << 20) + 4);
    assert!(data[8..3 << 20].iter().all(|&b| b == 0), "a hole reads as zeros");
    assert_eq!(&data[3 << 20..], b"tail");

    // O_TRUNC and O_APPEND from two descriptors.
    fs::write(&f, b"x").expect("truncating write");
    let mut a = OpenOptions::new().append(true).open(&f).expect("open");
    let mut b = OpenOptions::new().append(true).open(&f).expect("open");
    a.write_all(b"a").expect("write");
    b.write_all(b"b").expect("write");
    a.write_all(b"a").expect("write");
    drop((a, b));
    assert_eq!(fs::read(&f).expect("read"), b"xaba");
    // O_EXCL on an existing file.
    let e = OpenOptions::new().write(true).create_new(true).open(&f);
    assert_eq!(errno_of(e), libc::EEXIST);
}

#[test]
fn a_chmod_right_after_close_is_kept() {
    // rsync's way: write a file made 0600, close it, set its times at once, then chmod it. The
    // kernel sends the release of the closed file without waiting for it, so setting the times
    // can be answered while the release is; the release then kept the changed state unrecorded,
    // and the chmod changed only that state: the drive kept 0600.
    let m = MountedDrive::new();
    let times = [libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 5 }; 2];
    for i in 0..1000 {
        let p = m.path(&format!("f{i}"));
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).expect("create");
        f.write_all(b"data").expect("write");
        drop(f);
        // SAFETY: a NUL-terminated path and two timespecs that live across the call.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c(&p).as_ptr(), times.as_ptr(), 0) }, 0);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    // What the drive recorded, past the kernel's attribute cache: a fresh mount of it.
    let again = m.tmp.path().join("again");
    fs::create_dir(&again).expect("dir");
    m.ok(&["mount", "t", again.to_str().expect("utf-8"), "--read-only"]);
    for i in 0..1000 {
        let meta = fs::metadata(again.join(format!("f{i}"))).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "f{i} lost its chmod");
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 5), "f{i} lost its times");
    }
    m.ok(&["unmount", again.to_str().expect("utf-8")]);
}

#[test]
fn timestamps_are_kept_to_the_nanosecond_and_writes_move_them() {
    let m = MountedDrive::new();
    let f = m.path("t");
    fs::write(&f, b"x").expect("write");
    let cf = c(&f);
    let times = [
        libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 0 },
        libc::timespec { tv_sec: 1_234_567_890, tv_nsec: 987_654_321 },
    ];
    // SAFETY: a NUL-terminated path and two timespecs that live across the call.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cf.as_ptr(), times.as_ptr(), 0) }, 0);
    let md = fs::metadata(&f).expect("stat");
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 987_654_321));
    let before = md.ctime();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(&f, b"y").expect("write");
    let md = fs::metadata(&f).expect("stat");
    assert!(md.mtime() > 1_234_567_890 && md.ctime() > before, "a write moves mtime and ctime");
    // Directories keep the times they are given.
    fs::create_dir(m.path("d")).expect("mkdir");
    let cd = c(&m.path("d"));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cd.as_ptr(), times.as_ptr(), 0) }, 0);
    assert_eq!(fs::metadata(m.path("d")).expect("stat").mtime(), 1_234_567_890);
}

#[test]
fn symlinks_and_statfs() {
    let m = MountedDrive::new();
    fs::write(m.path("target"), b"T").expect("write");
    std::os::unix::fs::symlink("target", m.path("link")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", m.path("dangling")).expect("symlink");
    assert_eq!(fs::read_link(m.path("link")).expect("readlink"), Path::new("target"));
    assert_eq!(fs::read(m.path("link")).expect("read through"), b"T");
    assert!(fs::symlink_metadata(m.path("link")).expect("lstat").file_type().is_symlink());
    assert_eq!(fs::symlink_metadata(m.path("link")).expect("lstat").len(), 6);
    assert_eq!(errno_of(fs::read(m.path("dangling"))), libc::ENOENT);
    assert_eq!(errno_of(std::os::unix::fs::symlink("x", m.path("link"))), libc::EEXIST);

    let cm = c(&m.dir);
    // SAFETY: statvfs is plain data; the call writes into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid statvfs.
    assert_eq!(unsafe { libc::statvfs(cm.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_blocks > 0 && st.f_bavail > 0, "statfs shows the node's disk");
}

#[test]
fn refused_operations_give_their_errno() {
    let m = MountedDrive::new();
    let p = |s: &str| m.path(s);
    fs::write(p("f"), b"f").expect("write");
    fs::create_dir(p("d")).expect("mkdir");
    fs::write(p("d/x"), b"x").expect("write");
    assert_eq!(errno_of(fs::hard_link(p("d"), p("hard"))), libc::EPERM, "a folder takes no hard link");
    assert_eq!(errno_of(fs::hard_link(p("f"), p("d"))), libc::EEXIST, "link over a name");
    assert_eq!(errno_of(fs::create_dir(p("d"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(p("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(p("f"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(p("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::read(p("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::write(p(&"n".repeat(256)), b"")), libc::ENAMETOOLONG);
    assert_eq!(errno_of(fs::write(p("f/under-a-file"), b"")), libc::ENOTDIR);
    assert_eq!(errno_of(OpenOptions::new().write(true).custom_flags(libc::O_DIRECTORY).open(p("d"))), libc::EISDIR);
    // Nothing refused left a trace.
    let mut names: Vec<String> = fs::read_dir(&m.dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["d", "f"]);
}

/// Drops the kernel's cached names and inodes (of every file system), so the next `ls -l` asks
/// the mount for its listing and each entry again.
fn drop_cached_names() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "2\n").expect("drop caches (tests run as root)");
}

#[test]
fn listings_show_the_same_attributes_whether_or_not_they_carry_them() {
    let m = MountedDrive::new();
    fs::create_dir(m.path("d")).expect("mkdir");
    for (i, mode) in [0o644, 0o600, 0o755].into_iter().enumerate() {
        let p = m.path(&format!("d/f{i}"));
        fs::write(&p, vec![b'x'; 1000 * i + 1]).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::symlink("f0", m.path("d/link")).expect("symlink");
    fs::create_dir(m.path("d/sub")).expect("mkdir");
    let listing = || {
        drop_cached_names();
        hyperfs_tests::sh(&m.dir, "ls -ln --time-style=+%s.%N d")
    };
    // The first listing goes without attributes and `ls` looks each entry up; the mount
    // remembers that, and the next listings carry every entry's attributes instead.
    let (first, second, third) = (listing(), listing(), listing());
    assert_eq!(first, second);
    assert_eq!(second, third);
    let shown: Vec<(String, String, String)> = second
        .lines()
        .skip(1) // "total"
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[4].to_owned(), f[6..].join(" "))
        })
        .collect();
    let want = [
        ("-rw-r--r--", "1", "f0"),
        ("-rw-------", "1001", "f1"),
        ("-rwxr-xr-x", "2001", "f2"),
        ("lrwxrwxrwx", "2", "link -> f0"),
        ("drwxr-xr-x", "4096", "sub"),
    ];
    assert_eq!(shown, want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())), "{second}");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    names
}

/// `telldir`/`seekdir` through libc: the names read after a position, twice from the same one.
fn names_after_seek(dir: &Path, skip: usize, take: usize) -> (Vec<String>, Vec<String>) {
    let path = c(dir);
    // SAFETY: a NUL-terminated path; the stream is used only here and closed at the end.
    let d = unsafe { libc::opendir(path.as_ptr()) };
    assert!(!d.is_null(), "opendir");
    let read = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                // SAFETY: `d` is an open stream; the entry is read before the next call.
                let e = unsafe { libc::readdir(d) };
                assert!(!e.is_null(), "the listing ended early");
                // SAFETY: d_name of a returned entry is NUL-terminated.
                unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }.to_string_lossy().into_owned()
            })
            .collect()
    };
    read(skip);
    // SAFETY: `d` is an open stream.
    let at = unsafe { libc::telldir(d) };
    let first = read(take);
    // SAFETY: `at` came from telldir on the same stream.
    unsafe { libc::seekdir(d, at) };
    let again = read(take);
    // SAFETY: `d` is open and not used after.
    unsafe { libc::closedir(d) };
    (first, again)
}

#[test]
fn listings_hold_every_name_once_and_follow_every_change() {
    let m = MountedDrive::new();
    // More names than one getdents call takes (glibc reads 32 KiB at a time): the kernel asks
    // again from offsets the mount handed out.
    fs::create_dir(m.path("many")).expect("mkdir");
    let mut expected: Vec<String> = (0..3000).map(|i| format!("a-rather-long-file-name-{i:05}")).collect();
    for n in &expected {
        fs::File::create(m.path(&format!("many/{n}"))).expect("create");
    }
    expected.sort();
    assert_eq!(names_in(&m.path("many")), expected, "first listing");
    assert_eq!(names_in(&m.path("many")), expected, "the listing again (the kernel may keep it)");
    drop_cached_names();
    assert_eq!(names_in(&m.path("many")), expected, "after the kernel dropped its caches");
    let (first, again) = names_after_seek(&m.path("many"), 2000, 5);
    assert_eq!(first, again, "seekdir back to a telldir position");

    // Changes through the mount show in the next listing, also of a listing the kernel kept.
    fs::write(m.path("many/new"), b"n").expect("write");
    fs::remove_file(m.path(&format!("many/{}", expected[7]))).expect("unlink");
    fs::rename(m.path(&format!("many/{}", expected[8])), m.path("many/renamed")).expect("rename");
    fs::create_dir(m.path("many/sub")).expect("mkdir");
    let mut now: Vec<String> = expected.iter().filter(|n| **n != expected[7] && **n != expected[8]).cloned().collect();
    now.extend(["new".to_string(), "renamed".to_string(), "sub".to_string()]);
    now.sort();
    assert_eq!(names_in(&m.path("many")), now, "after changes through the mount");

    // A listing read part-way while the folder changes: every name that stayed shows once.
    let mut partial = fs::read_dir(m.path("many")).expect("read_dir");
    let mut seen: Vec<String> =
        partial.by_ref().take(100).map(|e| e.expect("entry").file_name().into_string().expect("utf-8")).collect();
    fs::write(m.path("many/during"), b"d").expect("write");
    fs::remove_file(m.path("many/new")).expect("unlink");
    seen.extend(partial.map(|e| e.expect("entry").file_name().into_string().expect("utf-8")));
    for n in now.iter().filter(|n| *n != "new") {
        assert_eq!(seen.iter().filter(|s| *s == n).count(), 1, "{n} during a change");
    }

    // Changes from outside the mount (the command line, on the same node) show too, soon, also
    // in a listing the kernel kept.
    let listed = names_in(&m.path("many"));
    assert!(
        listed.iter().any(|n| n == "during") && !listed.iter().any(|n| n == "new"),
        "after the change during a listing"
    );
    assert_eq!(names_in(&m.path("many")), listed);
    let src = m.tmp.path().join("from-cli.txt");
    fs::write(&src, b"cli").expect("write");
    m.ok(&["put", src.to_str().expect("utf-8"), &format!("{}:/many/from-cli.txt", m.name)]);
    m.ok(&["rm", &format!("{}:/many/renamed", m.name)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let names = names_in(&m.path("many"));
        let shown = names.iter().any(|n| n == "from-cli.txt") && !names.iter().any(|n| n == "renamed");
        if shown {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a change from the command line never showed in the listing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(fs::read(m.path("many/from-cli.txt")).expect("read"), b"cli");
}
