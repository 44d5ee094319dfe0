//! `hyperfs import` and `export` through the real binary and node: a generated tree of over
//! 10,000 names (nested folders, empty files and folders, a 1 GiB file, symlinks, executables,
//! unicode names, odd timestamps) goes into a drive and out into another folder identical in
//! contents, modes and times; mirroring again changes nothing; changes on either side are
//! mirrored (added, changed, removed), `--dry-run` only lists them, and old versions export as
//! they were.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use hyperfs_tests::{hyperfs_in, hyperfs_in_ok, pseudo_random};
use serde_json::Value;

fn json(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&hyperfs_in_ok(dir, args)).expect("JSON output")
}

/// Every name under `root` with its type, mode, size, modification time (ns) and link target,
/// one line each, sorted: what `diff -r` does not compare.
fn listing(root: &Path) -> String {
    let out = Command::new("find")
        .arg(".")
        .args(["-printf", "%p %y %m %s %T@ %l\n"])
        .current_dir(root)
        .output()
        .expect("find");
    assert!(out.status.success());
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        // A folder's size is the local filesystem's business.
        .map(|l| {
            let f: Vec<&str> = l.splitn(6, ' ').collect();
            if f[1] == "d" {
                format!("{} d {} - {} {}", f[0], f[2], f[4], f[5])
            } else {
                l.to_owned()
            }
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

fn diff_r(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().expect("diff");
    assert!(out.status.success(), "diff -r differs:\n{}", String::from_utf8_lossy(&out.stdout));
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    let t = [
        libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos as libc::c_long },
        libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos as libc::c_long },
    ];
    // SAFETY: a valid path and two initialised timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// 100 folders of 100 files in two levels, plus the special cases.
fn generate(root: &Path, big_mib: usize) {
    for d in 0..100 {
        let dir = root.join(format!("d{:02}/sub{}", d / 10, d % 10));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100 {
            let n = d * 100 + f;
            let path = dir.join(format!("f{f:03}.txt"));
            // Sizes from empty to a few chunks; some repeat others' content (dedup).
            let len = match n % 7 {
                0 => 0,
                1 => 1,
                2..=4 => (n * 37) % 5000,
                5 => 70_000 + n,
                _ => 300 + n % 4096,
            };
            std::fs::write(&path, pseudo_random(len, (n % 1000) as u64)).expect("write");
            if n % 11 == 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
            if n % 13 == 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            }
            set_mtime(&path, 1_600_000_000 + n as i64, (n as i64 * 7919) % 1_000_000_000);
        }
    }
    let special = root.join("spécial ünïcödé ✓");
    std::fs::create_dir_all(special.join("empty folder")).expect("mkdir");
    std::fs::create_dir_all(root.join("locked")).expect("mkdir");
    std::fs::write(special.join("日本語.txt"), "こんにちは\n").expect("write");
    std::fs::write(special.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(special.join("run.sh"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    std::os::unix::fs::symlink("日本語.txt", special.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../d00/sub0/f001.txt", special.join("up")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).expect("symlink");
    set_mtime(&special.join("link"), 1_234_567_890, 5);
    // The big file, written a MiB at a time.
    let mut big = std::fs::File::create(root.join("big.bin")).expect("create");
    for i in 0..big_mib {
        std::io::Write::write_all(&mut big, &pseudo_random(1 << 20, 10_000 + i as u64)).expect("write");
    }
    drop(big);
    set_mtime(&root.join("big.bin"), 1_700_000_000, 123_456_789);
    set_mtime(&special.join("empty folder"), 1_000_000_000, 1);
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    set_mtime(&root.join("locked"), 1_111_111_111, 0);
    set_mtime(&special, 1_222_222_222, 999_999_999);
}

#[test]
fn a_large_tree_round_trips_through_import_and_export() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    generate(&src, 1024);
    let names = listing(&src).lines().count();
    assert!(names > 10_000, "{names} names");
    hyperfs_in_ok(&data, &["create", "--name", "t"]);

    let r = json(&data, &["import", src.to_str().expect("utf-8"), "t", "--json"]);
    assert_eq!(r["added"].as_u64(), Some(names as u64 - 1), "every name but the root is added: {}", r["added"]);
    assert_eq!(r["skipped"], serde_json::json!([]));
    let version = json(&data, &["info", "t", "--json"])["version"].as_u64().expect("version");
    assert_eq!(r["version"].as_u64(), Some(version));

    let r = json(&data, &["export", "t", out.to_str().expect("utf-8"), "--json"]);
    assert_eq!(r["added"].as_u64(), Some(names as u64), "the folder itself is new too");
    diff_r(&src, &out);
    assert_eq!(listing(&src), listing(&out), "modes, sizes, times and link targets");

    // Unchanged on both sides: nothing is written.
    let r = json(&data, &["import", src.to_str().expect("utf-8"), "t", "--json"]);
    assert_eq!((r["added"].as_u64(), r["changed"].as_u64(), r["removed"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(json(&data, &["info", "t", "--json"])["version"].as_u64(), Some(version), "nothing appended");
    let r = json(&data, &["export", "t", out.to_str().expect("utf-8"), "--json"]);
    assert_eq!(r["changes"], serde_json::json!([]));
    assert_eq!(listing(&src), listing(&out));

    // The drive's listing agrees with the folder's.
    let ls = json(&data, &["ls", "-R", "--json", "t"]);
    assert_eq!(ls.as_array().expect("array").len(), names - 1);
    let big = ls.as_array().expect("array").iter().find(|e| e["name"] == "big.bin").expect("big.bin listed");
    assert_eq!(big["size"].as_u64(), Some(1 << 30));
    assert_eq!(big["mode"].as_u64(), Some(0o644));
}

#[test]
fn changes_on_either_side_are_mirrored_and_dry_runs_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
    std::fs::write(src.join("a/b/keep.txt"), "keep").expect("write");
    std::fs::write(src.join("a/edit.txt"), "first").expect("write");
    std::fs::write(src.join("gone.txt"), "gone").expect("write");
    std::fs::create_dir_all(src.join("becomes-file/inner")).expect("mkdir");
    std::fs::write(src.join("becomes-file/inner/x"), "x").expect("write");
    // Larger than one export window and not whole pages: written past the page cache, then its
    // tail through it.
    let odd = (8 << 20) + 12_345;
    std::fs::write(src.join("a/odd.bin"), pseudo_random(odd, 1)).expect("write");
    hyperfs_in_ok(&data, &["create", "--name", "t"]);
    let s = src.to_str().expect("utf-8");
    let o = out.to_str().expect("utf-8");
    hyperfs_in_ok(&data, &["import", s, "t:/sub"]);
    let v1 = json(&data, &["info", "t", "--json"])["version"].as_u64().expect("version");
    hyperfs_in_ok(&data, &["export", "t:/sub", o]);
    diff_r(&src, &out);
    // Folders an export makes above its target are 0755, as `mkdir -p` makes them (the node
    // keeps its own files private with umask 077; the user's folders are not its files).
    let deep = tmp.path().join("made/by/export");
    hyperfs_in_ok(&data, &["export", "t:/sub", deep.to_str().expect("utf-8")]);
    for made in ["made", "made/by"] {
        let mode = std::fs::metadata(tmp.path().join(made)).expect("made").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{made}");
    }
    diff_r(&src, &deep);

    // Change the source: edit (same size, new time), add, remove, a folder becomes a file.
    std::fs::write(src.join("a/edit.txt"), "secnd").expect("write");
    set_mtime(&src.join("a/edit.txt"), 1_500_000_000, 0);
    std::fs::write(src.join("a/new.txt"), "new").expect("write");
    std::fs::write(src.join("a/odd.bin"), pseudo_random(odd, 2)).expect("write");
    std::fs::remove_file(src.join("gone.txt")).expect("rm");
    std::fs::remove_dir_all(src.join("becomes-file")).expect("rm");
    std::fs::write(src.join("becomes-file"), "now a file").expect("write");

    let dry = hyperfs_in_ok(&data, &["import", s, "t:/sub", "--dry-run"]);
    for line in [
        "~ /sub/a/edit.txt",
        "+ /sub/a/new.txt",
        "- /sub/gone.txt",
        "~ /sub/becomes-file",
        "- /sub/becomes-file/inner/x",
    ] {
        assert!(dry.lines().any(|l| l == line), "{line:?} in\n{dry}");
    }
    assert_eq!(json(&data, &["info", "t", "--json"])["version"].as_u64(), Some(v1), "a dry run writes nothing");

    let r = json(&data, &["import", s, "t:/sub", "--json"]);
    assert_eq!(r["added"].as_u64(), Some(1));
    assert_eq!(r["removed"].as_u64(), Some(3), "gone.txt, becomes-file/inner/x and its folder: {r}");
    assert_eq!(hyperfs_in_ok(&data, &["cat", "t:/sub/a/edit.txt"]), "secnd");
    assert_eq!(hyperfs_in_ok(&data, &["cat", "t:/sub/becomes-file"]), "now a file");

    // The export side: a dry run lists, the real one mirrors (local extras are removed).
    std::fs::write(out.join("local-extra.txt"), "not in the drive").expect("write");
    let dry = hyperfs_in_ok(&data, &["export", "t:/sub", o, "--dry-run"]);
    assert!(dry.lines().any(|l| l == "- /sub/local-extra.txt"), "{dry}");
    assert!(out.join("local-extra.txt").exists() && out.join("gone.txt").exists(), "a dry run removes nothing");
    hyperfs_in_ok(&data, &["export", "t:/sub", o]);
    diff_r(&src, &out);
    assert_eq!(listing(&src), listing(&out));

    // An old version exports as it was, by the version log names.
    let log = hyperfs_in_ok(&data, &["log", "t"]);
    assert!(log.lines().any(|l| l.starts_with(&format!("{v1}\t"))), "log names version {v1}:\n{log}");
    let old = tmp.path().join("old");
    hyperfs_in_ok(&data, &["export", "t:/sub", old.to_str().expect("utf-8"), "--version", &v1.to_string()]);
    assert_eq!(std::fs::read_to_string(old.join("a/edit.txt")).expect("read"), "first");
    assert_eq!(std::fs::read_to_string(old.join("becomes-file/inner/x")).expect("read"), "x");
    assert!(old.join("gone.txt").exists());

    // A version inside one atomic change is refused with the versions to use.
    let err = hyperfs_in(&data, &["ls", "t", "--version", &(v1 - 1).to_string()]);
    assert!(!err.status.success());
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(msg.contains("atomic change") && msg.trim().lines().count() == 1, "{msg}");

    // Bad arguments: one explaining line each.
    for (args, says) in [
        (vec!["import", "/nonexistent/dir", "t"], "nonexistent"),
        (vec!["import", s, "nosuch"], "no drive named"),
        (vec!["export", "t:/sub/a/edit.txt", o], "is a file"),
        (vec!["export", "t:/nothing/here", o], "no folder"),
    ] {
        let r = hyperfs_in(&data, &args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    diff_r(&src, &out);
}
