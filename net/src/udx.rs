//! UDX (reference holepunch-wire §5): reliable, congestion-controlled byte streams over UDP as
//! libudx / `udx-native` carry them, sans IO — datagrams and `now` in; datagrams, bytes and a
//! deadline out.
//!
//! The wire is libudx's: a 20-byte header (magic `ff`, version 1, type flags, data offset, the
//! receiver's stream id, the receive window in bytes, the packet's sequence number and the
//! cumulative ack), sequence numbers that count packets, one ACK for every DATA or END packet
//! received (with SACK blocks while packets are missing), MESSAGE datagrams beside the stream,
//! END as a half close and DESTROY as an abort. Nothing of the sender's algorithms is on the
//! wire; here loss is found by SACK (a packet three behind one the peer holds) and by the
//! retransmission timer (RFC 6298, at least 1 s, doubled each time, six in a row end the stream),
//! and the window is NewReno's in packets.
//!
//! Invariant: nothing a peer sends makes this panic or hold more than the receive window of
//! out-of-order bytes; a packet that is not UDX, or for another stream, is not taken.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

pub const MAGIC: u8 = 0xff;
pub const VERSION: u8 = 1;
pub const HEADER: usize = 20;
/// Payload per packet over IPv4 (an IP packet of 1200 bytes) and IPv6.
pub const MAX_PAYLOAD_V4: usize = 1152;
pub const MAX_PAYLOAD_V6: usize = 1132;
/// The receive window this side advertises, and the most out-of-order bytes it holds.
pub const RECV_WINDOW: u32 = 4 << 20;
/// Packets of a window ahead of the cumulative ack that are kept out of order.
const MAX_AHEAD: u32 = 65_536;
/// SACK blocks in one ACK.
const MAX_SACKS: usize = 50;
const MIN_RTO: Duration = Duration::from_secs(1);
const MAX_RTO: Duration = Duration::from_secs(30);
/// Timeouts of one packet in a row that end the stream.
const MAX_TIMEOUTS: u32 = 6;
const INITIAL_CWND: f64 = 10.0;

/// Packet type flags.
pub mod kind {
    pub const DATA: u8 = 0x01;
    pub const END: u8 = 0x02;
    pub const SACK: u8 = 0x04;
    pub const MESSAGE: u8 = 0x08;
    pub const DESTROY: u8 = 0x10;
    pub const HEARTBEAT: u8 = 0x20;
}

/// A packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub data_offset: u8,
    /// The receiver's stream id.
    pub id: u32,
    pub rwnd: u32,
    pub seq: u32,
    pub ack: u32,
}

