//! Storage that gives space back, through the command line and a real store: a removed file's
//! history pruned and collected, a drive removed and its blocks collected while another drive
//! keeps the blocks they share.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hyperfs_tests::{hyperfs_in, hyperfs_in_ok, hyperfs_json, pseudo_random, StopNode};

/// Bytes a directory takes on disk (allocated blocks, as `du` counts them).
fn disk_use(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let md = entry.metadata().expect("metadata");
        total += if md.is_dir() { disk_use(&entry.path()) } else { md.blocks() * 512 };
    }
    total
}

/// A file of `mib` MiB of pseudo-random bytes (incompressible), written a MiB at a time.
fn random_file(path: &Path, mib: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for i in 0..mib {
        f.write_all(&pseudo_random(1 << 20, seed * 10_000 + i)).expect("write");
    }
    f.flush().expect("flush");
}

const MIB: u64 = 1 << 20;

#[test]
fn a_removed_file_pruned_and_collected_gives_its_space_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let _stop = StopNode(dir.clone());
    hyperfs_in_ok(&dir, &["create", "--name", "t"]);
    let keep = tmp.path().join("keep.bin");
    random_file(&keep, 3, 1);
    std::fs::write(tmp.path().join("note.txt"), b"a note that stays").expect("write");
    hyperfs_in_ok(&dir, &["put", keep.to_str().expect("utf-8"), "t:/keep.bin"]);
    hyperfs_in_ok(&dir, &["put", tmp.path().join("note.txt").to_str().expect("utf-8"), "t:/note.txt"]);
    hyperfs_in_ok(&dir, &["stop"]);
    let before = disk_use(&dir);

    let big = tmp.path().join("big.bin");
    random_file(&big, 256, 2);
    hyperfs_in_ok(&dir, &["put", big.to_str().expect("utf-8"), "t:/big.bin"]);
    std::fs::remove_file(&big).expect("rm");
    let on_disk =
        |dir: &Path| hyperfs_json(dir, &["info", "t", "--json"])["bytesOnDisk"].as_u64().expect("bytesOnDisk");
    assert!(on_disk(&dir) >= 259 * MIB, "random bytes are stored as they are");
    hyperfs_in_ok(&dir, &["rm", "t:/big.bin"]);
    // Removing the name alone frees nothing: older versions still hold the file.
    let first = hyperfs_json(&dir, &["gc", "--json"]);
    assert_eq!(first["blocksRemoved"], 0, "{first}");

    let none = hyperfs_json(&dir, &["prune", "t", "--keep-within", "1h", "--dry-run", "--json"]);
    assert_eq!(none["bytesCleared"], 0, "every version was made within the hour: {none}");
    assert!(!hyperfs_in(&dir, &["prune", "t"]).status.success(), "a prune says what it keeps");
    let dry = hyperfs_json(&dir, &["prune", "t", "--keep-last", "1", "--dry-run", "--json"]);
    assert!(dry["bytesCleared"].as_u64().expect("bytes") >= 256 * MIB, "{dry}");
    let pruned = hyperfs_json(&dir, &["prune", "t", "--keep-last", "1", "--json"]);
    assert_eq!(pruned["bytesCleared"], dry["bytesCleared"], "the dry run told what goes: {pruned}");
    // 256 MiB of garbage is past the node's threshold: a collection runs in the background.
    let start = std::time::Instant::now();
    loop {
        let du = hyperfs_json(&dir, &["du", "--json"]);
        if du["blocks"].as_u64().expect("blocks") < 8 * MIB && du["blockLog"].as_u64().expect("log") < 80 * MIB {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "no collection in the background: {du}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The drive verifies, its other files read back, and a second collection finds nothing.
    assert!(hyperfs_in_ok(&dir, &["verify", "t"]).contains("verifies"));
    let got = hyperfs_in(&dir, &["cat", "t:/keep.bin"]);
    assert!(got.status.success() && got.stdout == std::fs::read(&keep).expect("read"), "keep.bin reads back");
    assert_eq!(hyperfs_in_ok(&dir, &["cat", "t:/note.txt"]), "a note that stays");
    assert_eq!(hyperfs_json(&dir, &["gc", "--json"])["blocksRemoved"], 0);
    assert!(on_disk(&dir) < 4 * MIB, "the drive holds only its current files");
    // A version whose contents were pruned says so.
    let log = hyperfs_json(&dir, &["log", "t", "--json"]);
    let put =
        log.as_array().expect("log").iter().find(|c| c["path"] == "/big.bin" && c["op"] == "put").expect("the put");
    let v = put["version"].as_u64().expect("version").to_string();
    let old = hyperfs_in(&dir, &["cat", "t:/big.bin", "--version", &v]);
    let err = String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success() && err.contains("hyperfs prune"), "{err}");
    let du = hyperfs_json(&dir, &["du", "t", "--json"]);
    let t = &du["drives"][0];
    assert!(t["own"] == true && t["bytes"].as_u64().expect("bytes") < 4 * MIB, "{du}");

    hyperfs_in_ok(&dir, &["stop"]);
    let after = disk_use(&dir);
    assert!(after < before + 32 * MIB, "the data directory is back within 32 MiB: {before} → {after}");
    // And the store opens again with all of it.
    assert!(hyperfs_in_ok(&dir, &["verify", "t"]).contains("verifies"));
}

