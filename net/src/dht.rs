//! dht-rpc's datagrams and HyperDHT's records (reference holepunch-wire §6, §7.1–7.2), and a
//! client that looks topics up and announces on a HyperDHT network: the discovery half of
//! reaching JS peers (connecting through their NATs is the other half, `endpoint::hyperdht`).
//!
//! A dht-rpc datagram is a request (`03`) or a response (`13`): flags, a 16-bit transaction id,
//! the address the sender sent to (a response's tells the requester how it is seen: NAT
//! discovery), then the fields its flags announce. A node's id is BLAKE2b-256 of its public
//! `ip:port`, so ids cannot be chosen; a claimed id that is not the hash of the datagram's source
//! is taken as no id. The client here is ephemeral, as a fresh JS node is: it sends no id, is put
//! in no routing table and stores nothing (it answers PINGs alone), and walks towards a target
//! through the nodes each reply names closer to it — unless it is made a persistent node too
//! ([`Client::make_persistent`], [`crate::dht_node`]): then it says its id, answers every
//! request as JS's persistent nodes do, and starts its walks from its table as well.
//!
//! Invariant: decoding never panics and allocates at most what the datagram holds; a reply is
//! taken only from the address its request went to, with the request's transaction id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperfs_engine::crypto::{self, KeyPair};
use hyperfs_engine::encoding::{Decoder, Encoder};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::holepunch::Firewall;

pub const REQUEST: u8 = 0x03;
pub const RESPONSE: u8 = 0x13;

/// dht-rpc's own commands (sent with the internal flag).
pub mod internal {
    pub const PING: u64 = 0;
    pub const PING_NAT: u64 = 1;
    pub const FIND_NODE: u64 = 2;
    pub const DOWN_HINT: u64 = 3;
}

/// HyperDHT's commands.
pub mod command {
    pub const PEER_HANDSHAKE: u64 = 0;
    pub const PEER_HOLEPUNCH: u64 = 1;
    pub const FIND_PEER: u64 = 2;
    pub const LOOKUP: u64 = 3;
    pub const ANNOUNCE: u64 = 4;
    pub const UNANNOUNCE: u64 = 5;
}

/// The public bootstrap nodes of HyperDHT.
pub const BOOTSTRAP: [&str; 3] = ["88.99.3.86:49737", "142.93.90.113:49737", "138.68.147.8:49737"];

/// Replication factor: the nodes nearest a target that a walk looks for.
const K: usize = 20;
/// Requests in flight during a walk.
const CONCURRENCY: usize = 10;
/// Per-request timeout and retries, as dht-rpc's defaults.
const TIMEOUT: Duration = Duration::from_secs(1);
const RETRIES: usize = 3;
/// Most peers a lookup reply's records are read for.
const MAX_PEERS: usize = 20;

/// A request datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tid: u16,
    pub to: SocketAddrV4,
    pub id: Option<[u8; 32]>,
    pub token: Option<[u8; 32]>,
    pub internal: bool,
    pub command: u64,
    pub target: Option<[u8; 32]>,
    pub value: Option<Vec<u8>>,
}

impl Request {
    /// A request of `command` to `to` (its transaction id set when it is sent), with no id or
    /// token: what an ephemeral client asks.
    pub fn to(
        to: SocketAddrV4,
        internal: bool,
        command: u64,
        target: Option<[u8; 32]>,
        value: Option<Vec<u8>>,
    ) -> Request {
        Request { tid: 0, to, id: None, token: None, internal, command, target, value }
    }
}

/// A response datagram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub tid: u16,
    pub to: Option<SocketAddrV4>,
    pub id: Option<[u8; 32]>,
    pub token: Option<[u8; 32]>,
    pub closer_nodes: Vec<SocketAddrV4>,
    pub error: u64,
    pub value: Option<Vec<u8>>,
}

/// A datagram of dht-rpc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

pub(crate) fn put_addr(e: &mut Encoder, a: &SocketAddrV4) {
    e.fixed(&a.ip().octets()).fixed(&a.port().to_le_bytes());
}

pub(crate) fn take_addr(d: &mut Decoder<'_>) -> Option<SocketAddrV4> {
    let b: [u8; 6] = d.array("address").ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), u16::from_le_bytes([b[4], b[5]])))
}

pub(crate) fn take_addrs(d: &mut Decoder<'_>) -> Option<Vec<SocketAddrV4>> {
    let n = d.count("addresses", 6).ok()?;
    (0..n).map(|_| take_addr(d)).collect()
}

/// A node's id: BLAKE2b-256 of its address as `ipv4Address` encodes it.
pub fn node_id(addr: &SocketAddrV4) -> [u8; 32] {
    let mut e = Encoder::new();
    put_addr(&mut e, addr);
    crypto::hash(&[&e.finish()])
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        match self {
            Message::Request(r) => {
                let flags = u64::from(r.id.is_some())
                    | u64::from(r.token.is_some()) << 1
                    | u64::from(r.internal) << 2
                    | u64::from(r.target.is_some()) << 3
                    | u64::from(r.value.is_some()) << 4;
                e.u8(REQUEST).uint(flags).fixed(&r.tid.to_le_bytes());
                put_addr(&mut e, &r.to);
                if let Some(id) = &r.id {
                    e.fixed(id);
                }
                if let Some(t) = &r.token {
                    e.fixed(t);
                }
                e.uint(r.command);
                if let Some(t) = &r.target {
                    e.fixed(t);
                }
                if let Some(v) = &r.value {
                    e.buffer(v);
                }
            }
            Message::Response(r) => {
                let flags = u64::from(r.id.is_some())
                    | u64::from(r.token.is_some()) << 1
                    | u64::from(!r.closer_nodes.is_empty()) << 2
                    | u64::from(r.error > 0) << 3
                    | u64::from(r.value.is_some()) << 4;
                e.u8(RESPONSE).uint(flags).fixed(&r.tid.to_le_bytes());
                put_addr(&mut e, &r.to.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
                if let Some(id) = &r.id {
                    e.fixed(id);
                }
                if let Some(t) = &r.token {
                    e.fixed(t);
                }
                if !r.closer_nodes.is_empty() {
                    e.uint(r.closer_nodes.len() as u64);
                    for a in &r.closer_nodes {
                        put_addr(&mut e, a);
                    }
                }
                if r.error > 0 {
                    e.uint(r.error);
                }
                if let Some(v) = &r.value {
                    e.buffer(v);
                }
            }
        }
        e.finish()
    }

    /// Decodes a datagram; `None` for anything that is not dht-rpc's.
    pub fn decode(b: &[u8]) -> Option<Message> {
        let mut d = Decoder::new(b);
        let kind = d.u8("type").ok()?;
        let flags = d.uint("flags").ok()?;
        let tid = u16::from_le_bytes(d.array("tid").ok()?);
        let to = take_addr(&mut d)?;
        let id = if flags & 1 != 0 { Some(d.array("id").ok()?) } else { None };
        let token = if flags & 2 != 0 { Some(d.array("token").ok()?) } else { None };
        match kind {
            REQUEST => {
                let command = d.uint("command").ok()?;
                let target = if flags & 8 != 0 { Some(d.array("target").ok()?) } else { None };
                let value = if flags & 16 != 0 { Some(d.buffer("value").ok()?.to_vec()) } else { None };
                Some(Message::Request(Request { tid, to, id, token, internal: flags & 4 != 0, command, target, value }))
            }
            RESPONSE => {
                let closer_nodes = if flags & 4 != 0 { take_addrs(&mut d)? } else { Vec::new() };
                let error = if flags & 8 != 0 { d.uint("error").ok()? } else { 0 };
                let value = if flags & 16 != 0 { Some(d.buffer("value").ok()?.to_vec()) } else { None };
                Some(Message::Response(Response { tid, to: Some(to), id, token, closer_nodes, error, value }))
            }
            _ => None,
        }
    }
}

