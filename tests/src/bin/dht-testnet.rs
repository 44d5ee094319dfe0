//! A private Mainline DHT for the swarm tests: `dht-testnet IP N` starts N server-mode DHT nodes
//! bound to IP (the crate's testnet support, seeded with one another), prints their addresses as
//! a JSON list on one line, and serves until its stdin closes.

use std::io::Read;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(ip), Some(n)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: dht-testnet IP N");
    };
    let testnet = mainline::Testnet::builder(n.parse()?).bind_address(ip.parse()?).build()?;
    println!("{}", serde_json::to_string(&testnet.bootstrap)?);
    // Served until the test lets go of us.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(testnet);
    Ok(())
}
