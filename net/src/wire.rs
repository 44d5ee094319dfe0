//! Hypercore's replication messages (reference §4.5) in compact-encoding, and the frames that
//! carry them over a QUIC stream.
//!
//! A frame is `uint length` ‖ `uint channel` ‖ `uint type` ‖ payload, as a protomux message
//! with its length in front. Channel 0 is control: `open` (type 1: `uint localId` ‖ `string
//! protocol` ‖ `optionalBuffer id` ‖ `uint flags` ‖ `fixed32 capability`), `reject` (2) and
//! `close` (3); other channels carry the hypercore messages of one core, by the sender's local
//! channel id.
//!
//! Invariant: decoding never panics and never allocates more than the frame it was given:
//! every count is checked against the bytes left, and a frame is at most [`MAX_FRAME`].

use hyperfs_engine::encoding::{DecodeError, Decoder, Encoder};
use hyperfs_engine::hypercore::proof::{
    BlockProof, HashProof, Proof, RangeProof, Request, RequestIndexed, RequestSeek, RequestUpgrade, SeekProof,
    UpgradeProof,
};
use hyperfs_engine::hypercore::Node;

/// The largest frame accepted: a block (chunks are at most a few hundred KiB) with its proof.
pub const MAX_FRAME: usize = 8 << 20;

/// The protocol name of a core's channel.
pub const PROTOCOL: &str = "hypercore/alpha";

/// Sync flags.
pub mod sync_flags {
    pub const CAN_UPGRADE: u64 = 1;
    pub const UPLOADING: u64 = 2;
    pub const DOWNLOADING: u64 = 4;
    pub const HAS_MANIFEST: u64 = 8;
    pub const ALLOW_PUSH: u64 = 16;
}

/// Why a request got no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDataReason {
    NotAvailable,
    InvalidRequest,
}

/// One message of a core's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Sync {
        flags: u64,
        fork: u64,
        length: u64,
        remote_length: u64,
    },
    Request {
        id: u64,
        request: Request,
        priority: Option<u64>,
    },
    Cancel {
        request: u64,
    },
    Data {
        request: u64,
        proof: Proof,
    },
    NoData {
        request: u64,
        reason: Option<NoDataReason>,
    },
    Want {
        start: u64,
        length: u64,
        any: bool,
    },
    Unwant {
        start: u64,
        length: u64,
    },
    Bitfield {
        start: u64,
        bitfield: Vec<u32>,
    },
    Range {
        drop: bool,
        start: u64,
        length: u64,
    },
    Extension {
        name: String,
        message: Vec<u8>,
    },
    /// hyperfs peers only (type 64, which Hypercore does not use): the block holding byte
    /// `bytes` of the core, found by the peer, proven against the asker's tree at `length`
    /// (answered by `Data` with that block and its path to one of those roots, or `NoData`).
    /// A random read of a sparse replica takes one round trip where a seek and then a request
    /// took two.
    SeekBlock {
        id: u64,
        fork: u64,
        length: u64,
        bytes: u64,
    },
    /// hyperfs peers only (type 66): blocks `start..start + count` of the core, proven against
    /// the asker's tree at `length` by one list of nodes (answered by [`Message::RangeData`],
    /// possibly with fewer blocks, or `NoData`). A clone or a sequential read asks a run of
    /// blocks in one round trip and verifies it with one proof.
    RangeRequest {
        id: u64,
        fork: u64,
        length: u64,
        start: u64,
        count: u64,
    },
    /// hyperfs peers only (type 67): the answer to [`Message::RangeRequest`] `request`.
    RangeData {
        request: u64,
        proof: RangeProof,
    },
    /// hyperfs peers on the JS wire only (type 65, on the `hyperfs/hello` channel, empty): every
    /// frame after this one in this direction is sealed with AES-256-GCM instead of
    /// secret-stream (see `endpoint`'s `JsCodec`).
    CipherSwitch,
    /// A message on a channel of another protocol (`blind-relay`'s, see
    /// [`Frame::decode_message_on`]), its type and payload as they came.
    Other {
        kind: u64,
        payload: Vec<u8>,
    },
}

