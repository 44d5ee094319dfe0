//! `hyperfs core replay`: the protocol-compliance tool run against JS hypercore in the tests.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::Hypercore;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    seed: Option<String>,
    #[serde(rename = "secretKey")]
    secret_key: Option<String>,
    #[serde(default)]
    compat: bool,
    ops: Vec<Op>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Op {
    Append(Vec<String>),
    Truncate(u64),
}

fn key_pair(s: &Script) -> Result<KeyPair> {
    match (&s.seed, &s.secret_key) {
        (Some(seed), None) => {
            let bytes: [u8; 32] = hex::decode(seed)
                .context("seed is not hex")?
                .try_into()
                .map_err(|_| anyhow::anyhow!("seed must be 32 bytes"))?;
            Ok(KeyPair::from_seed(&bytes))
        }
        (None, Some(sk)) => {
            let bytes = hex::decode(sk).context("secretKey is not hex")?;
            KeyPair::from_secret_key(&bytes)
                .ok_or_else(|| anyhow::anyhow!("secretKey must be 64 bytes: seed followed by its public key"))
        }
        _ => bail!("the script needs exactly one of \"seed\" and \"secretKey\""),
    }
}

pub fn run(path: &Path) -> Result<()> {
    let text = super::read_input(path)?;
    let script: Script = serde_json::from_slice(&text).context("the script is not valid replay JSON")?;
    let kp = key_pair(&script)?;
    let dir = tempfile::tempdir().context("creating a temporary store directory")?;
    let store = Arc::new(RocksStore::open(dir.path())?);
    let mut core = Hypercore::create(store, kp, script.compat)?;
    for (n, op) in script.ops.iter().enumerate() {
        match op {
            Op::Append(blocks) => {
                let blocks = blocks
                    .iter()
                    .map(hex::decode)
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("op {n}: a block is not hex"))?;
                core.append_batch(&blocks).with_context(|| format!("op {n}: append"))?;
            }
            Op::Truncate(len) => core.truncate(*len).with_context(|| format!("op {n}: truncate"))?,
        }
    }
    let roots: Vec<_> =
        core.roots().iter().map(|r| json!({"index": r.index, "size": r.size, "hash": hex::encode(r.hash)})).collect();
    let out = json!({
        "key": hex::encode(core.key()),
        "discoveryKey": hex::encode(core.discovery_key()),
        "manifest": if core.is_compat() { None } else { core.manifest().map(|m| hex::encode(m.encode())) },
        "length": core.length(),
        "byteLength": core.byte_length(),
        "fork": core.fork(),
        "treeHash": hex::encode(core.tree_hash()),
        "signature": hex::encode(core.signature()),
        "roots": roots,
    });
    println!("{out}");
    Ok(())
}
