//! hyperfs's HyperDHT client on a HyperDHT network of JS nodes (`hyperdht/testnet`, 10 nodes on
//! loopback, `scripts/js/dht-peer.js`): what hyperfs announces under a topic a JS node finds, and
//! what a JS node announces hyperfs finds; a topic nobody announced finds nobody.

use std::net::SocketAddrV4;

use hyperfs_engine::crypto::KeyPair;
use hyperfs_net::dht::Client;
use hyperfs_tests::JsProcess;
use serde_json::json;

/// `hyperdht`'s 10-node testnet on loopback, and a JS node on it: the process and the
/// bootstrap address.
fn testnet() -> (JsProcess, Vec<SocketAddrV4>) {
    let (js, net) = JsProcess::start("dht-peer.js", &["testnet", "10"]);
    let bootstrap = net["bootstrap"]
        .as_array()
        .expect("bootstrap")
        .iter()
        .map(|b| b.as_str().expect("address").parse().expect("an IPv4 address"))
        .collect();
    (js, bootstrap)
}

#[test]
fn announces_and_lookups_meet_js_nodes_on_a_hyperdht_network() {
    let (mut js, bootstrap) = testnet();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(Client::bind("127.0.0.1:0".parse().expect("addr"), bootstrap)).expect("a socket");

    // hyperfs announces; JS looks up.
    let ours = KeyPair::from_seed(&[0x27; 32]);
    let topic = [0x71u8; 32];
    let took = rt.block_on(client.announce(topic, &ours, Vec::new()));
    assert!(took >= 3, "{took} nodes took the announce");
    eprintln!("{took} nodes took the announce");
    let found = js.ask(json!({"lookup": hex::encode(topic)}));
    let keys: Vec<&str> = found["peers"].as_array().expect("peers").iter().filter_map(|p| p.as_str()).collect();
    assert!(keys.contains(&hex::encode(ours.public_key()).as_str()), "JS found {keys:?}");

    // JS announces; hyperfs looks up.
    let theirs = [0x72u8; 32];
    let announced = js.ask(json!({"announce": hex::encode(theirs)}));
    let key = announced["publicKey"].as_str().expect("key").to_owned();
    let peers = rt.block_on(client.lookup(theirs));
    assert!(peers.iter().any(|p| hex::encode(p.public_key) == key), "hyperfs found {peers:?}");
    eprintln!("hyperfs found {} peer(s), JS found {}", peers.len(), keys.len());

    // Nobody announced this one.
    assert!(rt.block_on(client.lookup([0x73; 32])).is_empty());

    // hyperfs takes its announce back; JS no longer finds it.
    let withdrawn = rt.block_on(client.unannounce(topic, &ours));
    assert!(withdrawn >= 3, "{withdrawn} nodes took the unannounce");
    let found = js.ask(json!({"lookup": hex::encode(topic)}));
    let keys: Vec<&str> = found["peers"].as_array().expect("peers").iter().filter_map(|p| p.as_str()).collect();
    assert!(!keys.contains(&hex::encode(ours.public_key()).as_str()), "JS still finds it: {keys:?}");
}

/// A core of the test's node, behind a lock.
struct Slot(std::sync::Mutex<hyperfs_engine::Hypercore>);

