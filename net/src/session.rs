//! The replication session of one core with one peer, sans IO (quinn-proto's shape): messages
//! and the time go in, with the core to read; messages to send, proofs verified and ready to
//! store ([`Arrival`]), events and the next deadline come out. The session never changes the
//! core: the driver (the endpoint) owns the socket, the clock and the storing — it stores each
//! arrival through the core's owner and hands the result back ([`Session::stored`]). The
//! session owns what the peer has, what was asked of it, and the rules a peer must keep.
//!
//! A session answers requests from the local core (proofs by the engine), asks the peer for the
//! blocks its readers want or, when downloading everything, for every block it lacks a window at
//! a time, follows the peer's signed length (upgrades) and forks (truncations), and reports a
//! peer that breaks the rules as [`Misbehaviour`]: a proof that does not verify, data nobody
//! asked for in a shape nobody asked for, or more requests than the budget allows. The driver
//! then drops the connection; nothing a lying peer sent was stored (only what verified comes
//! out to be stored).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperfs_engine::hypercore::proof::Request;
use hyperfs_engine::hypercore::{Applied, Verified};
use hyperfs_engine::{Error, Hypercore};

use crate::wire::{sync_flags, Message, NoDataReason};

/// How long a request may go unanswered before it is given up (and another peer tried).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight to one peer while downloading everything: enough for about
/// [`WINDOW_BYTES`] of the core's blocks (by their mean size), at least this many…
pub const DOWNLOAD_WINDOW: usize = 32;
/// …and at most this many (a core of small blocks: 512 of 4 KiB).
pub const MAX_DOWNLOAD_WINDOW: usize = 1024;
/// The bytes a full download keeps asked for from one peer at least…
const WINDOW_BYTES: u64 = 2 << 20;
/// …and at most: the window grows to twice the bytes the peer's measured rate brings in the
/// shortest time an answer took ([`Pace`]), the link's bandwidth-delay product with room.
const MAX_WINDOW_BYTES: u64 = 32 << 20;
/// The rate is measured over spans of at least this long.
const RATE_SPAN: Duration = Duration::from_millis(100);
/// A peer may send this many messages that make work here (wants, ranges, bitfields) at once…
const MESSAGE_BURST: f64 = 4096.0;
/// …and this many a second after that.
const MESSAGE_RATE: f64 = 2048.0;
/// Requests for blocks have a budget of their own: an honest downloader's requests follow our
/// answers ([`DOWNLOAD_WINDOW`] in flight), which on a fast link come back at tens of thousands
/// of 4 KiB blocks a second (a clone from a drive served from snapshots outran 2,048 a second
/// and was dropped as a flooder). A flooder sends millions a second and is still dropped within
/// a fraction of one.
const REQUEST_BURST: f64 = 65536.0;
const REQUEST_RATE: f64 = 65536.0;
/// A peer that leaves this many requests in a row unanswered is dropped.
const MAX_MISSED: u32 = 3;
/// At most this many ranges describe what we have, in answer to a want or on open.
const MAX_RANGES: usize = 4096;
/// At most this many runs are kept of what a peer has; past them, what it says it has is
/// not recorded (its blocks are still asked for by `want`, and other peers serve the rest). A
/// peer's `range` and `bitfield` messages cannot grow a session's memory further.
const MAX_REMOTE_RUNS: usize = 1 << 16;
/// A `range` message costs this much of a request: one is an O(log n) insert, and a peer says
/// what it has in up to [`MAX_RANGES`] of them at once.
const RANGE_COST: f64 = 1.0 / 16.0;
/// A `bitfield` message costs one request of the budget per this many 32-bit words.
const BITFIELD_WORDS_PER_REQUEST: usize = 256;
/// A range request ([`Message::RangeRequest`], hyperfs peers) asks for about this many bytes of
/// a core's blocks (by their mean size), so a window holds several…
const RANGE_BYTES: u64 = WINDOW_BYTES / 4;
/// …and for at most this many blocks; a peer is asked for no more than this at once either.
pub const MAX_RANGE_BLOCKS: u64 = 256;
/// A range answer stops after the block that brings it to this many bytes (the asker asks
/// again for the rest): a frame stays well under [`crate::wire::MAX_FRAME`].
const RANGE_ANSWER_BYTES: u64 = 2 << 20;
/// Steps one top-up may take over blocks it cannot ask for (the peer lacks them, or they are
/// in flight) before it waits for the next message.
const TOP_UP_STEPS: usize = 4096;

/// How many requests a full download of `core` keeps in flight to one peer: `bytes` of its
/// blocks by their mean size, so a core of small blocks is not held to a round trip per 32 of
/// them.
fn download_window(core: &Hypercore, bytes: u64) -> usize {
    usize::try_from(bytes / mean_block(core)).unwrap_or(MAX_DOWNLOAD_WINDOW).clamp(DOWNLOAD_WINDOW, MAX_DOWNLOAD_WINDOW)
}

/// What a peer's answers show of the link: the bytes they bring a second and the shortest time
/// one took from its request (the round trip with nothing queued before it). A full download
/// keeps twice their product asked for ([`Pace::window`]): a window that holds less leaves the
/// link idle for part of each round trip, and the rate it measures grows with it until the
/// link is full.
#[derive(Debug, Clone)]
struct Pace {
    /// Bytes of answers since `since`.
    bytes: u64,
    since: Option<Instant>,
    /// Bytes a second, over the last span.
    rate: f64,
    min_latency: Option<Duration>,
}

impl Pace {
    fn new() -> Pace {
        Pace { bytes: 0, since: None, rate: 0.0, min_latency: None }
    }

    /// An answer of `bytes` came at `now` to a request sent at `sent` (its deadline less the
    /// request timeout).
    fn answered(&mut self, bytes: u64, sent: Instant, now: Instant) {
        let latency = now.saturating_duration_since(sent);
        self.min_latency = Some(self.min_latency.map_or(latency, |m| m.min(latency)));
        let since = *self.since.get_or_insert(sent);
        self.bytes += bytes;
        let span = now.saturating_duration_since(since);
        if span >= RATE_SPAN {
            self.rate = self.bytes as f64 / span.as_secs_f64();
            (self.bytes, self.since) = (0, Some(now));
        }
    }

    /// The bytes to keep asked for: twice the rate times the shortest latency, within
    /// [`WINDOW_BYTES`]..=[`MAX_WINDOW_BYTES`].
    fn window(&self) -> u64 {
        let bdp = self.rate * self.min_latency.map_or(0.0, |l| l.as_secs_f64());
        ((2.0 * bdp) as u64).clamp(WINDOW_BYTES, MAX_WINDOW_BYTES)
    }
}

