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
    c.append_batch(&[&b"hello"[..], b"world", b"!"]).expect("append");
    assert_eq!(hex::encode(c.key()), "d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72");
    assert_eq!(hex::encode(c.discovery_key()), "fb892b1c77fdcb05dcbd234607208b7036e00a13e7f2cc0bbaa463924e57865a");
    assert_eq!(hex::encode(c.tree_hash()), "8b512f5301c09f0e0e21a0c71c98fce14ddcc51125f4dfd8303fa22c75858aff");
    assert_eq!(
        hex::encode(c.signature()),
        "0100ef90c38a7498eba2369e467f926fe785e962d8c781703766863ac4703d8a403c\
         4eea5634e581eabd45ec85239a9259af64bd825bd943376d4f8e2daa8aa4bb080000"
    );
    assert_eq!((c.length(), c.byte_length(), c.fork()), (3, 11, 0));
    c.truncate(2).expect("truncate");
    c.append(b"!!").expect("append");
    assert_eq!((c.length(), c.byte_length(), c.fork()), (3, 12, 1));
    assert_eq!(hex::encode(c.tree_hash()), "06bedb5030b90e1508d8ed3b628106f6ec6e29de21c89eafdc0f3d8cfd3c26dc");
    assert_eq!(
        hex::encode(c.signature()),
        "0100e453e4ab112941886083399a0ec8dae933607634395a2e424f8268dc198ecb88\
         508f77bbe1d11385d9ab7a0d410d389548b37a27ba27da992dcd5a8daaa4d00c0000"
    );
    assert_eq!(c.get(2).expect("get"), b"!!");
}

#[test]
fn a_head_signed_on_demand_is_the_signature_an_eager_append_makes() {
    let store = mem();
    let kp = KeyPair::from_seed(&[1; 32]);
    let mut c = Hypercore::create(store.clone(), kp.clone(), false).expect("create");
    c.append_batch(&[&b"hello"[..], b"world", b"!"]).expect("append");
    let key = *c.key();
    drop(c);
    // Reopened before anything asked for it: the head was stored unsigned, and is signed now.
    let c = Hypercore::open(store.clone(), &key).expect("open").expect("core");
    let expected = Auth::Manifest(Manifest::single(kp.public_key())).sign(&kp, &c.tree_hash(), 3, 0);
    assert_eq!(c.signature(), &expected[..]);
    assert_eq!(
        hex::encode(c.signature()),
        "0100ef90c38a7498eba2369e467f926fe785e962d8c781703766863ac4703d8a403c\
         4eea5634e581eabd45ec85239a9259af64bd825bd943376d4f8e2daa8aa4bb080000"
    );
    assert_eq!(c.verify_local().expect("verifies"), Vec::<u64>::new());
    // A replica that only has the key accepts the upgrade the deferred signature is part of.
    let up = c
        .proof(&Request { upgrade: Some(RequestUpgrade { start: 0, length: 3 }), manifest: true, ..Request::default() })
        .expect("upgrade");
    let mut r = Hypercore::open_replica(mem(), key, None).expect("replica");
    r.apply_proof(&up).expect("the deferred signature verifies");
    assert_eq!(r.signature(), c.signature());
    // An unsigned head without the key that could sign it is refused, not served unsigned.
    let rec = store.get(Table::Cores, &key.0).expect("get").expect("record");
    let mut b = Batch::default();
    let unkeyed = Hypercore { key_pair: None, ..Hypercore::open(store.clone(), &key).expect("open").expect("core") };
    b.put(Table::Cores, key.to_vec(), unkeyed.encode_record());
    store.write(b).expect("write");
    assert!(matches!(Hypercore::open(store.clone(), &key), Err(Error::Verification(_))));
    let mut b = Batch::default();
    b.put(Table::Cores, key.to_vec(), rec);
    store.write(b).expect("write");
}

