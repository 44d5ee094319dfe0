//! Two sessions wired back to back in memory, each over a real core on its own store: the
//! replica asks for what it wants, verifies it and follows the writer's appends and forks; a
//! peer that lies or floods is caught.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::hypercore::proof::Proof;
use hyperfs_engine::hypercore::RangeProof;
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

/// What the endpoint does with a message: the session handles it reading the core, then what
/// verified is stored through the core (the owner here) and the session told how it went.
fn deliver(s: &mut Session, core: &mut Hypercore, m: Message, now: Instant) -> Result<Output, Misbehaviour> {
    let mut out = s.on_message(core, m, now)?;
    for arrival in std::mem::take(&mut out.store) {
        let (verified, receipt) = arrival.into_parts();
        let result = core.store_verified(verified);
        let more = s.stored(core, receipt, result, now);
        out.messages.extend(more.messages);
        out.events.extend(more.events);
    }
    Ok(out)
}

/// What the endpoint does with a reader's want: the session takes it, and asks for it (with
/// the batch of wants it came in) when the batch ends.
fn want(s: &mut Session, core: &Hypercore, index: u64, now: Instant, out: &mut Output) -> bool {
    let ok = s.want(core, index, now, out);
    s.flush(core, now, out);
    ok
}

/// The blocks a message asks for or carries: one a request or a proof, a range's count.
fn blocks_in(m: &Message) -> u64 {
    match m {
        Message::Request { .. } | Message::Data { .. } => 1,
        Message::RangeRequest { count, .. } => *count,
        Message::RangeData { proof, .. } => proof.blocks.len() as u64,
        _ => 0,
    }
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

    /// A writer of `blocks` blocks and a new replica of it, their opening messages exchanged.
    fn opened(blocks: usize, download_all: bool) -> Pair {
        let w = writer(blocks);
        let r = replica(&w);
        let (mut p, to_b, to_a) = Pair::new(w, r, download_all);
        p.run(to_b, to_a).expect("open");
        p
    }

    /// Delivers messages both ways until both sides are quiet.
    fn run(&mut self, mut to_b: Vec<Message>, mut to_a: Vec<Message>) -> Result<(), Misbehaviour> {
        for _ in 0..10_000 {
            if to_a.is_empty() && to_b.is_empty() {
                return Ok(());
            }
            let mut next_b = Vec::new();
            for m in to_a.drain(..) {
                next_b.extend(deliver(&mut self.sa, &mut self.a, m, self.now)?.messages);
            }
            let mut next_a = Vec::new();
            for m in to_b.drain(..) {
                let out = deliver(&mut self.sb, &mut self.b, m, self.now)?;
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
        want(&mut self.sb, &self.b, index, self.now, &mut out);
        self.events.extend(out.events);
        self.run(Vec::new(), out.messages)
    }
}

#[test]
fn a_replica_fetches_one_block_with_the_signed_length_and_manifest() {
    let mut p = Pair::opened(100, false);
    assert_eq!(p.b.length(), 100, "the signed length arrives with the sync");
    assert_eq!(p.b.local_blocks(), 0, "nothing downloaded unasked");
    p.want(57).expect("want");
    assert_eq!(p.b.get(57).expect("block"), b"block 57");
    assert_eq!(p.b.local_blocks(), 1, "only the block asked for travels");
    assert!(p.events.contains(&Event::Block { index: 57 }));
    assert!(p.b.manifest().is_some());
}

/// The session only reads the core: a proof that verifies comes out for the driver to store,
/// and the core is unchanged until the driver stores it. The core may move on between the two
/// (another peer's proof): a longer length stored first is not undone by a shorter one, and a
/// proof verified before the core changed fork is refused as stale, its block reported missing
/// (asked again), not blamed on the peer.
#[test]
fn proofs_come_out_verified_for_the_driver_to_store_and_a_stale_one_is_asked_again() {
    let mut p = Pair::opened(40, false);
    let answer = |p: &mut Pair, index: u64| {
        let mut out = Output::default();
        want(&mut p.sb, &p.b, index, p.now, &mut out);
        let Some(Message::Request { id, request, .. }) = out.messages.pop() else { panic!("a request") };
        Message::Data { request: id, proof: p.a.proof(&request).expect("proof") }
    };
    let data = answer(&mut p, 9);
    let mut out = p.sb.on_message(&p.b, data, p.now).expect("verifies");
    assert_eq!(out.store.len(), 1, "one proof to store");
    assert!(out.events.is_empty(), "no reader hears before it is stored");
    assert!(!p.b.has(9), "the session stored nothing");
    let (verified, receipt) = out.store.pop().expect("arrival").into_parts();
    assert_eq!(verified.block(), Some(9));
    let result = p.b.store_verified(verified);
    let done = p.sb.stored(&p.b, receipt, result, p.now);
    assert_eq!(done.events, [Event::Block { index: 9 }]);
    assert_eq!(p.b.get(9).expect("block"), b"block 9");

    // Two upgrades verified against length 40, stored longest first: the length stays.
    let upgrade = |p: &Pair, length: u64| {
        let upgrade = hyperfs_engine::hypercore::proof::RequestUpgrade { start: 40, length: length - 40 };
        let request = Request { upgrade: Some(upgrade), ..Request::default() };
        let proof = p.a.proof(&request).expect("proof");
        p.b.verify_proof(proof).expect("verifies")
    };
    p.a.append_batch(&(40..60).map(|i| format!("block {i}").into_bytes()).collect::<Vec<_>>()).expect("append");
    let a50 = upgrade(&p, 60);
    p.a.append_batch(&[b"block 60".to_vec()]).expect("append");
    let a61 = upgrade(&p, 61);
    p.b.store_verified(a61).expect("store 61");
    p.b.store_verified(a50).expect("an older upgrade stores its nodes, not its length");
    assert_eq!(p.b.length(), 61);

    // Verified, then the writer truncates and the replica follows to the new fork: stale.
    let data = answer(&mut p, 20);
    let mut out = p.sb.on_message(&p.b, data, p.now).expect("verifies");
    p.a.truncate(30).expect("truncate");
    let mut sb = p.sb;
    let (mut q, to_b, to_a) = Pair::new(p.a, p.b, false);
    q.run(to_b, to_a).expect("follow the fork");
    assert_eq!(q.b.fork(), 1, "the replica moved to the new fork");
    let (verified, receipt) = out.store.pop().expect("arrival").into_parts();
    let result = q.b.store_verified(verified);
    assert!(matches!(result, Err(Error::StaleSnapshot { .. })), "{result:?}");
    let done = sb.stored(&q.b, receipt, result, q.now);
    assert!(done.events.contains(&Event::Missing { index: 20 }), "{:?}", done.events);
}

/// A random read of a sparse replica: one message (`SeekBlock`) and its answer bring the block
/// that holds the byte with its path, after which the replica seeks locally and has the block —
/// one round trip where a seek and then a request took two.
#[test]
fn a_replica_seeks_a_byte_in_one_round_trip_that_brings_its_block() {
    let mut p = Pair::opened(300, false);
    let total = p.a.byte_length();
    // Bytes in blocks far apart (a byte of a block whose path is here seeks without asking).
    for bytes in [1, total / 3, total / 2 + 7, total - 1] {
        let mut out = Output::default();
        assert!(p.sb.seek(&p.b, bytes, p.now, &mut out), "the writer can answer a seek");
        let [m @ Message::SeekBlock { .. }] = &out.messages[..] else { panic!("one seek-and-block: {out:?}") };
        let answer = deliver(&mut p.sa, &mut p.a, m.clone(), p.now).expect("writer").messages;
        assert!(matches!(answer[..], [Message::Data { .. }]), "{answer:?}");
        let back = deliver(&mut p.sb, &mut p.b, answer[0].clone(), p.now).expect("replica");
        assert!(back.events.contains(&Event::Sought { bytes, ok: true }), "{:?}", back.events);
        let (index, skip) = p.b.seek(bytes).expect("the replica seeks locally");
        assert_eq!((index, skip), p.a.seek(bytes).expect("seek"));
        assert!(back.events.contains(&Event::Block { index }) && p.b.has(index), "the block came with it");
    }
    assert!(p.b.verify_local().expect("verify").is_empty());

    // Whatever length and byte a peer names, the writer answers with a proof or says no.
    let mut ws = Session::open(&p.a, false, p.now).0;
    for (length, bytes) in [(0, 0), (1, 0), (1, 9), (7, total), (300, u64::MAX), (301, 5), (u64::MAX, 1), (64, 300)] {
        let m = Message::SeekBlock { id: 1, fork: 0, length, bytes };
        let out = ws.on_message(&p.a, m, p.now).expect("answered");
        assert!(matches!(out.messages[..], [Message::Data { .. } | Message::NoData { .. }]), "{length} {bytes}");
    }

    // A peer that cannot answer one (here a replica without the block) says so; the next seek
    // of that byte asks for tree nodes only.
    let Pair { a, b, .. } = p;
    let (mut q, to_b, to_a) = Pair::new(b, replica(&a), false);
    q.run(to_b, to_a).expect("open");
    let bytes = total / 4;
    let mut out = Output::default();
    q.sb.seek(&q.b, bytes, q.now, &mut out);
    assert!(matches!(out.messages[..], [Message::SeekBlock { .. }]));
    let answer = deliver(&mut q.sa, &mut q.a, out.messages.remove(0), q.now).expect("relay").messages;
    assert!(matches!(answer[..], [Message::NoData { .. }]), "{answer:?}");
    let back = deliver(&mut q.sb, &mut q.b, answer[0].clone(), q.now).expect("replica");
    assert!(back.events.contains(&Event::Sought { bytes, ok: false }));
    let mut out = Output::default();
    q.sb.seek(&q.b, bytes, q.now, &mut out);
    assert!(matches!(out.messages[..], [Message::Request { .. }]), "{:?}", out.messages);
}

#[test]
fn download_all_fetches_every_block_and_follows_appends() {
    let mut p = Pair::opened(300, true);
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
    let mut p = Pair::opened(50, true);
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
    let mut p = Pair::opened(40, false);
    let mut out = Output::default();
    want(&mut p.sb, &p.b, 9, p.now, &mut out);
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
        deliver(&mut s, &mut p.b, Message::Sync { flags: 3, fork: 0, length: 40, remote_length: 0 }, p.now)
            .expect("sync");
        s.put(id, InFlight::new(Some(9), None, false, p.now + REQUEST_TIMEOUT));
        let r = deliver(&mut s, &mut p.b, Message::Data { request: id, proof }, p.now);
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
    s.put(1, InFlight::new(None, None, true, p.now + REQUEST_TIMEOUT));
    assert!(deliver(&mut s, &mut forged, Message::Data { request: 1, proof }, p.now).is_err());
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
    for i in 0..200_000u64 {
        let at = now + Duration::from_micros(i);
        if let Err(e) =
            deliver(&mut s, &mut w, Message::Request { id: i + 1, request: request.clone(), priority: None }, at)
        {
            dropped = Some((i, e));
            break;
        }
    }
    let (i, e) = dropped.expect("a flood is caught");
    // A fast honest downloader's rate is served (a burst, then 65,536 a second); a million a
    // second is not.
    assert!(i >= REQUEST_BURST as u64, "a burst of ordinary size is served ({i})");
    assert!(e.0.contains("floods"));
}

#[test]
fn requests_time_out_and_are_reported() {
    let w = writer(10);
    let mut r = replica(&w);
    let now = Instant::now();
    let (mut s, _) = Session::open(&r, false, now);
    deliver(&mut s, &mut r, Message::Sync { flags: 3, fork: 0, length: 10, remote_length: 0 }, now).expect("sync");
    deliver(&mut s, &mut r, Message::Range { drop: false, start: 0, length: 10 }, now).expect("range");
    let mut out = Output::default();
    assert!(want(&mut s, &r, 4, now, &mut out));
    assert!(s.busy());
    let out = s.tick(&r, now + REQUEST_TIMEOUT + Duration::from_millis(1)).expect("one miss is forgiven");
    assert!(out.events.contains(&Event::Missing { index: 4 }));
    assert!(out.messages.iter().any(|m| matches!(m, Message::Cancel { .. })));
    // An answer clears the count; three misses in a row drop the peer.
    deliver(&mut s, &mut r, Message::NoData { request: 99, reason: None }, now).expect("noData");
    let mut at = now + REQUEST_TIMEOUT;
    for (i, index) in [5u64, 6, 7].into_iter().enumerate() {
        let mut out = Output::default();
        assert!(want(&mut s, &r, index, at, &mut out));
        at += REQUEST_TIMEOUT + Duration::from_millis(1);
        let ticked = s.tick(&r, at);
        if i < 2 {
            assert!(ticked.is_ok(), "miss {} is forgiven", i + 1);
        } else {
            assert!(ticked.expect_err("a silent peer is dropped").0.contains("unanswered"));
        }
    }
}

/// A replica of a core whose writer signed a length of 2^54 (a root over blocks nobody has; the
/// flat tree's indexes end below 2^56):
/// what the engine accepts, since the signature is the writer's own.
fn replica_of_a_huge_core() -> (Hypercore, u64) {
    use hyperfs_engine::hypercore::proof::UpgradeProof;
    use hyperfs_engine::hypercore::{tree, Auth, Manifest, Node};
    let kp = KeyPair::from_seed(&[7; 32]);
    let manifest = Manifest::single(kp.public_key());
    let length = 1u64 << 54;
    let root = Node { index: length - 1, size: length, hash: [5; 32] };
    let tree_hash = tree::tree_hash(&[root]);
    let signature = Auth::Manifest(manifest.clone()).sign(&kp, &tree_hash, length, 0);
    let proof = Proof {
        fork: 0,
        upgrade: Some(UpgradeProof { start: 0, length, nodes: vec![root], additional_nodes: vec![], signature }),
        manifest: Some(manifest.encode()),
        ..Proof::default()
    };
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut r =
        Hypercore::open_replica(store, hyperfs_engine::crypto::CoreKey(manifest.hash()), None).expect("replica");
    r.apply_proof(&proof).expect("the writer signed it");
    assert_eq!(r.length(), length);
    (r, length)
}

/// A writer-signed length of 2^54: opening a channel, a `want` of everything, a download
/// that tops up, and `range` messages over the whole length each cost the runs involved, not
/// the length (each was a loop over every index, hanging a network worker under the core's
/// lock).
#[test]
fn a_signed_length_of_2_pow_54_costs_nothing_per_message() {
    let (mut r, length) = replica_of_a_huge_core();
    let now = Instant::now();
    let (mut s, out) = Session::open(&r, true, now);
    assert!(out.messages.len() < 8, "the open says what we have: nothing");
    let sync = Message::Sync { fork: 0, length, remote_length: 0, flags: 0 };
    deliver(&mut s, &mut r, sync, now).expect("sync");
    let out = deliver(&mut s, &mut r, Message::Want { start: 0, length: u64::MAX, any: false }, now).expect("want");
    assert!(out.messages.is_empty(), "nothing to say about blocks we lack");
    // The peer says it has two runs far apart: the download asks for blocks of both at once.
    deliver(&mut s, &mut r, Message::Range { drop: false, start: length - 10, length: 10 }, now).expect("range");
    let out = deliver(&mut s, &mut r, Message::Range { drop: false, start: 0, length: 3 }, now).expect("range");
    let asked: Vec<u64> = s.in_flight.values().flat_map(InFlight::blocks).collect();
    assert!(asked.contains(&0) && asked.contains(&(length - 10)), "{asked:?} {:?}", out.messages.len());
    assert!(s.in_flight.len() <= MAX_DOWNLOAD_WINDOW);
}

/// `range` and `bitfield` floods: each message is charged to the peer's budget (a bitfield by
/// its size), what a peer says it has is kept in at most `MAX_REMOTE_RUNS` runs, and a peer past
/// its budget is dropped.
#[test]
fn range_and_bitfield_floods_are_charged_and_bounded() {
    let w = writer(4);
    let mut r = replica(&w);
    let now = Instant::now();
    let (mut s, _) = Session::open(&r, false, now);
    // Alternate blocks, one message each, at a rate the budget allows.
    let mut t = now;
    for i in 0..(2 * MAX_REMOTE_RUNS as u64) {
        t += Duration::from_micros(100);
        deliver(&mut s, &mut r, Message::Range { drop: false, start: 2 * i, length: 1 }, t).expect("within budget");
    }
    assert!(s.remote_has.len() <= MAX_REMOTE_RUNS, "{} runs kept", s.remote_has.len());
    // One bitfield of a million words costs more than the whole burst.
    let (mut s, _) = Session::open(&r, false, now);
    let huge = Message::Bitfield { start: 0, bitfield: vec![0x5555_5555; 1 << 20] };
    assert!(deliver(&mut s, &mut r, huge, now).is_err(), "over budget: dropped");
    // A small one is fine, and its runs land as runs.
    let (mut s, _) = Session::open(&r, false, now);
    let small = Message::Bitfield { start: u64::MAX - 40, bitfield: vec![u32::MAX, 0b101] };
    deliver(&mut s, &mut r, small, now).expect("a small bitfield");
    assert!(
        s.remote_has.contains(u64::MAX - 40)
            && s.remote_has.contains(u64::MAX - 9)
            && !s.remote_has.contains(u64::MAX - 7)
    );
    // Wants are charged like requests.
    let (mut s, _) = Session::open(&r, false, now);
    let mut dropped = false;
    for _ in 0..10_000 {
        if deliver(&mut s, &mut r, Message::Want { start: 0, length: 4, any: false }, now).is_err() {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a want flood is dropped");
}

proptest::proptest! {
    /// Structure-aware fuzzing of the session: frames made from valid messages, mutated, fed to
    /// a session over a real replica of a real writer. No panic; a message is handled or the peer
    /// is dropped.
    #[test]
    fn mutated_messages_never_panic_a_session(
        ops in proptest::collection::vec((0u8..9, proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), proptest::prelude::any::<u8>(), 0usize..64), 1..40),
    ) {
        let w = writer(20);
        let mut r = replica(&w);
        let now = Instant::now();
        let (mut s, _) = Session::open(&r, true, now);
        let valid: Vec<Message> = {
            let req = r.block_request(3, w.length()).expect("request");
            let proof = w.proof(&req).expect("proof");
            vec![
                Message::Sync { fork: 0, length: 20, remote_length: 0, flags: 0 },
                Message::Range { drop: false, start: 0, length: 20 },
                Message::Want { start: 0, length: 20, any: false },
                Message::Bitfield { start: 0, bitfield: vec![0xffff] },
                Message::Request { id: 1, request: req, priority: None },
                Message::Data { request: 1, proof },
                Message::NoData { request: 2, reason: None },
                Message::Cancel { request: 1 },
                Message::SeekBlock { id: 3, fork: 0, length: 20, bytes: 40 },
            ]
        };
        for (which, a, b, flip, at) in ops {
            let m = valid[which as usize % valid.len()].clone();
            let frame = crate::wire::Frame::Channel { channel: 1, message: m }.encode();
            let mut bytes = frame.clone();
            if flip != 0 && !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= flip;
            }
            // Numbers from the fuzzer where the message has them.
            let decoded = match crate::wire::Frame::take(&bytes) {
                Ok(Some((crate::wire::Frame::Channel { message, .. }, _))) => message,
                _ => continue,
            };
            let decoded = match decoded {
                Message::Range { drop, .. } => Message::Range { drop, start: a, length: b },
                Message::Want { any, .. } => Message::Want { start: a, length: b, any },
                Message::Sync { flags, .. } => Message::Sync { fork: a % 3, length: b, remote_length: 0, flags },
                Message::SeekBlock { id, fork, .. } => Message::SeekBlock { id, fork, length: a % 64, bytes: b % 512 },
                m => m,
            };
            if deliver(&mut s, &mut r, decoded, now).is_err() {
                break;
            }
            let _ = s.tick(&r, now + Duration::from_secs(1));
        }
    }
}

/// A full download keeps about 2 MiB asked for: 32 requests for a core of 64 KiB blocks, 512 for
/// one of 4 KiB blocks (a round trip per 32 small blocks held a clone of 20,000 files to a
/// fraction of the link), never more than `MAX_DOWNLOAD_WINDOW`; a replica asks for that many at
/// once.
#[test]
fn the_download_window_follows_the_mean_block_size() {
    let core_of = |size: usize, blocks: usize| {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let mut core = Hypercore::create(store, KeyPair::from_seed(&[9; 32]), false).expect("create");
        core.append_batch(&vec![vec![1u8; size]; blocks]).expect("append");
        core
    };
    assert_eq!(download_window(&core_of(64 << 10, 4), WINDOW_BYTES), DOWNLOAD_WINDOW);
    assert_eq!(download_window(&core_of(4 << 10, 8), WINDOW_BYTES), 512);
    assert_eq!(download_window(&core_of(16, 8), WINDOW_BYTES), MAX_DOWNLOAD_WINDOW);
    let w = core_of(4 << 10, 2000);
    let r = replica(&w);
    let (mut p, mut to_b, mut to_a) = Pair::new(w, r, true);
    // Round by round, as the network would carry them: the most requests the replica sends in
    // one go once it knows the length.
    let mut asked = 0;
    for _ in 0..4 {
        let mut next_a = Vec::new();
        for m in to_b.drain(..) {
            let out = deliver(&mut p.sb, &mut p.b, m, p.now).expect("replica");
            asked = asked.max(out.messages.iter().map(blocks_in).sum::<u64>());
            next_a.extend(out.messages);
        }
        for m in to_a.drain(..) {
            to_b.extend(deliver(&mut p.sa, &mut p.a, m, p.now).expect("writer").messages);
        }
        to_a = next_a;
    }
    assert!(asked >= 500, "{asked} blocks asked at once for 4 KiB blocks");
}

/// A replica downloading from several peers at once, their sessions sharing one [`Claims`]:
/// `speeds[i]` is how many rounds peer `i` takes to answer (0: never). Returns the blocks each
/// peer sent and the replica.
fn download_from_peers(blocks: usize, speeds: &[usize]) -> (Vec<usize>, Hypercore) {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut w = Hypercore::create(store, KeyPair::from_seed(&[5; 32]), false).expect("create");
    w.append_batch(&(0..blocks).map(|i| vec![i as u8; 4096]).collect::<Vec<_>>()).expect("append");
    let mut r = replica(&w);
    let now = Instant::now();
    let claims = Arc::new(Claims::default());
    let mut seeds = Vec::new();
    let mut readers = Vec::new();
    // Messages on their way to each peer, and back to the replica.
    let (mut to_seed, mut to_reader) = (Vec::new(), Vec::new());
    for _ in speeds {
        let (s, so) = Session::open(&w, false, now);
        let (mut rs, ro) = Session::open(&r, true, now);
        rs.share_claims(claims.clone());
        seeds.push(s);
        readers.push(rs);
        to_seed.push(ro.messages);
        to_reader.push(so.messages);
    }
    let mut sent = vec![0; speeds.len()];
    for round in 1..100_000 {
        if r.local_blocks() == blocks as u64 {
            break;
        }
        for (i, &speed) in speeds.iter().enumerate() {
            if speed == 0 || round % speed != 0 {
                continue;
            }
            for m in std::mem::take(&mut to_seed[i]) {
                let out = deliver(&mut seeds[i], &mut w, m, now).expect("seed");
                sent[i] += out
                    .messages
                    .iter()
                    .filter(|m| matches!(m, Message::Data { .. } | Message::RangeData { .. }))
                    .map(blocks_in)
                    .sum::<u64>() as usize;
                to_reader[i].extend(out.messages);
            }
            for m in std::mem::take(&mut to_reader[i]) {
                to_seed[i].extend(deliver(&mut readers[i], &mut r, m, now).expect("replica").messages);
            }
        }
    }
    (sent, r)
}

/// Three peers hold a core: a full download asks each block of one of them (the sessions share
/// their claims), a faster peer serves more, and only the end game asks twice — a download from
/// three was three downloads. A peer that never answers holds nothing up: the end game asks
/// another for what it was asked.
#[test]
fn peers_split_a_download_by_their_rates_and_a_silent_one_is_covered() {
    let blocks = 12_000;
    let (sent, r) = download_from_peers(blocks, &[1, 1, 2]);
    assert_eq!(r.local_blocks(), blocks as u64, "{sent:?}");
    assert!(r.verify_local().expect("verify").is_empty());
    let total: usize = sent.iter().sum();
    assert!(total <= blocks + 2 * 512, "{sent:?}: asked twice only at the end");
    assert!(sent.iter().all(|&n| n > 0), "every peer helps: {sent:?}");
    assert!(sent[0] > sent[2] && sent[1] > sent[2], "the slow peer serves least: {sent:?}");

    let (sent, r) = download_from_peers(blocks, &[1, 0]);
    assert_eq!(r.local_blocks(), blocks as u64, "{sent:?}");
    assert_eq!(sent[1], 0);
}

/// A reader's window of wants, taken as one batch, goes out as range requests — consecutive
/// blocks in one — and each block arrives verified and is reported; a JS peer, which knows no
/// ranges, is asked a block a request.
#[test]
fn a_batch_of_wants_goes_as_range_requests_to_a_hyperfs_peer_and_block_by_block_to_js() {
    for hyperfs in [true, false] {
        let mut p = Pair::opened(100, false);
        p.sb.set_hyperfs_peer(hyperfs);
        p.sb.set_ranges(hyperfs);
        let mut out = Output::default();
        for index in (10..40).chain(60..64).chain([70]) {
            assert!(p.sb.want(&p.b, index, p.now, &mut out));
        }
        p.sb.flush(&p.b, p.now, &mut out);
        let requests: Vec<(u64, u64)> = out
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::RangeRequest { start, count, .. } => Some((*start, *count)),
                Message::Request { request, .. } => request.block.map(|b| (b.index, 1)),
                _ => None,
            })
            .collect();
        if hyperfs {
            assert_eq!(requests, [(10, 30), (60, 4), (70, 1)]);
        } else {
            assert_eq!(requests.len(), 35);
            assert!(requests.iter().all(|&(_, n)| n == 1));
        }
        p.run(Vec::new(), out.messages).expect("answered");
        for index in (10..40).chain(60..64).chain([70]) {
            assert_eq!(p.b.get(index).expect("block"), format!("block {index}").into_bytes());
            assert!(p.events.contains(&Event::Block { index }), "block {index} reported");
        }
        assert_eq!(p.b.local_blocks(), 35, "only what was wanted travels");
        assert!(p.b.verify_local().expect("verify").is_empty());
    }
}

