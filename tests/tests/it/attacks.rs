//! Attacks, each through the real parts: a hostile writer's drive crafted in its own store
//! (as other software could write it), shared over QUIC on loopback by the stock binary, cloned
//! and used by a victim node with the stock CLI; other local users (uid 65534) against a
//! node's store, socket and mounts. Each of these got through before the hostile-input work.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperfs_engine::drive::{Entry, PutOptions};
use hyperfs_engine::hyperbee::{Level, NodeBlock};
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::Drive;
use hyperfs_tests::{hyperfs_in, hyperfs_in_ok};
use serde_json::{json, Value};

fn json_of(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&hyperfs_in_ok(dir, args)).expect("JSON output")
}

struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = hyperfs_in(&self.0, &["stop"]);
    }
}

/// A hostile writer: a node whose drive `evil` is crafted in its store while the node is down.
struct Attacker {
    key: String,
    _stop: Stop,
}

impl Attacker {
    /// Creates the drive, lets `craft` write it, then shares it; returns the attacker and its
    /// address.
    fn new(root: &Path, craft: impl FnOnce(&mut Drive)) -> (Attacker, String) {
        let dir = root.join("attacker");
        let created = json_of(&dir, &["create", "--name", "evil", "--json"]);
        let key = created["key"].as_str().expect("key").to_owned();
        hyperfs_in_ok(&dir, &["stop"]);
        {
            let store = Arc::new(RocksStore::open(&dir.join("store")).expect("the attacker's store"));
            let raw = hex::decode(&key).expect("hex key");
            let mut drive = Drive::open(store, &hyperfs_engine::crypto::CoreKey(raw.try_into().expect("32 bytes")))
                .expect("open")
                .expect("held");
            craft(&mut drive);
            drive.flush().expect("flush");
        }
        let shared = json_of(
            &dir,
            &["share", "evil", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"],
        );
        let addr = shared["address"].as_str().expect("address").to_owned();
        (Attacker { _stop: Stop(dir), key }, addr)
    }
}

/// A victim node that clones the attacker's drive as `copy`; the clone's output.
fn victim_clones(root: &Path, key: &str, addr: &str) -> (PathBuf, Stop, std::process::Output) {
    let dir = root.join("victim");
    let out = hyperfs_in(&dir, &hyperfs_tests::loopback_only(&["clone", key, "--peer", addr, "--name", "copy"]));
    (dir.clone(), Stop(dir), out)
}

fn file_entry(drive: &mut Drive, content: &[u8], metadata: Option<Value>) -> Vec<u8> {
    let blob = drive.write_blob(content).expect("blob");
    Entry { executable: false, linkname: None, blob: Some(blob), metadata }.encode()
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

/// A link entry `/l -> elsewhere` with files `/l/x` under it, `..` keys, a `dirs\0/..` record
/// and a set-uid, root-owned file: the export writes only beneath its folder, overwrites
/// nothing elsewhere, leaves the folder's parent as it was, drops the set-uid bit and the
/// drive's owners, and names every entry it skipped.
#[test]
fn export_of_a_hostile_drive_writes_only_beneath_its_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("x"), "keep me").expect("write");
    let parent = root.join("out-parent");
    std::fs::create_dir(&parent).expect("mkdir");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let target = parent.join("out");
    let elsewhere_str = elsewhere.to_str().expect("utf-8").to_owned();

    let (attacker, addr) = Attacker::new(root, |d| {
        d.put("/fine.txt", b"an ordinary file", &PutOptions::default()).expect("put");
        d.symlink("/l", &elsewhere_str, None).expect("symlink");
        let meta = json!({"mode": 0o4755, "uid": 0, "gid": 0, "mtime": 1_700_000_000_000u64});
        let suid = file_entry(d, b"#!/bin/sh\necho owned\n", Some(meta));
        let owned = file_entry(d, b"someone's", Some(json!({"mode": 0o644, "uid": 4242, "gid": 4242, "mtime": 1})));
        let evil = file_entry(d, b"written by the attacker", None);
        let dir_record =
            Entry { executable: false, linkname: None, blob: None, metadata: Some(json!({"mode": 0o777})) };
        let mut b = d.db_mut().batch();
        b.put(b"files\0/suid", &suid).expect("put");
        b.put(b"files\0/owned", &owned).expect("put");
        b.put(b"files\0/l/x", &evil).expect("put");
        b.put(b"files\0/l/new", &evil).expect("put");
        b.put(b"files\0/../../escaped", &evil).expect("put");
        b.put(b"files\0/a/../../../escaped2", &evil).expect("put");
        b.put(b"files\0/.hyperfs-clash/../..", &evil).expect("put");
        b.put(b"dirs\0/..", &dir_record.encode()).expect("put");
        b.flush().expect("flush");
    });
    let (victim, _stop, out) = victim_clones(root, &attacker.key, &addr);
    assert!(out.status.success(), "the clone completes: {}", String::from_utf8_lossy(&out.stderr));