/// How many blocks one range request asks for: [`RANGE_BYTES`] of them by their mean size.
fn range_blocks(core: &Hypercore) -> u64 {
    (RANGE_BYTES / mean_block(core)).clamp(1, MAX_RANGE_BLOCKS)
}

fn mean_block(core: &Hypercore) -> u64 {
    core.byte_length().checked_div(core.length()).unwrap_or(0).max(1)
}

/// Why the peer is to be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misbehaviour(pub String);

impl std::fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened, for the driver and the readers waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Block `index` is now stored (verified).
    Block { index: u64 },
    /// The core's signed length grew, or it moved to a new fork.
    Upgraded { fork: u64, length: u64 },
    /// The peer cannot give block `index` (it said so, or did not answer in time).
    Missing { index: u64 },
    /// A seek for byte `bytes` was answered (`ok`: its proof is stored; the reader seeks again
    /// locally) or could not be.
    Sought { bytes: u64, ok: bool },
    /// The peer's view of the core changed (its length or what it has).
    RemoteChanged,
}

/// What a call yields: messages to send, events to report and verified proofs to store.
#[derive(Debug, Default)]
pub struct Output {
    pub messages: Vec<Message>,
    pub events: Vec<Event>,
    /// For the driver to store through the core's owner, then hand back to
    /// [`Session::stored`], in order.
    pub store: Vec<Arrival>,
}

/// A proof from the peer, verified against the core and not yet stored.
#[derive(Debug)]
pub struct Arrival {
    pub verified: Verified,
    /// The request it answers (none for a conflict a check of the peer's history found).
    asked: Option<InFlight>,
}

impl Arrival {
    /// What to store, and the receipt to hand back with the result.
    pub fn into_parts(self) -> (Verified, Receipt) {
        (self.verified, Receipt(self.asked))
    }
}

/// What [`Session::stored`] needs to finish an [`Arrival`].
#[derive(Debug)]
pub struct Receipt(Option<InFlight>);

/// The blocks of one core asked of some peer, shared by every session of that core (one per
/// peer), so that a full download from several peers splits the blocks among them instead of
/// asking each for all of them. A session claims a block when it asks for it and lets go when
/// the answer is stored or given up; a faster peer answers sooner, frees its window sooner and
/// so claims more: the split follows the measured rates. At the end (every missing block
/// claimed), a session with room asks for blocks another peer holds, once more each, so a slow
/// peer does not hold up the last blocks (BitTorrent's end game).
#[derive(Debug, Default)]
pub struct Claims(Mutex<ClaimState>);

#[derive(Debug, Default)]
struct ClaimState {
    /// Sessions asking for each claimed block.
    asked: HashMap<u64, u32>,
    /// Sessions sharing these claims.
    sessions: usize,
    /// Counts claims let go without their block (a give-up): a session that skipped a claimed
    /// block looks again when this moves.
    released: u64,
}

impl Claims {
    fn state(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions ask for block `index` now.
    fn asked(&self, index: u64) -> u32 {
        self.state().asked.get(&index).copied().unwrap_or(0)
    }

    fn claim(&self, index: u64) {
        *self.state().asked.entry(index).or_default() += 1;
    }

    fn release(&self, index: u64, stored: bool) {
        let mut s = self.state();
        if let Some(n) = s.asked.get_mut(&index) {
            *n -= 1;
            if *n == 0 {
                s.asked.remove(&index);
            }
        }
        if !stored {
            s.released += 1;
        }
    }

    fn released(&self) -> u64 {
        self.state().released
    }

    fn others(&self) -> bool {
        self.state().sessions > 1
    }
}

/// Sorted, disjoint ranges `[start, end)` of blocks.
#[derive(Debug, Default, Clone)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Adds `[start, end)`, merging what it touches: O(log n + runs merged). (It once scanned
    /// every run below `end` per insert, quadratic in a peer's `range` messages.)
    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        // Runs are disjoint and sorted, so those touching are the last ones starting at or
        // before `end`.
        let touching: Vec<(u64, u64)> =
            self.0.range(..=end).rev().take_while(|(_, &re)| re >= start).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in touching {
            s = s.min(a);
            e = e.max(b);
            self.0.remove(&a);
        }
        self.0.insert(s, e);
    }

    fn remove(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, u64)> =
            self.0.range(..end).rev().take_while(|(_, &re)| re > start).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in hit {
            self.0.remove(&a);
            if a < start {
                self.0.insert(a, start);
            }
            if b > end {
                self.0.insert(end, b);
            }
        }
    }

    fn contains(&self, i: u64) -> bool {
        self.0.range(..=i).next_back().is_some_and(|(_, &e)| i < e)
    }

    /// The first index at or after `i` inside a run.
    fn next_from(&self, i: u64) -> Option<u64> {
        if self.contains(i) {
            return Some(i);
        }
        self.0.range(i..).next().map(|(&s, _)| s)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn truncate(&mut self, length: u64) {
        self.remove(length, u64::MAX);
    }
}

#[derive(Debug)]
struct InFlight {
    block: Option<u64>,
    /// A range request's blocks, `start..end` ([`Message::RangeRequest`]).
    range: Option<(u64, u64)>,
    /// The byte a seek request locates.
    seek: Option<u64>,
    upgrade: bool,
    /// An upgrade from length 0 asked after one from our length failed to verify: does the
    /// peer hold another history of the same fork (the writer equivocated), or is it lying?
    probe: bool,
    /// A seek asked as [`Message::SeekBlock`]: answered with the block the byte is in.
    seek_block: bool,
    deadline: Instant,
}

impl InFlight {
    fn new(block: Option<u64>, seek: Option<u64>, upgrade: bool, deadline: Instant) -> InFlight {
        InFlight { block, range: None, seek, upgrade, probe: false, seek_block: false, deadline }
    }

    /// The blocks it asks for: its block or its range.
    fn blocks(&self) -> impl Iterator<Item = u64> {
        let (start, end) = self.range.unwrap_or((0, 0));
        self.block.into_iter().chain(start..end)
    }
}