#[test]
fn a_removed_drive_goes_and_what_it_shared_with_another_stays() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let _stop = StopNode(dir.clone());
    for name in ["a", "b"] {
        hyperfs_in_ok(&dir, &["create", "--name", name]);
    }
    let (shared, own) = (tmp.path().join("shared.bin"), tmp.path().join("own.bin"));
    random_file(&shared, 8, 3);
    random_file(&own, 4, 4);
    let s = shared.to_str().expect("utf-8");
    hyperfs_in_ok(&dir, &["put", s, "a:/shared.bin"]);
    hyperfs_in_ok(&dir, &["put", own.to_str().expect("utf-8"), "a:/own.bin"]);
    hyperfs_in_ok(&dir, &["put", s, "b:/shared.bin"]);

    // du tells what the two drives share (stored once).
    let du = hyperfs_json(&dir, &["du", "--json"]);
    for d in du["drives"].as_array().expect("drives") {
        let shared = d["sharedBytes"].as_u64().expect("sharedBytes");
        assert!((8 * MIB..9 * MIB).contains(&shared), "{du}");
    }
    // A drive of yours goes only when asked twice: its secret key goes with it.
    let refused = hyperfs_in(&dir, &["drives", "rm", "a"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"), "the refusal says how");
    assert!(hyperfs_in_ok(&dir, &["drives"]).lines().any(|l| l.starts_with("a\t")), "still there");
    let removed = hyperfs_json(&dir, &["drives", "rm", "a", "--yes", "--json"]);
    assert_eq!((removed["name"].as_str(), removed["own"].as_bool()), (Some("a"), Some(true)));
    assert!(!hyperfs_in_ok(&dir, &["drives"]).lines().any(|l| l.starts_with("a\t")), "gone from the list");
    assert!(!hyperfs_in(&dir, &["ls", "a"]).status.success(), "and from the node");

    let gc = hyperfs_json(&dir, &["gc", "--json"]);
    let bytes = gc["bytesRemoved"].as_u64().expect("bytes");
    assert!((4 * MIB..5 * MIB).contains(&bytes), "only what a alone held goes: {gc}");
    let got = hyperfs_in(&dir, &["cat", "b:/shared.bin"]);
    assert!(got.status.success() && got.stdout == std::fs::read(&shared).expect("read"), "b keeps the shared file");
    assert!(hyperfs_in_ok(&dir, &["verify", "b"]).contains("verifies"));

    // The removed drive's name never makes its key again: a new history under it would fork
    // the one its readers hold.
    let again = hyperfs_in(&dir, &["create", "--name", "a"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("was removed"));
}

/// B mounts A's drive by key with a 64 MiB cache and reads a 256 MiB file whole, byte-exact:
/// B's data directory stays under 96 MiB throughout (sampled while the read runs), and a second
/// read is served from A again where blocks were evicted.
#[test]
fn a_bounded_cache_reads_a_file_four_times_its_size_and_stays_bounded() {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (StopNode(a.clone()), StopNode(b.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let file = tmp.path().join("big.bin");
    random_file(&file, 256, 5);
    hyperfs_in_ok(&a, &["put", file.to_str().expect("utf-8"), "src:/big.bin"]);
    let shared = hyperfs_json(&a, &["share", "src", "--listen", "127.0.0.1:0", "--json"]);
    let (link, from_a) = (shared["link"].as_str().expect("link"), shared["address"].as_str().expect("address"));

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let args = ["mount", link, mnt.to_str().expect("utf-8"), "--peer", from_a, "--listen", "127.0.0.1:0"];
    hyperfs_in_ok(&b, &[&args[..], &["--cache-size", "64MiB"]].concat());
    let most = Arc::new(AtomicU64::new(0));
    let reading = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (most, reading, b) = (most.clone(), reading.clone(), b.clone());
        std::thread::spawn(move || {
            while reading.load(Ordering::SeqCst) {
                most.fetch_max(disk_use(&b), Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let read_all = || {
        let mut f = std::fs::File::open(mnt.join("big.bin")).expect("open");
        let mut want = std::fs::File::open(&file).expect("open the original");
        let (mut got_buf, mut want_buf) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let mut total = 0u64;
        loop {
            let n = f.read(&mut got_buf).expect("read through the mount");
            if n == 0 {
                break;
            }
            want.read_exact(&mut want_buf[..n]).expect("the original");
            assert!(got_buf[..n] == want_buf[..n], "bytes {total}..+{n} differ");
            total += n as u64;
        }
        total
    };
    assert_eq!(read_all(), 256 * MIB, "the whole file reads back");
    let first = hyperfs_json(&b, &["peers", "--json"])[0]["bytesDown"].as_u64().expect("bytes down");
    // The kernel's page cache would answer a second read without asking the mount.
    std::process::Command::new("sh").args(["-c", "echo 1 > /proc/sys/vm/drop_caches"]).status().expect("drop caches");
    assert_eq!(read_all(), 256 * MIB, "and again");
    reading.store(false, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let most = most.load(Ordering::SeqCst);
    assert!(most < 96 * MIB, "B's data directory reached {most} bytes");
    let second = hyperfs_json(&b, &["peers", "--json"])[0]["bytesDown"].as_u64().expect("bytes down");
    assert!(second - first >= 128 * MIB, "evicted blocks came from A again: {first} then {second}");
    let du = hyperfs_json(&b, &["du", "--json"]);
    let cache = &du["cache"];
    assert!(cache["limit"] == 64 * MIB && cache["used"].as_u64().expect("used") <= 64 * MIB, "{du}");
    eprintln!("a 256 MiB file read twice through a 64 MiB cache: data directory at most {most} bytes");
    hyperfs_in_ok(&b, &["unmount", mnt.to_str().expect("utf-8")]);
}

/// A pruned version of an own drive reads back from a peer that still holds its contents: A
/// prunes and collects the old file; B, which cloned the drive before, gives the blocks (checked
/// against A's own tree) and `cat` of the old version is byte-exact, while A's store stays
/// small. With B gone, the read says what happened.
#[test]
fn a_pruned_version_reads_back_from_a_peer_that_holds_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (StopNode(a.clone()), StopNode(b.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "t"]);
    let (old, new) = (tmp.path().join("old.bin"), tmp.path().join("new.bin"));
    random_file(&old, 16, 21);
    random_file(&new, 2, 22);
    hyperfs_in_ok(&a, &["put", old.to_str().expect("utf-8"), "t:/f.bin"]);
    let shared =
        hyperfs_json(&a, &["share", "t", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"]);
    let (link, from_a) = (shared["link"].as_str().expect("link"), shared["address"].as_str().expect("address"));
    hyperfs_in_ok(
        &b,
        &["clone", link, "--peer", from_a, "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"],
    );
    let v = hyperfs_json(&a, &["info", "t", "--json"])["version"].as_u64().expect("version").to_string();
    hyperfs_in_ok(&a, &["put", new.to_str().expect("utf-8"), "t:/f.bin"]);
    let pruned = hyperfs_json(&a, &["prune", "t", "--keep-last", "1", "--json"]);
    assert!(pruned["bytesCleared"].as_u64().expect("bytes") >= 16 * MIB, "{pruned}");
    hyperfs_in_ok(&a, &["gc"]);
    let own = hyperfs_json(&a, &["du", "t", "--json"])["drives"][0]["bytes"].as_u64().expect("bytes");
    assert!(own < 4 * MIB, "A keeps only the current file: {own}");

    let back = hyperfs_in(&a, &["cat", "t:/f.bin", "--version", &v]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    assert!(back.stdout == std::fs::read(&old).expect("read"), "the pruned version reads back byte-exact from B");
    let own = hyperfs_json(&a, &["du", "t", "--json"])["drives"][0]["bytes"].as_u64().expect("bytes");
    assert!(own < 4 * MIB, "what came from B was not stored again: {own}");

    hyperfs_in_ok(&b, &["stop"]);
    let gone = hyperfs_in(&a, &["cat", "t:/f.bin", "--version", &v]);
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(!gone.status.success() && err.contains("hyperfs prune") && err.contains("peer"), "{err}");
}

/// A cache far smaller than a reader's window: what the reader is reading and the read-ahead
/// that just arrived for it are never evicted, so the file comes down once, not block by block
/// again after each window was evicted under it.
#[test]
fn a_cache_smaller_than_a_read_keeps_what_the_reader_is_reading() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (StopNode(a.clone()), StopNode(b.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let file = tmp.path().join("f.bin");
    random_file(&file, 24, 9);
    hyperfs_in_ok(&a, &["put", file.to_str().expect("utf-8"), "src:/f.bin"]);
    let shared = hyperfs_json(
        &a,
        &["share", "src", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"],
    );
    let (link, from_a) = (shared["link"].as_str().expect("link"), shared["address"].as_str().expect("address"));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = mnt.to_str().expect("utf-8");
    hyperfs_in_ok(&b, &hyperfs_tests::loopback_only(&["mount", link, m, "--peer", from_a, "--cache-size", "1MiB"]));
    assert!(std::fs::read(mnt.join("f.bin")).expect("read") == std::fs::read(&file).expect("read"), "byte-exact");
    let down = hyperfs_json(&b, &["peers", "--json"])[0]["bytesDown"].as_u64().expect("bytes down");
    assert!(down < 30 * MIB, "24 MiB came down about once through a 1 MiB cache: {down}");
}