    let out = hyperfs_in(&victim, &["export", "copy", target.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "skipped entries make the exit status 1");
    for named in ["/l/x", "/l/new", "/../../escaped", "/a/../../../escaped2", "/.."] {
        assert!(err.contains(named), "{named} is reported: {err}");
    }
    // Nothing outside the folder: the file there is untouched, nothing new appeared.
    assert_eq!(std::fs::read_to_string(elsewhere.join("x")).expect("read"), "keep me");
    assert_eq!(std::fs::read_dir(&elsewhere).expect("list").count(), 1, "nothing new elsewhere");
    assert!(!root.join("escaped").exists() && !root.join("escaped2").exists());
    assert_eq!(mode_of(&parent), 0o750, "the folder's parent keeps its mode");
    // Inside: the link is a link, the ordinary file is there, the set-uid bit and owners gone.
    assert_eq!(std::fs::read_link(target.join("l")).expect("a link"), elsewhere);
    assert_eq!(std::fs::read_to_string(target.join("fine.txt")).expect("read"), "an ordinary file");
    assert_eq!(mode_of(&target.join("suid")), 0o755, "someone else's set-uid bit is dropped");
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(std::fs::metadata(target.join("owned")).expect("stat").uid(), me, "owners only with --owners");
    let names: Vec<String> = std::fs::read_dir(&target)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["fine.txt", "l", "owned", "suid"]);

