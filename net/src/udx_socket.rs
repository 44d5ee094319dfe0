//! UDX streams on a tokio UDP socket: one task reads the socket and routes each packet by its
//! stream id; each stream has a task that drives its [`udx::Stream`] and hands the bytes to the
//! connection through an in-memory pipe (any `AsyncRead + AsyncWrite`, as a TCP stream is).
//!
//! How a stream starts: UDX has no handshake, so ids are agreed out of band (HyperDHT carries
//! them in its Noise payload). Without HyperDHT, a dialer picks a random id and uses it for both
//! ends; a socket that accepts streams takes the first DATA or HEARTBEAT packet for an id it does
//! not know as a new stream with that id both ways, answering where it came from. JS peers
//! (`udx-native`) dial and accept the same way in `scripts/js/wire-peer.js`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::udx::{self, Header};

/// Bytes the connection may write ahead of what the peer acknowledged.
const SEND_BUFFER: usize = 4 << 20;
/// The in-memory pipe between a stream's task and its connection.
const PIPE: usize = 1 << 20;
/// Datagrams waiting for a stream's task; past this many, more are dropped.
const QUEUE: usize = 4096;
/// How long a stream whose connection let go waits for the peer's END.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);
/// The socket's kernel buffers, each way.
const SOCKET_BUFFER: usize = 4 << 20;
/// Streams one socket holds at once.
const MAX_STREAMS: usize = 1024;

type Routes = Mutex<HashMap<(u32, SocketAddr), mpsc::Sender<Vec<u8>>>>;

/// A UDP socket carrying UDX streams.
pub struct UdxSocket {
    socket: UdpSocket,
    routes: Routes,
    /// Streams agreed out of band (HyperDHT's handshake) that bind to wherever their first
    /// packet comes from: by local id, the remote id and where the stream goes.
    expected: Mutex<HashMap<u32, (u32, oneshot::Sender<Accepted>)>>,
    /// Where datagrams that are not UDX's go (dht-rpc's messages, holepunch probes: the
    /// socket is HyperDHT's too, as in JS), when someone takes them ([`UdxSocket::plain`]).
    plain: Mutex<Option<mpsc::Sender<Plain>>>,
    /// Stream ids this socket relays (a blind relay's links), by id; `relaying` once it has
    /// any, so a socket that never relays takes no lock per packet for it.
    relays: Mutex<HashMap<u32, RelayEnd>>,
    relaying: std::sync::atomic::AtomicBool,
    /// Ends the reader ([`UdxSocket::close`]): the socket goes once its streams did too.
    closed: tokio::sync::Notify,
}

/// One end of a relayed link: the peer's stream (bound to where its first packet came from),
/// and the id of the other end.
struct RelayEnd {
    bound: Option<SocketAddr>,
    stream: u32,
    other: u32,
    last: Instant,
}

/// Links a socket relays at once, and how long an idle one is kept.
pub const MAX_RELAYED: usize = 64;
const RELAY_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// A datagram that is not a UDX packet, and where it came from.
pub type Plain = (Vec<u8>, SocketAddr);
/// Plain datagrams waiting for their taker; past this many, more are dropped.
const PLAIN_QUEUE: usize = 1024;

impl std::fmt::Debug for UdxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UdxSocket({:?})", self.socket.local_addr().ok())
    }
}

/// A stream a peer started: its pipe, and where it came from.
pub type Accepted = (DuplexStream, SocketAddr);

