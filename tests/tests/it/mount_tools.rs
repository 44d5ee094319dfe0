//! Ordinary tools on a real kernel mount of a drive: each script runs once in a local directory
//! and once in the mount, and prints what a user would compare (listings with modes, sizes,
//! mtimes and checksums; tool output). The two runs must print the same, and the drive must
//! verify afterwards.

use std::path::Path;

use hyperfs_tests::{sh, MountedDrive};

/// A source tree with what trips filesystems up: nesting, an empty file and directory, a 3 MB
/// file, symlinks (one dangling), an executable, a private file, unicode names, an old mtime.
const MAKE_SRC: &str = r#"
mkdir -p src/a/b/c src/empty-dir "src/ünï cødé"
head -c 3000000 /dev/urandom > src/a/big.bin
echo hello > src/a/b/c/deep.txt
: > src/empty.txt
printf '#!/bin/sh\necho hi\n' > src/run.sh && chmod 755 src/run.sh
echo 'naïve' > "src/ünï cødé/文件.txt"
ln -s a/b/c/deep.txt src/link
ln -s ../nowhere src/a/dangling
chmod 600 src/a/b/c/deep.txt
for i in $(seq 1 40); do echo "file $i" > src/a/f$i.txt; done
# Times in the past: a copy made in the same second could otherwise look up to date to rsync.
find src -depth -exec touch -h -d '2020-05-06 07:08:09.123456789' {} +
touch -d '2001-02-03 04:05:06.123456789' src/a/f1.txt
touch -d '2002-01-01 00:00:00' src/a/b
"#;

