//! `hyperfs core dump`, `keys export` and `keys import` through the real binary on a real data
//! directory.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use hyperfs_engine::crypto::z32_encode;
use hyperfs_engine::drive::{keys, Drive, PutOptions};
use hyperfs_engine::store::RocksStore;
use hyperfs_tests::{hyperfs, hyperfs_ok};
use serde_json::Value;

#[test]
fn a_drive_key_exported_and_imported_makes_the_drive_writable_elsewhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (key, blobs_key) = {
        let store = Arc::new(RocksStore::open(&a.join("store")).expect("store"));
        let mut d = Drive::create(store, keys::drive_key_pair(&[0x51; 32], None)).expect("drive");
        d.put("/x.txt", b"hello", &PutOptions::default()).expect("put");
        (*d.key(), *d.blobs().key())
    };
    let dir = |d: &std::path::Path| d.to_str().expect("utf-8").to_owned();

    // The dump shows the core as stored, under any spelling of its key.
    let dump: Value =
        serde_json::from_str(&hyperfs_ok(&["--data-dir", &dir(&a), "core", "dump", &hex::encode(blobs_key), "--json"]))
            .expect("json");
    assert_eq!(dump["length"], 1);
    assert_eq!(dump["blocks"][0], hex::encode(b"hello"));
    assert_eq!(dump["fork"], 0);
    assert!(dump["manifest"].as_str().is_some_and(|m| !m.is_empty()));
    let link = format!("hyper://{}", z32_encode(&key));
    let db: Value =
        serde_json::from_str(&hyperfs_ok(&["--data-dir", &dir(&a), "core", "dump", &link, "--json"])).expect("json");
    assert_eq!(db["key"], hex::encode(key));
    assert_eq!(db["length"], 2);

    let file = tmp.path().join("drive.key");
    hyperfs_ok(&["--data-dir", &dir(&a), "keys", "export", &hex::encode(key), file.to_str().expect("utf-8")]);
    assert_eq!(std::fs::metadata(&file).expect("key file").permissions().mode() & 0o777, 0o600);
    let again = hyperfs(&["--data-dir", &dir(&a), "keys", "export", &hex::encode(key), file.to_str().expect("utf-8")]);
    assert!(!again.status.success(), "an existing key file was overwritten");

    let imported = hyperfs_ok(&["--data-dir", &dir(&b), "keys", "import", file.to_str().expect("utf-8")]);
    assert_eq!(imported.trim(), hex::encode(key));
    let store = Arc::new(RocksStore::open(&b.join("store")).expect("store"));
    let mut d = Drive::open(store, &key).expect("open").expect("imported drive");
    assert!(d.writable());
    d.put("/y.txt", b"written on b", &PutOptions::default()).expect("a write on the importing node");
}

#[test]
fn key_commands_explain_bad_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().to_str().expect("utf-8");
    for (args, says) in [
        (vec!["core", "dump", "not-a-key", "--json"], "is not a key"),
        (vec!["core", "dump", &"ab".repeat(32), "--json"], "no core"),
        (vec!["keys", "export", &"ab".repeat(32), "/tmp/never-written.key"], "no drive"),
        (vec!["keys", "import", "/nonexistent/file.key"], "reading"),
    ] {
        let mut all = vec!["--data-dir", d];
        all.extend(args.iter().copied());
        let out = hyperfs(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, r#"{"secretKey": "00"}"#).expect("write");
    let out = hyperfs(&["--data-dir", d, "keys", "import", bad.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no valid"));
}