impl Header {
    /// The header and what follows it (past `data_offset`), or `None` for a datagram that is not
    /// a UDX packet.
    pub fn parse(d: &[u8]) -> Option<(Header, &[u8])> {
        if d.len() < HEADER || d[0] != MAGIC || d[1] != VERSION {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        let h =
            Header { kind: d[2], data_offset: d[3], id: u32_at(4), rwnd: u32_at(8), seq: u32_at(12), ack: u32_at(16) };
        let body = d.get(HEADER + usize::from(h.data_offset)..)?;
        Some((h, body))
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[MAGIC, VERSION, self.kind, self.data_offset]);
        for v in [self.id, self.rwnd, self.seq, self.ack] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `a - b` as a signed distance modulo 2³².
fn diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// A packet sent and not yet acknowledged.
#[derive(Debug)]
struct Sent {
    seq: u32,
    kind: u8,
    payload: Vec<u8>,
    sent_at: Instant,
    /// Sent more than once (its RTT is not sampled, as Karn says).
    again: bool,
    sacked: bool,
    /// Found lost and not sent again yet.
    lost: bool,
    /// The order of its last transmission among all of this stream's: a packet is lost when
    /// packets sent after it arrived (RACK's rule, by transmission order).
    tx: u64,
}

/// Why a stream ended other than by both sides' END.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdxError {
    #[error("the peer reset the UDX stream")]
    Reset,
    #[error("the UDX stream timed out (no acknowledgement after {MAX_TIMEOUTS} retransmissions)")]
    TimedOut,
}

/// One UDX stream, sans IO.
#[derive(Debug)]
pub struct Stream {
    pub local_id: u32,
    pub remote_id: u32,
    max_payload: usize,
    // Sending.
    /// Bytes written and not yet put in packets.
    unsent: VecDeque<u8>,
    end_wanted: bool,
    end_sent: bool,
    next_seq: u32,
    inflight: VecDeque<Sent>,
    /// Bytes of payload in flight.
    inflight_bytes: usize,
    cwnd: f64,
    ssthresh: f64,
    /// While recovering from a loss: the seq that ends the recovery.
    recovery: Option<u32>,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Transmissions so far (see `Sent::tx`).
    tx: u64,
    rto: Duration,
    timeouts: u32,
    /// A tail-loss probe went for what is in flight (until the next ack).
    probed: bool,
    remote_rwnd: u32,
    // Receiving.
    ack: u32,
    ahead: BTreeMap<u32, (u8, Vec<u8>)>,
    ahead_bytes: usize,
    received: Vec<u8>,
    messages: VecDeque<Vec<u8>>,
    remote_ended: bool,
    acks_due: usize,
    /// Heartbeats to send (a window probe), and datagrams waiting (MESSAGE).
    heartbeat_due: bool,
    outgoing_messages: VecDeque<Vec<u8>>,
    error: Option<UdxError>,
    destroy_sent: bool,
}

impl Stream {
    /// A stream with `local_id`, talking to the peer's stream `remote_id`, with payloads of at
    /// most `max_payload` bytes ([`MAX_PAYLOAD_V4`], [`MAX_PAYLOAD_V6`]).
    pub fn new(local_id: u32, remote_id: u32, max_payload: usize) -> Stream {
        Stream {
            local_id,
            remote_id,
            max_payload,
            unsent: VecDeque::new(),
            end_wanted: false,
            end_sent: false,
            next_seq: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            cwnd: INITIAL_CWND,
            ssthresh: f64::from(u16::MAX),
            recovery: None,
            srtt: None,
            rttvar: Duration::ZERO,
            tx: 0,
            rto: MIN_RTO,
            timeouts: 0,
            probed: false,
            remote_rwnd: RECV_WINDOW,
            ack: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            received: Vec::new(),
            messages: VecDeque::new(),
            remote_ended: false,
            acks_due: 0,
            heartbeat_due: false,
            outgoing_messages: VecDeque::new(),
            error: None,
            destroy_sent: false,
        }
    }

    /// Queues bytes to send.
    pub fn write(&mut self, data: &[u8]) {
        self.unsent.extend(data);
    }

    /// Bytes written and not yet acknowledged: what a writer waits on before it writes more.
    pub fn buffered(&self) -> usize {
        self.unsent.len() + self.inflight_bytes
    }

    /// Ends this side of the stream once what was written went.
    pub fn end(&mut self) {
        self.end_wanted = true;
    }

    /// Aborts the stream: a DESTROY goes, nothing more.
    pub fn destroy(&mut self) {
        if self.error.is_none() {
            self.error = Some(UdxError::Reset);
        }
    }

    /// Sends a HEARTBEAT before anything else: a peer that learns of new streams from packets
    /// for ids it does not know (as `wire-peer.js` does with `udx-native`) takes this one, so the
    /// first DATA packet reaches the stream it opened.
    pub fn probe(&mut self) {
        self.heartbeat_due = true;
    }

    /// Sends an unreliable datagram on the stream.
    pub fn send_message(&mut self, data: &[u8]) {
        self.outgoing_messages.push_back(data.to_vec());
    }

    /// The bytes received in order since the last call.
    pub fn take_received(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.received)
    }

    /// A datagram received as MESSAGE.
    pub fn take_message(&mut self) -> Option<Vec<u8>> {
        self.messages.pop_front()
    }

    /// Whether the peer ended its side and every byte before its END was taken.
    pub fn remote_ended(&self) -> bool {
        self.remote_ended && self.received.is_empty()
    }

    /// Whether both sides ended and everything sent was acknowledged.
    pub fn finished(&self) -> bool {
        self.remote_ended && self.end_sent && self.inflight.is_empty()
    }

    pub fn error(&self) -> Option<&UdxError> {
        self.error.as_ref()
    }

