//! Blind relays (JS's `blind-relay`, reference holepunch-wire §7.9): when no punch joins two
//! peers, both connect to a relay both can reach, open a `blind-relay` channel there and send
//! `pair` with one token (the HyperDHT client chose it and put it in its Noise payload's
//! `relayThrough`). The relay answers each with the id of a UDX stream of its own; each peer
//! connects its UDX stream to that id at the relay, and the relay forwards every packet of one
//! to the other, changing only the stream id. The two peers' UDX and secret-stream run end to
//! end through it, keyed by their HyperDHT handshake: the relay sees ciphertext alone.
//!
//! A node is a relay when started so (`--relay`): it pairs up to [`MAX_PENDING`] waiting halves
//! for at most [`PAIR_WAIT`], and forwards up to [`crate::udx_socket::MAX_RELAYED`] links.

use std::collections::HashMap;

use super::*;
use crate::wire::BLIND_RELAY;

/// `pair` and `unpair`: blind-relay's message types.
pub(super) const PAIR: u64 = 0;
pub(super) const UNPAIR: u64 = 1;
/// Halves waiting for their other half, and for how long.
const MAX_PENDING: usize = 256;
const PAIR_WAIT: Duration = Duration::from_secs(30);

/// blind-relay's `pair`: `bitfield(7) flags (bit 0 isInitiator)` ‖ `fixed32 token` ‖ `uint id`
/// (the sender's UDX stream id) ‖ `uint seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pair {
    pub initiator: bool,
    pub token: [u8; 32],
    pub id: u64,
    pub seq: u64,
}

impl Pair {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = hyperfs_engine::encoding::Encoder::new();
        e.uint(u64::from(self.initiator)).fixed(&self.token).uint(self.id).uint(self.seq);
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Option<Pair> {
        let mut d = hyperfs_engine::encoding::Decoder::new(b);
        let flags = d.uint("flags").ok()?;
        Some(Pair {
            initiator: flags & 1 != 0,
            token: d.array("token").ok()?,
            id: d.uint("id").ok()?,
            seq: d.uint("seq").ok()?,
        })
    }
}

/// `unpair`'s token (after its flags).
fn unpair_token(b: &[u8]) -> Option<[u8; 32]> {
    let mut d = hyperfs_engine::encoding::Decoder::new(b);
    d.uint("flags").ok()?;
    d.array("token").ok()
}

/// One side of a pairing at this relay: where to answer it, and its stream.
struct Half {
    initiator: bool,
    stream: u32,
    conn: mpsc::UnboundedSender<Command>,
    channel: u64,
    since: Instant,
}

/// This node's blind relay, forwarding on the UDX socket its peers reach it through.
pub(super) struct RelayServer {
    socket: Arc<crate::udx_socket::UdxSocket>,
    pending: Mutex<HashMap<[u8; 32], Half>>,
}

impl RelayServer {
    pub fn new(socket: Arc<crate::udx_socket::UdxSocket>) -> RelayServer {
        RelayServer { socket, pending: Mutex::new(HashMap::new()) }
    }

    /// A `pair` came on channel `channel` of the connection `conn` commands.
    fn on_pair(&self, p: Pair, conn: &mpsc::UnboundedSender<Command>, channel: u64) {
        let Ok(stream) = u32::try_from(p.id) else { return };
        let half = Half { initiator: p.initiator, stream, conn: conn.clone(), channel, since: Instant::now() };
        let other = {
            let mut pending = lock(&self.pending);
            pending.retain(|_, h| h.since.elapsed() < PAIR_WAIT && !h.conn.is_closed());
            match pending.remove(&p.token) {
                Some(o) if o.initiator != p.initiator => o,
                Some(o) => {
                    // The same side twice: the first stays.
                    pending.insert(p.token, o);
                    return;
                }
                None => {
                    if pending.len() < MAX_PENDING {
                        pending.insert(p.token, half);
                    }
                    return;
                }
            }
        };
        let Some((a, b)) = self.socket.relay_between(other.stream, half.stream) else {
            tracing::warn!("a relay pairing refused: too many links relayed");
            return;
        };
        tracing::info!(links = self.socket.relayed(), "relaying a pair of peers");
        for (h, id) in [(&other, a), (&half, b)] {
            let answer = Pair { initiator: h.initiator, token: p.token, id: u64::from(id), seq: 0 };
            let frame =
                Frame::Channel { channel: h.channel, message: Message::Other { kind: PAIR, payload: answer.encode() } };
            let _ = h.conn.send(Command::Send(frame));
        }
    }

    fn on_unpair(&self, token: [u8; 32]) {
        lock(&self.pending).remove(&token);
    }
}

