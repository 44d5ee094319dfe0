//! Connections through HyperDHT, both sides (reference holepunch-wire §7.4–7.7).
//!
//! The client: its handshake goes to a node holding the server's registration, which relays it;
//! then the path. An open server, or one that answered straight, is dialed at its address. A
//! server behind a NAT gave a handshake slot and its relays: two PEER_HOLEPUNCH rounds through
//! the relay tell each side the other's NAT and addresses (sealed with the handshake's holepunch
//! secret, tokens proving the addresses the relay saw), then both send probes
//! ([`crate::holepunch::Puncher`]) and the client's stream goes to where the first probe it
//! hears came from.
//!
//! The server: every relayed handshake gets a slot (bounded, short-lived) holding the sealing
//! keys and a responder's puncher; holepunch rounds update it, and once the client says it
//! punches, the server punches back until the client's stream arrives.
//!
//! Everything runs on the one UDX socket that carries the DHT client's datagrams: the address
//! DHT nodes see is the one peers punch to and the stream runs on.

use std::net::{SocketAddrV4, SocketAddrV6};

use super::*;
use crate::dht::{command, Client, Holepunch, NoisePayload, Request, Shaken};
use crate::holepunch::{holepunch_secret, Action, Firewall, Payload, Puncher, RemoteAddress, SecurePayload};
use crate::udx_socket::UdxSocket;

/// How long a punch may take before the connection is given up (the random strategies' 1,750
/// probes 20 ms apart, with room; the consistent one ends after its ten rounds a second apart).
pub(super) const PUNCH_TIMEOUT: Duration = Duration::from_secs(40);
/// Punches with a random NAT on either side that run at once (each opens up to 256 sockets or
/// sends 1,750 probes); past this, a server answers TRY_LATER and a client takes a relay.
const MAX_RANDOM_PUNCHES: usize = 2;
/// HyperDHT's error for "too many punches now".
const TRY_LATER: u64 = 3;

/// The random punches running (see [`MAX_RANDOM_PUNCHES`]).
#[derive(Default)]
pub(super) struct RandomPunches(Arc<std::sync::atomic::AtomicUsize>);

/// One of them, given back when dropped.
pub(super) struct RandomPunch(Arc<std::sync::atomic::AtomicUsize>);

impl RandomPunches {
    pub(super) fn take(&self) -> Option<RandomPunch> {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.fetch_update(SeqCst, SeqCst, |n| (n < MAX_RANDOM_PUNCHES).then_some(n + 1)).ok()?;
        Some(RandomPunch(self.0.clone()))
    }
}

impl Drop for RandomPunch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Handshake slots a server keeps for punches, and how long one lives.
const SLOTS: usize = 64;
const SLOT_LIFE: Duration = Duration::from_secs(60);

/// One relayed handshake a server keeps for the holepunch rounds that may follow.
struct Slot {
    /// Set once the handshake finished (its hash keys the seal).
    secure: Option<SecurePayload>,
    round: u64,
    puncher: Arc<Mutex<Puncher>>,
    created: Instant,
    punching: bool,
    /// The streams' ids, and where one that comes on a birthday socket goes.
    came: Option<((u32, u32), mpsc::Sender<crate::udx_socket::Accepted>)>,
}

/// A server's handshake slots, by the id its Noise payload gave.
#[derive(Default)]
pub(super) struct Slots(Mutex<Vec<Option<Slot>>>);

impl Slots {
    /// A free slot for a handshake in progress; `None` when all are taken.
    fn take(&self, local: Firewall) -> Option<u64> {
        let mut slots = lock(&self.0);
        for s in slots.iter_mut() {
            if s.as_ref().is_some_and(|s| s.created.elapsed() > SLOT_LIFE) {
                *s = None;
            }
        }
        let slot = Slot {
            secure: None,
            round: 0,
            puncher: Arc::new(Mutex::new(Puncher::new(false, local, rand::random()))),
            created: Instant::now(),
            punching: false,
            came: None,
        };
        let at = match slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if slots.len() < SLOTS => {
                slots.push(None);
                slots.len() - 1
            }
            None => return None,
        };
        slots[at] = Some(slot);
        Some(at as u64)
    }

    /// The handshake of slot `id` finished with `done`: its holepunch rounds can be opened.
    /// Its streams are `ids` (ours, the client's): one that comes on a birthday socket of the
    /// punch comes out of the returned receiver.
    pub(super) fn finished(
        &self,
        id: u64,
        done: &crate::noise::Done,
        ids: (u32, u32),
    ) -> Option<mpsc::Receiver<crate::udx_socket::Accepted>> {
        let mut slots = lock(&self.0);
        let s = slots.get_mut(id as usize)?.as_mut()?;
        s.secure = Some(SecurePayload::new(holepunch_secret(&done.hash), rand::random()));
        let (tx, rx) = mpsc::channel(1);
        s.came = Some((ids, tx));
        Some(rx)
    }

    /// Frees slot `id` (its handshake failed).
    pub(super) fn free(&self, id: u64) {
        if let Some(s) = lock(&self.0).get_mut(id as usize) {
            *s = None;
        }
    }

    /// Whether slot `id`'s client punched.
    pub(super) fn punched(&self, id: u64) -> Option<bool> {
        lock(&self.0).get(id as usize)?.as_ref().map(|s| s.punching)
    }

    pub(super) fn puncher(&self, id: u64) -> Option<Arc<Mutex<Puncher>>> {
        lock(&self.0).get(id as usize)?.as_ref().map(|s| s.puncher.clone())
    }
}

