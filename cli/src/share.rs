//! The node's side of the network: its endpoint (started on first need, on the port it used
//! before), the cores it offers — its own drives that are shared, and the replicas it keeps —
//! and how peers hear of new versions and replica drives take in what their cores stored.
//!
//! A drive of ours is served from its published snapshots: a peer's request never waits on a
//! write in progress, and never holds up the writer. New versions are told to peers when the
//! drive publishes them ([`SharedDrive::on_change`]).
//!
//! A replica's cores have two instances on the store: the network's, to which verified proofs
//! are applied, and the drive's, which readers use and which takes in what the network stored
//! ([`Drive::refresh`](hyperfs_engine::Drive::refresh)) when the network says so — no polling.
//! Readers therefore never hold a lock the network waits for.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyperfs_engine::crypto::CoreKey;
use hyperfs_engine::{Hypercore, SharedDrive};
use hyperfs_net::{Endpoint, Identity, Shared, SharedCore, Transport};

/// After a replica's drive took in what its cores stored, the next refresh waits this long at
/// least, taking in everything that arrived meanwhile at once (a clone stores thousands of
/// blocks a second; a new version alone is taken in at once).
const REFRESH_GAP: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One of the two cores of a drive this node writes, served from the drive's published
/// snapshot: peers never wait on the writer, nor the writer on them.
struct DriveCore {
    drive: Arc<SharedDrive>,
    blobs: bool,
    key: CoreKey,
}

impl SharedCore for DriveCore {
    fn key(&self) -> CoreKey {
        self.key
    }
    fn read(&self, f: &mut dyn FnMut(&Hypercore)) {
        let d = self.drive.snapshot();
        f(if self.blobs { d.blobs() } else { d.db().core() });
    }
    /// Peers' messages are handled on the snapshot (`read`); what a session would store goes
    /// to a frozen copy of it, which refuses every change but records a conflict a peer's proof
    /// showed (the writer's instance shares the cell and stops writing) — only the owner changes
    /// an own drive.
    fn write(&self, f: &mut dyn FnMut(&mut Hypercore)) {
        let d = self.drive.snapshot();
        let mut core = if self.blobs { d.blobs() } else { d.db().core() }.frozen_copy();
        f(&mut core);
    }
}

/// The network's instance of a replica core: it downloads everything (a clone, a seed) or what
/// readers ask for (a sparse replica).
pub struct ReplicaCore {
    pub(crate) core: Mutex<Hypercore>,
    pub(crate) key: CoreKey,
    pub(crate) full: std::sync::atomic::AtomicBool,
    /// Told when a proof changed the core (a new length, a stored block): the refresher wakes.
    changed: std::sync::mpsc::Sender<()>,
}

impl ReplicaCore {
    /// Block `index` if the network has stored it.
    fn get(&self, index: u64) -> Option<Vec<u8>> {
        let c = lock(&self.core);
        c.has(index).then(|| c.get(index).ok()).flatten()
    }

    /// (fork, length, local blocks).
    pub fn state(&self) -> CoreState {
        let c = lock(&self.core);
        (c.fork(), c.length(), c.local_blocks())
    }
    pub fn has_manifest(&self) -> bool {
        lock(&self.core).manifest().is_some()
    }
}

