//! UDP hole punching as HyperDHT does it, sans-IO: what a node learns of its NAT from the
//! addresses DHT nodes see it at ([`Nat`]), and the punch itself ([`Puncher`]): which probes go
//! where and when, and which probe that arrives makes the connection. Time and packets come in
//! from outside, so the same code runs on the network and on a simulated one (the tests: NATs
//! that keep or randomise ports, lost probes, mappings that time out).
//!
//! A probe is one UDP datagram holding one zero byte (holepunch-wire.md §7.7). Both sides send
//! probes to the other's public addresses; each probe sent opens the sender's NAT towards that
//! address, and the first probe the initiator receives is the path: it connects its UDX stream
//! to the probe's source through the socket that received it. The responder answers every probe
//! it receives with one back.
//!
//! Strategies by the two NATs' kinds (OPEN counts as CONSISTENT):
//! - consistent ↔ consistent: a probe to each of the remote addresses every second, at most 10
//!   rounds (addresses the remote did not prove it holds only every 4th round); the responder
//!   starts a second later;
//! - consistent ↔ random (this side keeps ports, the remote randomises them): 1,750 probes 20 ms
//!   apart to random ports of the remote's verified IP (~35 s);
//! - random ↔ consistent: up to 256 "birthday" sockets, each sending a probe whose TTL (5) opens
//!   this side's NAT but dies before the remote's, then probes round-robin from all of them, 20 ms
//!   apart, 1,750 in all: the remote's random probes meet one of the 256 openings with
//!   probability 1 − (1 − 256/64,536)^1,750 ≈ 99.9%;
//! - random ↔ random: no punch (a relay is needed).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use salsa20::cipher::StreamCipher;

/// How reachable a node is (HyperDHT's `FIREWALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Firewall {
    Unknown = 0,
    /// Reachable by anyone: no NAT, or one that forwards.
    Open = 1,
    /// Behind a NAT that maps a socket to the same public port whoever it sends to.
    Consistent = 2,
    /// Behind a NAT that picks a new public port for each destination.
    Random = 3,
}

impl Firewall {
    pub fn from_u64(v: u64) -> Firewall {
        match v {
            1 => Firewall::Open,
            2 => Firewall::Consistent,
            3 => Firewall::Random,
            _ => Firewall::Unknown,
        }
    }

    /// The kind's name as users see it: `unknown`, `open`, `consistent` or `random`.
    pub fn name(self) -> &'static str {
        match self {
            Firewall::Unknown => "unknown",
            Firewall::Open => "open",
            Firewall::Consistent => "consistent",
            Firewall::Random => "random",
        }
    }

    /// OPEN is punched as CONSISTENT.
    fn coerced(self) -> Firewall {
        if self == Firewall::Open {
            Firewall::Consistent
        } else {
            self
        }
    }
}

/// Samples needed before a first verdict, and wanted in all.
const MIN_VERDICT: u32 = 3;
pub const WANTED_SAMPLES: u32 = 4;

/// What DHT nodes saw of one socket: each reply's `to` (the socket's public address as that
/// node saw it), one per node, and the verdict HyperDHT's `nat.js` reaches from them.
#[derive(Debug, Clone)]
pub struct Nat {
    firewalled: bool,
    /// (address, hits), most hits first; and the same by IP alone (port 0).
    full: Vec<(SocketAddrV4, u32)>,
    hosts: Vec<(SocketAddrV4, u32)>,
    /// Nodes that answered (a node's sample counts once).
    seen: Vec<SocketAddrV4>,
    sampled: u32,
    firewall: Firewall,
}

impl Nat {
    /// A sampler for a node whose DHT socket is (`firewalled`) or is not reachable from outside.
    pub fn new(firewalled: bool) -> Nat {
        Nat {
            firewalled,
            full: Vec::new(),
            hosts: Vec::new(),
            seen: Vec::new(),
            sampled: 0,
            firewall: if firewalled { Firewall::Unknown } else { Firewall::Open },
        }
    }