/// A blind-relay channel on a connection: opened by us (a client pairing through the peer) or
/// by the peer (we relay for it).
pub(super) struct RelayChannel {
    local_id: u64,
    remote_id: Option<u64>,
    id: Option<Vec<u8>>,
    serving: bool,
    /// Pairs to send once the channel is open, and pairs sent, each with who waits for the
    /// relay's stream id.
    queued: Vec<(Pair, oneshot::Sender<u32>)>,
    sent: Vec<(Pair, oneshot::Sender<u32>)>,
}

impl ConnState {
    /// The peer opened a blind-relay channel (`remote_id`, `id`): ours of that id is now open,
    /// or, when this node relays, one is opened back to serve it; otherwise it is rejected.
    pub(super) fn relay_opened(&mut self, inner: &Inner, remote_id: u64, id: Option<Vec<u8>>) {
        if let Some(ch) = self.relays.iter_mut().find(|c| c.remote_id.is_none() && !c.serving && c.id == id) {
            ch.remote_id = Some(remote_id);
            for (p, reply) in std::mem::take(&mut ch.queued) {
                let message = Message::Other { kind: PAIR, payload: p.encode() };
                self.out.push(Frame::Channel { channel: ch.local_id, message });
                ch.sent.push((p, reply));
            }
            return;
        }
        if lock(&inner.relay).is_none() {
            // Not a relay: the peer may be one, opening its side before we ask (JS's relay
            // opens as the connection comes). It waits for ours, as protomux keeps it.
            if self.relay_opens.len() < crate::wire::MAX_OTHER_CHANNELS {
                self.relay_opens.push((remote_id, id));
            } else {
                self.out.push(Frame::Control(Control::Reject { remote_id }));
            }
            return;
        }
        if self.relays.len() >= crate::wire::MAX_OTHER_CHANNELS {
            self.out.push(Frame::Control(Control::Reject { remote_id }));
            return;
        }
        self.open_relay_channel(id, Some(remote_id), true);
    }

    /// Opens our blind-relay channel of `id` (the peer's side `remote_id` when it is open
    /// already); the index of the new channel.
    fn open_relay_channel(&mut self, id: Option<Vec<u8>>, remote_id: Option<u64>, serving: bool) -> usize {
        let local_id = self.next_local;
        self.next_local += 1;
        self.out.push(Frame::Control(Control::Open {
            local_id,
            protocol: BLIND_RELAY.into(),
            id: id.clone(),
            flags: 0,
            capability: [0; 32],
        }));
        self.relays.push(RelayChannel { local_id, remote_id, id, serving, queued: Vec::new(), sent: Vec::new() });
        self.relays.len() - 1
    }

    /// A message on the peer's blind-relay channel `channel`; false when it is not one.
    pub(super) fn relay_message(&mut self, inner: &Inner, channel: u64, kind: u64, payload: &[u8]) -> bool {
        let Some(i) = self.relays.iter().position(|c| c.remote_id == Some(channel)) else { return false };
        let ch = &mut self.relays[i];
        let server = lock(&inner.relay).clone();
        match kind {
            PAIR => {
                let Some(p) = Pair::decode(payload) else { return true };
                if ch.serving {
                    if let Some(server) = server {
                        server.on_pair(p, &self.me_tx, ch.local_id);
                    }
                } else if let Some(at) =
                    ch.sent.iter().position(|(s, _)| s.token == p.token && s.initiator == p.initiator)
                {
                    let (_, reply) = ch.sent.remove(at);
                    if let Ok(id) = u32::try_from(p.id) {
                        let _ = reply.send(id);
                    }
                }
            }
            UNPAIR => {
                if let (true, Some(server), Some(token)) = (ch.serving, server, unpair_token(payload)) {
                    server.on_unpair(token);
                }
            }
            _ => {}
        }
        true
    }

    /// Asks the peer (a relay) to pair our UDX stream `stream` under `token`; `reply` gets the
    /// relay's stream id to connect it to.
    pub(super) fn relay_pair(&mut self, me: &PeerId, pair: Pair, reply: oneshot::Sender<u32>) {
        let id = Some(me.0.to_vec());
        let i = match self.relays.iter().position(|c| !c.serving && c.id == id) {
            Some(i) => i,
            None => {
                // The peer's side may be open already.
                let opened = self.relay_opens.iter().position(|(_, i)| *i == id);
                let remote_id = opened.map(|at| self.relay_opens.remove(at).0);
                self.open_relay_channel(id, remote_id, false)
            }
        };
        let ch = &mut self.relays[i];
        if ch.remote_id.is_some() {
            self.out.push(Frame::Channel {
                channel: ch.local_id,
                message: Message::Other { kind: PAIR, payload: pair.encode() },
            });
            ch.sent.push((pair, reply));
        } else {
            ch.queued.push((pair, reply));
        }
    }
}