impl SharedCore for ReplicaCore {
    fn key(&self) -> CoreKey {
        self.key
    }
    fn read(&self, f: &mut dyn FnMut(&Hypercore)) {
        f(&lock(&self.core));
    }
    fn write(&self, f: &mut dyn FnMut(&mut Hypercore)) {
        f(&mut lock(&self.core));
    }
    fn download_all(&self) -> bool {
        self.full.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn stored(&self) {
        let _ = self.changed.send(());
    }
}

/// A core's (fork, length, local blocks), or a drive's (fork, db length, blobs length).
type CoreState = (u64, u64, u64);

/// A replica drive, the network's instances of its cores, and their state last taken in.
type Followed = (Arc<SharedDrive>, Vec<Arc<ReplicaCore>>, Vec<CoreState>);
/// How long a reader waits for the network to give a block or a seek…
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// …asking again this often while no connected peer can.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The cores offered to peers; the network's tasks read this, so nothing that waits on a drive
/// lock ever holds it.
struct Offer(Mutex<Vec<Arc<dyn SharedCore>>>);

impl Shared for Offer {
    fn cores(&self) -> Vec<Arc<dyn SharedCore>> {
        lock(&self.0).clone()
    }
}

/// The node's network.
pub struct Net {
    pub endpoint: Arc<Endpoint>,
    /// Topics, discovery and the connections it makes.
    pub swarm: Arc<crate::swarm::Swarm>,
    offer: Arc<Offer>,
    /// Shared drives of ours, with the listener that tells peers of their versions.
    own: Mutex<Vec<(Arc<SharedDrive>, u64)>>,
    /// Replica drives the refresher keeps up with their cores.
    replicas: Mutex<Vec<Followed>>,
    /// The network's instances of replica cores, by key.
    slots: Mutex<Vec<Arc<ReplicaCore>>>,
    /// What replica cores tell the refresher.
    changed: std::sync::mpsc::Sender<()>,
    /// The bounded cache of sparse replicas' blocks.
    pub cache: crate::cache::Cache,
    /// Where the network accepts peers on the JS wire (`--tcp`, `--udx`).
    wire: Mutex<std::collections::HashMap<Transport, SocketAddr>>,
    store: Arc<dyn hyperfs_engine::store::Store>,
}

impl Net {
    /// Starts the endpoint of data directory `dir`: on `listen`, else the address it used last
    /// time, else any free port; remembers the address. Discovery runs as `discovery` says.
    pub fn start(
        dir: &Path,
        listen: Option<SocketAddr>,
        discovery: &crate::swarm::Discovery,
        store: Arc<dyn hyperfs_engine::store::Store>,
    ) -> Result<Arc<Net>> {
        let identity = Identity::load_or_create(&dir.join("identity.key"))?;
        let remembered = dir.join("listen.addr");
        let last = std::fs::read_to_string(&remembered).ok().and_then(|s| s.trim().parse().ok());
        let offer = Arc::new(Offer(Mutex::new(Vec::new())));
        let start = |addr: SocketAddr| Endpoint::start(&identity, addr, offer.clone());
        let endpoint = match (listen, last) {
            (Some(a), _) => start(a).with_context(|| format!("listening on {a}"))?,
            (None, Some(a)) => start(a).or_else(|_| start(SocketAddr::from(([0, 0, 0, 0], 0))))?,
            (None, None) => start(SocketAddr::from(([0, 0, 0, 0], 0)))?,
        };
        let addr = endpoint.local_addr()?;
        crate::node::write_state(dir, "listen.addr", format!("{addr}\n").as_bytes())
            .with_context(|| format!("writing {}", remembered.display()))?;
        let addr6 = endpoint.local_addr6().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, addr6, peer = %hex::encode(identity.peer_id()), "network started");
        // Between hyperfs nodes TCP is the faster transport: the node accepts it on its QUIC
        // port number and dials it first (HYPERFS_TRANSPORT=quic keeps to QUIC, for comparing).
        if std::env::var("HYPERFS_TRANSPORT").as_deref() != Ok("quic") {
            endpoint.prefer_tcp(true);
            if let Err(e) = endpoint.listen_tcp(addr) {
                tracing::warn!(error = %e, "TCP on the node's port: peers reach it over QUIC only");
            }
            if let Some(addr6) = endpoint.local_addr6() {
                if let Err(e) = endpoint.listen_tcp(addr6) {
                    tracing::warn!(error = %e, "TCP on the node's IPv6 port: IPv6 peers reach it over QUIC only");
                }
            }
        }
        let endpoint = Arc::new(endpoint);
        let mut through = Vec::new();
        for k in &discovery.relay_through {
            let key: [u8; 32] = hex::decode(k)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow!("--relay-through {k:?}: a relay's key is 64 hex digits"))?;
            through.push(key);
        }
        if discovery.hyperdht() {
            let node = match &discovery.hyperdht_node {
                Some(a) => match resolve(a)? {
                    SocketAddr::V4(a) => Some(a),
                    SocketAddr::V6(a) => anyhow::bail!("--hyperdht-node {a}: HyperDHT speaks IPv4"),
                },
                None => None,
            };
            if let Some(a) = node {
                // HyperDHT runs on the UDX socket: bound where the node is to be reached.
                endpoint.listen_udx(SocketAddr::V4(a)).with_context(|| format!("--hyperdht-node {a}"))?;
            }
            start_hyperdht(&endpoint, &discovery.hyperdht_bootstrap, discovery.relay, node)?;
            endpoint.relay_through(through);
        } else if discovery.relay || !through.is_empty() || discovery.hyperdht_node.is_some() {
            anyhow::bail!("--relay, --relay-through and --hyperdht-node need HyperDHT (it is off: --no-hyperdht)");
        }
        let swarm = crate::swarm::Swarm::start(&endpoint, identity.peer_id(), store.clone(), discovery);
        let (changed, wake) = std::sync::mpsc::channel();
        let net = Arc::new(Net {
            endpoint,
            swarm,
            offer,
            own: Mutex::new(Vec::new()),
            replicas: Mutex::new(Vec::new()),
            slots: Mutex::new(Vec::new()),
            changed,
            cache: crate::cache::Cache::new(dir),
            wire: Mutex::new(std::collections::HashMap::new()),
            store,
        });
        let refresher = Arc::downgrade(&net);
        // Sleeps until a replica core changes: an idle node does nothing here.
        std::thread::Builder::new().name("hyperfs-refresh".into()).spawn(move || {
            while wake.recv().is_ok() {
                while wake.try_recv().is_ok() {}
                let Some(net) = refresher.upgrade() else { return };
                net.refresh_replicas();
                drop(net);
                std::thread::sleep(REFRESH_GAP);
            }
        })?;
        Ok(net)
    }

    /// Offers a drive this node writes (or has whole) to every peer, and joins its topic
    /// (announced unless `announce` is false; on the LAN only with `lan_only`).
    pub fn share(self: &Arc<Self>, drive: &Arc<SharedDrive>, announce: bool, lan_only: bool) {
        let (db, blobs) = (*drive.key(), *drive.snapshot().blobs().key());
        {
            let mut cores = lock(&self.offer.0);
            if cores.iter().any(|c| c.key() == db) {
                return;
            }
            cores.push(Arc::new(DriveCore { drive: drive.clone(), blobs: false, key: db }));
            cores.push(Arc::new(DriveCore { drive: drive.clone(), blobs: true, key: blobs }));
        }
        // Each version the drive publishes is told to peers then (a few channel sends).
        let endpoint = Arc::downgrade(&self.endpoint);
        let listener = drive.on_change(Arc::new(move |_| {
            if let Some(e) = endpoint.upgrade() {
                e.changed(&db);
                e.changed(&blobs);
            }
        }));
        lock(&self.own).push((drive.clone(), listener));
        if drive.snapshot().fetcher().is_none() {
            // Blocks `prune` cleared here are read from peers that still hold them.
            drive.write().set_fetch(Arc::new(OwnFetch { net: Arc::downgrade(self) }));
        }
        self.endpoint.refresh();
        self.swarm.join(&db, announce, lan_only);
    }

    /// Stops offering a drive of ours; returns whether it was shared.
    pub fn unshare(&self, drive: &Arc<SharedDrive>) -> bool {
        let keys = [*drive.key(), *drive.snapshot().blobs().key()];
        {
            let mut cores = lock(&self.offer.0);
            if !cores.iter().any(|c| c.key() == keys[0]) {
                return false;
            }
            cores.retain(|c| !keys.contains(&c.key()));
        }
        lock(&self.own).retain(|(d, listener)| {
            let ours = Arc::ptr_eq(d, drive);
            if ours {
                d.off(*listener);
            }
            !ours
        });
        for k in &keys {
            self.endpoint.close(k);
        }
        self.swarm.leave(&keys[0]);
        true
    }

    /// Offers a replica core through the network's own instance of it, downloading everything
    /// when `full`, else what readers ask for.
    pub fn add_replica(&self, core: Hypercore, full: bool) -> Arc<ReplicaCore> {
        let key = *core.key();
        if let Some(slot) = self.slot(&key) {
            if full {
                self.set_full(&key);
            }
            return slot;
        }
        let slot =
            Arc::new(ReplicaCore { core: Mutex::new(core), key, full: full.into(), changed: self.changed.clone() });
        lock(&self.slots).push(slot.clone());
        lock(&self.offer.0).push(slot.clone());
        self.endpoint.refresh();
        slot
    }

    /// Stops replicating the drive of cores `db` and `blobs` (before its removal from the
    /// store): its channels close, its topic is left and nothing of it is offered or followed.
    pub fn drop_replica(&self, db: &CoreKey, blobs: &CoreKey) {
        let keys = [*db, *blobs];
        lock(&self.slots).retain(|c| !keys.contains(&c.key));
        lock(&self.offer.0).retain(|c| !keys.contains(&c.key()));
        lock(&self.replicas).retain(|f| f.0.key() != db);
        for k in &keys {
            self.endpoint.close(k);
        }
        self.swarm.leave(db);
    }

    /// A sparse replica core becomes a full one: everything it lacks is downloaded from now on.
    pub fn set_full(&self, key: &CoreKey) {
        if self.slot(key).is_some_and(|s| !s.full.swap(true, std::sync::atomic::Ordering::SeqCst)) {
            self.endpoint.refresh();
        }
    }

    /// The network's instances of the cores `db` and `blobs`, if it replicates them.
    pub fn replica_cores(&self, db: &CoreKey, blobs: &CoreKey) -> (Option<Arc<ReplicaCore>>, Option<Arc<ReplicaCore>>) {
        (self.slot(db), self.slot(blobs))
    }

    /// Sets the cache's limit (remembered); what it holds beyond goes at once.
    pub fn set_cache_limit(&self, bytes: u64) -> Result<()> {
        self.cache.set_limit(bytes)?;
        let _ = self.changed.send(());
        Ok(())
    }

    /// The network's instances of the cores of sparse replicas: what the cache holds.
    pub fn sparse_cores(&self) -> Vec<Arc<ReplicaCore>> {
        lock(&self.slots).iter().filter(|c| !c.full.load(std::sync::atomic::Ordering::SeqCst)).cloned().collect()
    }

    /// The network's instance of replica core `key`.
    fn slot(&self, key: &CoreKey) -> Option<Arc<ReplicaCore>> {
        lock(&self.slots).iter().find(|c| c.key == *key).cloned()
    }

    /// Shows `drive` what its replica cores download from now on.
    pub fn follow(&self, drive: Arc<SharedDrive>, cores: Vec<Arc<ReplicaCore>>) {
        let states = cores.iter().map(|c| c.state()).collect();
        lock(&self.replicas).push((drive, cores, states));
    }

    /// Connects to each of `peers` (`tcp://HOST:PORT`: over TCP with the JS stack's wire).
    pub fn connect(&self, peers: &[String]) -> Result<()> {
        for p in peers {
            let addr = self.peer_address(p)?;
            self.endpoint.connect(addr).map_err(|e| anyhow!("{p}: {e}"))?;
            self.swarm.note(addr, hyperfs_net::discovery::Source::Static);
        }
        Ok(())
    }

    /// The address of peer `p` as given (HOST:PORT; tcp://HOST:PORT or udx://HOST:PORT, which
    /// the endpoint then dials with the JS stack's wire over TCP or UDX).
    pub fn peer_address(&self, p: &str) -> Result<SocketAddr> {
        for (scheme, transport) in [("tcp://", Transport::Tcp), ("udx://", Transport::Udx)] {
            if let Some(rest) = p.strip_prefix(scheme) {
                let addr = resolve(rest)?;
                self.endpoint.dial_as(addr, transport);
                return Ok(addr);
            }
        }
        if p.contains("://") {
            anyhow::bail!("{p:?}: a peer is HOST:PORT, tcp://HOST:PORT or udx://HOST:PORT");
        }
        resolve(p)
    }

    /// Also accepts peers on the JS stack's wire over `transport` (TCP or UDX) on `addr`
    /// (HOST:PORT), remembered in `dir` for the next start. A network that listens so already
    /// keeps its address, and says so when another is asked.
    pub fn listen_wire(&self, dir: &Path, transport: Transport, addr: &str) -> Result<SocketAddr> {
        let want = resolve(addr)?;
        let name = transport.name();
        let mut listening = lock(&self.wire);
        if let Some(&runs) = listening.get(&transport) {
            let same = (want.port() == 0 || want.port() == runs.port())
                && (want.ip() == runs.ip() || runs.ip().is_unspecified());
            if !same {
                anyhow::bail!("the node's network already accepts {name} peers on {runs}; --{name} {want} takes effect when it starts: run `hyperfs stop`, then this command again");
            }
            return Ok(runs);
        }
        let bound = match transport {
            Transport::Udx => self.endpoint.listen_udx(want),
            _ => self.endpoint.listen_tcp(want),
        }
        .with_context(|| format!("--{name} {addr}"))?;
        crate::node::write_state(dir, &format!("{name}.addr"), format!("{bound}\n").as_bytes())?;
        tracing::info!(%bound, transport = name, "accepting peers on the JS wire");
        listening.insert(transport, bound);
        Ok(bound)
    }

    /// Where JS peers dial this node over `transport`, when it listens so.
    pub fn wire_addr(&self, transport: Transport) -> Option<SocketAddr> {
        lock(&self.wire).get(&transport).copied()
    }

    /// Connects to each of `peers` for drive `key`, and again whenever the connection drops.
    pub fn connect_for(&self, key: &CoreKey, peers: &[String]) -> Result<()> {
        self.connect(peers)?;
        for p in peers {
            self.swarm.add_peer(key, self.peer_address(p)?);
        }
        Ok(())
    }

    /// Replica drives take in what their cores stored since last time (new versions, blocks),
    /// and publish it. Only the refresh waits for the drive's owner; readers go on reading the
    /// snapshot before.
    fn refresh_replicas(&self) {
        // The cache first: what it evicts is then taken in with the rest.
        self.cache.enforce(&self.sparse_cores(), &*self.store);
        for (drive, cores, seen) in lock(&self.replicas).iter_mut() {
            let now: Vec<CoreState> = cores.iter().map(|c| c.state()).collect();
            if now == *seen {
                continue;
            }
            match drive.write().refresh() {
                Ok(_) => *seen = now,
                Err(e) => tracing::warn!(error = %e, "refreshing a replica"),
            }
        }
    }
}

