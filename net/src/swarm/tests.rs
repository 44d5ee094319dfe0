//! The swarm's dialing policy on simulated time: the clock is an `Instant` the test moves on.

use super::*;

const T: Hash = [1; 32];
const CORE: CoreKey = CoreKey([2; 32]);

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000))
}

fn dials(actions: &[Action]) -> Vec<SocketAddr> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dial { address, .. } => Some(*address),
            _ => None,
        })
        .collect()
}

fn peer(i: u32) -> Connected {
    Connected { address: addr(i), cores: vec![CORE] }
}

fn both() -> Mechanisms {
    Mechanisms { lan: true, dht: true }
}

#[test]
fn a_failing_address_backs_off_doubling_up_to_a_minute() {
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    s.add(T, addr(1), Source::Lan, now);
    let mut t = now;
    let mut waits = Vec::new();
    for _ in 0..8 {
        assert_eq!(dials(&s.poll(t, &[])), vec![addr(1)], "due at {:?}", t - now);
        // While the dial is under way it is not started again.
        assert!(dials(&s.poll(t, &[])).is_empty());
        s.dialed(addr(1), Dialed::Failed, t);
        // Heard of from the peer cache again: no early retry.
        s.add(T, addr(1), Source::Cache, t);
        let next = s.next_timeout(t).expect("a topic is joined");
        // Not a moment before its backoff ends, and the driver is woken by then.
        let wait = (1..=120).map(Duration::from_secs).find(|&d| !dials(&s.poll(t + d, &[])).is_empty());
        let wait = wait.expect("tried again within two minutes");
        assert!(next <= t + wait);
        s.dialed(addr(1), Dialed::Failed, t + wait);
        waits.push(wait.as_secs());
        t += wait + backoff(s.candidates[&addr(1)].failures);
    }
    assert_eq!(waits[..4], [2, 8, 32, 60], "each wait follows two failures: 2^1, 2^3, 2^5, then the cap");
    assert!(waits.iter().all(|&w| w <= 60), "{waits:?}");
}

#[test]
fn an_address_heard_of_again_is_retried_soon_and_a_success_resets_the_backoff() {
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    s.add(T, addr(1), Source::Dht, now);
    let mut t = now;
    for k in 0..6 {
        assert_eq!(dials(&s.poll(t, &[])), vec![addr(1)]);
        s.dialed(addr(1), Dialed::Failed, t);
        if k < 5 {
            t += backoff(s.candidates[&addr(1)].failures);
        }
    }
    // Backed off for a minute; a LAN announcement of it brings it back within 2 s.
    s.add(T, addr(1), Source::Lan, t);
    assert!(dials(&s.poll(t + Duration::from_secs(1), &[])).is_empty());
    assert_eq!(dials(&s.poll(t + HEARD_AGAIN, &[])), vec![addr(1)]);
    s.dialed(addr(1), Dialed::Connected, t + HEARD_AGAIN);
    assert_eq!(s.candidates[&addr(1)].failures, 0);
    assert_eq!(s.source(&addr(1)), Source::Dht, "named by the discovery that found it first");
    // Connected: not dialed while it is; dropped, dialed again at once.
    let later = t + Duration::from_secs(10);
    assert!(dials(&s.poll(later, &[peer(1)])).is_empty());
    assert_eq!(dials(&s.poll(later, &[])), vec![addr(1)]);
}

#[test]
fn ourselves_announced_back_is_never_dialed_again() {
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    s.add(T, addr(7), Source::Lan, now);
    assert_eq!(dials(&s.poll(now, &[])), vec![addr(7)]);
    s.dialed(addr(7), Dialed::Ourselves, now);
    s.add(T, addr(7), Source::Lan, now);
    assert!(dials(&s.poll(now + Duration::from_secs(86_400), &[])).is_empty());
}

#[test]
fn dials_stop_at_the_limits_per_topic_and_in_all() {
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    for i in 0..200 {
        s.add(T, addr(i), Source::Dht, now);
    }
    // In all: connected peers and dials under way count against MAX_PEERS.
    let first = dials(&s.poll(now, &[]));
    assert_eq!(first.len(), MAX_PEERS);
    assert!(dials(&s.poll(now, &[])).is_empty(), "dials under way fill the room");
    for a in &first {
        s.dialed(*a, Dialed::Failed, now);
    }
    // A topic with PER_TOPIC peers is content: nothing more is dialed for it.
    let t = now + Duration::from_secs(3);
    let content: Vec<Connected> = (1000..1000 + PER_TOPIC as u32).map(peer).collect();
    assert!(dials(&s.poll(t, &content)).is_empty());
    // One short: dialing goes on, within the room MAX_PEERS leaves.
    let short = &content[..PER_TOPIC - 1];
    assert_eq!(dials(&s.poll(t, short)).len(), MAX_PEERS - short.len());
    // A peer serving another core does not count for the topic.
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    s.add(T, addr(1), Source::Lan, now);
    let others: Vec<Connected> =
        (0..PER_TOPIC as u32).map(|i| Connected { address: addr(500 + i), cores: vec![CoreKey([3; 32])] }).collect();
    assert_eq!(dials(&s.poll(now, &others)), vec![addr(1)]);
}

