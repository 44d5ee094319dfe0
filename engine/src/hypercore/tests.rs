use std::sync::Arc;

use super::proof::{Request, RequestIndexed, RequestUpgrade};
use super::*;
use crate::store::MemStore;

fn mem() -> Arc<dyn Store> {
    Arc::new(MemStore::new())
}

fn writer(compat: bool) -> Hypercore {
    Hypercore::create(mem(), KeyPair::from_seed(&[1; 32]), compat).expect("create")
}

#[test]
fn reference_vector_non_compat() {
    let mut c = writer(false);
    c.append_batch(&[&b"hello"[..], b"world", b"!"])
        .expect("append");
    assert_eq!(
        hex::encode(c.key()),
        "d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72"
    );
    assert_eq!(
        hex::encode(c.discovery_key()),
        "fb892b1c77fdcb05dcbd234607208b7036e00a13e7f2cc0bbaa463924e57865a"
    );
    assert_eq!(
        hex::encode(c.tree_hash()),
        "8b512f5301c09f0e0e21a0c71c98fce14ddcc51125f4dfd8303fa22c75858aff"
    );
    assert_eq!(
        hex::encode(c.signature()),
        "0100ef90c38a7498eba2369e467f926fe785e962d8c781703766863ac4703d8a403c\
         4eea5634e581eabd45ec85239a9259af64bd825bd943376d4f8e2daa8aa4bb080000"
    );
    assert_eq!((c.length(), c.byte_length(), c.fork()), (3, 11, 0));
    c.truncate(2).expect("truncate");
    c.append(b"!!").expect("append");
    assert_eq!((c.length(), c.byte_length(), c.fork()), (3, 12, 1));
    assert_eq!(
        hex::encode(c.tree_hash()),
        "06bedb5030b90e1508d8ed3b628106f6ec6e29de21c89eafdc0f3d8cfd3c26dc"
    );
    assert_eq!(
        hex::encode(c.signature()),
        "0100e453e4ab112941886083399a0ec8dae933607634395a2e424f8268dc198ecb88\
         508f77bbe1d11385d9ab7a0d410d389548b37a27ba27da992dcd5a8daaa4d00c0000"
    );
    assert_eq!(c.get(2).expect("get"), b"!!");
}

#[test]
fn reference_vector_compat() {
    let mut c = writer(true);
    c.append_batch(&[&b"hello"[..], b"world", b"!"])
        .expect("append");
    assert_eq!(
        hex::encode(c.key()),
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    );
    assert_eq!(
        hex::encode(c.discovery_key()),
        "c1feb82a2b3ba065ffed9f6addcf19ac250793bcab748986a1b4272c62da20e6"
    );
    assert_eq!(
        hex::encode(c.signature()),
        "69007adaf256c3f0b5ac955e73dd8e8a40cb05f29b92efc354adda01047f896d\
         ab46d4ec922907544712c4933c2291afb2deefa16c611f36fc91aed4ea79ff02"
    );
    c.truncate(2).expect("truncate");
    c.append(b"!!").expect("append");
    assert_eq!(
        hex::encode(c.signature()),
        "d27449e2ffc2f6dafc34950331439f7dbbafb39821f7e359e264a912c46e3382\
         600527a69e6bd636590b220dda30a0902a4e08216fba841d6c0efa3e5b5ed001"
    );
}

#[test]
fn worked_example_proof_shape() {
    let mut c = writer(false);
    c.append_batch(&[&b"hello"[..], b"world", b"!"])
        .expect("append");
    let req = Request {
        block: Some(RequestIndexed { index: 0, nodes: 0 }),
        upgrade: Some(RequestUpgrade {
            start: 0,
            length: 3,
        }),
        manifest: true,
        ..Request::default()
    };
    let p = c.proof(&req).expect("proof");
    let b = p.block.as_ref().expect("block");
    assert_eq!(b.nodes.iter().map(|n| n.index).collect::<Vec<_>>(), vec![2]);
    let up = p.upgrade.as_ref().expect("upgrade");
    assert_eq!(
        up.nodes.iter().map(|n| n.index).collect::<Vec<_>>(),
        vec![4]
    );
    assert!(up.additional_nodes.is_empty());

    let mut r = Hypercore::open_replica(mem(), *c.key(), None).expect("replica");
    let applied = r.apply_proof(&p).expect("verifies");
    assert_eq!(applied.upgraded_to, Some(3));
    assert_eq!(r.get(0).expect("block 0"), b"hello");
    assert!(matches!(r.get(1), Err(Error::MissingBlock { index: 1 })));
    assert_eq!(r.tree_hash(), c.tree_hash());
}

#[test]
fn snapshot_keeps_its_length_and_notices_truncation() {
    let mut c = writer(false);
    c.append_batch(&[&b"a"[..], b"b", b"c"]).expect("append");
    let s = c.snapshot();
    c.append(b"d").expect("append");
    assert_eq!(s.length(), 3);
    assert!(s.get(3).is_err());
    assert_eq!(s.get(2).expect("get"), b"c");
    c.truncate(1).expect("truncate");
    assert_eq!(s.get(0).expect("still valid"), b"a");
    assert!(matches!(s.get(2), Err(Error::StaleSnapshot { index: 2 })));
}

#[test]
fn seek_and_byte_offset() {
    let mut c = writer(false);
    let blocks: Vec<Vec<u8>> = (0..37u8).map(|i| vec![i; i as usize + 1]).collect();
    c.append_batch(&blocks).expect("append");
    let mut offset = 0u64;
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(c.byte_offset(i as u64).expect("offset"), offset);
        assert_eq!(c.seek(offset).expect("seek"), (i as u64, 0));
        assert_eq!(
            c.seek(offset + b.len() as u64 - 1).expect("seek"),
            (i as u64, b.len() as u64 - 1)
        );
        offset += b.len() as u64;
    }
    assert!(c.seek(offset).is_err());
}

#[test]
fn replica_is_not_writable_and_rejects_foreign_manifest() {
    let c = writer(false);
    let mut r = Hypercore::open_replica(mem(), *c.key(), None).expect("replica");
    assert!(matches!(r.append(b"x"), Err(Error::NotWritable)));
    let other = Manifest::single([9; 32]);
    assert!(Hypercore::open_replica(mem(), *c.key(), Some(other)).is_err());
}