impl UdxSocket {
    /// Binds `addr` and starts routing. With `accept`, streams peers start come out of it.
    pub async fn bind(addr: SocketAddr, accept: Option<mpsc::Sender<Accepted>>) -> std::io::Result<Arc<UdxSocket>> {
        // Buffers that hold a window's burst: with the default ~200 KiB a busy receiver drops
        // datagrams on loopback, and each drop costs a recovery.
        let raw = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
        let _ = raw.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = raw.set_send_buffer_size(SOCKET_BUFFER);
        raw.set_nonblocking(true)?;
        raw.bind(&addr.into())?;
        let socket = UdpSocket::from_std(raw.into())?;
        let s = Arc::new(UdxSocket {
            socket,
            routes: Mutex::new(HashMap::new()),
            expected: Mutex::new(HashMap::new()),
            plain: Mutex::new(None),
            relays: Mutex::new(HashMap::new()),
            relaying: std::sync::atomic::AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
        });
        let reader = Arc::downgrade(&s);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Some(s) = reader.upgrade() else { return };
                let got = tokio::select! {
                    got = s.socket.recv_from(&mut buf) => got,
                    _ = s.closed.notified() => return,
                };
                let Ok((n, from)) = got else { continue };
                let d = &buf[..n];
                let Some((h, _)) = Header::parse(d) else {
                    if let Some(tx) = lock(&s.plain).as_ref() {
                        // A taker that cannot keep up loses datagrams, as UDP would.
                        let _ = tx.try_send((d.to_vec(), from));
                    }
                    continue;
                };
                if s.relaying.load(std::sync::atomic::Ordering::Relaxed) && s.relay(h.id, from, d).await {
                    continue;
                }
                let route = lock(&s.routes).get(&(h.id, from)).cloned();
                match route {
                    Some(tx) => {
                        // A stream that cannot keep up loses datagrams, as UDP would.
                        let _ = tx.try_send(d.to_vec());
                    }
                    None => {
                        let expected = lock(&s.expected).remove(&h.id);
                        if let Some((remote_id, tx)) = expected {
                            // The stream agreed in a handshake: it binds to this address.
                            let pipe = s.open(h.id, remote_id, from);
                            if let Some(route) = lock(&s.routes).get(&(h.id, from)) {
                                let _ = route.try_send(d.to_vec());
                            }
                            let _ = tx.send((pipe, from));
                            continue;
                        }
                        let Some(accept) = &accept else { continue };
                        let starts = h.kind & (udx::kind::DATA | udx::kind::HEARTBEAT) != 0 && h.seq == 0;
                        if !starts || lock(&s.routes).len() >= MAX_STREAMS {
                            continue;
                        }
                        let pipe = s.open(h.id, h.id, from);
                        if let Some(tx) = lock(&s.routes).get(&(h.id, from)) {
                            let _ = tx.try_send(d.to_vec());
                        }
                        if accept.try_send((pipe, from)).is_err() {
                            lock(&s.routes).remove(&(h.id, from));
                        }
                    }
                }
            }
        });
        Ok(s)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Starts stream `local_id` to the peer's stream `remote_id` at `remote`; returns the pipe
    /// the connection reads and writes.
    pub fn open(self: &Arc<Self>, local_id: u32, remote_id: u32, remote: SocketAddr) -> DuplexStream {
        self.start(local_id, remote_id, remote, false)
    }

    fn start(self: &Arc<Self>, local_id: u32, remote_id: u32, remote: SocketAddr, probe: bool) -> DuplexStream {
        let (app, ours) = tokio::io::duplex(PIPE);
        let (tx, rx) = mpsc::channel(QUEUE);
        lock(&self.routes).insert((local_id, remote), tx);
        let payload = if remote.is_ipv4() { udx::MAX_PAYLOAD_V4 } else { udx::MAX_PAYLOAD_V6 };
        let mut stream = udx::Stream::new(local_id, remote_id, payload);
        if probe {
            stream.probe();
        }
        let socket = self.clone();
        tokio::spawn(async move {
            if let Err(e) = drive(&socket, stream, remote, rx, ours).await {
                tracing::debug!(%remote, error = %e, "a UDX stream ended");
            }
            lock(&socket.routes).remove(&(local_id, remote));
        });
        app
    }

    /// A stream `local_id` to the peer's `remote_id` that binds to the address its first packet
    /// comes from (as HyperDHT's servers do): its pipe once that packet came.
    pub fn expect(&self, local_id: u32, remote_id: u32) -> oneshot::Receiver<Accepted> {
        let (tx, rx) = oneshot::channel();
        let mut expected = lock(&self.expected);
        expected.retain(|_, (_, tx)| !tx.is_closed());
        if expected.len() < MAX_STREAMS {
            expected.insert(local_id, (remote_id, tx));
        }
        rx
    }

    /// Sends a datagram that is not UDX's from this socket (a DHT message the peer should
    /// answer towards this socket).
    pub async fn send_raw(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
        self.socket.send_to(bytes, to).await.map(drop)
    }

    /// Relays a link between the peers' streams `a` and `b`: returns the ids each is to
    /// connect its stream to here (`None` past [`MAX_RELAYED`] links). Each end binds to where
    /// its first packet comes from; every packet of one goes to the other with its stream id
    /// changed, and nothing else (the peers' UDX runs end to end).
    pub fn relay_between(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let mut relays = lock(&self.relays);
        relays.retain(|_, e| e.last.elapsed() < RELAY_IDLE);
        if relays.len() / 2 >= MAX_RELAYED {
            return None;
        }
        let routes = lock(&self.routes);
        let fresh = || loop {
            let id = rand::random::<u32>();
            if !relays.contains_key(&id) && !routes.keys().any(|(r, _)| *r == id) {
                break id;
            }
        };
        let (ra, rb) = (fresh(), fresh());
        let now = Instant::now();
        relays.insert(ra, RelayEnd { bound: None, stream: a, other: rb, last: now });
        relays.insert(rb, RelayEnd { bound: None, stream: b, other: ra, last: now });
        self.relaying.store(true, std::sync::atomic::Ordering::Relaxed);
        Some((ra, rb))
    }

    /// Stops taking datagrams (streams on it end): the socket is freed once nothing holds it.
    pub fn close(&self) {
        self.closed.notify_one();
    }

    /// Sends a holepunch probe (one zero byte) to `to`; with `ttl`, at that TTL (a probe meant
    /// to open this side's NAT without reaching the other's).
    pub async fn send_probe(&self, to: SocketAddr, ttl: Option<u32>) -> std::io::Result<()> {
        let Some(ttl) = ttl else { return self.socket.send_to(&[0], to).await.map(drop) };
        let raw = socket2::SockRef::from(&self.socket);
        let before = raw.ttl_v4()?;
        raw.set_ttl_v4(ttl)?;
        let sent = self.socket.send_to(&[0], to).await.map(drop);
        raw.set_ttl_v4(before)?;
        sent
    }

    /// Whether a stream runs or is expected on this socket.
    pub fn busy(&self) -> bool {
        !lock(&self.routes).is_empty() || lock(&self.expected).values().any(|(_, tx)| !tx.is_closed())
    }

    /// Links relayed now.
    pub fn relayed(&self) -> usize {
        lock(&self.relays).len() / 2
    }

    /// Forwards packet `d` from `from` if its stream id is one this socket relays.
    async fn relay(&self, id: u32, from: SocketAddr, d: &[u8]) -> bool {
        let to = {
            let mut relays = lock(&self.relays);
            let Some(end) = relays.get_mut(&id) else { return false };
            if *end.bound.get_or_insert(from) != from {
                // Another address on a bound end: not the peer's.
                return true;
            }
            end.last = Instant::now();
            let other = end.other;
            relays.get(&other).and_then(|o| o.bound.map(|at| (at, o.stream)))
        };
        if let Some((at, stream)) = to {
            let mut p = d.to_vec();
            p[4..8].copy_from_slice(&stream.to_le_bytes());
            let _ = self.socket.send_to(&p, at).await;
        }
        true
    }

    /// Hands every datagram this socket receives that is not a UDX packet to the returned
    /// channel (the one taker; a second call replaces the first).
    pub fn plain(&self) -> mpsc::Receiver<Plain> {
        let (tx, rx) = mpsc::channel(PLAIN_QUEUE);
        *lock(&self.plain) = Some(tx);
        rx
    }

    /// Dials `remote` on a fresh random id (the same both ways), a heartbeat first.
    pub fn dial(self: &Arc<Self>, remote: SocketAddr) -> DuplexStream {
        let id = rand::random::<u32>();
        self.start(id, id, remote, true)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drives one stream until both sides ended, it failed, or the connection let go of its pipe.
async fn drive(
    socket: &UdxSocket,
    mut stream: udx::Stream,
    remote: SocketAddr,
    mut packets: mpsc::Receiver<Vec<u8>>,
    pipe: DuplexStream,
) -> Result<(), String> {
    let (mut from_app, mut to_app) = tokio::io::split(pipe);
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(2048);
    let mut app_ended = false;
    let mut told_end = false;
    let mut ended_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while stream.poll_transmit(now, &mut out) {
            socket.socket.send_to(&out, remote).await.map_err(|e| e.to_string())?;
        }
        let got = stream.take_received();
        if !got.is_empty() {
            to_app.write_all(&got).await.map_err(|e| e.to_string())?;
        }
        if stream.remote_ended() && !told_end {
            told_end = true;
            let _ = to_app.shutdown().await;
        }
        if let Some(e) = stream.error() {
            return Err(e.to_string());
        }
        if stream.finished() {
            return Ok(());
        }
        if app_ended && stream.buffered() == 0 && ended_at.get_or_insert_with(Instant::now).elapsed() > LINGER {
            // Ours went and was acknowledged; a peer that never ends its side is not waited on.
            return Ok(());
        }
        let room = !app_ended && stream.buffered() < SEND_BUFFER;
        let mut deadline = stream.deadline();
        if let Some(at) = ended_at {
            deadline = Some(deadline.map_or(at + LINGER, |d| d.min(at + LINGER)));
        }
        tokio::select! {
            p = packets.recv() => {
                let Some(mut p) = p else { return Ok(()) };
                // Each packet answered before the next is taken: every ACK carries the ack as of
                // its packet (a burst of ACKs all at the final ack looks like duplicate ACKs, and
                // libudx's loss detection takes them so).
                loop {
                    if let Some((h, body)) = Header::parse(&p) {
                        let now = Instant::now();
                        stream.on_packet(&h, body, now);
                        while stream.poll_transmit(now, &mut out) {
                            socket.socket.send_to(&out, remote).await.map_err(|e| e.to_string())?;
                        }
                    }
                    match packets.try_recv() {
                        Ok(next) => p = next,
                        Err(_) => break,
                    }
                }
            }
            n = from_app.read(&mut buf), if room => {
                match n {
                    Ok(0) | Err(_) => {
                        app_ended = true;
                        stream.end();
                    }
                    Ok(n) => stream.write(&buf[..n]),
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d.into()).await, None => std::future::pending().await } } => {
                stream.on_timeout(Instant::now());
            }
        }
    }
}