#[test]
fn reference_vector_compat() {
    let mut c = writer(true);
    c.append_batch(&[&b"hello"[..], b"world", b"!"]).expect("append");
    assert_eq!(hex::encode(c.key()), "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c");
    assert_eq!(hex::encode(c.discovery_key()), "c1feb82a2b3ba065ffed9f6addcf19ac250793bcab748986a1b4272c62da20e6");
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
    c.append_batch(&[&b"hello"[..], b"world", b"!"]).expect("append");
    let req = Request {
        block: Some(RequestIndexed { index: 0, nodes: 0 }),
        upgrade: Some(RequestUpgrade { start: 0, length: 3 }),
        manifest: true,
        ..Request::default()
    };
    let p = c.proof(&req).expect("proof");
    let b = p.block.as_ref().expect("block");
    assert_eq!(b.nodes.iter().map(|n| n.index).collect::<Vec<_>>(), vec![2]);
    let up = p.upgrade.as_ref().expect("upgrade");
    assert_eq!(up.nodes.iter().map(|n| n.index).collect::<Vec<_>>(), vec![4]);
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
fn checkout_reads_the_core_as_it_was_at_a_length() {
    let mut c = writer(false);
    let blocks: Vec<Vec<u8>> = (0..11u8).map(|i| vec![i; i as usize + 1]).collect();
    c.append_batch(&blocks).expect("append");
    for len in 0..=11u64 {
        let s = c.checkout(len).expect("checkout");
        assert_eq!(s.length(), len);
        assert_eq!(s.byte_length(), (1..=len).sum::<u64>(), "length {len}");
        for i in 0..len {
            assert_eq!(s.get(i).expect("block"), blocks[i as usize]);
        }
        assert!(matches!(s.get(len), Err(Error::OutOfBounds(_))));
    }
    assert!(c.checkout(12).is_err());
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
        assert_eq!(c.seek(offset + b.len() as u64 - 1).expect("seek"), (i as u64, b.len() as u64 - 1));
        offset += b.len() as u64;
    }
    assert!(c.seek(offset).is_err());
}

/// A replica holding only the signed roots finds every byte of a 37-block core by seek
/// requests the writer answers: at most two rounds each, and only tree nodes travel.
#[test]
fn a_sparse_replica_seeks_through_seek_requests() {
    let mut w = writer(false);
    let blocks: Vec<Vec<u8>> = (0..37u8).map(|i| vec![i; (i as usize * 7) % 50 + 1]).collect();
    w.append_batch(&blocks).expect("append");
    let total: u64 = blocks.iter().map(|b| b.len() as u64).sum();
    for bytes in 0..total {
        let mut r = upgraded_replica(&w);
        let mut rounds = 0;
        while let Some(req) = r.seek_request(bytes).expect("request") {
            rounds += 1;
            assert!(rounds <= 2, "byte {bytes} took more than two rounds");
            let p = w.proof(&req).expect("the writer answers");
            assert!(p.block.is_none(), "a seek carries no block data");
            r.apply_proof(&p).expect("the seek proof verifies");
        }
        assert_eq!(r.seek(bytes).expect("seek"), w.seek(bytes).expect("seek"), "byte {bytes}");
        assert_eq!(r.local_blocks(), 0);
    }
    // A seek proof that lies about a node is refused.
    let mut r = upgraded_replica(&w);
    let req = r.seek_request(total / 2).expect("request").expect("needs nodes");
    let mut p = w.proof(&req).expect("proof");
    let s = p.seek.as_mut().expect("a seek part");
    s.nodes[0].size += 1;
    assert!(matches!(r.apply_proof(&p), Err(Error::Verification(_))));
    assert!(r.seek_request(total / 2).expect("request").is_some(), "nothing of the lie was stored");
}
/// Two cores of one key pair on two stores (the same key on two machines), with these blocks.
fn two_writers(seed: u8, a_blocks: &[&[u8]], b_blocks: &[&[u8]]) -> (Hypercore, Hypercore) {
    let kp = KeyPair::from_seed(&[seed; 32]);
    let mut a = Hypercore::create(mem(), kp.clone(), false).expect("create");
    let mut b = Hypercore::create(mem(), kp, false).expect("create");
    a.append_batch(a_blocks).expect("append");
    b.append_batch(b_blocks).expect("append");
    (a, b)
}

