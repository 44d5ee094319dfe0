//! `hyperfs core dump`, `keys export` and `keys import` through the real binary and its node.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hyperfs_engine::crypto::z32_encode;
use hyperfs_engine::hyperbee::NodeBlock;
use hyperfs_tests::{hyperfs, hyperfs_in, hyperfs_in_ok};
use serde_json::Value;

fn ok(dir: &Path, args: &[&str]) -> String {
    hyperfs_in_ok(dir, args)
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = hyperfs_in(dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn a_drive_key_moves_safely_refused_where_the_drive_is_not_held_and_writable_after_a_clone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let created: Value = serde_json::from_str(&ok(&a, &["create", "--json"])).expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    let file = tmp.path().join("x.txt");
    std::fs::write(&file, "hello").expect("write");
    ok(&a, &["put", file.to_str().expect("utf-8"), &format!("{key}:/x.txt")]);

    // The dump shows the db core as stored, under any spelling of its key.
    let raw: [u8; 32] = hex::decode(&key).expect("hex").try_into().expect("32 bytes");
    let link = format!("hyper://{}", z32_encode(&raw));
    for spelling in [key.clone(), link, z32_encode(&raw)] {
        let dump: Value = serde_json::from_str(&ok(&a, &["core", "dump", &spelling, "--json"])).expect("json");
        assert_eq!(dump["key"], key.as_str());
        assert_eq!(dump["length"], 2, "header and one entry");
        assert_eq!(dump["fork"], 0);
        assert!(dump["manifest"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(dump["signature"].as_str().map(str::len), Some(2 * 68));
        let entry = hex::decode(dump["blocks"][1].as_str().expect("block")).expect("hex");
        assert_eq!(NodeBlock::decode(&entry).expect("a bee node").key, b"files\0/x.txt");
    }

    let keyfile = tmp.path().join("drive.key");
    ok(&a, &["keys", "export", &key, keyfile.to_str().expect("utf-8")]);
    assert_eq!(std::fs::metadata(&keyfile).expect("key file").permissions().mode() & 0o777, 0o600);
    assert!(fails(&a, &["keys", "export", &key, keyfile.to_str().expect("utf-8")]).contains("never overwritten"));

    // On a node that never held the drive, importing the key would start a second history
    // under it (a fork for every follower): refused, with the safe path.
    let err = fails(&b, &["keys", "import", keyfile.to_str().expect("utf-8")]);
    assert!(err.contains("does not hold drive") && err.contains("clone it first"), "{err}");
    // The safe path: clone the drive from its writer, then import the key.
    let shared: Value = serde_json::from_str(&ok(
        &a,
        &["share", &key, "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"],
    ))
    .expect("json");
    let addr = shared["address"].as_str().expect("address");
    ok(&b, &["clone", &key, "--peer", addr, "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"]);
    ok(&a, &["stop"]);
    let imported = ok(&b, &["keys", "import", keyfile.to_str().expect("utf-8")]);
    assert_eq!(imported.trim(), key);
    // Writable on b, on top of a's history: a put by key succeeds there, and both files read.
    ok(&b, &["put", file.to_str().expect("utf-8"), &format!("{key}:/y.txt")]);
    let drives: Value = serde_json::from_str(&ok(&b, &["drives", "--json"])).expect("json");
    assert_eq!(drives[0]["key"], key.as_str());
    let name = drives[0]["name"].as_str().expect("name").to_owned();
    for f in ["x.txt", "y.txt"] {
        let out = hyperfs(&["--data-dir", b.to_str().expect("utf-8"), "cat", &format!("{name}:/{f}")]);
        assert_eq!(out.stdout, b"hello", "{f}");
    }
    let info: Value = serde_json::from_str(&ok(&b, &["info", &name, "--json"])).expect("json");
    assert_eq!(info["version"], 3, "a's two blocks and b's one: one history");
    assert_eq!(info["writable"], true);
    ok(&b, &["stop"]);
}

#[test]
fn key_commands_explain_bad_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("data");
    assert!(fails(&d, &["core", "dump", "not-a-key", "--json"]).contains("is not a key"));
    assert!(fails(&d, &["core", "dump", &"ab".repeat(32), "--json"]).contains("no core"));
    assert!(fails(&d, &["keys", "export", &"ab".repeat(32), "/tmp/never-written.key"]).contains("no drive"));
    assert!(fails(&d, &["keys", "import", "/nonexistent/file.key"]).contains("reading"));
    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, r#"{"secretKey": "00"}"#).expect("write");
    assert!(fails(&d, &["keys", "import", bad.to_str().expect("utf-8")]).contains("no valid"));
    ok(&d, &["stop"]);
}
