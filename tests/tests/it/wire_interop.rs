//! The replication messages hyperfs writes, read by hypercore@11's own `lib/messages.js`: 400
//! random messages of every type are decoded by JS without trailing bytes and encoded again to
//! the same bytes, and JS reads the fields hyperfs meant.

use hyperfs_engine::encoding::{Decoder, Encoder};
use hyperfs_engine::hypercore::proof::{
    BlockProof, HashProof, Proof, Request, RequestIndexed, RequestSeek, RequestUpgrade, SeekProof, UpgradeProof,
};
use hyperfs_engine::hypercore::Node;
use hyperfs_net::wire::{Message, NoDataReason};
use hyperfs_tests::{node, test_seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn big(r: &mut StdRng) -> u64 {
    match r.gen_range(0..4) {
        0 => r.gen_range(0..3),
        1 => r.gen_range(0..300),
        2 => r.gen_range(0..1 << 20),
        _ => r.gen_range(0..1u64 << 40),
    }
}

fn nodes(r: &mut StdRng) -> Vec<Node> {
    (0..r.gen_range(0..4)).map(|_| Node { index: big(r), size: big(r), hash: r.gen() }).collect()
}

fn random_message(r: &mut StdRng) -> Message {
    let indexed = |r: &mut StdRng| RequestIndexed { index: big(r), nodes: big(r) };
    match r.gen_range(0..10) {
        0 => Message::Sync { flags: r.gen_range(0..32), fork: big(r), length: big(r), remote_length: big(r) },
        1 => Message::Request {
            id: big(r),
            request: Request {
                fork: big(r),
                block: r.gen_bool(0.5).then(|| indexed(r)),
                hash: r.gen_bool(0.3).then(|| indexed(r)),
                seek: r.gen_bool(0.3).then(|| RequestSeek { bytes: big(r), padding: big(r) }),
                upgrade: r.gen_bool(0.5).then(|| RequestUpgrade { start: big(r), length: big(r) }),
                manifest: r.gen_bool(0.3),
            },
            priority: r.gen_bool(0.3).then(|| 1 + big(r)),
        },
        2 => Message::Cancel { request: big(r) },
        3 => Message::Data {
            request: big(r),
            proof: Proof {
                fork: big(r),
                block: r.gen_bool(0.6).then(|| BlockProof {
                    index: big(r),
                    value: (0..r.gen_range(0..200)).map(|_| r.gen()).collect(),
                    nodes: nodes(r),
                }),
                hash: r.gen_bool(0.3).then(|| HashProof { index: big(r), nodes: nodes(r) }),
                seek: r.gen_bool(0.3).then(|| SeekProof { bytes: big(r), nodes: nodes(r) }),
                upgrade: r.gen_bool(0.5).then(|| UpgradeProof {
                    start: big(r),
                    length: big(r),
                    nodes: nodes(r),
                    additional_nodes: nodes(r),
                    signature: if r.gen_bool(0.8) { (0..64).map(|_| r.gen()).collect() } else { Vec::new() },
                }),
                // A v1 manifest with one Ed25519 signer, as JS encodes it.
                manifest: r.gen_bool(0.2).then(|| {
                    let mut m = vec![1, 0, 0, 1, 1, 0];
                    m.extend_from_slice(&[0u8; 32]);
                    m.extend((0..32).map(|_| r.gen::<u8>()));
                    m
                }),
            },
        },
        4 => Message::NoData {
            request: big(r),
            reason: match r.gen_range(0..3) {
                0 => None,
                1 => Some(NoDataReason::NotAvailable),
                _ => Some(NoDataReason::InvalidRequest),
            },
        },
        5 => Message::Want { start: big(r), length: big(r), any: r.gen_bool(0.5) },
        6 => Message::Unwant { start: big(r), length: big(r) },
        7 => Message::Bitfield { start: big(r), bitfield: (0..r.gen_range(0..6)).map(|_| r.gen()).collect() },
        8 => Message::Range { drop: r.gen_bool(0.3), start: big(r), length: if r.gen_bool(0.3) { 1 } else { big(r) } },
        _ => Message::Extension {
            name: "hyperfs-test".into(),
            message: (0..r.gen_range(0..40)).map(|_| r.gen()).collect(),
        },
    }
}

const NAMES: [&str; 10] =
    ["sync", "request", "cancel", "data", "noData", "want", "unwant", "bitfield", "range", "extension"];

#[test]
fn js_reads_every_message_as_hyperfs_writes_it() {
    let mut r = StdRng::seed_from_u64(test_seed());
    let messages: Vec<Message> = (0..400).map(|_| random_message(&mut r)).collect();
    let input: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut e = Encoder::new();
            m.encode_payload(&mut e);
            json!({"type": NAMES[m.kind() as usize], "hex": hex::encode(e.finish())})
        })
        .collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("messages.json");
    std::fs::write(&file, serde_json::to_string(&input).expect("json")).expect("write");
    let out: Vec<Value> = serde_json::from_str(&node("wire-oracle.js", &[&file])).expect("oracle JSON");
    assert_eq!(out.len(), messages.len());
    for ((m, sent), js) in messages.iter().zip(&input).zip(&out) {
        assert_eq!(js["hex"], sent["hex"], "JS re-encodes {m:?} differently: {}", js["decoded"]);
        let d = &js["decoded"];
        // Spot checks that JS reads what was meant, field by field.
        match m {
            Message::Request { id, request, .. } => {
                assert_eq!(d["id"], *id);
                assert_eq!(d["manifest"], request.manifest);
                assert_eq!(d["block"].is_null(), request.block.is_none());
            }
            Message::Data { request, proof } => {
                assert_eq!(d["request"], *request);
                if let Some(b) = &proof.block {
                    assert_eq!(d["block"]["value"], hex::encode(&b.value));
                }
                if let Some(u) = &proof.upgrade {
                    assert_eq!(
                        d["upgrade"]["additionalNodes"].as_array().map(Vec::len),
                        Some(u.additional_nodes.len())
                    );
                }
                assert_eq!(d["manifest"].is_null(), proof.manifest.is_none());
            }
            Message::Sync { length, .. } => assert_eq!(d["length"], *length),
            Message::Want { any, .. } => assert_eq!(d["any"], *any),
            _ => {}
        }
        // And hyperfs reads back what it wrote.
        let bytes = hex::decode(sent["hex"].as_str().expect("hex")).expect("hex");
        let mut dec = Decoder::new(&bytes);
        assert_eq!(&Message::decode(m.kind(), &mut dec).expect("decodes"), m);
    }
}
