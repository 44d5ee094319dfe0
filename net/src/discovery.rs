//! Finding peers from a key alone: the topic a core is announced under, announcements and
//! look-ups on the LAN (a small multicast protocol of our own) and on the BitTorrent Mainline
//! DHT (the `mainline` crate).
//!
//! Privacy: what leaves the node is a topic — a keyed BLAKE2b of the core's *discovery* key —
//! never the key or the discovery key itself. A peer that finds us still has to prove it knows
//! the key before a channel opens (the capability of [`crate::endpoint`]).
//!
//! LAN datagrams (UDP to 239.255.72.70:49737, and to [ff02::4846:534c]:49737 on every
//! interface with IPv6): `"HFSL"` ‖ version 1 ‖ kind (1 query, 2
//! announce) ‖ the sender's peer id (32) ‖ its QUIC port (u16, big-endian) ‖ a count ‖ that many
//! 32-byte topics. A query asks who serves the topics; a node serving one answers with an
//! announce (multicast, so every node looking learns at once). A datagram that does not parse
//! is dropped.
//!
//! Knows nothing of drives or the node: it reports `(topic, address)` pairs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperfs_engine::crypto::{self, DiscoveryKey, Hash};

use crate::identity::PeerId;

use crate::NetError;

/// The LAN multicast group and port.
pub const LAN_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 72, 70);
/// The LAN's IPv6 multicast group (link-local scope), on the same port.
pub const LAN_GROUP6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x4846, 0x534c);
pub const LAN_PORT: u16 = 49737;
const MAGIC: &[u8; 4] = b"HFSL";
const VERSION: u8 = 1;
const QUERY: u8 = 1;
const ANNOUNCE: u8 = 2;
/// Topics in one datagram (32 × 32 bytes stays far below any MTU problem).
const MAX_TOPICS: usize = 32;

/// How a peer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Given with `--peer`.
    Static,
    /// A LAN announcement.
    Lan,
    /// The Mainline DHT.
    Dht,
    /// The peer cache of an earlier run.
    Cache,
    /// It dialed us.
    Incoming,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Lan => "lan",
            Source::Dht => "dht",
            Source::Cache => "cache",
            Source::Incoming => "incoming",
        }
    }
}

/// The topic a core is announced under: a keyed BLAKE2b of its discovery key.
pub fn topic(discovery_key: &DiscoveryKey) -> Hash {
    crypto::keyed_hash(b"hyperfs topic v1", &discovery_key.0)
}

/// The 20-byte Mainline DHT id of a topic.
pub fn dht_id(topic: &Hash) -> [u8; 20] {
    let mut id = [0u8; 20];
    id.copy_from_slice(&topic[..20]);
    id
}

/// What a LAN datagram says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Datagram {
    kind: u8,
    peer: PeerId,
    port: u16,
    topics: Vec<Hash>,
}