/// Reads of a replica drive that lack a block: the network's instance of the core has it
/// already, or the endpoint asks connected peers and the verified answer lands there. Holds the
/// network weakly (the network holds the drives that hold this).
pub struct NetFetch {
    net: std::sync::Weak<Net>,
}

impl NetFetch {
    pub fn new(net: &Arc<Net>) -> Arc<NetFetch> {
        Arc::new(NetFetch { net: Arc::downgrade(net) })
    }

    fn parts(&self, core: &CoreKey) -> Result<(Arc<Net>, Arc<ReplicaCore>), hyperfs_engine::Error> {
        let stopped = || hyperfs_engine::Error::InvalidRequest("the network has stopped".into());
        let net = self.net.upgrade().ok_or_else(stopped)?;
        let slot =
            net.slot(core).ok_or_else(|| hyperfs_engine::Error::InvalidRequest("not a replicated core".into()))?;
        Ok((net, slot))
    }
}

impl NetFetch {
    /// Before a sparse replica asks for a window of blocks: the cache makes room first, in the
    /// reader's thread. The refresher evicts as blocks arrive, but a busy machine starved it
    /// while a sequential reader's windows kept coming (a 64 MiB cache's data directory reached
    /// 151 MiB with a compiler running beside); here the reader waits for the room it fills.
    fn make_room(net: &Net, slot: &ReplicaCore) {
        if !slot.full.load(std::sync::atomic::Ordering::Relaxed) {
            net.cache.enforce(&net.sparse_cores(), &*net.store);
        }
    }

