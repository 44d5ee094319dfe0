//! Finding peers from a key alone, between hosts made of network namespaces on one bridge: a
//! private Mainline DHT (the `mainline` crate's testnet, on one of the hosts) lets host C mount
//! A's drive with no `--peer`; with the DHT off, LAN discovery alone connects two hosts within
//! two seconds; a host behind a NAT (iptables in a router namespace) finds a public host through
//! the DHT and fetches from it by dialing out. Needs root (CI runs as root).

use std::path::Path;
use std::time::{Duration, Instant};

use hyperfs_tests::Hosts;
use serde_json::{json, Value};

fn json(ns: &str, dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&Hosts::hyperfs_ok(ns, dir, args)).expect("JSON output")
}

/// Stops a node when dropped (its socket is a file: reachable from any namespace).
struct Stop<'a>(&'a Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = hyperfs_tests::hyperfs_in(self.0, &["stop"]);
    }
}

/// Discovery options for the DHT at `bootstrap` alone (no LAN).
fn dht_only(bootstrap: &[String]) -> Vec<&str> {
    let mut args = vec!["--no-lan"];
    for b in bootstrap {
        args.extend(["--bootstrap", b.as_str()]);
    }
    args
}

/// Discovery options for the HyperDHT at `bootstrap` alone (no LAN, no Mainline DHT).
fn hyperdht_only(bootstrap: &str) -> [&str; 6] {
    ["--hyperdht-bootstrap", bootstrap, "--no-dht", "--no-lan", "--listen", "0.0.0.0:0"]
}