/// The same key on two machines signs two histories for one fork. A replica that holds one
/// and is shown the other keeps the proof, stops taking data from that fork, and still has it
/// after a reopen; nothing of the second history is stored (its nodes once overwrote ours).
#[test]
fn two_histories_signed_for_one_fork_are_caught_and_kept() {
    let (mut a, mut b) = two_writers(9, &[b"same", b"from a"], &[b"same", b"from b"]);
    let upgrade = |w: &Hypercore, start: u64| Request {
        upgrade: Some(RequestUpgrade { start, length: w.length() - start }),
        manifest: start == 0,
        ..Request::default()
    };
    let store = mem();
    let mut r = Hypercore::open_replica(store.clone(), *a.key(), None).expect("replica");
    r.apply_proof(&a.proof(&upgrade(&a, 0)).expect("proof")).expect("a's history verifies");
    let before = (r.tree_hash(), r.leaf(1).expect("node"));
    // The same length with another tree.
    let err = r.apply_proof(&b.proof(&upgrade(&b, 0)).expect("proof")).expect_err("equivocation");
    assert!(matches!(err, Error::Equivocation { fork: 0, .. }), "{err}");
    assert_eq!((r.tree_hash(), r.leaf(1).expect("node")), before, "nothing of b's history is stored");
    let c = r.conflict().expect("the proof is kept").clone();
    assert_eq!((c.ours.length, c.theirs.length), (2, 2));
    assert_ne!(c.ours.tree_hash, c.theirs.tree_hash);
    let auth = r.auth().expect("manifest").clone();
    assert!(auth.verify(&c.ours.signature, &c.ours.tree_hash, 2, 0), "our half verifies");
    assert!(auth.verify(&c.theirs.signature, &c.theirs.tree_hash, 2, 0), "their half verifies");
    // b grows: a longer history whose nodes differ from ours is caught too.
    b.append(b"more").expect("append");
    assert!(matches!(r.apply_proof(&b.proof(&upgrade(&b, 0)).expect("proof")), Err(Error::Equivocation { .. })));
    // Even a's own later data is refused on that fork, after a reopen too.
    a.append(b"later").expect("append");
    let r = Hypercore::open(store, a.key()).expect("open").expect("held");
    assert_eq!(r.conflict(), Some(&c));
    let mut r = r;
    assert!(matches!(r.apply_proof(&a.proof(&upgrade(&a, 0)).expect("proof")), Err(Error::Equivocation { .. })));

    // Histories of one length whose trees differ below the roots: the node is named.
    let mut r2 = Hypercore::open_replica(mem(), *a.key(), None).expect("replica");
    r2.apply_proof(&a.proof(&upgrade(&a, 0)).expect("proof")).expect("a");
    assert!(matches!(r2.apply_proof(&b.proof(&upgrade(&b, 0)).expect("proof")), Err(Error::Equivocation { .. })));
    assert!(r2.conflict().expect("kept").node.is_some(), "a differing node is named");
}

#[test]
fn replica_is_not_writable_and_rejects_foreign_manifest() {
    let c = writer(false);
    let mut r = Hypercore::open_replica(mem(), *c.key(), None).expect("replica");
    assert!(matches!(r.append(b"x"), Err(Error::NotWritable)));
    let other = Manifest::single([9; 32]);
    assert!(Hypercore::open_replica(mem(), *c.key(), Some(other)).is_err());
}

#[test]
fn hostile_indexes_are_refused_without_panicking() {
    let mut c = writer(false);
    c.append_batch(&[&b"a"[..], b"b", b"c"]).expect("append");
    let mut r = Hypercore::open_replica(mem(), *c.key(), None).expect("replica");
    for index in [u64::MAX, u64::MAX - 1, 1 << 62, (1 << 56) + 1] {
        let p = Proof {
            hash: Some(super::proof::HashProof { index, nodes: vec![Node { index, size: 1, hash: [0; 32] }] }),
            ..Proof::default()
        };
        assert!(r.apply_proof(&p).is_err());
        let p = Proof {
            upgrade: Some(super::proof::UpgradeProof {
                start: 0,
                length: index / 2,
                nodes: vec![],
                additional_nodes: vec![],
                signature: vec![],
            }),
            ..Proof::default()
        };
        assert!(r.apply_proof(&p).is_err());
        let req = Request { block: Some(RequestIndexed { index, nodes: index }), ..Request::default() };
        assert!(c.proof(&req).is_err());
    }
}