    /// Those of `indices` the network's instance of `core` lacks, with the network and that
    /// instance (`None`: none, or no network).
    fn missing(&self, core: &CoreKey, indices: &[u64]) -> Option<(Arc<Net>, Arc<ReplicaCore>, Vec<u64>)> {
        let (net, slot) = self.parts(core).ok()?;
        let missing: Vec<u64> = {
            let c = lock(&slot.core);
            indices.iter().copied().filter(|&i| !c.has(i)).collect()
        };
        (!missing.is_empty()).then_some((net, slot, missing))
    }
}

impl hyperfs_engine::fetch::Fetch for NetFetch {
    fn fetch(&self, core: &CoreKey, index: u64) -> hyperfs_engine::Result<Vec<u8>> {
        let (net, slot) = self.parts(core)?;
        // Peers come and go: until the deadline, ask whoever is connected now.
        let deadline = std::time::Instant::now() + FETCH_TIMEOUT;
        loop {
            if let Some(b) = slot.get(index) {
                return Ok(b);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(hyperfs_engine::Error::MissingBlock { index });
            }
            if !net.endpoint.fetch(core, index, left) {
                std::thread::sleep(RETRY_EVERY.min(left));
            }
        }
    }

    fn prefetch(&self, core: &CoreKey, indices: &[u64]) {
        if let Some((net, slot, missing)) = self.missing(core, indices) {
            NetFetch::make_room(&net, &slot);
            net.endpoint.fetch_many(core, &missing, FETCH_TIMEOUT);
        }
    }