/// Mounts `key` at `mnt` on `node` (a host's namespace and a data directory, with `options`)
/// and waits up to `limit` for its `/hello.txt` to read `text` through the mount; how long that
/// took. A wait that runs out shows the end of the logs of `node` and of `others`.
fn mount_and_read(
    node: (&str, &Path),
    key: &str,
    mnt: &Path,
    options: &[&str],
    text: &str,
    limit: Duration,
    others: &[&Path],
) -> Duration {
    let (ns, dir) = node;
    std::fs::create_dir(mnt).expect("mkdir");
    let started = Instant::now();
    let mut args = vec!["mount", key, mnt.to_str().expect("utf-8")];
    args.extend_from_slice(options);
    Hosts::hyperfs_ok(ns, dir, &args);
    while std::fs::read_to_string(mnt.join("hello.txt")).ok().as_deref() != Some(text) {
        if started.elapsed() > limit {
            let logs: Vec<String> = std::iter::once(dir)
                .chain(others.iter().copied())
                .map(|n| format!("{}:\n{}", n.display(), hyperfs_tests::node_log_tail(n)))
                .collect();
            panic!("{text:?} did not show through the mount within {limit:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// The peer the node of `dir` on host `ns` has at an address starting with `prefix` (`IP:` or
/// `[IPv6]:`); the test fails with every peer it has if there is none.
fn peer_at(ns: &str, dir: &Path, prefix: &str) -> Value {
    let peers = json(ns, dir, &["peers", "--json"]);
    let found =
        peers.as_array().expect("peers").iter().find(|p| p["address"].as_str().is_some_and(|a| a.starts_with(prefix)));
    found.cloned().unwrap_or_else(|| panic!("no peer at {prefix}…: {peers}"))
}

/// The writer (a host and data directory holding drive `d`) puts `/next.txt` holding `text`;
/// within 20 s the clone (holding it as `c`) reads it.
fn a_next_version_arrives(writer: (&str, &Path), clone: (&str, &Path), text: &str) {
    let file = writer.1.parent().expect("parent").join("next.txt");
    std::fs::write(&file, text).expect("write");
    Hosts::hyperfs_ok(writer.0, writer.1, &["put", file.to_str().expect("utf-8"), "d:/next.txt"]);
    let t = Instant::now();
    loop {
        let out = Hosts::hyperfs(clone.0, clone.1, &["cat", "c:/next.txt"]);
        if out.status.success() && out.stdout == text.as_bytes() {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the next version did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A drive on host `ns` holding `/hello.txt`, shared; returns its key.
fn shared_drive(ns: &str, dir: &Path, text: &str, extra: &[&str]) -> String {
    Hosts::hyperfs_ok(ns, dir, &["create", "--name", "d"]);
    let file = dir.parent().expect("parent").join(format!("{ns}.txt"));
    std::fs::write(&file, text).expect("write");
    Hosts::hyperfs_ok(ns, dir, &["put", file.to_str().expect("utf-8"), "d:/hello.txt"]);
    let mut args = vec!["share", "d", "--json"];
    args.extend_from_slice(extra);
    json(ns, dir, &args)["key"].as_str().expect("key").to_owned()
}

#[test]
fn a_key_alone_finds_the_drive_through_the_dht_and_again_through_the_peer_cache() {
    let hosts = Hosts::new(3);
    let (a, c) = (&hosts.names[0], &hosts.names[2]);
    let (dht, bootstrap) = hosts.dht(1, 4);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, dc) = (tmp.path().join("a"), tmp.path().join("c"));
    let (_sa, _sc) = (Stop(&da), Stop(&dc));
    let dht_args = dht_only(&bootstrap);
    let key = shared_drive(a, &da, "from a, found on the dht", &dht_args);

    // C has the key and the DHT, nothing else: no --peer, no LAN.
    let mnt = tmp.path().join("mnt-c");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut args = vec!["mount", key.as_str(), mnt.to_str().expect("utf-8")];
    args.extend_from_slice(&dht_args);
    let start = Instant::now();
    Hosts::hyperfs_ok(c, &dc, &args);
    eprintln!("mounted through the DHT in {:?}", start.elapsed());
    assert_eq!(std::fs::read_to_string(mnt.join("hello.txt")).expect("read"), "from a, found on the dht");
    // A may dial C first (it looks its own topic up and finds C's announcement): the
    // connection is C's incoming one until C's own look-up names A's address, which it does
    // within seconds.
    let start = Instant::now();
    loop {
        let peers = json(c, &dc, &["peers", "--json"]);
        let found: Vec<(String, String)> = peers
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| (p["address"].as_str().unwrap_or_default().into(), p["found"].as_str().unwrap_or_default().into()))
            .collect();
        if found.iter().any(|(addr, how)| addr.starts_with(&format!("{}:", hosts.ip(0))) && how == "dht") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "A was not found through the DHT: {found:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Hosts::hyperfs_ok(c, &dc, &["unmount", mnt.to_str().expect("utf-8")]);

    // A drive shared `--lan-only` is not announced on the DHT: a node on the DHT alone (not
    // connected to A yet) finds no one.
    Hosts::hyperfs_ok(a, &da, &["create", "--name", "local"]);
    let local = json(a, &da, &["share", "local", "--lan-only", "--json"])["key"].as_str().expect("key").to_owned();
    let mnt_local = tmp.path().join("mnt-local");
    std::fs::create_dir(&mnt_local).expect("mkdir");
    let dx = tmp.path().join("x");
    let _sx = Stop(&dx);
    let mut args = vec!["mount", local.as_str(), mnt_local.to_str().expect("utf-8")];
    args.extend_from_slice(&dht_args);
    let out = Hosts::hyperfs(&hosts.names[1], &dx, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no peer gave drive"), "{err}");

    // The DHT goes away and C restarts: its peer cache (in the store) finds A at once.
    drop(dht);
    Hosts::hyperfs_ok(c, &dc, &["stop"]);
    Hosts::hyperfs_ok(c, &dc, &["drives"]);
    let start = Instant::now();
    loop {
        let peers = json(c, &dc, &["peers", "--json"]);
        if peers.as_array().is_some_and(|p| p.iter().any(|p| p["found"] == "cache")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the restarted node did not use its peer cache: {peers}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("reconnected from the peer cache in {:?}", start.elapsed());
}

#[test]
fn with_the_dht_off_the_lan_alone_connects_two_hosts() {
    let hosts = Hosts::new(2);
    let (a, b) = (&hosts.names[0], &hosts.names[1]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (Stop(&da), Stop(&db));
    let key = shared_drive(a, &da, "from a, found on the lan", &["--no-dht", "--no-hyperdht"]);
    let mnt = tmp.path().join("mnt-b");
    std::fs::create_dir(&mnt).expect("mkdir");
    let start = Instant::now();
    Hosts::hyperfs_ok(b, &db, &["mount", &key, mnt.to_str().expect("utf-8"), "--no-dht", "--no-hyperdht"]);
    let took = start.elapsed();
    eprintln!("found on the LAN and mounted in {took:?}");
    assert!(took < Duration::from_secs(2), "LAN discovery took {took:?}");
    assert_eq!(std::fs::read_to_string(mnt.join("hello.txt")).expect("read"), "from a, found on the lan");
    let peers = json(b, &db, &["peers", "--json"]);
    assert_eq!(peers[0]["found"], "lan", "{peers}");
    // Heard on IPv4's group or on IPv6's (each host's link-local address): either is A.
    let at = peers[0]["address"].as_str().expect("address");
    assert!(at.starts_with(&format!("{}:", hosts.ip(0))) || at.starts_with("[fe80::"), "{peers}");

    // `--no-announce`: a drive shared that way is not answered for on the LAN.
    Hosts::hyperfs_ok(a, &da, &["create", "--name", "quiet"]);
    let quiet = json(a, &da, &["share", "quiet", "--no-announce", "--json"])["key"].as_str().expect("key").to_owned();
    let mnt2 = tmp.path().join("mnt-quiet");
    std::fs::create_dir(&mnt2).expect("mkdir");
    let dq = tmp.path().join("q");
    let _sq = Stop(&dq);
    let out = Hosts::hyperfs(b, &dq, &["mount", &quiet, mnt2.to_str().expect("utf-8"), "--no-dht", "--no-hyperdht"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no peer gave drive"), "{err}");
}

/// On a LAN with IPv6 alone, LAN discovery finds the drive through IPv6's multicast group and
/// the mount reads over the link-local address it was heard from; a peer given by its IPv6
/// address (`--peer [ADDR]:PORT`) is reached too, over TCP and over QUIC.
#[test]
fn an_ipv6_only_lan_finds_and_reads_a_drive() {
    let hosts = Hosts::new(2);
    hosts.with_ipv6(true);
    let (a, b) = (&hosts.names[0], &hosts.names[1]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, db, dc, dq) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"), tmp.path().join("q"));
    let _stop = [Stop(&da), Stop(&db), Stop(&dc), Stop(&dq)];
    let key = shared_drive(a, &da, "from a, over IPv6", &["--no-dht", "--no-hyperdht"]);
    let port = json(a, &da, &["share", "d", "--json"])["address6"].as_str().expect("an IPv6 address").to_owned();
    let port = port.rsplit(':').next().expect("a port").to_owned();

    let mnt = tmp.path().join("mnt-b");
    let took = mount_and_read(
        (b, &db),
        &key,
        &mnt,
        &["--no-dht", "--no-hyperdht"],
        "from a, over IPv6",
        Duration::from_secs(10),
        &[&da],
    );
    eprintln!("found on an IPv6 LAN and read in {took:?}");
    let peers = json(b, &db, &["peers", "--json"]);
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "one connection to A, whatever it heard: {peers}");
    assert_eq!(peers[0]["found"], "lan", "{peers}");
    assert!(peers[0]["address"].as_str().expect("address").starts_with("[fe80::"), "{peers}");

    // By its address, no discovery at all, over TCP (a node's first choice) and over QUIC.
    let at = format!("[{}]:{port}", hosts.ip6(0));
    let alone = ["--no-dht", "--no-hyperdht", "--no-lan", "--peer", at.as_str()];
    for (dir, quic) in [(&dc, false), (&dq, true)] {
        let mut args = vec!["clone", key.as_str(), "--name", "c"];
        args.extend_from_slice(&alone);
        let env: &[(&str, &str)] = if quic { &[("HYPERFS_TRANSPORT", "quic")] } else { &[] };
        let out = Hosts::hyperfs_env(b, dir, &args, env);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            hyperfs_tests::node_log_tail(dir)
        );
        let got = Hosts::hyperfs_ok(b, dir, &["cat", "c:/hello.txt"]);
        assert_eq!(got, "from a, over IPv6");
        let peers = json(b, dir, &["peers", "--json"]);
        assert_eq!(peers[0]["address"], at.as_str(), "{peers}");
        assert_eq!(peers[0]["transport"], if quic { "quic" } else { "tcp" }, "{peers}");
    }
}

#[test]
fn a_host_behind_a_nat_fetches_from_a_public_host_by_dialing_out() {
    let mut hosts = Hosts::new(2);
    let nat = hosts.behind_nat();
    let a = hosts.names[0].clone();
    let (_dht, bootstrap) = hosts.dht(1, 4);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, dn) = (tmp.path().join("a"), tmp.path().join("n"));
    let (_sa, _sn) = (Stop(&da), Stop(&dn));
    let dht_args = dht_only(&bootstrap);
    let key = shared_drive(&a, &da, "from the public host", &dht_args);
    // The private host cannot be dialed from outside…
    let (router, private) = hosts.nat_ips();
    let probe = format!("{private}:9");
    let out = Hosts::hyperfs(&a, &da, &["peers", "--peer", &probe]);
    assert!(!out.status.success(), "the host behind the NAT was reachable");
    // …but finds A on the DHT and fetches from it.
    let mnt = tmp.path().join("mnt-n");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut args = vec!["mount", key.as_str(), mnt.to_str().expect("utf-8")];
    args.extend_from_slice(&dht_args);
    Hosts::hyperfs_ok(&nat, &dn, &args);
    assert_eq!(std::fs::read_to_string(mnt.join("hello.txt")).expect("read"), "from the public host");
    let peers = json(&nat, &dn, &["peers", "--json"]);
    assert_eq!(peers[0]["found"], "dht", "{peers}");
    // A sees the connection coming from the router's public address.
    let seen = json(&a, &da, &["peers", "--json"]);
    assert!(seen[0]["address"].as_str().expect("address").starts_with(&format!("{router}:")), "{seen}");
    Hosts::hyperfs_ok(&nat, &dn, &["unmount", mnt.to_str().expect("utf-8")]);
}

/// Peers leave and come back every second or two while a 256 MiB file is read through a mount
/// of its key: the writer and two full copies take turns being away (one at a time), found
/// again on the LAN each time; the read completes and every byte is right.
#[test]
fn a_read_through_a_mount_survives_peers_joining_and_leaving() {
    use std::io::{Read, Write};
    let hosts = Hosts::new(4);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<std::path::PathBuf> = (0..4).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let _stops: Vec<Stop> = dirs.iter().map(|d| Stop(d)).collect();
    let (w, r) = (&hosts.names[0], &hosts.names[3]);
    let file = tmp.path().join("big.bin");
    {
        let mut f = std::fs::File::create(&file).expect("create");
        for piece in 0..16u64 {
            f.write_all(&hyperfs_tests::pseudo_random(16 << 20, 500 + piece)).expect("write");
        }
    }
    Hosts::hyperfs_ok(w, &dirs[0], &["create", "--name", "d"]);
    Hosts::hyperfs_ok(w, &dirs[0], &["put", file.to_str().expect("utf-8"), "d:/big.bin"]);
    let key = json(w, &dirs[0], &["share", "d", "--no-dht", "--no-hyperdht", "--json"])["key"]
        .as_str()
        .expect("key")
        .to_owned();
    for (ns, dir) in hosts.names.iter().zip(&dirs).skip(1).take(2) {
        Hosts::hyperfs_ok(ns, dir, &["clone", &key, "--no-dht", "--no-hyperdht"]);
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    Hosts::hyperfs_ok(r, &dirs[3], &["mount", &key, mnt.to_str().expect("utf-8"), "--no-dht", "--no-hyperdht"]);

    let done = std::sync::atomic::AtomicBool::new(false);
    let (result, cycles) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut got = std::fs::File::open(mnt.join("big.bin"))?;
            let mut want = std::fs::File::open(&file)?;
            let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
            let mut total = 0u64;
            loop {
                let n = got.read(&mut a)?;
                if n == 0 {
                    break;
                }
                want.read_exact(&mut b[..n])?;
                if a[..n] != b[..n] {
                    return Err(std::io::Error::other(format!("bytes differ near offset {total}")));
                }
                total += n as u64;
                // A reader slower than the network, so the churn happens under it: 256 reads
                // take over 12 s, time for four departures and returns. (At 25 ms a read, once
                // the read-ahead kept its window through reordered reads, the read ended within
                // two.)
                std::thread::sleep(Duration::from_millis(50));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<u64, std::io::Error>(total)
        });
        let mut cycles = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && !reader.is_finished() {
            let i = cycles % 3;
            Hosts::hyperfs_ok(&hosts.names[i], &dirs[i], &["stop"]);
            std::thread::sleep(Duration::from_millis(1500));
            // Any command starts the node again: it shares and follows what it did before.
            Hosts::hyperfs_ok(&hosts.names[i], &dirs[i], &["drives"]);
            std::thread::sleep(Duration::from_millis(1000));
            cycles += 1;
        }
        (reader.join().expect("reader"), cycles)
    });
    let total = result.expect("the read completes with the right bytes");
    assert_eq!(total, 256 << 20);
    assert!(cycles >= 3, "only {cycles} peers left and came back during the read");
    eprintln!("read 256 MiB through {cycles} departures and returns");
    Hosts::hyperfs_ok(r, &dirs[3], &["unmount", mnt.to_str().expect("utf-8")]);
}

/// HyperDHT's nodes tell a node what its NAT is, from where each saw its requests come from
/// (JS nodes of hyperdht's testnet on a public host): a node on the public network is "open"
/// (the nodes' answers to its port reach it unasked, dht-rpc's PING_NAT), at its own address;
/// behind a NAT that keeps a socket's port whoever it sends to, "consistent" at the router's
/// public address; behind one that picks a new port for each destination (`--random-fully`),
/// "random", and the router's IP alone. The public network here is a private range (10.x), as
/// in cloud networks, and counts as public.
#[test]
fn hyperdht_tells_a_node_behind_a_nat_what_its_nat_is() {
    let mut hosts = Hosts::new(2);
    let home = hosts.behind_nat();
    let (public_ip, _) = hosts.nat_ips();
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dht = hyperdht_only(&bootstrap[0]);
    let public = tmp.path().join("public");
    let _stop = Stop(&public);
    let mut args = vec!["nat", "--json"];
    args.extend_from_slice(&dht);
    let nat = json(&hosts.names[1], &public, &args);
    assert_eq!(nat["firewall"], "open", "{nat}");
    let addresses: Vec<&str> =
        nat["addresses"].as_array().expect("addresses").iter().filter_map(Value::as_str).collect();
    assert!(!addresses.is_empty() && addresses.iter().all(|a| a.starts_with(&format!("{}:", hosts.ip(1)))), "{nat}");
    for random in [false, true] {
        hosts.nat_random(random);
        let dir = tmp.path().join(if random { "random" } else { "keeping" });
        let _stop = Stop(&dir);
        let nat = json(&home, &dir, &args);
        assert!(nat["samples"].as_u64().expect("samples") >= 3, "{nat}");
        let addresses: Vec<&str> =
            nat["addresses"].as_array().expect("addresses").iter().filter_map(Value::as_str).collect();
        if random {
            assert_eq!(nat["firewall"], "random", "{nat}");
            assert_eq!(addresses, vec![format!("{public_ip}:0")], "{nat}");
        } else {
            assert_eq!(nat["firewall"], "consistent", "{nat}");
            assert!(!addresses.is_empty(), "{nat}");
            for a in &addresses {
                assert!(a.starts_with(&format!("{public_ip}:")) && !a.ends_with(":0"), "{nat}");
            }
        }
        let _ = Hosts::hyperfs(&home, &dir, &["stop"]);
    }
}

/// Two homes, each behind its own port-keeping MASQUERADE router, and a public network holding
/// hyperdht's JS testnet. A drive shared in one home is cloned in the other by its key alone
/// (HyperDHT only): neither can dial the other, so the handshake goes through a DHT node, the
/// two holepunch rounds through the server's relay, and the stream runs where the probes met.
/// Both sides say the connection was punched; the clone has the drive's bytes and follows it.
/// The sharing home's NAT forgets idle mappings in 5 s, and the clone comes 40 s after the
/// share (past the first half minute's frequent look-ups): the server's registration stays
/// reachable because it keeps its mappings to the nodes holding it alive.
#[test]
fn two_homes_behind_nats_connect_by_key_through_a_punch() {
    let mut hosts = Hosts::new(1);
    let (home_a, home_b) = (hosts.behind_nat(), hosts.behind_nat());
    hosts.home_udp_timeout(0, 5);
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (Stop(&da), Stop(&db));
    let only = hyperdht_only(&bootstrap[0]);
    let key = shared_drive(&home_a, &da, "from a home behind a NAT", &only);
    std::thread::sleep(Duration::from_secs(40));
    let started = Instant::now();
    let mut args = vec!["clone", key.as_str(), "--name", "c", "--json"];
    args.extend_from_slice(&only);
    json(&home_b, &db, &args);
    eprintln!("cloned across two NATs in {:?}", started.elapsed());
    assert_eq!(Hosts::hyperfs_ok(&home_b, &db, &["cat", "c:/hello.txt"]), "from a home behind a NAT");
    let (public_a, _) = hosts.home_ips(0);
    let (public_b, _) = hosts.home_ips(1);
    for (ns, dir, other) in [(&home_b, &db, &public_a), (&home_a, &da, &public_b)] {
        // At the other home's router.
        let peer = peer_at(ns, dir, &format!("{other}:"));
        assert_eq!((&peer["path"], &peer["transport"]), (&json!("punched"), &json!("udx")), "{peer}");
    }
    // The punched connection carries what comes next.
    a_next_version_arrives((&home_a, &da), (&home_b, &db), "written after the punch");
}

/// Two homes whose IPv4 NATs both randomise ports, with no relay anywhere: IPv4 alone cannot
/// join them (JS's HyperDHT, IPv4 only, fails here). Both homes have IPv6, routed and never
/// translated, and their routers drop unasked IPv6 packets coming in. The drive is cloned by
/// its key alone: the handshake through HyperDHT tells each side the other's IPv6 addresses,
/// both dial, each dial opening its own router for the other's, and the connection runs over
/// IPv6, direct, on both sides; the next version arrives over it.
#[test]
fn homes_with_ipv6_connect_by_key_where_ipv4_cannot() {
    let mut hosts = Hosts::new(1);
    let (home_a, home_b) = (hosts.behind_nat(), hosts.behind_nat());
    hosts.home_random(0, true);
    hosts.home_random(1, true);
    hosts.homes_with_ipv6(true);
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (Stop(&da), Stop(&db));
    let only = hyperdht_only(&bootstrap[0]);
    let key = shared_drive(&home_a, &da, "from a home, over IPv6", &only);
    let started = Instant::now();
    let mut args = vec!["clone", key.as_str(), "--name", "c", "--json"];
    args.extend_from_slice(&only);
    let out = Hosts::hyperfs(&home_b, &db, &args);
    assert!(
        out.status.success(),
        "{}\nA:\n{}\nB:\n{}",
        String::from_utf8_lossy(&out.stderr),
        hyperfs_tests::node_log_tail(&da),
        hyperfs_tests::node_log_tail(&db)
    );
    eprintln!("cloned over IPv6 in {:?}", started.elapsed());
    assert_eq!(Hosts::hyperfs_ok(&home_b, &db, &["cat", "c:/hello.txt"]), "from a home, over IPv6");
    for (ns, dir, other) in [(&home_b, &db, hosts.home_ip6(0)), (&home_a, &da, hosts.home_ip6(1))] {
        // At the other home's IPv6 address.
        let peer = peer_at(ns, dir, &format!("[{other}]:"));
        assert_eq!(peer["path"], "direct", "{peer}");
    }
    a_next_version_arrives((&home_a, &da), (&home_b, &db), "written later");
}

/// HyperDHT made of hyperfs nodes too: three hyperfs nodes on the public network run as
/// persistent HyperDHT nodes (`--hyperdht-node`), the first the others' bootstrap, and
/// hyperdht's JS testnet of five nodes joins through the first. Behind two port-keeping NATs,
/// hyperfs peers (by key, each home through another hyperfs node) and JS peers (hyperdht's
/// server and connect) meet through this DHT and punch. Then the JS nodes go: servers
/// register again on the hyperfs nodes, and both pairs meet again through hyperfs nodes alone
/// (records, registrations and the handshake and holepunch relaying all theirs).
#[test]
fn hyperfs_nodes_make_a_hyperdht_that_js_and_hyperfs_peers_meet_through() {
    let mut hosts = Hosts::new(2);
    let (home_a, home_b) = (hosts.behind_nat(), hosts.behind_nat());
    let tmp = tempfile::tempdir().expect("tempdir");
    let public = hosts.names[0].clone();
    let nodes: Vec<String> = (0..3).map(|k| format!("{}:{}", hosts.ip(0), 49737 + k)).collect();
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|k| tmp.path().join(format!("node{k}"))).collect();
    let _stop_nodes: Vec<Stop> = dirs.iter().map(|d| Stop(d)).collect();
    for (k, (addr, dir)) in nodes.iter().zip(&dirs).enumerate() {
        // The second binds every address and learns the one others reach it at.
        let bind = if k == 1 { format!("0.0.0.0:{}", 49737 + k) } else { addr.clone() };
        let args = ["peers", "--hyperdht-node", &bind, "--hyperdht-bootstrap", &nodes[0], "--no-dht", "--no-lan"];
        Hosts::hyperfs_ok(&public, dir, &args);
    }
    let (testnet, _) = hosts.hyperdht_joining(1, 5, Some(&nodes[0]));
    let table = |dir: &Path| json(&public, dir, &["nat", "--json"])["node"]["table"].as_u64().unwrap_or(0);
    let started = Instant::now();
    while table(&dirs[0]) < 7 {
        assert!(started.elapsed() < Duration::from_secs(30), "the first node's table: {}", table(&dirs[0]));
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node on every address has an id once it knows its address: the one the others
    // reach it at.
    let learned = || json(&public, &dirs[1], &["nat", "--json"]);
    while learned()["node"]["id"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(30), "the node never learned its address: {}", learned());
        std::thread::sleep(Duration::from_millis(200));
    }
    let nat = learned();
    assert_eq!(nat["addresses"][0], nodes[1].as_str(), "{nat}");
    assert_eq!(nat["node"]["id"].as_str().map(str::len), Some(64), "{nat}");

    let da = tmp.path().join("a");
    let _sa = Stop(&da);
    let key = shared_drive(&home_a, &da, "met through hyperfs's DHT", &hyperdht_only(&nodes[1]));
    let (_js_server, served) = Hosts::start_js(&home_a, "nat-peer.js", &["serve", &nodes[0]]);
    let js_key = served["publicKey"].as_str().expect("a key").to_owned();
    let meet = |round: &str| {
        let db = tmp.path().join(format!("b-{round}"));
        let _sb = Stop(&db);
        let mut args = vec!["clone", key.as_str(), "--name", "c", "--json"];
        args.extend_from_slice(&hyperdht_only(&nodes[2]));
        let out = Hosts::hyperfs(&home_b, &db, &args);
        assert!(
            out.status.success(),
            "{round}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            hyperfs_tests::node_log_tail(&db)
        );
        assert_eq!(Hosts::hyperfs_ok(&home_b, &db, &["cat", "c:/hello.txt"]), "met through hyperfs's DHT");
        let peers = json(&home_b, &db, &["peers", "--json"]);
        assert_eq!(peers[0]["path"], "punched", "{round}: {peers}");
        let js = Hosts::run_js(&home_b, "nat-peer.js", &["connect", &nodes[2], &js_key]);
        assert_eq!(js["ok"], true, "{round}: JS through hyperfs's DHT: {js}");
        eprintln!("{round}: JS connected in {} ms", js["ms"]);
    };
    meet("beside JS nodes");
    drop(testnet);
    // Servers ping the nodes holding their registration every few seconds and register again
    // when those stop answering.
    std::thread::sleep(Duration::from_secs(15));
    meet("hyperfs nodes alone");
}

/// Two nodes behind one NAT (one home, LAN discovery off, HyperDHT only): the relay sees the
/// client at the server's public IP, so the server's handshake answer names its LAN address
/// too; the client checks it with a PING and the stream goes there, direct, with no punch
/// (this router, as most, does not take its hosts' packets to its public address back in).
#[test]
fn two_nodes_behind_one_nat_meet_on_their_lan_by_key() {
    let mut hosts = Hosts::new(1);
    let home = hosts.behind_nat();
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (Stop(&da), Stop(&db));
    let only = hyperdht_only(&bootstrap[0]);
    let key = shared_drive(&home, &da, "from the same home", &only);
    let mut args = vec!["clone", key.as_str(), "--name", "c", "--json"];
    args.extend_from_slice(&only);
    let out = Hosts::hyperfs(&home, &db, &args);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), hyperfs_tests::node_log_tail(&db));
    assert_eq!(Hosts::hyperfs_ok(&home, &db, &["cat", "c:/hello.txt"]), "from the same home");
    // At the home's LAN address.
    let (_, private) = hosts.home_ips(0);
    let peer = peer_at(&home, &db, &format!("{private}:"));
    assert_eq!((&peer["path"], &peer["transport"]), (&json!("direct"), &json!("udx")), "{peer}");
}

/// Homes whose NATs give each destination a new port (`--random-fully`) cannot be punched
/// through here: a relay on the public network (a hyperfs node started with `--relay`, found on
/// HyperDHT) joins them. With one such NAT, then with both, a drive shared in one home is
/// cloned in the other by its key alone, and both sides say the connection is relayed. Then
/// two port-keeping NATs whose routers take unasked packets in (the client's first probe
/// spoils the server's mapping there, and JS's punch fails): the relay joins them too, a few
/// seconds into the punch.
#[test]
fn a_relay_joins_homes_whose_nats_randomise_ports() {
    let mut hosts = Hosts::new(2);
    let (home_a, home_b) = (hosts.behind_nat(), hosts.behind_nat());
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let only = hyperdht_only(&bootstrap[0]);
    let relay = tmp.path().join("relay");
    let _sr = Stop(&relay);
    let mut args = vec!["peers", "--json", "--relay"];
    args.extend_from_slice(&only);
    json(&hosts.names[1], &relay, &args);
    let relay_ip = hosts.ip(1);
    for (tag, random_a, random_b, guarded) in
        [("one random", false, true, true), ("two random", true, true, true), ("unguarded", false, false, false)]
    {
        hosts.home_random(0, random_a);
        hosts.home_random(1, random_b);
        hosts.home_guarded(0, guarded);
        hosts.home_guarded(1, guarded);
        let (da, db) = (tmp.path().join(format!("a-{tag}")), tmp.path().join(format!("b-{tag}")));
        let (_sa, _sb) = (Stop(&da), Stop(&db));
        let key = shared_drive(&home_a, &da, "relayed between two homes", &only);
        let started = Instant::now();
        let mut args = vec!["clone", key.as_str(), "--name", "c", "--json"];
        args.extend_from_slice(&only);
        // The clone's node logs how it connected.
        let out = Hosts::hyperfs_env(&home_b, &db, &args, &[("RUST_LOG", "info")]);
        assert!(
            out.status.success(),
            "{tag}: the clone failed: {}\nthe relay's log:\n{}\nthe server's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            hyperfs_tests::node_log_tail(&relay),
            hyperfs_tests::node_log_tail(&da)
        );
        eprintln!("{tag}: cloned through the relay in {:?}", started.elapsed());
        assert_eq!(Hosts::hyperfs_ok(&home_b, &db, &["cat", "c:/hello.txt"]), "relayed between two homes");
        // The clone came through the relay. With one random NAT a punch (birthday sockets)
        // may win the race with the relay, and the server's own swarm may punch to the clone
        // meanwhile (a replica announces itself): the two nodes then keep one connection.
        let log = std::fs::read_to_string(db.join("node.log")).unwrap_or_default();
        let came = log.contains("path=\"relayed\"") || tag == "one random" && log.contains("path=\"punched\"");
        assert!(came, "{tag}: the clone's connection came neither through the relay nor a punch:\n{log}");
        for (ns, dir) in [(&home_b, &db), (&home_a, &da)] {
            let peers = json(ns, dir, &["peers", "--json"]);
            let joined = peers
                .as_array()
                .expect("peers")
                .iter()
                .filter(|p| p["path"] == "relayed" || p["path"] == "punched")
                .map(|p| {
                    (
                        p["path"].as_str().unwrap_or_default().to_owned(),
                        p["address"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>();
            let through_relay =
                joined.len() == 1 && joined[0].0 == "relayed" && joined[0].1.starts_with(&format!("{relay_ip}:"));
            let punched = tag == "one random" && joined.len() == 1 && joined[0].0 == "punched";
            assert!(
                through_relay || punched,
                "{tag}: one connection between the homes, through the relay at {relay_ip}: {peers}"
            );
        }
        Hosts::hyperfs_ok(&home_b, &db, &["stop"]);
        Hosts::hyperfs_ok(&home_a, &da, &["stop"]);
    }
}

/// JS apps on the public network and hyperfs behind a NAT reach each other through HyperDHT by
/// a drive's key alone: a JS Hyperswarm peer serving a Hyperdrive is mounted from the home and
/// read through the mount; a drive hyperfs shares from the home is read by a JS Hyperswarm peer.
#[test]
fn js_swarm_peers_and_hyperfs_behind_a_nat_reach_each_other() {
    let mut hosts = Hosts::new(2);
    let home = hosts.behind_nat();
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let boot = bootstrap.join(",");
    let tmp = tempfile::tempdir().expect("tempdir");
    let js_dir = tmp.path().join("js");
    let (_js, served) = Hosts::start_js(
        &hosts.names[1],
        "swarm-peer.js",
        &["serve", &boot, js_dir.to_str().expect("utf-8"), "/hello.txt", "from a JS swarm"],
    );
    let key = served["key"].as_str().expect("key").to_owned();
    let dir = tmp.path().join("home");
    let _stop = Stop(&dir);
    let only = hyperdht_only(&bootstrap[0]);
    let mnt = tmp.path().join("mnt");
    let took = mount_and_read((&home, &dir), &key, &mnt, &only, "from a JS swarm", Duration::from_secs(30), &[]);
    eprintln!("a JS swarm's drive read through a mount behind a NAT in {took:?}");
    Hosts::hyperfs_ok(&home, &dir, &["unmount", mnt.to_str().expect("utf-8")]);

    let key = shared_drive(&home, &dir, "from hyperfs behind a NAT", &only);
    let read_dir = tmp.path().join("js-read");
    let read = Hosts::run_js(
        &hosts.names[1],
        "swarm-peer.js",
        &["read", &boot, read_dir.to_str().expect("utf-8"), &key, "/hello.txt"],
    );
    assert_eq!(read["ok"], true, "{read}\n{}", hyperfs_tests::node_log_tail(&dir));
    assert_eq!(read["text"], "from hyperfs behind a NAT", "{read}");
    eprintln!("a JS swarm read a drive shared from behind a NAT in {} ms", read["ms"]);
}

/// hyperfs's relay and JS's `blind-relay` are one protocol: between two homes behind
/// `--random-fully` NATs (no punch joins them), two hyperfs nodes connect through a JS blind
/// relay (announced nowhere hyperfs looks: named with `--relay-through KEY`), and two JS
/// HyperDHT peers connect through a hyperfs relay (the JS client names it in `relayThrough`).
#[test]
fn js_and_hyperfs_relay_for_each_other() {
    let mut hosts = Hosts::new(3);
    let (home_a, home_b) = (hosts.behind_nat(), hosts.behind_nat());
    hosts.home_random(0, true);
    hosts.home_random(1, true);
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let boot = bootstrap.join(",");
    let tmp = tempfile::tempdir().expect("tempdir");
    let only = hyperdht_only(&bootstrap[0]);

    // hyperfs ↔ hyperfs through a JS blind relay.
    let elsewhere = hex::encode([0x5a; 32]);
    let (_js_relay, js_relay) = Hosts::start_js(&hosts.names[2], "nat-peer.js", &["relay", &boot, &elsewhere]);
    let js_relay = js_relay["publicKey"].as_str().expect("key").to_owned();
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (Stop(&da), Stop(&db));
    let key = shared_drive(&home_a, &da, "through a JS relay", &only);
    let mut args = vec!["clone", key.as_str(), "--name", "c", "--relay-through", &js_relay];
    args.extend_from_slice(&only);
    let out = Hosts::hyperfs(&home_b, &db, &args);
    assert!(
        out.status.success(),
        "the clone through a JS relay failed: {}\nthe client's log:\n{}\nthe server's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        hyperfs_tests::node_log_tail(&db),
        hyperfs_tests::node_log_tail(&da)
    );
    assert_eq!(Hosts::hyperfs_ok(&home_b, &db, &["cat", "c:/hello.txt"]), "through a JS relay");
    let peers = json(&home_b, &db, &["peers", "--json"]);
    let relayed = peers.as_array().expect("peers").iter().find(|p| p["path"] == "relayed").expect("a relayed peer");
    assert!(relayed["address"].as_str().expect("address").starts_with(&format!("{}:", hosts.ip(2))), "{peers}");

    // JS ↔ JS through a hyperfs relay.
    let relay = tmp.path().join("relay");
    let _sr = Stop(&relay);
    let mut args = vec!["nat", "--json", "--relay"];
    args.extend_from_slice(&only);
    let relay_key = json(&hosts.names[1], &relay, &args)["key"].as_str().expect("key").to_owned();
    let (_server, served) = Hosts::start_js(&home_a, "nat-peer.js", &["serve", &boot]);
    let server_key = served["publicKey"].as_str().expect("key").to_owned();
    let plain = Hosts::run_js(&home_b, "nat-peer.js", &["connect", &boot, &server_key]);
    assert_eq!(plain["ok"], false, "two random NATs, no relay: JS cannot connect ({plain})");
    let through = Hosts::run_js(&home_b, "nat-peer.js", &["connect", &boot, &server_key, &relay_key]);
    assert_eq!(
        through["ok"],
        true,
        "JS through the hyperfs relay: {through}\n{}",
        hyperfs_tests::node_log_tail(&relay)
    );
    eprintln!("JS to JS through a hyperfs relay in {} ms", through["ms"]);
}

/// One home behind a NAT that gives each destination a new port (`--random-fully`), the other
/// behind a port-keeping one, and no relay anywhere: the random side opens 256 "birthday"
/// sockets, the other probes random ports of its IP 20 ms apart, and a probe meets one of them
/// (HyperDHT's odds: 99.9% within 35 s). The random NAT at the client's home, then at the
/// server's; both sides say the connection was punched.
#[test]
fn a_punch_meets_a_nat_that_randomises_ports_through_birthday_sockets() {
    let mut hosts = Hosts::new(1);
    let (home_a, home_b) = (hosts.behind_nat(), hosts.behind_nat());
    let (_testnet, bootstrap) = hosts.hyperdht(0, 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let only = hyperdht_only(&bootstrap[0]);
    for (tag, random_server) in [("random client", false), ("random server", true)] {
        hosts.home_random(0, random_server);
        hosts.home_random(1, !random_server);
        let (da, db) = (tmp.path().join(format!("a-{tag}")), tmp.path().join(format!("b-{tag}")));
        let (_sa, _sb) = (Stop(&da), Stop(&db));
        let key = shared_drive(&home_a, &da, "punched through a random NAT", &only);
        let mnt = tmp.path().join(format!("mnt-{tag}"));
        // Up to the punch's 35 s of probes.
        let text = "punched through a random NAT";
        let took = mount_and_read((&home_b, &db), &key, &mnt, &only, text, Duration::from_secs(45), &[&da]);
        eprintln!("{tag}: punched and read through the mount in {took:?}");
        let mnt_s = mnt.to_str().expect("utf-8");
        for (ns, dir) in [(&home_b, &db), (&home_a, &da)] {
            let peers = json(ns, dir, &["peers", "--json"]);
            assert!(peers.as_array().expect("peers").iter().any(|p| p["path"] == "punched"), "{tag}: {peers}");
        }
        Hosts::hyperfs_ok(&home_b, &db, &["unmount", mnt_s]);
        Hosts::hyperfs_ok(&home_b, &db, &["stop"]);
        Hosts::hyperfs_ok(&home_a, &da, &["stop"]);
    }
}