    /// The smoothed round-trip time, once sampled.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    fn rwnd(&self) -> u32 {
        RECV_WINDOW.saturating_sub((self.received.len() + self.ahead_bytes) as u32)
    }

    fn header(&self, kind: u8, seq: u32) -> Header {
        Header { kind, data_offset: 0, id: self.remote_id, rwnd: self.rwnd(), seq, ack: self.ack }
    }

    /// Takes a packet for this stream (its header's id is `local_id`).
    pub fn on_packet(&mut self, h: &Header, body: &[u8], now: Instant) {
        if self.error.is_some() {
            return;
        }
        if h.kind & kind::DESTROY != 0 {
            if diff(h.seq, self.ack) >= 0 {
                self.error = Some(UdxError::Reset);
                self.destroy_sent = true;
            }
            return;
        }
        if h.kind & kind::MESSAGE != 0 {
            if self.messages.len() < 64 {
                self.messages.push_back(body.to_vec());
            }
            return;
        }
        self.remote_rwnd = h.rwnd;
        self.on_ack(h.ack, now);
        if h.kind & kind::SACK != 0 && h.kind & (kind::DATA | kind::END) == 0 {
            self.on_sacks(body);
        }
        if h.kind & kind::HEARTBEAT != 0 {
            self.acks_due += 1;
        }
        if h.kind & (kind::DATA | kind::END) != 0 {
            self.acks_due += 1;
            self.on_data(h, body);
        }
    }

    fn on_data(&mut self, h: &Header, body: &[u8]) {
        let ahead = diff(h.seq, self.ack);
        if ahead < 0 || ahead as u32 >= MAX_AHEAD || self.remote_ended {
            return;
        }
        let payload = if h.kind & kind::DATA != 0 { body } else { &[][..] };
        if ahead > 0 {
            if self.ahead_bytes + payload.len() > RECV_WINDOW as usize || self.ahead.contains_key(&h.seq) {
                return;
            }
            self.ahead_bytes += payload.len();
            self.ahead.insert(h.seq, (h.kind, payload.to_vec()));
            return;
        }
        self.deliver(h.kind, payload);
        while let Some((k, p)) = self.ahead.remove(&self.ack) {
            self.ahead_bytes -= p.len();
            self.deliver(k, &p);
        }
    }

    fn deliver(&mut self, k: u8, payload: &[u8]) {
        self.ack = self.ack.wrapping_add(1);
        if self.remote_ended {
            return;
        }
        self.received.extend_from_slice(payload);
        if k & kind::END != 0 {
            self.remote_ended = true;
            self.ahead.clear();
            self.ahead_bytes = 0;
        }
    }

    fn on_ack(&mut self, ack: u32, now: Instant) {
        // Only what was sent can be acknowledged.
        if diff(ack, self.next_seq) > 0 {
            return;
        }
        let mut newly = 0usize;
        let mut delivered = None;
        while let Some(front) = self.inflight.front() {
            if diff(ack, front.seq) <= 0 {
                break;
            }
            let Some(p) = self.inflight.pop_front() else { break };
            if !p.sacked {
                self.inflight_bytes -= p.payload.len();
            }
            newly += 1;
            delivered = delivered.max(Some(p.tx));
            if !p.again {
                self.sample_rtt(now.saturating_duration_since(p.sent_at));
            }
        }
        if let Some(tx) = delivered {
            self.detect_losses(tx);
        }
        if newly == 0 {
            return;
        }
        self.timeouts = 0;
        self.probed = false;
        if let Some(end) = self.recovery {
            if diff(ack, end) >= 0 {
                self.recovery = None;
            }
        }
        if self.recovery.is_none() {
            for _ in 0..newly {
                if self.cwnd < self.ssthresh {
                    self.cwnd += 1.0;
                } else {
                    self.cwnd += 1.0 / self.cwnd;
                }
            }
        }
    }

    fn sample_rtt(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let delta = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let s = self.srtt.unwrap_or(r);
        self.rto = (s + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO);
    }

    fn on_sacks(&mut self, body: &[u8]) {
        let mut delivered: Option<u64> = None;
        for pair in body.chunks_exact(8).take(MAX_SACKS) {
            let start = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let end = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            // Valid only within what was sent and not yet acknowledged.
            let first = self.inflight.front().map_or(self.next_seq, |p| p.seq);
            if diff(start, first) < 0 || diff(end, start) <= 0 || diff(end, self.next_seq) > 0 {
                continue;
            }
            for p in self.inflight.iter_mut() {
                if diff(p.seq, start) >= 0 && diff(p.seq, end) < 0 {
                    if !p.sacked {
                        self.inflight_bytes -= p.payload.len();
                    }
                    p.sacked = true;
                    p.lost = false;
                    delivered = delivered.max(Some(p.tx));
                }
            }
        }
        if let Some(tx) = delivered {
            self.detect_losses(tx);
        }
    }

    /// Packets sent before the one with transmission order `delivered` arrived, by a margin
    /// (three transmissions, fewer when few are in flight), are lost.
    fn detect_losses(&mut self, delivered: u64) {
        let outstanding = self.inflight.iter().filter(|p| !p.sacked).count() as u64;
        let margin = outstanding.saturating_sub(1).clamp(1, 3);
        let mut lost_any = false;
        for p in self.inflight.iter_mut() {
            if !p.sacked && !p.lost && p.tx + margin <= delivered {
                p.lost = true;
                lost_any = true;
            }
        }
        if lost_any && self.recovery.is_none() {
            self.ssthresh = (self.cwnd / 2.0).max(2.0);
            self.cwnd = self.ssthresh;
            self.recovery = Some(self.next_seq);
        }
    }

    /// When [`Stream::on_timeout`] wants to run.
    pub fn deadline(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let rto = self.inflight.iter().filter(|p| !p.sacked).map(|p| p.sent_at + self.rto).min();
        match (rto, self.probe_deadline()) {
            (Some(r), Some(p)) => Some(r.min(p)),
            (r, p) => r.or(p),
        }
    }

    /// When the tail-loss probe goes: two round trips after the last packet sent, if nothing
    /// was acknowledged meanwhile (RFC 8985's PTO), so a lost last packet costs a round trip or
    /// two rather than the retransmission timer's second.
    fn probe_deadline(&self) -> Option<Instant> {
        let srtt = self.srtt?;
        if self.probed {
            return None;
        }
        let last = self.inflight.iter().filter(|p| !p.sacked && !p.lost).map(|p| p.sent_at).max()?;
        Some(last + (srtt * 2).max(Duration::from_millis(10)))
    }

    /// The timers: the tail-loss probe (see `probe_deadline`), then the retransmission timer:
    /// the oldest unacknowledged packet goes again, the window collapses, the timer backs off;
    /// six in a row end the stream.
    pub fn on_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline() else { return };
        if now < deadline {
            return;
        }
        let rto = self.inflight.iter().filter(|p| !p.sacked).map(|p| p.sent_at + self.rto).min();
        if rto.is_none_or(|r| now < r) {
            // The probe: the newest packet in flight goes again, the window untouched; its ACK
            // (with SACK blocks) shows what else is missing.
            self.probed = true;
            if let Some(p) = self.inflight.iter_mut().rev().find(|p| !p.sacked && !p.lost) {
                p.lost = true;
            }
            return;
        }
        self.timeouts += 1;
        if self.timeouts >= MAX_TIMEOUTS {
            self.error = Some(UdxError::TimedOut);
            self.destroy_sent = true;
            return;
        }
        self.ssthresh = (self.cwnd / 2.0).max(2.0);
        self.cwnd = 1.0;
        self.recovery = Some(self.next_seq);
        self.rto = (self.rto * 2).min(MAX_RTO);
        // The oldest goes again; the rest follow as acks show them missing.
        if let Some(p) = self.inflight.iter_mut().find(|p| !p.sacked) {
            p.lost = true;
        }
        if self.inflight.is_empty() && self.remote_rwnd == 0 {
            self.heartbeat_due = true;
        }
    }

    /// The next datagram to send, if any: messages, a heartbeat (a probe), ACKs (with SACK
    /// blocks while packets are missing), lost packets again, new ones while the windows allow.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        if let Some(e) = &self.error {
            if !self.destroy_sent && *e == UdxError::Reset {
                self.destroy_sent = true;
                self.header(kind::DESTROY, self.next_seq).write(out);
                return true;
            }
            return false;
        }
        if let Some(m) = self.outgoing_messages.pop_front() {
            self.header(kind::MESSAGE, self.next_seq).write(out);
            out.extend_from_slice(&m);
            return true;
        }
        if self.heartbeat_due {
            self.heartbeat_due = false;
            self.header(kind::HEARTBEAT, self.next_seq).write(out);
            return true;
        }
        // Every DATA or END packet received gets its ACK at once, ahead of anything else.
        if self.acks_due > 0 {
            self.acks_due -= 1;
            let sacks = self.sack_blocks();
            let k = if sacks.is_empty() { 0 } else { kind::SACK };
            self.header(k, self.next_seq).write(out);
            for (s, e) in sacks {
                out.extend_from_slice(&s.to_le_bytes());
                out.extend_from_slice(&e.to_le_bytes());
            }
            return true;
        }
        // Again, what was lost (within the window: one per free slot, the oldest first).
        let in_window = self.inflight.iter().filter(|p| !p.sacked && !p.lost).count() as f64;
        if in_window < self.cwnd.max(1.0) {
            let (ack, rwnd, id) = (self.ack, self.rwnd(), self.remote_id);
            if let Some(p) = self.inflight.iter_mut().find(|p| p.lost) {
                p.lost = false;
                p.again = true;
                p.sent_at = now;
                self.tx += 1;
                p.tx = self.tx;
                Header { kind: p.kind, data_offset: 0, id, rwnd, seq: p.seq, ack }.write(out);
                out.extend_from_slice(&p.payload);
                return true;
            }
        }
        // New data, while the congestion and receive windows allow.
        let pipe = self.inflight.iter().filter(|p| !p.sacked && !p.lost).count() as f64;
        let window_ok = pipe < self.cwnd
            && self.inflight_bytes + self.max_payload <= self.remote_rwnd.max(self.max_payload as u32) as usize;
        let end_now = self.end_wanted && !self.end_sent && self.unsent.len() <= self.max_payload;
        if window_ok && (!self.unsent.is_empty() || end_now) {
            let n = self.unsent.len().min(self.max_payload);
            let mut payload = Vec::with_capacity(n);
            let (front, back) = self.unsent.as_slices();
            let from_front = n.min(front.len());
            payload.extend_from_slice(&front[..from_front]);
            payload.extend_from_slice(&back[..n - from_front]);
            self.unsent.drain(..n);
            let mut k = if n > 0 { kind::DATA } else { 0 };
            if end_now {
                k |= kind::END;
                self.end_sent = true;
            }
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            self.header(k, seq).write(out);
            out.extend_from_slice(&payload);
            self.inflight_bytes += payload.len();
            self.tx += 1;
            let tx = self.tx;
            self.inflight.push_back(Sent {
                seq,
                kind: k,
                payload,
                sent_at: now,
                again: false,
                sacked: false,
                lost: false,
                tx,
            });
            return true;
        }
        false
    }

    /// The runs of packets held ahead of the cumulative ack, as `(start, end)`.
    fn sack_blocks(&self) -> Vec<(u32, u32)> {
        let mut blocks: Vec<(u32, u32)> = Vec::new();
        for &seq in self.ahead.keys() {
            if let Some((_, end)) = blocks.last_mut().filter(|(_, end)| *end == seq) {
                *end = seq.wrapping_add(1);
            } else if blocks.len() == MAX_SACKS {
                break;
            } else {
                blocks.push((seq, seq.wrapping_add(1)));
            }
        }
        blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn packets(s: &mut Stream, now: Instant) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        let mut out = Vec::new();
        while s.poll_transmit(now, &mut out) {
            all.push(out.clone());
        }
        all
    }

    fn feed(s: &mut Stream, datagrams: &[Vec<u8>], now: Instant) {
        for d in datagrams {
            let (hd, body) = Header::parse(d).expect("a UDX packet");
            assert_eq!(hd.id, s.local_id);
            s.on_packet(&hd, body, now);
        }
    }

    /// Reference §5.8: the datagrams udx-native exchanged, ids 1 and 2: `hello`, an unordered
    /// message, END each way.
    #[test]
    fn packets_match_udx_native() {
        let now = Instant::now();
        let (mut a, mut b) = (Stream::new(1, 2, MAX_PAYLOAD_V4), Stream::new(2, 1, MAX_PAYLOAD_V4));
        a.write(b"hello");
        let p = packets(&mut a, now);
        assert_eq!(p, vec![h("ff0101000200000000004000000000000000000068656c6c6f")]);
        feed(&mut b, &p, now);
        // What arrived was read (the window the ACK advertises counts bytes not yet read).
        let hello = b.take_received();
        let acks = packets(&mut b, now);
        assert_eq!(acks, vec![h("ff01000001000000000040000000000001000000")]);
        feed(&mut a, &acks, now);
        a.send_message(b"unordered");
        a.end();
        let p = packets(&mut a, now);
        assert_eq!(
            p,
            vec![
                h("ff01080002000000000040000100000000000000756e6f726465726564"),
                h("ff01020002000000000040000100000000000000"),
            ],
            "the message, then END (both carry seq 1: a message consumes none)"
        );
        feed(&mut b, &p, now);
        assert_eq!(hello, b"hello");
        assert_eq!(b.take_message().as_deref(), Some(&b"unordered"[..]));
        assert!(b.remote_ended());
        b.end();
        let p = packets(&mut b, now);
        assert_eq!(
            p,
            vec![h("ff01000001000000000040000000000002000000"), h("ff01020001000000000040000000000002000000")],
            "the ACK of A's END, then B's END"
        );
        feed(&mut a, &p, now);
        assert_eq!(packets(&mut a, now), vec![h("ff01000002000000000040000200000001000000")]);
        assert!(a.finished() && a.remote_ended());
    }

    /// A lossy path, simulated: 3% of datagrams each way dropped (the retransmissions too) and
    /// the rest reordered in pairs; 3 MiB still arrives whole and in order, through SACK and the
    /// timer.
    #[test]
    fn bytes_arrive_whole_through_loss_and_reordering() {
        let mut now = Instant::now();
        let (mut a, mut b) = (Stream::new(7, 9, MAX_PAYLOAD_V4), Stream::new(9, 7, MAX_PAYLOAD_V4));
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        a.write(&data);
        a.end();
        let mut got = Vec::new();
        let mut n = 0u64;
        for _ in 0..200_000 {
            let mut pa = packets(&mut a, now);
            let mut pb = packets(&mut b, now);
            for p in [&mut pa, &mut pb] {
                p.retain(|_| {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (n >> 33) % 100 >= 3
                });
                for pair in p.chunks_mut(2) {
                    pair.reverse();
                }
            }
            feed(&mut b, &pa, now);
            feed(&mut a, &pb, now);
            got.extend(b.take_received());
            if b.remote_ended() && a.finished() {
                break;
            }
            now += Duration::from_millis(5);
            a.on_timeout(now);
            b.on_timeout(now);
            assert!(a.error().is_none(), "{:?}", a.error());
        }
        assert!(
            b.remote_ended(),
            "the END arrived: {} of {} bytes, {} in flight, cwnd {}, {:?}",
            got.len(),
            data.len(),
            a.inflight.len(),
            a.cwnd,
            a.error()
        );
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrived in order");
    }

    /// Hostile packets: an ack of what was never sent, SACKs out of range, a far-ahead seq, a
    /// data offset past the end, foreign magic — nothing panics and nothing is taken.
    #[test]
    fn hostile_packets_are_ignored() {
        let now = Instant::now();
        let mut s = Stream::new(1, 2, MAX_PAYLOAD_V4);
        s.write(b"abc");
        let _ = packets(&mut s, now);
        let mut bad = Vec::new();
        Header { kind: kind::SACK, data_offset: 0, id: 1, rwnd: 0, seq: 0, ack: 1000 }.write(&mut bad);
        bad.extend_from_slice(&[5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        feed(&mut s, &[bad], now);
        assert_eq!(s.buffered(), 3, "an ack past what was sent acknowledges nothing");
        let mut far = Vec::new();
        Header { kind: kind::DATA, data_offset: 0, id: 1, rwnd: 0, seq: 1 << 30, ack: 0 }.write(&mut far);
        far.extend_from_slice(b"xyz");
        feed(&mut s, &[far], now);
        assert!(s.take_received().is_empty() && s.ahead.is_empty());
        let mut off = Vec::new();
        Header { kind: kind::DATA, data_offset: 200, id: 1, rwnd: 0, seq: 0, ack: 0 }.write(&mut off);
        assert!(Header::parse(&off).is_none(), "a data offset past the end");
        assert!(Header::parse(&[0x13; 40]).is_none(), "a dht-rpc datagram is not UDX");
        assert!(Header::parse(&[0xff, 1, 0]).is_none());
    }

    /// A peer that never answers: six timeouts end the stream.
    #[test]
    fn a_silent_peer_times_the_stream_out() {
        let mut now = Instant::now();
        let mut s = Stream::new(1, 2, MAX_PAYLOAD_V4);
        s.write(b"anyone?");
        for _ in 0..100 {
            let _ = packets(&mut s, now);
            now += Duration::from_secs(5);
            s.on_timeout(now);
            if s.error().is_some() {
                break;
            }
        }
        assert_eq!(s.error(), Some(&UdxError::TimedOut));
    }
}