    /// Node `from` saw this socket at `to`.
    pub fn add(&mut self, to: SocketAddrV4, from: SocketAddrV4) {
        if self.seen.contains(&from) || self.seen.len() >= 64 {
            return;
        }
        self.seen.push(from);
        add_sample(&mut self.hosts, SocketAddrV4::new(*to.ip(), 0));
        add_sample(&mut self.full, to);
        self.sampled += 1;
        if self.sampled >= MIN_VERDICT || !self.firewalled {
            self.update();
        }
    }

    /// Outside nodes reached the socket unasked (dht-rpc's PING_NAT): it is open.
    pub fn reachable(&mut self) {
        self.firewalled = false;
        self.update();
    }

    fn update(&mut self) {
        if !self.firewalled {
            self.firewall = Firewall::Open;
            return;
        }
        if self.sampled < MIN_VERDICT {
            return;
        }
        let max = self.full[0].1;
        self.firewall = if max >= 3 {
            Firewall::Consistent
        } else if max == 1 {
            Firewall::Random
        } else if self.hosts.len() == 1 && self.sampled > 3 {
            // Two hits on one address of one IP among four or more: the rest moved.
            Firewall::Random
        } else if self.hosts.len() > 1 && self.full.get(1).is_some_and(|s| s.1 > 1) {
            // Two addresses seen twice each (two IPs, a multi-homed host): consistent.
            Firewall::Consistent
        } else if self.sampled > 4 {
            Firewall::Random
        } else {
            self.firewall
        };
    }

    pub fn firewall(&self) -> Firewall {
        self.firewall
    }

    pub fn sampled(&self) -> u32 {
        self.sampled
    }

    /// Whether the verdict can be acted on (HyperDHT waits for a consistent verdict or for all
    /// the samples it asked for).
    pub fn settled(&self) -> bool {
        matches!(self.firewall, Firewall::Consistent | Firewall::Open) || self.sampled >= WANTED_SAMPLES
    }

    /// The public addresses to tell a peer: for a consistent NAT the ones seen twice (at least
    /// two), for a random one the IP alone (port 0).
    pub fn addresses(&self) -> Vec<SocketAddrV4> {
        match self.firewall {
            Firewall::Unknown => Vec::new(),
            Firewall::Random => self.hosts.first().map(|h| h.0).into_iter().collect(),
            Firewall::Consistent | Firewall::Open => {
                let mut out = Vec::new();
                for &(a, hits) in &self.full {
                    if hits >= 2 || out.len() < 2 {
                        out.push(a);
                    }
                }
                out
            }
        }
    }
}

/// Counts a hit of `addr`, keeping the most hit first.
fn add_sample(samples: &mut Vec<(SocketAddrV4, u32)>, addr: SocketAddrV4) {
    if let Some(mut i) = samples.iter().position(|s| s.0 == addr) {
        samples[i].1 += 1;
        while i > 0 && samples[i - 1].1 < samples[i].1 {
            samples.swap(i - 1, i);
            i -= 1;
        }
    } else {
        samples.push((addr, 1));
    }
}

/// Rounds of the consistent punch, a second apart.
const CONSISTENT_ROUNDS: u32 = 10;
const CONSISTENT_GAP: Duration = Duration::from_secs(1);
/// Probes of the random punches, 20 ms apart (~35 s).
const RANDOM_PROBES: u32 = 1750;
const RANDOM_GAP: Duration = Duration::from_millis(20);
/// Sockets a node behind a random NAT opens.
pub const BIRTHDAY_SOCKETS: usize = 256;
/// The TTL of a probe meant to open this side's NAT only.
pub const LOW_TTL: u32 = 5;

/// A public address of the remote and whether it proved it holds it (it echoed the token we
/// derived from that address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddress {
    pub addr: SocketAddrV4,
    pub verified: bool,
}

/// What the puncher asks of its socket(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a probe from socket `socket` (0 is the first) to `to`; with `low_ttl`, at TTL 5.
    Probe { socket: usize, to: SocketAddrV4, low_ttl: bool },
    /// Open another socket (its index is the number opened so far).
    OpenSocket,
    /// The initiator heard a probe: connect the stream to `to` through socket `socket`.
    Connected { socket: usize, to: SocketAddrV4 },
    /// The punch ran out of rounds, or cannot work: give up (a relay, or an error).
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Consistent,
    RandomProbes(SocketAddrV4),
    Birthday(SocketAddrV4),
}