/// A full download from a hyperfs peer asks in ranges: a few hundred requests for 3,000
/// blocks, not 3,000.
#[test]
fn a_full_download_asks_for_ranges() {
    let w = writer(3000);
    let r = replica(&w);
    let (mut p, mut to_b, mut to_a) = Pair::new(w, r, true);
    let mut requests = 0;
    for _ in 0..10_000 {
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        let mut next_a = Vec::new();
        for m in to_b.drain(..) {
            let out = deliver(&mut p.sb, &mut p.b, m, p.now).expect("replica");
            requests += out.messages.iter().filter(|m| blocks_in(m) > 0).count();
            next_a.extend(out.messages);
        }
        for m in to_a.drain(..) {
            to_b.extend(deliver(&mut p.sa, &mut p.a, m, p.now).expect("writer").messages);
        }
        to_a = next_a;
    }
    assert_eq!(p.b.local_blocks(), 3000);
    assert!(p.b.verify_local().expect("verify").is_empty());
    assert!(requests <= 3000 / 16, "{requests} requests for 3,000 small blocks");
}

/// A range answer that stops early (the holder's byte budget, or a block it lacks) leaves the
/// rest to be asked again; a range the holder cannot start is reported missing for its first
/// block only, and the rest asked again.
#[test]
fn what_a_range_answer_leaves_out_is_asked_again() {
    let mut p = Pair::opened(64, false);
    let mut out = Output::default();
    for index in 0..64 {
        p.sb.want(&p.b, index, p.now, &mut out);
    }
    p.sb.flush(&p.b, p.now, &mut out);
    let Some(Message::RangeRequest { id, start, count, length, .. }) = out.messages.pop() else { panic!("a range") };
    assert_eq!((start, count), (0, 64));
    // The holder sends three blocks of it.
    let proof = p.a.range_proof(start, 3, length, u64::MAX).expect("proof");
    let out = deliver(&mut p.sb, &mut p.b, Message::RangeData { request: id, proof }, p.now).expect("verifies");
    assert_eq!(p.b.local_blocks(), 3);
    let again: Vec<(u64, u64)> = out
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::RangeRequest { start, count, .. } => Some((*start, *count)),
            _ => None,
        })
        .collect();
    assert_eq!(again, [(3, 61)], "the rest asked again");
    p.run(Vec::new(), out.messages).expect("the rest");
    assert_eq!(p.b.local_blocks(), 64);

    // A middle peer that claimed a block it lacks, at the start of a range: that block is
    // reported missing, the rest of the range comes.
    let w = writer(20);
    let mid = replica(&w);
    let (mut q, to_b, to_a) = Pair::new(w, replica(&mid), false);
    q.run(to_b, to_a).expect("open");
    for i in 5..10 {
        q.want(i).expect("want");
    }
    let (mut m, to_b, to_a) = Pair::new(q.b, replica(&q.a), false);
    m.run(to_b, to_a).expect("open the middle peer");
    m.sb.remote_has.insert(4, 10);
    let mut out = Output::default();
    for i in 4..10 {
        m.sb.want(&m.b, i, m.now, &mut out);
    }
    m.sb.flush(&m.b, m.now, &mut out);
    assert!(matches!(out.messages[..], [Message::RangeRequest { start: 4, count: 6, .. }]), "{:?}", out.messages);
    m.run(Vec::new(), out.messages).expect("answered");
    assert!(m.events.contains(&Event::Missing { index: 4 }));
    for i in 5..10 {
        assert_eq!(m.b.get(i).expect("block"), format!("block {i}").into_bytes());
        assert!(!m.events.contains(&Event::Missing { index: i }));
    }
    assert!(!m.b.has(4));
}

