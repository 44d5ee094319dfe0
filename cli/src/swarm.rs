//! The swarm: the topics this node is in (one per drive it shares, mounts or keeps a replica
//! of), the peers discovery finds for them on the LAN and the Mainline DHT, and the connections
//! made to those peers — at most [`PER_TOPIC`] per topic and [`MAX_PEERS`] in all, with backoff
//! after failures, reconnection after a peer leaves, and a peer cache in the store so a
//! restarted node finds its peers again at once.
//!
//! One QUIC connection per peer carries every drive both nodes replicate (the endpoint opens a
//! channel per shared core), so joining a topic only decides whom to dial.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::{self, Hash};
use hyperfs_engine::store::{Batch, Store, Table};
use hyperfs_net::discovery::{self, Dht, Found, Lan, Source};
use hyperfs_net::Endpoint;

/// Connected peers a topic is content with.
pub const PER_TOPIC: usize = 8;
/// Connected peers in all.
pub const MAX_PEERS: usize = 64;
/// How often a topic short of peers asks the LAN again…
const LAN_EVERY: Duration = Duration::from_secs(2);
/// …and the DHT, while it has some peers…
const DHT_LOOKUP_EVERY: Duration = Duration::from_secs(15);
/// …or none.
const DHT_LOOKUP_ALONE: Duration = Duration::from_secs(3);
/// How often an announcement on the DHT is renewed (nodes forget them after about 30 min).
const DHT_ANNOUNCE_EVERY: Duration = Duration::from_secs(600);
/// Addresses kept per topic in the peer cache.
const CACHED: usize = 16;
/// Addresses kept as candidates at most: LAN announcements and DHT answers are anyone's words,
/// and a flood of spoofed ones must not grow memory or the dialing without bound.
const MAX_CANDIDATES: usize = 1024;

/// How this node finds peers, fixed when its network starts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Discovery {
    /// DHT bootstrap nodes (`HOST:PORT`); empty: the public ones.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    #[serde(default)]
    pub no_dht: bool,
    #[serde(default)]
    pub no_lan: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A topic joined.
struct Joined {
    /// The core whose peers we look for (a drive's db core).
    key: Hash,
    announce: bool,
    lan_only: bool,
    lan_asked: Option<Instant>,
    dht_asked: Option<Instant>,
    dht_announced: Option<Instant>,
    dht_busy: bool,
}

/// An address some discovery gave, and how dialing it went.
struct Candidate {
    source: Source,
    topics: Vec<Hash>,
    failures: u32,
    next_try: Instant,
    dialing: bool,
}

pub struct Swarm {
    endpoint: Weak<Endpoint>,
    store: Arc<dyn Store>,
    lan: Option<Lan>,
    dht: Option<Arc<Dht>>,
    topics: Mutex<HashMap<Hash, Joined>>,
    candidates: Arc<Mutex<HashMap<SocketAddr, Candidate>>>,
    /// How each address we connected to was found.
    sources: Arc<Mutex<HashMap<SocketAddr, Source>>>,
    /// DHT work under way, by topic, with its "over" flag.
    dht_running: Mutex<Vec<(Hash, Arc<Mutex<bool>>)>>,
    /// (topic, address) pairs written to the peer cache since the node started.
    cached_now: Mutex<std::collections::HashSet<(Hash, SocketAddr)>>,
}