mod props {
    use super::*;
    use crate::hypercore::proof::RequestSeek;
    use proptest::prelude::*;

    /// Asks `w` for block `i` the way a replica does (with an upgrade when it lags) and applies it.
    fn fetch(r: &mut Hypercore, w: &Hypercore, i: u64) -> Proof {
        let req = r.block_request(i, w.length()).expect("request");
        let p = w.proof(&req).expect("writer answers every valid request");
        r.apply_proof(&p).unwrap_or_else(|e| panic!("proof for block {i} must verify: {e}"));
        p
    }

    fn blocks_strategy() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..9), 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn replica_built_from_proofs_matches_the_writer(
            batches in blocks_strategy(),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..12),
            compat in any::<bool>(),
        ) {
            let mut w = Hypercore::create(mem(), KeyPair::from_seed(&[7; 32]), compat).expect("create");
            let mut r = Hypercore::open_replica(mem(), *w.key(), None).expect("replica");
            for batch in &batches {
                w.append_batch(batch).expect("append");
                // Sparse reads at random places, some before and some inside the upgrade.
                for pick in &picks {
                    let i = pick.index(w.length() as usize) as u64;
                    fetch(&mut r, &w, i);
                    prop_assert_eq!(r.get(i).expect("fetched"), w.get(i).expect("local"));
                }
            }
            prop_assert_eq!(r.length(), w.length());
            prop_assert_eq!(r.tree_hash(), w.tree_hash());
            for i in 0..w.length() {
                if !r.has(i) {
                    fetch(&mut r, &w, i);
                }
                prop_assert_eq!(r.get(i).expect("block"), w.get(i).expect("block"));
            }
            prop_assert_eq!(r.local_blocks(), w.length());
            prop_assert!(r.verify_local().expect("verifies").is_empty());
        }

        #[test]
        fn hash_and_seek_proofs_verify(
            sizes in prop::collection::vec(1usize..50, 2..60),
            pick in any::<prop::sample::Index>(),
            byte in any::<prop::sample::Index>(),
        ) {
            let mut w = Hypercore::create(mem(), KeyPair::from_seed(&[3; 32]), false).expect("create");
            let blocks: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
            w.append_batch(&blocks).expect("append");
            let mut r = Hypercore::open_replica(mem(), *w.key(), Some(w.manifest().expect("m").clone())).expect("r");
            // Seek with an upgrade from nothing.
            let bytes = byte.index(w.byte_length() as usize) as u64;
            let req = Request {
                seek: Some(RequestSeek { bytes, padding: 0 }),
                upgrade: Some(RequestUpgrade { start: 0, length: w.length() }),
                ..Request::default()
            };
            let p = w.proof(&req).expect("seek proof");
            r.apply_proof(&p).expect("seek proof verifies");
            prop_assert_eq!(r.length(), w.length());
            // A hash proof of any node within the tree.
            let leaf = pick.index(w.length() as usize) as u64;
            let index = flat::parent(2 * leaf).min(2 * leaf);
            let nodes = r.missing_nodes(index).expect("nodes");
            let req = Request { hash: Some(RequestIndexed { index, nodes }), ..Request::default() };
            if nodes > 0 {
                let p = w.proof(&req).expect("hash proof");
                r.apply_proof(&p).expect("hash proof verifies");
            }
            prop_assert_eq!(r.node(TreeIndex(index)).expect("node"), w.node(TreeIndex(index)).expect("node"));
        }

        #[test]
        fn any_flipped_byte_fails_verification(
            sizes in prop::collection::vec(1usize..30, 3..40),
            pick in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut w = Hypercore::create(mem(), KeyPair::from_seed(&[5; 32]), false).expect("create");
            let blocks: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8 ^ 0x5a; n]).collect();
            w.append_batch(&blocks).expect("append");
            let i = pick.index(w.length() as usize) as u64;
            let req = Request {
                block: Some(RequestIndexed { index: i, nodes: 0 }),
                upgrade: Some(RequestUpgrade { start: 0, length: w.length() }),
                manifest: true,
                ..Request::default()
            };
            let good = w.proof(&req).expect("proof");
            // Every byte a verifier depends on, as (part, offset) pairs.
            let mut places = Vec::new();
            let b = good.block.as_ref().expect("block");
            let up = good.upgrade.as_ref().expect("upgrade");
            places.extend((0..b.value.len()).map(|o| (0usize, o, 0usize)));
            for (k, _) in b.nodes.iter().enumerate() { places.extend((0..32).map(|o| (1, o, k))); places.push((2, 0, k)); }
            for (k, _) in up.nodes.iter().enumerate() { places.extend((0..32).map(|o| (3, o, k))); places.push((4, 0, k)); }
            places.extend((0..up.signature.len()).map(|o| (5, o, 0)));
            places.extend((0..good.manifest.as_ref().expect("m").len()).map(|o| (6, o, 0)));
            let (part, off, k) = places[flip.index(places.len())];
            let mut bad = good.clone();
            let mask = 1u8 << bit;
            {
                let bb = bad.block.as_mut().expect("block");
                let bu = bad.upgrade.as_mut().expect("upgrade");
                match part {
                    0 => bb.value[off] ^= mask,
                    1 => bb.nodes[k].hash[off] ^= mask,
                    2 => bb.nodes[k].size ^= 1 << bit,
                    3 => bu.nodes[k].hash[off] ^= mask,
                    4 => bu.nodes[k].size ^= 1 << bit,
                    5 => bu.signature[off] ^= mask,
                    _ => bad.manifest.as_mut().expect("m")[off] ^= mask,
                }
            }
            let mut r = Hypercore::open_replica(mem(), *w.key(), None).expect("replica");
            prop_assert!(r.apply_proof(&bad).is_err(), "tampered part {} offset {} node {} was accepted", part, off, k);
            prop_assert_eq!(r.length(), 0, "nothing stored from a bad proof");
            r.apply_proof(&good).expect("the untampered proof verifies");
        }

        #[test]
        fn replica_follows_a_truncation_to_a_new_fork(
            first in 2usize..40,
            keep in any::<prop::sample::Index>(),
            more in 1usize..20,
        ) {
            let mut w = Hypercore::create(mem(), KeyPair::from_seed(&[8; 32]), false).expect("create");
            let blocks: Vec<Vec<u8>> = (0..first).map(|i| vec![i as u8; 3]).collect();
            w.append_batch(&blocks).expect("append");
            let mut r = Hypercore::open_replica(mem(), *w.key(), None).expect("replica");
            for i in 0..w.length() { fetch(&mut r, &w, i); }
            let keep = keep.index(first) as u64;
            w.truncate(keep).expect("truncate");
            let extra: Vec<Vec<u8>> = (0..more).map(|i| vec![0xee, i as u8]).collect();
            w.append_batch(&extra).expect("append");
            let req = Request {
                fork: r.fork(),
                upgrade: Some(RequestUpgrade { start: 0, length: w.length() }),
                ..Request::default()
            };
            let applied = r.apply_proof(&w.proof(&req).expect("proof")).expect("reorg verifies");
            prop_assert!(applied.truncated_to.expect("truncated") <= keep);
            prop_assert_eq!((r.fork(), r.length(), r.tree_hash()), (w.fork(), w.length(), w.tree_hash()));
            for i in 0..w.length() {
                if !r.has(i) { fetch(&mut r, &w, i); }
                prop_assert_eq!(r.get(i).expect("block"), w.get(i).expect("block"));
            }
        }
    }
}