/// A HyperDHT peer record: a public key and the relays it can be reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub public_key: [u8; 32],
    pub relay_addresses: Vec<SocketAddrV4>,
}

impl Peer {
    pub fn encode(&self, e: &mut Encoder) {
        e.fixed(&self.public_key).uint(self.relay_addresses.len() as u64);
        for a in &self.relay_addresses {
            put_addr(e, a);
        }
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Option<Peer> {
        Some(Peer { public_key: d.array("public key").ok()?, relay_addresses: take_addrs(d)? })
    }
}

/// The peers of a LOOKUP reply (`lookupRawReply`: the records, then an optional bump).
pub fn decode_lookup_reply(value: &[u8]) -> Option<Vec<Peer>> {
    let mut d = Decoder::new(value);
    let n = d.count("peers", 33).ok()?;
    (0..n.min(MAX_PEERS)).map(|_| Peer::decode(&mut d)).collect()
}

/// What an announce (or unannounce) of `peer` under `target` signs, for the node `node_id` that
/// handed out `token`: `ns ‖ BLAKE2b-256(target ‖ node id ‖ token ‖ peer)`.
pub fn signable(ns: &[u8; 32], target: &[u8; 32], node_id: &[u8; 32], token: &[u8; 32], peer: &Peer) -> [u8; 64] {
    let mut e = Encoder::new();
    peer.encode(&mut e);
    let h = crypto::hash(&[target, node_id, token, &e.finish()]);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(ns);
    out[32..].copy_from_slice(&h);
    out
}

/// HyperDHT's namespaces: `namespace('hyperswarm/dht', [4, 5, 6, 0, 1, 10])` by command number.
pub fn namespace(command: u64) -> [u8; 32] {
    let base = crypto::hash(&[b"hyperswarm/dht"]);
    crypto::hash(&[&base, &[command as u8]])
}

/// An `announce` value: the peer and its signature.
pub fn announce_value(peer: &Peer, signature: &[u8; 64]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.uint(1 | 4);
    peer.encode(&mut e);
    e.fixed(signature);
    e.finish()
}

/// The UDX part of a Noise payload: the sender's stream id for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdxInfo {
    pub version: u64,
    /// Bit 0: the sender's socket can be reused.
    pub features: u64,
    pub id: u64,
    pub seq: u64,
}

/// A relay through a third peer (`blind-relay`), as a Noise payload names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayThrough {
    pub version: u64,
    pub flags: u64,
    pub public_key: [u8; 32],
    pub token: [u8; 32],
}

/// What each side of HyperDHT's Noise IK handshake carries (`noisePayload`, §7.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NoisePayload {
    pub version: u64,
    pub error: u64,
    pub firewall: u64,
    /// The handshake slot for later PEER_HOLEPUNCH messages, and the server's relays as
    /// `(relay, the server's address as that relay sees it)`.
    pub holepunch: Option<(u64, Vec<(SocketAddrV4, SocketAddrV4)>)>,
    pub addresses4: Vec<SocketAddrV4>,
    pub addresses6: Vec<std::net::SocketAddrV6>,
    pub udx: Option<UdxInfo>,
    pub secret_stream: Option<u64>,
    pub relay_through: Option<RelayThrough>,
    pub relay_addresses: Vec<SocketAddrV4>,
}

impl NoisePayload {
    pub fn encode(&self) -> Vec<u8> {
        let flags = u64::from(self.holepunch.is_some())
            | u64::from(!self.addresses4.is_empty()) << 1
            | u64::from(!self.addresses6.is_empty()) << 2
            | u64::from(self.udx.is_some()) << 3
            | u64::from(self.secret_stream.is_some()) << 4
            | u64::from(self.relay_through.is_some()) << 5
            | u64::from(!self.relay_addresses.is_empty()) << 6;
        let mut e = Encoder::new();
        e.uint(self.version).uint(flags).uint(self.error).uint(self.firewall);
        if let Some((id, relays)) = &self.holepunch {
            e.uint(*id).uint(relays.len() as u64);
            for (relay, peer) in relays {
                put_addr(&mut e, relay);
                put_addr(&mut e, peer);
            }
        }
        let addrs = |e: &mut Encoder, list: &[SocketAddrV4]| {
            e.uint(list.len() as u64);
            for a in list {
                put_addr(e, a);
            }
        };
        if !self.addresses4.is_empty() {
            addrs(&mut e, &self.addresses4);
        }
        if !self.addresses6.is_empty() {
            e.uint(self.addresses6.len() as u64);
            for a in &self.addresses6 {
                e.fixed(&a.ip().octets()).fixed(&a.port().to_le_bytes());
            }
        }
        if let Some(u) = &self.udx {
            e.uint(u.version).uint(u.features).uint(u.id).uint(u.seq);
        }
        if let Some(v) = self.secret_stream {
            e.uint(v);
        }
        if let Some(r) = &self.relay_through {
            e.uint(r.version).uint(r.flags).fixed(&r.public_key).fixed(&r.token);
        }
        if !self.relay_addresses.is_empty() {
            addrs(&mut e, &self.relay_addresses);
        }
        e.finish()
    }

