//! Real QUIC on loopback between endpoints in one process, each with its own cores: a replica
//! fetches single blocks on demand, follows the writer's appends, downloads everything when
//! asked, and a node that does not know the key gets nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::{CoreKey, KeyPair};
use hyperfs_engine::store::{MemStore, Store};
use hyperfs_engine::Hypercore;

use super::*;

struct Slot {
    core: Mutex<Hypercore>,
    all: bool,
}

impl SharedCore for Slot {
    fn key(&self) -> CoreKey {
        *lock(&self.core).key()
    }
    fn read(&self, f: &mut dyn FnMut(&Hypercore)) {
        f(&lock(&self.core));
    }
    fn write(&self, f: &mut dyn FnMut(&mut Hypercore)) {
        f(&mut lock(&self.core));
    }
    fn download_all(&self) -> bool {
        self.all
    }
}

struct Cores(Vec<Arc<Slot>>);

impl Shared for Cores {
    fn cores(&self) -> Vec<Arc<dyn SharedCore>> {
        self.0.iter().map(|c| c.clone() as Arc<dyn SharedCore>).collect()
    }
}

fn node(seed: u8, slots: Vec<Arc<Slot>>) -> Endpoint {
    let id = Identity::from_seed(&[seed; 32]);
    Endpoint::start(&id, "127.0.0.1:0".parse().expect("addr"), Arc::new(Cores(slots))).expect("endpoint")
}

fn writer(blocks: usize) -> Arc<Slot> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut core = Hypercore::create(store, KeyPair::from_seed(&[9; 32]), false).expect("core");
    let data: Vec<Vec<u8>> = (0..blocks).map(|i| format!("block {i}").into_bytes()).collect();
    core.append_batch(&data).expect("append");
    Arc::new(Slot { core: Mutex::new(core), all: false })
}

fn replica(key: CoreKey, all: bool) -> Arc<Slot> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    Arc::new(Slot { core: Mutex::new(Hypercore::open_replica(store, key, None).expect("replica")), all })
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_replica_reads_blocks_on_demand_and_follows_the_writer() {
    let w = writer(200);
    let key = w.key();
    let a = node(1, vec![w.clone()]);
    let r = replica(key, false);
    let b = node(2, vec![r.clone()]);
    let peer = b.connect(a.local_addr().expect("addr")).expect("connect");
    assert_eq!(peer, Identity::from_seed(&[1; 32]).peer_id(), "the peer id is the identity's key");
    wait("the signed length", || lock(&r.core).length() == 200);
    assert!(b.fetch(&key, 123, Duration::from_secs(5)), "block 123 arrives");
    assert_eq!(lock(&r.core).get(123).expect("stored"), b"block 123");
    assert_eq!(lock(&r.core).local_blocks(), 1, "only what was read travels");
    // Live: the writer appends, the follower's length follows within a second.
    lock(&w.core).append(b"fresh").expect("append");
    a.changed(&key);
    let t = Instant::now();
    wait("the append", || lock(&r.core).length() == 201);
    assert!(t.elapsed() < Duration::from_secs(1), "followed in {:?}", t.elapsed());
    assert!(b.fetch(&key, 200, Duration::from_secs(5)));
    assert_eq!(lock(&r.core).get(200).expect("stored"), b"fresh");
    let peers = b.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].cores, vec![key]);
    assert!(peers[0].bytes_down > 0 && peers[0].bytes_up > 0);
    let (up, down) = b.transferred(&key);
    assert_eq!(up, 0, "the replica sent no data");
    assert!(down > 0 && down < 4096, "two small blocks with proofs came down: {down} bytes");
    assert_eq!(a.transferred(&key).0, down, "what A sent is what B got");
    assert!(lock(&r.core).verify_local().expect("verify").is_empty());
}

#[test]
fn a_seed_downloads_everything_and_serves_it_onwards() {
    let w = writer(500);
    let key = w.key();
    let a = node(3, vec![w]);
    let s = replica(key, true);
    let b = node(4, vec![s.clone()]);
    b.connect(a.local_addr().expect("addr")).expect("connect");
    wait("the full download", || lock(&s.core).local_blocks() == 500);
    // A third node reads from the seed while the writer is gone.
    drop(a);
    let r = replica(key, false);
    let c = node(5, vec![r.clone()]);
    c.connect(b.local_addr().expect("addr")).expect("connect");
    wait("the signed length", || lock(&r.core).length() == 500);
    assert!(c.fetch(&key, 499, Duration::from_secs(5)));
    assert_eq!(lock(&r.core).get(499).expect("stored"), b"block 499");
}

