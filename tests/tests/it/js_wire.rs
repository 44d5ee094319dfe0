//! hyperfs and JS peers on the JS stack's own wire: Noise XX, secret-stream, protomux and
//! `hypercore/alpha` over TCP and over UDX (`udx-native`), against hypercore 11 / hyperdrive 13 / corestore 7 from npm
//! (`scripts/js/wire-peer.js`). A drive JS writes mounts by key with the JS peer as the only
//! peer, reads byte-exact and sparsely, and follows JS's appends and truncation; a drive
//! hyperfs writes is downloaded and read by JS Hyperdrive, which follows its new versions.

use std::path::Path;
use std::time::{Duration, Instant};

use hyperfs_tests::{hyperfs_in_ok, pseudo_random, JsProcess, StopNode};
use serde_json::{json, Value};

fn json_of(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&hyperfs_in_ok(dir, args)).expect("JSON output")
}

fn pread(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("pread");
    buf
}

fn blake2b(data: &[u8]) -> String {
    hex::encode(blake2b_simd::Params::new().hash_length(32).hash(data).as_bytes())
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// JS writes a drive (files, folders, an executable, a symlink, a 24 MiB file) and serves it on
/// a TCP server; hyperfs mounts it by key with that JS peer as its only peer: every file reads
/// byte-exact, a 4 KiB read of the big file moves a few blocks, not the file; a file JS adds
/// shows within a second; JS's truncation is followed.
#[test]
fn a_drive_js_writes_mounts_by_key_from_a_js_peer_over_tcp() {
    js_serves_hyperfs_mounts("tcp");
}

/// The same over UDX: `udx-native` on JS's side, hyperfs's own UDX on this one.
#[test]
fn a_drive_js_writes_mounts_by_key_from_a_js_peer_over_udx() {
    js_serves_hyperfs_mounts("udx");
}

fn js_serves_hyperfs_mounts(transport: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = tmp.path().join("node");
    let _stop = StopNode(node.clone());
    let big = pseudo_random(24 << 20, 2601);
    let files: Vec<(&str, Vec<u8>, bool)> = vec![
        ("/hello.txt", b"hi from js".to_vec(), false),
        ("/deep/a/b/note.txt", b"nested".to_vec(), false),
        ("/bin/tool", b"#!/bin/sh\necho hi\n".to_vec(), true),
        ("/empty", Vec::new(), false),
        ("/big.bin", big.clone(), false),
    ];
    let mut ops = Vec::new();
    for (i, (path, data, executable)) in files.iter().enumerate() {
        let f = tmp.path().join(format!("f{i}"));
        std::fs::write(&f, data).expect("write");
        ops.push(json!({"put": path, "file": f, "executable": executable}));
    }
    ops.push(json!({"symlink": "/link", "target": "/hello.txt"}));
    let spec = tmp.path().join("spec.json");
    std::fs::write(&spec, json!({ "ops": ops }).to_string()).expect("spec");
    let (mut js, served) = JsProcess::start(
        "wire-peer.js",
        &["serve", tmp.path().join("js").to_str().expect("utf-8"), spec.to_str().expect("utf-8")],
    );
    let key = served["key"].as_str().expect("key").to_owned();
    let port = if transport == "udx" { &served["udxPort"] } else { &served["port"] };
    let peer = format!("{transport}://127.0.0.1:{port}");

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt_s = mnt.to_str().expect("utf-8");
    json_of(&node, &hyperfs_tests::loopback_only(&["mount", &key, mnt_s, "--peer", &peer, "--json"]));
    let peers = json_of(&node, &["peers", "--json"]);
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "the JS peer is the only peer: {peers}");
    assert_eq!((peers[0]["kind"].as_str(), peers[0]["transport"].as_str()), (Some("js"), Some(transport)), "{peers}");

    // Sparse: 4 KiB in the middle of the big file moves a few blocks of it.
    let off = 13_000_001u64;
    let before = js.ask(json!({"stats": true}))["blobsUploadedBytes"].as_u64().expect("stats");
    assert!(pread(&mnt.join("big.bin"), off, 4096) == big[off as usize..off as usize + 4096], "4 KiB of big.bin");
    std::thread::sleep(Duration::from_millis(300));
    let moved = js.ask(json!({"stats": true}))["blobsUploadedBytes"].as_u64().expect("stats") - before;
    eprintln!("a 4 KiB read of a 24 MiB file moved {moved} bytes from JS");
    assert!(moved > 0 && moved <= 1 << 20, "a 4 KiB read moved {moved} bytes of a 24 MiB file");

    // Every file byte-exact, the executable bit, the symlink.
    for (path, data, executable) in &files {
        let p = mnt.join(&path[1..]);
        assert!(std::fs::read(&p).expect("read") == *data, "{path} differs");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o111 != 0, *executable, "{path} mode {mode:o}");
    }
    assert_eq!(std::fs::read_link(mnt.join("link")).expect("readlink").to_str(), Some("/hello.txt"));
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "bin", "deep", "empty", "hello.txt", "link"]);

    // Live: JS adds a file; the mount shows it within a second.
    let version = served["version"].as_u64().expect("version");
    js.ask(json!({"put": "/late.txt", "text": "written later"}));
    let shown = wait_until("JS's new file in the mount", Duration::from_secs(5), || {
        std::fs::read(mnt.join("late.txt")).ok().as_deref() == Some(b"written later".as_slice())
    });
    eprintln!("the mount showed JS's new file in {shown:?}");
    assert!(shown < Duration::from_secs(1), "shown after {shown:?}");

    // JS truncates back: the mount follows the new fork and the file is gone.
    let t = js.ask(json!({"truncate": version}));
    assert_eq!(t["fork"], 1, "{t}");
    wait_until("the truncation", Duration::from_secs(5), || !mnt.join("late.txt").exists());
    let info = json_of(&node, &["info", &key, "--json"]);
    assert_eq!((info["db"]["fork"].as_u64(), info["version"].as_u64()), (Some(1), Some(version)), "{info}");
    assert_eq!(std::fs::read(mnt.join("hello.txt")).expect("read"), b"hi from js");
    hyperfs_in_ok(&node, &["unmount", mnt_s]);
}

