//! Drives across hyperfs and JS hyperdrive@13 in both directions. The cores travel as the proofs
//! a replica asking for every block in order would receive; each side verifies every proof (and
//! so every signature and tree) before reading the drive, and both must list the same entries
//! with the same contents.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyperfs_engine::crypto::{self, Hash};
use hyperfs_engine::drive::{keys, Drive, PutOptions};
use hyperfs_engine::hypercore::proof::{BlockProof, Request, RequestUpgrade, UpgradeProof};
use hyperfs_engine::hypercore::{Manifest, Node, Proof};
use hyperfs_engine::store::{MemStore, RocksStore, Store};
use hyperfs_engine::Hypercore;
use hyperfs_tests::{js_dir, pseudo_random};
use serde_json::{json, Value};

fn nodes_out(ns: &[Node]) -> Value {
    ns.iter().map(|n| json!({"index": n.index, "size": n.size, "hash": hex::encode(n.hash)})).collect()
}

fn nodes_in(v: &Value) -> Vec<Node> {
    v.as_array()
        .expect("nodes")
        .iter()
        .map(|n| Node {
            index: n["index"].as_u64().expect("index"),
            size: n["size"].as_u64().expect("size"),
            hash: hex::decode(n["hash"].as_str().expect("hash")).expect("hex").try_into().expect("32 bytes"),
        })
        .collect()
}

/// A core as the proofs a fresh replica needs, block by block, checked by a mirror replica.
fn carry_out(w: &Hypercore) -> Value {
    let mut mirror = Hypercore::open_replica(Arc::new(MemStore::new()), *w.key(), None).expect("mirror");
    let mut proofs = Vec::new();
    let req = Request {
        fork: 0,
        upgrade: Some(RequestUpgrade { start: 0, length: w.length() }),
        manifest: true,
        ..Request::default()
    };
    let p = w.proof(&req).expect("upgrade proof");
    mirror.apply_proof(&p).expect("mirror takes the upgrade");
    let u = p.upgrade.as_ref().expect("upgrade");
    proofs.push(json!({"fork": p.fork, "upgrade": {"start": u.start, "length": u.length, "nodes": nodes_out(&u.nodes),
        "additionalNodes": nodes_out(&u.additional_nodes), "signature": hex::encode(&u.signature)}, "manifest": true}));
    for i in 0..w.length() {
        let p = w.proof(&mirror.block_request(i, w.length()).expect("request")).expect("block proof");
        mirror.apply_proof(&p).expect("mirror takes the block");
        let b = p.block.as_ref().expect("block");
        proofs.push(json!({"fork": p.fork, "block": {"index": b.index, "value": hex::encode(&b.value),
            "nodes": nodes_out(&b.nodes)}, "manifest": false}));
    }
    json!({"key": hex::encode(w.key()), "manifest": hex::encode(w.manifest().expect("manifest").encode()), "proofs": proofs})
}

/// Applies a carried core's proofs to a new replica in `store`; every one must verify.
fn carry_in(store: Arc<dyn Store>, core: &Value) -> Hash {
    let key: Hash = hex::decode(core["key"].as_str().expect("key")).expect("hex").try_into().expect("32 bytes");
    let manifest_bytes = hex::decode(core["manifest"].as_str().expect("manifest")).expect("hex");
    let manifest = Manifest::decode(&manifest_bytes).expect("manifest decodes");
    let mut r = Hypercore::open_replica(store, hyperfs_engine::crypto::CoreKey(key), Some(manifest)).expect("replica");
    for p in core["proofs"].as_array().expect("proofs") {
        let upgrade = p.get("upgrade").filter(|u| !u.is_null()).map(|u| UpgradeProof {
            start: u["start"].as_u64().expect("start"),
            length: u["length"].as_u64().expect("length"),
            nodes: nodes_in(&u["nodes"]),
            additional_nodes: nodes_in(&u["additionalNodes"]),
            signature: hex::decode(u["signature"].as_str().expect("signature")).expect("hex"),
        });
        let block = p.get("block").filter(|b| !b.is_null()).map(|b| BlockProof {
            index: b["index"].as_u64().expect("index"),
            value: hex::decode(b["value"].as_str().expect("value")).expect("hex"),
            nodes: nodes_in(&b["nodes"]),
        });
        let proof = Proof {
            fork: p["fork"].as_u64().expect("fork"),
            block,
            hash: None,
            seek: None,
            upgrade,
            manifest: p["manifest"].as_bool().unwrap_or(false).then(|| manifest_bytes.clone()),
        };
        r.apply_proof(&proof).expect("a proof from JS verifies in hyperfs");
    }
    assert!(r.verify_local().expect("verify").is_empty(), "every carried block re-hashes");
    key
}

