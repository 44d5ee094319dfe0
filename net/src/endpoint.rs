//! The QUIC endpoint: one UDP socket, TLS 1.3 with each node's Ed25519 identity on both sides,
//! and per connection one stream of frames that carries a channel (a [`Session`]) for every
//! core both nodes replicate.
//!
//! A channel opens when both sides have sent `open` for the same discovery key with a valid
//! capability: a keyed BLAKE2b of the connection's TLS exporter secret and the core key, under
//! the sender's role (dialer or acceptor), so a peer that does not know the core key can neither
//! open a channel nor learn the key from ours. The endpoint runs on its own tokio runtime and
//! offers a blocking API to the node and to readers ([`Endpoint::fetch`]).
//!
//! Invariant: every block a peer sends reaches the core through [`Session::on_message`], which
//! verifies it reading the core; only what verified is stored, by the driver through the core's
//! owner (`SharedCore::write`), and the session hears the result; a peer that breaks the rules is
//! disconnected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::{self, CoreKey, DiscoveryKey};
use hyperfs_engine::Hypercore;
use tokio::sync::{mpsc, oneshot};

use crate::identity::{peer_id_of, Identity, PeerId, PeerVerifier, ALPN};
use crate::secretstream;
use crate::session::{Claims, Event, Output, Session};
use crate::wire::{Control, Frame, Message, PROTOCOL};
use crate::NetError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// At most this many commands are taken in one go before the connection reads and writes again.
const COMMAND_BATCH: usize = 1024;
/// The most bytes one read takes from a connection's stream.
const READ_CHUNK: usize = 256 << 10;
/// Reads a connection's reader may take ahead of the connection (each at most about
/// [`READ_CHUNK`], or one frame).
const READ_AHEAD: usize = 4;
/// Bytes sent from the front of a connection's send buffer that are dropped without waiting
/// for the rest to go.
const COMPACT_SENT: usize = 4 << 20;
/// The first byte a dialer writes on its stream: the version of this framing.
const STREAM_VERSION: u8 = 1;
/// Incoming connections (handshakes included) held at once, from anyone…
const MAX_INCOMING: usize = 256;
/// …and from one address.
const MAX_INCOMING_PER_IP: usize = 8;
/// Bytes waiting to go to a peer past which its connection stops reading from it.
const MAX_PENDING: usize = 4 << 20;
/// A peer that takes none of what waits to go for this long is let go.
const STALLED: Duration = Duration::from_secs(30);
/// How long a peer dropped for breaking the rules (its id and its address) is refused.
const BAN: Duration = Duration::from_secs(30);
/// The label of the TLS exporter secret capabilities are derived from.
const EXPORTER_LABEL: &[u8] = b"hyperfs replication capability v1";
/// The protomux protocol a hyperfs node opens on a JS-wire connection: a peer that opens it too
/// is a hyperfs node (JS peers reject it), and gets hyperfs's own messages.
const HELLO: &str = "hyperfs/hello";
/// The channel a hyperfs node opens to say it answers [`Message::RangeRequest`] (every link,
/// QUIC too): a node that does not know it rejects the open, and is asked a block a request.
const RANGES: &str = "hyperfs/ranges";
/// What a hyperfs node's hello carries as its id when it can take frames sealed with
/// AES-256-GCM after a [`Message::CipherSwitch`].
const HELLO_AES: &[u8] = b"aes-256-gcm";
/// How long a JS-wire handshake may take.
/// How often a persistent HyperDHT node walks to refresh its table.
const DHT_NODE_REFRESH: Duration = Duration::from_secs(300);
/// …and how often while it does not know its own address yet.
const DHT_NODE_LEARN: Duration = Duration::from_secs(5);
/// IPv6 addresses a HyperDHT handshake answer offers at most (and a client tries).
const MAX_ADDRESSES6: usize = 4;
/// How long a client's straight dial of one of them may take.
const DIAL6_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a HyperDHT server pings the nodes holding its registration (as HyperDHT does, a
/// few seconds apart: mobile NATs forget mappings fast).
const RELAY_KEEPALIVE: Duration = Duration::from_secs(5);
/// With TCP preferred ([`Endpoint::prefer_tcp`]), how long a dial waits for the peer's TCP port
/// to answer before it takes QUIC; a refused port falls back at once.
const TCP_FIRST: Duration = Duration::from_millis(500);
/// …and a peer whose TCP handshake took longer than this is dialed over QUIC instead: TCP wins
/// on a LAN (the kernel carries the bytes), QUIC on a long path (a 4 KiB read at 50 ms RTT had a
/// p99 of 286 ms over TCP with BBR, whose RTT probes shrink its window, against 123 ms over QUIC).
const TCP_NEAR: Duration = Duration::from_millis(15);
/// The TCP congestion controller asked for (BBR keeps a lossy link full where Cubic halves its
/// rate at each loss); where the kernel lacks it, its default stays.
const TCP_CONGESTION: &[u8] = b"bbr";
/// A JS-wire connection that wrote nothing this long sends an empty message, as secret-stream's
/// keep-alive does (Hypercore's `replicate` sets 5 s)…
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// …and one that heard nothing this long (keep-alives included) is let go: the peer is gone.
const SILENT: Duration = Duration::from_secs(20);

/// A core the node replicates, reached through its owner's lock.
pub trait SharedCore: Send + Sync {
    fn key(&self) -> CoreKey;
    /// Runs `f` on the core for reading.
    fn read(&self, f: &mut dyn FnMut(&Hypercore));
    /// Runs `f` on the core for writing: verified proofs are stored here, by its owner.
    fn write(&self, f: &mut dyn FnMut(&mut Hypercore));
    /// Whether to download every block (a clone or seed) rather than what readers ask for.
    fn download_all(&self) -> bool {
        false
    }
    /// A verified proof changed the core (a new length or fork, a stored block): its owner may
    /// want to take that in. Called after the session that applied it reported it.
    fn stored(&self) {}
}

/// The cores a node offers: opened on every connection, looked up when a peer opens one.
pub trait Shared: Send + Sync {
    fn cores(&self) -> Vec<Arc<dyn SharedCore>>;
    fn find(&self, discovery_key: &DiscoveryKey) -> Option<Arc<dyn SharedCore>> {
        self.cores().into_iter().find(|c| crypto::discovery_key(&c.key()) == *discovery_key)
    }
}

/// What the node sees of a connected peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: PeerId,
    pub address: SocketAddr,
    /// Keys of the cores replicated with it.
    pub cores: Vec<CoreKey>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub rtt: Duration,
    /// How the peer is reached.
    pub transport: Transport,
    /// Whether the peer is a hyperfs node (on QUIC always; on the JS wire, when it opened
    /// hyperfs's hello channel) rather than a JS Hypercore peer.
    pub hyperfs: bool,
    /// How the connection's path was made.
    pub path: Path,
}

/// How a connection's path was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Straight to the other side's address: it was reachable (or it reached us).
    Direct,
    /// Through NATs, after a hole punch (HyperDHT's).
    Punched,
    /// Through a blind relay both sides reached (the relay sees ciphertext only).
    Relayed,
}

impl Path {
    /// As `peers` shows it: `direct` or `punched`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        }
    }
}

/// The transport of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// hyperfs's own: QUIC with TLS 1.3 and the node identities.
    Quic,
    /// The JS stack's: Noise and secret-stream over TCP, protomux.
    Tcp,
    /// The same over UDX (reliable streams over UDP, as `udx-native`).
    Udx,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
            Transport::Udx => "udx",
        }
    }
}

/// What a connection runs on, and how to end it.
#[derive(Clone)]
enum Link {
    Quic(quinn::Connection),
    /// A byte stream with secret-stream on it: its handshake's round trip, and the signal that
    /// ends it.
    Stream {
        rtt: Duration,
        end: Arc<tokio::sync::Notify>,
        hyperfs: Arc<std::sync::atomic::AtomicBool>,
        transport: Transport,
    },
}

impl Link {
    fn rtt(&self) -> Duration {
        match self {
            Link::Quic(c) => c.rtt(),
            Link::Stream { rtt, .. } => *rtt,
        }
    }

    fn close(&self, reason: &'static [u8]) {
        match self {
            Link::Quic(c) => c.close(3u32.into(), reason),
            Link::Stream { end, .. } => end.notify_one(),
        }
    }

    fn transport(&self) -> Transport {
        match self {
            Link::Quic(_) => Transport::Quic,
            Link::Stream { transport, .. } => *transport,
        }
    }