/// Two nodes open the ranges channel and a full download asks for runs of blocks: over QUIC
/// and over the JS wire (where each connection's reader hashes the answers before they are
/// verified), 3,000 blocks arrive whole and verified for a few requests' bytes. Asked a block
/// a request, the replica would send at least 8 bytes a block (24 KB).
#[test]
fn a_full_download_between_nodes_asks_in_ranges() {
    for transport in [Transport::Quic, Transport::Tcp] {
        // The writer's node (`_a`) serves until the end of each round.
        let (_a, s, b) = match transport {
            Transport::Quic => {
                let w = writer(3000);
                let a = node(60, vec![w.clone()]);
                let s = replica(w.key(), true);
                let b = node(61, vec![s.clone()]);
                b.connect(a.local_addr().expect("addr")).expect("connect");
                (a, s, b)
            }
            _ => {
                let (_, a, s, b, _) = js_wire_pair(62, Transport::Tcp, 3000, true);
                (a, s, b)
            }
        };
        wait("the full download", || lock(&s.core).local_blocks() == 3000);
        let c = lock(&s.core);
        assert!(c.verify_local().expect("verify").is_empty(), "{transport:?}");
        assert_eq!(c.get(2999).expect("stored"), b"block 2999");
        let up = b.peers()[0].bytes_up;
        assert!(up < 4096, "{transport:?}: the replica sent {up} bytes to ask for 3,000 blocks");
    }
}

#[test]
fn a_node_without_the_key_gets_nothing() {
    let w = writer(10);
    let key = w.key();
    let a = node(6, vec![w]);
    // It shares another core, and asks for ours by a key it does not have: nothing opens.
    let stranger = node(7, vec![writer_other()]);
    stranger.connect(a.local_addr().expect("addr")).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!stranger.fetch(&key, 1, Duration::from_millis(500)));
    assert!(stranger.peers().iter().all(|p| p.cores.is_empty()));
    assert!(a.peers().iter().all(|p| p.cores.is_empty()), "no channel opened for the stranger");
}

fn writer_other() -> Arc<Slot> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let core = Hypercore::create(store, KeyPair::from_seed(&[10; 32]), false).expect("core");
    Arc::new(Slot { core: Mutex::new(core), all: false })
}

/// How the hostile peer below breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Upgrades signed by another key.
    BadSignature,
    /// A block whose bytes were changed after its proof was made.
    CorruptBlock,
    /// A block proof with a wrong uncle hash.
    WrongProof,
    /// A frame claiming more than the frame limit.
    Oversized,
    /// A frame whose body is not a message.
    Malformed,
    /// Far more requests than the budget.
    Flood,
    /// Says it has every block, answers nothing.
    Silent,
}

/// A peer that knows the key and dials the victim over real QUIC with a valid capability, then
/// answers from `writer`'s real proofs, broken as `lie` says. Returns when the victim hangs up
/// (or after 10 s, an error).
fn hostile(h: &Endpoint, victim: SocketAddr, writer: &Hypercore, lie: Lie) -> Result<(), String> {
    let key = *writer.key();
    let inner = h.inner.clone();
    h.runtime.block_on(async move {
        let conn = inner
            .endpoint
            .connect_with(inner.client.clone(), victim, "hyperfs")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let mut secret = [0u8; 64];
        conn.export_keying_material(&mut secret, EXPORTER_LABEL, b"").map_err(|_| "exporter".to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut out = vec![STREAM_VERSION];
        let open = Control::Open {
            local_id: 1,
            protocol: PROTOCOL.into(),
            id: Some(crypto::discovery_key(&key).0.to_vec()),
            flags: 1,
            capability: capability(&secret, true, &key),
        };
        out.extend(Frame::Control(open).encode());
        send.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let read = tokio::time::timeout_at(deadline.into(), recv.read(&mut chunk)).await;
            let n = match read {
                Err(_) => return Err("the victim never hung up".into()),
                Ok(Err(_)) | Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(n))) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut reply = Vec::new();
            while let Some((frame, len)) = Frame::take(&buf).map_err(|e| e.to_string())? {
                buf.drain(..len);
                match frame {
                    // The core's channel (the victim opens others too: its ranges channel).
                    Frame::Control(Control::Open { protocol, .. }) if protocol == PROTOCOL => {
                        // On its own channel (1, opened above).
                        let to = |message| Frame::Channel { channel: 1, message }.encode();
                        let sync = Message::Sync {
                            flags: crate::wire::sync_flags::CAN_UPGRADE | crate::wire::sync_flags::UPLOADING,
                            fork: 0,
                            length: writer.length(),
                            remote_length: 0,
                        };
                        reply.extend(to(sync));
                        reply.extend(to(Message::Range { drop: false, start: 0, length: writer.length() }));
                        match lie {
                            Lie::Oversized => reply.extend([0xfe, 0, 0, 0, 0x10]),
                            Lie::Malformed => reply.extend([3, 1, 0xee, 0xee]),
                            Lie::Flood => {
                                let ask = hyperfs_engine::hypercore::proof::Request {
                                    block: Some(hyperfs_engine::hypercore::proof::RequestIndexed {
                                        index: 0,
                                        nodes: 0,
                                    }),
                                    ..Default::default()
                                };
                                for id in 0..100_000 {
                                    reply.extend(to(Message::Request { id, request: ask.clone(), priority: None }));
                                }
                            }
                            _ => {}
                        }
                    }
                    Frame::Channel { message: Message::Request { id, request, .. }, .. } => {
                        if lie == Lie::Silent {
                            continue;
                        }
                        let Ok(mut proof) = writer.proof(&request) else { continue };
                        match lie {
                            Lie::BadSignature => {
                                if let Some(u) = &mut proof.upgrade {
                                    u.signature = KeyPair::from_seed(&[66; 32]).sign(b"something else").to_vec();
                                }
                            }
                            Lie::CorruptBlock => {
                                if let Some(b) = &mut proof.block {
                                    b.value[0] ^= 1;
                                }
                            }
                            Lie::WrongProof => {
                                if let Some(n) = proof.block.as_mut().and_then(|b| b.nodes.first_mut()) {
                                    n.hash[0] ^= 1;
                                }
                            }
                            _ => {}
                        }
                        reply.extend(
                            Frame::Channel { channel: 1, message: Message::Data { request: id, proof } }.encode(),
                        );
                    }
                    _ => {}
                }
            }
            if !reply.is_empty() && send.write_all(&reply).await.is_err() {
                return Ok(());
            }
        }
    })
}