/// The drive as `drive-interop.js` describes it.
fn describe(d: &Drive) -> Value {
    let mut entries = Vec::new();
    for (path, e) in d.list("/").expect("list") {
        let data = if e.blob.is_some() { d.get(&path).expect("get").expect("file") } else { Vec::new() };
        entries.push(json!({
            "path": path,
            "executable": e.executable,
            "linkname": e.linkname,
            "metadata": e.metadata,
            "blockMap": e.blob.is_some_and(|b| b.block_map),
            "size": data.len(),
            "hash": hex::encode(crypto::hash(&[&data])),
        }));
    }
    json!({"db": hex::encode(d.key()), "blobs": hex::encode(d.blobs().key()), "entries": entries,
        "readdir": d.readdir("/").expect("readdir")})
}

fn node_json(args: &[&str]) -> Value {
    let dir = js_dir();
    let out = std::process::Command::new("node")
        .arg(dir.join("drive-interop.js"))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("spawn node");
    assert!(out.status.success(), "drive-interop.js {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The files both directions write: every kind of entry a drive holds.
fn files() -> BTreeMap<&'static str, Vec<u8>> {
    let big = pseudo_random(50 << 20, 50);
    let mut edited = big[..3 << 20].to_vec();
    edited[1_000_000] ^= 1;
    BTreeMap::from([
        ("/hello.txt", b"hi there".to_vec()),
        ("/empty", Vec::new()),
        ("/big/fifty.bin", big.clone()),
        ("/big/first-3-mib.bin", big[..3 << 20].to_vec()),
        ("/big/edited.bin", edited),
        ("/deep/a/b/c/d.txt", b"nested".to_vec()),
        ("/ünïcødé/名前 with space.txt", "ünï".as_bytes().to_vec()),
        ("/bin/tool", b"#!/bin/sh\necho hi\n".to_vec()),
        ("/gone.txt", b"deleted later".to_vec()),
    ])
}

#[test]
fn a_drive_written_by_hyperfs_reads_the_same_in_js() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&dir.path().join("store")).expect("store"));
    let mut d = Drive::create(store, keys::drive_key_pair(&[0x21; 32], Some("interop"))).expect("drive");
    for (path, data) in files() {
        let opts = PutOptions {
            executable: path == "/bin/tool",
            metadata: (path == "/hello.txt").then(|| json!({"mode": 420, "mtime": 1_700_000_000_000u64})),
        };
        d.put(path, &data, &opts).expect("put");
    }
    d.symlink("/link", "/hello.txt", None).expect("symlink");
    d.symlink("/deep/up", "../hello.txt", None).expect("symlink");
    assert!(d.del("/gone.txt").expect("del"));
    let ours = describe(&d);
    let mapped = ours["entries"].as_array().expect("entries").iter().filter(|e| e["blockMap"] == true).count();
    assert!(mapped >= 2, "the copy and the edited file reuse chunks: {ours}");

    let carried = json!({"db": hex::encode(d.key()), "cores": [carry_out(d.db().core()), carry_out(d.blobs())]});
    let path = dir.path().join("carried.json");
    std::fs::write(&path, serde_json::to_vec(&carried).expect("json")).expect("write");
    let js = node_json(&["read", dir.path().join("js").to_str().expect("utf-8"), path.to_str().expect("utf-8")]);
    assert_eq!(js, ours);
}

#[test]
fn a_drive_written_by_js_reads_the_same_in_hyperfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ops = Vec::new();
    for (i, (path, data)) in files().into_iter().enumerate() {
        let file = dir.path().join(format!("f{i}"));
        std::fs::write(&file, data).expect("write");
        ops.push(json!({"put": path, "file": file, "executable": path == "/bin/tool",
            "metadata": if path == "/hello.txt" { json!({"mode": 420}) } else { Value::Null }}));
    }
    ops.push(json!({"symlink": "/link", "target": "/hello.txt"}));
    ops.push(json!({"del": "/gone.txt"}));
    let spec = json!({"primaryKey": hex::encode([0x31u8; 32]), "ops": ops});
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("json")).expect("write");
    let written =
        node_json(&["write", dir.path().join("js").to_str().expect("utf-8"), spec_path.to_str().expect("utf-8")]);

    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&dir.path().join("store")).expect("store"));
    let carried = &written["carried"];
    for core in carried["cores"].as_array().expect("cores") {
        carry_in(store.clone(), core);
    }
    let key: Hash = hex::decode(carried["db"].as_str().expect("db")).expect("hex").try_into().expect("32 bytes");
    let d = Drive::open(store, &hyperfs_engine::crypto::CoreKey(key)).expect("open").expect("the carried drive");
    assert!(!d.writable());
    assert_eq!(describe(&d), written["drive"]);
    // The JS drive's key comes from Corestore's derivation, as hyperfs derives it.
    let kp = keys::drive_key_pair(&[0x31; 32], None);
    assert_eq!(d.key().0, Manifest::single(kp.public_key()).hash());
}