impl Datagram {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(41 + 32 * self.topics.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.peer.0);
        out.extend_from_slice(&self.port.to_be_bytes());
        out.push(self.topics.len() as u8);
        for t in &self.topics {
            out.extend_from_slice(t);
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Datagram> {
        if b.len() < 41 || &b[..4] != MAGIC || b[4] != VERSION || !(b[5] == QUERY || b[5] == ANNOUNCE) {
            return None;
        }
        let peer = PeerId(b[6..38].try_into().ok()?);
        let port = u16::from_be_bytes([b[38], b[39]]);
        let n = b[40] as usize;
        if n > MAX_TOPICS || b.len() != 41 + 32 * n {
            return None;
        }
        let topics = b[41..].chunks_exact(32).filter_map(|c| c.try_into().ok()).collect();
        Some(Datagram { kind: b[5], peer, port, topics })
    }
}

/// Called with each `(topic, address)` found.
pub type Found = Arc<dyn Fn(Hash, SocketAddr, Source) + Send + Sync>;

struct LanState {
    /// Topics joined, and whether we answer queries for them (announce).
    topics: HashMap<Hash, bool>,
}

/// LAN discovery: a multicast socket for IPv4 and one for IPv6 (where the host has it), a
/// receiving thread each.
pub struct Lan {
    sockets: Vec<LanSocket>,
    peer: PeerId,
    port: u16,
    state: Arc<Mutex<LanState>>,
}

/// One of the LAN's sockets: IPv4's joins [`LAN_GROUP`]; IPv6's joins [`LAN_GROUP6`] on every
/// interface with IPv6, and sends on each of them (a link-local group belongs to one link).
struct LanSocket {
    socket: UdpSocket,
    /// The interfaces IPv6's socket has joined the group on (empty for IPv4's), shared by its
    /// clones (the membership is the socket's).
    joined: Arc<Mutex<Vec<u32>>>,
    v6: bool,
}

impl LanSocket {
    fn bind(v6: bool) -> std::io::Result<LanSocket> {
        let domain = if v6 { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        // Several nodes on one host share the port; each gets every datagram.
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if v6 {
            s.set_only_v6(true)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, LAN_PORT)).into())?;
            s.set_multicast_loop_v6(true)?;
            s.set_multicast_hops_v6(1)?;
        } else {
            s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LAN_PORT).into())?;
            s.join_multicast_v4(&LAN_GROUP, &Ipv4Addr::UNSPECIFIED)?;
            s.set_multicast_loop_v4(true)?;
            s.set_multicast_ttl_v4(1)?;
        }
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let socket = LanSocket { socket: s.into(), joined: Arc::default(), v6 };
        if v6 && socket.links().is_empty() {
            return Err(std::io::Error::other("no interface has IPv6"));
        }
        Ok(socket)
    }

    /// The interfaces to send on: IPv4's one default; for IPv6, every interface with IPv6
    /// (joining the group on any new since the last time).
    fn links(&self) -> Vec<u32> {
        if !self.v6 {
            return vec![0];
        }
        let links = ipv6_links();
        let mut joined = lock(&self.joined);
        joined.retain(|i| links.contains(i));
        for &i in &links {
            if joined.contains(&i) {
                continue;
            }
            match self.socket.join_multicast_v6(&LAN_GROUP6, i) {
                Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
                    tracing::debug!(error = %e, link = i, "LAN discovery: joining IPv6's group")
                }
                _ => joined.push(i),
            }
        }
        joined.clone()
    }

    fn send(&self, bytes: &[u8]) {
        for link in self.links() {
            let to = if self.v6 {
                SocketAddr::V6(SocketAddrV6::new(LAN_GROUP6, LAN_PORT, 0, link))
            } else {
                SocketAddr::V4(SocketAddrV4::new(LAN_GROUP, LAN_PORT))
            };
            if let Err(e) = self.socket.send_to(bytes, to) {
                tracing::debug!(error = %e, %to, "LAN discovery: sending");
            }
        }
    }
}

/// The interfaces with IPv6 that multicast can use: those with a link-local address
/// (`/proc/net/if_inet6`: address, interface index, prefix, scope, flags, name).
fn ipv6_links() -> Vec<u32> {
    let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") else { return Vec::new() };
    let mut links = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[0].starts_with("fe80") {
            continue;
        }
        if let Ok(i) = u32::from_str_radix(f[1], 16) {
            if !links.contains(&i) {
                links.push(i);
            }
        }
    }
    links
}

/// This host's IPv6 addresses that other hosts can reach: global scope (ULAs included, as test
/// networks and many LANs use them), not tentative, deprecated or temporary.
pub fn ipv6_addresses() -> Vec<Ipv6Addr> {
    let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") else { return Vec::new() };
    // IFA_F_TEMPORARY 0x01, IFA_F_DADFAILED 0x08, IFA_F_DEPRECATED 0x20, IFA_F_TENTATIVE 0x40.
    const UNFIT: u32 = 0x01 | 0x08 | 0x20 | 0x40;
    let mut out = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(hex), Some(scope), Some(flags)) = (f.first(), f.get(3), f.get(4)) else { continue };
        let scope = u32::from_str_radix(scope, 16).unwrap_or(u32::MAX);
        let flags = u32::from_str_radix(flags, 16).unwrap_or(UNFIT);
        let Ok(bits) = u128::from_str_radix(hex, 16) else { continue };
        if hex.len() == 32 && scope == 0 && flags & UNFIT == 0 {
            out.push(Ipv6Addr::from(bits));
        }
    }
    out
}

