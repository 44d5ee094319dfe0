//! The persistent node's answers, request by request, on simulated time.

use super::*;
use crate::dht::{announce_value, decode_lookup_reply};
use hyperfs_engine::crypto::KeyPair;
use proptest::prelude::*;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().expect("an address")
}

const ME: &str = "10.0.0.1:49737";

fn node(now: Instant) -> Node {
    Node::new(Some(a(ME)), now)
}

fn request(command: u64, target: Option<[u8; 32]>, token: Option<[u8; 32]>, value: Option<Vec<u8>>) -> Request {
    Request { tid: 7, to: a(ME), id: None, token, internal: false, command, target, value }
}

/// The one response `outs` holds, and where it goes.
fn response(outs: &[Out]) -> (Response, SocketAddrV4) {
    assert_eq!(outs.len(), 1, "{outs:?}");
    match &outs[0] {
        (Message::Response(r), to) => (r.clone(), *to),
        other => panic!("not a response: {other:?}"),
    }
}

/// An announce of `key`'s public key under `target` at `node`, signed for the token it gave
/// `from` (by a LOOKUP, as a client does).
fn announce(n: &mut Node, key: &KeyPair, target: [u8; 32], from: SocketAddrV4, now: Instant, ns: u64) -> Vec<Out> {
    let asked = n.on_request(&request(command::LOOKUP, Some(target), None, None), from, now);
    let token = response(&asked).0.token.expect("a token");
    let peer = Peer { public_key: key.public_key(), relay_addresses: vec![a("10.0.0.9:4000")] };
    let id = n.id().expect("an id");
    let signature = key.sign(&signable(&namespace(ns), &target, &id, &token, &peer));
    n.on_request(&request(ns, Some(target), Some(token), Some(announce_value(&peer, &signature))), from, now)
}

#[test]
fn an_announce_is_found_by_lookup_and_unannounced_only_with_a_signature() {
    let now = Instant::now();
    let mut n = node(now);
    let (key, topic, from) = (KeyPair::from_seed(&[1; 32]), [0x77; 32], a("10.0.0.2:5000"));
    let took = announce(&mut n, &key, topic, from, now, command::ANNOUNCE);
    assert_eq!((response(&took).0.error, response(&took).1), (0, from), "taken, and said so to the announcer");
    let found = n.on_request(&request(command::LOOKUP, Some(topic), None, None), a("10.0.0.3:6000"), now);
    let (r, _) = response(&found);
    assert_eq!(r.id, Some(node_id(&a(ME))), "a persistent node says its id");
    let peers = decode_lookup_reply(r.value.as_deref().expect("records")).expect("a lookup reply");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, key.public_key());

    // Another key cannot unannounce it: no answer, the record stays.
    let other = KeyPair::from_seed(&[2; 32]);
    let asked = n.on_request(&request(command::LOOKUP, Some(topic), None, None), from, now);
    let token = response(&asked).0.token.expect("token");
    let peer = Peer { public_key: key.public_key(), relay_addresses: vec![a("10.0.0.9:4000")] };
    let forged = other.sign(&signable(&namespace(command::UNANNOUNCE), &topic, &node_id(&a(ME)), &token, &peer));
    let value = announce_value(&peer, &forged);
    assert!(n.on_request(&request(command::UNANNOUNCE, Some(topic), Some(token), Some(value)), from, now).is_empty());
    assert!(n.records.contains_key(&topic));
    // Its own key can.
    let gone = announce(&mut n, &key, topic, from, now, command::UNANNOUNCE);
    assert_eq!(response(&gone).0.error, 0);
    assert!(!n.records.contains_key(&topic));
}