/// One core's replication with one peer.
#[derive(Debug)]
pub struct Session {
    /// The peer's signed state as it last told us.
    remote_fork: u64,
    remote_length: u64,
    remote_synced: bool,
    /// What the peer said it has.
    remote_has: Ranges,
    /// Our length the peer last heard of.
    told_length: Option<(u64, u64)>,
    in_flight: HashMap<u64, InFlight>,
    /// What `in_flight` holds, kept beside it so no call scans the window (which holds up to
    /// `MAX_DOWNLOAD_WINDOW` requests): the blocks asked for, how many ask for an upgrade, and
    /// the requests by deadline.
    blocks_in_flight: HashSet<u64>,
    upgrades_in_flight: usize,
    by_deadline: BTreeSet<(Instant, u64)>,
    next_id: u64,
    /// Blocks our readers asked for that wait for the peer to have them.
    wanted: BTreeMap<u64, ()>,
    download_all: bool,
    /// Every block below this one is local (where a full download looks next).
    download_from: u64,
    /// Where a full download's next look starts: every block between `download_from` and here
    /// is local, asked for (of this peer or, when looked at, another), or lacked by the peer
    /// when looked at. Anything that could change that (the peer's word on what it has, a
    /// request given up here or by another peer's session, a new fork) starts the look over
    /// from `download_from`; the look is then O(new requests) per answer, not O(window).
    scan_from: u64,
    /// What the peer may still make us do: (messages, requests) at `budget_at`.
    budget: (f64, f64),
    budget_at: Instant,
    /// How long a request may wait for its answer.
    timeout: Duration,
    /// Requests in a row that timed out.
    missed: u32,
    /// Whether a writer asked this peer for its whole tree (see `maybe_upgrade`).
    probed: bool,
    /// The core's blocks asked of any peer ([`Claims`]), and those this session claimed.
    claims: Arc<Claims>,
    claimed: HashSet<u64>,
    /// A byte whose seek-and-block the peer could not answer: its next seek asks for the tree
    /// nodes only (the peer may lack the block, or be a peer that does not know the message).
    plain_seek: Option<u64>,
    /// Whether the peer is a hyperfs node: seeks go as [`Message::SeekBlock`]; a JS peer, which
    /// does not know it, gets Hypercore's seek requests.
    hyperfs_peer: bool,
    /// Whether the peer answers [`Message::RangeRequest`] (a hyperfs node that said so).
    ranges: bool,
    /// Blocks readers want were added to `wanted` since the last top-up: the driver calls
    /// [`Session::flush`] after a batch of wants, which asks for them in runs.
    unflushed: bool,
    /// [`Claims::released`] when the last look skipped a block another peer was asked for.
    released_seen: u64,
    /// Where the end game's next look for blocks to ask a second time starts.
    dup_from: u64,
    /// The peer's measured rate and round trip, which size a full download's window.
    pace: Pace,
}

impl Session {
    /// A session whose channel just opened: say where we are and what we have.
    pub fn open(core: &Hypercore, download_all: bool, now: Instant) -> (Session, Output) {
        let mut s = Session {
            remote_fork: 0,
            remote_length: 0,
            remote_synced: false,
            remote_has: Ranges::default(),
            told_length: None,
            in_flight: HashMap::new(),
            blocks_in_flight: HashSet::new(),
            upgrades_in_flight: 0,
            by_deadline: BTreeSet::new(),
            next_id: 1,
            wanted: BTreeMap::new(),
            download_all,
            download_from: 0,
            scan_from: 0,
            budget: (MESSAGE_BURST, REQUEST_BURST),
            budget_at: now,
            timeout: REQUEST_TIMEOUT,
            missed: 0,
            probed: false,
            claims: Arc::default(),
            claimed: HashSet::new(),
            plain_seek: None,
            hyperfs_peer: true,
            ranges: true,
            unflushed: false,
            released_seen: 0,
            dup_from: 0,
            pace: Pace::new(),
        };
        s.claims.state().sessions += 1;
        let mut out = Output::default();
        s.sync(core, &mut out);
        out.messages.extend(have_ranges(core, 0, core.length()));
        (s, out)
    }

    /// Whether the peer is a hyperfs node, which takes [`Message::SeekBlock`] (default: yes;
    /// JS peers do not).
    pub fn set_hyperfs_peer(&mut self, on: bool) {
        self.hyperfs_peer = on;
    }

    /// Whether the peer answers [`Message::RangeRequest`] (default: yes; JS peers and hyperfs
    /// nodes from before range requests do not).
    pub fn set_ranges(&mut self, on: bool) {
        self.ranges = on;
    }

    /// How long requests sent from now on wait for an answer (default [`REQUEST_TIMEOUT`]).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Shares the claims of the core's other sessions (see [`Claims`]); before any request.
    pub fn share_claims(&mut self, claims: Arc<Claims>) {
        self.claims.state().sessions -= 1;
        claims.state().sessions += 1;
        self.claims = claims;
    }

    /// Switches to downloading everything (a sparse replica becomes a full copy) or back; the
    /// next [`Session::tick`] asks for what is missing.
    pub fn set_download_all(&mut self, all: bool) {
        self.download_all = all;
    }

    /// The peer's signed length, as it last said.
    pub fn remote_length(&self) -> u64 {
        self.remote_length
    }

    /// Whether the peer said it has block `index`.
    pub fn remote_has(&self, index: u64) -> bool {
        self.remote_has.contains(index)
    }