    fn hyperfs(&self) -> bool {
        match self {
            Link::Quic(_) => true,
            Link::Stream { hyperfs, .. } => hyperfs.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// What a reader waits for on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Wanted {
    /// A block, by index.
    Block(u64),
    /// The tree nodes that locate a byte.
    Seek(u64),
}

enum Command {
    /// Ask for a block or a seek; the answer says whether it is now stored.
    Want { core: CoreKey, what: Wanted, reply: oneshot::Sender<bool> },
    /// Ask for a block's bytes, verified, whether or not the core stores them.
    WantBytes { core: CoreKey, index: u64, reply: oneshot::Sender<Option<Vec<u8>>> },
    /// A local core changed: tell the peer.
    Changed { core: CoreKey },
    /// Open channels for cores shared since the connection began.
    Refresh,
    /// Close the channel of a core no longer shared.
    Close { core: CoreKey },
    /// Send messages as given on a core's channel (see [`Endpoint::send_raw`]).
    Raw { core: CoreKey, messages: Vec<Message> },
    /// Send a frame as it is (a blind relay's answer to a pairing).
    Send(Frame),
    /// Pair a UDX stream through this connection's peer, a blind relay (see [`relay`]); the
    /// reply is the relay's stream id.
    RelayPair { pair: relay::Pair, reply: oneshot::Sender<u32> },
    /// Another connection's peer gave this node a verified new length (`upgraded`) or blocks
    /// (`runs`, as `(start, length)`) of `core`: pass them on, so versions travel along chains
    /// of replicas.
    Gained { core: CoreKey, upgraded: bool, runs: Vec<(u64, u64)> },
}

struct Conn {
    id: PeerId,
    /// Tells this connection from another to the same peer.
    stable: usize,
    /// Whether we dialed it.
    dialer: bool,
    address: SocketAddr,
    /// How it was made (a relayed one has the relay's address).
    path: Path,
    tx: mpsc::UnboundedSender<Command>,
    link: Link,
    cores: Arc<Mutex<Vec<CoreKey>>>,
    stats: Arc<Mutex<(u64, u64)>>,
}

struct Inner {
    /// The QUIC socket on the address the node listens on…
    endpoint: quinn::Endpoint,
    /// …and, listening on every IPv4 address, its twin on every IPv6 address.
    endpoint6: Option<quinn::Endpoint>,
    client: quinn::ClientConfig,
    shared: Arc<dyn Shared>,
    conns: Mutex<Vec<Conn>>,
    me: PeerId,
    /// This node's key as the JS wire's Noise static key (the same Ed25519 key as `me`).
    noise: crate::noise::KeyPair,
    /// … and as the key that signs its HyperDHT records.
    signing: hyperfs_engine::crypto::KeyPair,
    /// Addresses dialed over TCP or UDX (`--peer tcp://…`, `udx://…`): dialed so again when the
    /// swarm redials.
    dial_as: Mutex<HashMap<SocketAddr, Transport>>,
    /// Whether an address not in `dial_as` is dialed over TCP first ([`Endpoint::prefer_tcp`]).
    prefer_tcp: std::sync::atomic::AtomicBool,
    /// The TCP listeners' addresses ([`Endpoint::listen_tcp`]).
    tcp: Mutex<Vec<SocketAddr>>,
    /// Whether this node answers handshakes for its key on HyperDHT ([`Endpoint::listen_dht`]).
    dht_listening: std::sync::atomic::AtomicBool,
    /// The HyperDHT client (`start_dht`), and the nodes holding this node's registration.
    dht: tokio::sync::Mutex<Option<Arc<crate::dht::Client>>>,
    dht_relays: Mutex<Vec<std::net::SocketAddrV4>>,
    /// The handshake slots of this node's HyperDHT server, for the punches that follow.
    dht_slots: hyperdht::Slots,
    /// Punches through a random NAT running now (each costs hundreds of sockets or probes).
    random_punches: hyperdht::RandomPunches,
    /// This node's blind relay, when it relays for others ([`Endpoint::serve_relay`]).
    relay: Mutex<Option<Arc<relay::RelayServer>>>,
    /// Relays to go through first when no punch works ([`Endpoint::relay_through`]).
    relay_keys: Mutex<Vec<[u8; 32]>>,
    /// The UDX socket: the one accepting peers (`listen_udx`), else one for dialing.
    udx: tokio::sync::Mutex<Option<(Arc<crate::udx_socket::UdxSocket>, bool)>>,
    /// Stable ids of JS-wire connections (QUIC's come from quinn): counted down from the top.
    next_stable: std::sync::atomic::AtomicUsize,
    /// Bytes of block data sent and received per core, over every connection.
    transferred: Mutex<HashMap<CoreKey, (u64, u64)>>,
    /// How long a request to a peer may go unanswered (ms).
    request_timeout_ms: std::sync::atomic::AtomicU64,
    /// Whose turn it is to be asked first among equally near peers.
    turn: std::sync::atomic::AtomicUsize,
    /// Incoming connections held, by address (see [`MAX_INCOMING`]).
    incoming: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Peers dropped for breaking the rules, by id and by address, until when ([`BAN`]): a
    /// flooder that is dropped does not get a fresh budget by connecting again.
    banned: Mutex<(HashMap<PeerId, Instant>, HashMap<SocketAddr, Instant>)>,
    /// What each core's sessions (one per peer) have asked for, so a download from several peers
    /// splits its blocks among them ([`Claims`]). Held by the sessions; gone with the last.
    claims: Mutex<HashMap<CoreKey, std::sync::Weak<Claims>>>,
}

impl Inner {
    /// The node's QUIC sockets.
    fn quics(&self) -> impl Iterator<Item = &quinn::Endpoint> {
        std::iter::once(&self.endpoint).chain(&self.endpoint6)
    }

    /// Where peers reach this node over IPv6: its IPv6 socket's port on each of the host's IPv6
    /// addresses that other hosts can reach (none without an IPv6 socket).
    fn addresses6(&self) -> Vec<std::net::SocketAddrV6> {
        let Some(port) = self.endpoint6.as_ref().and_then(|e| e.local_addr().ok()).map(|a| a.port()) else {
            return Vec::new();
        };
        let ips = crate::discovery::ipv6_addresses();
        ips.into_iter().take(MAX_ADDRESSES6).map(|ip| std::net::SocketAddrV6::new(ip, port, 0, 0)).collect()
    }

    /// The QUIC socket that dials `addr`: the IPv6 one for an IPv6 address, where there is one.
    fn quic_for(&self, addr: &SocketAddr) -> &quinn::Endpoint {
        match &self.endpoint6 {
            Some(e) if addr.is_ipv6() => e,
            _ => &self.endpoint,
        }
    }

    fn ban(&self, id: PeerId, address: SocketAddr) {
        let until = Instant::now() + BAN;
        let mut b = lock(&self.banned);
        let now = Instant::now();
        b.0.retain(|_, t| *t > now);
        b.1.retain(|_, t| *t > now);
        if b.0.len() < 4096 {
            b.0.insert(id, until);
            b.1.insert(address, until);
        }
    }

    /// The claims shared by the sessions of `core`.
    fn claims(&self, core: &CoreKey) -> Arc<Claims> {
        let mut all = lock(&self.claims);
        if let Some(c) = all.get(core).and_then(std::sync::Weak::upgrade) {
            return c;
        }
        all.retain(|_, c| c.strong_count() > 0);
        let c = Arc::new(Claims::default());
        all.insert(*core, Arc::downgrade(&c));
        c
    }

    fn is_banned(&self, id: Option<&PeerId>, address: &SocketAddr) -> bool {
        let b = lock(&self.banned);
        let now = Instant::now();
        b.1.get(address).is_some_and(|t| *t > now) || id.and_then(|i| b.0.get(i)).is_some_and(|t| *t > now)
    }
}

/// One incoming connection counted against the caps until it ends.
struct Admitted {
    inner: Arc<Inner>,
    ip: std::net::IpAddr,
}

impl Admitted {
    /// Counts a connection from `ip`, unless the caps are reached.
    fn admit(inner: &Arc<Inner>, ip: std::net::IpAddr) -> Option<Admitted> {
        let mut held = lock(&inner.incoming);
        let total: usize = held.values().sum();
        let from = held.get(&ip).copied().unwrap_or(0);
        if total >= MAX_INCOMING || from >= MAX_INCOMING_PER_IP {
            return None;
        }
        held.insert(ip, from + 1);
        Some(Admitted { inner: inner.clone(), ip })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut held = lock(&self.inner.incoming);
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// Accepts QUIC peers on `quic` (one of the node's sockets) until it closes.
async fn accept_quic(inner: Arc<Inner>, quic: quinn::Endpoint) {
    while let Some(incoming) = quic.accept().await {
        let inner = inner.clone();
        if inner.is_banned(None, &incoming.remote_address()) {
            incoming.refuse();
            continue;
        }
        let Some(admitted) = Admitted::admit(&inner, incoming.remote_address().ip()) else {
            tracing::info!(address = %incoming.remote_address(), "refused a connection: too many held");
            incoming.refuse();
            continue;
        };
        tokio::spawn(async move {
            let _admitted = admitted;
            match incoming.await {
                Ok(connection) => {
                    if let Err(e) = run_connection(inner, connection, false).await {
                        tracing::info!(error = %e, "an incoming peer left");
                    }
                }
                Err(e) => tracing::info!(error = %e, "an incoming connection failed"),
            }
        });
    }
}

/// A UDP socket on `port` of every IPv6 address, IPv6 only (the IPv4 socket has the port there).
fn bind_v6_only(port: u16) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

/// A running endpoint. Dropping it closes every connection.
pub struct Endpoint {
    runtime: tokio::runtime::Runtime,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.inner.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default())
    }
}

impl Endpoint {
    /// Binds `listen` (port 0: any free port) and starts accepting peers.
    pub fn start(identity: &Identity, listen: SocketAddr, shared: Arc<dyn Shared>) -> Result<Endpoint, NetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hyperfs-net")
            .enable_all()
            .build()
            .map_err(|e| NetError::Io(format!("starting the network runtime: {e}")))?;
        let (server_config, client_config) = quic_configs(identity)?;
        let (endpoint, endpoint6) = {
            let _guard = runtime.enter();
            let endpoint = quinn::Endpoint::server(server_config.clone(), listen)
                .map_err(|e| NetError::Io(format!("listening on {listen}: {e}")))?;
            // On every IPv4 address, the node takes the same port on every IPv6 address too,
            // where the host has IPv6 (a socket of its own: IPv4 peers keep plain addresses).
            let port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
            let endpoint6 = if listen.is_ipv4() && listen.ip().is_unspecified() {
                match bind_v6_only(port).and_then(|socket| {
                    quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(server_config),
                        socket,
                        Arc::new(quinn::TokioRuntime),
                    )
                }) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::info!(error = %e, port, "no IPv6: peers reach this node over IPv4 only");
                        None
                    }
                }
            } else {
                None
            };
            (endpoint, endpoint6)
        };
        let inner = Arc::new(Inner {
            endpoint,
            endpoint6,
            client: client_config,
            shared,
            conns: Mutex::new(Vec::new()),
            me: identity.peer_id(),
            noise: identity.noise_key_pair(),
            signing: identity.key_pair(),
            dial_as: Mutex::new(HashMap::new()),
            prefer_tcp: false.into(),
            tcp: Mutex::new(Vec::new()),
            udx: tokio::sync::Mutex::new(None),
            dht: tokio::sync::Mutex::new(None),
            dht_listening: false.into(),
            dht_relays: Mutex::new(Vec::new()),
            dht_slots: hyperdht::Slots::default(),
            random_punches: hyperdht::RandomPunches::default(),
            relay: Mutex::new(None),
            relay_keys: Mutex::new(Vec::new()),
            next_stable: usize::MAX.into(),
            transferred: Mutex::new(HashMap::new()),
            request_timeout_ms: (crate::session::REQUEST_TIMEOUT.as_millis() as u64).into(),
            turn: 0.into(),
            incoming: Mutex::new(HashMap::new()),
            banned: Mutex::new((HashMap::new(), HashMap::new())),
            claims: Mutex::new(HashMap::new()),
        });
        for quic in inner.quics() {
            runtime.spawn(accept_quic(inner.clone(), quic.clone()));
        }
        Ok(Endpoint { runtime, inner })
    }

    /// How long a request to a peer may go unanswered before its reader asks another peer, for
    /// channels opened from now on (three in a row unanswered drop the peer).
    pub fn set_request_timeout(&self, timeout: Duration) {
        self.inner.request_timeout_ms.store(timeout.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// The address peers reach this node on.
    /// This node's id: its public key, the one peers reach it by on HyperDHT.
    pub fn id(&self) -> PeerId {
        self.inner.me
    }

    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.inner.endpoint.local_addr().map_err(|e| NetError::Io(e.to_string()))
    }

    /// The node's IPv6 socket's address, when it listens on every address and the host has IPv6
    /// (the same port number as [`Endpoint::local_addr`]).
    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.inner.endpoint6.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Connects to a peer (if not connected yet) and returns its id once its channels are open.
    /// An address once dialed with [`Endpoint::connect_tcp`] is dialed over TCP. With TCP
    /// preferred ([`Endpoint::prefer_tcp`]), a node's address is tried over TCP first — the
    /// same port number, where hyperfs nodes listen on both — and over QUIC when no TCP peer
    /// answers there.
    pub fn connect(&self, addr: SocketAddr) -> Result<PeerId, NetError> {
        let transport = lock(&self.inner.dial_as).get(&addr).copied();
        match transport {
            Some(Transport::Tcp) => return self.connect_tcp(addr),
            Some(Transport::Udx) => return self.connect_udx(addr),
            _ => {}
        }
        let inner = self.inner.clone();
        let tcp_first = transport.is_none() && inner.prefer_tcp.load(std::sync::atomic::Ordering::Relaxed);
        self.runtime.block_on(dial_node(&inner, addr, tcp_first))
    }

    /// Dials `addr` with the JS stack's wire over `transport` from now on (see
    /// [`Endpoint::connect_tcp`], [`Endpoint::connect_udx`]).
    pub fn dial_as(&self, addr: SocketAddr, transport: Transport) {
        lock(&self.inner.dial_as).insert(addr, transport);
    }

    /// Connects over TCP with the JS stack's wire (Noise XX as initiator, secret-stream,
    /// protomux): to a JS peer serving `store.replicate(socket)`, or a node that listens with
    /// [`Endpoint::listen_tcp`]. Returns the peer's Noise key once its channels are open.
    pub fn connect_tcp(&self, addr: SocketAddr) -> Result<PeerId, NetError> {
        let inner = self.inner.clone();
        self.dial_as(addr, Transport::Tcp);
        self.runtime.block_on(async move {
            if let Some(c) = lock(&inner.conns).iter().find(|c| c.address == addr) {
                return Ok(c.id);
            }
            dial_tcp(&inner, addr, HANDSHAKE_TIMEOUT, None).await
        })
    }

    /// Whether addresses are dialed over TCP first (see [`Endpoint::connect`]). Between two
    /// hyperfs nodes near each other TCP is the faster transport: the kernel carries the bytes (a
    /// 256 MiB clone on loopback took 1.14 s over TCP against 1.85 s over QUIC, before the AES
    /// switch). A peer farther than [`TCP_NEAR`] is dialed over QUIC.
    pub fn prefer_tcp(&self, on: bool) {
        self.inner.prefer_tcp.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connects over UDX with the JS stack's wire, as over TCP ([`Endpoint::connect_tcp`]): a
    /// stream on a random id, the same both ways, to a peer that accepts streams on `addr`
    /// (`listen_udx`, or a JS peer with `udx-native` doing the same).
    pub fn connect_udx(&self, addr: SocketAddr) -> Result<PeerId, NetError> {
        let inner = self.inner.clone();
        self.dial_as(addr, Transport::Udx);
        self.runtime.block_on(async move {
            if let Some(c) = lock(&inner.conns).iter().find(|c| c.address == addr) {
                return Ok(c.id);
            }
            let socket = udx_socket(&inner).await?;
            let pipe = socket.dial(addr);
            let (pipe, opened) = open_secret_stream(pipe, true, inner.noise.clone()).await?;
            start_stream(&inner, tokio::io::split(pipe), addr, opened, Transport::Udx, Path::Direct).await
        })
    }

    /// Connects to the HyperDHT server of `public_key`: its registration is found (FIND_PEER),
    /// the Noise IK handshake goes through a node that relays for it (PEER_HANDSHAKE), then a
    /// UDX stream, straight to an open server or through both NATs after a punch
    /// ([`hyperdht`]), and secret-stream keyed from that handshake. Returns the peer's id.
    pub fn connect_dht(&self, public_key: [u8; 32]) -> Result<PeerId, NetError> {
        self.connect_dht_path(public_key).map(|(id, _)| id)
    }

    /// As [`Endpoint::connect_dht`], also saying how the connection was made (`None`: one to
    /// the peer already ran).
    pub fn connect_dht_path(&self, public_key: [u8; 32]) -> Result<(PeerId, Option<Path>), NetError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            if let Some(c) = lock(&inner.conns).iter().find(|c| c.id.0 == public_key) {
                return Ok((c.id, None));
            }
            let (id, path) = hyperdht::connect(&inner, public_key).await?;
            Ok((id, Some(path)))
        })
    }

    /// Makes this node a HyperDHT server reachable by its key (the peer id) through the DHT of
    /// `bootstrap`: its registration goes to the nodes nearest `BLAKE2b-256(key)`, which relay
    /// clients' Noise IK handshakes to it; each handshake is answered with a UDX stream id, and
    /// the stream binds to wherever its first packet comes from (no hole punching yet). The
    /// registration is renewed every five minutes. Returns the nodes that took it.
    pub fn listen_dht(&self) -> Result<Vec<std::net::SocketAddrV4>, NetError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let client = dht_client(&inner).await?;
            inner.dht_listening.store(true, std::sync::atomic::Ordering::SeqCst);
            let relays = client.register(&inner.signing).await;
            if relays.is_empty() {
                return Err(NetError::Io("no DHT node took this node's registration".into()));
            }
            // What its NAT is, for the handshakes to say.
            client.sample_nat().await;
            *lock(&inner.dht_relays) = relays.clone();
            let renew = Arc::downgrade(&client);
            let (signing, keeper) = (inner.signing.clone(), inner.clone());
            tokio::spawn(async move {
                // The nodes holding the registration relay handshakes to this node through the
                // mappings its NAT keeps for them: they are pinged every few seconds so those
                // stay (a NAT forgets an idle UDP mapping in 30 s to a few minutes), and when
                // fewer answer than took it, or every five minutes, it goes out again.
                let mut renewed = Instant::now();
                loop {
                    tokio::time::sleep(RELAY_KEEPALIVE).await;
                    let Some(client) = renew.upgrade() else { return };
                    let relays = lock(&keeper.dht_relays).clone();
                    let mut answered = 0;
                    for r in &relays {
                        answered += usize::from(client.ping(*r).await);
                    }
                    if answered < relays.len().min(3) || renewed.elapsed() >= Duration::from_secs(300) {
                        let relays = client.register(&signing).await;
                        if !relays.is_empty() {
                            *lock(&keeper.dht_relays) = relays;
                        }
                        renewed = Instant::now();
                    }
                }
            });
            Ok(relays)
        })
    }

    /// Starts this node's HyperDHT client on a socket of its own, talking to the network
    /// through `bootstrap` ([`crate::dht::BOOTSTRAP`] for the public one): what
    /// [`Endpoint::listen_dht`], [`Endpoint::connect_dht`] and the announces and lookups use.
    pub fn start_dht(&self, bootstrap: Vec<std::net::SocketAddrV4>) -> Result<(), NetError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            // The DHT's datagrams share the UDX socket, as in JS: the address DHT nodes see is
            // the one a punch opens and the stream runs on.
            let udx = udx_socket(&inner).await?;
            let client = Arc::new(crate::dht::Client::on_udx(udx.clone(), bootstrap));
            *inner.dht.lock().await = Some(client.clone());
            tokio::spawn(dht_requests(Arc::downgrade(&inner), client, udx));
            Ok(())
        })
    }

    /// Makes this node a persistent HyperDHT node as well ([`crate::dht_node`]), on the UDX
    /// socket HyperDHT runs on (`listen_udx` first for a fixed port): JS and hyperfs nodes
    /// bootstrap from it and keep records and registrations on it. `public` is the address
    /// others reach it at; `None`: the one DHT nodes see it at, once they reach it unasked.
    /// Its table fills from a walk towards its own id, renewed every five minutes.
    pub fn serve_dht_node(&self, public: Option<std::net::SocketAddrV4>) -> Result<(), NetError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let client = dht_client(&inner).await?;
            client.make_persistent(public);
            let weak = Arc::downgrade(&client);
            tokio::spawn(async move {
                loop {
                    let Some(client) = weak.upgrade() else { return };
                    client.learn_address().await;
                    client.refresh_table().await;
                    let known = client.node_id().is_some();
                    tracing::info!(nodes = client.table_len().unwrap_or(0), id = known, "HyperDHT node's table");
                    drop(client);
                    // Until other nodes have told it its address, it asks again soon.
                    tokio::time::sleep(if known { DHT_NODE_REFRESH } else { DHT_NODE_LEARN }).await;
                }
            });
            Ok(())
        })
    }

    /// A persistent HyperDHT node's id and the nodes its table holds (`None`: not one).
    pub fn dht_node(&self) -> Option<(Option<[u8; 32]>, usize)> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let client = dht_client(&inner).await.ok()?;
            Some((client.node_id(), client.table_len()?))
        })
    }

    /// Makes this node a blind relay for others (HyperDHT must run): peers that cannot punch
    /// through to each other pair their streams here, and it forwards their packets, which it
    /// cannot read. It is found under [`hyperdht::relay_topic`] (the caller announces it).
    pub fn serve_relay(&self) -> Result<(), NetError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let client = dht_client(&inner).await?;
            let socket = client.udx().ok_or_else(|| NetError::Io("HyperDHT runs without a UDX socket".into()))?;
            *lock(&inner.relay) = Some(Arc::new(relay::RelayServer::new(socket)));
            Ok(())
        })
    }

    /// Blind relays (by their HyperDHT keys) to go through first when no punch joins this node
    /// and a peer, before those found under [`hyperdht::relay_topic`].
    pub fn relay_through(&self, keys: Vec<[u8; 32]>) {
        *lock(&self.inner.relay_keys) = keys;
    }

    /// Announces this node under `topic` on HyperDHT (with the nodes holding its registration
    /// as relays, as Hyperswarm announces); returns how many nodes took it.
    pub fn dht_announce(&self, topic: [u8; 32]) -> usize {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let Ok(client) = dht_client(&inner).await else { return 0 };
            let relays = lock(&inner.dht_relays).clone();
            client.announce(topic, &inner.signing, relays).await
        })
    }

    /// Takes this node's announce under `topic` back from HyperDHT; returns how many nodes
    /// said they did.
    pub fn dht_unannounce(&self, topic: [u8; 32]) -> usize {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let Ok(client) = dht_client(&inner).await else { return 0 };
            client.unannounce(topic, &inner.signing).await
        })
    }

    /// What HyperDHT's nodes see of this node ([`crate::dht::Client::nat`], sampled further
    /// first while the verdict is not settled): its NAT's kind, its public addresses and the
    /// samples they rest on; `None` while HyperDHT is off.
    pub fn dht_nat(&self) -> Option<(crate::holepunch::Firewall, Vec<std::net::SocketAddrV4>, u32)> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let client = dht_client(&inner).await.ok()?;
            client.sample_nat().await;
            Some(client.nat())
        })
    }

    /// The public keys announced under `topic` on HyperDHT, this node's own left out.
    pub fn dht_lookup(&self, topic: [u8; 32]) -> Vec<[u8; 32]> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let Ok(client) = dht_client(&inner).await else { return Vec::new() };
            client.lookup(topic).await.into_iter().map(|p| p.public_key).filter(|k| *k != inner.me.0).collect()
        })
    }

    /// Also accepts peers over UDX on `addr` with the JS stack's wire (see
    /// [`Endpoint::listen_tcp`]; how streams start: `udx_socket`). Returns the address bound.
    pub fn listen_udx(&self, addr: SocketAddr) -> Result<SocketAddr, NetError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            let mut udx = inner.udx.lock().await;
            if let Some((s, true)) = &*udx {
                return s.local_addr().map_err(|e| NetError::Io(e.to_string()));
            }
            let (tx, mut accepted) = mpsc::channel(64);
            let socket = crate::udx_socket::UdxSocket::bind(addr, Some(tx))
                .await
                .map_err(|e| NetError::Io(format!("listening on udx {addr}: {e}")))?;
            let bound = socket.local_addr().map_err(|e| NetError::Io(e.to_string()))?;
            *udx = Some((socket, true));
            let acceptor = inner.clone();
            tokio::spawn(async move {
                while let Some((pipe, address)) = accepted.recv().await {
                    if acceptor.is_banned(None, &address) {
                        continue;
                    }
                    let Some(admitted) = Admitted::admit(&acceptor, address.ip()) else { continue };
                    let inner = acceptor.clone();
                    tokio::spawn(async move {
                        let _admitted = admitted;
                        let result = match open_secret_stream(pipe, false, inner.noise.clone()).await {
                            Ok((pipe, opened)) => {
                                let io = tokio::io::split(pipe);
                                run_stream(inner, io, address, false, opened, Transport::Udx, Path::Direct).await
                            }
                            Err(e) => Err(e),
                        };
                        if let Err(e) = result {
                            tracing::info!(%address, error = %e, "an incoming UDX peer left");
                        }
                    });
                }
            });
            Ok(bound)
        })
    }

    /// Also accepts peers over TCP on `addr` with the JS stack's wire (they are the Noise
    /// initiators): JS peers that dial it and `store.replicate(socket)`, and nodes that dial it
    /// with [`Endpoint::connect_tcp`]. Returns the address bound; a listener already bound to
    /// `addr`'s port (on its address or on every address) is returned as it is.
    pub fn listen_tcp(&self, addr: SocketAddr) -> Result<SocketAddr, NetError> {
        let inner = self.inner.clone();
        let bound = lock(&inner.tcp).iter().copied().find(|b| {
            let same_port = addr.port() != 0 && b.port() == addr.port() && b.is_ipv4() == addr.is_ipv4();
            same_port && (b.ip() == addr.ip() || b.ip().is_unspecified())
        });
        if let Some(bound) = bound {
            return Ok(bound);
        }
        let v6_only = inner.endpoint6.is_some();
        let listener = self.runtime.block_on(async move {
            let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
                .map_err(|e| NetError::Io(e.to_string()))?;
            if addr.is_ipv6() && v6_only {
                // Beside the IPv4 listener on the port, as the QUIC sockets are.
                socket2::SockRef::from(&socket).set_only_v6(true).map_err(|e| NetError::Io(e.to_string()))?;
            }
            socket.set_reuseaddr(true).map_err(|e| NetError::Io(e.to_string()))?;
            // Dials go out from the listening port too (`dial_tcp`).
            socket.set_reuseport(true).map_err(|e| NetError::Io(e.to_string()))?;
            socket.bind(addr).map_err(|e| NetError::Io(format!("listening on tcp {addr}: {e}")))?;
            socket.listen(128).map_err(|e| NetError::Io(format!("listening on tcp {addr}: {e}")))
        })?;
        let bound = listener.local_addr().map_err(|e| NetError::Io(e.to_string()))?;
        lock(&inner.tcp).push(bound);
        self.runtime.spawn(async move {
            loop {
                let Ok((stream, address)) = listener.accept().await else {
                    // Out of descriptors, say: not a reason to spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if inner.is_banned(None, &address) {
                    continue;
                }
                let Some(admitted) = Admitted::admit(&inner, address.ip()) else {
                    tracing::info!(%address, "refused a TCP connection: too many held");
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    tune_tcp(&stream);
                    let result = match open_secret_stream(stream, false, inner.noise.clone()).await {
                        Ok((stream, opened)) => {
                            let io = stream.into_split();
                            run_stream(inner, io, address, false, opened, Transport::Tcp, Path::Direct).await
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        tracing::info!(%address, error = %e, "an incoming TCP peer left");
                    }
                });
            }
        });
        Ok(bound)
    }

    /// Block `index` of `core` from the first connected peer that has it, verified and stored
    /// by the time this returns true; false when no peer could give it within `timeout`.
    pub fn fetch(&self, core: &CoreKey, index: u64, timeout: Duration) -> bool {
        self.fetch_many(core, &[index], timeout).is_empty()
    }

    /// Blocks `indices` of `core`, all asked for at once, verified and stored by the time this
    /// returns; returns those no peer gave within `timeout`. A peer that fails some (it lacks
    /// them, is silent, lies and is dropped) leaves them to the next.
    pub fn fetch_many(&self, core: &CoreKey, indices: &[u64], timeout: Duration) -> Vec<u64> {
        let wanted: Vec<Wanted> = indices.iter().map(|&i| Wanted::Block(i)).collect();
        self.ask(core, wanted, timeout)
            .into_iter()
            .filter_map(|w| match w {
                Wanted::Block(i) => Some(i),
                Wanted::Seek(_) => None,
            })
            .collect()
    }

    /// Asks the first peer that replicates `core` for blocks `indices` without waiting: they
    /// are stored when they come (a reader's next window).
    pub fn fetch_later(&self, core: &CoreKey, indices: &[u64]) {
        let peer = lock(&self.inner.conns).iter().find(|c| lock(&c.cores).contains(core)).map(|c| c.tx.clone());
        let Some(tx) = peer else { return };
        for &index in indices {
            // Nobody waits on the answer.
            let (reply, _) = oneshot::channel();
            if tx.send(Command::Want { core: *core, what: Wanted::Block(index), reply }).is_err() {
                return;
            }
        }
    }

    /// The connected peers that replicate `core`, nearest first (by RTT), with their commands.
    fn peers_of(&self, core: &CoreKey) -> Vec<(Duration, mpsc::UnboundedSender<Command>)> {
        let mut peers: Vec<_> = lock(&self.inner.conns)
            .iter()
            .filter(|c| lock(&c.cores).contains(core))
            .map(|c| (c.link.rtt(), c.tx.clone()))
            .collect();
        peers.sort_by_key(|(rtt, _)| *rtt);
        peers
    }

    /// Block `index` of `core` from the first peer that has it, verified against the local tree
    /// and handed over whether or not the core stores it: how an own drive reads a block
    /// `prune` cleared here from a peer that still holds it (its owner alone changes the core,
    /// so the bytes are not stored). Nearer peers are asked first, one at a time.
    pub fn fetch_bytes(&self, core: &CoreKey, index: u64, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let peers = self.peers_of(core);
        let core = *core;
        self.runtime.block_on(async move {
            for (_, tx) in peers {
                let (reply, rx) = oneshot::channel();
                if tx.send(Command::WantBytes { core, index, reply }).is_err() {
                    continue;
                }
                match tokio::time::timeout_at(deadline.into(), rx).await {
                    Ok(Ok(Some(bytes))) => return Some(bytes),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        })
    }

    /// The tree nodes of `core` that locate byte `bytes`, from the first peer that answers a
    /// seek, verified and stored by the time this returns true. The caller seeks locally again
    /// (a byte at a node boundary can take a second round).
    pub fn seek(&self, core: &CoreKey, bytes: u64, timeout: Duration) -> bool {
        self.ask(core, vec![Wanted::Seek(bytes)], timeout).is_empty()
    }

    /// Asks the peers that replicate `core` for what is wanted: the nearest first (by round-trip
    /// time); what it has not given after a short while (or cannot give) is asked of the next as
    /// well, and so on — a slow, silent or departed peer delays a reader by that while, not by
    /// the request timeout. Returns what no peer gave within `timeout`.
    fn ask(&self, core: &CoreKey, wanted: Vec<Wanted>, timeout: Duration) -> Vec<Wanted> {
        let deadline = Instant::now() + timeout;
        let mut peers = self.peers_of(core);
        if peers.is_empty() || wanted.is_empty() {
            return wanted;
        }
        // Peers about as near as the nearest take turns being asked first, which spreads the
        // load and lets a silent one show itself.
        let best = peers[0].0;
        let near = peers.iter().take_while(|(rtt, _)| *rtt <= best * 2 + Duration::from_millis(5)).count();
        let turn = self.inner.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        peers[..near].rotate_left(turn % near);
        let core = *core;
        self.runtime.block_on(async move {
            let (answers, mut answered) = mpsc::unbounded_channel::<(Wanted, bool)>();
            let mut pending: HashMap<Wanted, usize> = wanted.iter().map(|w| (*w, 0)).collect();
            let mut next_peer = 0;
            // Asks peer `next_peer` for everything still pending.
            let ask_next = |pending: &mut HashMap<Wanted, usize>, next_peer: &mut usize| -> Duration {
                let Some((rtt, tx)) = peers.get(*next_peer) else { return timeout };
                *next_peer += 1;
                for (&what, asked) in pending.iter_mut() {
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Command::Want { core, what, reply }).is_err() {
                        let _ = answers.send((what, false));
                        continue;
                    }
                    *asked += 1;
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let ok = matches!(rx.await, Ok(true));
                        let _ = answers.send((what, ok));
                    });
                }
                // How long this peer gets before the next is asked too.
                (*rtt * 8).clamp(Duration::from_millis(300), Duration::from_secs(2))
            };
            let mut failed = Vec::new();
            let mut hedge = Instant::now() + ask_next(&mut pending, &mut next_peer);
            while !pending.is_empty() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wake = hedge.min(deadline);
                match tokio::time::timeout_at(wake.into(), answered.recv()).await {
                    Ok(Some((what, true))) => {
                        pending.remove(&what);
                    }
                    Ok(Some((what, false))) => {
                        // A peer that cannot: when every peer asked has said so, ask the next now.
                        let exhausted = pending.get_mut(&what).is_some_and(|n| {
                            *n = n.saturating_sub(1);
                            *n == 0
                        });
                        if exhausted && next_peer < peers.len() {
                            hedge = Instant::now();
                        } else if exhausted {
                            // No one left to ask for it.
                            pending.remove(&what);
                            failed.push(what);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                if Instant::now() >= hedge && next_peer < peers.len() && !pending.is_empty() {
                    hedge = Instant::now() + ask_next(&mut pending, &mut next_peer);
                } else if Instant::now() >= hedge {
                    hedge = deadline;
                }
            }
            failed.extend(pending.into_keys());
            failed
        })
    }

    /// Tells connected peers that `core` changed here (an append, a truncation).
    pub fn changed(&self, core: &CoreKey) {
        for c in lock(&self.inner.conns).iter() {
            let _ = c.tx.send(Command::Changed { core: *core });
        }
    }

    /// Sends `messages` as they are on the channel of `core`, to every peer it is open with: no
    /// session and no rules, what a hostile peer sends. For the tests and the benchmark that
    /// play one (`scripts/bench flood`). Returns how many connections had the channel open.
    #[doc(hidden)]
    pub fn send_raw(&self, core: &CoreKey, messages: &[Message]) -> usize {
        let mut sent = 0;
        for c in lock(&self.inner.conns).iter() {
            if lock(&c.cores).contains(core)
                && c.tx.send(Command::Raw { core: *core, messages: messages.to_vec() }).is_ok()
            {
                sent += 1;
            }
        }
        sent
    }

    /// Closes the channels of `core` on every connection (it is no longer shared).
    pub fn close(&self, core: &CoreKey) {
        for c in lock(&self.inner.conns).iter() {
            let _ = c.tx.send(Command::Close { core: *core });
        }
    }

    /// Opens channels on every connection for cores shared since they began, and tells their
    /// sessions whether to download everything now.
    pub fn refresh(&self) {
        for c in lock(&self.inner.conns).iter() {
            let _ = c.tx.send(Command::Refresh);
        }
    }

    /// Bytes of block data (`data` messages) sent and received for `core` since the endpoint
    /// started: (uploaded, downloaded).
    pub fn transferred(&self, core: &CoreKey) -> (u64, u64) {
        lock(&self.inner.transferred).get(core).copied().unwrap_or_default()
    }

    /// The connected peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.inner.conns)
            .iter()
            .map(|c| {
                let (up, down) = *lock(&c.stats);
                PeerInfo {
                    id: c.id,
                    address: c.address,
                    cores: lock(&c.cores).clone(),
                    bytes_up: up,
                    bytes_down: down,
                    rtt: c.link.rtt(),
                    transport: c.link.transport(),
                    hyperfs: c.link.hyperfs(),
                    path: c.path,
                }
            })
            .collect()
    }
}