#[test]
fn a_token_is_the_senders_ip_s_and_goes_stale() {
    let now = Instant::now();
    let mut n = node(now);
    let (key, topic) = (KeyPair::from_seed(&[1; 32]), [5; 32]);
    let asked = n.on_request(&request(command::LOOKUP, Some(topic), None, None), a("10.0.0.2:5000"), now);
    let token = response(&asked).0.token.expect("token");
    let peer = Peer { public_key: key.public_key(), relay_addresses: Vec::new() };
    let sig = key.sign(&signable(&namespace(command::ANNOUNCE), &topic, &node_id(&a(ME)), &token, &peer));
    let put = request(command::ANNOUNCE, Some(topic), Some(token), Some(announce_value(&peer, &sig)));
    // From another IP the token is wrong: error 2, nothing kept.
    let (r, _) = response(&n.on_request(&put, a("10.0.0.3:5000"), now));
    assert_eq!(r.error, INVALID_TOKEN);
    assert!(n.records.is_empty());
    // Two turns later too.
    let later = now + TOKEN_TURN * 2 + Duration::from_millis(1);
    assert_eq!(response(&n.on_request(&put, a("10.0.0.2:5000"), later)).0.error, INVALID_TOKEN);
    // Within one turn it is taken.
    let mut n = node(now);
    let asked = n.on_request(&request(command::LOOKUP, Some(topic), None, None), a("10.0.0.2:5000"), now);
    let token = response(&asked).0.token.expect("token");
    let sig = key.sign(&signable(&namespace(command::ANNOUNCE), &topic, &node_id(&a(ME)), &token, &peer));
    let put = request(command::ANNOUNCE, Some(topic), Some(token), Some(announce_value(&peer, &sig)));
    let soon = now + TOKEN_TURN + Duration::from_millis(1);
    assert_eq!(response(&n.on_request(&put, a("10.0.0.2:5000"), soon)).0.error, 0);
    assert_eq!(n.records[&topic].len(), 1);
}

/// A server registers (an announce at its key's hash); a client's handshake is relayed to it
/// with the client's address, and the server's answer goes back to the client as the reply to
/// its request. The same for a holepunch round.
#[test]
fn handshakes_and_holepunches_are_relayed_to_a_registered_server_and_back() {
    let now = Instant::now();
    let mut n = node(now);
    let server_key = KeyPair::from_seed(&[3; 32]);
    let target = crypto::hash(&[&server_key.public_key()]);
    let (server, client) = (a("10.0.0.4:7000"), a("10.0.0.5:8000"));
    assert_eq!(response(&announce(&mut n, &server_key, target, server, now, command::ANNOUNCE)).0.error, 0);
    let found = n.on_request(&request(command::FIND_PEER, Some(target), None, None), client, now);
    assert!(response(&found).0.value.is_some(), "FIND_PEER finds the registration");

    let hs = Handshake { mode: FROM_CLIENT, noise: vec![1, 2, 3], peer_address: None, relay_address: None };
    let outs = n.on_request(&request(command::PEER_HANDSHAKE, Some(target), None, Some(hs.encode())), client, now);
    let [(Message::Request(relayed), to)] = &outs[..] else { panic!("{outs:?}") };
    assert_eq!(*to, server);
    assert_eq!(relayed.tid, 7, "the client's transaction id travels");
    let got = Handshake::decode(relayed.value.as_deref().expect("value")).expect("a handshake");
    assert_eq!((got.mode, got.noise.as_slice(), got.peer_address), (FROM_RELAY, &[1u8, 2, 3][..], Some(client)));

    // The server answers from another socket (its punch's): the client learns that address.
    let puncher = a("10.0.0.4:7001");
    let back = Handshake { mode: FROM_SERVER, noise: vec![9], peer_address: Some(client), relay_address: None };
    let outs = n.on_request(&request(command::PEER_HANDSHAKE, Some(target), None, Some(back.encode())), puncher, now);
    let (r, to) = response(&outs);
    assert_eq!((to, r.tid), (client, 7));
    let reply = Handshake::decode(r.value.as_deref().expect("value")).expect("a handshake");
    assert_eq!((reply.mode, reply.noise, reply.peer_address), (REPLY, vec![9], Some(puncher)));

    let hp = Holepunch { mode: FROM_CLIENT, id: 3, payload: vec![4; 40], peer_address: Some(puncher) };
    let outs = n.on_request(&request(command::PEER_HOLEPUNCH, Some(target), None, Some(hp.encode())), client, now);
    let [(Message::Request(relayed), to)] = &outs[..] else { panic!("{outs:?}") };
    assert_eq!(*to, puncher, "to the server's address the client names");
    let got = Holepunch::decode(relayed.value.as_deref().expect("value")).expect("a holepunch");
    assert_eq!((got.mode, got.id, got.peer_address), (FROM_RELAY, 3, Some(client)));
    let back = Holepunch { mode: FROM_SERVER, id: 0, payload: vec![5; 40], peer_address: Some(client) };
    let outs = n.on_request(&request(command::PEER_HOLEPUNCH, Some(target), None, Some(back.encode())), puncher, now);
    let (r, to) = response(&outs);
    assert_eq!(to, client);
    assert_eq!(Holepunch::decode(r.value.as_deref().expect("value")).expect("hp").mode, REPLY);

    // For a server not registered here: closer nodes for the client, nothing relayed.
    let hs = Handshake { mode: FROM_CLIENT, noise: vec![1], peer_address: None, relay_address: None };
    let outs = n.on_request(&request(command::PEER_HANDSHAKE, Some([1; 32]), None, Some(hs.encode())), client, now);
    let (r, to) = response(&outs);
    assert_eq!((to, r.value.is_none()), (client, true));
    // And a server's message for one not registered here goes nowhere.
    let back =
        Handshake { mode: FROM_SERVER, noise: vec![9], peer_address: Some(a("192.0.2.1:1")), relay_address: None };
    assert!(n
        .on_request(&request(command::PEER_HANDSHAKE, Some([1; 32]), None, Some(back.encode())), puncher, now)
        .is_empty());
    // A registration is forgotten after its age.
    let old = now + MAX_AGE + Duration::from_secs(61);
    let found = n.on_request(&request(command::FIND_PEER, Some(target), None, None), client, old);
    assert!(response(&found).0.value.is_none());
}