/// The protocol of blind relays (JS's `blind-relay`): its channels carry [`Message::Other`],
/// and their open carries no handshake.
pub const BLIND_RELAY: &str = "blind-relay";
/// Channels of other protocols a peer may hold open at once on one connection.
pub const MAX_OTHER_CHANNELS: usize = 16;

/// A control message (channel 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Opens channel `local_id` for the core whose discovery key is `id`, proving knowledge of
    /// the core key with `capability`.
    Open {
        local_id: u64,
        protocol: String,
        id: Option<Vec<u8>>,
        flags: u64,
        capability: [u8; 32],
    },
    Reject {
        remote_id: u64,
    },
    Close {
        local_id: u64,
    },
}

/// A frame: a control message or a message on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control(Control),
    Channel { channel: u64, message: Message },
}

fn node(e: &mut Encoder, n: &Node) {
    e.uint(n.index).uint(n.size).fixed(&n.hash);
}

fn nodes(e: &mut Encoder, ns: &[Node]) {
    e.uint(ns.len() as u64);
    for n in ns {
        node(e, n);
    }
}

fn read_nodes(d: &mut Decoder<'_>) -> Result<Vec<Node>, DecodeError> {
    // A node takes at least 34 bytes: two one-byte uints and a 32-byte hash.
    let n = d.count("proof nodes", 34)?;
    (0..n)
        .map(|_| Ok(Node { index: d.uint("node index")?, size: d.uint("node size")?, hash: d.array("node hash")? }))
        .collect()
}

/// The type of [`Message::SeekBlock`].
const SEEK_BLOCK: u64 = 64;
/// The type of [`Message::CipherSwitch`].
const CIPHER_SWITCH: u64 = 65;
/// The types of [`Message::RangeRequest`] and [`Message::RangeData`].
const RANGE_REQUEST: u64 = 66;
const RANGE_DATA: u64 = 67;

impl Message {
    pub fn kind(&self) -> u64 {
        match self {
            Message::Sync { .. } => 0,
            Message::Request { .. } => 1,
            Message::Cancel { .. } => 2,
            Message::Data { .. } => 3,
            Message::NoData { .. } => 4,
            Message::Want { .. } => 5,
            Message::Unwant { .. } => 6,
            Message::Bitfield { .. } => 7,
            Message::Range { .. } => 8,
            Message::Extension { .. } => 9,
            Message::SeekBlock { .. } => SEEK_BLOCK,
            Message::CipherSwitch => CIPHER_SWITCH,
            Message::Other { kind, .. } => *kind,
            Message::RangeRequest { .. } => RANGE_REQUEST,
            Message::RangeData { .. } => RANGE_DATA,
        }
    }

