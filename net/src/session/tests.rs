//! Two sessions wired back to back in memory, each over a real core on its own store: the
//! replica asks for what it wants, verifies it and follows the writer's appends and forks; a
//! peer that lies or floods is caught.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::hypercore::proof::Proof;
use hyperfs_engine::store::{MemStore, Store};
use hyperfs_engine::Hypercore;

use super::*;

fn writer(blocks: usize) -> Hypercore {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut core = Hypercore::create(store, KeyPair::from_seed(&[7; 32]), false).expect("create");
    let data: Vec<Vec<u8>> = (0..blocks).map(|i| format!("block {i}").into_bytes()).collect();
    if !data.is_empty() {
        core.append_batch(&data).expect("append");
    }
    core
}

fn replica(of: &Hypercore) -> Hypercore {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    Hypercore::open_replica(store, *of.key(), None).expect("replica")
}

/// Both ends of one channel.
struct Pair {
    a: Hypercore,
    b: Hypercore,
    sa: Session,
    sb: Session,
    /// Events seen at b (the replica).
    events: Vec<Event>,
    now: Instant,
}

impl Pair {
    fn new(a: Hypercore, b: Hypercore, download_all: bool) -> (Pair, Vec<Message>, Vec<Message>) {
        let now = Instant::now();
        let (sa, oa) = Session::open(&a, false, now);
        let (sb, ob) = Session::open(&b, download_all, now);
        (Pair { a, b, sa, sb, events: Vec::new(), now }, oa.messages, ob.messages)
    }

    /// Delivers messages both ways until both sides are quiet.
    fn run(&mut self, mut to_b: Vec<Message>, mut to_a: Vec<Message>) -> Result<(), Misbehaviour> {
        for _ in 0..10_000 {
            if to_a.is_empty() && to_b.is_empty() {
                return Ok(());
            }
            let mut next_b = Vec::new();
            for m in to_a.drain(..) {
                next_b.extend(self.sa.on_message(&mut self.a, m, self.now)?.messages);
            }
            let mut next_a = Vec::new();
            for m in to_b.drain(..) {
                let out = self.sb.on_message(&mut self.b, m, self.now)?;
                self.events.extend(out.events);
                next_a.extend(out.messages);
            }
            to_b = next_b;
            to_a = next_a;
        }
        panic!("the sessions never went quiet");
    }

    fn want(&mut self, index: u64) -> Result<(), Misbehaviour> {
        let mut out = Output::default();
        self.sb.want(&self.b, index, self.now, &mut out);
        self.events.extend(out.events);
        self.run(Vec::new(), out.messages)
    }
}

#[test]
fn a_replica_fetches_one_block_with_the_signed_length_and_manifest() {
    let w = writer(100);
    let r = replica(&w);
    let (mut p, to_b, to_a) = Pair::new(w, r, false);
    p.run(to_b, to_a).expect("open");
    assert_eq!(p.b.length(), 100, "the signed length arrives with the sync");
    assert_eq!(p.b.local_blocks(), 0, "nothing downloaded unasked");
    p.want(57).expect("want");
    assert_eq!(p.b.get(57).expect("block"), b"block 57");
    assert_eq!(p.b.local_blocks(), 1, "only the block asked for travels");
    assert!(p.events.contains(&Event::Block { index: 57 }));
    assert!(p.b.manifest().is_some());
}

#[test]
fn a_replica_seeks_a_byte_without_downloading_blocks() {
    let w = writer(300);
    let total = w.byte_length();
    let r = replica(&w);
    let (mut p, to_b, to_a) = Pair::new(w, r, false);
    p.run(to_b, to_a).expect("open");
    for bytes in [0, 1, total / 3, total / 2 + 7, total - 1] {
        for _ in 0..2 {
            let mut out = Output::default();
            assert!(p.sb.seek(&p.b, bytes, p.now, &mut out), "the writer can answer a seek");
            p.events.extend(out.events);
            p.run(Vec::new(), out.messages).expect("seek");
            assert!(p.events.contains(&Event::Sought { bytes, ok: true }));
            if p.b.seek_request(bytes).expect("request").is_none() {
                break;
            }
        }
        assert_eq!(p.b.seek(bytes).expect("the replica seeks locally"), p.a.seek(bytes).expect("seek"));
    }
    assert_eq!(p.b.local_blocks(), 0, "seeks carry tree nodes, not blocks");
}

