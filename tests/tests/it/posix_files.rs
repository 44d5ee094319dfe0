//! Every kind of file a POSIX program makes, through a real kernel mount: FIFOs, Unix sockets,
//! device nodes and hard links made, used, kept across a remount and across `export` + `import`;
//! access times (`utimensat`, `relatime`), ctime and link counts; sticky and set-gid folders.
//! The conformance suite run by others (pjdfstest) is run on a mount at the end.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use hyperfs_tests::{c_path as c, errno_of, hyperfs_in_ok, repo_root, MountedDrive, StopNode};

fn mknod(path: &Path, mode: u32, dev: u64) {
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::mknod(c(path).as_ptr(), mode, dev) };
    assert_eq!(r, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Runs a shell command as user `nobody` (uid/gid 65534); returns whether it succeeded.
fn as_nobody(cmd: &str) -> bool {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", cmd])
        .output()
        .expect("setpriv");
    out.status.success()
}

/// Unmounts `m` and mounts its drive again on the same folder: what the drive recorded.
fn remount(m: &MountedDrive) {
    m.ok(&["unmount", m.dir.to_str().expect("utf-8")]);
    m.ok(&["mount", "t", m.dir.to_str().expect("utf-8")]);
}

/// The kinds, modes, device numbers and link counts of the special files and links made by
/// [`make_every_kind`], as `stat` shows them under `dir`.
fn kinds(dir: &Path) -> Vec<(String, &'static str, u32, u64, u64)> {
    let mut out = Vec::new();
    for name in ["fifo", "sock", "null0", "loop9", "a", "b", "sub/c"] {
        let md = fs::symlink_metadata(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ft = md.file_type();
        let kind = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        out.push((name.to_owned(), kind, md.mode() & 0o7777, md.rdev(), md.nlink()));
    }
    out
}

/// A FIFO, a socket, a character and a block device, and a file with three names.
fn make_every_kind(dir: &Path) {
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c(&dir.join("fifo")).as_ptr(), 0o640) }, 0, "mkfifo");
    drop(UnixListener::bind(dir.join("sock")).expect("bind a socket"));
    mknod(&dir.join("null0"), libc::S_IFCHR | 0o600, libc::makedev(1, 3));
    mknod(&dir.join("loop9"), libc::S_IFBLK | 0o660, libc::makedev(7, 9));
    fs::write(dir.join("a"), b"shared bytes").expect("write");
    fs::hard_link(dir.join("a"), dir.join("b")).expect("link");
    fs::create_dir(dir.join("sub")).expect("mkdir");
    fs::hard_link(dir.join("b"), dir.join("sub/c")).expect("link into a folder");
}

fn expected_kinds() -> Vec<(String, &'static str, u32, u64, u64)> {
    vec![
        ("fifo".into(), "fifo", 0o640, 0, 1),
        // A socket's mode is what bind(2) made it under the umask.
        ("sock".into(), "socket", 0o755 & !umask(), 0, 1),
        ("null0".into(), "char", 0o600, libc::makedev(1, 3), 1),
        ("loop9".into(), "block", 0o660 & !umask(), libc::makedev(7, 9), 1),
        ("a".into(), "file", 0o644 & !umask(), 0, 3),
        ("b".into(), "file", 0o644 & !umask(), 0, 3),
        ("sub/c".into(), "file", 0o644 & !umask(), 0, 3),
    ]
}