impl Swarm {
    /// Starts discovery for the node whose endpoint is `endpoint` (peer id `peer`).
    pub fn start(endpoint: &Arc<Endpoint>, peer: Hash, store: Arc<dyn Store>, d: &Discovery) -> Arc<Swarm> {
        let port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
        let candidates: Arc<Mutex<HashMap<SocketAddr, Candidate>>> = Arc::new(Mutex::new(HashMap::new()));
        let found: Found = {
            let candidates = Arc::downgrade(&candidates);
            Arc::new(move |topic, addr, source| {
                if let Some(c) = candidates.upgrade() {
                    add(&mut lock(&c), topic, addr, source);
                }
            })
        };
        let lan = if d.no_lan {
            None
        } else {
            Lan::start(peer, port, found).map_err(|e| tracing::warn!(error = %e, "LAN discovery is off")).ok()
        };
        let dht = if d.no_dht {
            None
        } else {
            Dht::start(&d.bootstrap, port)
                .map(Arc::new)
                .map_err(|e| tracing::warn!(error = %e, "DHT discovery is off"))
                .ok()
        };
        let swarm = Arc::new(Swarm {
            endpoint: Arc::downgrade(endpoint),
            store,
            lan,
            dht,
            topics: Mutex::new(HashMap::new()),
            candidates,
            sources: Arc::new(Mutex::new(HashMap::new())),
            dht_running: Mutex::new(Vec::new()),
            cached_now: Mutex::new(std::collections::HashSet::new()),
        });
        let weak = Arc::downgrade(&swarm);
        let spawned = std::thread::Builder::new().name("hyperfs-swarm".into()).spawn(move || {
            while let Some(s) = weak.upgrade() {
                s.round();
                drop(s);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the swarm");
        }
        swarm
    }

    /// Joins the topic of core `key` (a drive's db core): peers serving it are looked for and
    /// dialed; with `announce`, this node is announced as serving it (on the DHT too unless
    /// `lan_only`).
    pub fn join(&self, key: &Hash, announce: bool, lan_only: bool) {
        let t = discovery::topic(&crypto::discovery_key(key));
        {
            let mut topics = lock(&self.topics);
            if let Some(j) = topics.get_mut(&t) {
                // Announcing once asked for stays on.
                j.announce |= announce;
                j.lan_only &= lan_only;
                return;
            }
            topics.insert(
                t,
                Joined {
                    key: *key,
                    announce,
                    lan_only,
                    lan_asked: Some(Instant::now()),
                    dht_asked: None,
                    dht_announced: None,
                    dht_busy: false,
                },
            );
        }
        for addr in self.cached(&t) {
            add(&mut lock(&self.candidates), t, addr, Source::Cache);
        }
        if let Some(lan) = &self.lan {
            lan.join(t, announce);
        }
    }

    /// Leaves the topic of core `key`: no longer announced or looked for.
    pub fn leave(&self, key: &Hash) {
        let t = discovery::topic(&crypto::discovery_key(key));
        lock(&self.topics).remove(&t);
        if let Some(lan) = &self.lan {
            lan.leave(&t);
        }
    }

    /// Keeps `addr` (given with `--peer`) among the peers of core `key`'s topic: dialed again
    /// whenever the connection drops.
    pub fn add_peer(&self, key: &Hash, addr: SocketAddr) {
        let t = discovery::topic(&crypto::discovery_key(key));
        add(&mut lock(&self.candidates), t, addr, Source::Static);
    }

    /// Records how a peer we dialed ourselves was found.
    pub fn note(&self, addr: SocketAddr, source: Source) {
        lock(&self.sources).insert(addr, source);
    }

    /// How the peer at `addr` was found (a peer that dialed us first while discovery had found
    /// it too counts as found).
    pub fn source(&self, addr: &SocketAddr) -> Source {
        if let Some(s) = lock(&self.sources).get(addr) {
            return *s;
        }
        lock(&self.candidates).get(addr).map_or(Source::Incoming, |c| c.source)
    }

    /// One round: look up topics short of peers, renew announcements, dial candidates.
    fn round(&self) {
        let Some(endpoint) = self.endpoint.upgrade() else { return };
        let peers = endpoint.peers();
        let now = Instant::now();
        let mut lan_ask = Vec::new();
        let mut dht_work = Vec::new();
        let mut short = Vec::new();
        for (t, j) in lock(&self.topics).iter_mut() {
            let connected = peers.iter().filter(|p| p.cores.contains(&j.key)).count();
            // Every peer of the topic goes into its cache, whoever dialed (a peer's address is
            // its listening socket: QUIC dials from the socket it listens on).
            for p in peers.iter().filter(|p| p.cores.contains(&j.key)) {
                if lock(&self.cached_now).insert((*t, p.address)) {
                    remember(&*self.store, t, p.address);
                }
            }
            if connected < PER_TOPIC {
                short.push(*t);
                if j.lan_asked.is_none_or(|at| now - at >= LAN_EVERY) {
                    j.lan_asked = Some(now);
                    lan_ask.push(*t);
                }
            }
            if self.dht.is_some() && !j.lan_only && !j.dht_busy {
                // A topic with no peer at all asks often; one with a few, now and then.
                let every = if connected == 0 { DHT_LOOKUP_ALONE } else { DHT_LOOKUP_EVERY };
                let lookup = connected < PER_TOPIC && j.dht_asked.is_none_or(|at| now - at >= every);
                let announce = j.announce && j.dht_announced.is_none_or(|at| now - at >= DHT_ANNOUNCE_EVERY);
                if lookup || announce {
                    j.dht_busy = true;
                    if lookup {
                        j.dht_asked = Some(now);
                    }
                    if announce {
                        j.dht_announced = Some(now);
                    }
                    dht_work.push((*t, lookup, announce));
                }
            }
        }
        if let Some(lan) = &self.lan {
            lan.query(&lan_ask);
        }
        if let Some(dht) = &self.dht {
            for (t, lookup, announce) in dht_work {
                self.dht_task(dht.clone(), t, lookup, announce);
            }
        }
        self.dial(&endpoint, &peers, &short, now);
    }

    /// DHT queries take seconds: each runs on its own thread.
    fn dht_task(&self, dht: Arc<Dht>, t: Hash, lookup: bool, announce: bool) {
        let candidates = Arc::downgrade(&self.candidates);
        let me = self.endpoint.upgrade().and_then(|e| e.local_addr().ok());
        // Set when the work is over; the next round frees the topic for more.
        let done = Arc::new(Mutex::new(false));
        let flag = done.clone();
        let spawned = std::thread::Builder::new().name("hyperfs-dht".into()).spawn(move || {
            if announce {
                if let Err(e) = dht.announce(&t) {
                    tracing::info!(error = %e, "announcing on the DHT");
                }
            }
            if lookup {
                let found = dht.lookup(&t);
                if let Some(c) = candidates.upgrade() {
                    let mut c = lock(&c);
                    for addr in found {
                        if Some(addr) != me {
                            add(&mut c, t, addr, Source::Dht);
                        }
                    }
                }
            }
            *lock(&flag) = true;
        });
        if spawned.is_err() {
            *lock(&done) = true;
        }
        lock(&self.dht_running).push((t, done));
    }

    /// Dials the candidates whose turn it is, for topics short of peers.
    fn dial(&self, endpoint: &Arc<Endpoint>, peers: &[hyperfs_net::PeerInfo], short: &[Hash], now: Instant) {
        // DHT work that ended frees its topic for the next round.
        lock(&self.dht_running).retain(|(t, done)| {
            let over = *lock(done);
            if over {
                if let Some(j) = lock(&self.topics).get_mut(t) {
                    j.dht_busy = false;
                }
            }
            !over
        });
        let connected: Vec<SocketAddr> = peers.iter().map(|p| p.address).collect();
        let mut cands = lock(&self.candidates);
        // Dials under way count against the room: a round does not start more while earlier
        // ones wait on addresses that never answer.
        let dialing = cands.values().filter(|c| c.dialing).count();
        let mut room = MAX_PEERS.saturating_sub(peers.len() + dialing);
        for (addr, c) in cands.iter_mut() {
            if room == 0 {
                break;
            }
            if c.dialing || c.next_try > now || connected.contains(addr) || !c.topics.iter().any(|t| short.contains(t))
            {
                continue;
            }
            room -= 1;
            c.dialing = true;
            let (addr, source) = (*addr, c.source);
            let endpoint = endpoint.clone();
            let candidates = Arc::downgrade(&self.candidates);
            let sources = self.sources.clone();
            let spawned = std::thread::Builder::new().name("hyperfs-dial".into()).spawn(move || {
                let result = endpoint.connect(addr);
                let Some(cands) = candidates.upgrade() else { return };
                let mut cands = lock(&cands);
                let Some(c) = cands.get_mut(&addr) else { return };
                c.dialing = false;
                match result {
                    Ok(_) => {
                        c.failures = 0;
                        c.next_try = Instant::now() + Duration::from_secs(1);
                        lock(&sources).insert(addr, source);
                        tracing::info!(%addr, via = source.name(), "connected to a peer discovery found");
                    }
                    Err(hyperfs_net::NetError::SelfDial(_)) => {
                        // Ourselves, announced back to us: never again.
                        c.next_try = Instant::now() + Duration::from_secs(86_400 * 365);
                    }
                    Err(e) => {
                        c.failures += 1;
                        let backoff = Duration::from_secs(1 << c.failures.min(6)).min(Duration::from_secs(60));
                        c.next_try = Instant::now() + backoff;
                        tracing::debug!(%addr, error = %e, ?backoff, "dialing a discovered peer");
                    }
                }
            });
            if spawned.is_err() {
                c.dialing = false;
            }
        }
    }

    /// The addresses the peer cache holds for topic `t`.
    fn cached(&self, t: &Hash) -> Vec<SocketAddr> {
        let Ok(Some(raw)) = self.store.get(Table::Meta, &cache_key(t)) else { return Vec::new() };
        let list: Vec<String> = serde_json::from_slice(&raw).unwrap_or_default();
        list.iter().filter_map(|a| a.parse().ok()).collect()
    }
}

fn cache_key(t: &Hash) -> Vec<u8> {
    [&b"peers\0"[..], &t[..]].concat()
}

/// Puts `addr` first in topic `t`'s peer cache.
fn remember(store: &dyn Store, t: &Hash, addr: SocketAddr) {
    let key = cache_key(t);
    let mut list: Vec<String> = store
        .get(Table::Meta, &key)
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default();
    let a = addr.to_string();
    list.retain(|x| *x != a);
    list.insert(0, a);
    list.truncate(CACHED);
    let mut b = Batch::default();
    b.put(Table::Meta, key, serde_json::to_vec(&list).unwrap_or_default());
    if let Err(e) = store.write(b) {
        tracing::warn!(error = %e, "writing the peer cache");
    }
}

/// Adds a candidate address for topic `t` (a better source than what was known wins).
fn add(cands: &mut HashMap<SocketAddr, Candidate>, t: Hash, addr: SocketAddr, source: Source) {
    if !cands.contains_key(&addr) && cands.len() >= MAX_CANDIDATES {
        // Full: the address that failed most (never a static peer or one being dialed) makes
        // room, else the newcomer is not kept.
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
    let c = cands.entry(addr).or_insert_with(|| Candidate {
        source,
        topics: Vec::new(),
        failures: 0,
        next_try: Instant::now(),
        dialing: false,
    });
    if !c.topics.contains(&t) {
        c.topics.push(t);
    }
    if c.source == Source::Cache && source != Source::Cache || source == Source::Static {
        c.source = source;
    }
    // Heard of again: a failed address gets another chance soon.
    if source != Source::Cache && c.failures > 0 {
        c.next_try = c.next_try.min(Instant::now() + Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spoofed announcements cannot grow the candidates past the cap: a newcomer takes the place
    /// of an address that failed, is dropped when none has, and a static peer always gets in.
    #[test]
    fn candidates_stay_under_the_cap() {
        let t = [1u8; 32];
        let mut cands = HashMap::new();
        let addr = |i: u32| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
        for i in 0..(2 * MAX_CANDIDATES as u32) {
            add(&mut cands, t, addr(i), Source::Lan);
        }
        assert_eq!(cands.len(), MAX_CANDIDATES);
        assert!(!cands.contains_key(&addr(MAX_CANDIDATES as u32)), "no room: the newcomer is not kept");
        cands.get_mut(&addr(5)).expect("kept").failures = 3;
        add(&mut cands, t, addr(9_999_999), Source::Dht);
        assert!(cands.contains_key(&addr(9_999_999)) && !cands.contains_key(&addr(5)), "the failed one made room");
        add(&mut cands, t, addr(8_888_888), Source::Static);
        assert!(cands.contains_key(&addr(8_888_888)), "a static peer gets in");
        assert_eq!(cands.len(), MAX_CANDIDATES);
    }
}