#[test]
fn download_all_fetches_every_block_and_follows_appends() {
    let w = writer(300);
    let r = replica(&w);
    let (mut p, to_b, to_a) = Pair::new(w, r, true);
    p.run(to_b, to_a).expect("download");
    assert_eq!(p.b.local_blocks(), 300);
    for i in [0, 150, 299] {
        assert_eq!(p.b.get(i).expect("block"), format!("block {i}").into_bytes());
    }
    assert!(p.b.verify_local().expect("verify").is_empty());
    // The writer appends: the replica hears of it and downloads the new blocks.
    p.a.append_batch(&[b"late 1".to_vec(), b"late 2".to_vec()]).expect("append");
    let mut out = Output::default();
    p.sa.local_changed(&p.a, &mut out);
    p.run(out.messages, Vec::new()).expect("follow");
    assert_eq!(p.b.length(), 302);
    assert_eq!(p.b.get(301).expect("block"), b"late 2");
    assert!(p.events.contains(&Event::Upgraded { fork: 0, length: 302 }));
}

#[test]
fn a_replica_follows_a_truncation_to_the_new_fork() {
    let w = writer(50);
    let r = replica(&w);
    let (mut p, to_b, to_a) = Pair::new(w, r, true);
    p.run(to_b, to_a).expect("download");
    assert_eq!(p.b.local_blocks(), 50);
    p.a.truncate(20).expect("truncate");
    p.a.append(b"new history").expect("append");
    let mut out = Output::default();
    p.sa.local_changed(&p.a, &mut out);
    p.run(out.messages, Vec::new()).expect("follow the fork");
    assert_eq!((p.b.fork(), p.b.length()), (1, 21));
    assert_eq!(p.b.get(20).expect("block"), b"new history");
    assert_eq!(p.b.get(19).expect("kept"), b"block 19");
}

#[test]
fn a_block_the_peer_lacks_is_reported_missing() {
    // The middle peer has the signed length but only a few blocks.
    let w = writer(10);
    let mut mid = replica(&w);
    let (mut p, to_b, to_a) = Pair::new(w, replica(&mid), false);
    p.run(to_b, to_a).expect("open");
    p.want(3).expect("want");
    mid = p.b;
    let (mut q, to_b, to_a) = Pair::new(mid, replica(&p.a), false);
    q.run(to_b, to_a).expect("open");
    assert_eq!(q.b.length(), 10);
    // Block 4 was never advertised: the want waits; block 3 comes.
    q.want(4).expect("want");
    assert!(!q.b.has(4));
    q.want(3).expect("want");
    assert_eq!(q.b.get(3).expect("block"), b"block 3");
    // A peer that claimed a block and then cannot serve it answers noData: reported missing.
    q.sb.remote_has.insert(5, 6);
    q.want(5).expect("want");
    assert!(q.events.contains(&Event::Missing { index: 5 }));
}