impl hyperfs_net::SharedCore for Slot {
    fn key(&self) -> hyperfs_engine::crypto::CoreKey {
        *self.lock().key()
    }
    fn read(&self, f: &mut dyn FnMut(&hyperfs_engine::Hypercore)) {
        f(&self.lock());
    }
    fn write(&self, f: &mut dyn FnMut(&mut hyperfs_engine::Hypercore)) {
        f(&mut self.lock());
    }
    fn download_all(&self) -> bool {
        true
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, hyperfs_engine::Hypercore> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Cores(Vec<std::sync::Arc<Slot>>);

impl hyperfs_net::Shared for Cores {
    fn cores(&self) -> Vec<std::sync::Arc<dyn hyperfs_net::SharedCore>> {
        self.0.iter().map(|c| c.clone() as std::sync::Arc<dyn hyperfs_net::SharedCore>).collect()
    }
}

/// A JS Hyperdrive served by a HyperDHT server (`server.listen(keyPair)`, `store.replicate`):
/// hyperfs connects by the server's public key alone — its registration found on the DHT, the
/// Noise IK handshake relayed by a DHT node, then UDX and secret-stream keyed from it — and
/// downloads the drive's db core whole, verified, and follows JS's next version.
#[test]
fn a_js_hyperdht_server_is_reached_by_its_key_and_replicates() {
    use std::time::{Duration, Instant};
    let (mut js, bootstrap) = testnet();
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = js
        .ask(json!({"serve": {"/hello.txt": "hi over hyperdht", "/a/b.txt": "nested"}, "dir": tmp.path().join("js")}));
    let public_key: [u8; 32] =
        hex::decode(served["publicKey"].as_str().expect("key")).expect("hex").try_into().expect("32 bytes");
    let key: [u8; 32] = hex::decode(served["key"].as_str().expect("key")).expect("hex").try_into().expect("32 bytes");
    let version = served["version"].as_u64().expect("version");

    let store: std::sync::Arc<dyn hyperfs_engine::store::Store> =
        std::sync::Arc::new(hyperfs_engine::store::MemStore::new());
    let core =
        hyperfs_engine::Hypercore::open_replica(store, hyperfs_engine::crypto::CoreKey(key), None).expect("replica");
    let slot = std::sync::Arc::new(Slot(std::sync::Mutex::new(core)));
    let identity = hyperfs_net::Identity::from_seed(&[0x27; 32]);
    let endpoint = hyperfs_net::Endpoint::start(
        &identity,
        "127.0.0.1:0".parse().expect("addr"),
        std::sync::Arc::new(Cores(vec![slot.clone()])),
    )
    .expect("endpoint");
    let started = Instant::now();
    endpoint.start_dht(bootstrap).expect("the DHT client");
    let peer = endpoint.connect_dht(public_key).expect("connected by key");
    eprintln!("connected through the DHT in {:?}", started.elapsed());
    assert_eq!(peer.0, public_key, "the peer is the server's key");
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("the drive's db core", &|| slot.lock().length() == version && slot.lock().local_blocks() == version);
    assert!(slot.lock().verify_local().expect("verify").is_empty());
    let p = endpoint.peers();
    assert_eq!((p[0].transport, p[0].hyperfs), (hyperfs_net::Transport::Udx, false), "a JS peer over UDX");
    // Live: JS writes; the new version arrives.
    let next = js.ask(json!({"put": "/late.txt", "text": "later"}))["version"].as_u64().expect("version");
    wait("JS's next version", &|| slot.lock().length() == next);
}

/// hyperfs as a HyperDHT server: its registration on the DHT, a JS node's `dht.connect(key)`
/// relayed to it, answered, and a core replicated to JS over the UDX stream that follows.
#[test]
fn a_js_node_reaches_a_hyperfs_node_by_its_key() {
    let (mut js, bootstrap) = testnet();
    let store: std::sync::Arc<dyn hyperfs_engine::store::Store> =
        std::sync::Arc::new(hyperfs_engine::store::MemStore::new());
    let mut core = hyperfs_engine::Hypercore::create(store, KeyPair::from_seed(&[0x28; 32]), false).expect("core");
    let blocks: Vec<Vec<u8>> = (0..50).map(|i| format!("block {i}").into_bytes()).collect();
    core.append_batch(&blocks).expect("append");
    let key = *core.key();
    let slot = std::sync::Arc::new(Slot(std::sync::Mutex::new(core)));
    let identity = hyperfs_net::Identity::from_seed(&[0x29; 32]);
    let endpoint = hyperfs_net::Endpoint::start(
        &identity,
        "127.0.0.1:0".parse().expect("addr"),
        std::sync::Arc::new(Cores(vec![slot])),
    )
    .expect("endpoint");
    endpoint.start_dht(bootstrap).expect("the DHT client");
    let relays = endpoint.listen_dht().expect("registered on the DHT");
    assert!(!relays.is_empty());
    let tmp = tempfile::tempdir().expect("tempdir");
    let got = js.ask(json!({"connect": hex::encode(identity.peer_id().0), "core": hex::encode(key.0), "dir": tmp.path().join("js"), "length": 50}));
    let texts: Vec<&str> = got["blocks"].as_array().expect("blocks").iter().filter_map(|b| b.as_str()).collect();
    assert_eq!(texts.len(), 50, "{got}");
    assert_eq!(texts[49], "block 49");
    eprintln!("JS connected by key and read 50 blocks in {} ms", got["ms"]);
    let p = endpoint.peers();
    assert_eq!((p[0].transport, p[0].hyperfs), (hyperfs_net::Transport::Udx, false), "a JS peer over UDX");
}

/// Through the command line, HyperDHT alone (no --peer, the LAN and the Mainline DHT off): a
/// drive a JS HyperDHT server announces under its discovery key mounts by key and reads; a
/// drive one hyperfs node shares mounts on another by key.
#[test]
fn drives_mount_by_key_through_hyperdht_alone() {
    use hyperfs_tests::{hyperfs_in_ok, StopNode};
    let (mut js, bootstrap) = testnet();
    let boot = bootstrap[0].to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (StopNode(a.clone()), StopNode(b.clone()));
    let only_hyperdht = ["--hyperdht-bootstrap", &boot, "--no-dht", "--no-lan", "--listen", "127.0.0.1:0"];
    let json = |dir: &std::path::Path, args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&hyperfs_in_ok(dir, args)).expect("JSON output")
    };

