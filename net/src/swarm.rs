//! The swarm's decisions, without I/O: the topics this node is in, the addresses discovery gave
//! for them (candidates), and whom to dial when — at most [`PER_TOPIC`] connected peers per
//! topic and [`MAX_PEERS`] in all, with backoff after failures, a quick retry for an address
//! heard of again, and a bounded set of candidates however many addresses strangers announce.
//!
//! Time is an input: the driver (the node's network) calls [`Swarm::poll`] with the time and the
//! connected peers, carries out the [`Action`]s it returns (LAN queries, DHT work, dials, peer
//! cache writes) and reports back ([`Swarm::dialed`], [`Swarm::dht_done`], [`Swarm::add`]).
//! [`Swarm::next_timeout`] says when polling is next due, so an idle driver sleeps.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::{CoreKey, Hash};

use crate::identity::PeerId;

use crate::discovery::Source;

/// Connected peers a topic is content with.
pub const PER_TOPIC: usize = 8;
/// Connected peers in all.
pub const MAX_PEERS: usize = 64;
/// How often a topic short of peers asks the LAN again…
pub const LAN_EVERY: Duration = Duration::from_secs(2);
/// …and the DHT, while it has some peers…
pub const DHT_LOOKUP_EVERY: Duration = Duration::from_secs(15);
/// …or none.
pub const DHT_LOOKUP_ALONE: Duration = Duration::from_secs(3);
/// How often an announcement on the DHT is renewed (nodes forget them after about 30 min).
pub const DHT_ANNOUNCE_EVERY: Duration = Duration::from_secs(600);
/// Addresses kept as candidates at most: LAN announcements and DHT answers are anyone's words,
/// and a flood of spoofed ones must not grow memory or the dialing without bound.
pub const MAX_CANDIDATES: usize = 1024;
/// A connected address is not dialed again for this long after it connected.
const AFTER_CONNECT: Duration = Duration::from_secs(1);
/// An address of a peer connected at another address is not dialed again for this long.
const ELSEWHERE: Duration = Duration::from_secs(60);
/// Backoff after `n` failures: 2^n seconds, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An address that failed and is heard of again is tried within this.
const HEARD_AGAIN: Duration = Duration::from_secs(2);
/// Ourselves, announced back to us: not dialed again for this long.
const NEVER: Duration = Duration::from_secs(86_400 * 365);
/// With peers connected, the driver polls at least this often (a dropped connection is found
/// here: its topic is short again).
pub const POLL_AT_MOST: Duration = Duration::from_secs(1);

/// A topic joined.
#[derive(Debug)]
struct Topic {
    /// The core whose peers we look for (a drive's db core): a connected peer serves the topic
    /// when it has this core open.
    core: CoreKey,
    announce: bool,
    lan_only: bool,
    lan_asked: Option<Instant>,
    dht_asked: Option<Instant>,
    dht_announced: Option<Instant>,
    dht_busy: bool,
}

/// An address some discovery gave, and how dialing it went.
#[derive(Debug)]
struct Candidate {
    source: Source,
    topics: Vec<Hash>,
    failures: u32,
    next_try: Instant,
    dialing: bool,
}

/// A connected peer, as the driver sees it.
#[derive(Debug, Clone)]
pub struct Connected {
    pub address: SocketAddr,
    /// The cores it has open with us.
    pub cores: Vec<CoreKey>,
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the LAN for peers of these topics.
    AskLan(Vec<Hash>),
    /// Look the topic up on the DHT, announce it, or both; report with [`Swarm::dht_done`].
    Dht { topic: Hash, lookup: bool, announce: bool },
    /// Dial the address; report with [`Swarm::dialed`].
    Dial { address: SocketAddr, source: Source },
    /// Put the address first in the topic's peer cache.
    Remember { topic: Hash, address: SocketAddr },
}

/// How a dial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialed {
    Connected,
    /// The address is this node's own.
    Ourselves,
    /// The peer there was connected already, at another of its addresses (IPv4 and IPv6, or
    /// two interfaces): the connection there is kept and this address is let be a while.
    Elsewhere,
    Failed,
}

/// Which discovery this node has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mechanisms {
    pub lan: bool,
    pub dht: bool,
}

