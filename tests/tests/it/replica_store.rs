//! A sparse replica on the real RocksDB store: built only from a writer's proofs, it reopens
//! exactly as it was — signed head, which blocks are local, their bytes.

use std::sync::Arc;

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::{Error, Hypercore};
use hyperfs_tests::pseudo_random;

#[test]
fn sparse_replica_on_rocksdb_reopens_exactly() {
    let wdir = tempfile::tempdir().expect("tempdir");
    let rdir = tempfile::tempdir().expect("tempdir");
    let key;
    let (length, tree_hash, signature, fork);
    {
        let mut w =
            Hypercore::create(Arc::new(RocksStore::open(wdir.path()).expect("store")), KeyPair::generate(), false)
                .expect("writer");
        let blocks: Vec<Vec<u8>> = (0..300u64).map(|i| pseudo_random(1 + (i as usize * 37) % 5000, i)).collect();
        w.append_batch(&blocks[..200]).expect("append");
        w.truncate(150).expect("truncate");
        w.append_batch(&blocks[200..]).expect("append");
        key = *w.key();
        let mut r = Hypercore::open_replica(Arc::new(RocksStore::open(rdir.path()).expect("store")), key, None)
            .expect("replica");
        for i in (0..w.length()).step_by(3) {
            let req = r.block_request(i, w.length()).expect("request");
            r.apply_proof(&w.proof(&req).expect("proof")).expect("verifies");
        }
        (length, tree_hash, signature, fork) = (w.length(), w.tree_hash(), w.signature().to_vec(), w.fork());
        assert_eq!((r.length(), r.tree_hash()), (length, tree_hash));
    }
    let r = Hypercore::open(Arc::new(RocksStore::open(rdir.path()).expect("reopen")), &key)
        .expect("open")
        .expect("the replica is in the store");
    assert_eq!((r.length(), r.fork(), r.tree_hash(), r.signature()), (length, fork, tree_hash, &signature[..]));
    assert!(!r.writable());
    assert_eq!(r.local_blocks(), length.div_ceil(3));
    let w = Hypercore::open(Arc::new(RocksStore::open(wdir.path()).expect("reopen")), &key)
        .expect("open")
        .expect("the writer is in the store");
    assert!(w.writable());
    for i in 0..length {
        if i % 3 == 0 {
            assert_eq!(r.get(i).expect("local block"), w.get(i).expect("writer block"), "block {i}");
        } else {
            assert!(matches!(r.get(i), Err(Error::MissingBlock { index }) if index == i), "block {i}");
        }
    }
    assert!(r.verify_local().expect("verifies").is_empty());
    assert!(w.verify_local().expect("verifies").is_empty());
}