#[test]
fn find_node_names_the_nearest_nodes_that_spoke_with_their_true_ids() {
    let now = Instant::now();
    let mut n = node(now);
    let nodes: Vec<SocketAddrV4> = (1..=60).map(|i| SocketAddrV4::new([10, 1, 0, i].into(), 49737)).collect();
    for &addr in &nodes {
        let mut ping = request(internal::PING, None, None, None);
        ping.internal = true;
        ping.id = Some(node_id(&addr));
        assert_eq!(response(&n.on_request(&ping, addr, now)).1, addr);
    }
    // A claimed id that is not the hash of the sender's address puts nobody in the table.
    let liar = a("10.2.0.1:1234");
    let mut ping = request(internal::PING, None, None, None);
    ping.internal = true;
    ping.id = Some(node_id(&nodes[0]));
    n.on_request(&ping, liar, now);
    assert!(!n.closest(&[0; 32], 100).contains(&liar));
    let target = node_id(&nodes[17]);
    let mut find = request(internal::FIND_NODE, Some(target), None, None);
    find.internal = true;
    let (r, _) = response(&n.on_request(&find, a("10.3.0.1:999"), now));
    assert_eq!(r.closer_nodes.len(), K);
    assert_eq!(r.closer_nodes[0], nodes[17], "the node with the target id first");
    let mut want: Vec<SocketAddrV4> = nodes.clone();
    want.sort_by_key(|x| xor(&node_id(x), &target));
    assert_eq!(r.closer_nodes, want[..K].to_vec(), "nearest by XOR, in order");
    assert!(r.token.is_none(), "internal commands give no token");
}