/// The topic hyperfs nodes that relay (`--relay`) announce themselves under on HyperDHT.
pub fn relay_topic() -> [u8; 32] {
    crypto::hash(&[b"hyperfs/relay/1"])
}

/// How long a punch goes alone before a relay races it.
const RELAY_AFTER: Duration = Duration::from_secs(3);

/// Connects to the HyperDHT server of `public_key`: the handshake through a node that holds its
/// registration, then the path (direct or punched), the UDX stream and secret-stream. When no
/// punch can join the two NATs the connection goes through a relay; a punch that has not
/// joined them within [`RELAY_AFTER`] races one (a router that took the other side's first
/// probe in keeps the punch from ever working), and the first to connect is kept.
pub(super) async fn connect(inner: &Arc<Inner>, public_key: [u8; 32]) -> Result<(PeerId, Path), NetError> {
    let both = |e: NetError, r: NetError| NetError::Io(format!("{e}; and through a relay: {r}"));
    let mut direct = Box::pin(connect_without_relay(inner, public_key));
    match tokio::time::timeout(RELAY_AFTER, &mut direct).await {
        Ok(Ok(done)) => return done,
        Ok(Err(Unpunched(e))) => {
            tracing::info!(error = %e, "no punch: trying a relay");
            return Box::pin(connect_relayed(inner, public_key)).await.map_err(|r| both(e, r));
        }
        Err(_) => {}
    }
    let mut relayed = Box::pin(connect_relayed(inner, public_key));
    tokio::select! {
        r = &mut direct => match r {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) | Err(Unpunched(e)) => relayed.await.map_err(|r| both(e, r)),
        },
        r = &mut relayed => match r {
            Ok(done) => Ok(done),
            // No relay: the punch may still come through.
            Err(r) => match direct.await {
                Ok(done) => done,
                Err(Unpunched(e)) => Err(both(e, r)),
            },
        },
    }
}

/// A connection that failed for want of a punch (a relay may still join the two).
struct Unpunched(NetError);

async fn connect_without_relay(
    inner: &Arc<Inner>,
    public_key: [u8; 32],
) -> Result<Result<(PeerId, Path), NetError>, Unpunched> {
    let client = match dht_client(inner).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let Some(socket) = client.udx() else {
        return Ok(Err(NetError::Io("HyperDHT runs without a UDX socket".into())));
    };
    let fail = |e: String| NetError::Io(format!("connecting to {}: {e}", crypto::to_hex(&public_key)));
    let started = Instant::now();
    client.sample_nat().await;
    let (firewall, addresses, _) = client.nat();
    tracing::debug!(ms = started.elapsed().as_millis() as u64, firewall = firewall.name(), "NAT known");
    let udx_id = rand::random::<u32>();
    let reach = inner.reach(firewall, &addresses);
    let have6 = !reach.addresses6.is_empty();
    let shaken = match client.handshake(public_key, inner.noise.clone(), udx_id, reach, None).await {
        Ok(s) => s,
        Err(e) => return Ok(Err(fail(e))),
    };
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "handshake done");
    let v6: Vec<SocketAddrV6> = if have6 { shaken.payload.addresses6.clone() } else { Vec::new() };
    let over_ipv4 = finish(inner, &client, &socket, shaken, udx_id, firewall, addresses, fail);
    if v6.is_empty() {
        return over_ipv4.await;
    }
    // Both have IPv6: no NAT there (as a rule), so the server's IPv6 addresses are dialed
    // straight while the IPv4 path is made, and the first connection wins.
    let mut over_ipv4 = Box::pin(over_ipv4);
    let mut over_ipv6 = Box::pin(dial_v6(inner, public_key, v6));
    tokio::select! {
        r = &mut over_ipv4 => match r {
            Ok(Ok(done)) => Ok(Ok(done)),
            failed => match over_ipv6.await {
                Ok(id) => Ok(Ok((id, Path::Direct))),
                Err(e) => {
                    tracing::debug!(error = %e, "no IPv6 path either");
                    failed
                }
            },
        },
        r = &mut over_ipv6 => match r {
            Ok(id) => Ok(Ok((id, Path::Direct))),
            Err(e) => {
                tracing::debug!(error = %e, "no IPv6 path: IPv4's goes on");
                over_ipv4.await
            }
        },
    }
}

impl Inner {
    /// Where this node says it is in a HyperDHT handshake as a client.
    fn reach(&self, firewall: Firewall, addresses: &[SocketAddrV4]) -> crate::dht::Reach {
        crate::dht::Reach { firewall, addresses: addresses.to_vec(), addresses6: self.addresses6() }
    }
}