/// `list DIR`: every entry with type, mode, size and mtime (directories without size), link
/// targets, then checksums of every file. `list_untimed DIR`: the same without times.
const LIST: &str = r#"
list() { (cd "$1" && find . -mindepth 1 \( -type d -printf '%P d %m %T@\n' \) -o \( -type l -printf '%P l %l\n' \) -o \( -type f -printf '%P f %m %s %T@\n' \) | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }
list_untimed() { (cd "$1" && find . -mindepth 1 \( -type d -printf '%P d %m\n' \) -o \( -type l -printf '%P l %l\n' \) -o \( -type f -printf '%P f %m %s\n' \) | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }
"#;

/// Runs `script` in a local directory and in the mount (with `$SRC` the source tree and
/// `list`/`list_untimed` defined) and checks both print the same.
fn same_on_mount(script: &str) -> MountedDrive {
    let m = MountedDrive::new();
    let tmp = m.tmp.path();
    sh(tmp, MAKE_SRC);
    let local = tmp.join("local");
    std::fs::create_dir(&local).expect("local dir");
    let full = format!("export SRC={}\n{LIST}\n{script}", tmp.join("src").display());
    let expected = sh(&local, &full);
    let got = sh(&m.dir, &full);
    assert!(!expected.trim().is_empty(), "the script printed nothing to compare");
    if expected != got {
        let diff = expected.lines().zip(got.lines()).find(|(a, b)| a != b);
        panic!(
            "the mount differs from a local directory; first difference: {diff:?}\nlocal:\n{expected}\nmount:\n{got}"
        );
    }
    verify(&m);
    m
}

fn verify(m: &MountedDrive) {
    let out = m.run(&["verify", "t"]);
    assert!(out.status.success(), "verify: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn cp_a_keeps_contents_modes_times_and_links() {
    same_on_mount(
        r#"
cp -a "$SRC" copy
list copy
diff -r --no-dereference "$SRC" copy && echo same
"#,
    );
}

#[test]
fn rsync_a_copies_in_and_back_out() {
    let m = same_on_mount(
        r#"
rsync -a "$SRC"/ in/
list in
rsync -a --delete in/ "$SRC"-back-$$/
diff -r --no-dereference "$SRC" "$SRC"-back-$$ && echo same
rm -rf "$SRC"-back-$$
# A second run finds nothing to do.
rsync -a --itemize-changes "$SRC"/ in/ | wc -l
"#,
    );
    assert!(m.version() > 1);
}

#[test]
fn tar_writes_and_extracts_on_the_mount() {
    same_on_mount(
        r#"
tar -C "$SRC" -cf src.tar .
mkdir out && tar -C out -xf src.tar
list out
tar -C out -cf - . | tar -tvf - | awk '{print $1, $3, $6}' | LC_ALL=C sort
"#,
    );
}

#[test]
fn git_init_add_commit_checkout() {
    same_on_mount(
        r#"
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.org GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.org
export GIT_AUTHOR_DATE='2020-01-01T00:00:00Z' GIT_COMMITTER_DATE='2020-01-01T00:00:00Z'
git init -q -b main repo && cd repo
cp -a "$SRC"/. .
git add -A && git commit -qm one
echo more >> a/f2.txt && git rm -q a/f3.txt && git mv run.sh bin.sh
git commit -qam two
git checkout -q HEAD~1
test -f a/f3.txt && test -f run.sh && ! test -e bin.sh
git checkout -q main
git log --format='%H %s'
git status --porcelain
git fsck --no-progress 2>&1
git ls-files -s
cd .. && list_untimed repo | grep -v '\.git/\|^\.git '
"#,
    );
}

#[test]
fn sqlite_with_a_rollback_journal() {
    same_on_mount(
        r#"
sqlite3 db.sqlite 'PRAGMA journal_mode=DELETE; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);'
for i in $(seq 1 20); do
  sqlite3 db.sqlite "BEGIN; INSERT INTO t(b) SELECT hex(randomblob(64)) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3); UPDATE t SET b = 'x' || b WHERE a % 7 = 0; COMMIT;"
done
sqlite3 db.sqlite 'DELETE FROM t WHERE a % 5 = 0; VACUUM;'
sqlite3 db.sqlite 'PRAGMA integrity_check; SELECT count(*), sum(a) FROM t;'
ls
"#,
    );
}

#[test]
fn make_builds_a_c_project_and_rebuilds_only_what_changed() {
    same_on_mount(
        r#"
mkdir proj && cd proj
cat > util.h <<'C'
int twice(int x);
C
cat > util.c <<'C'
#include "util.h"
int twice(int x) { return 2 * x; }
C
cat > main.c <<'C'
#include <stdio.h>
#include "util.h"
int main(void) { printf("%d\n", twice(21)); return 0; }
C
printf 'app: main.o util.o\n\tcc -o app main.o util.o\n%%.o: %%.c util.h\n\tcc -c -o $@ $<\nclean:\n\trm -f app *.o\n' > Makefile
make -s && ./app
sleep 1.1 && touch util.c
make | sed 's/^/make: /'
make | sed 's/^/again: /'
./app
make -s clean && ls
"#,
    );
}

#[test]
fn an_editor_style_save_replaces_the_file_atomically() {
    same_on_mount(
        r#"
printf 'version 1\n' > notes.txt
exec 3< notes.txt
python3 - <<'PY'
import os
fd = os.open("notes.txt.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, b"version 2\n")
os.fsync(fd)
os.close(fd)
os.rename("notes.txt.tmp", "notes.txt")
PY
cat notes.txt
cat <&3
ls
"#,
    );
}

#[test]
fn files_written_through_the_mount_are_versions_in_the_log() {
    let m = MountedDrive::new();
    let v0 = m.version();
    std::fs::write(m.path("a.txt"), b"one").expect("write");
    std::fs::write(m.path("a.txt"), b"two").expect("write");
    // Each close of a changed file is one version. (A `sync` anywhere on the machine — another
    // test's — may also record the folder's times as a version of their own, as Linux's
    // lazytime writes them at a sync: the log's versions of the file are what is exact.)
    assert!(m.version() >= v0 + 2, "each close of a changed file is a version");
    let log = m.ok(&["log", "t"]);
    assert_eq!(log.lines().filter(|l| l.contains("/a.txt")).count(), 2, "one version per close: {log}");
    assert_eq!(m.ok(&["cat", "t:/a.txt"]), "two");
    // What the CLI writes shows in the mount.
    let local = m.tmp.path().join("from-cli");
    std::fs::write(&local, b"cli").expect("write");
    m.ok(&["put", local.to_str().expect("utf-8"), "t:/cli.txt"]);
    assert_eq!(std::fs::read(m.path("cli.txt")).expect("read"), b"cli");
    let drives = m.ok(&["drives"]);
    assert!(drives.contains(m.dir.to_str().expect("utf-8")), "drives lists the mount: {drives}");
}

#[test]
fn a_past_version_mounts_read_only() {
    let m = MountedDrive::new();
    std::fs::write(m.path("f"), b"first").expect("write");
    let v = m.version();
    std::fs::write(m.path("f"), b"second").expect("write");
    let old = m.tmp.path().join("old");
    std::fs::create_dir(&old).expect("dir");
    let out = m.ok(&["mount", "t", old.to_str().expect("utf-8"), "--version", &v.to_string()]);
    assert!(out.contains("read-only"), "{out}");
    assert_eq!(std::fs::read(old.join("f")).expect("read"), b"first");
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"second");
    let err = std::fs::write(old.join("f"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::create_dir(old.join("d")).expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // A busy mount is not pulled from under its users unless asked.
    let open = std::fs::File::open(old.join("f")).expect("open");
    let busy = m.run(&["unmount", old.to_str().expect("utf-8")]);
    assert!(!busy.status.success() && String::from_utf8_lossy(&busy.stderr).contains("busy"));
    m.ok(&["unmount", "--lazy", old.to_str().expect("utf-8")]);
    drop(open);
    assert!(!hyperfs_tests::is_mounted(&old));
    // --read-only on a drive this node could write.
    m.ok(&["mount", "t", old.to_str().expect("utf-8"), "--read-only"]);
    assert_eq!(std::fs::read(old.join("f")).expect("read"), b"second");
    let err = std::fs::write(old.join("g"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    m.ok(&["unmount", old.to_str().expect("utf-8")]);
    let missing = m.run(&["mount", "t", old.to_str().expect("utf-8"), "--version", "999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no version 999"));
}

#[test]
fn mount_refuses_bad_mount_points_with_one_line() {
    let m = MountedDrive::new();
    let busy = m.tmp.path().join("busy");
    std::fs::create_dir(&busy).expect("dir");
    std::fs::write(busy.join("x"), b"x").expect("write");
    let empty = m.tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("dir");
    for (args, says) in [
        (vec!["mount", "t", busy.to_str().expect("utf-8")], "not empty"),
        (vec!["mount", "t", m.dir.to_str().expect("utf-8")], "already mounted"),
        (vec!["mount", "nope", empty.to_str().expect("utf-8")], "no drive named"),
        (vec!["mount", "t", m.tmp.path().join("x").to_str().expect("utf-8")], "No such file"),
        (vec!["unmount", busy.to_str().expect("utf-8")], "nothing is mounted"),
    ] {
        let out = m.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_killed_node_leaves_no_dead_mount() {
    let m = MountedDrive::new();
    std::fs::write(m.path("kept.txt"), b"kept").expect("write");
    let pid: i32 = std::fs::read_to_string(m.data.join("node.pid")).expect("pid").trim().parse().expect("pid");
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // A killed process ends only once its threads leave the kernel: one in an fsync behind the
    // rest of the suite's writes on this disk can hold it there for tens of seconds.
    if let Err(e) = hyperfs_tests::wait_for_exit(pid, std::time::Duration::from_secs(120)) {
        panic!("the killed node did not end: {e}");
    }
    // The node's mount guard sees the node's end of their pipe close and unmounts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while hyperfs_tests::is_mounted(&m.dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if hyperfs_tests::is_mounted(&m.dir) {
        let helpers = std::process::Command::new("pgrep").args(["-af", "mount-guard"]).output().expect("pgrep");
        panic!("the mount outlived its node by 30 s; mount guards:\n{}", String::from_utf8_lossy(&helpers.stdout));
    }
    // The next command starts a node; the drive is whole and mounts again.
    m.ok(&["mount", "t", m.dir.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(m.path("kept.txt")).expect("read"), b"kept");
    verify(&m);
}

#[test]
fn unmount_clears_a_dead_mount() {
    let m = MountedDrive::new();
    // Kill the node and the guard that would unmount after it: the kernel keeps a dead mount.
    let watcher = format!("mount-guard {}", m.dir.display());
    let _ = std::process::Command::new("pkill").args(["-KILL", "-f", &watcher]).status();
    let pid: i32 = std::fs::read_to_string(m.data.join("node.pid")).expect("pid").trim().parse().expect("pid");
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(hyperfs_tests::is_mounted(&m.dir), "no dead mount was left to clear");
    let err = std::fs::metadata(&m.dir).expect_err("a dead mount");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    m.ok(&["unmount", m.dir.to_str().expect("utf-8")]);
    assert!(!hyperfs_tests::is_mounted(&m.dir));
    assert!(Path::new(&m.dir).is_dir());
}