#[test]
fn ping_nat_answers_to_the_port_it_names_and_an_ephemeral_node_keeps_no_records() {
    let now = Instant::now();
    let mut n = node(now);
    let mut req = request(internal::PING_NAT, None, None, Some(4321u16.to_le_bytes().to_vec()));
    req.internal = true;
    let (r, to) = response(&n.on_request(&req, a("10.0.0.8:5555"), now));
    assert_eq!(to, a("10.0.0.8:4321"));
    assert_eq!(r.to, Some(a("10.0.0.8:5555")));

    // Without a known address the node has no id: it helps walks and relays, keeps nothing.
    let mut e = Node::new(None, now);
    let key = KeyPair::from_seed(&[1; 32]);
    let asked = e.on_request(&request(command::LOOKUP, Some([1; 32]), None, None), a("10.0.0.2:1"), now);
    let (r, _) = response(&asked);
    assert_eq!((r.id, r.value.is_none()), (None, true));
    let peer = Peer { public_key: key.public_key(), relay_addresses: Vec::new() };
    let sig = key.sign(&signable(&namespace(command::ANNOUNCE), &[1; 32], &[0; 32], &r.token.expect("t"), &peer));
    e.on_request(
        &request(command::ANNOUNCE, Some([1; 32]), r.token, Some(announce_value(&peer, &sig))),
        a("10.0.0.2:1"),
        now,
    );
    assert!(e.records.is_empty());
}

#[test]
fn a_topic_keeps_its_newest_records_and_a_full_bucket_its_live_nodes() {
    let now = Instant::now();
    let mut n = node(now);
    let topic = [9; 32];
    for i in 0..(MAX_PER_TOPIC as u8 + 5) {
        let key = KeyPair::from_seed(&[i; 32]);
        announce(&mut n, &key, topic, a("10.0.0.2:5000"), now, command::ANNOUNCE);
    }
    assert_eq!(n.records[&topic].len(), MAX_PER_TOPIC);
    assert_eq!(n.record_count, MAX_PER_TOPIC);
    let newest = KeyPair::from_seed(&[MAX_PER_TOPIC as u8 + 4; 32]).public_key();
    assert!(n.records[&topic].iter().any(|(p, _)| p.public_key == newest));
    assert!(!n.records[&topic].iter().any(|(p, _)| p.public_key == KeyPair::from_seed(&[0; 32]).public_key()));

    // Fill one bucket (ids sharing no first bit with this node's: bucket 0) past K.
    let mut filled = Vec::new();
    let mut i = 0u32;
    while filled.len() < K + 5 {
        i += 1;
        let addr = SocketAddrV4::new((0x0b00_0000 + i).into(), 1);
        if bucket(&n.table_id, &node_id(&addr)) == 0 {
            n.heard(addr, node_id(&addr), now);
            filled.push(addr);
        }
    }
    assert_eq!(n.buckets[0].len(), K, "a full bucket keeps the nodes it had");
    assert!(n.buckets[0].iter().all(|e| filled[..K].contains(&e.addr)));
    // Once one went stale, a newcomer takes its place.
    let later = now + STALE;
    n.heard(filled[0], node_id(&filled[0]), later);
    n.heard(filled[K], node_id(&filled[K]), later);
    assert!(n.buckets[0].iter().any(|e| e.addr == filled[K]));
    assert!(n.buckets[0].iter().any(|e| e.addr == filled[0]), "the one heard again stays");
}

proptest! {
    /// Whatever arrives, the node answers with at most one datagram a request, names at most K
    /// nodes, and never panics.
    #[test]
    fn any_request_gets_a_bounded_answer(
        command in 0u64..12,
        internal in any::<bool>(),
        target in proptest::option::of(any::<[u8; 32]>()),
        token in proptest::option::of(any::<[u8; 32]>()),
        value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        port in any::<u16>(),
    ) {
        let now = Instant::now();
        let mut n = node(now);
        let req = Request { tid: 1, to: a(ME), id: None, token, internal, command, target, value };
        let outs = n.on_request(&req, SocketAddrV4::new([10, 0, 0, 2].into(), port), now);
        prop_assert!(outs.len() <= 1);
        for (m, _) in &outs {
            if let Message::Response(r) = m {
                prop_assert!(r.closer_nodes.len() <= K);
            }
        }
    }
}