    fn hint(&self, core: &CoreKey, indices: &[u64]) {
        if let Some((net, slot, missing)) = self.missing(core, indices) {
            NetFetch::make_room(&net, &slot);
            net.endpoint.fetch_later(core, &missing);
        }
    }

    fn used(&self, core: &CoreKey, index: u64) {
        if let Ok((net, slot)) = self.parts(core) {
            if !slot.full.load(std::sync::atomic::Ordering::Relaxed) {
                net.cache.touch(core, index);
            }
        }
    }

    fn seek(&self, core: &CoreKey, bytes: u64) -> hyperfs_engine::Result<(u64, u64)> {
        let (net, slot) = self.parts(core)?;
        // A byte at a node boundary takes a second round; peers come and go until the deadline.
        let deadline = std::time::Instant::now() + FETCH_TIMEOUT;
        for _ in 0..64 {
            let pending = lock(&slot.core).seek_request(bytes)?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if pending.is_none() || left.is_zero() {
                break;
            }
            if !net.endpoint.seek(core, bytes, left) {
                std::thread::sleep(RETRY_EVERY.min(left));
            }
        }
        let found = lock(&slot.core).seek(bytes);
        found
    }
}

/// The [`Fetch`](hyperfs_engine::fetch::Fetch) of a drive this node writes: a block `prune`
/// cleared here (or a power cut took) is read from a connected peer that still holds it,
/// verified against the drive's own tree and handed to the reader without being stored — the
/// owner alone changes an own drive, and the space stays given back.
pub struct OwnFetch {
    net: std::sync::Weak<Net>,
}