    /// Whether a request is waiting for an answer.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The earliest moment [`Session::tick`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|d| d.0)
    }

    /// Asks the peer for block `index` (if it has it; otherwise the block waits until it says it
    /// does). Returns false when this peer cannot help now.
    pub fn want(&mut self, core: &Hypercore, index: u64, now: Instant, out: &mut Output) -> bool {
        if core.has(index) {
            out.events.push(Event::Block { index });
            return true;
        }
        if self.blocks_in_flight.contains(&index) {
            return true;
        }
        if !self.remote_has.contains(index) {
            self.wanted.insert(index, ());
            return false;
        }
        if self.ranges_possible(core) && index < core.length() {
            // Asked with the rest of the batch of wants it came in, in runs
            // ([`Session::flush`]).
            self.wanted.insert(index, ());
            self.unflushed = true;
            return true;
        }
        self.request_block(core, index, now, out)
    }

    /// Asks for the blocks wanted since the last call, consecutive ones in one range request
    /// each. The driver calls it after every batch of [`Session::want`]s.
    pub fn flush(&mut self, core: &Hypercore, now: Instant, out: &mut Output) {
        if std::mem::take(&mut self.unflushed) {
            self.top_up(core, now, out);
        }
    }

    /// Whether runs of blocks can be asked of this peer as ranges now: a hyperfs peer on our
    /// fork, as long as ours (a range is proven against our tree at our length).
    fn ranges_possible(&self, core: &Hypercore) -> bool {
        self.ranges && self.remote_fork == core.fork() && self.remote_length >= core.length()
    }

    /// Asks the peer for block `index` now, whether or not it said it has it: a peer does not
    /// say what it got from us, and an own drive looking for a block `prune` cleared asks its
    /// peers in turn (one that lacks it says so). Returns false when this peer cannot be asked:
    /// the block is past its length.
    pub fn ask(&mut self, core: &Hypercore, index: u64, now: Instant, out: &mut Output) -> bool {
        if self.blocks_in_flight.contains(&index) {
            return true;
        }
        index < self.remote_length && self.request_block(core, index, now, out)
    }

    /// Asks the peer for the tree nodes that locate byte `bytes` (a hash and seek request).
    /// Returns false when this peer cannot help: it is on another fork or behind us.
    pub fn seek(&mut self, core: &Hypercore, bytes: u64, now: Instant, out: &mut Output) -> bool {
        if self.remote_fork != core.fork() || self.remote_length < core.length() {
            return false;
        }
        if self.in_flight.values().any(|r| r.seek == Some(bytes)) {
            return true;
        }
        let request = match core.seek_request(bytes) {
            Ok(Some(r)) => r,
            // Nothing to ask: the reader can seek already.
            Ok(None) => {
                out.events.push(Event::Sought { bytes, ok: true });
                return true;
            }
            Err(_) => return false,
        };
        let id = self.take_id();
        let mut asked = InFlight::new(None, Some(bytes), false, now + self.timeout);
        if self.plain_seek.take() == Some(bytes) || !self.hyperfs_peer {
            out.messages.push(Message::Request { id, request, priority: None });
        } else {
            // One round trip: the peer seeks and sends the block with its proof; the reader
            // then seeks locally and finds the block here.
            asked.seek_block = true;
            out.messages.push(Message::SeekBlock { id, fork: core.fork(), length: core.length(), bytes });
        }
        self.put(id, asked);
        true
    }

    /// The local core changed (an append, a truncation, a block stored): tell the peer.
    pub fn local_changed(&mut self, core: &Hypercore, out: &mut Output) {
        let before = self.told_length;
        self.sync(core, out);
        match before {
            Some((fork, len)) if fork == core.fork() && core.length() > len => {
                out.messages.extend(have_ranges(core, len, core.length()));
            }
            Some((fork, _)) if fork == core.fork() => {}
            // A new fork: what the peer knew we had is void; say it all again.
            Some(_) => out.messages.extend(have_ranges(core, 0, core.length())),
            None => {}
        }
    }

    /// Tells the peer that blocks `start..start + length`, stored here since it last heard, are
    /// now here too (a replica passing on what another peer gave it). Only blocks within the
    /// length the peer was told, and nothing before the first sync.
    pub fn local_have(&mut self, core: &Hypercore, start: u64, length: u64, out: &mut Output) {
        let Some((fork, told)) = self.told_length else { return };
        if fork != core.fork() {
            return;
        }
        let end = start.saturating_add(length).min(told);
        if start < end {
            out.messages.push(Message::Range { drop: false, start, length: end - start });
        }
    }

    /// Gives up requests past their deadline (their readers hear so and ask elsewhere). A peer
    /// that has left [`MAX_MISSED`] requests in a row unanswered is silent or too slow to keep.
    pub fn tick(&mut self, core: &Hypercore, now: Instant) -> Result<Output, Misbehaviour> {
        let mut out = Output::default();
        let late: Vec<u64> = self.by_deadline.iter().take_while(|d| d.0 <= now).map(|d| d.1).collect();
        for id in late {
            if let Some(r) = self.take(id) {
                self.gave_up(&r, &mut out);
                out.messages.push(Message::Cancel { request: id });
                self.missed += 1;
            }
        }
        if self.missed >= MAX_MISSED {
            return Err(Misbehaviour(format!("the peer left {} requests in a row unanswered", self.missed)));
        }
        self.top_up(core, now, &mut out);
        Ok(out)
    }

    /// Handles one message from the peer, reading the core only: a proof that verifies comes
    /// out as an [`Arrival`] for the driver to store.
    pub fn on_message(&mut self, core: &Hypercore, msg: Message, now: Instant) -> Result<Output, Misbehaviour> {
        let mut out = Output::default();
        match msg {
            Message::Sync { fork, length, .. } => {
                self.scan_from = 0;
                let changed = !self.remote_synced || fork != self.remote_fork || length != self.remote_length;
                if fork < self.remote_fork {
                    return Err(Misbehaviour(format!("the peer went back from fork {} to {fork}", self.remote_fork)));
                }
                if fork > self.remote_fork {
                    // What it had on the old fork may be gone.
                    self.remote_has = Ranges::default();
                    self.dup_from = 0;
                }
                self.remote_fork = fork;
                self.remote_length = length;
                self.remote_synced = true;
                self.remote_has.truncate(length);
                if changed {
                    out.events.push(Event::RemoteChanged);
                }
                self.maybe_upgrade(core, now, &mut out);
                self.top_up(core, now, &mut out);
            }
            Message::Request { id, request, .. } => {
                self.charge_request(now)?;
                out.messages.push(answer(core, id, &request));
            }
            Message::SeekBlock { id, fork, length, bytes } => {
                self.charge_request(now)?;
                let not_available = Message::NoData { request: id, reason: Some(NoDataReason::NotAvailable) };
                out.messages.push(match (fork == core.fork()).then(|| core.seek_block_proof(bytes, length)) {
                    Some(Ok(proof)) => Message::Data { request: id, proof },
                    Some(Err(Error::InvalidRequest(_) | Error::OutOfBounds(_))) => {
                        Message::NoData { request: id, reason: Some(NoDataReason::InvalidRequest) }
                    }
                    _ => not_available,
                });
            }
            Message::RangeRequest { id, fork, length, start, count } => {
                let count = count.min(MAX_RANGE_BLOCKS);
                self.charge_requests(now, count.max(1) as f64)?;
                out.messages.push(
                    match (fork == core.fork()).then(|| core.range_proof(start, count, length, RANGE_ANSWER_BYTES)) {
                        Some(Ok(proof)) => Message::RangeData { request: id, proof },
                        Some(Err(Error::InvalidRequest(_) | Error::OutOfBounds(_))) => {
                            Message::NoData { request: id, reason: Some(NoDataReason::InvalidRequest) }
                        }
                        _ => Message::NoData { request: id, reason: Some(NoDataReason::NotAvailable) },
                    },
                );
            }
            Message::RangeData { request, proof } => {
                self.missed = 0;
                let Some(asked) = self.take(request) else { return Ok(out) };
                let Some((start, end)) = asked.range else {
                    return Err(Misbehaviour(format!("the peer answered request {request} with a range")));
                };
                let given = proof.blocks.len() as u64;
                if proof.start != start || given == 0 || given > end - start {
                    return Err(Misbehaviour(format!(
                        "the peer answered a request for blocks {start}..{end} with {given} from {}",
                        proof.start
                    )));
                }
                let bytes: u64 = proof.blocks.iter().map(|b| b.len() as u64).sum();
                match core.verify_range(proof) {
                    Ok(verified) => {
                        self.pace.answered(bytes, asked.deadline - self.timeout, now);
                        // Each block is stored and reported as a request of its own would be.
                        for v in verified {
                            let Some(index) = v.block() else { continue };
                            self.blocks_in_flight.insert(index);
                            let one = InFlight::new(Some(index), None, false, asked.deadline);
                            out.store.push(Arrival { verified: v, asked: Some(one) });
                        }
                        // What the answer left out (past its byte budget, or not at the peer)
                        // is asked for again.
                        for index in start + given..end {
                            self.release(index, false);
                            self.wanted.insert(index, ());
                        }
                        self.scan_from = 0;
                        return Ok(out);
                    }
                    Err(e @ (Error::Verification(_) | Error::Decode { .. } | Error::OutOfBounds(_))) => {
                        return Err(Misbehaviour(format!("the peer sent a range proof that does not verify: {e}")));
                    }
                    Err(e) => self.not_taken(&asked, &e, "verifying a range proof", &mut out),
                }
                self.top_up(core, now, &mut out);
            }
            // A cipher switch belongs to the connection, which takes it before any session.
            Message::Cancel { .. }
            | Message::Extension { .. }
            | Message::Unwant { .. }
            | Message::CipherSwitch
            | Message::Other { .. } => {}
            Message::Data { request, proof } => {
                self.missed = 0;
                let Some(asked) = self.take(request) else {
                    // JS ignores data for requests it does not know (a late answer).
                    return Ok(out);
                };
                if asked.range.is_some() {
                    return Err(Misbehaviour(format!("the peer answered range request {request} with a block")));
                }
                // A seek-and-block is answered with whichever block the byte is in.
                let any_block = asked.probe || asked.seek_block;
                if !any_block && proof.block.as_ref().map(|b| b.index) != asked.block && proof.block.is_some() {
                    return Err(Misbehaviour(format!(
                        "the peer answered request {request} with block {:?} where {:?} was asked",
                        proof.block.as_ref().map(|b| b.index),
                        asked.block
                    )));
                }
                if asked.probe {
                    match core.verify_proof(proof) {
                        Ok(v) if v.shows_conflict() => {
                            tracing::warn!("the writer equivocated; the proof is kept");
                            out.store.push(Arrival { verified: v.checked_only(), asked: None });
                        }
                        Ok(_) => {}
                        Err(e @ Error::Equivocation { .. }) => {
                            tracing::warn!(error = %e, "the writer equivocated; the proof is kept");
                        }
                        Err(e @ (Error::Verification(_) | Error::Decode { .. } | Error::OutOfBounds(_))) => {
                            return Err(Misbehaviour(format!("the peer sent a proof that does not verify: {e}")));
                        }
                        Err(e) => tracing::warn!(error = %e, "checking a peer's history"),
                    }
                    return Ok(out);
                }
                // An upgrade from our length that does not verify may be another history of
                // the same fork (see `probe`).
                let may_probe = asked.upgrade
                    && !self.probed
                    && proof.fork == core.fork()
                    && core.length() > 0
                    && self.remote_length > 0
                    && proof.upgrade.as_ref().is_some_and(|u| u.start > 0);
                let bytes = proof.block.as_ref().map_or(0, |b| b.value.len() as u64);
                match core.verify_proof(proof) {
                    // The driver stores it and hands the result back (`stored`); till then its
                    // block is not asked for again.
                    Ok(verified) => {
                        if let Some(index) = asked.block {
                            self.blocks_in_flight.insert(index);
                            self.pace.answered(bytes, asked.deadline - self.timeout, now);
                        }
                        out.store.push(Arrival { verified, asked: Some(asked) });
                        return Ok(out);
                    }
                    Err(Error::Verification(_)) if may_probe => {
                        self.gave_up(&asked, &mut out);
                        self.probe(core, now, &mut out);
                        return Ok(out);
                    }
                    Err(e @ (Error::Verification(_) | Error::Decode { .. } | Error::OutOfBounds(_))) => {
                        return Err(Misbehaviour(format!("the peer sent a proof that does not verify: {e}")));
                    }
                    Err(Error::InvalidRequest(e)) => {
                        return Err(Misbehaviour(format!("the peer sent a malformed proof: {e}")));
                    }
                    Err(e) => self.not_taken(&asked, &e, "verifying a proof", &mut out),
                }
                self.top_up(core, now, &mut out);
            }
            Message::NoData { request, .. } => {
                self.missed = 0;
                if let Some(r) = self.take(request) {
                    // It does not have it (a range's first block) after all.
                    if let Some(index) = r.blocks().next() {
                        self.remote_has.remove(index, index + 1);
                    }
                    if r.seek_block {
                        self.plain_seek = r.seek;
                    }
                    match r.range {
                        Some((start, end)) => {
                            // Only its first block is known to be lacking: the rest are asked
                            // for again.
                            for index in start + 1..end {
                                self.release(index, false);
                                self.wanted.insert(index, ());
                            }
                            self.gave_up(&InFlight { block: Some(start), range: None, ..r }, &mut out);
                        }
                        None => self.gave_up(&r, &mut out),
                    }
                }
                self.top_up(core, now, &mut out);
            }
            Message::Want { start, length, .. } => {
                self.charge(now, 1.0)?;
                let end = start.saturating_add(length).min(core.length());
                out.messages.extend(have_ranges(core, start.min(end), end));
            }
            Message::Range { drop, start, length } => {
                self.scan_from = 0;
                self.charge(now, RANGE_COST)?;
                let end = start.saturating_add(length);
                if drop {
                    self.remote_has.remove(start, end);
                } else if self.remote_has.len() < MAX_REMOTE_RUNS {
                    self.remote_has.insert(start, end);
                }
                out.events.push(Event::RemoteChanged);
                self.top_up(core, now, &mut out);
            }
            Message::Bitfield { start, bitfield } => {
                self.scan_from = 0;
                self.charge(now, 1.0 + (bitfield.len() / BITFIELD_WORDS_PER_REQUEST) as f64)?;
                // Runs of set bits, each one insert (a bit at a time was a BTreeMap walk per bit).
                let mut run: Option<u64> = None;
                let mut at = start;
                for word in bitfield.iter().copied().chain([0]) {
                    for bit in 0..32u32 {
                        let set = word & (1 << bit) != 0;
                        match (set, run) {
                            (true, None) => run = Some(at),
                            (false, Some(s)) => {
                                if self.remote_has.len() < MAX_REMOTE_RUNS {
                                    self.remote_has.insert(s, at);
                                }
                                run = None;
                            }
                            _ => {}
                        }
                        let Some(next) = at.checked_add(1) else { break };
                        at = next;
                    }
                }
                out.events.push(Event::RemoteChanged);
                self.top_up(core, now, &mut out);
            }
        }
        Ok(out)
    }

    /// What became of an [`Arrival`] the driver stored ([`Hypercore::store_verified`] through the
    /// core's owner): the events for its readers, and what to ask for next. `core` is the core
    /// as it is now.
    pub fn stored(
        &mut self,
        core: &Hypercore,
        receipt: Receipt,
        result: Result<Applied, Error>,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        let Some(asked) = receipt.0 else { return out }; // a conflict recorded: nothing waits on it
        if let Some(index) = asked.block {
            self.blocks_in_flight.remove(&index);
        }
        match result {
            Ok(applied) => {
                if let Some(index) = asked.block {
                    self.release(index, applied.block.is_some());
                }
                if let Some(t) = applied.truncated_to {
                    self.download_from = self.download_from.min(t);
                    self.scan_from = 0;
                    self.dup_from = 0;
                }
                if let Some(index) = applied.block {
                    out.events.push(Event::Block { index });
                }
                if applied.upgraded_to.is_some() || applied.truncated_to.is_some() {
                    out.events.push(Event::Upgraded { fork: core.fork(), length: core.length() });
                    self.sync(core, &mut out);
                }
                if applied.block.is_none() {
                    if let Some(index) = asked.block {
                        out.events.push(Event::Missing { index });
                    }
                }
                if let Some(bytes) = asked.seek {
                    out.events.push(Event::Sought { bytes, ok: true });
                }
            }
            Err(e) => self.not_taken(&asked, &e, "storing a verified proof", &mut out),
        }
        self.top_up(core, now, &mut out);
        out
    }

    /// A proof that answers `asked` but was not taken, through no fault of the peer: the
    /// writer's (it signed two histories; the core takes nothing more from that fork and says
    /// why) or ours (reading or storing, or the core moved to another fork meanwhile). The
    /// readers waiting on it hear so and may ask again.
    fn not_taken(&mut self, asked: &InFlight, e: &Error, doing: &str, out: &mut Output) {
        match e {
            Error::Equivocation { .. } => tracing::warn!(error = %e, "the writer equivocated; the proof is kept"),
            // An own core's block fetched for its bytes (`Endpoint::fetch_bytes`): only its
            // owner changes the core.
            Error::NotWritable => tracing::debug!("a block of an own core handed over, not stored"),
            _ => tracing::warn!(error = %e, "{doing}"),
        }
        self.gave_up(asked, out);
    }

    /// A request this peer did not answer: its block, and with an upgrade every block waiting
    /// for it, are reported missing so readers can ask elsewhere.
    fn gave_up(&mut self, r: &InFlight, out: &mut Output) {
        self.scan_from = 0;
        for index in r.blocks() {
            self.release(index, false);
            out.events.push(Event::Missing { index });
        }
        if let Some(bytes) = r.seek {
            out.events.push(Event::Sought { bytes, ok: false });
        }
        if r.upgrade {
            for index in std::mem::take(&mut self.wanted).into_keys() {
                out.events.push(Event::Missing { index });
            }
        }
    }

    /// Spends `cost` of the peer's budget for messages that make work here (wants, ranges,
    /// bitfields by size), refilled over time.
    fn charge(&mut self, now: Instant, cost: f64) -> Result<(), Misbehaviour> {
        self.refill(now);
        if self.budget.0 < cost {
            return Err(Misbehaviour("the peer floods requests".into()));
        }
        self.budget.0 -= cost;
        Ok(())
    }

    /// Spends one of the peer's budget of requests for blocks.
    fn charge_request(&mut self, now: Instant) -> Result<(), Misbehaviour> {
        self.charge_requests(now, 1.0)
    }

    /// Spends `n` of the peer's budget of requests for blocks (a range costs one a block).
    fn charge_requests(&mut self, now: Instant, n: f64) -> Result<(), Misbehaviour> {
        self.refill(now);
        if self.budget.1 < n {
            return Err(Misbehaviour("the peer floods requests".into()));
        }
        self.budget.1 -= n;
        Ok(())
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.budget_at).as_secs_f64();
        self.budget.0 = (self.budget.0 + elapsed * MESSAGE_RATE).min(MESSAGE_BURST);
        self.budget.1 = (self.budget.1 + elapsed * REQUEST_RATE).min(REQUEST_BURST);
        self.budget_at = now;
    }

    fn sync(&mut self, core: &Hypercore, out: &mut Output) {
        let state = (core.fork(), core.length());
        if self.told_length == Some(state) && self.remote_synced {
            return;
        }
        self.told_length = Some(state);
        let mut flags = sync_flags::UPLOADING;
        if core.length() > 0 {
            flags |= sync_flags::CAN_UPGRADE;
        }
        if !core.writable() {
            flags |= sync_flags::DOWNLOADING;
        }
        if core.manifest().is_some() {
            flags |= sync_flags::HAS_MANIFEST;
        }
        let remote_length = if self.remote_fork == core.fork() { self.remote_length } else { 0 };
        out.messages.push(Message::Sync { flags, fork: core.fork(), length: core.length(), remote_length });
    }

    /// Asks for the peer's newer signed length (or its new fork) when it is ahead of ours.
    fn maybe_upgrade(&mut self, core: &Hypercore, now: Instant, out: &mut Output) {
        if self.upgrades_in_flight > 0 {
            return;
        }
        if core.writable() {
            // Every signed state of our own fork is ours: a peer at another length of it has its
            // tree checked once (a few roots) — a longer one, or one that disagrees with ours, is
            // the key writing elsewhere too; the engine keeps the proof and stops writing.
            let other = self.remote_length > 0 && self.remote_length != core.length();
            if !self.probed && self.remote_fork == core.fork() && other && core.conflict().is_none() {
                self.probe(core, now, out);
            }
            return;
        }
        let newer_fork = self.remote_fork > core.fork();
        if !(newer_fork || (self.remote_fork == core.fork() && self.remote_length > core.length())) {
            return;
        }
        // A new fork is proven from length 0; the same fork from our length.
        let start = if newer_fork { 0 } else { core.length() };
        let request = Request {
            fork: self.remote_fork,
            upgrade: Some(hyperfs_engine::hypercore::proof::RequestUpgrade {
                start,
                length: self.remote_length - start,
            }),
            manifest: core.manifest().is_none(),
            ..Request::default()
        };
        let id = self.take_id();
        self.put(id, InFlight::new(None, None, true, now + self.timeout));
        out.messages.push(Message::Request { id, request, priority: None });
    }

    /// Asks for the peer's whole tree (an upgrade from length 0) after an upgrade from our
    /// length failed to verify on our fork: a peer holding another history that the same key
    /// signed answers with a proof that verifies on its own and disagrees with ours, which the
    /// engine keeps as the writer's equivocation (JS hypercore's conflict); a liar's fails again.
    ///
    /// Each of our roots is checked: the last block under it is asked for with the path up to
    /// the peer's root, which passes through the node of ours — equal where the histories agree.
    /// Nothing of a probe's answer is stored ([`Hypercore::check_proof`]).
    fn probe(&mut self, core: &Hypercore, now: Instant, out: &mut Output) {
        // Once per session: a peer whose upgrades fail again after its tree was checked is lying.
        self.probed = true;
        let upgrade = Some(hyperfs_engine::hypercore::proof::RequestUpgrade { start: 0, length: self.remote_length });
        let mut requests = vec![Request { fork: core.fork(), upgrade, ..Request::default() }];
        if self.remote_length > core.length() {
            requests = core
                .roots()
                .iter()
                .take(8)
                .map(|r| Request {
                    fork: core.fork(),
                    block: Some(hyperfs_engine::hypercore::proof::RequestIndexed {
                        index: hyperfs_engine::hypercore::flat::right_span(r.index) / 2,
                        nodes: 64,
                    }),
                    upgrade,
                    ..Request::default()
                })
                .collect();
        }
        for request in requests {
            let id = self.take_id();
            self.put(id, InFlight { probe: true, ..InFlight::new(None, None, true, now + self.timeout) });
            out.messages.push(Message::Request { id, request, priority: None });
        }
    }

    fn request_block(&mut self, core: &Hypercore, index: u64, now: Instant, out: &mut Output) -> bool {
        if self.remote_fork != core.fork() && core.length() > 0 {
            // Blocks of another fork would not verify against our tree: upgrade first.
            self.wanted.insert(index, ());
            self.maybe_upgrade(core, now, out);
            return false;
        }
        let Ok(mut request) = core.block_request(index, self.remote_length) else {
            self.wanted.insert(index, ());
            return false;
        };
        request.fork = self.remote_fork;
        let upgrade = request.upgrade.is_some();
        if upgrade && self.upgrades_in_flight > 0 {
            // One upgrade at a time: the block waits for it.
            self.wanted.insert(index, ());
            return true;
        }
        let id = self.take_id();
        self.put(id, InFlight::new(Some(index), None, upgrade, now + self.timeout));
        self.wanted.remove(&index);
        out.messages.push(Message::Request { id, request, priority: None });
        true
    }

    /// Sends the requests that can go now: wanted blocks the peer has, and while downloading
    /// everything, the next missing blocks up to the window.
    fn top_up(&mut self, core: &Hypercore, now: Instant, out: &mut Output) {
        if core.writable() {
            return;
        }
        self.maybe_upgrade(core, now, out);
        self.unflushed = false;
        let ready: Vec<u64> = self.wanted.keys().copied().filter(|&i| self.remote_has.contains(i)).collect();
        let mut run: Option<(u64, u64)> = None;
        for index in ready {
            if core.has(index) {
                self.wanted.remove(&index);
                out.events.push(Event::Block { index });
            } else if !self.blocks_in_flight.contains(&index) {
                if !self.ranges_possible(core) || index >= core.length() {
                    self.request_block(core, index, now, out);
                    continue;
                }
                // Consecutive wanted blocks go as one range request.
                match &mut run {
                    Some((_, end)) if *end == index => *end += 1,
                    _ => {
                        if let Some((start, end)) = run.take() {
                            self.request_blocks(core, start, end, now, out);
                        }
                        run = Some((index, index + 1));
                    }
                }
            }
        }
        if let Some((start, end)) = run {
            self.request_blocks(core, start, end, now, out);
        }
        if !self.download_all {
            return;
        }
        let limit = core.length().min(self.remote_length);
        self.download_from = self.download_from.min(core.length());
        self.download_from = core.next_local(self.download_from, limit, false).unwrap_or(limit);
        // A block skipped as another peer's may have been given up since.
        let released = self.claims.released();
        if released != self.released_seen {
            self.released_seen = released;
            self.scan_from = 0;
        }
        // Jumps from a block we lack to the next the peer has and back: the cost follows the
        // runs of both, never the length (which a writer may sign as anything up to 2^55).
        let mut index = self.download_from.max(self.scan_from);
        let window = download_window(core, self.pace.window());
        let ranges = self.ranges_possible(core);
        let per_range = range_blocks(core);
        let mut exhausted = false;
        for _ in 0..TOP_UP_STEPS {
            if self.asked() >= window {
                break;
            }
            let Some((missing, theirs)) = self.lacked_and_theirs(core, index, limit) else {
                exhausted = true;
                break;
            };
            if theirs != missing {
                index = theirs;
                continue;
            }
            // Blocks another peer was asked for are left to it.
            let free = |s: &Self, i: u64| !s.blocks_in_flight.contains(&i) && s.claims.asked(i) == 0;
            if !free(self, missing) {
                index = missing + 1;
                self.scan_from = index;
                continue;
            }
            let mut end = missing + 1;
            if ranges && missing < core.length() {
                // The free blocks after it that the peer has and we lack go with it. A window
                // with room for less than half a range waits for more: a block stored at a time
                // would otherwise be asked for again a block at a time.
                let room = (window - self.asked()) as u64;
                if room < per_range / 2 && self.asked() > 0 {
                    break;
                }
                let stop = limit.min(core.length()).min(missing + per_range.min(room.max(1)));
                while end < stop && !core.has(end) && self.remote_has.contains(end) && free(self, end) {
                    end += 1;
                }
            }
            if !self.request_blocks(core, missing, end, now, out) {
                break;
            }
            index = end;
            self.scan_from = index;
        }
        if exhausted && self.asked() < window && self.claims.others() {
            self.end_game(core, limit, window, now, out);
        }
    }

    /// Every missing block this peer has is asked of some peer: with room in the window, ask
    /// this one too for blocks only one other peer was asked for, so the last blocks come from
    /// whichever answers first.
    fn end_game(&mut self, core: &Hypercore, limit: u64, window: usize, now: Instant, out: &mut Output) {
        let mut index = self.download_from.max(self.dup_from);
        for _ in 0..TOP_UP_STEPS {
            if self.asked() >= window {
                break;
            }
            let Some((missing, theirs)) = self.lacked_and_theirs(core, index, limit) else { break };
            if theirs != missing {
                index = theirs;
                continue;
            }
            if !self.blocks_in_flight.contains(&missing)
                && self.claims.asked(missing) == 1
                && !self.request_block(core, missing, now, out)
            {
                break;
            }
            index = missing + 1;
            self.dup_from = index;
        }
    }

    /// From `index` on (below `limit`): the first block we lack, and the first the peer has
    /// from there (the same block when it has it; `None` when either runs out). A download
    /// jumps between the two, so its cost follows the runs of both, never the length.
    fn lacked_and_theirs(&self, core: &Hypercore, index: u64, limit: u64) -> Option<(u64, u64)> {
        if index >= limit {
            return None;
        }
        let missing = core.next_local(index, limit, false)?;
        let theirs = self.remote_has.next_from(missing).filter(|&i| i < limit)?;
        Some((missing, theirs))
    }

    /// How much is asked of the peer: requests, or the blocks they ask for (a range asks for
    /// several), whichever is more; blocks that came and wait to be stored count too.
    fn asked(&self) -> usize {
        self.in_flight.len().max(self.blocks_in_flight.len())
    }

    /// Asks for blocks `start..end` (consecutive, below our length when more than one): a
    /// range request at a time of up to [`MAX_RANGE_BLOCKS`], or a request for one block.
    /// Returns false when the first could not be asked.
    fn request_blocks(&mut self, core: &Hypercore, start: u64, end: u64, now: Instant, out: &mut Output) -> bool {
        if end <= start + 1 || !self.ranges_possible(core) || end > core.length() {
            let first = self.request_block(core, start, now, out);
            for i in start + 1..end {
                self.request_block(core, i, now, out);
            }
            return first;
        }
        let mut at = start;
        while at < end {
            let next = end.min(at + MAX_RANGE_BLOCKS);
            if next == at + 1 {
                self.request_block(core, at, now, out);
            } else {
                let id = self.take_id();
                let asked =
                    InFlight { range: Some((at, next)), ..InFlight::new(None, None, false, now + self.timeout) };
                self.put(id, asked);
                out.messages.push(Message::RangeRequest {
                    id,
                    fork: core.fork(),
                    length: core.length(),
                    start: at,
                    count: next - at,
                });
            }
            for i in at..next {
                self.wanted.remove(&i);
            }
            at = next;
        }
        true
    }

    /// Lets go of this session's claim on block `index` (`stored`: it is here now).
    fn release(&mut self, index: u64, stored: bool) {
        if self.claimed.remove(&index) {
            self.claims.release(index, stored);
        }
    }

    /// Request `id` sent: in flight until answered or given up.
    fn put(&mut self, id: u64, r: InFlight) {
        for index in r.blocks() {
            self.blocks_in_flight.insert(index);
            if self.claimed.insert(index) {
                self.claims.claim(index);
            }
        }
        self.upgrades_in_flight += usize::from(r.upgrade);
        self.by_deadline.insert((r.deadline, id));
        self.in_flight.insert(id, r);
    }

    /// The request `id` answered or given up: no longer in flight.
    fn take(&mut self, id: u64) -> Option<InFlight> {
        let r = self.in_flight.remove(&id)?;
        for index in r.blocks() {
            self.blocks_in_flight.remove(&index);
        }
        self.upgrades_in_flight -= usize::from(r.upgrade);
        self.by_deadline.remove(&(r.deadline, id));
        Some(r)
    }

    fn take_id(&mut self) -> u64 {
        // Ids are 1-based and reused once free, as JS does.
        while self.in_flight.contains_key(&self.next_id) || self.next_id == 0 {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }
}