/// One punch towards one remote peer.
#[derive(Debug)]
pub struct Puncher {
    initiator: bool,
    local: Firewall,
    remote: Firewall,
    remote_addresses: Vec<RemoteAddress>,
    strategy: Option<Strategy>,
    /// Sockets open (the first is there from the start).
    sockets: usize,
    tries: u32,
    next: Option<Instant>,
    /// The keep-alive round of the birthday strategy: which socket is next, and whether this
    /// round still goes at low TTL.
    turn: usize,
    low_rounds: u32,
    done: bool,
    rng: u64,
}

impl Puncher {
    /// A punch by this side (the connection's `initiator` or not) whose NAT is `local`; `seed`
    /// drives the random ports it probes.
    pub fn new(initiator: bool, local: Firewall, seed: u64) -> Puncher {
        Puncher {
            initiator,
            local,
            remote: Firewall::Unknown,
            remote_addresses: Vec::new(),
            strategy: None,
            sockets: 1,
            tries: 0,
            next: None,
            turn: 0,
            low_rounds: 1,
            done: false,
            rng: seed | 1,
        }
    }

    /// What the remote told of itself (its holepunch payload): its NAT and public addresses.
    pub fn update_remote(&mut self, firewall: Firewall, addresses: Vec<RemoteAddress>) {
        self.remote = firewall;
        self.remote_addresses = addresses;
    }

    /// Whether a punch cannot work as things stand: both NATs random, or this one unknown.
    pub fn unstable(&self) -> bool {
        (self.remote >= Firewall::Random && self.local >= Firewall::Random) || self.local == Firewall::Unknown
    }

    /// Starts punching at `now`; false when no strategy fits (no remote address, two random
    /// NATs, or a random NAT whose address the remote did not prove).
    pub fn punch(&mut self, now: Instant) -> bool {
        if self.done || self.remote_addresses.is_empty() {
            return false;
        }
        if self.strategy.is_some() {
            return true;
        }
        let (local, remote) = (self.local.coerced(), self.remote.coerced());
        let verified = self.remote_addresses.iter().find(|a| a.verified).map(|a| a.addr);
        self.strategy = match (local, remote, verified) {
            (Firewall::Consistent, Firewall::Consistent, _) => Some(Strategy::Consistent),
            (Firewall::Consistent, Firewall::Random, Some(v)) => Some(Strategy::RandomProbes(v)),
            (Firewall::Random, Firewall::Consistent, Some(v)) => Some(Strategy::Birthday(v)),
            _ => None,
        };
        self.next = match self.strategy {
            None => return false,
            // The responder's first round waits a second: the initiator's probes opened its NAT.
            Some(Strategy::Consistent) if !self.initiator => Some(now + CONSISTENT_GAP),
            Some(_) => Some(now),
        };
        true
    }

    /// When [`Puncher::poll`] has something to do next.
    pub fn deadline(&self) -> Option<Instant> {
        if self.done {
            None
        } else {
            self.next
        }
    }

    /// Whether the punch ended (connected or given up).
    pub fn done(&self) -> bool {
        self.done
    }