#[test]
fn candidates_stay_under_the_cap() {
    // Spoofed announcements cannot grow the candidates past the cap: a newcomer takes the
    // place of an address that failed, is dropped when none has, and a static peer always gets
    // in.
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    for i in 0..(2 * MAX_CANDIDATES as u32) {
        s.add(T, addr(i), Source::Lan, now);
    }
    assert_eq!(s.candidates.len(), MAX_CANDIDATES);
    assert!(!s.candidates.contains_key(&addr(MAX_CANDIDATES as u32)), "no room: the newcomer is not kept");
    s.candidates.get_mut(&addr(5)).expect("kept").failures = 3;
    s.add(T, addr(9_999_999), Source::Dht, now);
    assert!(s.candidates.contains_key(&addr(9_999_999)) && !s.candidates.contains_key(&addr(5)));
    s.add(T, addr(8_888_888), Source::Static, now);
    assert!(s.candidates.contains_key(&addr(8_888_888)), "a static peer gets in");
    assert_eq!(s.candidates.len(), MAX_CANDIDATES);
}

#[test]
fn candidates_come_from_each_source_and_the_better_one_is_kept() {
    let now = Instant::now();
    let mut s = Swarm::new(both());
    // The peer cache on joining…
    s.join(T, CORE, true, false, &[addr(1), addr(2)], now);
    assert_eq!(s.source(&addr(1)), Source::Cache);
    // …LAN announcements and DHT answers…
    s.add(T, addr(1), Source::Lan, now);
    s.dht_done(T, &[addr(2), addr(3)], now);
    // …and --peer.
    s.add(T, addr(4), Source::Static, now);
    s.add(T, addr(4), Source::Lan, now);
    assert_eq!(
        [1, 2, 3, 4].map(|i| s.source(&addr(i))),
        [Source::Lan, Source::Dht, Source::Dht, Source::Static],
        "a cached address found again is named by the finder; static stays static"
    );
    // Static peers are dialed first.
    assert_eq!(dials(&s.poll(now, &[]))[0], addr(4));
    // A peer that dialed us, unknown to discovery, is incoming.
    assert_eq!(s.source(&addr(99)), Source::Incoming);
}

#[test]
fn the_lan_and_the_dht_are_asked_on_their_schedules() {
    let now = Instant::now();
    let mut s = Swarm::new(both());
    s.join(T, CORE, true, false, &[], now);
    let first = s.poll(now, &[]);
    // Joining told the LAN already; the DHT is asked and told at once.
    assert!(!first.iter().any(|a| matches!(a, Action::AskLan(_))));
    assert!(first.contains(&Action::Dht { topic: T, lookup: true, announce: true }));
    // While that work runs nothing more goes to the DHT; the LAN is asked every 2 s.
    let t = now + LAN_EVERY;
    let second = s.poll(t, &[]);
    assert!(second.contains(&Action::AskLan(vec![T])));
    assert!(!second.iter().any(|a| matches!(a, Action::Dht { .. })));
    s.dht_done(T, &[], t);
    // Alone, the DHT is looked up again after 3 s; the announcement waits its 10 minutes.
    let t = now + DHT_LOOKUP_ALONE;
    assert!(s.poll(t, &[]).contains(&Action::Dht { topic: T, lookup: true, announce: false }));
    s.dht_done(T, &[], t);
    // With a peer, every 15 s; content, the LAN is not asked and the DHT only announced.
    let t2 = t + DHT_LOOKUP_ALONE;
    assert!(!s.poll(t2, &[peer(1)]).iter().any(|a| matches!(a, Action::Dht { .. })));
    assert!(s.poll(t + DHT_LOOKUP_EVERY, &[peer(1)]).contains(&Action::Dht {
        topic: T,
        lookup: true,
        announce: false
    }));
    s.dht_done(T, &[], t + DHT_LOOKUP_EVERY);
    let content: Vec<Connected> = (0..PER_TOPIC as u32).map(peer).collect();
    let at = now + DHT_ANNOUNCE_EVERY;
    let acts = s.poll(at, &content);
    assert!(!acts.iter().any(|a| matches!(a, Action::AskLan(_))));
    assert!(acts.contains(&Action::Dht { topic: T, lookup: false, announce: true }));
    // A LAN-only topic never goes to the DHT; a node without a DHT never asks it.
    let mut lan_only = Swarm::new(both());
    lan_only.join(T, CORE, true, true, &[], now);
    assert!(!lan_only.poll(now, &[]).iter().any(|a| matches!(a, Action::Dht { .. })));
    let mut no_dht = Swarm::new(Mechanisms { lan: true, dht: false });
    no_dht.join(T, CORE, true, false, &[], now);
    assert!(!no_dht.poll(now, &[]).iter().any(|a| matches!(a, Action::Dht { .. })));
}