    // `verify` names the entries no reader follows; `ls` and a listing never show them.
    let out = hyperfs_in(&victim, &["verify", "copy"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/../../escaped") && err.contains("/l/x"), "{err}");
    let listed = hyperfs_in_ok(&victim, &["ls", "-R", "copy"]);
    assert!(!listed.contains(".."), "{listed}");
}

/// A B-tree whose children all point at one node: a range read walked that node once per
/// child, level after level — `(k+1)² · k` entries from a few hundred KB of blocks, the node out
/// of memory with every mount. Now the clone, `ls` and `export` each fail at once with a clear
/// error and the node keeps serving.
#[test]
fn a_tree_of_shared_children_cannot_exhaust_the_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    const K: u64 = 200;
    let (attacker, addr) = Attacker::new(root, |d| {
        let entry = file_entry(d, b"x", None);
        let mut b = d.db_mut().batch();
        for i in 0..K {
            b.put(format!("files\0/f{i:05}").as_bytes(), &entry).expect("put");
        }
        b.flush().expect("flush");
        // The batch's last block holds the whole tree: a leaf of K keys.
        let core = d.db_mut().core_mut();
        let leaf = core.length() - 1;
        let first = leaf + 1 - K;
        let keys: Vec<u64> = (first..first + K).collect();
        let children = |seq: u64| vec![(seq, 0); K as usize + 1];
        let mid = NodeBlock {
            key: b"files\0/zz1".to_vec(),
            value: Some(entry.clone()),
            levels: vec![Level { keys: keys.clone(), children: children(leaf) }],
        };
        core.append(&mid.encode()).expect("append");
        let top = NodeBlock {
            key: b"files\0/zz2".to_vec(),
            value: Some(entry.clone()),
            levels: vec![Level { keys, children: children(leaf + 1) }],
        };
        core.append(&top.encode()).expect("append");
    });
    let started = Instant::now();
    let (victim, _stop, out) = victim_clones(root, &attacker.key, &addr);
    let err = String::from_utf8_lossy(&out.stderr);
    // The clone may fail on the tree or succeed in copying blocks; either way it ends.
    eprintln!("clone: {} {err}", out.status);
    if !out.status.success() {
        assert!(err.contains("hyperbee tree") || err.contains("malformed"), "a clear error: {err}");
    } else {
        let out = hyperfs_in(&victim, &["ls", "-R", "copy"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("malformed"), "ls fails clearly: {err}");
        let out = hyperfs_in(&victim, &["export", "copy", root.join("out").to_str().expect("utf-8")]);
        assert!(!out.status.success(), "export fails");
    }
    // A mount of the drive lists its root with an error, and stays up.
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    hyperfs_in_ok(&victim, &["mount", &attacker.key, mnt.to_str().expect("utf-8"), "--peer", &addr]);
    let listed = std::fs::read_dir(&mnt).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert!(listed.is_err(), "the listing fails: {listed:?}");
    assert!(std::fs::metadata(&mnt).expect("the mount still answers").is_dir());
    hyperfs_in_ok(&victim, &["unmount", mnt.to_str().expect("utf-8")]);
    assert!(started.elapsed() < Duration::from_secs(60), "bounded: {:?}", started.elapsed());
    // The node is alive and answers.
    assert!(hyperfs_in(&victim, &["drives"]).status.success(), "the victim's node still serves");
}

fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .output()
        .expect("setpriv");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Another local user can neither read the store's secrets nor use the node's socket, even
/// when the data directory is opened up by hand; a data directory others may enter is refused
/// with the fix to run.
#[test]
fn other_users_cannot_read_the_store_or_drive_the_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A directory nobody may pass through to reach the data directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = tmp.path().join("data");
    let _stop = Stop(data.clone());
    hyperfs_in_ok(&data, &["create", "--name", "mine"]);
    assert_eq!(mode_of(&data) & 0o077, 0, "the data directory is private");
    for f in ["primary.key", "store"] {
        let p = data.join(f);
        let (ok, out) = as_nobody(&["cat", p.to_str().expect("utf-8")]);
        assert!(!ok, "nobody read {f}: {out}");
    }
    let (ok, out) = as_nobody(&["ls", data.join("store").to_str().expect("utf-8")]);
    assert!(!ok, "{out}");
    let sock = data.join("node.sock");
    let client = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ntry:\n  s.sendall(b'{{\"cmd\":\"drives\"}}\\n')\nexcept OSError:\n  pass\nprint(s.recv(4096).decode())",
        sock.to_str().expect("utf-8")
    );
    let (ok, out) = as_nobody(&["/usr/bin/python3", "-c", &client]);
    assert!(!ok && out.contains("Permission denied"), "nobody connected to node.sock: {out}");
    // Opened up by hand, the node still refuses another uid.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (ok, out) = as_nobody(&["/usr/bin/python3", "-c", &client]);
    assert!(ok && out.contains("serves only the user") && !out.contains("mine"), "{out}");
    // And a client refuses the loose directory, saying how to fix it.
    let out = hyperfs_in(&data, &["drives"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 700"), "{err}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert!(hyperfs_in_ok(&data, &["drives"]).contains("mine"));
}

/// A mount is its user's alone unless `--allow-other`; a drive of someone else shows as the
/// mounting user's, its set-uid bits masked.
#[test]
fn mounts_are_private_and_foreign_owners_do_not_land_on_local_users() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = tmp.path();
    let (attacker, addr) = Attacker::new(root, |d| {
        let meta = json!({"mode": 0o6755, "uid": 65534, "gid": 65534, "mtime": 1});
        let e = file_entry(d, b"#!/bin/sh\n", Some(meta));
        d.db_mut().put(b"files\0/tool", &e).expect("put");
    });
    let (victim, _stop, out) = victim_clones(root, &attacker.key, &addr);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    hyperfs_in_ok(&victim, &["mount", "copy", mnt.to_str().expect("utf-8")]);
    let tool = mnt.join("tool");
    let md = std::fs::metadata(&tool).expect("stat");
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!((md.uid(), md.mode() & 0o7777), (me, 0o755), "shown as the mounting user's, no set-id bits");
    let (ok, out) = as_nobody(&["ls", mnt.to_str().expect("utf-8")]);
    assert!(!ok && out.contains("Permission denied"), "another user listed a private mount: {out}");
    hyperfs_in_ok(&victim, &["unmount", mnt.to_str().expect("utf-8")]);
    hyperfs_in_ok(&victim, &["mount", "copy", mnt.to_str().expect("utf-8"), "--allow-other"]);
    let (ok, out) = as_nobody(&["ls", mnt.to_str().expect("utf-8")]);
    assert!(ok && out.contains("tool"), "--allow-other lets others in: {out}");
    hyperfs_in_ok(&victim, &["unmount", mnt.to_str().expect("utf-8")]);
}

/// Names and link targets reach a terminal with their control characters escaped; `--json`
/// keeps them exact.
#[test]
fn control_characters_in_names_do_not_reach_the_terminal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (attacker, addr) = Attacker::new(root, |d| {
        d.put("/red\x1b[31mname", b"x", &PutOptions::default()).expect("put");
        d.symlink("/bell", "\x07target\u{202e}", None).expect("symlink");
    });
    let (victim, _stop, out) = victim_clones(root, &attacker.key, &addr);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = hyperfs_in_ok(&victim, &["ls", "-l", "copy"]);
    assert!(!listed.contains('\x1b') && !listed.contains('\x07') && !listed.contains('\u{202e}'), "{listed:?}");
    assert!(listed.contains("red\\x1b[31mname") && listed.contains("\\x07target\\u{202e}"), "{listed}");
    let log = hyperfs_in_ok(&victim, &["log", "copy"]);
    assert!(!log.contains('\x1b'), "{log:?}");
    let exact: Value = serde_json::from_str(&hyperfs_in_ok(&victim, &["ls", "copy", "--json"])).expect("json");
    let names: Vec<&str> = exact.as_array().expect("array").iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.contains(&"red\x1b[31mname"), "{names:?}");
}