    /// The payload (without the type).
    pub fn encode_payload(&self, e: &mut Encoder) {
        match self {
            Message::Sync { flags, fork, length, remote_length } => {
                e.uint(*flags).uint(*fork).uint(*length).uint(*remote_length);
            }
            Message::Request { id, request: r, priority } => {
                let flags = u64::from(r.block.is_some())
                    | u64::from(r.hash.is_some()) << 1
                    | u64::from(r.seek.is_some()) << 2
                    | u64::from(r.upgrade.is_some()) << 3
                    | u64::from(r.manifest) << 4
                    | u64::from(priority.is_some()) << 5;
                e.uint(flags).uint(*id).uint(r.fork);
                if let Some(b) = r.block {
                    e.uint(b.index).uint(b.nodes);
                }
                if let Some(h) = r.hash {
                    e.uint(h.index).uint(h.nodes);
                }
                if let Some(s) = r.seek {
                    e.uint(s.bytes).uint(s.padding);
                }
                if let Some(u) = r.upgrade {
                    e.uint(u.start).uint(u.length);
                }
                if let Some(p) = priority {
                    e.uint(*p);
                }
            }
            Message::Cancel { request } => {
                e.uint(*request);
            }
            Message::Data { request, proof: p } => {
                let flags = u64::from(p.block.is_some())
                    | u64::from(p.hash.is_some()) << 1
                    | u64::from(p.seek.is_some()) << 2
                    | u64::from(p.upgrade.is_some()) << 3
                    | u64::from(p.manifest.is_some()) << 4;
                e.uint(flags).uint(*request).uint(p.fork);
                if let Some(b) = &p.block {
                    e.uint(b.index).buffer(&b.value);
                    nodes(e, &b.nodes);
                }
                if let Some(h) = &p.hash {
                    e.uint(h.index);
                    nodes(e, &h.nodes);
                }
                if let Some(s) = &p.seek {
                    e.uint(s.bytes);
                    nodes(e, &s.nodes);
                }
                if let Some(u) = &p.upgrade {
                    e.uint(u.start).uint(u.length);
                    nodes(e, &u.nodes);
                    nodes(e, &u.additional_nodes);
                    // optionalBuffer: an empty signature is encoded as absent (0).
                    e.buffer(&u.signature);
                }
                if let Some(m) = &p.manifest {
                    e.fixed(m);
                }
            }
            Message::NoData { request, reason } => {
                // As JS writes it: the flags always, the reason when there is one.
                e.uint(*request);
                match reason {
                    Some(r) => e.uint(1).uint(match r {
                        NoDataReason::NotAvailable => 1,
                        NoDataReason::InvalidRequest => 2,
                    }),
                    None => e.uint(0),
                };
            }
            Message::Want { start, length, any } => {
                e.uint(*start).uint(*length);
                if *any {
                    e.uint(1);
                }
            }
            Message::Unwant { start, length } => {
                e.uint(*start).uint(*length);
            }
            Message::Bitfield { start, bitfield } => {
                e.uint(*start).uint(bitfield.len() as u64);
                for w in bitfield {
                    e.fixed(&w.to_le_bytes());
                }
            }
            Message::Range { drop, start, length } => {
                let one = *length == 1;
                e.uint(u64::from(*drop) | u64::from(one) << 1).uint(*start);
                if !one {
                    e.uint(*length);
                }
            }
            Message::Extension { name, message } => {
                e.string(name).fixed(message);
            }
            Message::SeekBlock { id, fork, length, bytes } => {
                e.uint(*id).uint(*fork).uint(*length).uint(*bytes);
            }
            Message::CipherSwitch => {}
            Message::Other { payload, .. } => {
                e.fixed(payload);
            }
            Message::RangeRequest { id, fork, length, start, count } => {
                e.uint(*id).uint(*fork).uint(*length).uint(*start).uint(*count);
            }
            Message::RangeData { request, proof: p } => {
                e.uint(*request).uint(p.fork).uint(p.length).uint(p.start).uint(p.blocks.len() as u64);
                for b in &p.blocks {
                    e.buffer(b);
                }
                nodes(e, &p.nodes);
            }
        }
    }