#[test]
fn a_lying_peer_is_caught_and_nothing_it_sent_is_stored() {
    let w = writer(40);
    let r = replica(&w);
    let (mut p, to_b, to_a) = Pair::new(w, r, false);
    p.run(to_b, to_a).expect("open");
    let mut out = Output::default();
    p.sb.want(&p.b, 9, p.now, &mut out);
    let Some(Message::Request { id, request, .. }) = out.messages.pop() else { panic!("a request") };
    let honest = p.a.proof(&request).expect("proof");
    let cases: Vec<(&str, Proof)> = vec![
        ("a changed byte", {
            let mut x = honest.clone();
            x.block.as_mut().expect("block").value[0] ^= 1;
            x
        }),
        ("a wrong node", {
            let mut x = honest.clone();
            if let Some(n) = x.block.as_mut().expect("block").nodes.first_mut() {
                n.hash[0] ^= 1;
            }
            x
        }),
        ("another block", {
            let mut x = honest.clone();
            x.block.as_mut().expect("block").index = 10;
            x
        }),
    ];
    for (what, proof) in cases {
        let mut s = Session::open(&p.b, false, p.now).0;
        s.on_message(&mut p.b, Message::Sync { flags: 3, fork: 0, length: 40, remote_length: 0 }, p.now).expect("sync");
        s.in_flight
            .insert(id, InFlight { block: Some(9), seek: None, upgrade: false, deadline: p.now + REQUEST_TIMEOUT });
        let r = s.on_message(&mut p.b, Message::Data { request: id, proof }, p.now);
        assert!(r.is_err(), "{what} is caught");
        assert!(!p.b.has(9), "{what}: nothing stored");
    }
    // A bad signature on an upgrade.
    let mut s = Session::open(&p.b, false, p.now).0;
    let mut upgrade_req = request.clone();
    upgrade_req.block = None;
    upgrade_req.upgrade = Some(hyperfs_engine::hypercore::proof::RequestUpgrade { start: 0, length: 40 });
    let mut forged = replica(&p.a);
    let mut proof = p.a.proof(&upgrade_req).expect("proof");
    proof.upgrade.as_mut().expect("upgrade").signature[5] ^= 1;
    proof.manifest = p.a.manifest().map(|m| m.encode());
    s.in_flight.insert(1, InFlight { block: None, seek: None, upgrade: true, deadline: p.now + REQUEST_TIMEOUT });
    assert!(s.on_message(&mut forged, Message::Data { request: 1, proof }, p.now).is_err());
    assert_eq!(forged.length(), 0);
    // The honest answer still works.
    p.run(Vec::new(), vec![Message::Request { id, request, priority: None }]).expect("honest");
    assert_eq!(p.b.get(9).expect("block"), b"block 9");
}

#[test]
fn a_peer_that_floods_requests_is_dropped() {
    let mut w = writer(5);
    let r = replica(&w);
    let now = Instant::now();
    let (mut s, _) = Session::open(&w, false, now);
    let request = r.block_request(1, 5).expect("request");
    let mut dropped = None;
    for i in 0..10_000u64 {
        let at = now + Duration::from_micros(i);
        if let Err(e) =
            s.on_message(&mut w, Message::Request { id: i + 1, request: request.clone(), priority: None }, at)
        {
            dropped = Some((i, e));
            break;
        }
    }
    let (i, e) = dropped.expect("a flood is caught");
    assert!(i >= 4096, "a burst of ordinary size is served ({i})");
    assert!(e.0.contains("floods"));
}

#[test]
fn requests_time_out_and_are_reported() {
    let w = writer(10);
    let mut r = replica(&w);
    let now = Instant::now();
    let (mut s, _) = Session::open(&r, false, now);
    s.on_message(&mut r, Message::Sync { flags: 3, fork: 0, length: 10, remote_length: 0 }, now).expect("sync");
    s.on_message(&mut r, Message::Range { drop: false, start: 0, length: 10 }, now).expect("range");
    let mut out = Output::default();
    assert!(s.want(&r, 4, now, &mut out));
    assert!(s.busy());
    let out = s.tick(&r, now + REQUEST_TIMEOUT + Duration::from_millis(1)).expect("one miss is forgiven");
    assert!(out.events.contains(&Event::Missing { index: 4 }));
    assert!(out.messages.iter().any(|m| matches!(m, Message::Cancel { .. })));
    // An answer clears the count; three misses in a row drop the peer.
    s.on_message(&mut r, Message::NoData { request: 99, reason: None }, now).expect("noData");
    let mut at = now + REQUEST_TIMEOUT;
    for (i, index) in [5u64, 6, 7].into_iter().enumerate() {
        let mut out = Output::default();
        assert!(s.want(&r, index, at, &mut out));
        at += REQUEST_TIMEOUT + Duration::from_millis(1);
        let ticked = s.tick(&r, at);
        if i < 2 {
            assert!(ticked.is_ok(), "miss {} is forgiven", i + 1);
        } else {
            assert!(ticked.expect_err("a silent peer is dropped").0.contains("unanswered"));
        }
    }
}