/// What a core holding `ours` asks of a peer claiming `length` to see where the histories
/// part: the last block of its first root, with the path up to the peer's root.
fn probe_from(ours: &Hypercore, length: u64) -> Request {
    Request {
        block: Some(RequestIndexed { index: flat::right_span(ours.roots()[0].index) / 2, nodes: 64 }),
        upgrade: Some(RequestUpgrade { start: 0, length }),
        ..Request::default()
    }
}

/// A replica that holds one history checks a longer one signed with the same key without
/// taking it: the last block of each of its roots, asked for with the path up to the other's
/// root, shows where they part.
#[test]
fn a_longer_history_that_parts_from_ours_is_caught_without_being_taken() {
    let (mut a, b) = two_writers(10, &[b"same", b"from a"], &[b"same", b"from b", b"more", b"and more"]);
    let mut r = Hypercore::open_replica(mem(), *a.key(), None).expect("replica");
    let up = Request { upgrade: Some(RequestUpgrade { start: 0, length: 2 }), manifest: true, ..Request::default() };
    r.apply_proof(&a.proof(&up).expect("proof")).expect("a");
    // From our length, b's upgrade does not verify.
    let from_ours = Request { upgrade: Some(RequestUpgrade { start: 2, length: 2 }), ..Request::default() };
    assert!(matches!(r.apply_proof(&b.proof(&from_ours).expect("proof")), Err(Error::Verification(_))));
    let probe = probe_from(&r, 4);
    let err = r.check_proof(&b.proof(&probe).expect("proof")).expect_err("caught");
    assert!(matches!(err, Error::Equivocation { .. }), "{err}");
    assert_eq!((r.length(), r.conflict().map(|c| c.theirs.length)), (2, Some(4)), "nothing taken, proof kept");
    // The same probe answered by a's own history passes and takes nothing.
    let mut r2 = Hypercore::open_replica(mem(), *a.key(), None).expect("replica");
    r2.apply_proof(&a.proof(&up).expect("proof")).expect("a");
    a.append(b"a grows").expect("append");
    let probe = Request { upgrade: Some(RequestUpgrade { start: 0, length: 3 }), ..probe };
    r2.check_proof(&a.proof(&probe).expect("proof")).expect("consistent");
    assert_eq!(r2.length(), 2);
}