    /// Decodes a payload of type `kind`.
    pub fn decode(kind: u64, d: &mut Decoder<'_>) -> Result<Message, DecodeError> {
        Ok(match kind {
            0 => Message::Sync {
                flags: d.uint("sync flags")?,
                fork: d.uint("sync fork")?,
                length: d.uint("sync length")?,
                remote_length: d.uint("sync remote length")?,
            },
            1 => {
                let flags = d.uint("request flags")?;
                let id = d.uint("request id")?;
                let fork = d.uint("request fork")?;
                let mut indexed = |bit: u64, what| -> Result<Option<RequestIndexed>, DecodeError> {
                    if flags & bit == 0 {
                        return Ok(None);
                    }
                    Ok(Some(RequestIndexed { index: d.uint(what)?, nodes: d.uint(what)? }))
                };
                let block = indexed(1, "request block")?;
                let hash = indexed(2, "request hash")?;
                let seek = if flags & 4 != 0 {
                    Some(RequestSeek { bytes: d.uint("request seek")?, padding: d.uint("request seek")? })
                } else {
                    None
                };
                let upgrade = if flags & 8 != 0 {
                    Some(RequestUpgrade { start: d.uint("request upgrade")?, length: d.uint("request upgrade")? })
                } else {
                    None
                };
                let priority = if flags & 32 != 0 { Some(d.uint("request priority")?) } else { None };
                Message::Request {
                    id,
                    request: Request { fork, block, hash, seek, upgrade, manifest: flags & 16 != 0 },
                    priority,
                }
            }
            2 => Message::Cancel { request: d.uint("cancel")? },
            3 => {
                let flags = d.uint("data flags")?;
                let request = d.uint("data request")?;
                let fork = d.uint("data fork")?;
                let block = if flags & 1 != 0 {
                    let index = d.uint("data block")?;
                    let value = d.buffer("data block value")?.to_vec();
                    Some(BlockProof { index, value, nodes: read_nodes(d)? })
                } else {
                    None
                };
                let hash = if flags & 2 != 0 {
                    Some(HashProof { index: d.uint("data hash")?, nodes: read_nodes(d)? })
                } else {
                    None
                };
                let seek = if flags & 4 != 0 {
                    Some(SeekProof { bytes: d.uint("data seek")?, nodes: read_nodes(d)? })
                } else {
                    None
                };
                let upgrade = if flags & 8 != 0 {
                    Some(UpgradeProof {
                        start: d.uint("data upgrade")?,
                        length: d.uint("data upgrade")?,
                        nodes: read_nodes(d)?,
                        additional_nodes: read_nodes(d)?,
                        signature: d.buffer("data upgrade signature")?.to_vec(),
                    })
                } else {
                    None
                };
                // The manifest is the rest of the message (its own encoding delimits it).
                let manifest = if flags & 16 != 0 { Some(d.rest().to_vec()) } else { None };
                Message::Data { request, proof: Proof { fork, block, hash, seek, upgrade, manifest } }
            }
            4 => {
                let request = d.uint("noData request")?;
                let reason = if d.is_empty() {
                    None
                } else if d.uint("noData flags")? & 1 != 0 {
                    Some(match d.uint("noData reason")? {
                        2 => NoDataReason::InvalidRequest,
                        _ => NoDataReason::NotAvailable,
                    })
                } else {
                    None
                };
                Message::NoData { request, reason }
            }
            5 => {
                let start = d.uint("want start")?;
                let length = d.uint("want length")?;
                let any = !d.is_empty() && d.uint("want flags")? & 1 != 0;
                Message::Want { start, length, any }
            }
            6 => Message::Unwant { start: d.uint("unwant start")?, length: d.uint("unwant length")? },
            7 => {
                let start = d.uint("bitfield start")?;
                let n = d.count("bitfield words", 4)?;
                let bitfield =
                    (0..n).map(|_| d.array::<4>("bitfield word").map(u32::from_le_bytes)).collect::<Result<_, _>>()?;
                Message::Bitfield { start, bitfield }
            }
            8 => {
                let flags = d.uint("range flags")?;
                let start = d.uint("range start")?;
                let length = if flags & 2 != 0 { 1 } else { d.uint("range length")? };
                Message::Range { drop: flags & 1 != 0, start, length }
            }
            9 => Message::Extension { name: d.string("extension name")?, message: d.rest().to_vec() },
            SEEK_BLOCK => Message::SeekBlock {
                id: d.uint("request id")?,
                fork: d.uint("fork")?,
                length: d.uint("length")?,
                bytes: d.uint("seek bytes")?,
            },
            CIPHER_SWITCH => Message::CipherSwitch,
            RANGE_REQUEST => Message::RangeRequest {
                id: d.uint("range request id")?,
                fork: d.uint("range request fork")?,
                length: d.uint("range request length")?,
                start: d.uint("range request start")?,
                count: d.uint("range request count")?,
            },
            RANGE_DATA => {
                let request = d.uint("range data request")?;
                let fork = d.uint("range data fork")?;
                let length = d.uint("range data length")?;
                let start = d.uint("range data start")?;
                // Every block takes at least its length's byte.
                let n = d.count("range data blocks", 1)?;
                let blocks =
                    (0..n).map(|_| d.buffer("range data block").map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
                Message::RangeData {
                    request,
                    proof: RangeProof { fork, length, start, blocks, nodes: read_nodes(d)?, hashed: Vec::new() },
                }
            }
            _ => return Err(DecodeError::Invalid("message type")),
        })
    }
}

impl Frame {
    /// The frame with its length in front.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the frame to `out`, its body written in place: a block's bytes are copied once,
    /// into the send buffer. The length goes in front in its shortest form (a body under 64 KiB
    /// is moved back by the bytes the form saves).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        const ROOM: usize = 5;
        let start = out.len();
        out.extend_from_slice(&[0; ROOM]);
        let mut body = Encoder::appending(std::mem::take(out));
        self.encode_body(&mut body);
        let mut buf = body.finish();
        let len = (buf.len() - start - ROOM) as u64;
        let mut prefix = Encoder::with_capacity(9);
        prefix.uint(len);
        let prefix = prefix.finish();
        // A body of 4 GiB or more needs more room than was left; frames never come near it.
        assert!(prefix.len() <= ROOM, "a frame body of {len} bytes");
        let at = start + ROOM - prefix.len();
        buf[at..start + ROOM].copy_from_slice(&prefix);
        if at > start {
            buf.copy_within(at.., start);
            buf.truncate(buf.len() - (at - start));
        }
        *out = buf;
    }