impl Endpoint {
    /// Closes every connection and waits (up to a second) until peers were told, so they turn
    /// to other peers at once rather than after the idle timeout.
    pub fn shutdown(&self) {
        let quics: Vec<quinn::Endpoint> = self.inner.quics().cloned().collect();
        for e in &quics {
            e.close(0u32.into(), b"bye");
        }
        self.runtime.block_on(async move {
            let idle = async {
                for e in &quics {
                    e.wait_idle().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
        });
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for e in self.inner.quics() {
            e.close(0u32.into(), b"bye");
        }
    }
}

/// The QUIC configurations every connection of `identity` uses, as a server and as a client:
/// TLS 1.3 with both sides' certificates checked against their peer ids, one stream each way,
/// keep-alives, the idle timeout and the congestion controller. Public for the benchmark of raw
/// QUIC throughput.
pub fn quic_configs(identity: &Identity) -> Result<(quinn::ServerConfig, quinn::ClientConfig), NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = identity.certificate()?;
    let tls = |e: rustls::Error| NetError::Tls(e.to_string());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(PeerVerifier::new(provider.clone()))
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(provider))
        .with_client_auth_cert(vec![cert], key)
        .map_err(tls)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let quic_server =
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| NetError::Tls(e.to_string()))?;
    let quic_client =
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    // A peer that vanishes without closing (killed, cut off) is noticed within the idle
    // timeout; keep-alives hold healthy connections open.
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    // One stream of frames per connection, opened by the dialer: a peer cannot make this
    // side buffer data on streams nobody reads.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport
        .max_idle_timeout(Some(Duration::from_secs(10).try_into().map_err(|_| NetError::Io("idle timeout".into()))?));
    // Cubic's window on clean paths, BBR's on lossy ones (see `congestion`).
    transport.congestion_controller_factory(Arc::new(crate::congestion::BothConfig::default()));
    let transport = Arc::new(transport);
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
    server_config.transport_config(transport.clone());
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic_client));
    client_config.transport_config(transport);
    Ok((server_config, client_config))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn remote_id(connection: &quinn::Connection) -> Result<PeerId, NetError> {
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .ok_or_else(|| NetError::Tls("the peer presented no certificate".into()))?;
    certs.first().and_then(|c| peer_id_of(c)).ok_or_else(|| NetError::Tls("the peer has no Ed25519 identity".into()))
}

