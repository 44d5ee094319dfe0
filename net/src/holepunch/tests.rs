//! The punch on a simulated network: two hosts, each behind a NAT that keeps ports (as Linux
//! MASQUERADE does while it can) or picks a random one per destination (`--random-fully`), with
//! conntrack's rule for what comes in (a packet from R to public port P passes only while the
//! host's socket behind P sent to R within the mapping's timeout), a one-way delay, lost packets,
//! and probes at TTL 5 that open their own NAT but die before the other.

use super::*;
use std::net::Ipv4Addr;

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const DELAY: Duration = Duration::from_millis(25);

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[derive(Clone, Copy)]
struct NatKind {
    random: bool,
    timeout: Duration,
}

const KEEPS_PORTS: NatKind = NatKind { random: false, timeout: Duration::from_secs(30) };
const RANDOMISES: NatKind = NatKind { random: true, timeout: Duration::from_secs(30) };

/// A host behind its NAT: socket `i` is bound to private port 2000 + i.
struct Host {
    ip: Ipv4Addr,
    nat: NatKind,
    /// (socket, remote, public port, last sent).
    mappings: Vec<(usize, SocketAddrV4, u16, Instant)>,
    puncher: Puncher,
}

impl Host {
    /// The public port of `socket` towards `to`, opened or refreshed at `now`.
    fn send(&mut self, socket: usize, to: SocketAddrV4, now: Instant, rng: &mut u64) -> u16 {
        let timeout = self.nat.timeout;
        self.mappings.retain(|m| now.duration_since(m.3) < timeout);
        if let Some(m) = self.mappings.iter_mut().find(|m| m.0 == socket && m.1 == to) {
            m.3 = now;
            return m.2;
        }
        let port = if self.nat.random { 1000 + (next(rng) % 64536) as u16 } else { 2000 + socket as u16 };
        self.mappings.push((socket, to, port, now));
        port
    }