#[test]
fn a_hostile_peer_is_dropped_and_nothing_it_sent_is_stored() {
    let w = writer(50);
    let key = w.key();
    let truth = Hypercore::open(lock(&w.core).store().clone(), &key).expect("open").expect("core");
    for (i, lie) in [Lie::BadSignature, Lie::CorruptBlock, Lie::WrongProof, Lie::Oversized, Lie::Malformed, Lie::Flood]
        .into_iter()
        .enumerate()
    {
        let r = replica(key, false);
        let victim = node(20 + i as u8, vec![r.clone()]);
        let h = node(40 + i as u8, Vec::new());
        let addr = victim.local_addr().expect("addr");
        // A reader on the victim asks for a block while the liar is its only peer.
        let done = std::sync::atomic::AtomicBool::new(false);
        let reading = std::thread::scope(|s| {
            let fetcher = s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if victim.fetch(&key, 7, Duration::from_millis(200)) {
                        return true;
                    }
                }
                false
            });
            let result = hostile(&h, addr, &truth, lie);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (result, fetcher.join().expect("fetcher"))
        });
        let (result, fetched) = reading;
        assert_eq!(result, Ok(()), "{lie:?}: the victim hung up on the liar");
        assert!(!fetched, "{lie:?}: the victim got no block from the liar");
        let c = lock(&r.core);
        assert_eq!(c.local_blocks(), 0, "{lie:?}: nothing the liar sent was stored");
        if lie == Lie::BadSignature {
            assert_eq!(c.length(), 0, "a badly signed length is not taken");
        }
        drop(c);
        wait("the liar to be gone", || victim.peers().is_empty());
    }
}

#[test]
fn a_silent_peer_is_passed_over_then_dropped_and_an_honest_one_answers() {
    let w = writer(50);
    let key = w.key();
    let truth = Hypercore::open(lock(&w.core).store().clone(), &key).expect("open").expect("core");
    let a = node(60, vec![w]);
    let r = replica(key, false);
    let victim = node(61, vec![r.clone()]);
    victim.set_request_timeout(Duration::from_millis(300));
    let h = node(62, Vec::new());
    let addr = victim.local_addr().expect("addr");
    std::thread::scope(|s| {
        let silent = s.spawn(|| hostile(&h, addr, &truth, Lie::Silent));
        // The silent peer is connected first, so readers ask it first.
        wait("the silent peer", || victim.peers().len() == 1);
        victim.connect(a.local_addr().expect("addr")).expect("connect");
        wait("both peers' channels", || {
            victim.peers().iter().all(|p| p.cores == vec![key]) && victim.peers().len() == 2
        });
        // Readers take turns asking each peer first: the silent one delays a read by a moment,
        // the honest one answers, and after three misses in a row the silent one is dropped.
        for index in [3u64, 17, 29, 41, 43, 45, 47, 49] {
            let t = Instant::now();
            assert!(victim.fetch(&key, index, Duration::from_secs(10)), "block {index} comes from the honest peer");
            let took = t.elapsed();
            assert!(took < Duration::from_secs(3), "block {index} waited {took:?} on the silent peer");
        }
        assert_eq!(silent.join().expect("silent peer"), Ok(()), "the victim hung up on the silent peer");
    });
    assert_eq!(lock(&r.core).get(49).expect("stored"), b"block 49");
    let peers = victim.peers();
    assert_eq!(peers.len(), 1, "only the honest peer is left");
    assert_eq!(peers[0].id, Identity::from_seed(&[60; 32]).peer_id());
}

