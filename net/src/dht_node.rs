//! A persistent HyperDHT node, sans IO: dht-rpc's server side (PING, PING_NAT, FIND_NODE,
//! DOWN_HINT, a routing table, write tokens) and HyperDHT's persistent commands (FIND_PEER,
//! LOOKUP, ANNOUNCE and UNANNOUNCE with their signatures checked, and the router that relays
//! PEER_HANDSHAKE and PEER_HOLEPUNCH between a client and a server registered here), as
//! reference holepunch-wire §6.2–6.4 and §7.1–7.4 describe JS's `dht-rpc` and `hyperdht`. A
//! hyperfs node started with `--hyperdht-node` runs one on its UDX socket: JS and hyperfs nodes
//! bootstrap from it, store their records and registrations on it, and meet through it.
//!
//! [`Node::on_request`] takes a request and the time and returns the datagrams to send; the
//! driver (`dht::Client`) sends them. Everything a request asks is bounded: a reply names at
//! most [`K`] nodes and [`MAX_PEERS`] records, the table holds at most [`K`] nodes per bucket,
//! the records at most [`MAX_RECORDS`] (each [`MAX_PER_TOPIC`] a topic) and the registrations
//! [`MAX_ROUTES`], all forgotten after [`MAX_AGE`]; a relayed message is the size of the one
//! that came. A claimed node id counts only as the hash of the address it came from, an
//! announce only with this node's token for the sender's IP and the announcer's signature.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use hyperfs_engine::crypto;
use hyperfs_engine::encoding::{Decoder, Encoder};

use crate::dht::{
    command, internal, namespace, node_id, signable, Handshake, Holepunch, Message, Peer, Request, Response,
};

/// Nodes a bucket holds, and a reply names.
pub const K: usize = 20;
/// Records a LOOKUP reply carries at most.
pub const MAX_PEERS: usize = 20;
/// Records kept under one topic (the newest announces win).
pub const MAX_PER_TOPIC: usize = 20;
/// Records kept in all, and server registrations.
pub const MAX_RECORDS: usize = 65_536;
pub const MAX_ROUTES: usize = 65_536;
/// How long a record or a registration is kept unless announced again (HyperDHT's 20 min).
pub const MAX_AGE: Duration = Duration::from_secs(20 * 60);
/// A table entry not heard from for this long gives way to a newcomer in a full bucket.
const STALE: Duration = Duration::from_secs(10 * 60);
/// How often the token secrets turn (a token is good for one to two turns, as dht-rpc's).
const TOKEN_TURN: Duration = Duration::from_millis(7_500);
/// dht-rpc's errors.
const UNKNOWN_COMMAND: u64 = 1;
const INVALID_TOKEN: u64 = 2;
/// PEER_HANDSHAKE's and PEER_HOLEPUNCH's modes.
const FROM_CLIENT: u64 = 0;
const FROM_SERVER: u64 = 1;
const FROM_RELAY: u64 = 2;
const REPLY: u64 = 4;

/// A datagram to send and where.
pub type Out = (Message, SocketAddrV4);

/// A server registered here: where its handshakes go, and its record.
#[derive(Debug, Clone)]
struct Route {
    relay: SocketAddrV4,
    peer: Peer,
    at: Instant,
}

/// A node of the routing table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: SocketAddrV4,
    id: [u8; 32],
    seen: Instant,
}

/// The node's state; see the module doc.
#[derive(Debug)]
pub struct Node {
    /// This node's public address and its id (BLAKE2b-256 of it), once known: until then it
    /// answers as an ephemeral node does (no id, no records).
    me: Option<(SocketAddrV4, [u8; 32])>,
    /// What the buckets are reckoned from: the id, or a random one while there is none.
    table_id: [u8; 32],
    buckets: Vec<Vec<Entry>>,
    secrets: [[u8; 32]; 2],
    turned: Instant,
    records: HashMap<[u8; 32], Vec<(Peer, Instant)>>,
    record_count: usize,
    routes: HashMap<[u8; 32], Route>,
    purged: Instant,
}