impl hyperfs_engine::fetch::Fetch for OwnFetch {
    fn fetch(&self, core: &CoreKey, index: u64) -> hyperfs_engine::Result<Vec<u8>> {
        let net = self.net.upgrade().ok_or(hyperfs_engine::Error::MissingBlock { index })?;
        net.endpoint.fetch_bytes(core, index, FETCH_TIMEOUT).ok_or(hyperfs_engine::Error::MissingBlock { index })
    }
}

/// `HOST:PORT` to a socket address.
/// How often a relay announces itself on HyperDHT.
const RELAY_ANNOUNCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Starts HyperDHT on `endpoint` through `bootstrap`, and registers the node there in the
/// background (so peers reach it by its key); with `relay`, it relays for others and announces
/// so every five minutes.
/// Starts HyperDHT through `bootstrap` (else the public nodes); relays for others with
/// `relay`; is a persistent node at `node` when given (it is not its own bootstrap node).
fn start_hyperdht(
    endpoint: &Arc<Endpoint>,
    bootstrap: &[String],
    relay: bool,
    node: Option<std::net::SocketAddrV4>,
) -> Result<()> {
    let public: Vec<String> = hyperfs_net::dht::BOOTSTRAP.iter().map(|b| b.to_string()).collect();
    let bootstrap = if bootstrap.is_empty() { &public[..] } else { bootstrap };
    let mut nodes = Vec::new();
    for b in bootstrap {
        match resolve(b)? {
            SocketAddr::V4(a) if Some(a) == node => {}
            SocketAddr::V4(a) => nodes.push(a),
            SocketAddr::V6(a) => anyhow::bail!("--hyperdht-bootstrap {a}: HyperDHT speaks IPv4"),
        }
    }
    endpoint.start_dht(nodes).context("starting HyperDHT")?;
    if let Some(a) = node {
        let public = (!a.ip().is_unspecified()).then_some(a);
        endpoint.serve_dht_node(public).context("being a HyperDHT node")?;
    }
    if relay {
        endpoint.serve_relay().context("relaying")?;
    }
    let endpoint = Arc::downgrade(endpoint);
    std::thread::Builder::new().name("hyperfs-hyperdht".into()).spawn(move || {
        {
            let Some(endpoint) = endpoint.upgrade() else { return };
            match endpoint.listen_dht() {
                Ok(relays) => tracing::info!(relays = relays.len(), "registered on HyperDHT"),
                Err(e) => tracing::warn!(error = %e, "registering on HyperDHT"),
            }
        }
        if !relay {
            return;
        }
        loop {
            let Some(endpoint) = endpoint.upgrade() else { return };
            let took = endpoint.dht_announce(hyperfs_net::endpoint::hyperdht::relay_topic());
            tracing::info!(took, "announced as a relay on HyperDHT");
            drop(endpoint);
            std::thread::sleep(RELAY_ANNOUNCE);
        }
    })?;
    Ok(())
}

pub fn resolve(peer: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    peer.to_socket_addrs()
        .map_err(|e| anyhow!("{peer:?} is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| anyhow!("{peer:?} resolves to no address"))
}