/// The capability that proves knowledge of `core` on this connection, for the given role.
fn capability(secret: &[u8; 64], dialer: bool, core: &CoreKey) -> [u8; 32] {
    let ns = if dialer { crypto::caps::replicate_initiator() } else { crypto::caps::replicate_responder() };
    crypto::keyed_hash(secret, &[ns.as_slice(), core.as_slice()].concat())
}

/// One channel of a connection.
struct Channel {
    core: Arc<dyn SharedCore>,
    key: CoreKey,
    local_id: u64,
    /// Whether our `open` stands (a peer that rejected it gets it again when it opens the core).
    sent_open: bool,
    remote_id: Option<u64>,
    session: Option<Session>,
    /// Readers waiting for blocks and seeks.
    waiting: HashMap<Wanted, Vec<oneshot::Sender<bool>>>,
    /// Readers waiting for a block's verified bytes (see [`Endpoint::fetch_bytes`]).
    waiting_bytes: HashMap<u64, Vec<oneshot::Sender<Option<Vec<u8>>>>>,
}

/// How a connection's bytes become frames and back.
enum Codec {
    /// hyperfs's framing on a QUIC stream: `uint length` ‖ protomux message.
    Quic,
    /// The JS stack's: one secret-stream frame per protomux message (or batch).
    Js(Box<JsCodec>),
}

/// The JS wire's frames: secret-stream's, and between hyperfs nodes, after each side's
/// [`Message::CipherSwitch`], AES-256-GCM's in the same framing (`u24 length` ‖ ciphertext ‖
/// 16-byte tag), each direction keyed from its secret-stream key with a counter as nonce. AES
/// has the CPU's instructions where ChaCha20-Poly1305 has none: the cipher took a third of a
/// clone's busy CPU.
struct JsCodec {
    stream: secretstream::Stream,
    send_aes: Option<secretstream::AesFrames>,
    recv_aes: Option<secretstream::AesFrames>,
    /// The peer's channels of other protocols (blind-relay's), whose messages are kept whole.
    other: Vec<u64>,
}

impl JsCodec {
    fn new(stream: secretstream::Stream) -> JsCodec {
        JsCodec { stream, send_aes: None, recv_aes: None, other: Vec::new() }
    }

    fn send_with(&mut self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        match &mut self.send_aes {
            Some(aes) => aes.seal(out, write),
            None => self.stream.send_with(out, write),
        }
    }

    fn open(&mut self, body: &mut [u8]) -> Result<std::ops::Range<usize>, NetError> {
        match &mut self.recv_aes {
            Some(aes) => aes.open(body),
            None => self.stream.open(body),
        }
        .map_err(|e| NetError::Protocol(e.to_string()))
    }

    /// What goes from now on is sealed with AES (after our switch went).
    fn switch_send(&mut self) {
        self.send_aes = Some(secretstream::AesFrames::new(&self.stream.handshake.tx));
    }

    /// What comes from now on is sealed with AES (the peer's switch came).
    fn switch_recv(&mut self) {
        self.recv_aes = Some(secretstream::AesFrames::new(&self.stream.handshake.rx));
    }
}

impl Codec {
    /// A copy for the connection's reader, made before anything was sent or received under the
    /// codec: the reader only takes frames with it, and this one only encodes.
    fn for_reader(&self) -> Codec {
        match self {
            Codec::Quic => Codec::Quic,
            Codec::Js(s) => Codec::Js(Box::new(JsCodec::new(s.stream.clone()))),
        }
    }