/// A block-mapped file whose map lists far more chunks than hyperblobs writes, with lengths that
/// sum past 2^64: one `stat` decoded gigabytes (again on every stat) and a read could panic.
/// Now `ls -l`, `cat` and a mount's `stat` each fail at once with a clear error.
#[test]
fn a_crafted_block_map_is_refused_before_it_costs() {
    use hyperfs_engine::drive::Blob;
    use hyperfs_engine::encoding::Encoder;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (attacker, addr) = Attacker::new(root, |d| {
        // Half a million entries in one map block, each a chunk of 2^62 bytes.
        let mut e = Encoder::new();
        let n = 500_000u64;
        e.uint(0).uint(n);
        for _ in 0..n {
            e.uint(0).uint(1 << 62);
        }
        let map = e.finish();
        let at = d.blobs_mut().append(&map).expect("append");
        let blob =
            Blob { block_offset: at, byte_offset: 0, block_length: 1, byte_length: map.len() as u64, block_map: true };
        let entry = Entry { executable: false, linkname: None, blob: Some(blob), metadata: None };
        d.db_mut().put(b"files\0/huge.bin", &entry.encode()).expect("put");
        d.put("/fine.txt", b"fine", &PutOptions::default()).expect("put");
    });
    let (victim, _stop, out) = victim_clones(root, &attacker.key, &addr);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    let out = hyperfs_in(&victim, &["cat", "copy:/huge.bin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("block map"), "{err}");
    let out = hyperfs_in(&victim, &["stat", "copy:/huge.bin"]);
    assert!(!out.status.success(), "stat fails clearly: {}", String::from_utf8_lossy(&out.stderr));
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    hyperfs_in_ok(&victim, &["mount", "copy", mnt.to_str().expect("utf-8")]);
    assert!(std::fs::metadata(mnt.join("huge.bin")).is_err(), "the mount's stat fails");
    assert_eq!(std::fs::read_to_string(mnt.join("fine.txt")).expect("read"), "fine", "the rest reads");
    hyperfs_in_ok(&victim, &["unmount", mnt.to_str().expect("utf-8")]);
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
}

/// A drive whose header names, as its content core, the blobs core of another drive of the
/// node (here the user's own private drive): a replica would have read that core and served it
/// to every peer. A node opens no such drive — the one that holds it and every replica take
/// the same `Drive::open` — and says why; the private drive's blocks never leave.
#[test]
fn a_header_naming_another_drives_core_is_refused() {
    use hyperfs_engine::crypto::KeyPair;
    use hyperfs_engine::hyperbee::{Header, Metadata};
    use hyperfs_engine::store::MemStore;
    use hyperfs_engine::Hypercore;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    let _stop = Stop(dir.clone());
    hyperfs_in_ok(&dir, &["create", "--name", "mine"]);
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, "the user's own bytes").expect("write");
    hyperfs_in_ok(&dir, &["put", secret.to_str().expect("utf-8"), "mine:/secret.txt"]);
    let info = json_of(&dir, &["info", "mine", "--json"]);
    let own_blobs = hex::decode(info["blobs"]["key"].as_str().expect("blobs key")).expect("hex");
    hyperfs_in_ok(&dir, &["stop"]);
    // A drive whose db's first block is a header naming that blobs core, as a stranger's
    // writer would make it.
    let kp = KeyPair::from_seed(&[77; 32]);
    {
        let store = Arc::new(RocksStore::open(&dir.join("store")).expect("store"));
        let mut db = Hypercore::create(store, kp.clone(), false).expect("core");
        let header = Header {
            protocol: "hyperbee".into(),
            metadata: Some(Metadata { content_feed: Some(own_blobs), user_data: None }),
        };
        db.append(&header.encode()).expect("append");
    }
    let keyfile = tmp.path().join("evil.key");
    std::fs::write(&keyfile, json!({"secretKey": hex::encode(kp.secret_key())}).to_string()).expect("write");
    // Its key imported, the node opens it as a drive first, and refuses it: nothing stored.
    let out = hyperfs_in(&dir, &["keys", "import", keyfile.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("content feed"), "{err}");
    let drives = json_of(&dir, &["drives", "--json"]);
    assert_eq!(drives.as_array().map(Vec::len), Some(1), "only the user's own drive: {drives}");
    let evil = hex::encode(Hypercore::create(Arc::new(MemStore::new()), kp, false).expect("core").key());
    for cmd in [
        vec!["info", evil.as_str()],
        vec!["share", evil.as_str(), "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"],
    ] {
        let out = hyperfs_in(&dir, &cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("content feed"), "{cmd:?}: {err}");
    }
    let info = json_of(&dir, &["info", "mine", "--json"]);
    assert_eq!(info["bytesUploaded"], 0, "nothing of the private drive left the node");
}

/// The same key on two machines writes two histories. A replica that followed one and then
/// meets the other (whose upgrade does not verify from its own tree) asks for that peer's whole
/// tree, finds two signed states that disagree, keeps them as proof, and says so in `info`
/// and `verify`; what it held still reads. (The stored tree was once overwritten by the second
/// history, silently.)
#[test]
fn a_writer_signing_two_histories_is_caught_by_a_replica_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
    let (_sa, _sb, _sc) = (Stop(a.clone()), Stop(b.clone()), Stop(c.clone()));
    let file = |name: &str, text: &str| {
        let p = root.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8").to_owned()
    };
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    hyperfs_in_ok(&a, &["put", &file("one.txt", "first"), "src:/one.txt"]);
    let keyfile = root.join("src.key");
    hyperfs_in_ok(&a, &["keys", "export", "src", keyfile.to_str().expect("utf-8")]);
    let shared =
        json_of(&a, &["share", "src", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"]);
    let (key, addr_a) =
        (shared["key"].as_str().expect("key").to_owned(), shared["address"].as_str().expect("addr").to_owned());
    // B holds the same key with another history, longer than A's.
    // (`--offline-ok`: the way to fork knowingly, which is what this test plays.)
    hyperfs_in_ok(&b, &["keys", "import", keyfile.to_str().expect("utf-8"), "--offline-ok"]);
    let drives = json_of(&b, &["drives", "--json"]);
    let name_b = drives[0]["name"].as_str().expect("name").to_owned();
    for (i, text) in ["other", "history", "here"].iter().enumerate() {
        hyperfs_in_ok(&b, &["put", &file(&format!("b{i}.txt"), text), &format!("{name_b}:/b{i}.txt")]);
    }
    let shared_b =
        json_of(&b, &["share", &name_b, "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"]);
    let addr_b = shared_b["address"].as_str().expect("addr").to_owned();
    // C follows A, then meets B.
    hyperfs_in_ok(&c, &hyperfs_tests::loopback_only(&["clone", &key, "--peer", &addr_a, "--name", "copy"]));
    let before = json_of(&c, &["info", "copy", "--json"]);
    hyperfs_in_ok(&c, &["peers", "--peer", &addr_b]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        let info = json_of(&c, &["info", "copy", "--json"]);
        if !info["db"]["conflict"].is_null() {
            break info;
        }
        assert!(Instant::now() < deadline, "the equivocation was not caught: {info}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let conflict = &info["db"]["conflict"];
    assert_eq!(conflict["ours"]["length"], before["db"]["length"], "{conflict}");
    assert_ne!(conflict["ours"]["treeHash"], conflict["theirs"]["treeHash"]);
    assert_eq!(info["version"], before["version"], "nothing of B's history was taken");
    assert_eq!(hyperfs_in_ok(&c, &["cat", "copy:/one.txt"]), "first", "what C held still reads");
    let out = hyperfs_in(&c, &["verify", "copy"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("two histories"), "{err}");
    assert!(hyperfs_in_ok(&c, &["info", "copy"]).contains("CONFLICT"));
    assert!(hyperfs_in_ok(&c, &["log", "copy"]).contains("CONFLICT"), "log says so too");

    // The writers themselves: each, meeting the other, finds a history of its own key that it
    // did not sign, keeps the proof and stops writing; neither loses a version.
    let version_a = json_of(&a, &["info", "src", "--json"])["version"].clone();
    let version_b = json_of(&b, &["info", &name_b, "--json"])["version"].clone();
    hyperfs_in_ok(&a, &["peers", "--peer", &addr_b]);
    for (node, name) in [(&a, "src"), (&b, name_b.as_str())] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while json_of(node, &["info", name, "--json"])["db"]["conflict"].is_null() {
            assert!(Instant::now() < deadline, "{} did not notice the other writer", node.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = hyperfs_in(node, &["put", &file("late.txt", "late"), &format!("{name}:/late.txt")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("two conflicting histories"), "{err}");
        let log = std::fs::read_to_string(node.join("node.log")).expect("node.log");
        assert!(log.contains("equivocated"), "the node's log says so too: {log}");
    }
    assert_eq!(json_of(&a, &["info", "src", "--json"])["version"], version_a);
    assert_eq!(json_of(&b, &["info", &name_b, "--json"])["version"], version_b);
    assert_eq!(hyperfs_in_ok(&a, &["cat", "src:/one.txt"]), "first");
    assert_eq!(hyperfs_in_ok(&b, &["cat", &format!("{name_b}:/b2.txt")]), "here");
}

/// The proof nodes from `leaf` up to (not including) the node at `depth`: each sibling made up
/// (hash `fill`, one byte per block), as a writer that never wrote those blocks can; and the
/// node at `depth` they hash up to.
fn made_up_path(
    leaf: hyperfs_engine::hypercore::Node,
    depth: u32,
    fill: u8,
) -> (Vec<hyperfs_engine::hypercore::Node>, hyperfs_engine::hypercore::Node) {
    use hyperfs_engine::hypercore::{flat, Node};
    let mut nodes = Vec::new();
    let mut at = leaf;
    while flat::depth(at.index) < depth {
        let s = flat::sibling(at.index);
        let sibling = Node { index: s, size: flat::count_leaves(s), hash: [fill; 32] };
        at = Node::parent(flat::parent(at.index), &at, &sibling);
        nodes.push(sibling);
    }
    (nodes, at)
}

/// A writer signs a length of 2^54 (roots over blocks nobody has) and serves only the drive's
/// header and its last block, which lists one link. Loops over every index of the signed
/// length (the open of a channel, `want`, top-ups, `info`, `verify`, `log`, `core dump`) hung
/// the victim's network workers while they held the drive. Now the victim's node shows the
/// link through a mount, answers `info`, `verify` and `log` at once, and keeps serving.
#[test]
fn a_signed_length_near_2_pow_55_costs_the_victim_nothing() {
    use hyperfs_engine::crypto::KeyPair;
    use hyperfs_engine::drive::keys::blobs_manifest;
    use hyperfs_engine::hyperbee::{Header, Metadata};
    use hyperfs_engine::hypercore::proof::{BlockProof, UpgradeProof};
    use hyperfs_engine::hypercore::{tree, Auth, Manifest, Node, Proof};
    use hyperfs_engine::Hypercore;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let length = 1u64 << 54;
    let kp = KeyPair::from_seed(&[55; 32]);
    let manifest = Manifest::single(kp.public_key());
    let key = manifest.hash();
    let blobs = blobs_manifest(&manifest, &hyperfs_engine::crypto::CoreKey(key)).expect("a v1 manifest");
    let header = Header {
        protocol: "hyperbee".into(),
        metadata: Some(Metadata { content_feed: Some(blobs.hash().to_vec()), user_data: None }),
    }
    .encode();
    let link = Entry { executable: false, linkname: Some("target".into()), blob: None, metadata: None }.encode();
    let last = NodeBlock {
        key: b"files\0/hello".to_vec(),
        value: Some(link),
        levels: vec![Level { keys: vec![length - 1], children: vec![] }],
    }
    .encode();
    // Both halves of the one root are made up, each over the one block it proves.
    let (first_path, left) = made_up_path(Node::leaf(0, &header), 53, 1);
    let (last_path, right) = made_up_path(Node::leaf(length - 1, &last), 53, 2);
    let top = Node::parent(length - 1, &left, &right);
    let signature = Auth::Manifest(manifest.clone()).sign(&kp, &tree::tree_hash(&[top]), length, 0);

    // The attacker's node holds this core as a replica would, and shares it.
    let dir = root.join("attacker");
    let _stop_attacker = Stop(dir.clone());
    hyperfs_in_ok(&dir, &["create", "--name", "decoy"]);
    hyperfs_in_ok(&dir, &["stop"]);
    {
        let store = Arc::new(RocksStore::open(&dir.join("store")).expect("store"));
        let mut core =
            Hypercore::open_replica(store.clone(), hyperfs_engine::crypto::CoreKey(key), Some(manifest.clone()))
                .expect("replica");
        let upgrade = UpgradeProof { start: 0, length, nodes: vec![top], additional_nodes: vec![], signature };
        core.apply_proof(&Proof { upgrade: Some(upgrade), manifest: Some(manifest.encode()), ..Proof::default() })
            .expect("the writer's own signature");
        let mut first_nodes = first_path;
        first_nodes.push(right);
        core.apply_proof(&Proof {
            block: Some(BlockProof { index: 0, value: header, nodes: first_nodes }),
            ..Proof::default()
        })
        .expect("the header");
        let mut last_nodes = last_path;
        last_nodes.push(left);
        core.apply_proof(&Proof {
            block: Some(BlockProof { index: length - 1, value: last, nodes: last_nodes }),
            ..Proof::default()
        })
        .expect("the last block");
        assert_eq!(core.length(), length);
        hyperfs_engine::store::Store::flush(store.as_ref()).expect("flush");
    }
    let key_hex = hex::encode(key);
    let shared = json_of(
        &dir,
        &["share", &key_hex, "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"],
    );
    let addr = shared["address"].as_str().expect("address").to_owned();

    // The victim mounts it, sparse, beside a drive of its own.
    let victim = root.join("victim");
    let _stop_victim = Stop(victim.clone());
    hyperfs_in_ok(&victim, &["create", "--name", "mine"]);
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let started = Instant::now();
    hyperfs_in_ok(
        &victim,
        &hyperfs_tests::loopback_only(&["mount", &key_hex, mnt.to_str().expect("utf-8"), "--peer", &addr]),
    );
    assert_eq!(std::fs::read_link(mnt.join("hello")).expect("the link shows").to_str(), Some("target"));
    let info = json_of(&victim, &["info", &key_hex, "--json"]);
    assert_eq!(info["db"]["length"], length, "{info}");
    // What is held verifies; a dump of every block is refused; the history, whose blocks no
    // peer has, ends with an error once the fetch gives up.
    let run = |cmd: &[&str]| {
        let t = Instant::now();
        let out = hyperfs_in(&victim, cmd);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(t.elapsed() < Duration::from_secs(30), "{cmd:?} ends: {:?}", t.elapsed());
        (out.status.success(), err)
    };
    assert_eq!(run(&["verify", &key_hex]), (true, String::new()), "the two blocks held verify");
    let (ok, err) = run(&["core", "dump", &key_hex]);
    assert!(!ok && err.contains("more than a dump lists"), "{err}");
    let (ok, err) = run(&["log", &key_hex]);
    assert!(!ok && err.contains("block 1 "), "{err}");
    // The node still serves its own drive and the mount still answers.
    let note = root.join("note.txt");
    std::fs::write(&note, "still here").expect("write");
    hyperfs_in_ok(&victim, &["put", note.to_str().expect("utf-8"), "mine:/note.txt"]);
    assert_eq!(hyperfs_in_ok(&victim, &["cat", "mine:/note.txt"]), "still here");
    assert!(std::fs::symlink_metadata(mnt.join("hello")).is_ok());
    hyperfs_in_ok(&victim, &["unmount", mnt.to_str().expect("utf-8")]);
    assert!(started.elapsed() < Duration::from_secs(90), "bounded: {:?}", started.elapsed());
}
