//! A mount under load and under pressure: several processes writing their own files and reading
//! each other's while an older version of the same drive is mounted read-only elsewhere; and a
//! full disk, which must give ENOSPC and leave the drive whole.

use std::path::Path;
use std::process::Command;

use hyperfs_tests::{sh, MountedDrive};

/// Checks every file of a tree: its name is the first 16 hex digits of its SHA-256.
const CHECK: &str = r#"
check() { find "$1" -type f ! -name '.*' | while read -r f; do
  h=$(sha256sum < "$f" | cut -c1-16); [ "$h" = "$(basename "$f")" ] || { echo "BAD $f size $(stat -c %s "$f") hash now $(sha256sum < "$f" | cut -c1-16)"; exit 1; }; done; }
"#;

#[test]
fn writers_and_readers_in_parallel_beside_an_old_version() {
    let m = MountedDrive::new();
    sh(&m.dir, &format!("{CHECK}\nmkdir base && for i in 1 2 3 4 5; do head -c $((i * 50000)) /dev/urandom > base/.t; mv base/.t base/$(sha256sum < base/.t | cut -c1-16); done"));
    let v = m.version();
    let old = m.tmp.path().join("old");
    std::fs::create_dir(&old).expect("dir");
    m.ok(&["mount", "t", old.to_str().expect("utf-8"), "--version", &v.to_string()]);
    let before = sh(&old, "find . -type f | LC_ALL=C sort | xargs sha256sum");

    // Four writers publish files by rename; each also reads everything the others published.
    let writer = |w: usize| {
        format!(
            "{CHECK}\nmkdir -p w{w}\nfor i in $(seq 1 25); do\n  head -c $(( (RANDOM % 64 + 1) * 4096 + RANDOM )) /dev/urandom > w{w}/.t\n  mv w{w}/.t w{w}/$(sha256sum < w{w}/.t | cut -c1-16)\n  check .\ndone\n"
        )
    };
    let mut children: Vec<_> = (0..4)
        .map(|w| {
            Command::new("bash")
                .arg("-c")
                .arg(format!("set -euo pipefail\n{}", writer(w)))
                .current_dir(&m.dir)
                .spawn()
                .expect("spawn")
        })
        .collect();
    // Meanwhile the old version is read over and over and never changes.
    let reader = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{CHECK}\nfor i in $(seq 1 20); do check .; find . -type f | LC_ALL=C sort | xargs sha256sum > /dev/null; done"))
        .current_dir(&old)
        .spawn()
        .expect("spawn");
    children.push(reader);
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "a writer or reader failed");
    }
    assert_eq!(sh(&old, "find . -type f | LC_ALL=C sort | xargs sha256sum"), before, "the old version changed");
    let count = sh(&m.dir, &format!("{CHECK}\ncheck . && find . -type f | wc -l"));
    assert_eq!(count.trim(), "105");
    m.ok(&["unmount", old.to_str().expect("utf-8")]);

    // Afterwards: the drive verifies, and versions along the way read whole: those that end a
    // publishing rename (its delete of the temporary name closes the atomic batch).
    let out = m.run(&["verify", "t"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log: serde_json::Value = serde_json::from_str(&m.ok(&["log", "t", "--json"])).expect("json");
    let ends: Vec<u64> = log
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["op"] == "del" && e["path"].as_str().is_some_and(|p| p.ends_with("/.t")))
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert!(ends.len() >= 100, "{} publishing renames", ends.len());
    for &version in ends.iter().step_by(ends.len() / 6) {
        m.ok(&["mount", "t", old.to_str().expect("utf-8"), "--version", &version.to_string()]);
        sh(&old, &format!("{CHECK}\ncheck ."));
        m.ok(&["unmount", old.to_str().expect("utf-8")]);
    }
}

/// A tmpfs of a fixed size, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_enospc_and_leaves_the_drive_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).expect("dir");
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&disk).status().expect("mount");
    assert!(ok.success(), "mounting a tmpfs (needs root)");
    let _disk = SmallDisk(disk.clone());
    let data = disk.join("data");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("dir");
    let run = |args: &[&str]| hyperfs_tests::hyperfs_in(&data, args);
    let ok = |args: &[&str]| hyperfs_tests::hyperfs_in_ok(&data, args);
    ok(&["create", "--name", "t"]);
    ok(&["mount", "t", mnt.to_str().expect("utf-8")]);
    let keep = hyperfs_tests::pseudo_random(4 << 20, 1);
    std::fs::write(mnt.join("keep.bin"), &keep).expect("write a file that fits");

    // 100 MB into 64 MB: the write or the close fails with ENOSPC.
    let big = hyperfs_tests::pseudo_random(1 << 20, 2);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(mnt.join("big.bin"))?;
        for _ in 0..100 {
            std::io::Write::write_all(&mut f, &big)?;
        }
        f.sync_all()
    })();
    let err = result.expect_err("100 MB fit in 64 MB");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let _ = std::fs::remove_file(mnt.join("big.bin"));

    // What was there is intact, the drive verifies, and it takes small writes again.
    assert_eq!(std::fs::read(mnt.join("keep.bin")).expect("read"), keep);
    let out = run(&["verify", "t"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The deleted file's staged bytes are given back when the kernel releases its last handle
    // (just after close returns): the disk takes small writes again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Err(e) = std::fs::write(mnt.join("again.txt"), b"again") {
        assert!(std::time::Instant::now() < deadline, "a small write after the disk filled: {e}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // After a restart it is all still there.
    ok(&["stop"]);
    ok(&["mount", "t", mnt.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(mnt.join("keep.bin")).expect("read"), keep);
    std::fs::write(mnt.join("after.txt"), b"after").expect("a small write after the disk filled");
    assert_eq!(std::fs::read(mnt.join("after.txt")).expect("read"), b"after");
    ok(&["stop"]);
    assert!(!Path::new(&mnt).join("keep.bin").exists());
}
