//! The node's swarm: the topics it is in (one per drive it shares, mounts or keeps a replica
//! of), discovery on the LAN and the Mainline DHT, and the connections made to the peers they
//! find. The decisions — whom to dial when, within which limits, with what backoff — are
//! `hyperfs_net::swarm`'s, a state machine with time as input; this module carries them out
//! (dials, DHT queries on their own threads, LAN queries, the peer cache in the store, so a
//! restarted node finds its peers again at once) and sleeps until the next is due or something
//! happens.
//!
//! One QUIC connection per peer carries every drive both nodes replicate (the endpoint opens a
//! channel per shared core), so joining a topic only decides whom to dial.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::{self, CoreKey, Hash};
use hyperfs_engine::store::{Batch, Store, Table};
use hyperfs_net::discovery::{self, Dht, Found, Lan, Source};
use hyperfs_net::swarm::{Action, Connected, Dialed, Mechanisms, Swarm as State};
use hyperfs_net::{Endpoint, PeerId};

/// Addresses kept per topic in the peer cache.
const CACHED: usize = 16;

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
    /// HyperDHT bootstrap nodes (`HOST:PORT`); empty: the public ones.
    #[serde(default)]
    pub hyperdht_bootstrap: Vec<String>,
    #[serde(default)]
    pub no_hyperdht: bool,
    /// Whether this node relays for others (on HyperDHT).
    #[serde(default)]
    pub relay: bool,
    /// Blind relays to try first (hex keys).
    #[serde(default)]
    pub relay_through: Vec<String>,
    /// Where this node is a persistent HyperDHT node (UDP `ADDR:PORT`), if it is one.
    #[serde(default)]
    pub hyperdht_node: Option<String>,
}

impl Discovery {
    /// Whether HyperDHT is used: unless turned off.
    pub fn hyperdht(&self) -> bool {
        !self.no_hyperdht
    }
}

/// How often a joined topic is looked up on HyperDHT (the first rounds sooner), and announced.
const HYPERDHT_LOOKUP: Duration = Duration::from_secs(60);
const HYPERDHT_FIRST_LOOKUPS: Duration = Duration::from_secs(3);
const HYPERDHT_ANNOUNCE: Duration = Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The swarm's state and what wakes its thread.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut lock(&self.state));
        self.wake.notify_all();
        out
    }
}

pub struct Swarm {
    endpoint: Weak<Endpoint>,
    store: Arc<dyn Store>,
    lan: Option<Lan>,
    dht: Option<Arc<Dht>>,
    shared: Arc<Shared>,
    /// Topics (discovery keys) joined on HyperDHT, when it is on; each has a thread that
    /// announces and looks up while it is here.
    hyperdht: Option<Arc<Mutex<std::collections::HashSet<[u8; 32]>>>>,
}