    fn encode(&mut self, f: &Frame, out: &mut Vec<u8>) {
        match self {
            Codec::Quic => f.encode_into(out),
            Codec::Js(s) => {
                s.send_with(out, |o| f.encode_message(o));
                if matches!(f, Frame::Channel { message: Message::CipherSwitch, .. }) {
                    s.switch_send();
                }
            }
        }
    }

    /// Takes the next whole unit off `buf` into `frames` (each with the bytes it took); the
    /// bytes used, or `None` while more are needed.
    fn take(&mut self, buf: &mut [u8], frames: &mut Vec<(Frame, usize)>) -> Result<Option<usize>, NetError> {
        let malformed =
            |e: hyperfs_engine::encoding::DecodeError| NetError::Protocol(format!("a malformed frame: {e}"));
        match self {
            Codec::Quic => Ok(Frame::take(buf).map_err(malformed)?.map(|(f, len)| {
                frames.push((f, len));
                len
            })),
            Codec::Js(s) => {
                let Some((body, used)) = secretstream::take_frame(buf) else { return Ok(None) };
                let body = &mut buf[body];
                let m = s.open(body)?;
                let before = frames.len();
                Frame::decode_message_on(&body[m], frames, &mut s.other).map_err(malformed)?;
                if frames.len() == before + 1 {
                    // A message alone in its frame took the whole frame, as its sender counts it.
                    frames[before].1 = used;
                }
                if frames[before..].iter().any(|f| matches!(f.0, Frame::Channel { message: Message::CipherSwitch, .. }))
                {
                    // The peer's next frames are sealed with AES.
                    s.switch_recv();
                }
                Ok(Some(used))
            }
        }
    }
}

/// Runs secret-stream's handshake on `stream` (Noise XX, then the header frames): the stream,
/// the open secret stream, the handshake's round trip and what came after the peer's header.
async fn open_secret_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    initiator: bool,
    me: crate::noise::KeyPair,
) -> Result<(S, Opened), NetError> {
    open_secret_stream_after(stream, initiator, me, None).await
}

/// As [`open_secret_stream`]; with `done`, the Noise handshake happened already (HyperDHT's IK)
/// and only the header frames pass.
async fn open_secret_stream_after<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    initiator: bool,
    me: crate::noise::KeyPair,
    done: Option<crate::noise::Done>,
) -> Result<(S, Opened), NetError> {
    let fail = |e: secretstream::SecretStreamError| NetError::Protocol(format!("secret-stream handshake: {e}"));
    let io = |e: std::io::Error| NetError::Io(format!("secret-stream handshake: {e}"));
    let work = async {
        let mut out = Vec::new();
        let mut opening = match done {
            Some(done) => secretstream::Opening::established(initiator, done, me, &mut out),
            None => secretstream::Opening::start(initiator, me, &mut out).map_err(fail)?,
        };
        let mut sent_at = Instant::now();
        let mut rtt = None;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        loop {
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(io)?;
                out.clear();
                sent_at = Instant::now();
            }
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(NetError::Io("the peer closed during the secret-stream handshake".into()));
            }
            if rtt.is_none() {
                rtt = Some(sent_at.elapsed());
            }
            let mut at = 0;
            loop {
                // Handshake frames are 32 to 96 bytes: a longer one is not waited for.
                if let [a, b, c, ..] = buf[at..] {
                    if u32::from_le_bytes([a, b, c, 0]) > 96 {
                        return Err(NetError::Protocol("secret-stream handshake: an oversized frame".into()));
                    }
                }
                let Some((body, used)) = secretstream::take_frame(&buf[at..]) else { break };
                let body = at + body.start..at + body.end;
                at += used;
                if let Some(open) = opening.on_frame(&buf[body], &mut out).map_err(fail)? {
                    if !out.is_empty() {
                        stream.write_all(&out).await.map_err(io)?;
                    }
                    let rest = buf[at..].to_vec();
                    return Ok((open, rtt.unwrap_or_default(), rest));
                }
            }
            buf.drain(..at);
        }
    };
    let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| NetError::Io("the secret-stream handshake took over 10 s".into()))??;
    Ok((stream, opened))
}

/// Drives a QUIC connection until it ends.
async fn run_connection(inner: Arc<Inner>, connection: quinn::Connection, dialer: bool) -> Result<(), NetError> {
    let id = remote_id(&connection)?;
    let address = connection.remote_address();
    if inner.is_banned(Some(&id), &address) {
        connection.close(3u32.into(), b"dropped for breaking the rules; try later");
        return Err(NetError::Io(format!("peer {} was dropped for breaking the rules lately", hex_id(&id))));
    }
    let mut secret = [0u8; 64];
    connection
        .export_keying_material(&mut secret, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Tls("no exporter secret".into()))?;
    let (send, recv) = if dialer {
        let (mut s, r) = connection.open_bi().await.map_err(|e| NetError::Io(e.to_string()))?;
        s.write_all(&[STREAM_VERSION]).await.map_err(|e| NetError::Io(e.to_string()))?;
        (s, r)
    } else {
        let (s, mut r) = connection.accept_bi().await.map_err(|e| NetError::Io(e.to_string()))?;
        let mut v = [0u8; 1];
        r.read_exact(&mut v).await.map_err(|e| NetError::Io(e.to_string()))?;
        if v[0] != STREAM_VERSION {
            connection.close(1u32.into(), b"unknown stream version");
            return Err(NetError::Protocol(format!("stream version {} from {address}", v[0])));
        }
        (s, r)
    };
    let link = Link::Quic(connection.clone());
    let peer = Peer { id, address, dialer, stable: connection.stable_id(), secret, path: Path::Direct };
    let result = drive(&inner, link, peer, (recv, send), Codec::Quic, Vec::new()).await;
    if let Err(e) = &result {
        connection.close(2u32.into(), e.to_string().as_bytes());
    }
    result
}

/// Every request HyperDHT's socket receives: a handshake or a holepunch round for this node's
/// own key goes to its server (once it listens); anything else to the persistent node it may
/// be (nothing happens if it is not one).
async fn dht_requests(
    inner: std::sync::Weak<Inner>,
    client: Arc<crate::dht::Client>,
    udx: Arc<crate::udx_socket::UdxSocket>,
) {
    use crate::dht::command;
    let mut requests = client.serve();
    while let Some((req, from)) = requests.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let ours = req.target == Some(crypto::hash(&[&inner.me.0]))
            && inner.dht_listening.load(std::sync::atomic::Ordering::SeqCst)
            && !req.internal;
        let mode = req.value.as_deref().and_then(|v| {
            let mut d = hyperfs_engine::encoding::Decoder::new(v);
            d.uint("flags").ok()?;
            d.uint("mode").ok()
        });
        // To the server: a client's message straight to it, or one relayed to it.
        let to_server = matches!(mode, Some(0) | Some(2));
        match req.command {
            command::PEER_HANDSHAKE if ours && to_server => server_handshake(&inner, &client, &udx, req, from).await,
            command::PEER_HOLEPUNCH if ours && to_server => hyperdht::on_holepunch(&inner, &client, req, from).await,
            _ => client.answer(&req, from).await,
        }
    }
}