#[test]
fn concurrent_readers_of_one_block_share_one_request() {
    let w = writer(100);
    let key = w.key();
    let a = node(63, vec![w]);
    let r = replica(key, false);
    let b = node(64, vec![r.clone()]);
    b.connect(a.local_addr().expect("addr")).expect("connect");
    wait("the signed length", || lock(&r.core).length() == 100);
    // What one reader of one block costs…
    assert!(b.fetch(&key, 76, Duration::from_secs(5)));
    let one = a.transferred(&key).0;
    // …is what eight readers of another block cost together.
    let got: Vec<bool> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..8).map(|_| s.spawn(|| b.fetch(&key, 77, Duration::from_secs(5)))).collect();
        readers.into_iter().map(|t| t.join().expect("reader")).collect()
    });
    assert!(got.iter().all(|&ok| ok), "every reader got the block");
    let eight = a.transferred(&key).0 - one;
    assert!(eight < 2 * one, "eight readers of one block cost {eight} bytes, one reader {one}");
    assert_eq!(lock(&r.core).local_blocks(), 2);
}

#[test]
fn two_nodes_dialing_each_other_at_once_keep_one_connection() {
    let w = writer(20);
    let key = w.key();
    let a = node(70, vec![w]);
    let r = replica(key, false);
    let b = node(71, vec![r.clone()]);
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    std::thread::scope(|s| {
        let x = s.spawn(|| a.connect(ba));
        let y = s.spawn(|| b.connect(aa));
        x.join().expect("a dials").expect("a connects");
        y.join().expect("b dials").expect("b connects");
    });
    wait("one connection each way", || a.peers().len() == 1 && b.peers().len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((a.peers().len(), b.peers().len()), (1, 1), "a duplicate connection survived");
    wait("the channel", || b.peers()[0].cores == vec![key]);
    assert!(b.fetch(&key, 11, Duration::from_secs(5)), "the connection kept works");
}

/// A peer flooding a node over real QUIC (a bitfield far past its budget) is dropped, refused
/// when it connects again, and an honest reader is served meanwhile.
#[test]
fn a_flooding_peer_is_dropped_and_refused_while_an_honest_reader_is_served() {
    let w = writer(100);
    let key = w.key();
    let a = node(61, vec![w]);
    let addr = a.local_addr().expect("addr");
    let flooder = node(62, vec![replica(key, false)]);
    flooder.connect(addr).expect("connect");
    wait("the flooder's channel", || flooder.send_raw(&key, &[]) > 0);
    let flood = [Message::Bitfield { start: 0, bitfield: vec![0x5555_5555; 1 << 20] }];
    flooder.send_raw(&key, &flood);
    wait("the node to drop the flooder", || a.peers().is_empty());
    assert!(
        flooder.connect(addr).is_err() || {
            // The handshake may finish before the node closes the connection: it does not last.
            std::thread::sleep(Duration::from_millis(300));
            a.peers().is_empty()
        }
    );
    let r = replica(key, false);
    let honest = node(63, vec![r.clone()]);
    honest.connect(addr).expect("an honest peer connects");
    wait("the signed length", || lock(&r.core).length() == 100);
    assert!(honest.fetch(&key, 42, Duration::from_secs(5)), "the honest reader is served");
    assert_eq!(a.peers().len(), 1, "only the honest peer is connected");
}

/// A peer whose certificate carries another node's public key (as a subject name, ahead of its
/// own key) once took that node's id — and, two connections then claiming one id, evicted the
/// real one. The id is the key the handshake verified: both stay, each under its own id.
#[test]
fn a_certificate_carrying_another_nodes_key_does_not_take_its_id() {
    let w = writer(20);
    let key = w.key();
    let v = node(80, vec![w]);
    let addr = v.local_addr().expect("addr");
    // An honest node whose key reads as UTF-16 without surrogates (so it fits a BMPString).
    let seed = (81u8..=255)
        .find(|&s| Identity::from_seed(&[s; 32]).peer_id().0.chunks(2).all(|c| !(0xd8..=0xdf).contains(&c[0])))
        .expect("a seed");
    let honest_id = Identity::from_seed(&[seed; 32]).peer_id();
    let honest_core = replica(key, false);
    let honest = node(seed, vec![honest_core.clone()]);
    honest.connect(addr).expect("honest connects");
    wait("the signed length", || lock(&honest_core.core).length() == 20);
    wait("the honest peer", || v.peers().len() == 1);
    let mut smuggled = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    smuggled.extend_from_slice(&honest_id.0);
    let liar_identity = Identity::from_seed(&[79; 32]).with_name_bytes(smuggled);
    let liar_id = liar_identity.peer_id();
    let liar = Endpoint::start(
        &liar_identity,
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(Cores(vec![replica(key, false)])),
    )
    .expect("endpoint");
    let claimed = liar.connect(addr);
    wait("both peers", || v.peers().len() == 2);
    let mut ids: Vec<PeerId> = v.peers().iter().map(|p| p.id).collect();
    ids.sort();
    let mut want = vec![honest_id, liar_id];
    want.sort();
    assert_eq!(ids, want, "each under the key its handshake proved ({claimed:?})");
    assert!(honest.fetch(&key, 7, Duration::from_secs(5)), "the honest peer is still served");
}

/// One address holds at most eight incoming connections at once: a ninth from it is refused,
/// the eight stay served.
#[test]
fn a_ninth_connection_from_one_address_is_refused() {
    let w = writer(10);
    let key = w.key();
    let v = node(90, vec![w]);
    let addr = v.local_addr().expect("addr");
    let first = replica(key, false);
    let peers: Vec<Endpoint> =
        (91..100u8).map(|s| node(s, vec![if s == 91 { first.clone() } else { replica(key, false) }])).collect();
    let connected: Vec<bool> = peers.iter().map(|p| p.connect(addr).is_ok()).collect();
    assert_eq!(connected.iter().filter(|&&c| c).count(), MAX_INCOMING_PER_IP, "{connected:?}");
    assert!(!connected[MAX_INCOMING_PER_IP], "the ninth is the one refused");
    wait("eight peers", || v.peers().len() == MAX_INCOMING_PER_IP);
    wait("the signed length", || lock(&first.core).length() == 10);
    assert!(peers[0].fetch(&key, 3, Duration::from_secs(5)), "those admitted are served");
}

/// The JS stack's wire between two nodes: Noise XX over TCP, secret-stream, protomux. A replica
/// reads on demand, follows appends, and each side knows the other for a hyperfs node (its
/// hello channel), so seeks go in one round trip.
#[test]
fn two_nodes_replicate_over_the_js_wire() {
    let (w, a, r, b, peer) = js_wire_pair(41, Transport::Tcp, 300, false);
    let key = w.key();
    assert_eq!(peer, Identity::from_seed(&[41; 32]).peer_id(), "the Noise key is the node's key");
    wait("the signed length", || lock(&r.core).length() == 300);
    assert!(b.fetch(&key, 250, Duration::from_secs(5)));
    assert_eq!(lock(&r.core).get(250).expect("stored"), b"block 250");
    assert_eq!(lock(&r.core).local_blocks(), 1, "only what was read travels");
    lock(&w.core).append(b"fresh").expect("append");
    a.changed(&key);
    wait("the append", || lock(&r.core).length() == 301);
    assert!(b.fetch(&key, 300, Duration::from_secs(5)));
    assert_eq!(lock(&r.core).get(300).expect("stored"), b"fresh");
    wait("the hello", || b.peers().first().is_some_and(|p| p.hyperfs));
    // A seek goes as hyperfs's one-round-trip SeekBlock between nodes, on this wire too.
    let t = Instant::now();
    assert!(b.seek(&key, 2000, Duration::from_secs(5)), "the seek was answered");
    assert!(t.elapsed() < Duration::from_secs(1), "answered in {:?}", t.elapsed());
    let p = &b.peers()[0];
    assert_eq!((p.transport, p.hyperfs), (Transport::Tcp, true));
    assert!(lock(&r.core).verify_local().expect("verify").is_empty());
}

/// A writer of `blocks` blocks on node `seed`, listening on the JS wire over `transport`, and a
/// replica (downloading everything with `all`) on node `seed + 1` that dialed it: the writer,
/// its node, the replica, its node, and the writer's id as the replica's node knows it.
fn js_wire_pair(
    seed: u8,
    transport: Transport,
    blocks: usize,
    all: bool,
) -> (Arc<Slot>, Endpoint, Arc<Slot>, Endpoint, PeerId) {
    let w = writer(blocks);
    let a = node(seed, vec![w.clone()]);
    let any = "127.0.0.1:0".parse().expect("addr");
    let at = match transport {
        Transport::Udx => a.listen_udx(any),
        _ => a.listen_tcp(any),
    }
    .expect("listen");
    let r = replica(w.key(), all);
    let b = node(seed + 1, vec![r.clone()]);
    // As the swarm dials it: by address, the transport noted.
    b.dial_as(at, transport);
    let peer = b.connect(at).expect("connect");
    assert_eq!(b.connect(at).expect("again"), peer, "dialed again, the connection there is the answer");
    (w, a, r, b, peer)
}

/// Writes `bytes` to a fresh TCP connection to `addr` after an honest secret-stream handshake
/// as initiator (or instead of one), and returns whether the node closed it within 5 s.
fn closed_after(addr: SocketAddr, handshake: bool, send: impl FnOnce(&mut secretstream::Stream) -> Vec<u8>) -> bool {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("tcp");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut out = Vec::new();
    let me = crate::noise::KeyPair::generate();
    let mut opening = secretstream::Opening::start(true, me, &mut out).expect("start");
    s.write_all(&out).expect("msg1");
    let mut stream = None;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while handshake && stream.is_none() {
        let n = s.read(&mut chunk).expect("handshake reply");
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some((body, used)) = secretstream::take_frame(&buf[at..]) {
            let body = at + body.start..at + body.end;
            at += used;
            let mut o = Vec::new();
            if let Some(open) = opening.on_frame(&buf[body], &mut o).expect("frame") {
                stream = Some(open);
            }
            s.write_all(&o).expect("write");
            if stream.is_some() {
                // What follows the header is the node's encrypted messages: not read here.
                break;
            }
        }
        buf.drain(..at);
    }
    let bytes = match stream.as_mut() {
        Some(st) => send(st),
        None => b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    };
    let _ = s.write_all(&bytes);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

/// The protomux message that opens `key`'s channel with capability `cap`.
fn open_message(key: &CoreKey, cap: [u8; 32]) -> Vec<u8> {
    let mut m = Vec::new();
    Frame::Control(Control::Open {
        local_id: 1,
        protocol: PROTOCOL.into(),
        id: Some(crypto::discovery_key(key).0.to_vec()),
        flags: 1,
        capability: cap,
    })
    .encode_message(&mut m);
    m
}

/// What a hostile JS-wire peer gets: a wrong capability, garbage after the handshake, a frame
/// that does not authenticate, or a bad handshake each close the connection, and nothing is
/// stored.
#[test]
fn a_hostile_peer_on_the_js_wire_is_closed_with_nothing_stored() {
    let w = writer(10);
    let key = w.key();
    let r = replica(key, true);
    let a = node(43, vec![r.clone()]);
    let tcp = a.listen_tcp("127.0.0.1:0".parse().expect("addr")).expect("listen");
    let open = |cap: [u8; 32]| open_message(&key, cap);
    assert!(
        closed_after(tcp, true, |s| {
            let mut out = Vec::new();
            s.send(&mut out, &open([7; 32]));
            out
        }),
        "a wrong capability closes the connection"
    );
    let garbage: Vec<u8> = [40, 0, 0].into_iter().chain((0..40).map(|i| (i * 37) as u8)).collect();
    assert!(closed_after(tcp, true, |_| garbage), "garbage after the handshake");
    assert!(closed_after(tcp, true, |_| vec![3, 0, 0, 1, 2, 3]), "a frame too short for a message");
    assert!(
        closed_after(tcp, true, |s| {
            let mut out = Vec::new();
            s.send(&mut out, b"\x01\x00\x07\x00\x00\x00");
            let n = out.len();
            out[n - 1] ^= 1;
            out
        }),
        "a frame that does not authenticate"
    );
    assert!(closed_after(tcp, false, |_| Vec::new()), "a bad handshake");
    // A right capability on an honest connection is kept (the writer's side of the test).
    let honest = closed_after(tcp, true, |s| {
        let mut out = Vec::new();
        let cap = capability(&s.handshake.hash, true, &key);
        s.send(&mut out, &open(cap));
        out
    });
    assert!(!honest, "an honest open is not closed");
    assert_eq!(lock(&r.core).length(), 0);
    assert_eq!(lock(&r.core).local_blocks(), 0, "nothing stored");
    // Wrong capabilities and bad frames do not ban the address: the honest one came through.
}

/// The JS wire over UDX between two nodes: the same replication as over TCP, on UDX streams
/// (the dialer's random id used both ways).
#[test]
fn two_nodes_replicate_over_udx() {
    let (w, a, r, b, peer) = js_wire_pair(44, Transport::Udx, 2000, true);
    let key = w.key();
    assert_eq!(peer, Identity::from_seed(&[44; 32]).peer_id());
    wait("the full download", || lock(&r.core).local_blocks() == 2000);
    assert_eq!(lock(&r.core).get(1999).expect("stored"), b"block 1999");
    lock(&w.core).append(b"fresh").expect("append");
    a.changed(&key);
    wait("the append", || lock(&r.core).local_blocks() == 2001);
    let p = &b.peers()[0];
    assert_eq!((p.transport, p.hyperfs), (Transport::Udx, true));
    assert!(lock(&r.core).verify_local().expect("verify").is_empty());
}

/// Nodes that prefer TCP meet over it on the QUIC port number when the peer listens there
/// (hyperfs's own messages on, as over QUIC), and reach a node that accepts QUIC only over QUIC.
#[test]
fn a_node_preferring_tcp_dials_it_and_falls_back_to_quic() {
    let w = writer(500);
    let key = w.key();
    let a = node(47, vec![w.clone()]);
    let at = a.local_addr().expect("addr");
    assert_eq!(a.listen_tcp(at).expect("tcp on the QUIC port"), at);
    assert_eq!(a.listen_tcp(at).expect("again"), at, "the listener there is the answer");
    let r = replica(key, true);
    let b = node(48, vec![r.clone()]);
    // As a node does: TCP on its QUIC port number, from which it dials.
    b.listen_tcp(b.local_addr().expect("addr")).expect("tcp");
    b.prefer_tcp(true);
    b.connect(at).expect("connect");
    wait("the full download", || lock(&r.core).local_blocks() == 500);
    wait("the hello", || b.peers().first().is_some_and(|p| p.hyperfs));
    assert_eq!(b.peers()[0].transport, Transport::Tcp);
    assert_eq!(a.peers()[0].transport, Transport::Tcp);
    // From b's own port: a sees the address it would dial b at.
    assert_eq!(a.peers()[0].address, b.local_addr().expect("addr"));
    // A node with no TCP listener on its port: QUIC.
    let quic_only = node(49, vec![w]);
    let r2 = replica(key, true);
    let c = node(50, vec![r2.clone()]);
    c.listen_tcp(c.local_addr().expect("addr")).expect("tcp");
    c.prefer_tcp(true);
    c.connect(quic_only.local_addr().expect("addr")).expect("connect");
    wait("the full download over QUIC", || lock(&r2.core).local_blocks() == 500);
    assert_eq!(c.peers()[0].transport, Transport::Quic);
    assert!(lock(&r.core).verify_local().expect("verify").is_empty());
    assert!(lock(&r2.core).verify_local().expect("verify").is_empty());
}

/// Over UDX as over TCP: a wrong capability or garbage after the handshake closes the stream
/// (an END comes back), and nothing is stored.
#[test]
fn a_hostile_peer_over_udx_is_closed_with_nothing_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = writer(10);
    let key = w.key();
    let r = replica(key, true);
    let a = node(46, vec![r.clone()]);
    let udx = a.listen_udx("127.0.0.1:0".parse().expect("addr")).expect("listen");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sock = crate::udx_socket::UdxSocket::bind("127.0.0.1:0".parse().expect("addr"), None).await.expect("bind");
        let wrong_cap = |s: &mut secretstream::Stream| {
            let mut out = Vec::new();
            s.send(&mut out, &open_message(&key, [9; 32]));
            out
        };
        let garbage = |_: &mut secretstream::Stream| -> Vec<u8> {
            [40, 0, 0].into_iter().chain((0..40).map(|i| (i * 53) as u8)).collect()
        };
        type Bytes<'a> = &'a dyn Fn(&mut secretstream::Stream) -> Vec<u8>;
        let cases: [(&str, Bytes); 2] = [("a wrong capability", &wrong_cap), ("garbage after the handshake", &garbage)];
        for (what, bytes) in cases {
            let pipe = sock.dial(udx);
            let (mut pipe, (mut stream, _, _)) =
                open_secret_stream(pipe, true, crate::noise::KeyPair::generate()).await.expect("handshake");
            pipe.write_all(&bytes(&mut stream)).await.expect("write");
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 4096];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "{what}: the stream was not closed");
        }
    });
    assert_eq!(lock(&r.core).length(), 0);
    assert_eq!(lock(&r.core).local_blocks(), 0, "nothing stored");
}