    /// The socket a packet from `from` to public port `port` reaches at `now`, if the NAT lets
    /// it in.
    fn admit(&self, from: SocketAddrV4, port: u16, now: Instant) -> Option<usize> {
        self.mappings
            .iter()
            .find(|m| m.1 == from && m.2 == port && now.duration_since(m.3) < self.nat.timeout)
            .map(|m| m.0)
    }
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// How a simulated punch ended: when the initiator connected (from the start), whether the
/// stream's first packet then got through, and the probes each side sent.
#[derive(Debug)]
struct Outcome {
    connected: Option<Duration>,
    path_works: bool,
    aborted: bool,
    probes: usize,
}

/// Runs a punch between A (the initiator) and B, starting B's `start_gap` after A's (the
/// holepunch message's way through the relay), losing each packet with probability `loss`.
fn simulate(a: NatKind, b: NatKind, loss: f64, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let fw = |k: NatKind| if k.random { Firewall::Random } else { Firewall::Consistent };
    let mut hosts = [
        Host { ip: A_IP, nat: a, mappings: Vec::new(), puncher: Puncher::new(true, fw(a), seed) },
        Host { ip: B_IP, nat: b, mappings: Vec::new(), puncher: Puncher::new(false, fw(b), seed ^ 0xabcd) },
    ];
    // What each side learnt of the other from NAT sampling, proven by the token exchange. A
    // random NAT is told by its IP alone.
    let public = |h: &Host| {
        let port = if h.nat.random { 0 } else { 2000 };
        vec![RemoteAddress { addr: addr(h.ip, port), verified: true }]
    };
    let (pa, pb) = (public(&hosts[0]), public(&hosts[1]));
    hosts[0].puncher.update_remote(fw(b), pb);
    hosts[1].puncher.update_remote(fw(a), pa);
    let started = [hosts[0].puncher.punch(t0), hosts[1].puncher.punch(t0 + 2 * DELAY)];
    assert_eq!(started, [true, true], "both sides have a strategy");
    // Datagrams in flight: (arrival, to host, from, to public port).
    let mut flight: Vec<(Instant, usize, SocketAddrV4, u16)> = Vec::new();
    let mut probes = 0;
    let mut now = t0;
    let mut out = Vec::new();
    loop {
        let due = hosts.iter().filter_map(|h| h.puncher.deadline()).chain(flight.iter().map(|f| f.0)).min();
        let Some(due) = due else {
            return Outcome { connected: None, path_works: false, aborted: true, probes };
        };
        assert!(due.duration_since(t0) < Duration::from_secs(60), "the punch ends on its own");
        now = now.max(due);
        // Arrivals first.
        let (arrived, rest): (Vec<_>, Vec<_>) = flight.drain(..).partition(|f| f.0 <= now);
        flight = rest;
        for (_, to, from, port) in arrived {
            if let Some(socket) = hosts[to].admit(from, port, now) {
                hosts[to].puncher.on_probe(socket, from, &mut out);
            }
            if let Some(o) = act(&mut hosts, to, &mut out, &mut flight, now, loss, &mut rng, &mut probes) {
                let path_works = o.is_some_and(|(socket, peer)| {
                    // The stream's first packet, from that socket to that address.
                    let port = hosts[0].send(socket, peer, now, &mut rng);
                    hosts[1].admit(addr(A_IP, port), peer.port(), now + DELAY).is_some()
                });
                return Outcome {
                    connected: o.map(|_| now.duration_since(t0)),
                    path_works,
                    aborted: o.is_none(),
                    probes,
                };
            }
        }
        for i in 0..2 {
            hosts[i].puncher.poll(now, &mut out);
            if let Some(o) = act(&mut hosts, i, &mut out, &mut flight, now, loss, &mut rng, &mut probes) {
                return Outcome { connected: None, path_works: false, aborted: o.is_none(), probes };
            }
        }
    }
}

/// Carries out host `i`'s actions; `Some(Some(path))` once the initiator connected, `Some(None)`
/// once a side gave up.
#[allow(clippy::too_many_arguments)]
fn act(
    hosts: &mut [Host; 2],
    i: usize,
    out: &mut Vec<Action>,
    flight: &mut Vec<(Instant, usize, SocketAddrV4, u16)>,
    now: Instant,
    loss: f64,
    rng: &mut u64,
    probes: &mut usize,
) -> Option<Option<(usize, SocketAddrV4)>> {
    for a in std::mem::take(out) {
        match a {
            Action::Probe { socket, to, low_ttl } => {
                *probes += 1;
                let port = hosts[i].send(socket, to, now, rng);
                let lost = (next(rng) % 1_000_000) as f64 / 1_000_000.0 < loss;
                let other = 1 - i;
                if !low_ttl && !lost && *to.ip() == hosts[other].ip {
                    flight.push((now + DELAY, other, addr(hosts[i].ip, port), to.port()));
                }
            }
            Action::OpenSocket => {}
            Action::Connected { socket, to } => return Some(Some((socket, to))),
            Action::Abort => return Some(None),
        }
    }
    None
}

#[test]
fn two_port_keeping_nats_are_punched_in_the_first_round() {
    let o = simulate(KEEPS_PORTS, KEEPS_PORTS, 0.0, 1);
    let t = o.connected.expect("connected");
    // A's first probe opens A's NAT and dies at B's; B's first (a second later) gets through.
    assert!(t < Duration::from_millis(1200), "{o:?}");
    assert!(o.path_works, "the stream's first packet passes B's NAT: {o:?}");
}

#[test]
fn lost_probes_cost_rounds_not_the_connection() {
    let mut rounds = Vec::new();
    for seed in 1..=40 {
        let o = simulate(KEEPS_PORTS, KEEPS_PORTS, 0.5, seed);
        let t = o.connected.unwrap_or_else(|| panic!("seed {seed}: half the probes lost, still punched: {o:?}"));
        assert!(o.path_works, "{o:?}");
        rounds.push(t.as_secs());
    }
    assert!(rounds.iter().any(|&r| r >= 2), "some punches took more than one round: {rounds:?}");
}

#[test]
fn a_mapping_that_times_out_between_rounds_is_opened_again() {
    let short = NatKind { random: false, timeout: Duration::from_millis(400) };
    let o = simulate(short, short, 0.0, 3);
    assert!(o.connected.is_some() && o.path_works, "{o:?}");
}

#[test]
fn mappings_gone_before_the_answer_comes_end_the_punch_after_ten_rounds() {
    // Each NAT forgets a mapping before the other side's probe can use it: the punch gives up
    // on its own, after its ten rounds, having sent a bounded number of probes.
    let forgetful = NatKind { random: false, timeout: Duration::from_millis(10) };
    let o = simulate(forgetful, forgetful, 0.0, 4);
    assert!(o.aborted && o.connected.is_none(), "{o:?}");
    assert!(o.probes <= 2 * CONSISTENT_ROUNDS as usize, "{o:?}");
}

#[test]
fn a_random_nat_is_met_by_random_probes_against_birthday_sockets() {
    for (a, b) in [(KEEPS_PORTS, RANDOMISES), (RANDOMISES, KEEPS_PORTS)] {
        let mut met = 0;
        for seed in 1..=10 {
            let o = simulate(a, b, 0.0, seed);
            if o.connected.is_some() {
                assert!(o.path_works, "{o:?}");
                met += 1;
            }
            assert!(o.probes <= 2 * (RANDOM_PROBES as usize + BIRTHDAY_SOCKETS) + 64, "bounded: {o:?}");
        }
        // 1 − (1 − 256/64,536)^1,750 ≈ 99.9% each.
        assert!(met >= 9, "{met} of 10 punches met");
    }
}

#[test]
fn two_random_nats_have_no_punch() {
    let mut p = Puncher::new(true, Firewall::Random, 1);
    p.update_remote(Firewall::Random, vec![RemoteAddress { addr: addr(B_IP, 0), verified: true }]);
    assert!(p.unstable());
    assert!(!p.punch(Instant::now()), "a relay is needed");
    // Nor against a random NAT whose address was not proven.
    let mut p = Puncher::new(true, Firewall::Consistent, 1);
    p.update_remote(Firewall::Random, vec![RemoteAddress { addr: addr(B_IP, 0), verified: false }]);
    assert!(!p.punch(Instant::now()));
}

#[test]
fn a_probe_on_a_socket_never_opened_is_ignored() {
    let mut p = Puncher::new(true, Firewall::Consistent, 1);
    p.update_remote(Firewall::Consistent, vec![RemoteAddress { addr: addr(B_IP, 2000), verified: true }]);
    assert!(p.punch(Instant::now()));
    let mut out = Vec::new();
    p.on_probe(7, addr(B_IP, 2000), &mut out);
    assert!(out.is_empty() && !p.done());
    p.on_probe(0, addr(B_IP, 2000), &mut out);
    assert_eq!(out, vec![Action::Connected { socket: 0, to: addr(B_IP, 2000) }]);
    // Once connected, nothing more.
    p.on_probe(0, addr(B_IP, 2001), &mut out);
    p.poll(Instant::now() + Duration::from_secs(5), &mut out);
    assert_eq!(out.len(), 1);
}

/// `nat.js`'s verdicts from the addresses DHT nodes saw.
#[test]
fn nat_sampling_tells_open_consistent_and_random() {
    let node = |i: u8| addr(Ipv4Addr::new(192, 0, 2, i), 49737);
    let me = |port: u16| addr(Ipv4Addr::new(203, 0, 113, 5), port);
    let mut open = Nat::new(false);
    open.add(me(4000), node(1));
    assert_eq!(open.firewall(), Firewall::Open);

    let mut consistent = Nat::new(true);
    for i in 1..=2 {
        consistent.add(me(4000), node(i));
    }
    assert_eq!(consistent.firewall(), Firewall::Unknown, "two samples are not a verdict");
    assert!(!consistent.settled());
    consistent.add(me(4000), node(3));
    assert_eq!(consistent.firewall(), Firewall::Consistent);
    assert!(consistent.settled());
    assert_eq!(consistent.addresses(), vec![me(4000)]);
    // A node's sample counts once.
    consistent.add(me(9), node(3));
    assert_eq!(consistent.sampled(), 3);

    let mut random = Nat::new(true);
    for i in 1..=4 {
        random.add(me(4000 + u16::from(i)), node(i));
    }
    assert_eq!(random.firewall(), Firewall::Random);
    assert_eq!(random.addresses(), vec![me(0)], "a random NAT is told by its IP alone");

    // Two hits on one address of one IP among four: the others moved, so random.
    let mut mostly = Nat::new(true);
    for (i, port) in [(1, 4000), (2, 4000), (3, 4100), (4, 4200)] {
        mostly.add(me(port), node(i));
    }
    assert_eq!(mostly.firewall(), Firewall::Random);

    // Two IPs each seen twice (a host with two uplinks): consistent, both told.
    let other = |port: u16| addr(Ipv4Addr::new(198, 51, 100, 7), port);
    let mut two = Nat::new(true);
    for (i, a) in [(1, me(4000)), (2, other(4000)), (3, me(4000)), (4, other(4000))] {
        two.add(a, node(i));
    }
    assert_eq!(two.firewall(), Firewall::Consistent);
    assert_eq!(two.addresses().len(), 2);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// `holepunchPayload` as hyperdht 6's `messages.js` encodes it, both ways.
#[test]
fn payloads_match_hyperdht() {
    let full = Payload {
        error: 0,
        firewall: 2,
        round: 1,
        connected: false,
        punching: true,
        addresses: Some(vec![addr(Ipv4Addr::new(203, 0, 113, 5), 4000), addr(Ipv4Addr::new(198, 51, 100, 7), 4001)]),
        remote_address: Some(addr(Ipv4Addr::new(192, 0, 2, 9), 49737)),
        token: Some([0xaa; 32]),
        remote_token: Some([0xbb; 32]),
    };
    let js = hex(concat!(
        "3e00020102cb007105a00fc6336407a10fc000020949c2",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    ));
    assert_eq!(full.encode(), js);
    assert_eq!(Payload::decode(&js).map(|p| Firewall::from_u64(p.firewall)), Some(Firewall::Consistent));
    assert_eq!(Payload::decode(&js), Some(full));
    let small = Payload { error: 3, firewall: 3, connected: true, ..Payload::default() };
    assert_eq!(small.encode(), hex("01030300"));
    assert_eq!(Payload::decode(&hex("01030300")), Some(small));
    // Truncated or overlong address lists are refused, not panicked on.
    for n in 0..js.len() {
        let _ = Payload::decode(&js[..n]);
    }
    let mut many = vec![4, 0, 2, 0, 200];
    many.extend(std::iter::repeat_n(7u8, 6 * 200));
    assert_eq!(Payload::decode(&many), None, "200 addresses");
}

/// `crypto_secretbox_easy` as sodium-universal seals a payload (key 0x42…, nonce 0, 1, … 23),
/// opened here; a flipped bit anywhere fails.
#[test]
fn sealed_payloads_match_sodium() {
    let sealed = hex(concat!(
        "000102030405060708090a0b0c0d0e0f1011121314151617",
        "df0f34433005b143b31c9c8a6c8582555b2ed7fe6742e565ef32738534027865cef2da09d2d8e0eb8252a17b30352ebd8c277a5b",
        "8005b2b05aa830daae959595a9711803a70e0bbfc64702681e78116677edfa2083b307a9240dc3966781a02616d21d5c9cb1e4"
    ));
    let box_ = SecurePayload::new([0x42; 32], [0x07; 32]);
    let p = box_.open(&sealed).expect("opens");
    assert_eq!(p.round, 1);
    assert!(p.punching);
    let nonce: [u8; 24] = sealed[..24].try_into().expect("24");
    assert_eq!(box_.seal(&p, nonce), sealed, "sealed as sodium seals");
    for bit in [0, 24 * 8, 40 * 8 + 3, sealed.len() * 8 - 1] {
        let mut bad = sealed.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(box_.open(&bad), None, "bit {bit}");
    }
    assert_eq!(SecurePayload::new([0x43; 32], [0; 32]).open(&sealed), None, "another key");
    // The token of an address's IP, keyed by the local secret.
    assert_eq!(
        box_.token(&addr(Ipv4Addr::new(203, 0, 113, 5), 1)).to_vec(),
        hex("79d0b9ac3a69841333285c5cb448d5d3d29e38e7bfaf399e878733a5dd6c2ba5")
    );
}

/// Reference §1.6: holepunchSecret from the IK trace's handshake hash.
#[test]
fn the_holepunch_secret_matches_the_reference() {
    let hash: [u8; 64] = hex(concat!(
        "7ce3e92b7e1cf09ba5f180c6785d8b4714cf2e00933514aca10cb59988b927a3",
        "238606651847e03d99204f7e63c943bfceb6a446fec4fd3511ae606281a7c4e3"
    ))
    .try_into()
    .expect("64");
    assert_eq!(
        holepunch_secret(&hash).to_vec(),
        hex("b416d212cb6db92c31d6b6f89f43da1d841b3feede7e6ca0775d2af8f0c7da55")
    );
}