    // A JS drive, found by topic.
    let served =
        js.ask(json!({"serve": {"/hello.txt": "hi from a JS swarm"}, "dir": tmp.path().join("js"), "swarm": true}));
    let key = served["key"].as_str().expect("key").to_owned();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt_s = mnt.to_str().expect("utf-8");
    let mut args = vec!["mount", key.as_str(), mnt_s, "--json"];
    args.extend_from_slice(&only_hyperdht);
    json(&b, &args);
    let t = std::time::Instant::now();
    while std::fs::read_to_string(mnt.join("hello.txt")).ok().as_deref() != Some("hi from a JS swarm") {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "the JS drive did not show");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("the JS drive showed through HyperDHT in {:?}", t.elapsed());
    let peers = json(&b, &["peers", "--json"]);
    assert_eq!(peers[0]["transport"], "udx", "{peers}");
    hyperfs_in_ok(&b, &["unmount", mnt_s]);

    // A hyperfs drive, shared on one node and mounted on another.
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let f = tmp.path().join("note.txt");
    std::fs::write(&f, "hi from hyperfs").expect("write");
    hyperfs_in_ok(&a, &["put", f.to_str().expect("utf-8"), "src:/note.txt"]);
    let mut args = vec!["share", "src", "--json"];
    args.extend_from_slice(&only_hyperdht);
    let shared = json(&a, &args);
    let key = shared["key"].as_str().expect("key").to_owned();
    let mnt2 = tmp.path().join("mnt2");
    std::fs::create_dir(&mnt2).expect("mkdir");
    hyperfs_in_ok(&b, &["mount", &key, mnt2.to_str().expect("utf-8")]);
    let t = std::time::Instant::now();
    while std::fs::read_to_string(mnt2.join("note.txt")).ok().as_deref() != Some("hi from hyperfs") {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "the hyperfs drive did not show");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("the hyperfs drive showed through HyperDHT in {:?}", t.elapsed());
    hyperfs_in_ok(&b, &["unmount", mnt2.to_str().expect("utf-8")]);

    // A drive no longer shared is taken back from HyperDHT: a JS lookup of its discovery key
    // stops finding the node that shared it.
    let core: [u8; 32] = hex::decode(&key).expect("hex").try_into().expect("32 bytes");
    let topic = hex::encode(hyperfs_engine::crypto::discovery_key(&hyperfs_engine::crypto::CoreKey(core)).0);
    let node_a = json(&a, &["nat", "--json"])["key"].as_str().expect("key").to_owned();
    let finds_a = |js: &mut JsProcess| {
        let found = js.ask(json!({ "lookup": topic }));
        found["peers"].as_array().expect("peers").iter().any(|p| p.as_str() == Some(node_a.as_str()))
    };
    assert!(finds_a(&mut js), "JS finds the sharing node before it unshares");
    hyperfs_in_ok(&a, &["unshare", "src"]);
    let t = std::time::Instant::now();
    while finds_a(&mut js) {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "JS still finds the node after unshare");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