    /// The body: `uint channel` ‖ `uint type` ‖ payload, a protomux message.
    fn encode_body(&self, body: &mut Encoder) {
        match self {
            Frame::Control(c) => {
                body.uint(0);
                match c {
                    Control::Open { local_id, protocol, id, flags, capability } => {
                        body.uint(1).uint(*local_id).string(protocol);
                        body.buffer(id.as_deref().unwrap_or_default());
                        if protocol != BLIND_RELAY {
                            body.uint(*flags).fixed(capability);
                        }
                    }
                    Control::Reject { remote_id } => {
                        body.uint(2).uint(*remote_id);
                    }
                    Control::Close { local_id } => {
                        body.uint(3).uint(*local_id);
                    }
                }
            }
            Frame::Channel { channel, message } => {
                body.uint(*channel).uint(message.kind());
                message.encode_payload(body);
            }
        }
    }

    /// Appends the frame as a protomux message (reference holepunch-wire §3), for JS peers: the
    /// body alone, as the secret-stream frame around it delimits it.
    pub fn encode_message(&self, out: &mut Vec<u8>) {
        let mut body = Encoder::appending(std::mem::take(out));
        self.encode_body(&mut body);
        *out = body.finish();
    }

    /// Decodes one protomux message from a JS peer into `frames` (with the bytes each took): a
    /// single message or a batch (channel 0, type 0). As lenient as protomux: an empty message
    /// (a keep-alive) holds nothing, bytes after a message's fields are ignored, a message
    /// type this side does not know is skipped, and the open of another protocol is kept with
    /// no capability (the endpoint rejects it). Only hypercore's own fields must decode.
    pub fn decode_message(msg: &[u8], frames: &mut Vec<(Frame, usize)>) -> Result<(), DecodeError> {
        Frame::decode_message_on(msg, frames, &mut Vec::new())
    }

    /// As [`Frame::decode_message`], keeping in `other` the peer's channels of other protocols
    /// (opened with [`BLIND_RELAY`], at most [`MAX_OTHER_CHANNELS`]): their messages come as
    /// [`Message::Other`]. The same `other` goes with every message of a connection, in order.
    pub fn decode_message_on(
        msg: &[u8],
        frames: &mut Vec<(Frame, usize)>,
        other: &mut Vec<u64>,
    ) -> Result<(), DecodeError> {
        if msg.is_empty() {
            return Ok(());
        }
        let mut d = Decoder::new(msg);
        let channel = d.uint("channel")?;
        let kind = d.uint("message type")?;
        if channel != 0 || kind != 0 {
            if let Some(f) = Frame::decode_entry(channel, kind, &mut d, other)? {
                frames.push((f, msg.len()));
            }
            return Ok(());
        }
        // A batch: `uint firstChannel`, then `uint len` ‖ (type ‖ payload), where a length of
        // zero switches to the channel that follows.
        let mut channel = d.uint("batch channel")?;
        while !d.is_empty() {
            let len = d.len("batch entry")?;
            if len == 0 {
                channel = d.uint("batch channel")?;
                continue;
            }
            let entry = d.take(len, "batch entry")?;
            let mut e = Decoder::new(entry);
            let kind = e.uint("message type")?;
            if channel == 0 && kind == 0 {
                return Err(DecodeError::Invalid("a batch inside a batch"));
            }
            if let Some(f) = Frame::decode_entry(channel, kind, &mut e, other)? {
                frames.push((f, len));
            }
        }
        Ok(())
    }