    /// Decodes a payload; one of another version comes back with its version alone, as JS
    /// returns it (the other side then answers that it is incompatible).
    pub fn decode(b: &[u8]) -> Option<NoisePayload> {
        let mut d = Decoder::new(b);
        let version = d.uint("version").ok()?;
        if version != 1 {
            return Some(NoisePayload { version, ..NoisePayload::default() });
        }
        let flags = d.uint("flags").ok()?;
        let mut p = NoisePayload {
            version,
            error: d.uint("error").ok()?,
            firewall: d.uint("firewall").ok()?,
            ..NoisePayload::default()
        };
        if flags & 1 != 0 {
            let id = d.uint("holepunch id").ok()?;
            let n = d.count("relays", 12).ok()?;
            let relays = (0..n).map(|_| Some((take_addr(&mut d)?, take_addr(&mut d)?))).collect::<Option<Vec<_>>>()?;
            p.holepunch = Some((id, relays));
        }
        if flags & 2 != 0 {
            p.addresses4 = take_addrs(&mut d)?;
        }
        if flags & 4 != 0 {
            let n = d.count("addresses6", 18).ok()?;
            p.addresses6 = (0..n)
                .map(|_| {
                    let ip: [u8; 16] = d.array("ipv6").ok()?;
                    let port: [u8; 2] = d.array("port").ok()?;
                    Some(std::net::SocketAddrV6::new(ip.into(), u16::from_le_bytes(port), 0, 0))
                })
                .collect::<Option<Vec<_>>>()?;
        }
        if flags & 8 != 0 {
            p.udx = Some(UdxInfo {
                version: d.uint("udx version").ok()?,
                features: d.uint("udx features").ok()?,
                id: d.uint("udx id").ok()?,
                seq: d.uint("udx seq").ok()?,
            });
        }
        if flags & 16 != 0 {
            p.secret_stream = Some(d.uint("secret stream version").ok()?);
        }
        if flags & 32 != 0 {
            p.relay_through = Some(RelayThrough {
                version: d.uint("relay version").ok()?,
                flags: d.uint("relay flags").ok()?,
                public_key: d.array("relay key").ok()?,
                token: d.array("relay token").ok()?,
            });
        }
        if flags & 64 != 0 {
            p.relay_addresses = take_addrs(&mut d)?;
        }
        Some(p)
    }
}

/// PEER_HANDSHAKE's value (§7.4): who relays what where, and the Noise message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// 0 from the client, 1 from the server, 2 from a relay, 3 from a second relay, 4 a reply.
    pub mode: u64,
    pub noise: Vec<u8>,
    pub peer_address: Option<SocketAddrV4>,
    pub relay_address: Option<SocketAddrV4>,
}

impl Handshake {
    pub fn encode(&self) -> Vec<u8> {
        let flags = u64::from(self.peer_address.is_some()) | u64::from(self.relay_address.is_some()) << 1;
        let mut e = Encoder::new();
        e.uint(flags).uint(self.mode).buffer(&self.noise);
        for a in [&self.peer_address, &self.relay_address].into_iter().flatten() {
            put_addr(&mut e, a);
        }
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Option<Handshake> {
        let mut d = Decoder::new(b);
        let flags = d.uint("flags").ok()?;
        let mode = d.uint("mode").ok()?;
        let noise = d.buffer("noise").ok()?.to_vec();
        let peer_address = if flags & 1 != 0 { Some(take_addr(&mut d)?) } else { None };
        let relay_address = if flags & 2 != 0 { Some(take_addr(&mut d)?) } else { None };
        Some(Handshake { mode, noise, peer_address, relay_address })
    }
}

/// PEER_HOLEPUNCH's value (§7.7): the handshake slot and the sealed punch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holepunch {
    pub mode: u64,
    pub id: u64,
    pub payload: Vec<u8>,
    pub peer_address: Option<SocketAddrV4>,
}

impl Holepunch {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.uint(u64::from(self.peer_address.is_some())).uint(self.mode).uint(self.id).buffer(&self.payload);
        if let Some(a) = &self.peer_address {
            put_addr(&mut e, a);
        }
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Option<Holepunch> {
        let mut d = Decoder::new(b);
        let flags = d.uint("flags").ok()?;
        let mode = d.uint("mode").ok()?;
        let id = d.uint("id").ok()?;
        let payload = d.buffer("payload").ok()?.to_vec();
        let peer_address = if flags & 1 != 0 { Some(take_addr(&mut d)?) } else { None };
        Some(Holepunch { mode, id, payload, peer_address })
    }
}

/// A node that answered during a walk: its address, id and the token it gave.
#[derive(Debug, Clone)]
pub struct Replied {
    pub node: SocketAddrV4,
    pub id: [u8; 32],
    pub token: Option<[u8; 32]>,
    pub value: Option<Vec<u8>>,
}

type Pending = Mutex<HashMap<u16, (SocketAddr, oneshot::Sender<Response>)>>;
/// Where a served client's requests go.
type Requests = Mutex<Option<tokio::sync::mpsc::Sender<(Request, SocketAddr)>>>;
/// Requests waiting to be answered; more are dropped (their senders retry, a flood is no work).
const REQUEST_QUEUE: usize = 1024;
/// Punches waiting for holepunch probes, by the remote's IP.
type Probes = Mutex<Vec<(Ipv4Addr, tokio::sync::mpsc::Sender<SocketAddrV4>)>>;
/// Probes a punch may have waiting; more are dropped (a flood of them is no work).
const PROBE_QUEUE: usize = 64;

/// The socket a client talks through: one of its own, or a UDX socket it shares with the
/// streams HyperDHT connects (as JS does: the address DHT nodes see is the one peers punch to).
enum Wire {
    Udp(Arc<UdpSocket>),
    Udx(Arc<crate::udx_socket::UdxSocket>),
}

impl Wire {
    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
        match self {
            Wire::Udp(s) => s.send_to(bytes, to).await.map(drop),
            Wire::Udx(s) => s.send_raw(bytes, to).await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Wire::Udp(s) => s.local_addr(),
            Wire::Udx(s) => s.local_addr(),
        }
    }
}

