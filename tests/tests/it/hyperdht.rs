//! hyperfs's HyperDHT client on a HyperDHT network of JS nodes (`hyperdht/testnet`, 10 nodes on
//! loopback, `scripts/js/dht-peer.js`): what hyperfs announces under a topic a JS node finds, and
//! what a JS node announces hyperfs finds; a topic nobody announced finds nobody.

use std::net::SocketAddrV4;

use hyperfs_engine::crypto::KeyPair;
use hyperfs_net::dht::Client;
use hyperfs_tests::JsProcess;
use serde_json::json;

#[test]
fn announces_and_lookups_meet_js_nodes_on_a_hyperdht_network() {
    let (mut js, net) = JsProcess::start("dht-peer.js", &["testnet", "10"]);
    let bootstrap: Vec<SocketAddrV4> = net["bootstrap"]
        .as_array()
        .expect("bootstrap")
        .iter()
        .map(|b| b.as_str().expect("address").parse().expect("an IPv4 address"))
        .collect();
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
}