/// Whether an IPv6 address a peer gave is one to dial: a unicast address other hosts can have
/// (not loopback, unspecified, multicast, link-local or IPv4-mapped).
pub(super) fn dialable6(a: &SocketAddrV6) -> bool {
    let ip = a.ip();
    let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
    a.port() != 0
        && !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
        && ip.to_ipv4_mapped().is_none()
}

/// A HyperDHT server with IPv6 (the caller checks) dials a client's IPv6 addresses (from its
/// handshake) while the client dials the server's: each side's packets open its own firewall
/// for the other's, so two hosts whose routers drop unasked IPv6 packets still meet. The dials
/// are this node's only work for it, at most [`MAX_ADDRESSES6`] of them.
pub(super) fn dial_back_v6(inner: &Arc<Inner>, client_key: [u8; 32], addresses: &[SocketAddrV6]) {
    for a in addresses.iter().filter(|a| dialable6(a)).take(MAX_ADDRESSES6) {
        let (inner, to) = (inner.clone(), *a);
        tokio::spawn(async move {
            match dial_key_at(&inner, client_key, to).await {
                Ok(_) => tracing::info!(address = %to, "dialed a HyperDHT client over IPv6"),
                Err(e) => tracing::debug!(address = %to, error = %e, "dialing a HyperDHT client over IPv6"),
            }
        });
    }
}

/// Dials the node of `key` at `to` (an IPv6 address a handshake named) as any hyperfs node's
/// address is dialed, within [`DIAL6_TIMEOUT`]. Another node found there is let go.
async fn dial_key_at(inner: &Arc<Inner>, key: [u8; 32], to: SocketAddrV6) -> Result<PeerId, NetError> {
    let to = SocketAddr::V6(to);
    let tcp_first = inner.prefer_tcp.load(std::sync::atomic::Ordering::Relaxed);
    match tokio::time::timeout(DIAL6_TIMEOUT, dial_node(inner, to, tcp_first)).await {
        Ok(Ok(id)) if id.0 == key => Ok(id),
        Ok(Ok(id)) => {
            if let Some(c) = lock(&inner.conns).iter().find(|c| c.id == id && c.address == to) {
                c.link.close(b"not the key dialed");
            }
            Err(NetError::Io(format!("{to} is another node ({})", crypto::to_hex(&id.0))))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetError::Io(format!("{to} did not answer within {DIAL6_TIMEOUT:?}"))),
    }
}