    /// One protomux message of type `kind` on `channel`, leniently (see [`Frame::decode_message`]).
    fn decode_entry(
        channel: u64,
        kind: u64,
        d: &mut Decoder<'_>,
        other: &mut Vec<u64>,
    ) -> Result<Option<Frame>, DecodeError> {
        if channel != 0 && other.contains(&channel) {
            let payload = d.take(d.remaining(), "payload")?.to_vec();
            return Ok(Some(Frame::Channel { channel, message: Message::Other { kind, payload } }));
        }
        if channel != 0 {
            // Types Hypercore does not register are skipped, as protomux skips them; hyperfs's
            // own messages are taken (a hyperfs node on the JS wire sends them).
            if kind > 9 && !matches!(kind, SEEK_BLOCK | CIPHER_SWITCH | RANGE_REQUEST | RANGE_DATA) {
                return Ok(None);
            }
            return Ok(Some(Frame::Channel { channel, message: Message::decode(kind, d)? }));
        }
        Ok(Some(Frame::Control(match kind {
            1 => {
                let local_id = d.uint("open id")?;
                let mut protocol = d.string("open protocol")?;
                let id = d.buffer("open id")?;
                let id = (!id.is_empty()).then(|| id.to_vec());
                // Hypercore registers "hypercore" as an alias of its protocol.
                if protocol == "hypercore" {
                    protocol = PROTOCOL.into();
                }
                let (flags, capability) = if protocol == PROTOCOL {
                    (d.uint("open flags")?, d.array("open capability")?)
                } else {
                    (0, [0; 32])
                };
                if protocol == BLIND_RELAY && !other.contains(&local_id) {
                    if other.len() >= MAX_OTHER_CHANNELS {
                        return Err(DecodeError::Invalid("too many blind-relay channels"));
                    }
                    other.push(local_id);
                }
                Control::Open { local_id, protocol, id, flags, capability }
            }
            2 => Control::Reject { remote_id: d.uint("reject")? },
            3 => {
                let local_id = d.uint("close")?;
                other.retain(|c| *c != local_id);
                Control::Close { local_id }
            }
            _ => return Ok(None),
        })))
    }

    /// Decodes one frame body (without its length).
    pub fn decode(body: &[u8]) -> Result<Frame, DecodeError> {
        let mut d = Decoder::new(body);
        let channel = d.uint("channel")?;
        let kind = d.uint("message type")?;
        let frame = if channel == 0 {
            Frame::Control(match kind {
                1 => {
                    let local_id = d.uint("open id")?;
                    let protocol = d.string("open protocol")?;
                    let id = d.buffer("open discovery key")?;
                    let id = (!id.is_empty()).then(|| id.to_vec());
                    let (flags, capability) = if protocol == BLIND_RELAY {
                        (0, [0; 32])
                    } else {
                        (d.uint("open flags")?, d.array("open capability")?)
                    };
                    Control::Open { local_id, protocol, id, flags, capability }
                }
                2 => Control::Reject { remote_id: d.uint("reject")? },
                3 => Control::Close { local_id: d.uint("close")? },
                _ => return Err(DecodeError::Invalid("control message type")),
            })
        } else {
            Frame::Channel { channel, message: Message::decode(kind, &mut d)? }
        };
        d.finish()?;
        Ok(frame)
    }