/// Both ends of a secret stream, its handshake run in memory.
fn secret_stream_pair() -> (secretstream::Stream, secretstream::Stream) {
    use crate::noise::KeyPair as NoiseKeys;
    let mut out = [Vec::new(), Vec::new()];
    let [oa, ob] = &mut out;
    let mut opening = [
        secretstream::Opening::start(true, NoiseKeys::from_seed(&[1; 32]), oa).expect("start"),
        secretstream::Opening::start(false, NoiseKeys::from_seed(&[2; 32]), ob).expect("start"),
    ];
    let mut streams: [Option<secretstream::Stream>; 2] = [None, None];
    for _ in 0..8 {
        for from in 0..2 {
            let to = 1 - from;
            let bytes = std::mem::take(&mut out[from]);
            let mut at = 0;
            while let Some((body, used)) = secretstream::take_frame(&bytes[at..]) {
                let frame = bytes[at + body.start..at + body.end].to_vec();
                at += used;
                if let Some(s) = opening[to].on_frame(&frame, &mut out[to]).expect("handshake") {
                    streams[to] = Some(s);
                }
            }
        }
    }
    let [a, b] = streams;
    (a.expect("the initiator's stream"), b.expect("the responder's stream"))
}

/// Between hyperfs nodes the JS wire moves to AES-256-GCM: the frames after a side's
/// `CipherSwitch` decode to the same messages in order (a keep-alive to none), and a flipped bit
/// in one fails it.
#[test]
fn frames_after_a_cipher_switch_are_sealed_with_aes_and_authenticated() {
    let (a, b) = secret_stream_pair();
    let mut send = Codec::Js(Box::new(JsCodec::new(a)));
    let mut receive = Codec::Js(Box::new(JsCodec::new(b)));
    let range = |start: u64| Frame::Channel { channel: 2, message: Message::Range { drop: false, start, length: 3 } };
    let switch = Frame::Channel { channel: 1, message: Message::CipherSwitch };
    let mut wire = Vec::new();
    send.encode(&range(1), &mut wire);
    send.encode(&switch, &mut wire);
    let sealed = wire.len();
    send.encode(&range(2), &mut wire);
    if let Codec::Js(s) = &mut send {
        s.send_with(&mut wire, |_| {});
    }
    send.encode(&range(3), &mut wire);
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(n) = receive.take(&mut wire[at..], &mut frames).expect("every frame opens") {
        at += n;
    }
    assert_eq!(at, wire.len());
    let got: Vec<Frame> = frames.into_iter().map(|f| f.0).collect();
    assert_eq!(got, vec![range(1), switch.clone(), range(2), range(3)]);

    let (a, b) = secret_stream_pair();
    let (mut send, mut receive) = (Codec::Js(Box::new(JsCodec::new(a))), Codec::Js(Box::new(JsCodec::new(b))));
    let mut tampered = Vec::new();
    for f in [range(1), switch, range(2)] {
        send.encode(&f, &mut tampered);
    }
    tampered[sealed + 6] ^= 1;
    let mut frames = Vec::new();
    let first = receive.take(&mut tampered, &mut frames).expect("before the switch").expect("whole");
    let second = receive.take(&mut tampered[first..], &mut frames).expect("the switch").expect("whole");
    assert!(receive.take(&mut tampered[first + second..], &mut frames).is_err(), "a flipped bit fails");
}