impl Node {
    pub fn new(me: Option<SocketAddrV4>, now: Instant) -> Node {
        let mut node = Node {
            me: None,
            table_id: rand::random(),
            buckets: vec![Vec::new(); 257],
            secrets: [rand::random(), rand::random()],
            turned: now,
            records: HashMap::new(),
            record_count: 0,
            routes: HashMap::new(),
            purged: now,
        };
        if let Some(me) = me {
            node.set_address(me);
        }
        node
    }

    /// This node's public address is `me` (its id follows): it answers as a persistent node.
    pub fn set_address(&mut self, me: SocketAddrV4) {
        if self.me.map(|(a, _)| a) == Some(me) {
            return;
        }
        let id = node_id(&me);
        self.me = Some((me, id));
        // The buckets are reckoned from the id now.
        let entries: Vec<Entry> = self.buckets.iter().flatten().copied().collect();
        self.table_id = id;
        self.buckets = vec![Vec::new(); 257];
        for e in entries {
            self.add(e.addr, e.id, e.seen);
        }
    }

    /// This node's public address, once known.
    pub fn address(&self) -> Option<SocketAddrV4> {
        self.me.map(|(a, _)| a)
    }

    /// This node's id, once its address is known.
    pub fn id(&self) -> Option<[u8; 32]> {
        self.me.map(|(_, id)| id)
    }

    /// How many nodes the routing table holds.
    pub fn table_len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    /// A node `addr` spoke with id `id` (the caller checked it is the hash of `addr`): it goes
    /// into the table, if its bucket has room or an entry there went stale.
    pub fn heard(&mut self, addr: SocketAddrV4, id: [u8; 32], now: Instant) {
        if id != node_id(&addr) || self.me.is_some_and(|(me, _)| me == addr) {
            return;
        }
        self.add(addr, id, now);
    }

    fn add(&mut self, addr: SocketAddrV4, id: [u8; 32], now: Instant) {
        let b = bucket(&self.table_id, &id);
        let bucket = &mut self.buckets[b];
        if let Some(e) = bucket.iter_mut().find(|e| e.addr == addr) {
            e.seen = e.seen.max(now);
            return;
        }
        if bucket.len() >= K {
            let oldest = bucket.iter().enumerate().min_by_key(|(_, e)| e.seen).map(|(i, e)| (i, e.seen));
            match oldest {
                Some((i, seen)) if now.saturating_duration_since(seen) >= STALE => {
                    bucket.remove(i);
                }
                _ => return,
            }
        }
        bucket.push(Entry { addr, id, seen: now });
    }

    /// The table's nodes nearest `target` (XOR), nearest first, at most `k`.
    pub fn closest(&self, target: &[u8; 32], k: usize) -> Vec<SocketAddrV4> {
        let mut all: Vec<([u8; 32], SocketAddrV4)> =
            self.buckets.iter().flatten().map(|e| (xor(&e.id, target), e.addr)).collect();
        if all.len() > k {
            all.select_nth_unstable_by(k, |a, b| a.0.cmp(&b.0));
            all.truncate(k);
        }
        all.sort_by_key(|a| a.0);
        all.into_iter().map(|(_, a)| a).collect()
    }

    /// The write token for requests from `ip`, under the current secret (`which` 0) or the one
    /// before (1).
    fn token(&self, ip: &std::net::Ipv4Addr, which: usize) -> [u8; 32] {
        crypto::keyed_hash(&self.secrets[which], ip.to_string().as_bytes())
    }