/// Answers a PEER_HANDSHAKE for this node's key (relayed by a DHT node, or sent straight to
/// it): the Noise IK handshake as responder, then the UDX stream the client will open, secret-
/// stream keyed from the handshake, and the connection. Anything else is ignored.
async fn server_handshake(
    inner: &Arc<Inner>,
    client: &crate::dht::Client,
    udx: &Arc<crate::udx_socket::UdxSocket>,
    req: crate::dht::Request,
    from: SocketAddr,
) {
    use crate::dht::{command, namespace, Handshake, NoisePayload};
    let target = crypto::hash(&[&inner.me.0]);
    if req.internal || req.command != command::PEER_HANDSHAKE || req.target != Some(target) {
        return;
    }
    let SocketAddr::V4(from4) = from else { return };
    let Some(hs) = req.value.as_deref().and_then(Handshake::decode) else { return };
    if hs.mode != 0 && hs.mode != 2 {
        return;
    }
    let mut noise = crate::noise::Handshake::new(
        crate::noise::Pattern::IK,
        false,
        inner.noise.clone(),
        &namespace(command::PEER_HANDSHAKE),
        None,
    );
    let Ok(theirs) = noise.recv(&hs.noise) else { return };
    let Some(theirs) = NoisePayload::decode(&theirs) else { return };
    let (error, their_udx) = match (theirs.version, theirs.udx) {
        (1, Some(u)) => (0, Some(u)),
        (1, None) => (1, None),
        _ => (2, None),
    };
    let our_id = rand::random::<u32>();
    // Behind a NAT, a slot for the holepunch rounds that may follow, with the relays to send
    // them through (a handshake that came straight needs none).
    let client_open = crate::holepunch::Firewall::from_u64(theirs.firewall) == crate::holepunch::Firewall::Open;
    let relayed = theirs.relay_through.filter(|r| r.version == 1);
    let punch = hs.mode == 2 && !client_open && relayed.is_none();
    let nat = hyperdht::server_nat(inner, client, punch.then_some(from4));
    let slot = nat.2.as_ref().map(|(id, _)| *id);
    let mut ours = hyperdht::server_payload(error, our_id, nat);
    // hyperfs clients with IPv6 dial these straight (JS's ignore them).
    ours.addresses6 = inner.addresses6();
    // A client behind the same NAT (the relay saw it at our public IP) is told our LAN address
    // too, as HyperDHT's servers do: neither side need punch.
    if let (2, Some(c)) = (hs.mode, hs.peer_address) {
        if client.seen_by(from4).is_some_and(|me| me.ip() == c.ip()) {
            if let Some(lan) = hyperdht::lan_address(udx, from4).filter(|l| !ours.addresses4.contains(l)) {
                ours.addresses4.push(lan);
            }
        }
    }
    let (Ok(msg2), Some(done), Some(their_udx)) = (noise.send(&ours.encode()), noise.done().cloned(), their_udx) else {
        if let Some(id) = slot {
            inner.dht_slots.free(id);
        }
        return;
    };
    // A stream that comes on one of the punch's birthday sockets comes out of `birthday`.
    let birthday = slot.and_then(|id| inner.dht_slots.finished(id, &done, (our_id, their_udx.id as u32)));
    // The client asked for a relay: the stream goes through it, once both paired there.
    let relay = relayed.map(|r| (r, done.clone()));
    // An open client, or one that came straight, is connected to at once (as HyperDHT's
    // servers do); otherwise the stream binds to wherever the client's first packet comes from.
    let bound = match (hs.mode, hs.peer_address) {
        (0, _) => Err(from),
        (_, Some(a)) if client_open => Err(SocketAddr::V4(a)),
        _ => Ok(udx.expect(our_id, their_udx.id as u32)),
    };
    // The answer leaves from the UDX socket: the client opens its stream to where it came from.
    let message = if hs.mode == 2 {
        crate::dht::Message::Request(crate::dht::Request {
            tid: req.tid,
            to: from4,
            id: None,
            token: None,
            internal: false,
            command: command::PEER_HANDSHAKE,
            target: Some(target),
            value: Some(
                Handshake { mode: 1, noise: msg2, peer_address: hs.peer_address, relay_address: None }.encode(),
            ),
        })
    } else {
        crate::dht::Message::Response(crate::dht::Response {
            tid: req.tid,
            to: Some(from4),
            value: Some(Handshake { mode: 4, noise: msg2, peer_address: None, relay_address: None }.encode()),
            ..crate::dht::Response::default()
        })
    };
    if udx.send_raw(&message.encode(), from).await.is_err() {
        return;
    }
    if !ours.addresses6.is_empty() {
        hyperdht::dial_back_v6(inner, done.remote_static, &theirs.addresses6);
    }
    if let Some((through, done)) = relay {
        hyperdht::serve_relayed(inner, through, our_id, done);
        return;
    }
    let (inner, udx) = (inner.clone(), udx.clone());
    tokio::spawn(async move {
        let (pipe, address, path) = match bound {
            Err(to) => (udx.open(our_id, their_udx.id as u32, to), to, Path::Direct),
            Ok(bound) => {
                // A punch takes up to its rounds before the stream comes, here or on one of the
                // punch's birthday sockets.
                let on_birthday = async move {
                    match birthday {
                        Some(mut b) => b.recv().await.ok_or(()),
                        None => std::future::pending().await,
                    }
                };
                let either = async move {
                    tokio::select! {
                        here = bound => here.map_err(drop),
                        there = on_birthday => there,
                    }
                };
                let waited = tokio::time::timeout(HANDSHAKE_TIMEOUT + hyperdht::PUNCH_TIMEOUT, either).await;
                // The stream came (or never will): the punch for it stops.
                if let Some(p) = slot.and_then(|id| inner.dht_slots.puncher(id)) {
                    lock(&p).stop();
                }
                let Ok(Ok((pipe, address))) = waited else { return };
                let punched = slot.and_then(|id| inner.dht_slots.punched(id)) == Some(true);
                (pipe, address, if punched { Path::Punched } else { Path::Direct })
            }
        };
        let result = match open_secret_stream_after(pipe, false, inner.noise.clone(), Some(done)).await {
            Ok((pipe, opened)) => {
                run_stream(inner, tokio::io::split(pipe), address, false, opened, Transport::Udx, path).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::info!(%address, error = %e, "a peer that came through the DHT left");
        }
    });
}

/// The node's HyperDHT client, once started.
async fn dht_client(inner: &Inner) -> Result<Arc<crate::dht::Client>, NetError> {
    inner.dht.lock().await.clone().ok_or_else(|| NetError::Io("HyperDHT is off on this node".into()))
}

/// Dials a hyperfs node at `addr` (over TCP first with `tcp_first`, then QUIC from the socket
/// of `addr`'s family) unless a connection to that address runs; returns its id once the
/// connection is registered.
async fn dial_node(inner: &Arc<Inner>, addr: SocketAddr, tcp_first: bool) -> Result<PeerId, NetError> {
    if let Some(c) = lock(&inner.conns).iter().find(|c| c.address == addr) {
        return Ok(c.id);
    }
    if tcp_first {
        // A port that accepts but never completes the handshake is not waited on long.
        let tried = tokio::time::timeout(TCP_FIRST * 6, dial_tcp(inner, addr, TCP_FIRST, Some(TCP_NEAR))).await;
        match tried.unwrap_or_else(|_| Err(NetError::Io("no secret-stream handshake within 3 s".into()))) {
            Ok(id) => return Ok(id),
            Err(e @ NetError::SelfDial(_)) => return Err(e),
            Err(e) => tracing::debug!(%addr, error = %e, "no TCP peer there: dialing QUIC"),
        }
    }
    let connecting = inner
        .quic_for(&addr)
        .connect_with(inner.client.clone(), addr, "hyperfs")
        .map_err(|e| NetError::Io(format!("connecting to {addr}: {e}")))?;
    let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| NetError::Io(format!("{addr} did not answer within 10 s")))?
        .map_err(|e| NetError::Io(format!("connecting to {addr}: {e}")))?;
    let id = remote_id(&connection)?;
    if id == inner.me {
        connection.close(0u32.into(), b"self");
        return Err(NetError::SelfDial(addr));
    }
    let task = inner.clone();
    tokio::spawn(async move {
        if let Err(e) = run_connection(task, connection, true).await {
            tracing::info!(error = %e, "a peer we dialed left");
        }
    });
    // The connection registers itself before it sends anything.
    for _ in 0..200 {
        if lock(&inner.conns).iter().any(|c| c.id == id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(id)
}

/// The node's UDX socket: the one accepting peers, else one bound for dialing (IPv4).
async fn udx_socket(inner: &Inner) -> Result<Arc<crate::udx_socket::UdxSocket>, NetError> {
    let mut udx = inner.udx.lock().await;
    if let Some((s, _)) = &*udx {
        return Ok(s.clone());
    }
    let s = crate::udx_socket::UdxSocket::bind(([0, 0, 0, 0], 0).into(), None)
        .await
        .map_err(|e| NetError::Io(format!("a UDX socket: {e}")))?;
    *udx = Some((s.clone(), false));
    Ok(s)
}

/// An open secret stream, the handshake's round trip and what came after the peer's header.
type Opened = (secretstream::Stream, Duration, Vec<u8>);

/// Dials `addr` over TCP with the JS stack's wire, giving the port `answer` to accept. With
/// `near` (a node dialing a node), a port that took longer to accept is let go before the
/// handshake (the peer sees a connection closed with nothing said) and the dial fails.
///
/// The connection goes out from the node's own TCP port when it listens on its QUIC port number,
/// as QUIC's do: the peer sees the address it would dial (and which discovery found), and a dial
/// towards a node already connected that way finds the connection. Where that port cannot be
/// used for this peer (the two nodes dialing each other at once, or the same pair of addresses
/// still closing), a dial to a node fails (QUIC, from the node's port, goes next) and any
/// other dial goes from any port.
async fn dial_tcp(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    answer: Duration,
    near: Option<Duration>,
) -> Result<PeerId, NetError> {
    let quic_port = inner.endpoint.local_addr().map(|a| a.port()).ok();
    let own = {
        let tcp = lock(&inner.tcp);
        let on_port = || tcp.iter().copied().filter(|t| Some(t.port()) == quic_port);
        on_port().find(|t| t.is_ipv4() == addr.is_ipv4()).or_else(|| on_port().next())
    };
    let from = own.and_then(|own| match own.ip() {
        ip if ip.is_unspecified() => {
            let any: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            Some(SocketAddr::new(any, own.port()))
        }
        ip if ip.is_ipv4() == addr.is_ipv4() && ip.is_loopback() == addr.ip().is_loopback() => Some(own),
        _ => None,
    });
    let connect = |from: Option<SocketAddr>| async move {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
        if let Some(from) = from {
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(from)?;
        }
        socket.connect(addr).await
    };
    if near.is_some() && from.is_none() {
        return Err(NetError::Io("no TCP listener on the node's port to dial from".into()));
    }
    let started = Instant::now();
    let dialed = tokio::time::timeout(answer, async {
        match from {
            Some(from) => match connect(Some(from)).await {
                Ok(s) => Ok(s),
                Err(e) if near.is_none() && e.kind() != std::io::ErrorKind::ConnectionRefused => connect(None).await,
                Err(e) => Err(e),
            },
            None => connect(None).await,
        }
    });
    let stream = dialed
        .await
        .map_err(|_| NetError::Io(format!("{addr} did not answer over TCP within {answer:?}")))?
        .map_err(|e| NetError::Io(format!("connecting to {addr}: {e}")))?;
    if let Some(near) = near.filter(|&near| started.elapsed() > near) {
        return Err(NetError::Io(format!("{addr} is farther than {near:?} over TCP")));
    }
    tune_tcp(&stream);
    let (stream, opened) = open_secret_stream(stream, true, inner.noise.clone()).await?;
    start_stream(inner, stream.into_split(), addr, opened, Transport::Tcp, Path::Direct).await
}

/// No Nagle delay (replication's messages are its own batches), and BBR where the kernel has it.
fn tune_tcp(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_tcp_congestion(TCP_CONGESTION);
}

/// Runs a JS-wire connection we dialed in its own task; returns the peer's id once it is
/// registered (its channels opening).
async fn start_stream<R, W>(
    inner: &Arc<Inner>,
    io: (R, W),
    addr: SocketAddr,
    opened: Opened,
    transport: Transport,
    path: Path,
) -> Result<PeerId, NetError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = PeerId(opened.0.handshake.remote_static);
    if id == inner.me {
        return Err(NetError::SelfDial(addr));
    }
    let task = inner.clone();
    tokio::spawn(async move {
        if let Err(e) = run_stream(task, io, addr, true, opened, transport, path).await {
            tracing::info!(error = %e, transport = transport.name(), "a peer we dialed left");
        }
    });
    for _ in 0..200 {
        if lock(&inner.conns).iter().any(|c| c.id == id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(id)
}

/// Drives a JS-wire connection (secret-stream over TCP or UDX) until it ends.
async fn run_stream<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin>(
    inner: Arc<Inner>,
    io: (R, W),
    address: SocketAddr,
    dialer: bool,
    (open, rtt, rest): Opened,
    transport: Transport,
    path: Path,
) -> Result<(), NetError> {
    let id = PeerId(open.handshake.remote_static);
    if inner.is_banned(Some(&id), &address) {
        return Err(NetError::Io(format!("peer {} was dropped for breaking the rules lately", hex_id(&id))));
    }
    let stable = inner.next_stable.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let link = Link::Stream { rtt, end: Arc::new(tokio::sync::Notify::new()), hyperfs: Arc::default(), transport };
    // Capabilities come from the Noise handshake hash, as Hypercore's do.
    let peer = Peer { id, address, dialer, stable, secret: open.handshake.hash, path };
    drive(&inner, link, peer, io, Codec::Js(Box::new(JsCodec::new(open))), rest).await
}

/// Which of two connections to one peer to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Old,
    New,
    /// Both, for now: the side that dialed both decides, and this one follows when it closes.
    Both,
}

/// Which of two connections with peer `id` node `me` keeps, each given as (whether we dialed
/// it, its path): the one that is not relayed (a relay is a third party's cost and a detour);
/// else the one dialed by the node with the smaller peer id; of two dialed by one node, that
/// node keeps the first and the other side keeps both until it closes one. Both sides reach
/// the same answer: each sees the same paths, and the dialers mirrored.
fn keep(me: &PeerId, id: &PeerId, old: (bool, Path), new: (bool, Path)) -> Keep {
    let relayed = |p: Path| p == Path::Relayed;
    if relayed(old.1) != relayed(new.1) {
        return if relayed(old.1) { Keep::New } else { Keep::Old };
    }
    match (old.0, new.0) {
        (true, true) => Keep::Old,
        (false, false) => Keep::Both,
        (_, we_dialed_new) => {
            if crate::swarm::keeps(me, id, we_dialed_new) {
                Keep::New
            } else {
                Keep::Old
            }
        }
    }
}

/// Who a connection is with.
struct Peer {
    id: PeerId,
    address: SocketAddr,
    dialer: bool,
    stable: usize,
    /// What capabilities are keyed with: QUIC's exporter secret, or the Noise handshake hash.
    secret: [u8; 64],
    path: Path,
}

/// Drives one connection until it ends: frames in, sessions, frames out.
async fn drive<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    link: Link,
    peer: Peer,
    (recv, mut send): (R, W),
    mut codec: Codec,
    buf: Vec<u8>,
) -> Result<(), NetError> {
    let Peer { id, address, dialer, stable, secret, path } = peer;
    let js = matches!(codec, Codec::Js(_));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cores = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(Mutex::new((0u64, 0u64)));
    {
        // A second connection to a peer: both sides keep the same one (see `Keep`).
        let mut conns = lock(&inner.conns);
        let mut closing = Vec::new();
        for other in conns.iter().filter(|c| c.id == id) {
            match keep(&inner.me, &id, (other.dialer, other.path), (dialer, path)) {
                Keep::New => closing.push(other.stable),
                Keep::Old => {
                    drop(conns);
                    link.close(b"duplicate");
                    tracing::debug!(peer = %hex_id(&id), "a second connection to a peer: closed");
                    return Ok(());
                }
                Keep::Both => {}
            }
        }
        conns.retain(|c| {
            let closed = closing.contains(&c.stable) && c.id == id;
            if closed {
                c.link.close(b"duplicate");
            }
            !closed
        });
    }
    lock(&inner.conns).push(Conn {
        id,
        stable,
        dialer,
        address,
        path,
        tx: tx.clone(),
        link: link.clone(),
        cores: cores.clone(),
        stats: stats.clone(),
    });
    tracing::info!(peer = %hex_id(&id), %address, dialer, transport = link.transport().name(), "peer connected");
    let mut state = ConnState {
        channels: Vec::new(),
        out: Vec::new(),
        arrivals: Vec::new(),
        secret,
        dialer,
        cores,
        next_local: 1,
        gained: Vec::new(),
        js,
        hyperfs_flag: None,
        hello: None,
        ranges: false,
        relays: Vec::new(),
        relay_opens: Vec::new(),
        me_tx: tx,
    };
    if js {
        // Our hello first: a hyperfs node opens it too, a JS peer rejects it.
        state.out.push(Frame::Control(Control::Open {
            local_id: state.next_local,
            protocol: HELLO.into(),
            id: Some(HELLO_AES.to_vec()),
            flags: 0,
            capability: [0; 32],
        }));
        state.hello = Some(state.next_local);
        state.next_local += 1;
    }
    state.out.push(Frame::Control(Control::Open {
        local_id: state.next_local,
        protocol: RANGES.into(),
        id: None,
        flags: 0,
        capability: [0; 32],
    }));
    state.next_local += 1;
    for core in inner.shared.cores() {
        state.open(core);
    }
    let ended = match &link {
        Link::Stream { end, .. } => end.clone(),
        Link::Quic(_) => Arc::new(tokio::sync::Notify::new()),
    };
    if let Link::Stream { hyperfs, .. } = &link {
        state.hyperfs_flag = Some(hyperfs.clone());
    }
    let result: Result<(), NetError> = async {
        // Bytes to send and how many of them went: writing never stops the reading (a peer that
        // reads nothing while it floods had both sides wait on each other's reads), and reading
        // pauses only while more than `MAX_PENDING` bytes wait to go.
        let mut pending: Vec<u8> = Vec::new();
        let mut sent = 0usize;
        let mut moved = Instant::now();
        let mut heard = Instant::now();
        let mut wrote = Instant::now();
        // The reader takes frames off the wire, what came with the handshake first, beside this
        // task: their bytes are decrypted and a range's blocks hashed while this one verifies
        // and stores the ones before (a clone's receiving thread was busy all the time alone).
        let (arrived, mut arrivals) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read_frames(recv, codec.for_reader(), buf, arrived));
        let _reader = AbortOnDrop(reader);
        loop {
            if js && state.out.is_empty() && pending.is_empty() && wrote.elapsed() >= KEEP_ALIVE {
                // secret-stream's keep-alive: an empty message.
                if let Codec::Js(s) = &mut codec {
                    s.send_with(&mut pending, |_| {});
                }
            }
            if !state.out.is_empty() {
                let before = pending.len();
                if before == 0 {
                    // The wait for the peer to take what goes next starts now.
                    moved = Instant::now();
                }
                for f in state.out.drain(..) {
                    // Written straight into what goes out: a block's bytes are copied once.
                    let at = pending.len();
                    codec.encode(&f, &mut pending);
                    if let Frame::Channel { channel, message: Message::Data { .. } | Message::RangeData { .. } } = &f {
                        if let Some(ch) = state.channels.iter().find(|c| c.local_id == *channel) {
                            lock(&inner.transferred).entry(ch.key).or_default().0 += (pending.len() - at) as u64;
                        }
                    }
                }
                lock(&stats).0 += (pending.len() - before) as u64;
            }
            let waiting = pending.len() - sent;
            if waiting > 0 && moved.elapsed() > STALLED {
                return Err(NetError::Io(format!("the peer read nothing for {} s", STALLED.as_secs())));
            }
            if js && heard.elapsed() > SILENT {
                return Err(NetError::Io(format!("the peer sent nothing for {} s", SILENT.as_secs())));
            }
            let mut deadline = state.deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            if js {
                deadline = deadline.min(wrote + KEEP_ALIVE).min(heard + SILENT + Duration::from_millis(10));
            }
            tokio::select! {
                // Sending first when both can go: a batch of answers leaves whole, as before.
                biased;
                w = send.write(&pending[sent..]), if waiting > 0 => {
                    sent += w.map_err(|e| NetError::Io(e.to_string()))?;
                    moved = Instant::now();
                    wrote = Instant::now();
                    if sent == pending.len() {
                        pending.clear();
                        sent = 0;
                    } else if sent >= COMPACT_SENT {
                        // What went is dropped from the front now and then, so a buffer that
                        // never empties under steady traffic does not grow without end.
                        pending.drain(..sent);
                        sent = 0;
                    }
                }
                arrival = arrivals.recv(), if waiting <= MAX_PENDING => {
                    // None: the peer closed, and everything it sent before was taken.
                    let Some(arrival) = arrival else { return Ok(()) };
                    let Arrival { frames, bytes } = arrival?;
                    heard = Instant::now();
                    lock(&stats).1 += bytes as u64;
                    take_in(inner, &mut state, frames, stable)?;
                }
                cmd = rx.recv() => {
                    // The commands waiting are taken together: a reader's window of wants
                    // goes out as range requests (`flush`), not a request a block.
                    let mut cmd = cmd;
                    let mut batch = 0;
                    while let Some(c) = cmd.take() {
                        state.command(inner, c)?;
                        batch += 1;
                        if batch < COMMAND_BATCH {
                            cmd = rx.try_recv().ok();
                        }
                    }
                    state.flush();
                    if batch == 0 {
                        return Ok(());
                    }
                }
                _ = ended.notified() => return Ok(()),
                _ = tokio::time::sleep_until(deadline.into()) => state.tick()?,
            }
        }
    }
    .await;
    // Refused before it leaves the list of peers: whoever sees it gone sees it refused too.
    if let Err(NetError::Misbehaved(_)) = &result {
        inner.ban(id, address);
    }
    lock(&inner.conns).retain(|c| c.stable != stable);
    if let Err(e) = &result {
        tracing::warn!(peer = %hex_id(&id), error = %e, "dropping the peer");
    }
    // Readers still waiting hear that this peer will not answer.
    for ch in state.channels {
        for (_, waiters) in ch.waiting {
            for w in waiters {
                let _ = w.send(false);
            }
        }
    }
    result
}