/// What the client's reader shares with it.
struct Shared {
    pending: Pending,
    /// Where requests to this client go (a HyperDHT server's relayed handshakes), when served.
    requests: Requests,
    probes: Probes,
    /// What the nodes that answered saw of this client's socket (each reply's `to`): HyperDHT's
    /// NAT verdict. Firewalled until nodes reach the host unasked ([`Client::sample_nat`]).
    nat: Mutex<crate::holepunch::Nat>,
    /// The address each node that answered last saw this socket at (at most [`MAX_SEEN`]).
    seen_by: Mutex<HashMap<SocketAddrV4, SocketAddrV4>>,
    /// The persistent node this client also is, if it is one ([`Client::make_persistent`]).
    node: Mutex<Option<crate::dht_node::Node>>,
}

/// Nodes whose view of this socket is kept.
const MAX_SEEN: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            pending: Mutex::default(),
            requests: Mutex::default(),
            probes: Mutex::default(),
            nat: Mutex::new(crate::holepunch::Nat::new(true)),
            seen_by: Mutex::default(),
            node: Mutex::default(),
        })
    }

    /// One datagram that came in from `from`.
    fn on_datagram(&self, d: &[u8], from: SocketAddr) {
        if d.len() == 1 {
            // A holepunch probe: for the punch towards its IP, if one runs.
            let Some(from) = v4(from) else { return };
            let mut probes = lock(&self.probes);
            probes.retain(|(_, tx)| !tx.is_closed());
            if let Some((_, tx)) = probes.iter().find(|(ip, _)| ip == from.ip()) {
                let _ = tx.try_send(from);
            }
            return;
        }
        let mut r = match Message::decode(d) {
            Some(Message::Response(r)) => r,
            Some(Message::Request(req)) => {
                if let Some(tx) = lock(&self.requests).as_ref() {
                    let _ = tx.try_send((req, from));
                }
                return;
            }
            None => return,
        };
        // A claimed id is the hash of the address it came from, or none.
        if r.id.is_some() && v4(from).map(|a| node_id(&a)) != r.id {
            r.id = None;
        }
        let mut pending = lock(&self.pending);
        // Only the address the request went to answers it.
        if pending.get(&r.tid).is_some_and(|(to, _)| *to == from) {
            // A persistent node that answered goes into this node's table.
            if let (Some(id), Some(from)) = (r.id, v4(from)) {
                if let Some(node) = lock(&self.node).as_mut() {
                    node.heard(from, id, std::time::Instant::now());
                }
            }
            if let (Some(to), Some(from)) = (r.to, v4(from)) {
                // Where that node saw us: a sample of the NAT, whatever the address's range (a
                // private "public" network is still the one peers meet on).
                lock(&self.nat).add(to, from);
                let mut seen = lock(&self.seen_by);
                if seen.len() >= MAX_SEEN && !seen.contains_key(&from) {
                    seen.clear();
                }
                seen.insert(from, to);
            }
            if let Some((_, tx)) = pending.remove(&r.tid) {
                let _ = tx.send(r);
            }
        }
    }
}