    fn turn(&mut self, now: Instant) {
        while now.saturating_duration_since(self.turned) >= TOKEN_TURN {
            self.secrets[1] = self.secrets[0];
            self.secrets[0] = crypto::hash(&[&self.secrets[0], &rand::random::<[u8; 32]>()]);
            self.turned += TOKEN_TURN;
            if now.saturating_duration_since(self.turned) >= TOKEN_TURN * 2 {
                // Long idle: both secrets are fresh.
                self.secrets[1] = rand::random();
                self.turned = now;
            }
        }
    }

    /// Forgets what outlived [`MAX_AGE`] (at most once a minute) and table entries long stale.
    fn purge(&mut self, now: Instant) {
        if now.saturating_duration_since(self.purged) < Duration::from_secs(60) {
            return;
        }
        self.purged = now;
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < MAX_AGE;
        self.routes.retain(|_, r| fresh(&r.at));
        let mut count = 0;
        self.records.retain(|_, rs| {
            rs.retain(|(_, at)| fresh(at));
            count += rs.len();
            !rs.is_empty()
        });
        self.record_count = count;
        for b in &mut self.buckets {
            b.retain(|e| now.saturating_duration_since(e.seen) < MAX_AGE);
        }
    }

    /// Answers `req`, which came from `from`: the datagrams to send (an answer to `from`, a
    /// message relayed on, or nothing).
    pub fn on_request(&mut self, req: &Request, from: SocketAddrV4, now: Instant) -> Vec<Out> {
        if from.port() == 0 {
            return Vec::new();
        }
        self.turn(now);
        self.purge(now);
        if let Some(id) = req.id.filter(|id| *id == node_id(&from)) {
            self.heard(from, id, now);
        }
        if req.internal {
            return self.on_internal(req, from);
        }
        let token = Some(self.token(from.ip(), 0));
        let closer = req.target.map(|t| self.closest(&t, K)).unwrap_or_default();
        let answer = |error: u64, value: Option<Vec<u8>>, id: Option<[u8; 32]>| Response {
            tid: req.tid,
            to: Some(from),
            id,
            token,
            closer_nodes: closer.clone(),
            error,
            value,
        };
        let id = self.id();
        let Some(target) = req.target else {
            return vec![(Message::Response(answer(UNKNOWN_COMMAND, None, id)), from)];
        };
        match req.command {
            command::PEER_HANDSHAKE => self.route_handshake(req, target, from, answer(0, None, id)),
            command::PEER_HOLEPUNCH => self.route_holepunch(req, target, from, answer(0, None, id)),
            // Records are a persistent node's to keep: an ephemeral one helps the walk only.
            _ if id.is_none() => vec![(Message::Response(answer(0, None, None)), from)],
            command::FIND_PEER => {
                let value = self.routes.get(&target).map(|r| {
                    let mut e = Encoder::new();
                    r.peer.encode(&mut e);
                    e.finish()
                });
                vec![(Message::Response(answer(0, value, id)), from)]
            }
            command::LOOKUP => {
                let value = self.records.get(&target).map(|rs| {
                    let mut e = Encoder::new();
                    let newest = rs.iter().rev().take(MAX_PEERS);
                    e.uint(newest.len() as u64);
                    for (p, _) in newest {
                        p.encode(&mut e);
                    }
                    // No bump.
                    e.uint(0);
                    e.finish()
                });
                vec![(Message::Response(answer(0, value, id)), from)]
            }
            command::ANNOUNCE | command::UNANNOUNCE => {
                let valid = req.token.is_some_and(|t| t == self.token(from.ip(), 0) || t == self.token(from.ip(), 1));
                if !valid {
                    return vec![(Message::Response(answer(INVALID_TOKEN, None, id)), from)];
                }
                let Some(token) = req.token else { return Vec::new() };
                let Some((peer, signature)) = req.value.as_deref().and_then(decode_announce) else {
                    return Vec::new();
                };
                let me = self.id().unwrap_or_default();
                let ns = namespace(req.command);
                if !crypto::verify(&peer.public_key, &signable(&ns, &target, &me, &token, &peer), &signature) {
                    // As JS: no answer to a forged announce.
                    return Vec::new();
                }
                if req.command == command::ANNOUNCE {
                    self.store(target, peer, from, now);
                } else {
                    self.forget(target, &peer.public_key);
                }
                vec![(Message::Response(answer(0, None, id)), from)]
            }
            _ => vec![(Message::Response(answer(UNKNOWN_COMMAND, None, id)), from)],
        }
    }