impl Lan {
    /// Joins the multicast groups as the node `peer` whose QUIC endpoint is on `port`; what it
    /// hears about joined topics goes to `found`. Fails only when neither IPv4 nor IPv6 works.
    pub fn start(peer: PeerId, port: u16, found: Found) -> Result<Lan, NetError> {
        let io = |e: std::io::Error| NetError::Io(format!("LAN discovery: {e}"));
        let mut sockets = Vec::new();
        let mut failed = Vec::new();
        for v6 in [false, true] {
            match LanSocket::bind(v6) {
                Ok(s) => sockets.push(s),
                Err(e) => failed.push(format!("IPv{}: {e}", if v6 { 6 } else { 4 })),
            }
        }
        if sockets.is_empty() {
            return Err(NetError::Io(format!("LAN discovery: {}", failed.join("; "))));
        }
        for f in &failed {
            tracing::info!("LAN discovery without {f}");
        }
        let state = Arc::new(Mutex::new(LanState { topics: HashMap::new() }));
        let clone = |s: &LanSocket| -> Result<LanSocket, NetError> {
            Ok(LanSocket { socket: s.socket.try_clone().map_err(io)?, joined: s.joined.clone(), v6: s.v6 })
        };
        let mut receivers = Vec::new();
        for s in &sockets {
            receivers.push(clone(s)?);
        }
        let lan = Lan { sockets, peer, port, state: state.clone() };
        // The state's holders: the Lan and each receiving thread.
        let holders = receivers.len() + 1;
        for receiver in receivers {
            let answer = Lan { sockets: vec![clone(&receiver)?], peer, port, state: state.clone() };
            let weak = Arc::downgrade(&state);
            let found = found.clone();
            std::thread::Builder::new()
                .name("hyperfs-lan".into())
                .spawn(move || {
                    let mut buf = [0u8; 2048];
                    // Ends when the Lan (the last other holder of the state) is dropped.
                    while weak.strong_count() >= holders {
                        let Ok((n, from)) = receiver.socket.recv_from(&mut buf) else { continue };
                        let Some(d) = Datagram::decode(&buf[..n]) else { continue };
                        if d.peer == peer {
                            continue;
                        }
                        answer.heard(&d, from, &found);
                    }
                })
                .map_err(io)?;
        }
        Ok(lan)
    }

    fn heard(&self, d: &Datagram, from: SocketAddr, found: &Found) {
        let (ours, joined): (Vec<Hash>, Vec<Hash>) = {
            let s = lock(&self.state);
            let ours = d.topics.iter().filter(|t| s.topics.get(*t) == Some(&true)).copied().collect();
            let joined = d.topics.iter().filter(|t| s.topics.contains_key(*t)).copied().collect();
            (ours, joined)
        };
        match d.kind {
            QUERY if !ours.is_empty() => self.send(ANNOUNCE, &ours),
            ANNOUNCE => {
                // A link-local sender is reached through the interface it was heard on.
                let addr = match from {
                    SocketAddr::V6(f) => SocketAddr::V6(SocketAddrV6::new(*f.ip(), d.port, 0, f.scope_id())),
                    SocketAddr::V4(f) => SocketAddr::V4(SocketAddrV4::new(*f.ip(), d.port)),
                };
                for t in joined {
                    found(t, addr, Source::Lan);
                }
            }
            _ => {}
        }
    }

    fn send(&self, kind: u8, topics: &[Hash]) {
        for part in topics.chunks(MAX_TOPICS) {
            let d = Datagram { kind, peer: self.peer, port: self.port, topics: part.to_vec() };
            let bytes = d.encode();
            for s in &self.sockets {
                s.send(&bytes);
            }
        }
    }