impl Drop for Session {
    /// A session that ends (its peer left or broke the rules) lets go of its claims, for the
    /// core's other sessions to ask their peers.
    fn drop(&mut self) {
        for index in std::mem::take(&mut self.claimed) {
            self.claims.release(index, false);
        }
        self.claims.state().sessions -= 1;
    }
}

/// The answer to a peer's request: the proof, or why there is none.
fn answer(core: &Hypercore, id: u64, request: &Request) -> Message {
    if request.fork != core.fork() {
        return Message::NoData { request: id, reason: Some(NoDataReason::NotAvailable) };
    }
    match core.proof(request) {
        Ok(proof) => Message::Data { request: id, proof },
        Err(Error::MissingBlock { .. } | Error::MissingNode { .. }) => {
            Message::NoData { request: id, reason: Some(NoDataReason::NotAvailable) }
        }
        Err(_) => Message::NoData { request: id, reason: Some(NoDataReason::InvalidRequest) },
    }
}

/// `range` messages for the runs of blocks in `start..end` the core has (at most
/// [`MAX_RANGES`]).
fn have_ranges(core: &Hypercore, start: u64, end: u64) -> Vec<Message> {
    let mut out = Vec::new();
    let mut i = start;
    while out.len() < MAX_RANGES {
        let Some(s) = core.next_local(i, end, true) else { break };
        let e = core.next_local(s, end, false).unwrap_or(end);
        out.push(Message::Range { drop: false, start: s, length: e - s });
        i = e;
    }
    out
}

#[cfg(test)]
mod tests;