    fn on_internal(&mut self, req: &Request, from: SocketAddrV4) -> Vec<Out> {
        let id = self.id();
        let plain = |error: u64, closer_nodes: Vec<SocketAddrV4>| Response {
            tid: req.tid,
            to: Some(from),
            id,
            token: None,
            closer_nodes,
            error,
            value: None,
        };
        match req.command {
            internal::PING | internal::DOWN_HINT => vec![(Message::Response(plain(0, Vec::new())), from)],
            internal::PING_NAT => {
                // Answered to the port it names, at the IP it came from: whether that is open.
                let port = req.value.as_deref().and_then(|v| v.get(..2)).map(|p| u16::from_le_bytes([p[0], p[1]]));
                match port.filter(|p| *p != 0) {
                    Some(port) => {
                        let to = SocketAddrV4::new(*from.ip(), port);
                        let mut r = plain(0, Vec::new());
                        r.to = Some(from);
                        vec![(Message::Response(r), to)]
                    }
                    None => Vec::new(),
                }
            }
            internal::FIND_NODE => {
                let closer = req.target.map(|t| self.closest(&t, K)).unwrap_or_default();
                vec![(Message::Response(plain(0, closer)), from)]
            }
            _ => {
                let closer = req.target.map(|t| self.closest(&t, K)).unwrap_or_default();
                vec![(Message::Response(plain(UNKNOWN_COMMAND, closer)), from)]
            }
        }
    }

    /// PEER_HANDSHAKE at a node that may hold the server's registration: a client's message
    /// goes on to the server with the client's address; the server's comes back to that client
    /// as the reply to its request (same transaction id), with the server's address as seen
    /// here. Without a registration the client gets closer nodes.
    fn route_handshake(&self, req: &Request, target: [u8; 32], from: SocketAddrV4, miss: Response) -> Vec<Out> {
        let Some(hs) = req.value.as_deref().and_then(Handshake::decode) else { return Vec::new() };
        let Some(route) = self.routes.get(&target) else {
            return if hs.mode == FROM_CLIENT { vec![(Message::Response(miss), from)] } else { Vec::new() };
        };
        match hs.mode {
            FROM_CLIENT => {
                let value =
                    Handshake { mode: FROM_RELAY, noise: hs.noise, peer_address: Some(from), relay_address: None };
                vec![(Message::Request(self.relayed(req, route.relay, value.encode())), route.relay)]
            }
            FROM_SERVER => {
                let Some(client) = hs.peer_address else { return Vec::new() };
                let value = Handshake { mode: REPLY, noise: hs.noise, peer_address: Some(from), relay_address: None };
                vec![(Message::Response(self.reply_to(req, client, value.encode())), client)]
            }
            _ => Vec::new(),
        }
    }

    /// PEER_HOLEPUNCH, relayed as PEER_HANDSHAKE is: the client's round goes to the server's
    /// address it names (else the registered one), the server's back to the client.
    fn route_holepunch(&self, req: &Request, target: [u8; 32], from: SocketAddrV4, miss: Response) -> Vec<Out> {
        let Some(hp) = req.value.as_deref().and_then(Holepunch::decode) else { return Vec::new() };
        let Some(route) = self.routes.get(&target) else {
            return if hp.mode == FROM_CLIENT { vec![(Message::Response(miss), from)] } else { Vec::new() };
        };
        match hp.mode {
            FROM_CLIENT => {
                let to = hp.peer_address.unwrap_or(route.relay);
                let value = Holepunch { mode: FROM_RELAY, id: hp.id, payload: hp.payload, peer_address: Some(from) };
                vec![(Message::Request(self.relayed(req, to, value.encode())), to)]
            }
            FROM_SERVER => {
                let Some(client) = hp.peer_address else { return Vec::new() };
                let value = Holepunch { mode: REPLY, id: hp.id, payload: hp.payload, peer_address: Some(from) };
                vec![(Message::Response(self.reply_to(req, client, value.encode())), client)]
            }
            _ => Vec::new(),
        }
    }