/// A writer's frozen copy (what serves its peers) that catches another history of its key
/// tells the writer: the conflict cell is shared, and the writer's next append is refused
/// rather than making a third history. The copy itself changes nothing.
#[test]
fn a_frozen_copy_that_catches_another_history_stops_its_writer() {
    let (mut a, b) = two_writers(10, &[b"same", b"from a"], &[b"same", b"from b", b"more", b"and more"]);
    let mut copy = a.frozen_copy();
    let err = copy.check_proof(&b.proof(&probe_from(&a, 4)).expect("proof")).expect_err("caught");
    assert!(matches!(err, Error::Equivocation { .. }), "{err}");
    // A copy takes nothing, even a proof that verifies.
    let up = Request { upgrade: Some(RequestUpgrade { start: 0, length: 2 }), ..Request::default() };
    assert!(matches!(copy.apply_proof(&a.proof(&up).expect("proof")), Err(Error::NotWritable)));
    assert!(a.conflict().is_some(), "the writer sees what its copy found");
    assert!(matches!(a.append(b"a third history"), Err(Error::Equivocation { .. })));
    assert_eq!(a.length(), 2);
}

/// Proofs verified one by one and stored together: runs of plain blocks go in one commit, an
/// upgrade among them on its own, every result in the order given; a block sent twice is
/// stored once and reported each time.
#[test]
fn verified_blocks_are_stored_together_in_order() {
    let mut w = writer(false);
    let data: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + i as usize]).collect();
    w.append_batch(&data[..10]).expect("append");
    let mut r = Hypercore::open_replica(mem(), *w.key(), w.manifest().cloned()).expect("replica");
    // A request for a block, with an upgrade to the writer's length when `upgrade`.
    let proof_for = |r: &Hypercore, w: &Hypercore, index: u64, upgrade: bool| {
        let mut req = r.block_request(index, if upgrade { w.length() } else { r.length() }).expect("request");
        req.fork = w.fork();
        r.verify_proof(w.proof(&req).expect("proof")).expect("verifies")
    };
    let first = proof_for(&r, &w, 0, true);
    r.store_verified(first).expect("upgrade to 10");
    w.append_batch(&data[10..]).expect("append");
    // Blocks 3, 4, 4 again and 7 are plain; 15 comes with the upgrade to 20; 8 is plain again.
    let mut all: Vec<Verified> = [3, 4, 4, 7].iter().map(|&i| proof_for(&r, &w, i, false)).collect();
    all.push(proof_for(&r, &w, 15, true));
    all.push(proof_for(&r, &w, 8, false));
    let results = r.store_verified_all(all);
    let blocks: Vec<Option<u64>> = results.iter().map(|x| x.as_ref().expect("stored").block).collect();
    assert_eq!(blocks, [Some(3), Some(4), Some(4), Some(7), Some(15), Some(8)]);
    assert_eq!(results[4].as_ref().expect("stored").upgraded_to, Some(20));
    assert_eq!(r.length(), 20);
    for i in [0u64, 3, 4, 7, 8, 15] {
        assert_eq!(r.get(i).expect("stored"), data[i as usize]);
    }
    assert!(!r.has(5));
}