    /// The probes due at `now`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(strategy) = self.strategy else { return };
        while !self.done && self.next.is_some_and(|t| t <= now) {
            match strategy {
                Strategy::Consistent => {
                    if self.tries == CONSISTENT_ROUNDS {
                        self.give_up(out);
                        return;
                    }
                    self.tries += 1;
                    for a in &self.remote_addresses {
                        // Unproven addresses only every 4th round.
                        if a.verified || self.tries & 3 == 0 {
                            out.push(Action::Probe { socket: 0, to: a.addr, low_ttl: false });
                        }
                    }
                    self.next = self.next.map(|t| t + CONSISTENT_GAP);
                }
                Strategy::RandomProbes(v) => {
                    if self.tries == RANDOM_PROBES {
                        self.give_up(out);
                        return;
                    }
                    self.tries += 1;
                    let port = self.random_port();
                    out.push(Action::Probe { socket: 0, to: SocketAddrV4::new(*v.ip(), port), low_ttl: false });
                    self.next = self.next.map(|t| t + RANDOM_GAP);
                }
                Strategy::Birthday(v) => {
                    if self.sockets < BIRTHDAY_SOCKETS {
                        // Open the sockets in a burst, each with a low-TTL probe, then rest.
                        while self.sockets < BIRTHDAY_SOCKETS {
                            out.push(Action::OpenSocket);
                            out.push(Action::Probe { socket: self.sockets, to: v, low_ttl: true });
                            self.sockets += 1;
                        }
                        self.next = Some(now + Duration::from_millis(100));
                        continue;
                    }
                    if self.tries == RANDOM_PROBES {
                        self.give_up(out);
                        return;
                    }
                    self.tries += 1;
                    if self.turn == self.sockets {
                        self.turn = 0;
                        self.low_rounds = self.low_rounds.saturating_sub(1);
                    }
                    out.push(Action::Probe { socket: self.turn, to: v, low_ttl: self.low_rounds > 0 });
                    self.turn += 1;
                    self.next = self.next.map(|t| t + RANDOM_GAP);
                }
            }
        }
    }

    /// A probe from `from` arrived on socket `socket`. The initiator takes the first as the
    /// path; the responder answers each with a probe back.
    pub fn on_probe(&mut self, socket: usize, from: SocketAddrV4, out: &mut Vec<Action>) {
        if self.done || socket >= self.sockets {
            return;
        }
        if self.initiator {
            self.done = true;
            out.push(Action::Connected { socket, to: from });
        } else {
            out.push(Action::Probe { socket, to: from, low_ttl: false });
        }
    }

    /// The connection was made by other means (the stream's first packet on the responder):
    /// no more probes.
    pub fn stop(&mut self) {
        self.done = true;
    }

    fn give_up(&mut self, out: &mut Vec<Action>) {
        self.done = true;
        out.push(Action::Abort);
    }

    /// A port in 1000..65536, as HyperDHT picks them.
    fn random_port(&mut self) -> u16 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        (1000 + r % 64536) as u16
    }
}

/// What a PEER_HOLEPUNCH message carries, sealed (HyperDHT's `holepunchPayload`, §7.7): the
/// sender's NAT, its public addresses, the round, and the tokens that prove an address is held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    pub error: u64,
    pub firewall: u64,
    pub round: u64,
    pub connected: bool,
    pub punching: bool,
    pub addresses: Option<Vec<SocketAddrV4>>,
    pub remote_address: Option<SocketAddrV4>,
    pub token: Option<[u8; 32]>,
    pub remote_token: Option<[u8; 32]>,
}

/// At most this many addresses are taken from a peer's payload.
const MAX_ADDRESSES: usize = 16;

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = hyperfs_engine::encoding::Encoder::new();
        let flags = u64::from(self.connected)
            | u64::from(self.punching) << 1
            | u64::from(self.addresses.is_some()) << 2
            | u64::from(self.remote_address.is_some()) << 3
            | u64::from(self.token.is_some()) << 4
            | u64::from(self.remote_token.is_some()) << 5;
        e.uint(flags).uint(self.error).uint(self.firewall).uint(self.round);
        if let Some(a) = &self.addresses {
            e.uint(a.len() as u64);
            for a in a {
                crate::dht::put_addr(&mut e, a);
            }
        }
        if let Some(a) = &self.remote_address {
            crate::dht::put_addr(&mut e, a);
        }
        for t in [&self.token, &self.remote_token].into_iter().flatten() {
            e.fixed(t);
        }
        e.finish()
    }

    /// The payload in `b`, or `None` for anything malformed (or with too many addresses).
    pub fn decode(b: &[u8]) -> Option<Payload> {
        let mut d = hyperfs_engine::encoding::Decoder::new(b);
        let flags = d.uint("flags").ok()?;
        let mut p = Payload {
            error: d.uint("error").ok()?,
            firewall: d.uint("firewall").ok()?,
            round: d.uint("round").ok()?,
            connected: flags & 1 != 0,
            punching: flags & 2 != 0,
            ..Payload::default()
        };
        if flags & 4 != 0 {
            let a = crate::dht::take_addrs(&mut d)?;
            if a.len() > MAX_ADDRESSES {
                return None;
            }
            p.addresses = Some(a);
        }
        if flags & 8 != 0 {
            p.remote_address = Some(crate::dht::take_addr(&mut d)?);
        }
        if flags & 16 != 0 {
            p.token = Some(d.array("token").ok()?);
        }
        if flags & 32 != 0 {
            p.remote_token = Some(d.array("remote token").ok()?);
        }
        Some(p)
    }
}