/// The swarm's state; see the module doc.
#[derive(Debug, Default)]
pub struct Swarm {
    mechanisms: Mechanisms,
    topics: HashMap<Hash, Topic>,
    candidates: HashMap<SocketAddr, Candidate>,
    /// How each address we connected to was found.
    sources: HashMap<SocketAddr, Source>,
    /// (topic, address) pairs already put in the peer cache.
    remembered: HashSet<(Hash, SocketAddr)>,
}

impl Swarm {
    pub fn new(mechanisms: Mechanisms) -> Swarm {
        Swarm { mechanisms, ..Swarm::default() }
    }

    /// Joins `topic`, whose peers serve `core`; `cached` are the addresses the peer cache holds
    /// for it. With `announce`, this node is announced as serving it (on the DHT too unless
    /// `lan_only`). Joining again only widens what was asked: announcing stays on.
    pub fn join(
        &mut self,
        topic: Hash,
        core: CoreKey,
        announce: bool,
        lan_only: bool,
        cached: &[SocketAddr],
        now: Instant,
    ) {
        if let Some(t) = self.topics.get_mut(&topic) {
            t.announce |= announce;
            t.lan_only &= lan_only;
            return;
        }
        self.topics.insert(
            topic,
            Topic {
                core,
                announce,
                lan_only,
                // The LAN is told on joining (the driver joins the LAN's topic itself).
                lan_asked: Some(now),
                dht_asked: None,
                dht_announced: None,
                dht_busy: false,
            },
        );
        for &a in cached {
            self.add(topic, a, Source::Cache, now);
        }
    }

    /// Leaves `topic`: no longer looked for; its candidates are not dialed for it.
    pub fn leave(&mut self, topic: &Hash) {
        self.topics.remove(topic);
    }

    pub fn joined(&self, topic: &Hash) -> bool {
        self.topics.contains_key(topic)
    }

    /// Adds a candidate address for `topic` (a better source than what was known wins). Past
    /// [`MAX_CANDIDATES`], the address that failed most (never a static one, nor one being
    /// dialed) makes room, else the newcomer is not kept; a static one always gets in.
    pub fn add(&mut self, topic: Hash, address: SocketAddr, source: Source, now: Instant) {
        let cands = &mut self.candidates;
        if !cands.contains_key(&address) && cands.len() >= MAX_CANDIDATES {
            let worst = cands
                .iter()
                .filter(|(_, c)| !c.dialing && c.source != Source::Static)
                .max_by_key(|(_, c)| c.failures)
                .map(|(a, c)| (*a, c.failures));
            match worst {
                Some((a, failures)) if failures > 0 || source == Source::Static => {
                    cands.remove(&a);
                }
                _ => return,
            }
        }
        let c = cands.entry(address).or_insert_with(|| Candidate {
            source,
            topics: Vec::new(),
            failures: 0,
            next_try: now,
            dialing: false,
        });
        if !c.topics.contains(&topic) {
            c.topics.push(topic);
        }
        if c.source == Source::Cache && source != Source::Cache || source == Source::Static {
            c.source = source;
        }
        // Heard of again: a failed address gets another chance soon.
        if source != Source::Cache && c.failures > 0 {
            c.next_try = c.next_try.min(now + HEARD_AGAIN);
        }
    }

    /// Records how a peer we dialed outside the swarm (`--peer`) was found.
    pub fn note(&mut self, address: SocketAddr, source: Source) {
        self.sources.insert(address, source);
    }

    /// How the peer at `address` was found (a peer that dialed us first while discovery had
    /// found it too counts as found).
    pub fn source(&self, address: &SocketAddr) -> Source {
        if let Some(s) = self.sources.get(address) {
            return *s;
        }
        self.candidates.get(address).map_or(Source::Incoming, |c| c.source)
    }