impl Swarm {
    /// Starts discovery for the node whose endpoint is `endpoint` (peer id `peer`).
    pub fn start(endpoint: &Arc<Endpoint>, peer: PeerId, store: Arc<dyn Store>, d: &Discovery) -> Arc<Swarm> {
        let port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new() });
        let found: Found = {
            let shared = Arc::downgrade(&shared);
            Arc::new(move |topic, addr, source| {
                if let Some(s) = shared.upgrade() {
                    s.with(|st| st.add(topic, addr, source, Instant::now()));
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
        *lock(&shared.state) = State::new(Mechanisms { lan: lan.is_some(), dht: dht.is_some() });
        let hyperdht = d.hyperdht().then(Arc::default);
        let swarm = Arc::new(Swarm { endpoint: Arc::downgrade(endpoint), store, lan, dht, shared, hyperdht });
        let weak = Arc::downgrade(&swarm);
        let spawned = std::thread::Builder::new().name("hyperfs-swarm".into()).spawn(move || {
            while let Some(s) = weak.upgrade() {
                let Some(endpoint) = s.endpoint.upgrade() else { return };
                let peers: Vec<Connected> =
                    endpoint.peers().into_iter().map(|p| Connected { address: p.address, cores: p.cores }).collect();
                let now = Instant::now();
                let actions = lock(&s.shared.state).poll(now, &peers);
                for a in actions {
                    s.act(&endpoint, a);
                }
                drop(endpoint);
                // Until the next thing falls due, or a join, a discovery or a dial's end wakes
                // it; with no topic joined, until one is.
                let shared = s.shared.clone();
                drop(s);
                let state = lock(&shared.state);
                let wait = state.next_timeout(Instant::now()).map(|t| t.saturating_duration_since(Instant::now()));
                match wait {
                    Some(w) => drop(shared.wake.wait_timeout(state, w.max(Duration::from_millis(10)))),
                    None => drop(shared.wake.wait(state)),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the swarm");
        }
        swarm
    }

    /// Carries out one of the state machine's actions.
    fn act(&self, endpoint: &Arc<Endpoint>, action: Action) {
        match action {
            Action::AskLan(topics) => {
                if let Some(lan) = &self.lan {
                    lan.query(&topics);
                }
            }
            Action::Remember { topic, address } => remember(&*self.store, &topic, address),
            Action::Dht { topic, lookup, announce } => {
                let Some(dht) = self.dht.clone() else { return };
                let shared = Arc::downgrade(&self.shared);
                let me = endpoint.local_addr().ok();
                // DHT queries take seconds: each runs on its own thread.
                let spawned = std::thread::Builder::new().name("hyperfs-dht".into()).spawn(move || {
                    if announce {
                        if let Err(e) = dht.announce(&topic) {
                            tracing::info!(error = %e, "announcing on the DHT");
                        }
                    }
                    let found: Vec<SocketAddr> = if lookup {
                        dht.lookup(&topic).into_iter().filter(|a| Some(*a) != me).collect()
                    } else {
                        Vec::new()
                    };
                    if let Some(s) = shared.upgrade() {
                        s.with(|st| st.dht_done(topic, &found, Instant::now()));
                    }
                });
                if spawned.is_err() {
                    self.shared.with(|st| st.dht_done(topic, &[], Instant::now()));
                }
            }
            Action::Dial { address, source } => {
                let endpoint = endpoint.clone();
                let shared = Arc::downgrade(&self.shared);
                let spawned = std::thread::Builder::new().name("hyperfs-dial".into()).spawn(move || {
                    let how = match endpoint.connect(address) {
                        Ok(id) => {
                            let peers = endpoint.peers();
                            let here = peers.iter().any(|p| p.id == id && p.address == address);
                            if !here && peers.iter().any(|p| p.id == id) {
                                tracing::debug!(%address, "a peer discovery found is connected at another address");
                                Dialed::Elsewhere
                            } else {
                                tracing::info!(%address, via = source.name(), "connected to a peer discovery found");
                                Dialed::Connected
                            }
                        }
                        Err(hyperfs_net::NetError::SelfDial(_)) => Dialed::Ourselves,
                        Err(e) => {
                            tracing::debug!(%address, error = %e, "dialing a discovered peer");
                            Dialed::Failed
                        }
                    };
                    if let Some(s) = shared.upgrade() {
                        s.with(|st| st.dialed(address, how, Instant::now()));
                    }
                });
                if spawned.is_err() {
                    self.shared.with(|st| st.dialed(address, Dialed::Failed, Instant::now()));
                }
            }
        }
    }

    /// Joins the topic of core `key` (a drive's db core): peers serving it are looked for and
    /// dialed; with `announce`, this node is announced as serving it (on the DHT too unless
    /// `lan_only`).
    pub fn join(&self, key: &CoreKey, announce: bool, lan_only: bool) {
        let t = discovery::topic(&crypto::discovery_key(key));
        let cached = self.cached(&t);
        let new = self.shared.with(|st| {
            let new = !st.joined(&t);
            st.join(t, *key, announce, lan_only, &cached, Instant::now());
            new
        });
        if let (true, Some(lan)) = (new, &self.lan) {
            lan.join(t, announce);
        }
        if let Some(joined) = &self.hyperdht {
            self.join_hyperdht(joined, crypto::discovery_key(key).0, announce && !lan_only);
        }
    }

    /// Joins a topic on HyperDHT as Hyperswarm does (the topic is the drive's discovery key):
    /// announced when `announce`, looked up, and the peers found dialed by their keys.
    fn join_hyperdht(&self, joined: &Arc<Mutex<std::collections::HashSet<[u8; 32]>>>, topic: [u8; 32], announce: bool) {
        if !lock(joined).insert(topic) {
            return;
        }
        let (endpoint, joined) = (self.endpoint.clone(), joined.clone());
        let spawned = std::thread::Builder::new().name("hyperfs-hyperdht".into()).spawn(move || {
            let started = Instant::now();
            let mut announced: Option<Instant> = None;
            while lock(&joined).contains(&topic) {
                let Some(endpoint) = endpoint.upgrade() else { return };
                if announce && announced.is_none_or(|t| t.elapsed() >= HYPERDHT_ANNOUNCE) {
                    let took = endpoint.dht_announce(topic);
                    tracing::info!(took, "announced on HyperDHT");
                    announced = Some(Instant::now());
                }
                let connected: Vec<[u8; 32]> = endpoint.peers().iter().map(|p| p.id.0).collect();
                for key in endpoint.dht_lookup(topic) {
                    if connected.contains(&key) {
                        continue;
                    }
                    match endpoint.connect_dht_path(key) {
                        Ok((_, path)) => {
                            let path = path.map_or("already", |p| p.name());
                            tracing::info!(peer = %hex::encode(&key[..6]), path, "connected to a peer HyperDHT found")
                        }
                        Err(e) => tracing::info!(error = %e, "dialing a peer HyperDHT found"),
                    }
                }
                drop(endpoint);
                let pause =
                    if started.elapsed() < Duration::from_secs(30) { HYPERDHT_FIRST_LOOKUPS } else { HYPERDHT_LOOKUP };
                std::thread::sleep(pause);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "joining a topic on HyperDHT");
        }
    }

    /// Leaves the topic of core `key`: no longer announced or looked for.
    pub fn leave(&self, key: &CoreKey) {
        if let Some(joined) = &self.hyperdht {
            let topic = crypto::discovery_key(key).0;
            if lock(joined).remove(&topic) {
                // Taken back from HyperDHT, so peers stop finding this node under it (a walk:
                // on a thread of its own).
                let endpoint = self.endpoint.clone();
                let spawned = std::thread::Builder::new().name("hyperfs-hyperdht".into()).spawn(move || {
                    if let Some(e) = endpoint.upgrade() {
                        let took = e.dht_unannounce(topic);
                        tracing::info!(took, "unannounced on HyperDHT");
                    }
                });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "unannouncing on HyperDHT");
                }
            }
        }
        let t = discovery::topic(&crypto::discovery_key(key));
        self.shared.with(|st| st.leave(&t));
        if let Some(lan) = &self.lan {
            lan.leave(&t);
        }
    }

    /// Keeps `addr` (given with `--peer`) among the peers of core `key`'s topic: dialed again
    /// whenever the connection drops.
    pub fn add_peer(&self, key: &CoreKey, addr: SocketAddr) {
        let t = discovery::topic(&crypto::discovery_key(key));
        self.shared.with(|st| st.add(t, addr, Source::Static, Instant::now()));
    }

    /// Records how a peer we dialed ourselves was found.
    pub fn note(&self, addr: SocketAddr, source: Source) {
        lock(&self.shared.state).note(addr, source);
    }

    /// How the peer at `addr` was found.
    pub fn source(&self, addr: &SocketAddr) -> Source {
        lock(&self.shared.state).source(addr)
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