/// A replica of `w` that holds its signed length and nothing else (an upgrade from 0).
fn upgraded_replica(w: &Hypercore) -> Hypercore {
    let mut r = Hypercore::open_replica(mem(), *w.key(), None).expect("replica");
    let up = Request {
        upgrade: Some(RequestUpgrade { start: 0, length: w.length() }),
        manifest: true,
        ..Request::default()
    };
    r.apply_proof(&w.proof(&up).expect("upgrade")).expect("the upgrade verifies");
    r
}

/// Every contiguous range of a tree of every length up to 19 blocks is proven by one list of
/// nodes beside it: the replica stores the blocks, reads them back, and its tree then proves
/// anything the writer's does (its nodes are the writer's).
#[test]
fn a_range_of_blocks_is_proven_by_one_list_of_nodes() {
    for length in 1..=19u64 {
        let mut w = writer(false);
        let blocks: Vec<Vec<u8>> = (0..length).map(|i| vec![i as u8; (i as usize * 13) % 40 + 1]).collect();
        w.append_batch(&blocks).expect("append");
        for start in 0..length {
            for end in start + 1..=length {
                let mut r = upgraded_replica(&w);
                let mut p = w.range_proof(start, end - start, length, u64::MAX).expect("the writer proves it");
                if (start + end) % 2 == 1 {
                    // Hashed on arrival, as a connection's reader does: the same leaves.
                    p.hash_leaves();
                }
                assert_eq!(p.blocks.len() as u64, end - start);
                // At most two nodes a level beside the range.
                assert!(p.nodes.len() <= 2 * 6, "{} nodes for {start}..{end} of {length}", p.nodes.len());
                let verified = r.verify_range(p).unwrap_or_else(|e| panic!("{start}..{end} of {length}: {e}"));
                for result in r.store_verified_all(verified) {
                    result.expect("stored");
                }
                for i in 0..length {
                    assert_eq!(r.has(i), (start..end).contains(&i), "block {i} after {start}..{end} of {length}");
                }
                for i in start..end {
                    assert_eq!(r.get(i).expect("stored"), blocks[i as usize]);
                    assert_eq!(r.leaf(i).expect("leaf"), w.leaf(i).expect("leaf"));
                }
                assert!(r.verify_local().expect("verifies").is_empty());
            }
        }
    }
}