    /// `req` sent on to `to` with `value` (dht-rpc's `relay`: the same transaction id, command
    /// and target, no token).
    fn relayed(&self, req: &Request, to: SocketAddrV4, value: Vec<u8>) -> Request {
        Request {
            tid: req.tid,
            to,
            id: self.id(),
            token: None,
            internal: false,
            command: req.command,
            target: req.target,
            value: Some(value),
        }
    }

    /// The reply to the request `req` answers, sent to `client`.
    fn reply_to(&self, req: &Request, client: SocketAddrV4, value: Vec<u8>) -> Response {
        Response { tid: req.tid, to: Some(client), id: self.id(), value: Some(value), ..Response::default() }
    }

    /// Keeps `peer`'s announce under `target`: a server's registration when the target is its
    /// key's hash (handshakes for it then go to `from`), else a topic record.
    fn store(&mut self, target: [u8; 32], mut peer: Peer, from: SocketAddrV4, now: Instant) {
        peer.relay_addresses.truncate(3);
        if target == crypto::hash(&[&peer.public_key]) {
            if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&target) {
                return;
            }
            self.routes.insert(target, Route { relay: from, peer, at: now });
            return;
        }
        let records = self.records.entry(target).or_default();
        if let Some(i) = records.iter().position(|(p, _)| p.public_key == peer.public_key) {
            records.remove(i);
            self.record_count -= 1;
        } else if records.len() >= MAX_PER_TOPIC {
            records.remove(0);
            self.record_count -= 1;
        }
        if self.record_count >= MAX_RECORDS {
            if records.is_empty() {
                self.records.remove(&target);
            }
            return;
        }
        records.push((peer, now));
        self.record_count += 1;
    }

    fn forget(&mut self, target: [u8; 32], public_key: &[u8; 32]) {
        if self.routes.get(&target).is_some_and(|r| r.peer.public_key == *public_key) {
            self.routes.remove(&target);
        }
        if let Some(records) = self.records.get_mut(&target) {
            let before = records.len();
            records.retain(|(p, _)| p.public_key != *public_key);
            self.record_count -= before - records.len();
            if records.is_empty() {
                self.records.remove(&target);
            }
        }
    }
}

/// An `announce` value's peer and signature (`uint flags (1 peer, 2 refresh, 4 signature, 8
/// bump) ‖ [peer] ‖ [refresh] ‖ [signature] ‖ [bump]`); one without both is not taken.
fn decode_announce(value: &[u8]) -> Option<(Peer, [u8; 64])> {
    let mut d = Decoder::new(value);
    let flags = d.uint("flags").ok()?;
    if flags & 1 == 0 || flags & 4 == 0 || flags & 2 != 0 {
        return None;
    }
    let peer = Peer::decode(&mut d)?;
    let signature: [u8; 64] = d.array("signature").ok()?;
    Some((peer, signature))
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// The bucket of `id` from `table_id`: the length of their common prefix in bits (256 for
/// the same id).
fn bucket(table_id: &[u8; 32], id: &[u8; 32]) -> usize {
    let d = xor(table_id, id);
    let mut bits = 0;
    for byte in d {
        if byte == 0 {
            bits += 8;
            continue;
        }
        bits += byte.leading_zeros() as usize;
        break;
    }
    bits
}

#[cfg(test)]
mod tests;