    /// Joins `topic`: asks who serves it now, and answers others' queries for it if `announce`.
    pub fn join(&self, topic: Hash, announce: bool) {
        lock(&self.state).topics.insert(topic, announce);
        if announce {
            self.send(ANNOUNCE, &[topic]);
        }
        self.send(QUERY, &[topic]);
    }

    pub fn leave(&self, topic: &Hash) {
        lock(&self.state).topics.remove(topic);
    }

    /// Asks again who serves `topics`.
    pub fn query(&self, topics: &[Hash]) {
        if !topics.is_empty() {
            self.send(QUERY, topics);
        }
    }
}

/// Mainline DHT discovery: announce our QUIC port under a topic's id, look up others'.
pub struct Dht {
    dht: mainline::Dht,
    port: u16,
}

impl Dht {
    /// A DHT client bootstrapped from `bootstrap` (`HOST:PORT`; empty: the public bootstrap
    /// nodes), announcing QUIC port `port`.
    pub fn start(bootstrap: &[String], port: u16) -> Result<Dht, NetError> {
        let mut b = mainline::Dht::builder();
        if !bootstrap.is_empty() {
            b.bootstrap(bootstrap);
        }
        let dht = b.build().map_err(|e| NetError::Io(format!("starting the DHT: {e}")))?;
        Ok(Dht { dht, port })
    }

    /// Announces this node under `topic` (blocking: a DHT query).
    pub fn announce(&self, topic: &Hash) -> Result<(), NetError> {
        let id = mainline::Id::from_bytes(dht_id(topic)).map_err(|e| NetError::Io(format!("DHT id: {e:?}")))?;
        self.dht.announce_peer(id, Some(self.port)).map_err(|e| NetError::Io(format!("DHT announce: {e:?}")))?;
        Ok(())
    }

    /// The peers announced under `topic` (blocking: a DHT query).
    pub fn lookup(&self, topic: &Hash) -> Vec<SocketAddr> {
        let Ok(id) = mainline::Id::from_bytes(dht_id(topic)) else { return Vec::new() };
        let mut out: Vec<SocketAddr> = Vec::new();
        for found in self.dht.get_peers(id) {
            for a in found {
                let a = SocketAddr::V4(a);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_datagram_round_trips_and_topics_hide_the_key() {
        let dk = crypto::discovery_key(&crypto::CoreKey([7; 32]));
        let t = topic(&dk);
        assert_ne!(t, dk.0);
        assert_ne!(&t[..], &[7u8; 32][..]);
        let d = Datagram { kind: ANNOUNCE, peer: PeerId([1; 32]), port: 7400, topics: vec![t, [9; 32]] };
        assert_eq!(Datagram::decode(&d.encode()), Some(d));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Datagram::decode(&bytes);
        }
    }

    /// Two nodes on one host find each other's topic through the multicast group.
    #[test]
    fn two_lan_nodes_find_each_other() {
        let t = topic(&crypto::discovery_key(&crypto::CoreKey([3; 32])));
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let found: Found = Arc::new(move |topic, addr, source| {
            let _ = lock(&tx).send((topic, addr, source));
        });
        let quiet: Found = Arc::new(|_, _, _| {});
        let a = Lan::start(PeerId([1; 32]), 7001, quiet).expect("LAN discovery");
        let b = Lan::start(PeerId([2; 32]), 7002, found).expect("LAN discovery");
        a.join(t, true);
        b.join(t, false);
        let (got, addr, source) = rx.recv_timeout(Duration::from_secs(2)).expect("found within two seconds");
        assert_eq!((got, addr.port(), source), (t, 7001, Source::Lan));
        // A's announce on joining and its answer to B's query may both arrive: let them.
        std::thread::sleep(Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
        // A topic left is no longer answered for.
        a.leave(&t);
        b.query(&[t]);
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    }
}