/// What a peer could change in a range proof — a block's byte, a node's hash or size, the
/// start, a node left out or added — is refused, and nothing of it is stored.
#[test]
fn a_range_proof_that_lies_is_refused() {
    let mut w = writer(false);
    let blocks: Vec<Vec<u8>> = (0..23u8).map(|i| vec![i; 50 + i as usize]).collect();
    w.append_batch(&blocks).expect("append");
    let honest = w.range_proof(5, 9, 23, u64::MAX).expect("proof");
    assert!(!honest.nodes.is_empty());
    let lies: Vec<(&str, RangeLie)> = vec![
        ("a block byte", Box::new(|p| p.blocks[3][7] ^= 1)),
        ("a block one byte longer", Box::new(|p| p.blocks[8].push(0))),
        ("a node's hash", Box::new(|p| p.nodes[0].hash[0] ^= 1)),
        ("a node's size", Box::new(|p| p.nodes[0].size += 1)),
        ("the start", Box::new(|p| p.start += 1)),
        ("a node left out", Box::new(|p| p.nodes.truncate(p.nodes.len() - 1))),
        ("a node added", Box::new(|p| p.nodes.push(p.nodes[0]))),
        ("two blocks swapped", Box::new(|p| p.blocks.swap(0, 1))),
        ("a block left out", Box::new(|p| p.blocks.truncate(p.blocks.len() - 1))),
        ("a block added", Box::new(|p| p.blocks.push(vec![1, 2, 3]))),
        ("a range past the length", Box::new(|p| p.start = 20)),
    ];
    // Each as it came, and with its blocks hashed on arrival as a connection's reader does.
    for ((what, lie), on_arrival) in lies.iter().flat_map(|l| [(l, false), (l, true)]) {
        let r = upgraded_replica(&w);
        let mut p = honest.clone();
        lie(&mut p);
        if on_arrival {
            p.hash_leaves();
        }
        match r.verify_range(p) {
            Err(Error::Verification(_)) => {}
            other => panic!("{what} (hashed on arrival: {on_arrival}): {:?}", other.map(|v| v.len())),
        }
        assert_eq!(r.local_blocks(), 0, "{what}");
    }
    // A proof for a longer tree than the replica's is not the peer's lie: it is asked again.
    let mut r = upgraded_replica(&w);
    let mut p = honest.clone();
    p.length = 24;
    assert!(matches!(r.verify_range(p), Err(Error::StaleSnapshot { .. })));
    let v = r.verify_range(honest).expect("the honest proof verifies");
    assert!(r.store_verified_all(v).into_iter().all(|x| x.is_ok()));
    assert_eq!(r.local_blocks(), 9);
}

/// A holder sends a range up to a byte budget, and only the blocks it has from the start: the
/// prefix verifies on its own; a range whose first block is missing is refused.
#[test]
fn a_range_answer_stops_at_its_byte_budget_and_at_a_missing_block() {
    let mut w = writer(false);
    let blocks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 100]).collect();
    w.append_batch(&blocks).expect("append");
    let p = w.range_proof(2, 10, 16, 250).expect("proof");
    assert_eq!(p.blocks.len(), 3, "the block that reaches the budget is the last");
    let mut r = upgraded_replica(&w);
    let v = r.verify_range(p).expect("a prefix verifies");
    assert!(r.store_verified_all(v).into_iter().all(|x| x.is_ok()));
    // The replica, holding blocks 2..5 only, serves what it has from the start asked for.
    let held = r.range_proof(3, 10, 16, u64::MAX).expect("the nodes it was given prove its blocks");
    assert_eq!((held.start, held.blocks.len()), (3, 2));
    let mut r2 = upgraded_replica(&w);
    let v = r2.verify_range(held).expect("a replica's range verifies");
    assert!(r2.store_verified_all(v).into_iter().all(|x| x.is_ok()));
    assert!(matches!(r.range_proof(6, 2, 16, u64::MAX), Err(Error::MissingBlock { .. })));
    assert!(matches!(w.range_proof(0, 1, 17, u64::MAX), Err(Error::OutOfBounds(_))));
    assert!(matches!(w.range_proof(16, 1, 16, u64::MAX), Err(Error::OutOfBounds(_))));
    assert!(matches!(w.range_proof(0, 0, 16, u64::MAX), Err(Error::OutOfBounds(_))));
}

/// A change a lying peer makes to an honest range proof.
type RangeLie = Box<dyn Fn(&mut RangeProof)>;