/// What a connection's reader took off the wire at once: whole frames, each with the bytes it
/// took, and how many bytes came.
struct Arrival {
    frames: Vec<(Frame, usize)>,
    bytes: usize,
}

/// A task that is stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection's reader: takes whole frames off `recv` (`buf` first: what came with the
/// handshake) with its own copy of the codec, hashes the blocks of range answers
/// ([`hyperfs_engine::hypercore::RangeProof::hash_leaves`]), and hands each read's frames to the connection in order.
/// Reading waits while `arrived` is full (the connection reads nothing while much waits to
/// go), so what waits here is bounded. It ends when the peer closes (dropping `arrived`), on
/// an error (sent first), or when the connection is gone.
async fn read_frames<R: AsyncRead + Unpin>(
    mut recv: R,
    mut codec: Codec,
    mut buf: Vec<u8>,
    arrived: mpsc::Sender<Result<Arrival, NetError>>,
) {
    let mut bytes = buf.len();
    loop {
        let mut frames = Vec::new();
        let mut used = 0;
        loop {
            match codec.take(&mut buf[used..], &mut frames) {
                Ok(Some(len)) => used += len,
                Ok(None) => break,
                Err(e) => {
                    let _ = arrived.send(Err(e)).await;
                    return;
                }
            }
        }
        buf.drain(..used);
        let ranges = |f: &(Frame, usize)| matches!(f.0, Frame::Channel { message: Message::RangeData { .. }, .. });
        if frames.iter().any(ranges) {
            // On a thread of its own: the task that verifies runs on this one's worker thread
            // (a task it wakes runs next where it was woken).
            let hashed = tokio::task::spawn_blocking(move || {
                for (frame, _) in &mut frames {
                    if let Frame::Channel { message: Message::RangeData { proof, .. }, .. } = frame {
                        proof.hash_leaves();
                    }
                }
                frames
            });
            frames = match hashed.await {
                Ok(frames) => frames,
                Err(e) => {
                    let _ = arrived.send(Err(NetError::Io(format!("hashing what came: {e}")))).await;
                    return;
                }
            };
        }
        if bytes > 0 && arrived.send(Ok(Arrival { frames, bytes })).await.is_err() {
            return;
        }
        buf.reserve(READ_CHUNK);
        bytes = match recv.read_buf(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = arrived.send(Err(NetError::Io(e.to_string()))).await;
                return;
            }
        };
    }
}

/// Takes in the frames a read brought: each goes to its channel, what verified is stored, and
/// the other connections hear what this peer gave.
fn take_in(inner: &Inner, state: &mut ConnState, frames: Vec<(Frame, usize)>, stable: usize) -> Result<(), NetError> {
    for (frame, len) in frames {
        if let Frame::Channel { channel, message: Message::Data { .. } | Message::RangeData { .. } } = &frame {
            if let Some(ch) = state.channels.iter().find(|c| c.remote_id == Some(*channel)) {
                lock(&inner.transferred).entry(ch.key).or_default().1 += len as u64;
            }
        }
        state.on_frame(inner, frame)?;
    }
    state.store_arrivals();
    // What this peer gave, every other peer hears of (not this one: it knows).
    if !state.gained.is_empty() {
        let gained = std::mem::take(&mut state.gained);
        for c in lock(&inner.conns).iter().filter(|c| c.stable != stable) {
            for g in &gained {
                let _ = c.tx.send(Command::Gained { core: g.core, upgraded: g.upgraded, runs: g.runs.clone() });
            }
        }
    }
    Ok(())
}

/// Notes that a peer gave a new length (`block: None`) or block `block` of `core`: a block
/// right after the last run noted extends it.
fn note_gained(gained: &mut Vec<Gained>, core: CoreKey, block: Option<u64>) {
    let at = match gained.iter().position(|g| g.core == core) {
        Some(at) => at,
        None => {
            gained.push(Gained { core, upgraded: false, runs: Vec::new() });
            gained.len() - 1
        }
    };
    let g = &mut gained[at];
    match block {
        None => g.upgraded = true,
        Some(index) => match g.runs.last_mut() {
            Some((start, length)) if *start + *length == index => *length += 1,
            _ => g.runs.push((index, 1)),
        },
    }
}