/// An ephemeral HyperDHT client.
pub struct Client {
    socket: Wire,
    shared: Arc<Shared>,
    next_tid: Mutex<u16>,
    bootstrap: Vec<SocketAddrV4>,
    reader: tokio::task::JoinHandle<()>,
    /// Whether the host's reachability was checked (with nodes to ask).
    checked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dht::Client({:?})", self.socket.local_addr().ok())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

fn xor_distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

impl Client {
    /// Binds a socket of its own on `bind` (port 0: any) and talks to the network through
    /// `bootstrap`.
    pub async fn bind(bind: SocketAddr, bootstrap: Vec<SocketAddrV4>) -> std::io::Result<Client> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let shared = Shared::new();
        let (s, sh) = (socket.clone(), shared.clone());
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else { continue };
                sh.on_datagram(&buf[..n], from);
            }
        });
        Ok(Client::with(Wire::Udp(socket), shared, reader, bootstrap))
    }

    /// A client on `socket`, a UDX socket whose streams it connects: it takes the socket's
    /// datagrams that are not UDX's.
    pub fn on_udx(socket: Arc<crate::udx_socket::UdxSocket>, bootstrap: Vec<SocketAddrV4>) -> Client {
        let shared = Shared::new();
        let mut plain = socket.plain();
        let sh = shared.clone();
        let reader = tokio::spawn(async move {
            while let Some((d, from)) = plain.recv().await {
                sh.on_datagram(&d, from);
            }
        });
        Client::with(Wire::Udx(socket), shared, reader, bootstrap)
    }

    fn with(
        socket: Wire,
        shared: Arc<Shared>,
        reader: tokio::task::JoinHandle<()>,
        bootstrap: Vec<SocketAddrV4>,
    ) -> Client {
        Client {
            socket,
            shared,
            next_tid: Mutex::new(rand::random::<u16>()),
            bootstrap,
            reader,
            checked: Default::default(),
        }
    }

    /// Holepunch probes (one-byte datagrams) that come from `ip`, while the receiver lives.
    pub fn probes_from(&self, ip: Ipv4Addr) -> tokio::sync::mpsc::Receiver<SocketAddrV4> {
        let (tx, rx) = tokio::sync::mpsc::channel(PROBE_QUEUE);
        lock(&self.shared.probes).push((ip, tx));
        rx
    }

    /// Where node `node` last saw this client's socket, if it answered.
    pub fn seen_by(&self, node: SocketAddrV4) -> Option<SocketAddrV4> {
        lock(&self.shared.seen_by).get(&node).copied()
    }

    /// The UDX socket this client shares, if it does.
    pub fn udx(&self) -> Option<Arc<crate::udx_socket::UdxSocket>> {
        match &self.socket {
            Wire::Udx(s) => Some(s.clone()),
            Wire::Udp(_) => None,
        }
    }

    /// Sends a datagram from this client's socket (a holepunch probe, a relayed message).
    pub async fn send_raw(&self, bytes: &[u8], to: SocketAddrV4) -> std::io::Result<()> {
        self.socket.send_to(bytes, SocketAddr::V4(to)).await
    }

    /// Samples this client's NAT until the verdict can be acted on
    /// ([`crate::holepunch::Nat::settled`]), in up to three walks towards random targets (each
    /// node that answers says where it saw the request come from), and once checks whether the
    /// host is reachable from outside ([`Client::reached_from_outside`]): an open one.
    pub async fn sample_nat(&self) {
        let mut answered = Vec::new();
        for _ in 0..3 {
            if lock(&self.shared.nat).settled() {
                break;
            }
            answered = self.walk(rand::random(), true, internal::FIND_NODE, None).await;
        }
        if !self.checked.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let mut nodes: Vec<SocketAddrV4> = answered.iter().map(|r| r.node).collect();
            for b in &self.bootstrap {
                if !nodes.contains(b) {
                    nodes.push(*b);
                }
            }
            nodes.truncate(5);
            if nodes.is_empty() {
                // Nobody to ask yet: the next call checks.
                self.checked.store(false, std::sync::atomic::Ordering::Relaxed);
            } else if self.reached_from_outside(&nodes).await {
                lock(&self.shared.nat).reachable();
            }
        }
    }

    /// Whether nodes reach this host unasked (dht-rpc's PING_NAT): each of `nodes` is asked to
    /// answer to the port of a second, fresh socket at the address it saw the request come from.
    /// No packet ever left that socket, so a NAT or firewall has nothing to let its answers in
    /// by (answers to the client's own socket would come in on the mappings its requests made);
    /// a host open to the world takes them. Three answers of five are needed, or one of fewer
    /// (dht-rpc's rule).
    async fn reached_from_outside(&self, nodes: &[SocketAddrV4]) -> bool {
        let bind = match self.socket.local_addr() {
            Ok(SocketAddr::V4(a)) => SocketAddr::V4(SocketAddrV4::new(*a.ip(), 0)),
            _ => return false,
        };
        let Ok(fresh) = UdpSocket::bind(bind).await else { return false };
        let Ok(port) = fresh.local_addr().map(|a| a.port()) else { return false };
        let mut asked = Vec::new();
        for &node in nodes {
            let tid = self.take_tid();
            let req = Request {
                tid,
                to: node,
                id: None,
                token: None,
                internal: true,
                command: internal::PING_NAT,
                target: None,
                value: Some(port.to_le_bytes().to_vec()),
            };
            if self.socket.send_to(&Message::Request(req).encode(), SocketAddr::V4(node)).await.is_ok() {
                asked.push((tid, node));
            }
        }
        // One wait for all of them: behind a NAT none comes.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut reached = Vec::new();
        let mut buf = vec![0u8; 2048];
        while reached.len() < asked.len() {
            let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, fresh.recv_from(&mut buf)).await else { break };
            if let Some(Message::Response(r)) = Message::decode(&buf[..n]) {
                // Only the node asked answers its request.
                if asked.iter().any(|&(tid, node)| tid == r.tid && SocketAddr::V4(node) == from)
                    && !reached.contains(&r.tid)
                {
                    reached.push(r.tid);
                }
            }
        }
        tracing::debug!(asked = asked.len(), reached = reached.len(), "reachability check (PING_NAT)");
        reached.len() >= if asked.len() >= 5 { 3 } else { 1 }
    }

    /// HyperDHT's verdict on this client's NAT from the nodes that answered it so far: the
    /// firewall kind, the public addresses to tell a peer (a random NAT's IP with port 0), and
    /// how many nodes' samples it rests on.
    pub fn nat(&self) -> (crate::holepunch::Firewall, Vec<SocketAddrV4>, u32) {
        let nat = lock(&self.shared.nat);
        (nat.firewall(), nat.addresses(), nat.sampled())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The next transaction id.
    fn take_tid(&self) -> u16 {
        let mut t = lock(&self.next_tid);
        *t = t.wrapping_add(1);
        *t
    }

    /// Sends a request to `to` and waits for its response, with dht-rpc's retries.
    pub async fn request(&self, to: SocketAddrV4, req: Request) -> Option<Response> {
        self.request_with(to, req, RETRIES, TIMEOUT).await
    }

    /// Whether `to` answers one PING within `wait` (a quick check of an address, no retries).
    pub async fn ping_once(&self, to: SocketAddrV4, wait: Duration) -> bool {
        self.request_with(to, Request::to(to, true, internal::PING, None, None), 1, wait).await.is_some()
    }

    /// Sends a request up to `tries` times, waiting `wait` for its response each time.
    async fn request_with(&self, to: SocketAddrV4, mut req: Request, tries: usize, wait: Duration) -> Option<Response> {
        let tid = self.take_tid();
        req.tid = tid;
        req.to = to;
        // A persistent node says its id, so others put it in their tables.
        req.id = req.id.or_else(|| self.node_id());
        let bytes = Message::Request(req).encode();
        let (tx, mut rx) = oneshot::channel();
        lock(&self.shared.pending).insert(tid, (SocketAddr::V4(to), tx));
        let mut answer = None;
        for _ in 0..tries {
            if self.socket.send_to(&bytes, SocketAddr::V4(to)).await.is_err() {
                break;
            }
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(r)) => {
                    answer = Some(r);
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
        lock(&self.shared.pending).remove(&tid);
        answer
    }

    /// Whether node `to` answers a PING.
    pub async fn ping(&self, to: SocketAddrV4) -> bool {
        self.request(to, Request::to(to, true, internal::PING, None, None)).await.is_some()
    }

    /// Walks towards `target` asking `command` (with `value`) of each node on the way, and
    /// returns the nodes that answered, nearest first.
    pub async fn walk(&self, target: [u8; 32], internal_cmd: bool, cmd: u64, value: Option<Vec<u8>>) -> Vec<Replied> {
        // From the bootstrap nodes and, for a persistent node, the nearest in its table; never
        // towards itself.
        let (known, me) = match lock(&self.shared.node).as_ref() {
            Some(n) => (n.closest(&target, K), n.address()),
            None => (Vec::new(), None),
        };
        let mut candidates: BTreeMap<[u8; 32], SocketAddrV4> = self
            .bootstrap
            .iter()
            .chain(&known)
            .filter(|a| Some(**a) != me)
            .map(|a| (xor_distance(&node_id(a), &target), *a))
            .collect();
        let mut asked: HashSet<SocketAddrV4> = me.into_iter().collect();
        let mut replied: BTreeMap<[u8; 32], Replied> = BTreeMap::new();
        loop {
            // The nearest candidates not asked yet, while they can still be among the k nearest.
            let kth = replied.keys().nth(K - 1).copied();
            let next: Vec<SocketAddrV4> = candidates
                .iter()
                .filter(|(d, a)| !asked.contains(a) && kth.is_none_or(|k| **d < k))
                .take(CONCURRENCY)
                .map(|(_, a)| *a)
                .collect();
            if next.is_empty() {
                break;
            }
            let asks = next.iter().map(|&node| {
                asked.insert(node);
                let req = Request::to(node, internal_cmd, cmd, Some(target), value.clone());
                async move { (node, self.request(node, req).await) }
            });
            let answers = futures_join_all(asks).await;
            for (node, answer) in answers {
                let Some(r) = answer else { continue };
                for a in r.closer_nodes.iter().take(K) {
                    if !asked.contains(a) && a.port() != 0 {
                        candidates.insert(xor_distance(&node_id(a), &target), *a);
                    }
                }
                if r.error == 0 {
                    if let Some(id) = r.id {
                        replied
                            .insert(xor_distance(&id, &target), Replied { node, id, token: r.token, value: r.value });
                    }
                }
            }
        }
        replied.into_values().take(K).collect()
    }

    /// The peers announced under `topic`, from the nodes nearest it.
    pub async fn lookup(&self, topic: [u8; 32]) -> Vec<Peer> {
        let mut seen = HashSet::new();
        let mut peers = Vec::new();
        for r in self.walk(topic, false, command::LOOKUP, None).await {
            for p in r.value.as_deref().and_then(decode_lookup_reply).unwrap_or_default() {
                if seen.insert(p.public_key) {
                    peers.push(p);
                }
            }
        }
        peers
    }

    /// Announces `key_pair`'s public key under `topic` (with `relays`) on the nodes nearest it
    /// that gave a token; returns how many took it.
    pub async fn announce(&self, topic: [u8; 32], key_pair: &KeyPair, relays: Vec<SocketAddrV4>) -> usize {
        let peer = Peer { public_key: key_pair.public_key(), relay_addresses: relays };
        let mut took = 0;
        for r in self.walk(topic, false, command::LOOKUP, None).await {
            if self.announce_to(&r, topic, key_pair, &peer, command::ANNOUNCE).await {
                took += 1;
            }
        }
        took
    }

    /// Takes `key_pair`'s announce under `topic` back from the nodes nearest it (UNANNOUNCE,
    /// signed as an announce is); returns how many said they did.
    pub async fn unannounce(&self, topic: [u8; 32], key_pair: &KeyPair) -> usize {
        let peer = Peer { public_key: key_pair.public_key(), relay_addresses: Vec::new() };
        let mut took = 0;
        for r in self.walk(topic, false, command::LOOKUP, None).await {
            if self.announce_to(&r, topic, key_pair, &peer, command::UNANNOUNCE).await {
                took += 1;
            }
        }
        took
    }

    /// Sends node `r` the signed announce (or, with `cmd` UNANNOUNCE, its withdrawal) of
    /// `peer` under `target`, with the token it gave; whether it took it.
    async fn announce_to(&self, r: &Replied, target: [u8; 32], key_pair: &KeyPair, peer: &Peer, cmd: u64) -> bool {
        let Some(token) = r.token else { return false };
        let signature = key_pair.sign(&signable(&namespace(cmd), &target, &r.id, &token, peer));
        let req = Request {
            tid: 0,
            to: r.node,
            id: None,
            token: Some(token),
            internal: false,
            command: cmd,
            target: Some(target),
            value: Some(announce_value(peer, &signature)),
        };
        self.request(r.node, req).await.is_some_and(|a| a.error == 0)
    }
}

impl Client {
    /// Makes this client a persistent HyperDHT node too ([`crate::dht_node`]): others may
    /// store records and registrations on it and bootstrap from it. `public` is the address
    /// others reach it at, when known (else [`Client::learn_address`] finds it).
    pub fn make_persistent(&self, public: Option<SocketAddrV4>) {
        let mut node = lock(&self.shared.node);
        if node.is_none() {
            *node = Some(crate::dht_node::Node::new(public, std::time::Instant::now()));
        }
    }

    /// A persistent node's id, once its address is known.
    pub fn node_id(&self) -> Option<[u8; 32]> {
        lock(&self.shared.node).as_ref().and_then(|n| n.id())
    }

    /// How many nodes a persistent node's table holds (`None`: not one).
    pub fn table_len(&self) -> Option<usize> {
        lock(&self.shared.node).as_ref().map(|n| n.table_len())
    }

    /// A persistent node without a known address takes the one DHT nodes see it at, once they
    /// reach it unasked and see its own port (an open host, or a NAT forwarding the port).
    pub async fn learn_address(&self) {
        if lock(&self.shared.node).as_ref().is_none_or(|n| n.id().is_some()) {
            return;
        }
        self.sample_nat().await;
        let (firewall, addresses, _) = self.nat();
        let port = self.local_addr().map(|a| a.port()).unwrap_or(0);
        if firewall == Firewall::Open {
            if let Some(a) = addresses.into_iter().find(|a| a.port() == port) {
                if let Some(node) = lock(&self.shared.node).as_mut() {
                    node.set_address(a);
                }
            }
        }
    }

    /// Answers a request as the persistent node; one that is not answers PINGs alone (a peer
    /// on its LAN checks its address so).
    pub async fn answer(&self, req: &Request, from: SocketAddr) {
        let Some(from) = v4(from) else { return };
        let outs = match lock(&self.shared.node).as_mut() {
            Some(node) => node.on_request(req, from, std::time::Instant::now()),
            None if req.internal && req.command == internal::PING => {
                let pong = Response { tid: req.tid, to: Some(from), ..Response::default() };
                vec![(Message::Response(pong), from)]
            }
            None => return,
        };
        for (message, to) in outs {
            let _ = self.socket.send_to(&message.encode(), SocketAddr::V4(to)).await;
        }
    }

    /// A persistent node's walk towards its own id (and, later, towards random ones): the nodes
    /// that answer fill its table, as dht-rpc's bootstrap and refresh do.
    pub async fn refresh_table(&self) {
        let target = self.node_id().unwrap_or_else(rand::random);
        self.walk(target, true, internal::FIND_NODE, None).await;
        self.walk(rand::random(), true, internal::FIND_NODE, None).await;
    }

    /// Hands every request this client's socket receives to the returned channel (a server's
    /// relayed handshakes).
    pub fn serve(&self) -> tokio::sync::mpsc::Receiver<(Request, SocketAddr)> {
        let (tx, rx) = tokio::sync::mpsc::channel(REQUEST_QUEUE);
        *lock(&self.shared.requests) = Some(tx);
        rx
    }

    /// Registers `key_pair` as a HyperDHT server reachable through this client's socket: its
    /// record is announced at `BLAKE2b-256(public key)` to the three nodes nearest it that gave a
    /// token, which then relay handshakes for it. Returns those nodes.
    pub async fn register(&self, key_pair: &KeyPair) -> Vec<SocketAddrV4> {
        let target = crypto::hash(&[&key_pair.public_key()]);
        let peer = Peer { public_key: key_pair.public_key(), relay_addresses: Vec::new() };
        let mut relays = Vec::new();
        for r in self.walk(target, false, command::FIND_PEER, None).await {
            if relays.len() == 3 {
                break;
            }
            if self.announce_to(&r, target, key_pair, &peer, command::ANNOUNCE).await {
                relays.push(r.node);
            }
        }
        relays
    }

    /// The Noise IK handshake with the server of `public_key`, through the nodes that hold its
    /// registration (FIND_PEER, then PEER_HANDSHAKE relayed by one of them), telling it where
    /// this client is (`reach`).
    pub async fn handshake(
        &self,
        public_key: [u8; 32],
        me: crate::noise::KeyPair,
        udx_id: u32,
        reach: Reach,
        relay_through: Option<RelayThrough>,
    ) -> Result<Shaken, String> {
        let Reach { firewall, addresses, addresses6 } = reach;
        let target = crypto::hash(&[&public_key]);
        let relays: Vec<Replied> = self
            .walk(target, false, command::FIND_PEER, None)
            .await
            .into_iter()
            .filter(|r| r.value.is_some())
            .collect();
        if relays.is_empty() {
            return Err("no DHT node holds its registration".into());
        }
        let ours = NoisePayload {
            version: 1,
            firewall: firewall as u64,
            addresses4: addresses,
            addresses6,
            udx: Some(UdxInfo { version: 1, features: 0, id: u64::from(udx_id), seq: 0 }),
            secret_stream: Some(1),
            relay_through,
            ..NoisePayload::default()
        };
        let mut noise = crate::noise::Handshake::new(
            crate::noise::Pattern::IK,
            true,
            me,
            &namespace(command::PEER_HANDSHAKE),
            Some(public_key),
        );
        let msg1 = noise.send(&ours.encode()).map_err(|e| e.to_string())?;
        let value = Handshake { mode: 0, noise: msg1, peer_address: None, relay_address: None }.encode();
        for relay in relays.iter().take(3) {
            let req = Request::to(relay.node, false, command::PEER_HANDSHAKE, Some(target), Some(value.clone()));
            let Some(reply) = self.request(relay.node, req).await else { continue };
            let Some(hs) = reply.value.as_deref().and_then(Handshake::decode) else { continue };
            if hs.mode != 4 {
                continue;
            }
            let payload = noise.recv(&hs.noise).map_err(|e| e.to_string())?;
            let theirs = NoisePayload::decode(&payload).ok_or("an undecodable server payload")?;
            if theirs.version != 1 || theirs.error != 0 {
                return Err(format!("the server refused: version {}, error {}", theirs.version, theirs.error));
            }
            let udx = theirs.udx.ok_or("the server offered no UDX stream")?.id;
            let done = noise.done().cloned().ok_or("the handshake did not finish")?;
            let server = hs.peer_address.unwrap_or(relay.node);
            return Ok(Shaken { done, payload: theirs, udx, server, relay: relay.node, target });
        }
        Err("no relay answered the handshake".into())
    }

    /// One round of PEER_HOLEPUNCH through `relay` to the server at `server` (its handshake
    /// slot `id`): the sealed `payload` goes, the server's sealed answer comes back with the
    /// address the relay saw the server at.
    pub async fn holepunch(
        &self,
        relay: SocketAddrV4,
        target: [u8; 32],
        id: u64,
        payload: Vec<u8>,
        server: SocketAddrV4,
    ) -> Option<(Vec<u8>, SocketAddrV4)> {
        let value = Holepunch { mode: 0, id, payload, peer_address: Some(server) }.encode();
        let req = Request::to(relay, false, command::PEER_HOLEPUNCH, Some(target), Some(value));
        let reply = self.request(relay, req).await?;
        let hp = reply.value.as_deref().and_then(Holepunch::decode)?;
        (hp.mode == 4).then(|| (hp.payload, hp.peer_address.unwrap_or(relay)))
    }
}

/// Where a client says it is in its handshake: its NAT's kind, its public IPv4 addresses, and
/// the IPv6 addresses hyperfs servers may dial it on (JS servers ignore them).
#[derive(Debug, Clone)]
pub struct Reach {
    pub firewall: Firewall,
    pub addresses: Vec<SocketAddrV4>,
    pub addresses6: Vec<std::net::SocketAddrV6>,
}

/// A finished handshake with a HyperDHT server: its result, the server's payload and UDX
/// stream id, the server's address as the relaying node saw it, that node, and the target.
#[derive(Debug)]
pub struct Shaken {
    pub done: crate::noise::Done,
    pub payload: NoisePayload,
    pub udx: u64,
    pub server: SocketAddrV4,
    pub relay: SocketAddrV4,
    pub target: [u8; 32],
}

/// Runs futures at once and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    // Polled together: each future runs while the others wait on the network.
    let mut slots: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in set.iter_mut().enumerate() {
            if slots[i].is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => slots[i] = Some(v),
                std::task::Poll::Pending => all = false,
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(slots.into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().expect("address")
    }

    /// Reference §6.6: datagrams built by hand and the answers of a real JS node.
    #[test]
    fn datagrams_match_dht_rpc() {
        let node = a("127.0.0.1:49738");
        assert_eq!(node_id(&node).to_vec(), h("ea50f55683100864aa622153cff29c6f99eea9e753f8e211d6b01e0a8af2ac6c"));
        let ping = Request {
            tid: 1,
            to: node,
            id: None,
            token: None,
            internal: true,
            command: internal::PING,
            target: None,
            value: None,
        };
        assert_eq!(Message::Request(ping).encode(), h("030401007f0000014ac200"));
        let find = Message::Request(Request {
            tid: 2,
            to: node,
            id: None,
            token: None,
            internal: true,
            command: internal::FIND_NODE,
            target: Some([0x42; 32]),
            value: None,
        });
        assert_eq!(
            find.encode(),
            h("030c02007f0000014ac2024242424242424242424242424242424242424242424242424242424242424242")
        );
        let reply =
            h("130502007f000001edc6ea50f55683100864aa622153cff29c6f99eea9e753f8e211d6b01e0a8af2ac6c017f0000014bc2");
        let Some(Message::Response(r)) = Message::decode(&reply) else { panic!("a response") };
        assert_eq!((r.tid, r.to, r.closer_nodes.clone()), (2, Some(a("127.0.0.1:50925")), vec![a("127.0.0.1:49739")]));
        assert_eq!(
            r.id.map(|i| i.to_vec()),
            Some(h("ea50f55683100864aa622153cff29c6f99eea9e753f8e211d6b01e0a8af2ac6c"))
        );
        assert_eq!(Message::Response(r).encode(), reply, "encoded back the same");
        let err = h("130904007f000001edc6ea50f55683100864aa622153cff29c6f99eea9e753f8e211d6b01e0a8af2ac6c01");
        assert!(matches!(Message::decode(&err), Some(Message::Response(Response { error: 1, .. }))));
        // The lookup reply after the announce: one peer with one relay.
        let value = h("0117cb79fb2b4120f2b1ec65e4198d6e08b28e813feb01e4a400839b85e18080ce010a000001a00f00");
        let peers = decode_lookup_reply(&value).expect("peers");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].relay_addresses, vec![a("10.0.0.1:4000")]);
    }

    /// The announce of §6.6: its signable, and the JS-made signature verifies over it.
    #[test]
    fn an_announce_signs_what_hyperdht_signs() {
        let ns = namespace(command::ANNOUNCE);
        assert_eq!(ns.to_vec(), h("36386adddf9f6fd60db83a6f42fc159d1146aa8644037664230aaa1f0179d497"));
        let pk: [u8; 32] =
            h("17cb79fb2b4120f2b1ec65e4198d6e08b28e813feb01e4a400839b85e18080ce").try_into().expect("32");
        let peer = Peer { public_key: pk, relay_addresses: vec![a("10.0.0.1:4000")] };
        let node: [u8; 32] = node_id(&a("127.0.0.1:49738"));
        let token: [u8; 32] =
            h("437d0ef540d45806ab9369c295bcf1bd2a863822600b3a8d1fb92004048c2501").try_into().expect("32");
        let s = signable(&ns, &[0x77; 32], &node, &token, &peer);
        assert_eq!(s[32..].to_vec(), h("27b9c155fe2a9e37f7c03dce79818c64579e34f122f22ac3c78ce54f1edb7a49"));
        let datagram = h("031a06007f0000014ac2437d0ef540d45806ab9369c295bcf1bd2a863822600b3a8d1fb92004048c2501047777777777777777777777777777777777777777777777777777777777777777680517cb79fb2b4120f2b1ec65e4198d6e08b28e813feb01e4a400839b85e18080ce010a000001a00fe53ff11e1d22c78980d43997d7f89a8d5adc234504eccbfbd41985fdceae37e52d15846844fee547c086f9bd4848d0c7e5d4dec0442b1bdbcbda772eb832c50b");
        let Some(Message::Request(r)) = Message::decode(&datagram) else { panic!("a request") };
        let value = r.value.clone().expect("value");
        let signature: [u8; 64] = value[value.len() - 64..].try_into().expect("64");
        assert!(crypto::verify(&pk, &s, &signature), "JS's signature verifies over our signable");
        assert_eq!(announce_value(&peer, &signature), value, "and the value is the one JS sent");
        assert_eq!(Message::Request(r).encode(), datagram);
    }

    /// Reference §1.6: the Noise payloads of HyperDHT's IK handshake, client's and server's.
    #[test]
    fn noise_payloads_match_hyperdht() {
        let client = NoisePayload {
            version: 1,
            firewall: Firewall::Unknown as u64,
            addresses4: vec![a("192.168.1.10:49737")],
            udx: Some(UdxInfo { version: 1, features: 0, id: 0x0102_0304, seq: 0 }),
            secret_stream: Some(1),
            ..NoisePayload::default()
        };
        assert_eq!(client.encode(), h("011a000001c0a8010a49c20100fe040302010001"));
        let server_bytes = h("0159000200010102030449c205060708a00f0100fe0d0c0b0a0001010102030449c2");
        let server = NoisePayload::decode(&server_bytes).expect("decodes");
        assert_eq!(server.firewall, Firewall::Consistent as u64);
        assert_eq!(server.holepunch, Some((0, vec![(a("1.2.3.4:49737"), a("5.6.7.8:4000"))])));
        assert_eq!(server.udx.map(|u| u.id), Some(0x0a0b_0c0d));
        assert_eq!(server.relay_addresses, vec![a("1.2.3.4:49737")]);
        assert_eq!(server.encode(), server_bytes, "encoded back the same");
        assert_eq!(NoisePayload::decode(&client.encode()), Some(client));
        // Another version is returned with its version alone; cut payloads decode to nothing.
        assert_eq!(NoisePayload::decode(&[2, 0xff]).map(|p| p.version), Some(2));
        for cut in 1..server_bytes.len() {
            assert!(NoisePayload::decode(&server_bytes[..cut]).is_none(), "cut at {cut}");
        }
        // The handshake and holepunch messages around them, both ways.
        let hs =
            Handshake { mode: 2, noise: vec![7; 109], peer_address: Some(a("127.0.0.1:5000")), relay_address: None };
        assert_eq!(hs.encode().len(), 118, "FROM_RELAY with a 109-byte Noise message is 118 bytes (§7.11 b)");
        assert_eq!(Handshake::decode(&hs.encode()), Some(hs));
        let hp = Holepunch { mode: 0, id: 0, payload: vec![1; 50], peer_address: Some(a("127.0.0.1:5001")) };
        assert_eq!(hp.encode().len(), 60, "FROM_CLIENT with a 50-byte payload is 60 bytes (§7.11 b)");
        assert_eq!(Holepunch::decode(&hp.encode()), Some(hp));
    }

    /// Bytes that are not dht-rpc's, or are cut short, decode to nothing and never panic.
    #[test]
    fn hostile_datagrams_decode_to_nothing() {
        let reply =
            h("130502007f000001edc6ea50f55683100864aa622153cff29c6f99eea9e753f8e211d6b01e0a8af2ac6c017f0000014bc2");
        for cut in 0..reply.len() {
            assert!(Message::decode(&reply[..cut]).is_none(), "cut at {cut}");
        }
        assert!(Message::decode(&[0xff, 1, 0, 0]).is_none());
        let mut many = h("1305020000000000000000");
        many.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Message::decode(&many).is_none(), "a count past the bytes");
        assert!(decode_lookup_reply(&[0xfe, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