fn umask() -> u32 {
    // SAFETY: umask cannot fail; the old mask is put back at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}

#[test]
fn fifos_sockets_and_devices_are_made_used_and_kept() {
    let m = MountedDrive::new();
    make_every_kind(&m.dir);
    let mut want = expected_kinds();
    want[1].2 = fs::symlink_metadata(m.path("sock")).expect("lstat").mode() & 0o7777;
    assert_eq!(kinds(&m.dir), want);

    // A FIFO carries data between two processes.
    let fifo = m.path("fifo");
    let writer = Command::new("sh")
        .arg("-c")
        .arg(format!("printf 'through the pipe' > '{}'", fifo.display()))
        .spawn()
        .expect("spawn writer");
    let mut got = String::new();
    fs::File::open(&fifo).expect("open the fifo").read_to_string(&mut got).expect("read");
    assert!(writer.wait_with_output().expect("writer").status.success());
    assert_eq!(got, "through the pipe");

    // A socket bound in the mount accepts a connection.
    let listener = UnixListener::bind(m.path("live.sock")).expect("bind");
    let path = m.path("live.sock");
    let client = std::thread::spawn(move || {
        let mut s = UnixStream::connect(path).expect("connect");
        s.write_all(b"ping").expect("send");
    });
    let (mut conn, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("receive");
    assert_eq!(&buf, b"ping");
    client.join().expect("client");
    // An accepted connection holds the socket's name (as the kernel keeps its path).
    drop((conn, listener));
    fs::remove_file(m.path("live.sock")).expect("unlink the socket");

    // The mount is nodev: a device node on it is not opened.
    assert_eq!(errno_of(fs::File::open(m.path("null0"))), libc::EACCES, "nodev: a device is not opened");

    // Moved, chmodded, removed like files; names stay out of what JS lists.
    fs::rename(m.path("fifo"), m.path("sub/fifo2")).expect("rename a fifo");
    fs::set_permissions(m.path("sub/fifo2"), fs::Permissions::from_mode(0o600)).expect("chmod a fifo");
    assert_eq!(fs::symlink_metadata(m.path("sub/fifo2")).expect("lstat").mode() & 0o7777, 0o600);
    fs::rename(m.path("sub/fifo2"), m.path("fifo")).expect("rename back");
    fs::set_permissions(m.path("fifo"), fs::Permissions::from_mode(0o640)).expect("chmod");
    // The CLI tells each kind, and a device's number.
    let ls: Vec<serde_json::Value> = serde_json::from_str(&m.ok(&["ls", "-l", "t", "--json"])).expect("json");
    let of = |name: &str| ls.iter().find(|e| e["name"] == name).cloned().unwrap_or_else(|| panic!("{name} listed"));
    assert_eq!((of("fifo")["type"].as_str(), of("sock")["type"].as_str()), (Some("fifo"), Some("socket")), "{ls:?}");
    assert_eq!((of("null0")["type"].as_str(), of("null0")["rdev"].as_u64()), (Some("char"), Some(libc::makedev(1, 3))));
    assert_eq!(of("loop9")["type"].as_str(), Some("block"));

    // Kept across a remount.
    remount(&m);
    assert_eq!(kinds(&m.dir), want);

    // Kept across export and import (as root, which devices need).
    let out = m.tmp.path().join("exported");
    m.ok(&["export", "t", out.to_str().expect("utf-8")]);
    assert_eq!(kinds(&out), want, "export makes every kind");
    let a = fs::metadata(out.join("a")).expect("stat");
    assert_eq!(a.ino(), fs::metadata(out.join("sub/c")).expect("stat").ino(), "hard links export as hard links");
    m.ok(&["create", "--name", "u"]);
    m.ok(&["import", out.to_str().expect("utf-8"), "u"]);
    let again = m.tmp.path().join("again");
    fs::create_dir(&again).expect("dir");
    m.ok(&["mount", "u", again.to_str().expect("utf-8")]);
    assert_eq!(kinds(&again), want, "import keeps every kind");
    let (x, y) = (fs::metadata(again.join("a")).expect("stat"), fs::metadata(again.join("b")).expect("stat"));
    assert_eq!(x.ino(), y.ino(), "imported hard links are one inode");
    // A second export over the first changes nothing.
    let second = m.ok(&["export", "t", out.to_str().expect("utf-8"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(second.lines().last().expect("reply")).expect("json");
    assert_eq!((v["added"].as_u64(), v["changed"].as_u64()), (Some(0), Some(0)), "{second}");
    m.ok(&["unmount", again.to_str().expect("utf-8")]);

    // And across replication: a second node clones the drive and mounts its copy.
    let shared: serde_json::Value =
        serde_json::from_str(&m.ok(&["share", "t", "--listen", "127.0.0.1:0", "--json"])).expect("json");
    let (link, addr) = (shared["link"].as_str().expect("link"), shared["address"].as_str().expect("address"));
    let b = m.tmp.path().join("b");
    let _stop = StopNode(b.clone());
    hyperfs_in_ok(&b, &hyperfs_tests::loopback_only(&["clone", link, "--peer", addr, "--name", "copy"]));
    let replica = m.tmp.path().join("replica");
    fs::create_dir(&replica).expect("dir");
    hyperfs_in_ok(&b, &["mount", "copy", replica.to_str().expect("utf-8")]);
    let mut shown = kinds(&replica);
    // Someone else's drive shows as the mounting user's, set-id and sticky bits masked: the
    // kinds, device numbers and link counts are what travel.
    for (k, w) in shown.iter_mut().zip(&want) {
        k.2 = w.2;
    }
    assert_eq!(shown, want, "a replica keeps every kind");
    hyperfs_in_ok(&b, &["unmount", replica.to_str().expect("utf-8")]);
}

#[test]
fn hard_links_are_one_file_under_several_names() {
    let m = MountedDrive::new();
    let (a, b) = (m.path("a"), m.path("b"));
    fs::write(&a, b"first").expect("write");
    fs::hard_link(&a, &b).expect("link");
    let (ma, mb) = (fs::metadata(&a).expect("stat"), fs::metadata(&b).expect("stat"));
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2));

    // A write through one name shows through the other, now and after a remount.
    OpenOptions::new().append(true).open(&b).expect("open").write_all(b" and more").expect("write");
    assert_eq!(fs::read(&a).expect("read"), b"first and more");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(fs::metadata(&b).expect("stat").mode() & 0o777, 0o600, "one inode, one mode");

    // A link to a file still open for writing shows what was written.
    let mut open = OpenOptions::new().write(true).create_new(true).open(m.path("open")).expect("create");
    open.write_all(b"unsaved").expect("write");
    fs::hard_link(m.path("open"), m.path("open2")).expect("link an open file");
    open.write_all(b"!").expect("write on");
    drop(open);
    assert_eq!(fs::read(m.path("open2")).expect("read"), b"unsaved!");

    remount(&m);
    assert_eq!(fs::read(&b).expect("read"), b"first and more");
    let (ma, mb) = (fs::metadata(&a).expect("stat"), fs::metadata(&b).expect("stat"));
    assert_eq!((ma.ino() == mb.ino(), ma.nlink()), (true, 2), "the group survives a remount");
    assert_eq!(fs::metadata(m.path("open2")).expect("stat").nlink(), 2);

    // Renamed across folders, the names still share; unlinking one keeps the other.
    fs::create_dir(m.path("d")).expect("mkdir");
    fs::rename(&b, m.path("d/b")).expect("rename");
    fs::write(m.path("d/b"), b"rewritten").expect("write through the moved name");
    assert_eq!(fs::read(&a).expect("read"), b"rewritten");
    let ctime = fs::metadata(&a).expect("stat").ctime_nsec();
    std::thread::sleep(Duration::from_millis(20));
    fs::remove_file(m.path("d/b")).expect("unlink one name");
    let left = fs::metadata(&a).expect("stat");
    assert_eq!(left.nlink(), 1);
    assert_ne!(left.ctime_nsec(), ctime, "a lost name is a change of the file (ctime)");
    assert_eq!(fs::read(&a).expect("read"), b"rewritten");
    // A rename over a name of a group leaves the group's other names.
    fs::hard_link(&a, m.path("x")).expect("link");
    fs::write(m.path("other"), b"other").expect("write");
    fs::rename(m.path("other"), m.path("x")).expect("rename over a linked name");
    assert_eq!((fs::read(&a).expect("read"), fs::metadata(&a).expect("stat").nlink()), (b"rewritten".to_vec(), 1));

    // JS Hyperdrive reads every name as a plain file with the same bytes.
    assert_eq!(m.ok(&["cat", "t:/open2"]), "unsaved!");
    assert_eq!(m.ok(&["cat", "t:/x"]), "other");
}

#[test]
fn access_times_link_counts_and_ctime_follow_posix() {
    let m = MountedDrive::new();
    let f = m.path("f");
    fs::write(&f, b"data").expect("write");
    // An explicit atime is kept, apart from the mtime, across a remount.
    let times =
        [libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 123 }, libc::timespec { tv_sec: 1_600_000_000, tv_nsec: 0 }];
    // SAFETY: a NUL-terminated path and two timespecs that live across the call.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c(&f).as_ptr(), times.as_ptr(), 0) }, 0);
    remount(&m);
    let md = fs::metadata(&f).expect("stat");
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime()), (1_500_000_000, 123, 1_600_000_000));
    // A read moves an atime older than the mtime on (relatime), and it is recorded at a sync.
    fs::read(&f).expect("read");
    let read_at = fs::metadata(&f).expect("stat").atime();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("now").as_secs() as i64;
    assert!((now - read_at).abs() < 60, "a read moved the atime to now: {read_at} vs {now}");
    // A second read in the same day leaves it.
    fs::read(&f).expect("read");
    assert_eq!(fs::metadata(&f).expect("stat").atime(), read_at);
    m.ok(&["sync"]);
    remount(&m);
    assert_eq!(fs::metadata(&f).expect("stat").atime(), read_at, "the read's atime was recorded");

    // A folder's link count is 2 and one per sub-folder.
    fs::create_dir_all(m.path("top/a")).expect("mkdir");
    fs::create_dir(m.path("top/b")).expect("mkdir");
    fs::write(m.path("top/file"), b"").expect("write");
    assert_eq!(fs::metadata(m.path("top")).expect("stat").nlink(), 4);
    fs::remove_dir(m.path("top/a")).expect("rmdir");
    assert_eq!(fs::metadata(m.path("top")).expect("stat").nlink(), 3);

    // ctime moves on every change of the metadata; a folder's mtime and ctime on every change
    // of its names.
    let ctime = |p: &Path| {
        let md = fs::symlink_metadata(p).expect("stat");
        (md.ctime(), md.ctime_nsec())
    };
    let mtime = |p: &Path| {
        let md = fs::symlink_metadata(p).expect("stat");
        (md.mtime(), md.mtime_nsec())
    };
    let top = m.path("top");
    for (what, change) in [
        (
            "chmod",
            Box::new(|| fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod")) as Box<dyn Fn()>,
        ),
        ("chown", Box::new(|| std::os::unix::fs::chown(&f, Some(1), Some(1)).expect("chown"))),
        ("link", Box::new(|| fs::hard_link(&f, m.path("f2")).expect("link"))),
        ("rename", Box::new(|| fs::rename(m.path("f2"), m.path("f3")).expect("rename"))),
    ] {
        let before = ctime(&f);
        std::thread::sleep(Duration::from_millis(20));
        change();
        assert_ne!(ctime(&f), before, "{what} moves ctime");
    }
    for (what, change) in [
        ("create", Box::new(|| drop(fs::File::create(m.path("top/new")).expect("create"))) as Box<dyn Fn()>),
        ("unlink", Box::new(|| fs::remove_file(m.path("top/new")).expect("unlink"))),
        ("mkdir", Box::new(|| fs::create_dir(m.path("top/c")).expect("mkdir"))),
        ("rmdir", Box::new(|| fs::remove_dir(m.path("top/c")).expect("rmdir"))),
        ("rename", Box::new(|| fs::rename(m.path("top/file"), m.path("top/file2")).expect("rename"))),
        (
            "mkfifo",
            Box::new(|| {
                // SAFETY: a NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c(&m.path("top/p")).as_ptr(), 0o600) }, 0);
            }),
        ),
    ] {
        let (m0, c0) = (mtime(&top), ctime(&top));
        std::thread::sleep(Duration::from_millis(20));
        change();
        assert!(mtime(&top) > m0 && ctime(&top) > c0, "{what} moves the folder's mtime and ctime");
    }
    // Folder times are recorded by the unmount.
    let shown = (mtime(&top), ctime(&top));
    remount(&m);
    assert_eq!((mtime(&top), ctime(&top)), shown, "a folder's times survive a remount");
}

#[test]
fn sticky_and_set_gid_folders_and_set_id_bits_follow_linux() {
    let m = MountedDrive::with(&["--allow-other"]);
    fs::set_permissions(&m.dir, fs::Permissions::from_mode(0o755)).expect("chmod root");
    // A sticky folder anyone writes: only an entry's owner (or the folder's, or root) removes it.
    let tmp = m.path("tmp");
    fs::create_dir(&tmp).expect("mkdir");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).expect("chmod");
    fs::write(tmp.join("roots"), b"r").expect("write");
    assert!(!as_nobody(&format!("rm -f {}", tmp.join("roots").display())), "nobody removed root's file");
    assert!(!as_nobody(&format!("mv {} {}", tmp.join("roots").display(), tmp.join("moved").display())));
    assert!(as_nobody(&format!(
        "echo n > {0} && mv {0} {1} && rm {1}",
        tmp.join("mine").display(),
        tmp.join("m2").display()
    )));
    assert!(tmp.join("roots").exists());

    // A set-gid folder passes its group to new entries, and its bit to new folders.
    let shared = m.path("shared");
    fs::create_dir(&shared).expect("mkdir");
    std::os::unix::fs::chown(&shared, Some(0), Some(4242)).expect("chown");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2775)).expect("chmod");
    fs::write(shared.join("f"), b"").expect("write");
    fs::create_dir(shared.join("d")).expect("mkdir");
    assert_eq!(fs::metadata(shared.join("f")).expect("stat").gid(), 4242);
    let d = fs::metadata(shared.join("d")).expect("stat");
    assert_eq!((d.gid(), d.mode() & 0o2000), (4242, 0o2000));

    // chown clears set-uid and set-gid, as Linux does.
    let f = m.path("setuid");
    fs::write(&f, b"").expect("write");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).expect("chmod");
    std::os::unix::fs::chown(&f, Some(1), Some(1)).expect("chown");
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o755);

    // The errno of the other refusals.
    assert_eq!(errno_of(OpenOptions::new().write(true).create_new(true).open(&f)), libc::EEXIST);
    assert_eq!(errno_of(fs::write(m.path(&"n".repeat(256)), b"")), libc::ENAMETOOLONG);
    assert_eq!(errno_of(fs::hard_link(&tmp, m.path("dirlink"))), libc::EPERM);
    assert_eq!(errno_of(fs::remove_dir(&tmp)), libc::ENOTEMPTY);
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::mknod(c(&m.path("reg-by-mknod")).as_ptr(), libc::S_IFREG | 0o600, 0) };
    assert_eq!(r, 0, "mknod of a regular file makes an empty file");
    assert!(fs::metadata(m.path("reg-by-mknod")).expect("stat").is_file());
}

/// The pjdfstest binary the test command installs (`scripts/test`), if present.
fn pjdfstest() -> Option<PathBuf> {
    let p = std::env::var_os("PJDFSTEST").map(PathBuf::from)?;
    p.exists().then_some(p)
}

#[test]
fn the_posix_conformance_suite_finds_no_failures() {
    let Some(bin) = pjdfstest() else {
        panic!("pjdfstest is not installed: the README's test command (scripts/test) installs it and sets PJDFSTEST");
    };
    let m = MountedDrive::with(&["--allow-other"]);
    let out = Command::new(repo_root().join("scripts/posix-suite"))
        .arg(&m.dir)
        .env("PJDFSTEST", bin)
        .output()
        .expect("run scripts/posix-suite");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the conformance suite failed on the mount:\n{text}");
    assert!(text.contains(" 0 failed"), "{text}");
    // The summaries, and any case that failed once and passed when run again.
    eprintln!("{text}");
}