fn hex_id(id: &PeerId) -> String {
    id.0.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

struct ConnState {
    channels: Vec<Channel>,
    out: Vec<Frame>,
    /// Proofs verified from this read's frames, by channel, waiting to be stored.
    arrivals: Vec<(u64, Vec<crate::session::Arrival>)>,
    secret: [u8; 64],
    dialer: bool,
    cores: Arc<Mutex<Vec<CoreKey>>>,
    next_local: u64,
    /// What this connection's peer gave since the other connections last heard of it.
    gained: Vec<Gained>,
    /// Whether this is a JS-wire connection: protomux's leniency (messages on channels not
    /// open are ignored, as protomux ignores them) and no hyperfs-only messages unless the
    /// peer opened the hello channel.
    js: bool,
    /// Set once a JS-wire peer opened the hello channel: a hyperfs node.
    hyperfs_flag: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Our hello channel, until the peer's hello came (then it may carry our cipher switch).
    hello: Option<u64>,
    /// Whether the peer opened the ranges channel: it answers range requests.
    ranges: bool,
    /// Blind-relay channels, ours and the peer's.
    relays: Vec<relay::RelayChannel>,
    /// The peer's blind-relay opens that wait for ours (`(remote id, id)`).
    relay_opens: Vec<(u64, Option<Vec<u8>>)>,
    /// Commands to this connection (a relay answers a pairing through them).
    me_tx: mpsc::UnboundedSender<Command>,
}

/// A verified new length or new blocks of one core, from one peer.
struct Gained {
    core: CoreKey,
    upgraded: bool,
    /// `(start, length)` runs of blocks, in the order they came.
    runs: Vec<(u64, u64)>,
}

impl ConnState {
    /// Whether the peer is a hyperfs node (it may be sent hyperfs's own messages).
    fn hyperfs_peer(&self) -> bool {
        !self.js || self.hyperfs_flag.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sends `open` for a core, unless ours stands already.
    fn open(&mut self, core: Arc<dyn SharedCore>) -> usize {
        let key = core.key();
        let i = match self.channels.iter().position(|c| c.key == key) {
            Some(i) => i,
            None => {
                let local_id = self.next_local;
                self.next_local += 1;
                self.channels.push(Channel {
                    core,
                    key,
                    local_id,
                    sent_open: false,
                    remote_id: None,
                    session: None,
                    waiting: HashMap::new(),
                    waiting_bytes: HashMap::new(),
                });
                self.channels.len() - 1
            }
        };
        let ch = &mut self.channels[i];
        if !ch.sent_open {
            ch.sent_open = true;
            self.out.push(Frame::Control(Control::Open {
                local_id: ch.local_id,
                protocol: PROTOCOL.into(),
                id: Some(crypto::discovery_key(&key).0.to_vec()),
                flags: 1,
                capability: capability(&self.secret, self.dialer, &key),
            }));
        }
        i
    }

    fn on_frame(&mut self, inner: &Inner, frame: Frame) -> Result<(), NetError> {
        match frame {
            Frame::Control(Control::Open { protocol, id, .. }) if protocol == HELLO => {
                // One that takes AES frames gets ours from after the switch on.
                if let (Some(channel), Some(HELLO_AES)) = (self.hello.take(), id.as_deref()) {
                    self.out.push(Frame::Channel { channel, message: Message::CipherSwitch });
                }
                // A hyperfs node on the JS wire: it gets hyperfs's own messages too.
                if let Some(flag) = &self.hyperfs_flag {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                for ch in &mut self.channels {
                    if let Some(s) = ch.session.as_mut() {
                        s.set_hyperfs_peer(true);
                    }
                }
            }
            Frame::Control(Control::Open { local_id, protocol, id, .. }) if protocol == crate::wire::BLIND_RELAY => {
                self.relay_opened(inner, local_id, id);
            }
            Frame::Channel { channel, message: Message::Other { kind, payload } } => {
                self.relay_message(inner, channel, kind, &payload);
            }
            Frame::Control(Control::Open { protocol, .. }) if protocol == RANGES => {
                self.ranges = true;
                for ch in &mut self.channels {
                    if let Some(s) = ch.session.as_mut() {
                        s.set_ranges(true);
                    }
                }
            }
            Frame::Control(Control::Open { local_id: remote_id, protocol, id, capability: cap, .. }) => {
                let dk: Option<DiscoveryKey> = id.as_deref().and_then(|d| d.try_into().ok()).map(DiscoveryKey);
                let found = dk.filter(|_| protocol == PROTOCOL).and_then(|dk| inner.shared.find(&dk));
                let Some(core) = found else {
                    self.out.push(Frame::Control(Control::Reject { remote_id }));
                    return Ok(());
                };
                let key = core.key();
                if capability(&self.secret, !self.dialer, &key) != cap {
                    return Err(NetError::Protocol("a channel opened with a wrong capability".into()));
                }
                let i = self.open(core);
                let hyperfs_peer = self.hyperfs_peer();
                let ch = &mut self.channels[i];
                if ch.remote_id.is_some() {
                    return Err(NetError::Protocol("a channel opened twice".into()));
                }
                ch.remote_id = Some(remote_id);
                let mut opened = None;
                ch.core.read(&mut |c| opened = Some(Session::open(c, ch.core.download_all(), Instant::now())));
                if let Some((mut session, out)) = opened {
                    let ms = inner.request_timeout_ms.load(std::sync::atomic::Ordering::SeqCst);
                    session.set_request_timeout(Duration::from_millis(ms));
                    session.share_claims(inner.claims(&key));
                    session.set_hyperfs_peer(hyperfs_peer);
                    session.set_ranges(self.ranges);
                    ch.session = Some(session);
                    lock(&self.cores).push(key);
                    self.emit(i, out);
                }
            }
            Frame::Control(Control::Reject { remote_id }) => {
                // The peer does not replicate that core (yet): open again when it does.
                if let Some(ch) = self.channels.iter_mut().find(|c| c.local_id == remote_id && c.session.is_none()) {
                    ch.sent_open = false;
                }
            }
            Frame::Control(Control::Close { local_id }) => {
                if let Some(i) = self.channels.iter().position(|c| c.remote_id == Some(local_id)) {
                    let ch = self.channels.remove(i);
                    tracing::debug!(core = %crypto::to_hex(&ch.key.0[..6]), "the peer closed a channel");
                    lock(&self.cores).retain(|k| *k != ch.key);
                    for (_, waiters) in ch.waiting {
                        for w in waiters {
                            let _ = w.send(false);
                        }
                    }
                }
            }
            Frame::Channel { channel, message } => {
                let Some(i) = self.channels.iter().position(|c| c.remote_id == Some(channel)) else {
                    if self.js {
                        // As protomux does: a channel closed here may still hear the peer's
                        // last messages.
                        return Ok(());
                    }
                    return Err(NetError::Protocol(format!("a message on channel {channel}, which is not open")));
                };
                let ch = &mut self.channels[i];
                let Some(session) = ch.session.as_mut() else { return Ok(()) };
                let now = Instant::now();
                let mut result = None;
                let mut message = Some(message);
                ch.core.read(&mut |c| {
                    if let Some(m) = message.take() {
                        result = Some(session.on_message(c, m, now));
                    }
                });
                let mut out = match result {
                    Some(Ok(out)) => out,
                    Some(Err(m)) => return Err(NetError::Misbehaved(m.0)),
                    None => return Ok(()),
                };
                // What verified waits for the rest of this read, then is stored through the
                // core's owner in one go (`store_arrivals`).
                let arrivals = std::mem::take(&mut out.store);
                // Readers of a block's bytes have them as soon as they verify.
                let ch = &mut self.channels[i];
                if !ch.waiting_bytes.is_empty() {
                    for a in &arrivals {
                        let Some(index) = a.verified.block() else { continue };
                        for w in ch.waiting_bytes.remove(&index).unwrap_or_default() {
                            let _ = w.send(a.verified.block_bytes().map(<[u8]>::to_vec));
                        }
                    }
                }
                if !arrivals.is_empty() {
                    let id = self.channels[i].local_id;
                    match self.arrivals.iter_mut().find(|a| a.0 == id) {
                        Some(a) => a.1.extend(arrivals),
                        None => self.arrivals.push((id, arrivals)),
                    }
                }
                self.emit(i, out)
            }
        }
        Ok(())
    }

    /// Stores what this read's frames verified, a channel at a time through its core's owner
    /// (runs of plain blocks in one commit), then tells each session how it went.
    fn store_arrivals(&mut self) {
        let now = Instant::now();
        for (id, arrivals) in std::mem::take(&mut self.arrivals) {
            let Some(i) = self.channels.iter().position(|c| c.local_id == id) else { continue };
            let (verified, receipts): (Vec<_>, Vec<_>) = arrivals.into_iter().map(|a| a.into_parts()).unzip();
            let ch = &mut self.channels[i];
            let mut verified = Some(verified);
            let mut results = Vec::new();
            // A whole-core download's bytes go past the page cache: nothing reads them back soon.
            let past_cache = ch.core.download_all();
            ch.core
                .write(&mut |c| results = verified.take().map(|v| c.store_arrivals(v, past_cache)).unwrap_or_default());
            let mut out = Output::default();
            if let Some(session) = ch.session.as_mut() {
                let mut done = Some(receipts.into_iter().zip(results));
                ch.core.read(&mut |c| {
                    for (receipt, result) in done.take().into_iter().flatten() {
                        let more = session.stored(c, receipt, result, now);
                        out.messages.extend(more.messages);
                        out.events.extend(more.events);
                    }
                });
            }
            self.emit(i, out);
        }
    }

    /// Queues a session's messages, settles waiting readers and notes what the peer gave.
    fn emit(&mut self, i: usize, out: Output) {
        let ch = &mut self.channels[i];
        for m in out.messages {
            self.out.push(Frame::Channel { channel: ch.local_id, message: m });
        }
        if out.events.iter().any(|e| matches!(e, Event::Upgraded { .. } | Event::Block { .. })) {
            ch.core.stored();
        }
        for e in out.events {
            match e {
                Event::Upgraded { .. } => note_gained(&mut self.gained, ch.key, None),
                Event::Block { index } => note_gained(&mut self.gained, ch.key, Some(index)),
                _ => {}
            }
            if let Event::Block { index } | Event::Missing { index } = e {
                let waiters = ch.waiting_bytes.remove(&index).unwrap_or_default();
                if !waiters.is_empty() {
                    let mut bytes = None;
                    if matches!(e, Event::Block { .. }) {
                        ch.core.read(&mut |c| bytes = c.get(index).ok());
                    }
                    for w in waiters {
                        let _ = w.send(bytes.clone());
                    }
                }
            }
            let (what, ok) = match e {
                Event::Block { index } => (Wanted::Block(index), true),
                Event::Missing { index } => (Wanted::Block(index), false),
                Event::Sought { bytes, ok } => (Wanted::Seek(bytes), ok),
                _ => continue,
            };
            for w in ch.waiting.remove(&what).unwrap_or_default() {
                let _ = w.send(ok);
            }
        }
    }

    /// Does what a command asks.
    fn command(&mut self, inner: &Inner, cmd: Command) -> Result<(), NetError> {
        match cmd {
            Command::Want { core, what, reply } => self.want(core, what, reply),
            Command::WantBytes { core, index, reply } => self.want_bytes(core, index, reply),
            Command::Changed { core } => self.changed(inner, core),
            Command::Gained { core, upgraded, runs } => self.gained(core, upgraded, &runs),
            Command::Close { core } => self.close(core),
            Command::Raw { core, messages } => {
                if let Some(ch) = self.channels.iter().find(|c| c.key == core && c.remote_id.is_some()) {
                    let channel = ch.local_id;
                    self.out.extend(messages.into_iter().map(|message| Frame::Channel { channel, message }));
                }
            }
            Command::Send(frame) => self.out.push(frame),
            Command::RelayPair { pair, reply } => self.relay_pair(&inner.me, pair, reply),
            Command::Refresh => {
                for core in inner.shared.cores() {
                    self.open(core);
                }
                for ch in &mut self.channels {
                    let all = ch.core.download_all();
                    if let Some(s) = ch.session.as_mut() {
                        s.set_download_all(all);
                    }
                }
                self.tick()?;
            }
        }
        Ok(())
    }

    /// After a batch of commands: the blocks they wanted are asked for, in runs.
    fn flush(&mut self) {
        let now = Instant::now();
        for i in 0..self.channels.len() {
            let ch = &mut self.channels[i];
            let mut out = Output::default();
            if let Some(session) = ch.session.as_mut() {
                ch.core.read(&mut |c| session.flush(c, now, &mut out));
            }
            if !out.messages.is_empty() || !out.events.is_empty() {
                self.emit(i, out);
            }
        }
    }

    fn want(&mut self, core: CoreKey, what: Wanted, reply: oneshot::Sender<bool>) {
        let Some(i) = self.channel_of(&core) else {
            let _ = reply.send(false);
            return;
        };
        self.channels[i].waiting.entry(what).or_default().push(reply);
        let cannot = match what {
            Wanted::Block(index) => Event::Missing { index },
            Wanted::Seek(bytes) => Event::Sought { bytes, ok: false },
        };
        self.ask_peer(i, cannot, |session, c, now, out| match what {
            Wanted::Block(index) => session.want(c, index, now, out),
            Wanted::Seek(bytes) => session.seek(c, bytes, now, out),
        });
    }

    fn want_bytes(&mut self, core: CoreKey, index: u64, reply: oneshot::Sender<Option<Vec<u8>>>) {
        let Some(i) = self.channel_of(&core) else {
            let _ = reply.send(None);
            return;
        };
        self.channels[i].waiting_bytes.entry(index).or_default().push(reply);
        self.ask_peer(i, Event::Missing { index }, |session, c, now, out| session.ask(c, index, now, out));
    }

    /// The channel of `core` with a session.
    fn channel_of(&self, core: &CoreKey) -> Option<usize> {
        self.channels.iter().position(|c| c.key == *core && c.session.is_some())
    }

    /// Has channel `i`'s session ask its peer (`ask`); a peer that cannot help says so now
    /// (`cannot`) rather than at the timeout.
    fn ask_peer(
        &mut self,
        i: usize,
        cannot: Event,
        mut ask: impl FnMut(&mut Session, &Hypercore, Instant, &mut Output) -> bool,
    ) {
        let ch = &mut self.channels[i];
        let mut out = Output::default();
        let mut asked = false;
        if let Some(session) = ch.session.as_mut() {
            let now = Instant::now();
            ch.core.read(&mut |c| asked = ask(session, c, now, &mut out));
        }
        if !asked && out.events.is_empty() {
            out.events.push(cannot);
        }
        self.emit(i, out);
    }

    fn close(&mut self, core: CoreKey) {
        let Some(i) = self.channels.iter().position(|c| c.key == core) else { return };
        let ch = self.channels.remove(i);
        self.out.push(Frame::Control(Control::Close { local_id: ch.local_id }));
        lock(&self.cores).retain(|k| *k != core);
        for (_, waiters) in ch.waiting {
            for w in waiters {
                let _ = w.send(false);
            }
        }
    }

    fn changed(&mut self, inner: &Inner, core: CoreKey) {
        if self.js && self.channel_of(&core).is_none() {
            // A JS peer closes a channel both sides idle on (Hypercore's `closeIfIdle`) and
            // opens it again only for what it wants; news of ours opens it again from here.
            if let Some(c) = inner.shared.cores().into_iter().find(|c| c.key() == core) {
                self.open(c);
            }
            return;
        }
        self.gained(core, true, &[]);
    }

    /// Tells the peer of a new length (`upgraded`) and of blocks this node now has.
    fn gained(&mut self, core: CoreKey, upgraded: bool, runs: &[(u64, u64)]) {
        let Some(i) = self.channel_of(&core) else {
            tracing::trace!(core = %crypto::to_hex(&core.0[..6]), "news of a core with no channel open");
            return;
        };
        let ch = &mut self.channels[i];
        let mut out = Output::default();
        if let Some(session) = ch.session.as_mut() {
            ch.core.read(&mut |c| {
                if upgraded {
                    session.local_changed(c, &mut out);
                    tracing::trace!(length = c.length(), messages = out.messages.len(), "news of a core told");
                }
                for &(start, length) in runs {
                    session.local_have(c, start, length, &mut out);
                }
            });
        }
        self.emit(i, out);
    }

    fn deadline(&self) -> Option<Instant> {
        self.channels.iter().filter_map(|c| c.session.as_ref().and_then(Session::deadline)).min()
    }

    fn tick(&mut self) -> Result<(), NetError> {
        let now = Instant::now();
        for i in 0..self.channels.len() {
            let ch = &mut self.channels[i];
            let mut out = None;
            if let Some(session) = ch.session.as_mut() {
                ch.core.read(&mut |c| out = Some(session.tick(c, now)));
            }
            match out {
                Some(Ok(out)) => self.emit(i, out),
                // A silent peer is let go, not banned: it may only be slow or cut off.
                Some(Err(m)) => return Err(NetError::Io(m.0)),
                None => {}
            }
        }
        Ok(())
    }
}

pub mod hyperdht;
mod relay;

#[cfg(test)]
mod tests;