/// Punches through a random NAT cost hundreds of sockets or probes each: a node runs two at
/// once, and a third waits until one ends (a server answers TRY_LATER, a client takes a relay).
#[test]
fn random_punches_are_two_at_once() {
    let punches = hyperdht::RandomPunches::default();
    let (a, b) = (punches.take().expect("a first"), punches.take().expect("a second"));
    assert!(punches.take().is_none(), "a third while two run");
    drop(a);
    let c = punches.take().expect("one ended: another may start");
    assert!(punches.take().is_none());
    drop((b, c));
}

/// A node listening on every IPv4 address takes the same port on every IPv6 address: a peer
/// dials it at `[::1]` and replicates, over QUIC, and the connection is the IPv6 address's.
#[test]
fn a_node_on_every_address_is_reached_over_ipv6_too() {
    let w = writer(20);
    let key = w.key();
    let id = Identity::from_seed(&[1; 32]);
    let a = Endpoint::start(&id, "0.0.0.0:0".parse().expect("addr"), Arc::new(Cores(vec![w]))).expect("endpoint");
    let v6 = a.local_addr6().expect("an IPv6 socket beside the IPv4 one");
    assert_eq!(v6.port(), a.local_addr().expect("addr").port(), "the same port number");
    assert!(node(3, vec![]).local_addr6().is_none(), "a node on one IPv4 address has no IPv6 socket");
    let r = replica(key, false);
    let id_b = Identity::from_seed(&[2; 32]);
    let b = Endpoint::start(&id_b, "0.0.0.0:0".parse().expect("addr"), Arc::new(Cores(vec![r.clone()]))).expect("b");
    let at: SocketAddr = format!("[::1]:{}", v6.port()).parse().expect("addr");
    let peer = b.connect(at).expect("connect over IPv6");
    assert_eq!(peer, id.peer_id());
    wait("the signed length", || lock(&r.core).length() == 20);
    assert!(b.fetch(&key, 7, Duration::from_secs(5)), "block 7 arrives over IPv6");
    assert_eq!(lock(&r.core).get(7).expect("stored"), b"block 7");
    assert_eq!(b.peers()[0].address, at);
}