#[test]
fn connected_peers_of_a_topic_go_to_its_cache_once() {
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    let remembered = |a: &[Action]| a.iter().filter(|a| matches!(a, Action::Remember { .. })).count();
    assert_eq!(remembered(&s.poll(now, &[peer(1), peer(2)])), 2);
    assert_eq!(remembered(&s.poll(now, &[peer(1), peer(2)])), 0);
}

#[test]
fn the_smaller_id_rule_keeps_one_connection_on_both_sides() {
    let (a, b) = (PeerId([1u8; 32]), PeerId([2u8; 32]));
    // Each dialed the other: a keeps the one it dialed (its id is smaller), and so does b.
    assert!(keeps(&a, &b, true) && !keeps(&a, &b, false));
    assert!(keeps(&b, &a, false) && !keeps(&b, &a, true));
}

#[test]
fn a_node_with_no_topics_sleeps() {
    let now = Instant::now();
    let mut s = Swarm::new(both());
    assert_eq!(s.next_timeout(now), None);
    assert!(s.poll(now, &[]).is_empty());
    s.join(T, CORE, false, false, &[], now);
    assert!(s.next_timeout(now).is_some_and(|t| t <= now + POLL_AT_MOST));
    s.leave(&T);
    assert_eq!(s.next_timeout(now), None);
}

#[test]
fn a_connected_peer_never_makes_the_driver_spin() {
    let now = Instant::now();
    let mut s = Swarm::new(Mechanisms::default());
    s.join(T, CORE, false, false, &[], now);
    s.add(T, addr(1), Source::Static, now);
    assert_eq!(dials(&s.poll(now, &[])), vec![addr(1)]);
    s.dialed(addr(1), Dialed::Connected, now);
    // Long after, still connected: its retry time is past, but nothing is due until a second
    // from now (when a dropped connection would be found).
    let later = now + Duration::from_secs(30);
    assert!(dials(&s.poll(later, &[peer(1)])).is_empty());
    assert_eq!(s.next_timeout(later), Some(later + POLL_AT_MOST));
    // With a failed one backing off too, the wake is still ahead, never now.
    s.add(T, addr(2), Source::Lan, later);
    assert_eq!(dials(&s.poll(later, &[peer(1)])), vec![addr(2)]);
    s.dialed(addr(2), Dialed::Failed, later);
    assert!(s.next_timeout(later).is_some_and(|t| t > later));
}

/// A peer heard of at two addresses (IPv4 and IPv6 on one LAN): the dial of the second finds it
/// connected at the first, and that address is let be for a minute, not dialed every second.
#[test]
fn a_second_address_of_a_connected_peer_is_let_be() {
    let now = Instant::now();
    let mut s = Swarm::new(both());
    s.join(T, CORE, false, false, &[], now);
    let v6: SocketAddr = "[fe80::1%2]:4000".parse().expect("an address");
    s.add(T, addr(1), Source::Lan, now);
    s.add(T, v6, Source::Lan, now);
    assert_eq!(dials(&s.poll(now, &[])), vec![addr(1), v6]);
    s.dialed(addr(1), Dialed::Connected, now);
    s.dialed(v6, Dialed::Elsewhere, now);
    let connected = [peer(1)];
    for secs in [1, 2, 10, 59] {
        let t = now + Duration::from_secs(secs);
        assert!(dials(&s.poll(t, &connected)).is_empty(), "dialed again after {secs} s");
    }
    assert!(s.next_timeout(now + Duration::from_secs(59)).is_some_and(|t| t <= now + Duration::from_secs(60)));
    // After a minute it is tried again, as any address of a topic still short of peers.
    assert_eq!(dials(&s.poll(now + Duration::from_secs(60), &connected)), vec![v6]);
}