    /// What to do now, given the connected peers.
    pub fn poll(&mut self, now: Instant, peers: &[Connected]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut lan_ask = Vec::new();
        let mut short = Vec::new();
        for (t, j) in self.topics.iter_mut() {
            let serving: Vec<&Connected> = peers.iter().filter(|p| p.cores.contains(&j.core)).collect();
            // Every peer of the topic goes into its cache, whoever dialed (a peer's address is
            // its listening socket: QUIC dials from the socket it listens on).
            for p in &serving {
                if self.remembered.insert((*t, p.address)) {
                    actions.push(Action::Remember { topic: *t, address: p.address });
                }
            }
            let connected = serving.len();
            if connected < PER_TOPIC {
                short.push(*t);
                if self.mechanisms.lan && j.lan_asked.is_none_or(|at| now.saturating_duration_since(at) >= LAN_EVERY) {
                    j.lan_asked = Some(now);
                    lan_ask.push(*t);
                }
            }
            if self.mechanisms.dht && !j.lan_only && !j.dht_busy {
                // A topic with no peer at all asks often; one with a few, now and then.
                let every = if connected == 0 { DHT_LOOKUP_ALONE } else { DHT_LOOKUP_EVERY };
                let due = |at: Option<Instant>, every| at.is_none_or(|at| now.saturating_duration_since(at) >= every);
                let lookup = connected < PER_TOPIC && due(j.dht_asked, every);
                let announce = j.announce && due(j.dht_announced, DHT_ANNOUNCE_EVERY);
                if lookup || announce {
                    j.dht_busy = true;
                    if lookup {
                        j.dht_asked = Some(now);
                    }
                    if announce {
                        j.dht_announced = Some(now);
                    }
                    actions.push(Action::Dht { topic: *t, lookup, announce });
                }
            }
        }
        if !lan_ask.is_empty() {
            lan_ask.sort();
            actions.push(Action::AskLan(lan_ask));
        }
        // Dials under way count against the room: a poll does not start more while earlier
        // ones wait on addresses that never answer.
        let dialing = self.candidates.values().filter(|c| c.dialing).count();
        let mut room = MAX_PEERS.saturating_sub(peers.len() + dialing);
        let mut due: Vec<(&SocketAddr, &mut Candidate)> = self
            .candidates
            .iter_mut()
            .filter(|(a, c)| {
                !c.dialing
                    && c.next_try <= now
                    && !peers.iter().any(|p| p.address == **a)
                    && c.topics.iter().any(|t| short.contains(t))
            })
            .collect();
        // Static peers first, then the fewest failures (a deterministic order).
        due.sort_by_key(|(a, c)| (c.source != Source::Static, c.failures, **a));
        for (address, c) in due {
            if room == 0 {
                break;
            }
            room -= 1;
            c.dialing = true;
            actions.push(Action::Dial { address: *address, source: c.source });
        }
        actions
    }

    /// A dial of `address` ended.
    pub fn dialed(&mut self, address: SocketAddr, how: Dialed, now: Instant) {
        let Some(c) = self.candidates.get_mut(&address) else { return };
        c.dialing = false;
        match how {
            Dialed::Connected => {
                c.failures = 0;
                c.next_try = now + AFTER_CONNECT;
                self.sources.insert(address, c.source);
            }
            Dialed::Ourselves => c.next_try = now + NEVER,
            Dialed::Elsewhere => {
                c.failures = 0;
                c.next_try = now + ELSEWHERE;
            }
            Dialed::Failed => {
                c.failures += 1;
                c.next_try = now + backoff(c.failures);
            }
        }
    }

    /// DHT work for `topic` ended, having found `found` (this node's own address left out).
    pub fn dht_done(&mut self, topic: Hash, found: &[SocketAddr], now: Instant) {
        if let Some(t) = self.topics.get_mut(&topic) {
            t.dht_busy = false;
        }
        for &a in found {
            self.add(topic, a, Source::Dht, now);
        }
    }

    /// When [`Swarm::poll`] next has something to do (at the latest): a candidate's backoff
    /// ending; with topics joined, at least every [`POLL_AT_MOST`] (LAN and DHT questions fall
    /// due on seconds, and a dropped connection is found then). A candidate already due that
    /// the last poll did not dial (connected, its topic content, no room) waits for a change,
    /// not a timer: the driver never spins.
    pub fn next_timeout(&self, now: Instant) -> Option<Instant> {
        if self.topics.is_empty() {
            return None;
        }
        let mut next = now + POLL_AT_MOST;
        for c in self.candidates.values().filter(|c| !c.dialing && c.next_try > now) {
            next = next.min(c.next_try);
        }
        Some(next)
    }
}

/// Two nodes that dial each other at once end up with two connections; both keep the one the
/// node with the smaller peer id dialed. Whether node `me` keeps a connection with `peer` that
/// it dialed (`we_dialed`) or that `peer` dialed — each side reaches the same answer.
pub fn keeps(me: &PeerId, peer: &PeerId, we_dialed: bool) -> bool {
    if we_dialed {
        me < peer
    } else {
        peer < me
    }
}

/// How long to wait after `failures` failed dials in a row.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests;