/// hyperfs writes a drive (a big file, a copy of its first part and an edited copy — the two
/// reuse its chunks, block-mapped — folders, an executable) and accepts JS peers over TCP; a
/// JS Hyperdrive dials it, downloads and reads every file byte-exact, and follows new versions
/// live.
#[test]
fn a_drive_hyperfs_writes_is_read_by_a_js_peer_over_tcp() {
    hyperfs_serves_js_reads("tcp");
}

/// The same over UDX.
#[test]
fn a_drive_hyperfs_writes_is_read_by_a_js_peer_over_udx() {
    hyperfs_serves_js_reads("udx");
}

fn hyperfs_serves_js_reads(transport: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = tmp.path().join("node");
    let _stop = StopNode(node.clone());
    hyperfs_in_ok(&node, &["create", "--name", "src"]);
    let big = pseudo_random(12 << 20, 2602);
    let mut edited = big[..4 << 20].to_vec();
    edited[1_000_000] ^= 1;
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("/big.bin", big.clone()),
        ("/copies/first-4-mib.bin", big[..4 << 20].to_vec()),
        ("/copies/edited.bin", edited),
        ("/deep/a/b/note.txt", b"nested".to_vec()),
        ("/hello.txt", b"hi from hyperfs".to_vec()),
    ];
    for (i, (path, data)) in files.iter().enumerate() {
        let f = tmp.path().join(format!("f{i}"));
        std::fs::write(&f, data).expect("write");
        hyperfs_in_ok(&node, &["put", f.to_str().expect("utf-8"), &format!("src:{path}")]);
    }
    let listen = format!("--{transport}");
    let shared = json_of(
        &node,
        &[
            "share",
            "src",
            &listen,
            "127.0.0.1:0",
            "--no-dht",
            "--no-hyperdht",
            "--no-lan",
            "--listen",
            "127.0.0.1:0",
            "--json",
        ],
    );
    let key = shared["key"].as_str().expect("key").to_owned();
    let addr = shared[transport].as_str().expect("the address JS dials").to_owned();
    let addr = if transport == "udx" { format!("udx://{addr}") } else { addr };

    let (mut js, read) =
        JsProcess::start("wire-peer.js", &["read", tmp.path().join("js").to_str().expect("utf-8"), &addr, &key]);
    let expect = |files: &[(&str, Vec<u8>)]| -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = files.iter().map(|(p, d)| (p.to_string(), blake2b(d), d.len() as u64)).collect();
        v.sort();
        v
    };
    let got = |v: &Value| -> Vec<(String, String, u64)> {
        let mut g: Vec<_> = v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().expect("path").to_owned(),
                    e["hash"].as_str().expect("hash").to_owned(),
                    e["size"].as_u64().expect("size"),
                )
            })
            .collect();
        g.sort();
        g
    };
    assert_eq!(got(&read), expect(&files), "what JS read");
    let peers = json_of(&node, &["peers", "--json"]);
    assert_eq!((peers[0]["kind"].as_str(), peers[0]["transport"].as_str()), (Some("js"), Some(transport)), "{peers}");
    // The copies are block-mapped onto the big file's chunks: the blobs core holds the big file
    // and the edited chunk, not 20 MiB.
    let blobs = json_of(&node, &["info", "src", "--json"])["blobs"]["byteLength"].as_u64().expect("byteLength");
    assert!(blobs < 13 << 20, "the blobs core holds {blobs} bytes: the copies were not deduplicated");

    // Live: a new version on hyperfs's side reaches JS.
    let version = json_of(&node, &["info", "src", "--json"])["version"].as_u64().expect("version");
    let f = tmp.path().join("late");
    std::fs::write(&f, "written later").expect("write");
    hyperfs_in_ok(&node, &["put", f.to_str().expect("utf-8"), "src:/late.txt"]);
    let next = js.ask(json!({"wait": version + 1}));
    let mut all = files.clone();
    all.push(("/late.txt", b"written later".to_vec()));
    assert_eq!(got(&next), expect(&all), "JS follows the new version");
    eprintln!("JS saw the new version in {} ms", next["ms"]);
}