#[test]
fn only_unicast_ipv6_addresses_other_hosts_can_have_are_dialed() {
    let dialable = |s: &str| hyperdht::dialable6(&s.parse().expect("an IPv6 socket address"));
    assert!(dialable("[2001:db8::7]:4000"));
    assert!(dialable("[fd48:1::2]:4000"), "unique local addresses are how LANs and tests meet");
    for junk in
        ["[::1]:4000", "[::]:4000", "[ff02::1]:4000", "[fe80::1]:4000", "[::ffff:10.0.0.1]:4000", "[2001:db8::7]:0"]
    {
        assert!(!dialable(junk), "{junk}");
    }
}

/// Whatever two connections a pair of nodes holds, both sides keep the same one: never one
/// side the old and the other the new, never both waiting on the other; and a relayed one
/// gives way to one that is not.
#[test]
fn both_sides_keep_the_same_one_of_two_connections() {
    let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
    let paths = [Path::Direct, Path::Punched, Path::Relayed];
    for (me, them) in [(a, b), (b, a)] {
        for old in [true, false].into_iter().flat_map(|d| paths.map(|p| (d, p))) {
            for new in [true, false].into_iter().flat_map(|d| paths.map(|p| (d, p))) {
                let ours = keep(&me, &them, old, new);
                let theirs = keep(&them, &me, (!old.0, old.1), (!new.0, new.1));
                let agree = match (ours, theirs) {
                    (Keep::Both, Keep::Both) => false,
                    (Keep::Both, _) | (_, Keep::Both) => true,
                    (x, y) => x == y,
                };
                assert!(agree, "{old:?} then {new:?}: we keep {ours:?}, they {theirs:?}");
                let relayed = |c: (bool, Path)| c.1 == Path::Relayed;
                if relayed(old) != relayed(new) {
                    assert_eq!(ours, if relayed(old) { Keep::New } else { Keep::Old });
                }
            }
        }
    }
}