    /// Splits the first whole frame off `buf`: `Ok(None)` while more bytes are needed.
    pub fn take(buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
        let mut d = Decoder::new(buf);
        let len = match d.uint("frame length") {
            Ok(n) => n,
            Err(_) if buf.len() < 9 => return Ok(None),
            Err(e) => return Err(e),
        };
        if len as usize > MAX_FRAME {
            return Err(DecodeError::Invalid("a frame larger than the limit"));
        }
        let head = buf.len() - d.remaining();
        if d.remaining() < len as usize {
            return Ok(None);
        }
        let frame = Frame::decode(&buf[head..head + len as usize])?;
        Ok(Some((frame, head + len as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_node(i: u64) -> Node {
        Node { index: i, size: i * 3 + 1, hash: [i as u8; 32] }
    }

    fn samples() -> Vec<Frame> {
        let proof = Proof {
            fork: 2,
            block: Some(BlockProof {
                index: 7,
                value: b"hello".to_vec(),
                nodes: vec![sample_node(14), sample_node(9)],
            }),
            hash: None,
            seek: Some(SeekProof { bytes: 100, nodes: vec![sample_node(3)] }),
            upgrade: Some(UpgradeProof {
                start: 0,
                length: 8,
                nodes: vec![sample_node(7)],
                additional_nodes: vec![],
                signature: vec![9; 64],
            }),
            manifest: Some(vec![1, 0, 0, 1]),
        };
        let request = Request {
            fork: 1,
            block: Some(RequestIndexed { index: 5, nodes: 2 }),
            hash: Some(RequestIndexed { index: 10, nodes: 0 }),
            seek: Some(RequestSeek { bytes: 4096, padding: 0 }),
            upgrade: Some(RequestUpgrade { start: 3, length: 4 }),
            manifest: true,
        };
        let ch = |message| Frame::Channel { channel: 1, message };
        vec![
            Frame::Control(Control::Open {
                local_id: 1,
                protocol: PROTOCOL.into(),
                id: Some(vec![7; 32]),
                flags: 1,
                capability: [3; 32],
            }),
            Frame::Control(Control::Reject { remote_id: 4 }),
            Frame::Control(Control::Close { local_id: 2 }),
            ch(Message::Sync { flags: 7, fork: 0, length: 3, remote_length: 0 }),
            ch(Message::Request { id: 1, request, priority: Some(1) }),
            ch(Message::Request { id: 2, request: Request::default(), priority: None }),
            ch(Message::Cancel { request: 1 }),
            ch(Message::Data { request: 1, proof }),
            ch(Message::NoData { request: 3, reason: Some(NoDataReason::NotAvailable) }),
            ch(Message::NoData { request: 3, reason: None }),
            ch(Message::Want { start: 0, length: 1024, any: true }),
            ch(Message::Unwant { start: 0, length: 1024 }),
            ch(Message::Bitfield { start: 32, bitfield: vec![0xdead_beef, 1] }),
            ch(Message::Range { drop: false, start: 0, length: 1 }),
            ch(Message::Range { drop: true, start: 5, length: 100 }),
            ch(Message::Extension { name: "x".into(), message: vec![1, 2, 3] }),
            ch(Message::RangeRequest { id: 9, fork: 1, length: 300, start: 17, count: 16 }),
            ch(Message::RangeData {
                request: 9,
                proof: RangeProof {
                    fork: 1,
                    length: 300,
                    start: 17,
                    blocks: vec![b"one".to_vec(), Vec::new(), vec![5; 700]],
                    nodes: vec![sample_node(32), sample_node(39)],
                    hashed: Vec::new(),
                },
            }),
        ]
    }

    /// Frames written one after another into one buffer, bodies of every length form (one
    /// byte, three, five), read back in order; each is the bytes `encode` gives alone.
    #[test]
    fn frames_encoded_into_one_buffer_read_back_in_order() {
        let mut frames = samples();
        for len in [0usize, 200, 300, 70_000, 1 << 20] {
            frames.push(Frame::Channel {
                channel: 3,
                message: Message::Extension { name: "x".into(), message: vec![7; len] },
            });
        }
        let mut buf = vec![0xaa];
        for f in &frames {
            f.encode_into(&mut buf);
        }
        let mut at = 1;
        for f in &frames {
            let (back, used) = Frame::take(&buf[at..]).expect("decodes").expect("whole");
            assert_eq!(&back, f);
            assert_eq!(buf[at..at + used], f.encode()[..], "the shortest length form");
            at += used;
        }
        assert_eq!((buf[0], at), (0xaa, buf.len()));
    }

    #[test]
    fn every_message_round_trips() {
        for f in samples() {
            let bytes = f.encode();
            let (back, used) = Frame::take(&bytes).expect("decodes").expect("whole");
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
            // Every strict prefix is "need more", never an error or a panic.
            for cut in 0..bytes.len() {
                assert_eq!(Frame::take(&bytes[..cut]).ok().flatten(), None, "{f:?} cut at {cut}");
            }
        }
    }

    /// The bytes of hypercore@11's lib/messages.js for the sync and request of reference §4.6
    /// (the transcript there shows one more zero byte in the request, which JS's decoder
    /// ignores as trailing; its encoder writes what is asserted here).
    #[test]
    fn matches_the_js_transcript() {
        let sync =
            Frame::Channel { channel: 1, message: Message::Sync { flags: 7, fork: 0, length: 0, remote_length: 0 } };
        assert_eq!(sync.encode()[1..], [0x01, 0x00, 0x07, 0x00, 0x00, 0x00]);
        let request = Request {
            fork: 0,
            block: Some(RequestIndexed { index: 0, nodes: 0 }),
            upgrade: Some(RequestUpgrade { start: 0, length: 3 }),
            manifest: true,
            ..Request::default()
        };
        let req = Frame::Channel { channel: 1, message: Message::Request { id: 1, request, priority: None } };
        assert_eq!(req.encode()[1..], [0x01, 0x01, 0x19, 0x01, 0x00, 0x00, 0x00, 0x00, 0x03]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn decoded(msg: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        Frame::decode_message(msg, &mut frames).expect("decodes");
        frames.into_iter().map(|(f, _)| f).collect()
    }

    /// Protomux messages of the JS session in reference holepunch-wire §4.7 (b): the opens with
    /// their capabilities, a batch of sync and range, a request and the data that answers it —
    /// decoded, and encoded back to the same bytes.
    #[test]
    fn protomux_messages_match_the_js_session() {
        let open = hex("0001010f6879706572636f72652f616c70686120fb892b1c77fdcb05dcbd234607208b7036e00a13e7f2cc0bbaa463924e57865a01416f4a62703073e3c60c15660bc3fe755af34572d656ceeb35c822b81543be33");
        let frames = decoded(&open);
        assert!(matches!(&frames[..], [Frame::Control(Control::Open { local_id: 1, flags: 1, .. })]));
        let mut again = Vec::new();
        frames[0].encode_message(&mut again);
        assert_eq!(again, open);
        // A batch on channel 1: sync {0x0f, 0, 3, 0} and range {0, 3}.
        let batch = decoded(&hex("00000105000f0003000408000003"));
        assert_eq!(
            batch,
            vec![
                Frame::Channel {
                    channel: 1,
                    message: Message::Sync { flags: 15, fork: 0, length: 3, remote_length: 0 }
                },
                Frame::Channel { channel: 1, message: Message::Range { drop: false, start: 0, length: 3 } },
            ]
        );
        for m in [
            "01000e000303",
            "0101210100010101",
            "01030101000105776f726c64010005f2391083cfaa8043205fed76cdff843902146ca92aebcd7a196814ec45d8c8f8",
        ] {
            let frames = decoded(&hex(m));
            assert_eq!(frames.len(), 1, "{m}");
            let mut again = Vec::new();
            frames[0].encode_message(&mut again);
            assert_eq!(again, hex(m));
        }
        // The open of a protocol hyperfs does not speak (its bytes from §3.6), then a switch to
        // channel 1 in the same batch: the open is kept, to be rejected.
        let other = decoded(&hex("0000000e01020770726f746f2d7900026832000104080000030001"));
        assert!(
            matches!(&other[0], Frame::Control(Control::Open { local_id: 2, protocol, .. }) if protocol == "proto-y")
        );
        assert_eq!(
            other[1],
            Frame::Channel { channel: 1, message: Message::Range { drop: false, start: 0, length: 3 } }
        );
        // A keep-alive holds nothing; an unknown type on a channel is skipped.
        assert!(decoded(&[]).is_empty());
        assert!(decoded(&[1, 40, 1, 2, 3]).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::take(&bytes);
            let _ = Frame::decode(&bytes);
            let _ = Frame::decode_message(&bytes, &mut Vec::new());
        }

        #[test]
        fn mutated_frames_never_panic(i in 0usize..32, at in 0usize..4096, byte in any::<u8>()) {
            let samples = samples();
            let mut bytes = samples[i % samples.len()].encode();
            let n = bytes.len();
            bytes[at % n] = byte;
            let _ = Frame::take(&bytes);
        }
    }
}
