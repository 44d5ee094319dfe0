//! Sharing through the real binary: two nodes on loopback QUIC. A shares a drive; B clones it
//! by key from A's address, reads the same bytes, verifies every block and signature, and
//! follows A's new versions live — through a read-only mount too; `peers` shows the
//! connection; bad input is one clear line.

use std::path::Path;
use std::time::{Duration, Instant};

use hyperfs_tests::{hyperfs_in, hyperfs_in_ok, pseudo_random, StopNode};
use serde_json::Value;

fn json(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&hyperfs_in_ok(dir, args)).expect("JSON output")
}

#[test]
fn a_cloned_drive_has_the_same_bytes_and_follows_its_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (StopNode(a.clone()), StopNode(b.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let big = pseudo_random(5 << 20, 42);
    let file = tmp.path().join("big.bin");
    std::fs::write(&file, &big).expect("write");
    hyperfs_in_ok(&a, &["put", file.to_str().expect("utf-8"), "src:/data/big.bin"]);
    std::fs::write(tmp.path().join("note.txt"), "hello from a").expect("write");
    hyperfs_in_ok(&a, &["put", tmp.path().join("note.txt").to_str().expect("utf-8"), "src:/note.txt"]);
    let shared = json(&a, &["share", "src", "--listen", "127.0.0.1:0", "--json"]);
    let (key, addr) = (shared["key"].as_str().expect("key"), shared["address"].as_str().expect("address"));
    let link = shared["link"].as_str().expect("link");

    // With discovery off and no peer to ask, a clone says what it needs (after its wait).
    let out = hyperfs_in(&b, &["clone", link, "--no-lan", "--no-dht", "--no-hyperdht"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--peer") && err.trim().lines().count() == 1, "{err}");

    let cloned = json(&b, &["clone", link, "--peer", addr, "--name", "copy", "--listen", "127.0.0.1:0", "--json"]);
    assert_eq!(cloned["key"], key);
    // The time the node took, as the bench times it: something, and under the whole command's.
    let took = cloned["seconds"].as_f64().expect("seconds");
    assert!(took > 0.0 && took < 60.0, "{cloned}");
    let out = hyperfs_in(&b, &["cat", "copy:/data/big.bin"]);
    assert!(out.status.success());
    assert!(out.stdout == big, "the clone reads the same 5 MiB");
    assert_eq!(hyperfs_in_ok(&b, &["cat", "copy:/note.txt"]), "hello from a");
    assert!(hyperfs_in_ok(&b, &["verify", "copy"]).contains("verifies"));
    let info = json(&b, &["info", "copy", "--json"]);
    assert_eq!(info["writable"], false);
    assert_eq!(info["blobs"]["localBlocks"], info["blobs"]["length"], "everything is local");
    let down = info["bytesDownloaded"].as_u64().expect("bytesDownloaded");
    assert!((5 << 20..6 << 20).contains(&down), "the 5 MiB came down once, with proofs: {down}");
    let up = json(&a, &["info", "src", "--json"])["bytesUploaded"].as_u64().expect("bytesUploaded");
    assert_eq!(up, down, "what A uploaded is what B downloaded");
    let peers = json(&b, &["peers", "--json"]);
    assert_eq!(peers.as_array().map(Vec::len), Some(1));
    // Two nodes near each other meet over TCP (the JS wire, then AES frames), not QUIC.
    assert_eq!((peers[0]["transport"].as_str(), peers[0]["kind"].as_str()), (Some("tcp"), Some("hyperfs")));
    assert!(peers[0]["bytesDown"].as_u64().expect("bytes") >= 5 << 20);

    // Live: A writes, B shows it within a second or so.
    std::fs::write(tmp.path().join("late.txt"), "written later").expect("write");
    hyperfs_in_ok(&a, &["put", tmp.path().join("late.txt").to_str().expect("utf-8"), "src:/late.txt"]);
    let start = Instant::now();
    loop {
        let out = hyperfs_in(&b, &["cat", "copy:/late.txt"]);
        if out.status.success() {
            assert_eq!(out.stdout, b"written later");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "the new version did not arrive");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("followed in {:?}", start.elapsed());

    // Mounted, the replica is an ordinary read-only folder that shows new, changed and removed
    // files as A writes them.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    hyperfs_in_ok(&b, &["mount", "copy", mnt.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(mnt.join("data/big.bin")).expect("read through the mount"), big);
    let err = std::fs::write(mnt.join("new.txt"), "x").expect_err("a replica is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    std::fs::write(tmp.path().join("note.txt"), "changed at a").expect("write");
    hyperfs_in_ok(&a, &["put", tmp.path().join("note.txt").to_str().expect("utf-8"), "src:/note.txt"]);
    hyperfs_in_ok(&a, &["rm", "src:/late.txt"]);
    let start = Instant::now();
    loop {
        let note = std::fs::read_to_string(mnt.join("note.txt")).unwrap_or_default();
        if note == "changed at a" && !mnt.join("late.txt").exists() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the mount did not show A's changes: {note:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the mount showed the change in {:?}", start.elapsed());
    hyperfs_in_ok(&b, &["unmount", mnt.to_str().expect("utf-8")]);
    // A replica is read-only, and cloning the same drive twice is refused.
    let out = hyperfs_in(&b, &["put", file.to_str().expect("utf-8"), "copy:/x"]);
    assert!(!out.status.success());
    let out = hyperfs_in(&b, &["clone", link, "--peer", addr]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
}

#[test]
fn a_clone_serves_a_third_node_while_the_writer_is_stopped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let (_sa, _sb, _sc) = (StopNode(a.clone()), StopNode(b.clone()), StopNode(c.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let data = pseudo_random(3 << 20, 7);
    let file = tmp.path().join("f.bin");
    std::fs::write(&file, &data).expect("write");
    hyperfs_in_ok(&a, &["put", file.to_str().expect("utf-8"), "src:/f.bin"]);
    let shared = json(&a, &["share", "src", "--listen", "127.0.0.1:0", "--json"]);
    let link = shared["link"].as_str().expect("link").to_owned();
    let from_a = shared["address"].as_str().expect("address").to_owned();
    hyperfs_in_ok(&b, &["clone", &link, "--peer", &from_a, "--name", "copy", "--listen", "127.0.0.1:0"]);
    let from_b = std::fs::read_to_string(b.join("listen.addr")).expect("B remembers its address").trim().to_owned();
    hyperfs_in_ok(&a, &["stop"]);
    // C first mounts the key sparsely and reads nothing; cloning it then downloads everything.
    let mnt = tmp.path().join("mnt-c");
    std::fs::create_dir(&mnt).expect("mkdir");
    hyperfs_in_ok(&c, &["mount", &link, mnt.to_str().expect("utf-8"), "--peer", &from_b, "--listen", "127.0.0.1:0"]);
    let info = json(&c, &["info", &link, "--json"]);
    assert_eq!(info["blobs"]["localBlocks"], 0, "a sparse mount reads nothing unasked: {info}");
    hyperfs_in_ok(&c, &["unmount", mnt.to_str().expect("utf-8")]);
    let cloned = json(&c, &["clone", &link, "--json"]);
    let name = cloned["name"].as_str().expect("name").to_owned();
    let info = json(&c, &["info", &name, "--json"]);
    assert_eq!(info["blobs"]["localBlocks"], info["blobs"]["length"], "the sparse replica is now whole: {info}");
    let out = hyperfs_in(&c, &["clone", &link]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"), "a whole replica is not cloned twice");
    let out = hyperfs_in(&c, &["cat", &format!("{name}:/f.bin")]);
    assert!(out.status.success() && out.stdout == data, "C has A's bytes through B");
    assert!(hyperfs_in_ok(&c, &["verify", &name]).contains("verifies"));
    // Unshared, B's copy is no longer offered: a fourth node finds nothing there.
    hyperfs_in_ok(&b, &["unshare", "copy"]);
    let d = tmp.path().join("d");
    let _sd = StopNode(d.clone());
    let out = hyperfs_in(&d, &["seed", &link, "--peer", &from_b, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "an unshared drive is not served");
    let out = hyperfs_in(&b, &["unshare", "copy"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not shared"));
    // A drive nobody serves: the clone gives up with one line.
    let out = hyperfs_in(&c, &["clone", &link.replace(&link[9..12], "yyy"), "--peer", &from_b]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim().lines().count() == 1, "{err}");
}

/// Reads `len` bytes at `offset` of `path` with one `pread`, as a program seeking into a big
/// file does.
fn pread(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("pread");
    buf
}

fn bytes_down(node: &Path, drive: &str) -> u64 {
    json(node, &["info", drive, "--json"])["bytesDownloaded"].as_u64().expect("bytesDownloaded")
}

/// The largest chunk the default chunker cuts.
const MAX_CHUNK: u64 = 256 << 10;

/// B mounts A's drive by its key (and A's address) without copying it: 4 KiB read at random
/// offsets of a 1 GiB file move at most two chunks each; A's new file shows in B's mount within
/// a second; A's truncation to an older version is followed; and C reads through B what B has
/// while A is stopped.
#[test]
fn a_key_mounts_as_a_sparse_replica_that_reads_on_demand_and_follows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let (_sa, _sb, _sc) = (StopNode(a.clone()), StopNode(b.clone()), StopNode(c.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let file = tmp.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).expect("create");
        for piece in 0..16u64 {
            f.write_all(&pseudo_random(64 << 20, 1000 + piece)).expect("write");
        }
    }
    let size = 1u64 << 30;
    hyperfs_in_ok(&a, &["put", file.to_str().expect("utf-8"), "src:/big.bin"]);
    std::fs::write(tmp.path().join("note.txt"), "hello").expect("write");
    hyperfs_in_ok(&a, &["put", tmp.path().join("note.txt").to_str().expect("utf-8"), "src:/docs/note.txt"]);
    let shared = json(&a, &["share", "src", "--listen", "127.0.0.1:0", "--json"]);
    let (link, from_a) = (shared["link"].as_str().expect("link"), shared["address"].as_str().expect("address"));
    let key = shared["key"].as_str().expect("key");

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m =
        json(&b, &["mount", link, mnt.to_str().expect("utf-8"), "--peer", from_a, "--listen", "127.0.0.1:0", "--json"]);
    assert_eq!(m["readOnly"], true, "a drive of another node mounts read-only");
    assert_eq!(std::fs::metadata(mnt.join("big.bin")).expect("stat").len(), size);
    assert_eq!(std::fs::read_to_string(mnt.join("docs/note.txt")).expect("read"), "hello");
    let peers = json(&b, &["peers", "--json"]);
    assert_eq!(peers[0]["drives"], serde_json::json!([format!("replica-{}", &key[..8])]), "{peers}");

    let seed = hyperfs_tests::test_seed();
    let offsets: Vec<u64> = (0..3)
        .map(|i| pseudo_random(8, seed + i))
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) % (size - 4096))
        .collect();
    let started = bytes_down(&b, key);
    for &off in &offsets {
        let before = bytes_down(&b, key);
        let got = pread(&mnt.join("big.bin"), off, 4096);
        assert!(got == pread(&file, off, 4096), "4 KiB at {off} differ");
        // Anything asked for ahead would arrive in this while, and count.
        std::thread::sleep(Duration::from_millis(300));
        let moved = bytes_down(&b, key) - before;
        assert!(moved <= 2 * MAX_CHUNK + (16 << 10), "4 KiB at {off} moved {moved} bytes: more than two chunks");
        eprintln!("4 KiB at {off}: {moved} bytes came down");
    }
    // Reads of one open file near the last one but not where it ended are a random reader's
    // too: no window is fetched for them (nearness keeps a sequential run's window; it had
    // started one as well).
    let open = std::fs::File::open(mnt.join("big.bin")).expect("open");
    for step in [0u64, 1 << 20, 7 << 18] {
        use std::os::unix::fs::FileExt;
        let off = (offsets[0] + step).min(size - 4096);
        let before = bytes_down(&b, key);
        let mut got = vec![0u8; 4096];
        open.read_exact_at(&mut got, off).expect("read");
        assert!(got == pread(&file, off, 4096), "4 KiB at {off} differ");
        std::thread::sleep(Duration::from_millis(300));
        let moved = bytes_down(&b, key) - before;
        assert!(moved <= 2 * MAX_CHUNK + (16 << 10), "4 KiB at {off}, near the read before, moved {moved} bytes");
    }
    drop(open);
    let total = bytes_down(&b, key) - started;
    assert!(total < 2 << 20, "five reads of 4 KiB moved {total} bytes of a 1 GiB file");
    // At most two chunks per 4 KiB read, and the note's one chunk (the seed 10134944007089922760
    // has all three random reads straddle a chunk boundary).
    let local = json(&b, &["info", key, "--json"])["blobs"]["localBlocks"].as_u64().expect("blocks");
    assert!(local <= 5 * 2 + 1, "{local} blobs blocks came down for five 4 KiB reads and a 5-byte file");

    // Live: A writes; B's mount shows it within a second.
    let v_before = json(&a, &["info", "src", "--json"])["version"].as_u64().expect("version");
    std::fs::write(tmp.path().join("late.txt"), "written later").expect("write");
    hyperfs_in_ok(&a, &["put", tmp.path().join("late.txt").to_str().expect("utf-8"), "src:/late.txt"]);
    let start = Instant::now();
    while std::fs::read_to_string(mnt.join("late.txt")).ok().as_deref() != Some("written later") {
        assert!(start.elapsed() < Duration::from_secs(2), "the mount did not show A's new file");
        std::thread::sleep(Duration::from_millis(10));
    }
    let shown = start.elapsed();
    eprintln!("B's mount showed A's new file in {shown:?}");
    assert!(shown < Duration::from_secs(1), "shown after {shown:?}");

    // A goes back to the version before: B follows the new fork and the file is gone.
    let t = json(&a, &["truncate", "src", &v_before.to_string(), "--json"]);
    assert_eq!(t["fork"], 1);
    let start = Instant::now();
    while mnt.join("late.txt").exists() {
        assert!(start.elapsed() < Duration::from_secs(5), "B did not follow the truncation");
        std::thread::sleep(Duration::from_millis(20));
    }
    let info = json(&b, &["info", key, "--json"]);
    assert_eq!((info["db"]["fork"].as_u64(), info["version"].as_u64()), (Some(1), Some(v_before)));
    assert_eq!(std::fs::read_to_string(mnt.join("docs/note.txt")).expect("read"), "hello");

    // A stops; C mounts the key through B and reads what B holds.
    let from_b = json(&b, &["share", key, "--json"])["address"].as_str().expect("address").to_owned();
    hyperfs_in_ok(&a, &["stop"]);
    let mnt_c = tmp.path().join("mnt-c");
    std::fs::create_dir(&mnt_c).expect("mkdir");
    hyperfs_in_ok(&c, &["mount", key, mnt_c.to_str().expect("utf-8"), "--peer", &from_b, "--listen", "127.0.0.1:0"]);
    let off = offsets[0];
    assert!(pread(&mnt_c.join("big.bin"), off, 4096) == pread(&file, off, 4096), "C reads A's bytes through B");
    assert_eq!(std::fs::read_to_string(mnt_c.join("docs/note.txt")).expect("read"), "hello");
    hyperfs_in_ok(&c, &["unmount", mnt_c.to_str().expect("utf-8")]);
    hyperfs_in_ok(&b, &["unmount", mnt.to_str().expect("utf-8")]);
}

/// `hyperfs daemon` takes the network options the other commands take (a seed on a fixed
/// port); an address the running network cannot take is refused with what to do, not ignored.
#[test]
fn the_daemon_takes_network_options_and_a_listen_it_cannot_take_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let _sa = StopNode(a.clone());
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    hyperfs_in_ok(&a, &["stop"]);
    // A relay named by something that is not a key is refused before anything is remembered.
    let bad = hyperfs_in(&a, &["peers", "--relay-through", "not-a-key"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("64 hex digits"), "{bad:?}");
    assert!(!a.join("discovery.json").exists(), "nothing remembered");
    let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let fixed = format!("127.0.0.1:{port}");
    let mut daemon = std::process::Command::new(hyperfs_tests::hyperfs_bin())
        .args([
            "--data-dir",
            a.to_str().expect("utf-8"),
            "daemon",
            "--listen",
            &fixed,
            "--no-lan",
            "--no-dht",
            "--no-hyperdht",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.join("node.sock").exists() {
        assert!(Instant::now() < deadline, "the daemon serves");
        std::thread::sleep(Duration::from_millis(50));
    }
    let shared = json(&a, &["share", "src", "--json"]);
    assert_eq!(shared["address"], fixed.as_str(), "the daemon's network listens where it was told");
    let out = hyperfs_in(&a, &["share", "src", "--listen", "127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already listens on") && err.contains("hyperfs stop"), "{err}");
    // The same address, or any port on it, is what runs: fine.
    hyperfs_in_ok(&a, &["share", "src", "--listen", &fixed]);
    hyperfs_in_ok(&a, &["share", "src", "--listen", "127.0.0.1:0"]);
    hyperfs_in_ok(&a, &["stop"]);
    daemon.wait().expect("the daemon exits");
}

/// A clone from three seeds at once takes each block from one of them (their sessions share
/// what was asked), not the whole drive from each: what comes down is the drive once, with a
/// little end-game overlap, split among the seeds.
#[test]
fn a_clone_from_three_seeds_downloads_the_drive_once_split_among_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<_> = ["a", "b", "c", "d"].iter().map(|n| tmp.path().join(n)).collect();
    let _stop: Vec<_> = nodes.iter().map(|n| StopNode(n.clone())).collect();
    let (a, d) = (&nodes[0], &nodes[3]);
    hyperfs_in_ok(a, &["create", "--name", "src"]);
    let size = 48u64 << 20;
    let data = pseudo_random(size as usize, 11);
    let file = tmp.path().join("f.bin");
    std::fs::write(&file, &data).expect("write");
    hyperfs_in_ok(a, &["put", file.to_str().expect("utf-8"), "src:/f.bin"]);
    let shared =
        json(a, &["share", "src", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"]);
    let link = shared["link"].as_str().expect("link").to_owned();
    let mut seeds = vec![shared["address"].as_str().expect("address").to_owned()];
    for n in &nodes[1..3] {
        let args = hyperfs_tests::loopback_only(&["clone", &link, "--peer", &seeds[0], "--name", "copy"]);
        hyperfs_in_ok(n, &args);
        seeds.push(std::fs::read_to_string(n.join("listen.addr")).expect("its address").trim().to_owned());
    }
    let uploaded =
        |n: &Path, drive: &str| json(n, &["info", drive, "--json"])["bytesUploaded"].as_u64().expect("bytes");
    let before: Vec<u64> =
        nodes[..3].iter().zip(["src", "copy", "copy"]).map(|(n, drive)| uploaded(n, drive)).collect();
    let mut args =
        vec!["clone", &link, "--name", "copy", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"];
    for s in &seeds {
        args.extend(["--peer", s]);
    }
    hyperfs_in_ok(d, &args);
    let out = hyperfs_in(d, &["cat", "copy:/f.bin"]);
    assert!(out.status.success() && out.stdout == data, "the clone reads the same bytes");
    assert!(hyperfs_in_ok(d, &["verify", "copy"]).contains("verifies"));
    // Blocks asked of a second seed at the end may still be on their way when the clone is
    // done: the counts are read once they agree, or after 10 s.
    let settle = Instant::now() + Duration::from_secs(10);
    let (down, served) = loop {
        let down = bytes_down(d, "copy");
        let served: Vec<u64> = nodes[..3]
            .iter()
            .zip(["src", "copy", "copy"])
            .zip(&before)
            .map(|((n, drive), b)| uploaded(n, drive) - b)
            .collect();
        if served.iter().sum::<u64>() == down || Instant::now() > settle {
            break (down, served);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("downloaded {down} bytes; the seeds served {served:?}");
    assert!(down < size + size / 4, "the drive came down about once: {down} of {size}");
    assert_eq!(served.iter().sum::<u64>(), down, "what the seeds uploaded is what came down");
    assert!(served.iter().filter(|&&s| s > 0).count() >= 2, "the seeds shared the work: {served:?}");
}