/// A peer that answers a range with something else, or lies inside it, is dropped and nothing
/// it sent is stored; range requests are charged a block each against the request budget.
#[test]
fn a_peer_that_lies_in_a_range_or_floods_ranges_is_dropped() {
    let lies: Vec<(&str, RangeLie)> = vec![
        ("a changed byte", Box::new(|x| x.blocks[2][0] ^= 1)),
        ("another start", Box::new(|x| x.start += 1)),
        ("a block more than asked", Box::new(|x| x.blocks.push(b"block 50".to_vec()))),
        ("no blocks", Box::new(|x| x.blocks.clear())),
        ("a node's hash", Box::new(|x| x.nodes[0].hash[1] ^= 1)),
    ];
    for (what, lie) in lies {
        let mut p = Pair::opened(60, false);
        let mut out = Output::default();
        for index in 20..30 {
            p.sb.want(&p.b, index, p.now, &mut out);
        }
        p.sb.flush(&p.b, p.now, &mut out);
        let Some(Message::RangeRequest { id, start, count, length, .. }) = out.messages.pop() else {
            panic!("a range")
        };
        let mut proof = p.a.range_proof(start, count, length, u64::MAX).expect("proof");
        lie(&mut proof);
        let e = deliver(&mut p.sb, &mut p.b, Message::RangeData { request: id, proof }, p.now).expect_err(what);
        assert!(!e.0.is_empty(), "{what}");
        assert_eq!(p.b.local_blocks(), 0, "{what}: nothing stored");
    }
    // A block where a range was asked.
    let mut p = Pair::opened(60, false);
    let mut out = Output::default();
    for index in 20..30 {
        p.sb.want(&p.b, index, p.now, &mut out);
    }
    p.sb.flush(&p.b, p.now, &mut out);
    let Some(Message::RangeRequest { id, .. }) = out.messages.pop() else { panic!("a range") };
    let block = p.a.proof(&p.b.block_request(20, 60).expect("request")).expect("proof");
    assert!(deliver(&mut p.sb, &mut p.b, Message::Data { request: id, proof: block }, p.now).is_err());

    // A flood of range requests for the most blocks each: dropped within the request budget.
    let mut w = writer(300);
    let now = Instant::now();
    let (mut s, _) = Session::open(&w, false, now);
    let mut dropped = None;
    for i in 0..10_000u64 {
        let at = now + Duration::from_micros(i);
        let m = Message::RangeRequest { id: i + 1, fork: 0, length: 300, start: 0, count: u64::MAX };
        match deliver(&mut s, &mut w, m, at) {
            Ok(out) => assert!(out.messages.iter().all(|m| blocks_in(m) <= MAX_RANGE_BLOCKS)),
            Err(e) => {
                dropped = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = dropped.expect("a flood of ranges is caught");
    assert!(i >= REQUEST_BURST as u64 / MAX_RANGE_BLOCKS - 1, "a burst is served ({i})");
    assert!(i < 2 * REQUEST_BURST as u64 / MAX_RANGE_BLOCKS, "each range costs its blocks ({i})");
    assert!(e.0.contains("floods"));
}

/// A change a lying peer makes to an honest range proof.
type RangeLie = Box<dyn Fn(&mut RangeProof)>;

/// A full download's window follows the link: twice the bytes the peer's answers bring in the
/// shortest round trip. On loopback (1 ms, 600 MB/s) it stays at its 2 MiB floor; on a link of
/// 125 MB/s and 50 ms it grows to twice that product (12.5 MB), and past 32 MiB it stops. A
/// window-bound download's rate grows with its window, so it reaches the link's: here an 8 MB
/// window over 50 ms measures 160 MB/s and asks for 16 MB.
#[test]
fn the_download_window_grows_to_the_links_bandwidth_delay_product() {
    let t0 = Instant::now();
    let window_after = |rate: f64, rtt: Duration| {
        let mut pace = Pace::new();
        // Answers of 512 KiB arriving at `rate`, each sent a round trip before it came.
        let every = Duration::from_secs_f64((512 << 10) as f64 / rate);
        let mut now = t0 + rtt;
        for _ in 0..200 {
            pace.answered(512 << 10, now - rtt, now);
            now += every;
        }
        pace.window()
    };
    assert_eq!(window_after(600e6, Duration::from_millis(1)), WINDOW_BYTES);
    let far = window_after(125e6, Duration::from_millis(50));
    assert!((12_000_000..13_000_000).contains(&far), "{far}");
    assert_eq!(window_after(1e9, Duration::from_millis(100)), MAX_WINDOW_BYTES);
    assert!((15_000_000..17_000_000).contains(&window_after(160e6, Duration::from_millis(50))));
    // Nothing measured yet: the floor.
    assert_eq!(Pace::new().window(), WINDOW_BYTES);
}