/// Dials the IPv6 addresses a HyperDHT server's answer gave, one after another, as any
/// hyperfs node's address is dialed; the node there must be the one of `public_key`. The
/// server dials this node's too ([`dial_back_v6`]): its connection, coming in, does as well.
async fn dial_v6(inner: &Arc<Inner>, public_key: [u8; 32], addresses: Vec<SocketAddrV6>) -> Result<PeerId, NetError> {
    let came = || lock(&inner.conns).iter().find(|c| c.id.0 == public_key && c.address.is_ipv6()).map(|c| c.id);
    let watch = async {
        loop {
            if let Some(id) = came() {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let dials = dial_each_v6(inner, public_key, addresses);
    tokio::pin!(watch);
    tokio::select! {
        id = &mut watch => Ok(id),
        r = dials => match r {
            Ok(id) => Ok(id),
            // The server's dial may still come through.
            Err(e) => tokio::time::timeout(DIAL6_TIMEOUT, watch).await.map_err(|_| e),
        },
    }
}

async fn dial_each_v6(
    inner: &Arc<Inner>,
    public_key: [u8; 32],
    addresses: Vec<SocketAddrV6>,
) -> Result<PeerId, NetError> {
    let mut errors = Vec::new();
    for a in addresses.into_iter().filter(dialable6).take(MAX_ADDRESSES6) {
        match dial_key_at(inner, public_key, a).await {
            Ok(id) => {
                tracing::info!(address = %a, "connected over IPv6");
                return Ok(id);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(NetError::Io(format!("over IPv6: {}", errors.join("; "))))
}

/// After the handshake: the path, the stream, secret-stream and the connection. A punch that
/// cannot work or did not comes back as [`Unpunched`].
#[allow(clippy::too_many_arguments)]
async fn finish(
    inner: &Arc<Inner>,
    client: &Arc<Client>,
    socket: &Arc<crate::udx_socket::UdxSocket>,
    shaken: Shaken,
    udx_id: u32,
    firewall: Firewall,
    addresses: Vec<SocketAddrV4>,
    fail: impl Fn(String) -> NetError,
) -> Result<Result<(PeerId, Path), NetError>, Unpunched> {
    let relayed = shaken.server != shaken.relay;
    let holepunch = shaken.payload.holepunch.as_ref().filter(|(_, relays)| !relays.is_empty());
    let server_open = Firewall::from_u64(shaken.payload.firewall) == Firewall::Open;
    let (pipe, remote, path) = if server_open || !relayed || holepunch.is_none() {
        // Straight to the server: it is open, answered from where it is, or cannot be punched
        // to (then its first address is all there is to try).
        let to = if relayed { shaken.payload.addresses4.first().copied() } else { None };
        let remote = SocketAddr::V4(to.unwrap_or(shaken.server));
        (socket.open(udx_id, shaken.udx as u32, remote), remote, Path::Direct)
    } else if firewall == Firewall::Open {
        // We are open: the server connects to us, as HyperDHT's servers do.
        let bound = socket.expect(udx_id, shaken.udx as u32);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, bound).await {
            Ok(Ok((pipe, remote))) => (pipe, remote, Path::Direct),
            Ok(Err(_)) => return Ok(Err(fail("the UDX socket closed".into()))),
            Err(_) => return Err(Unpunched(fail("the server did not connect back within 10 s".into()))),
        }
    } else if let Some((pipe, remote)) = lan_shortcut(client, socket, &shaken, &addresses, udx_id).await {
        (pipe, remote, Path::Direct)
    } else {
        match punch(client, &inner.random_punches, &shaken, firewall, addresses).await {
            Ok((through, to)) => {
                tracing::debug!(%to, "punched");
                let to = SocketAddr::V4(to);
                (through.open(udx_id, shaken.udx as u32, to), to, Path::Punched)
            }
            Err(e) => return Err(Unpunched(fail(e))),
        }
    };
    Ok(stream(inner, pipe, remote, path, shaken.done).await)
}

/// How long a LAN address of the server is given to answer a PING.
const LAN_PING: Duration = Duration::from_millis(500);

/// Two nodes behind one NAT (the same public IP): the server's handshake answer names its LAN
/// address beside its public one, and when that answers a PING the stream goes there, with no
/// punch (a NAT rarely takes its own hosts' packets back in towards themselves). Returns the
/// stream and where it goes.
async fn lan_shortcut(
    client: &Client,
    socket: &Arc<UdxSocket>,
    shaken: &Shaken,
    ours: &[SocketAddrV4],
    udx_id: u32,
) -> Option<(tokio::io::DuplexStream, SocketAddr)> {
    if !ours.iter().any(|a| a.ip() == shaken.server.ip()) {
        return None;
    }
    let lan = shaken.payload.addresses4.iter().filter(|a| a.ip() != shaken.server.ip() && a.port() != 0);
    for a in lan.take(2) {
        if client.ping_once(*a, LAN_PING).await {
            tracing::debug!(address = %a, "the server is on this node's LAN");
            let to = SocketAddr::V4(*a);
            return Some((socket.open(udx_id, shaken.udx as u32, to), to));
        }
    }
    None
}

/// This node's address on its LAN, as the UDX socket `socket` is reached there: the IP the
/// host sends from towards `towards` (a DHT node), with the socket's port.
pub(super) fn lan_address(socket: &UdxSocket, towards: SocketAddrV4) -> Option<SocketAddrV4> {
    let port = socket.local_addr().ok()?.port();
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    probe.connect(towards).ok()?;
    match probe.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(SocketAddrV4::new(*a.ip(), port)),
        _ => None,
    }
}

/// Secret-stream as the initiator over `pipe`, keyed by the HyperDHT handshake, and the
/// connection that runs on it.
async fn stream(
    inner: &Arc<Inner>,
    pipe: tokio::io::DuplexStream,
    remote: SocketAddr,
    path: Path,
    done: crate::noise::Done,
) -> Result<(PeerId, Path), NetError> {
    let (pipe, opened) = open_secret_stream_after(pipe, true, inner.noise.clone(), Some(done)).await?;
    let id = start_stream(inner, tokio::io::split(pipe), remote, opened, Transport::Udx, path).await?;
    Ok((id, path))
}

/// Connects to `public_key` through a blind relay: a hyperfs node that relays (found under
/// [`relay_topic`]), the token in the handshake's `relayThrough` so the server pairs there too.
async fn connect_relayed(inner: &Arc<Inner>, public_key: [u8; 32]) -> Result<(PeerId, Path), NetError> {
    let client = dht_client(inner).await?;
    let socket = client.udx().ok_or_else(|| NetError::Io("HyperDHT runs without a UDX socket".into()))?;
    // The relays named first, then those announced.
    let mut relays: Vec<[u8; 32]> = lock(&inner.relay_keys).clone();
    for p in client.lookup(relay_topic()).await {
        if !relays.contains(&p.public_key) {
            relays.push(p.public_key);
        }
    }
    relays.retain(|k| *k != inner.me.0 && *k != public_key);
    let mut last = NetError::Io("no relay named (--relay-through) or announced on HyperDHT".into());
    for relay in relays.into_iter().take(3) {
        match through(inner, &client, &socket, public_key, relay).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::info!(relay = %crypto::to_hex(&relay[..6]), error = %e, "a relay did not join us");
                last = e;
            }
        }
    }
    Err(last)
}

/// The connection to `public_key` through relay `relay`.
async fn through(
    inner: &Arc<Inner>,
    client: &Arc<Client>,
    socket: &Arc<crate::udx_socket::UdxSocket>,
    public_key: [u8; 32],
    relay: [u8; 32],
) -> Result<(PeerId, Path), NetError> {
    let (relay_conn, relay_at) = relay_connection(inner, relay).await?;
    let token: [u8; 32] = rand::random();
    let (firewall, addresses, _) = client.nat();
    let udx_id = rand::random::<u32>();
    let through = crate::dht::RelayThrough { version: 1, flags: 0, public_key: relay, token };
    let shaken = client
        .handshake(public_key, inner.noise.clone(), udx_id, inner.reach(firewall, &addresses), Some(through))
        .await
        .map_err(NetError::Io)?;
    let relay_stream = pair(&relay_conn, true, token, udx_id).await?;
    let pipe = socket.open(udx_id, relay_stream, relay_at);
    stream(inner, pipe, relay_at, Path::Relayed, shaken.done).await
}

/// The connection to relay `relay` (made through HyperDHT unless one runs): its commands and
/// its address.
async fn relay_connection(
    inner: &Arc<Inner>,
    relay: [u8; 32],
) -> Result<(mpsc::UnboundedSender<Command>, SocketAddr), NetError> {
    let find = || lock(&inner.conns).iter().find(|c| c.id.0 == relay).map(|c| (c.tx.clone(), c.address));
    if let Some(found) = find() {
        return Ok(found);
    }
    Box::pin(connect_without_relay(inner, relay))
        .await
        .map_err(|Unpunched(e)| e)?
        .map_err(|e| NetError::Io(format!("reaching the relay: {e}")))?;
    find().ok_or_else(|| NetError::Io("the relay's connection closed".into()))
}

/// Pairs our UDX stream `udx_id` under `token` at the relay `conn` leads to; the relay's stream
/// id to connect it to.
async fn pair(
    conn: &mpsc::UnboundedSender<Command>,
    initiator: bool,
    token: [u8; 32],
    udx_id: u32,
) -> Result<u32, NetError> {
    let (reply, answer) = oneshot::channel();
    let pair = super::relay::Pair { initiator, token, id: u64::from(udx_id), seq: 0 };
    conn.send(Command::RelayPair { pair, reply }).map_err(|_| NetError::Io("the relay's connection closed".into()))?;
    tracing::debug!(initiator, udx_id, "pairing at a relay");
    match tokio::time::timeout(RELAY_WAIT, answer).await {
        Ok(Ok(id)) => {
            tracing::debug!(initiator, relay_stream = id, "paired at the relay");
            Ok(id)
        }
        Ok(Err(_)) => Err(NetError::Io("the relay's connection closed".into())),
        Err(_) => Err(NetError::Io(format!("the relay paired nobody within {} s", RELAY_WAIT.as_secs()))),
    }
}

/// How long a pairing at a relay may wait for the other side.
const RELAY_WAIT: Duration = Duration::from_secs(15);

/// The server's side of a connection a client asked to go through a relay (its Noise payload's
/// `relayThrough`): to the relay, pair there as the other half, and the stream through it.
pub(super) fn serve_relayed(
    inner: &Arc<Inner>,
    through: crate::dht::RelayThrough,
    our_id: u32,
    done: crate::noise::Done,
) {
    let inner = inner.clone();
    tokio::spawn(async move {
        let result = async {
            let client = dht_client(&inner).await?;
            let socket = client.udx().ok_or_else(|| NetError::Io("HyperDHT runs without a UDX socket".into()))?;
            let (relay_conn, relay_at) = relay_connection(&inner, through.public_key).await?;
            let relay_stream = pair(&relay_conn, false, through.token, our_id).await?;
            let pipe = socket.open(our_id, relay_stream, relay_at);
            let (pipe, opened) = open_secret_stream_after(pipe, false, inner.noise.clone(), Some(done)).await?;
            let io = tokio::io::split(pipe);
            run_stream(inner.clone(), io, relay_at, false, opened, Transport::Udx, Path::Relayed).await
        }
        .await;
        if let Err(e) = result {
            tracing::info!(error = %e, "a peer that came through a relay left");
        }
    });
}

/// The sockets a punch probes from: the node's own (0, whose probes come through the DHT
/// client) and the "birthday" sockets a punch from behind a random NAT opens (1..), each with
/// its probes from the IP punched to. Birthday sockets carry no stream unless one is kept
/// ([`PunchSockets::keep`]); the others are closed when the punch ends.
struct PunchSockets {
    client: Arc<Client>,
    main: Arc<UdxSocket>,
    extra: Vec<Arc<UdxSocket>>,
    ip: std::net::Ipv4Addr,
    tx: mpsc::Sender<(usize, SocketAddrV4)>,
    probes: mpsc::Receiver<(usize, SocketAddrV4)>,
    kept: Option<usize>,
    /// Hands the node socket's probes on; ends with the punch.
    _forward: AbortOnDrop,
}

impl PunchSockets {
    fn new(client: &Arc<Client>, ip: std::net::Ipv4Addr) -> Result<PunchSockets, String> {
        let main = client.udx().ok_or("HyperDHT runs without a UDX socket")?;
        let (tx, probes) = mpsc::channel(64);
        let mut from_main = client.probes_from(ip);
        let to_punch = tx.clone();
        let _forward = AbortOnDrop(tokio::spawn(async move {
            while let Some(from) = from_main.recv().await {
                let _ = to_punch.try_send((0, from));
            }
        }));
        Ok(PunchSockets { client: client.clone(), main, extra: Vec::new(), ip, tx, probes, kept: None, _forward })
    }

    /// Opens the next birthday socket.
    async fn open(&mut self) {
        let index = self.extra.len() + 1;
        let Ok(s) = UdxSocket::bind(([0, 0, 0, 0], 0).into(), None).await else { return };
        let mut plain = s.plain();
        let (tx, ip) = (self.tx.clone(), self.ip);
        tokio::spawn(async move {
            while let Some((d, from)) = plain.recv().await {
                if let (1, SocketAddr::V4(from)) = (d.len(), from) {
                    if *from.ip() == ip && tx.try_send((index, from)).is_err() && tx.is_closed() {
                        return;
                    }
                }
            }
        });
        self.extra.push(s);
    }

    fn socket(&self, index: usize) -> Option<&Arc<UdxSocket>> {
        if index == 0 {
            Some(&self.main)
        } else {
            self.extra.get(index - 1)
        }
    }

    /// A probe from socket `index` (at a TTL that dies before the other NAT when `low_ttl`).
    async fn send(&self, index: usize, to: SocketAddrV4, low_ttl: bool) {
        if index == 0 && !low_ttl {
            let _ = self.client.send_raw(&[0], to).await;
        } else if let Some(s) = self.socket(index) {
            let _ = s.send_probe(SocketAddr::V4(to), low_ttl.then_some(crate::holepunch::LOW_TTL)).await;
        }
    }

    /// Socket `index` carries the stream: it stays open.
    fn keep(&mut self, index: usize) -> Arc<UdxSocket> {
        self.kept = Some(index);
        self.socket(index).cloned().unwrap_or_else(|| self.main.clone())
    }
}

impl Drop for PunchSockets {
    fn drop(&mut self) {
        for (i, s) in self.extra.iter().enumerate() {
            // One a stream came on (the server's) or that was kept stays.
            if self.kept != Some(i + 1) && !s.busy() {
                s.close();
            }
        }
    }
}

/// The client's punch: two holepunch rounds through the server's relay, then probes until one
/// comes back. Returns the address the stream goes to.
async fn punch(
    client: &Arc<Client>,
    random_punches: &RandomPunches,
    shaken: &Shaken,
    firewall: Firewall,
    addresses: Vec<SocketAddrV4>,
) -> Result<(Arc<UdxSocket>, SocketAddrV4), String> {
    let Some((id, relays)) = &shaken.payload.holepunch else { return Err("the server cannot be punched to".into()) };
    // The relay that carried the handshake, if the server listed it; else its first.
    let (relay, server) =
        relays.iter().find(|(r, _)| *r == shaken.relay).or(relays.first()).copied().ok_or("no relay")?;
    let secure = SecurePayload::new(holepunch_secret(&shaken.done.hash), rand::random());
    let mut sockets = PunchSockets::new(client, *server.ip())?;
    // A probe towards the server opens our NAT for its answer ("fast mode").
    sockets.send(0, server, false).await;
    let mut round = 0;
    let mut theirs = None;
    let mut peer = server;
    // The first round tells each side the other's NAT; a server that does not know its own
    // yet gets a second chance a second later.
    for attempt in 0..2 {
        let ours = Payload {
            firewall: firewall as u64,
            round,
            addresses: Some(addresses.clone()),
            remote_address: Some(server),
            ..Payload::default()
        };
        round += 1;
        let (p, seen) = exchange(client, (relay, server), shaken.target, *id, &secure, &ours).await?;
        peer = seen;
        let known = Firewall::from_u64(p.firewall) != Firewall::Unknown;
        tracing::debug!(round, firewall = Firewall::from_u64(p.firewall).name(), "holepunch round answered");
        theirs = Some(p);
        if known {
            break;
        }
        if attempt == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let theirs = theirs.ok_or("no holepunch answer")?;
    let remote = Firewall::from_u64(theirs.firewall);
    if remote == Firewall::Unknown || firewall == Firewall::Unknown {
        return Err("a NAT whose kind is not known cannot be punched".into());
    }
    if remote == Firewall::Random && firewall == Firewall::Random {
        return Err("both NATs give each destination a new port: no punch joins them".into());
    }
    let _budget = if remote == Firewall::Random || firewall == Firewall::Random {
        Some(random_punches.take().ok_or("too many punches through random NATs at once")?)
    } else {
        None
    };
    let token = secure.token(&peer);
    let ours = Payload {
        firewall: firewall as u64,
        round,
        punching: true,
        addresses: Some(addresses),
        token: Some(token),
        remote_token: theirs.token,
        ..Payload::default()
    };
    let (answer, _) = exchange(client, (relay, server), shaken.target, *id, &secure, &ours).await?;
    // The server echoed our token of the address the relay saw it at: that address is its.
    let echoed = answer.remote_token == Some(token);
    let remote_addresses = answer
        .addresses
        .clone()
        .or(theirs.addresses)
        .unwrap_or_default()
        .into_iter()
        .map(|addr| RemoteAddress { addr, verified: echoed && addr.ip() == peer.ip() })
        .collect();
    let mut puncher = Puncher::new(true, firewall, rand::random());
    puncher.update_remote(Firewall::from_u64(answer.firewall), remote_addresses);
    let started = Instant::now();
    if !puncher.punch(started) {
        return Err("no punch fits these two NATs".into());
    }
    let mut out = Vec::new();
    loop {
        puncher.poll(Instant::now(), &mut out);
        for a in out.drain(..) {
            match a {
                Action::Probe { socket, to, low_ttl } => sockets.send(socket, to, low_ttl).await,
                Action::Connected { socket, to } => return Ok((sockets.keep(socket), to)),
                Action::Abort => return Err("the punch ran out of rounds".into()),
                Action::OpenSocket => sockets.open().await,
            }
        }
        let wake = puncher.deadline().unwrap_or(started + PUNCH_TIMEOUT).min(started + PUNCH_TIMEOUT);
        tokio::select! {
            probe = sockets.probes.recv() => match probe {
                Some((socket, from)) => puncher.on_probe(socket, from, &mut out),
                None => return Err("the probes stopped".into()),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= started + PUNCH_TIMEOUT {
                    return Err(format!("no probe came back within {} s", PUNCH_TIMEOUT.as_secs()));
                }
            }
        }
    }
}

/// One holepunch round with the server at `to.1` (slot `id`) through its relay `to.0`: `ours`
/// sealed, its answer opened, and where the relay saw the server.
async fn exchange(
    client: &Client,
    to: (SocketAddrV4, SocketAddrV4),
    target: [u8; 32],
    id: u64,
    secure: &SecurePayload,
    ours: &Payload,
) -> Result<(Payload, SocketAddrV4), String> {
    let (relay, server) = to;
    let sealed = secure.seal(ours, rand::random());
    let (sealed, seen) = client
        .holepunch(relay, target, id, sealed, server)
        .await
        .ok_or("the server's relay did not answer a holepunch round")?;
    let theirs = secure.open(&sealed).ok_or("a holepunch answer that does not open")?;
    if theirs.error != 0 {
        return Err(format!("the server refused to punch (error {})", theirs.error));
    }
    Ok((theirs, seen))
}

/// A server's NAT as its handshake answer tells it: its kind, its public addresses, and a
/// holepunch slot with its relays as `(relay, the server's address as that relay sees it)`.
pub(super) type ServerNat = (Firewall, Vec<SocketAddrV4>, Option<(u64, Vec<(SocketAddrV4, SocketAddrV4)>)>);

/// What a server's handshake answer says of its NAT, for a handshake relayed by `via` (`None`:
/// it came straight, or the client is open and is connected to): its firewall, its public
/// addresses, and, behind a NAT, a holepunch slot with its relays.
pub(super) fn server_nat(inner: &Inner, client: &Client, via: Option<SocketAddrV4>) -> ServerNat {
    let (firewall, addresses, _) = client.nat();
    if firewall == Firewall::Open {
        return (firewall, addresses, None);
    }
    let Some(via) = via else { return (firewall, addresses, None) };
    let mut relays = Vec::new();
    for r in std::iter::once(via).chain(lock(&inner.dht_relays).iter().copied()) {
        if relays.iter().any(|(n, _)| *n == r) {
            continue;
        }
        if let Some(seen) = client.seen_by(r) {
            relays.push((r, seen));
        }
    }
    let slot = if relays.is_empty() { None } else { inner.dht_slots.take(firewall) };
    (firewall, addresses, slot.map(|id| (id, relays)))
}

/// The server side of a holepunch round (PEER_HOLEPUNCH relayed to it by node `from`): the
/// client's payload updates the slot, the server's goes back through the node, and once the
/// client punches, the server does too.
pub(super) async fn on_holepunch(inner: &Arc<Inner>, client: &Arc<Client>, req: Request, from: SocketAddr) {
    let SocketAddr::V4(node) = from else { return };
    let target = crypto::hash(&[&inner.me.0]);
    let Some(hp) = req.value.as_deref().and_then(Holepunch::decode) else { return };
    // Only a relay's message names the client (as the relay saw it).
    let (2, Some(peer)) = (hp.mode, hp.peer_address) else { return };
    let (firewall, addresses, _) = client.nat();
    let (reply, start) = {
        let mut slots = lock(&inner.dht_slots.0);
        let Some(Some(slot)) = slots.get_mut(hp.id as usize) else { return };
        let Some(secure) = &slot.secure else { return };
        let Some(theirs) = secure.open(&hp.payload) else { return };
        if theirs.error != 0 {
            slots[hp.id as usize] = None;
            return;
        }
        let token = secure.token(&peer);
        let echoed = theirs.remote_token == Some(token);
        let mut start = false;
        let mut drop_slot = false;
        let mut budget = None;
        let mut error = 0;
        {
            let mut puncher = lock(&slot.puncher);
            if theirs.round >= slot.round {
                slot.round = theirs.round;
                let remote = theirs
                    .addresses
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|addr| RemoteAddress { addr, verified: echoed && addr.ip() == peer.ip() })
                    .collect();
                puncher.update_remote(Firewall::from_u64(theirs.firewall), remote);
            }
            let random = firewall == Firewall::Random || Firewall::from_u64(theirs.firewall) == Firewall::Random;
            if theirs.punching && !slot.punching {
                budget = if random { inner.random_punches.take() } else { None };
                if random && budget.is_none() {
                    // A few at once: the client may come back, or take a relay.
                    error = TRY_LATER;
                } else {
                    slot.punching = puncher.punch(Instant::now());
                    start = slot.punching;
                    // No punch fits: the slot goes, and the client hears nothing more.
                    drop_slot = !slot.punching;
                }
            }
        }
        if drop_slot {
            slots[hp.id as usize] = None;
            return;
        }
        let ours = Payload {
            error,
            firewall: firewall as u64,
            round: slot.round,
            punching: slot.punching,
            addresses: Some(addresses.clone()),
            token: Some(token),
            remote_token: theirs.token,
            ..Payload::default()
        };
        // Fast mode: the client opened its NAT towards one of our addresses; a probe back now
        // may already pass.
        let fast = theirs.remote_address.is_some_and(|a| addresses.contains(&a));
        (
            secure.seal(&ours, rand::random()),
            start.then(|| (slot.puncher.clone(), slot.came.clone(), budget)).ok_or(fast),
        )
    };
    let message = crate::dht::Message::Request(Request {
        tid: req.tid,
        to: node,
        id: None,
        token: None,
        internal: false,
        command: command::PEER_HOLEPUNCH,
        target: Some(target),
        value: Some(Holepunch { mode: 1, id: 0, payload: reply, peer_address: Some(peer) }.encode()),
    });
    match start {
        Err(true) => {
            let _ = client.send_raw(&[0], peer).await;
        }
        Err(false) => {}
        Ok((puncher, came, budget)) => {
            let client = client.clone();
            tokio::spawn(async move {
                punch_back(&client, puncher, peer, came).await;
                drop(budget);
            });
        }
    }
    let _ = client.send_raw(&message.encode(), node).await;
}

/// The server's punch: probes as its puncher says, each probe from the client answered, until
/// the client's stream arrives (the slot's puncher is stopped) or the rounds run out. A
/// birthday socket that answers a probe expects the client's stream too (`came`).
async fn punch_back(
    client: &Arc<Client>,
    puncher: Arc<Mutex<Puncher>>,
    peer: SocketAddrV4,
    came: Option<((u32, u32), mpsc::Sender<crate::udx_socket::Accepted>)>,
) {
    let Ok(mut sockets) = PunchSockets::new(client, *peer.ip()) else { return };
    let mut expecting = std::collections::HashSet::new();
    let started = Instant::now();
    let mut out = Vec::new();
    loop {
        let wake = {
            let mut p = lock(&puncher);
            p.poll(Instant::now(), &mut out);
            if p.done() && out.is_empty() {
                return;
            }
            p.deadline()
        };
        for a in out.drain(..) {
            match a {
                Action::Probe { socket, to, low_ttl } => {
                    if let (true, Some(((ours, theirs), tx)), Some(s)) = (socket > 0, &came, sockets.socket(socket)) {
                        // The client may punch through to this socket: its stream is expected
                        // here too.
                        if expecting.insert(socket) {
                            let (bound, tx) = (s.expect(*ours, *theirs), tx.clone());
                            tokio::spawn(async move {
                                if let Ok(Ok(accepted)) = tokio::time::timeout(PUNCH_TIMEOUT, bound).await {
                                    let _ = tx.try_send(accepted);
                                }
                            });
                        }
                    }
                    sockets.send(socket, to, low_ttl).await;
                }
                Action::OpenSocket => sockets.open().await,
                Action::Connected { .. } | Action::Abort => {}
            }
        }
        if started.elapsed() > PUNCH_TIMEOUT {
            return;
        }
        let wake = wake.unwrap_or(started + PUNCH_TIMEOUT).min(started + PUNCH_TIMEOUT);
        tokio::select! {
            probe = sockets.probes.recv() => match probe {
                Some((socket, from)) => lock(&puncher).on_probe(socket, from, &mut out),
                None => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// A handshake answer's payload for the server: `error`, its NAT and slot, its UDX stream id.
pub(super) fn server_payload(error: u64, udx_id: u32, nat: ServerNat) -> NoisePayload {
    let (firewall, addresses4, holepunch) = nat;
    NoisePayload {
        version: 1,
        error,
        firewall: firewall as u64,
        holepunch,
        addresses4,
        udx: Some(crate::dht::UdxInfo {
            version: 1,
            features: 0,
            id: if error == 0 { u64::from(udx_id) } else { 0 },
            seq: 0,
        }),
        secret_stream: Some(1),
        ..NoisePayload::default()
    }
}