/// The key both sides seal holepunch payloads with: BLAKE2b-256 keyed by the Noise handshake
/// hash, of the PEER_HOLEPUNCH namespace.
pub fn holepunch_secret(handshake_hash: &[u8; 64]) -> [u8; 32] {
    let ns = crate::dht::namespace(crate::dht::command::PEER_HOLEPUNCH);
    let h = blake2b_simd::Params::new().hash_length(32).key(handshake_hash).hash(&ns);
    h.as_bytes().try_into().expect("32 bytes")
}

/// Sealing and opening holepunch payloads (libsodium's `crypto_secretbox_easy`: XSalsa20 and
/// Poly1305, `nonce(24) ‖ MAC(16) ‖ ciphertext`), and the tokens that prove an address.
pub struct SecurePayload {
    shared: [u8; 32],
    /// This side's secret for its tokens.
    local: [u8; 32],
}

impl SecurePayload {
    pub fn new(shared: [u8; 32], local: [u8; 32]) -> SecurePayload {
        SecurePayload { shared, local }
    }

    /// `payload` sealed under `nonce` (random in use).
    pub fn seal(&self, payload: &Payload, nonce: [u8; 24]) -> Vec<u8> {
        let (mut cipher, mac) = secretbox(&self.shared, &nonce);
        let mut msg = payload.encode();
        cipher.apply_keystream(&mut msg);
        let tag: [u8; 16] = mac.compute_unpadded(&msg).into();
        [&nonce[..], &tag, &msg].concat()
    }

    /// The payload sealed in `b`, if it authenticates and decodes.
    pub fn open(&self, b: &[u8]) -> Option<Payload> {
        if b.len() <= 24 + 16 {
            return None;
        }
        let nonce: [u8; 24] = b[..24].try_into().ok()?;
        let (mut cipher, mac) = secretbox(&self.shared, &nonce);
        let expected: [u8; 16] = mac.compute_unpadded(&b[40..]).into();
        // Constant time: a MAC is compared whole.
        if expected.iter().zip(&b[24..40]).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0 {
            return None;
        }
        let mut msg = b[40..].to_vec();
        cipher.apply_keystream(&mut msg);
        Payload::decode(&msg)
    }

    /// The token of an address's IP (echoed back by the peer that holds it).
    pub fn token(&self, addr: &SocketAddrV4) -> [u8; 32] {
        let h = blake2b_simd::Params::new().hash_length(32).key(&self.local).hash(addr.ip().to_string().as_bytes());
        h.as_bytes().try_into().expect("32 bytes")
    }
}

/// secretbox's XSalsa20 stream past its first 32 bytes, and the Poly1305 those bytes key.
fn secretbox(key: &[u8; 32], nonce: &[u8; 24]) -> (salsa20::XSalsa20, poly1305::Poly1305) {
    use poly1305::universal_hash::KeyInit as _;
    use salsa20::cipher::KeyIvInit;
    let mut cipher = salsa20::XSalsa20::new(key.into(), nonce.into());
    let mut block0 = [0u8; 32];
    cipher.apply_keystream(&mut block0);
    (cipher, poly1305::Poly1305::new(&block0.into()))
}

#[cfg(test)]
mod tests;
