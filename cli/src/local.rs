//! The data directory's location, key parsing, and the store-level commands the node runs for
//! its clients: `core dump`, `keys export|import`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use hyperfs_engine::crypto::{self, CoreKey, KeyPair};
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::{Drive, Hypercore};
use serde_json::{json, Value};

/// The data directory: `--data-dir`/`HYPERFS_DIR`, else `$XDG_DATA_HOME/hyperfs`, else
/// `~/.local/share/hyperfs`.
pub fn data_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("hyperfs"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("neither --data-dir, XDG_DATA_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".local/share/hyperfs"))
}

/// A core or drive key given as 64 hex digits, 52 z-base-32 characters or a `hyper://` link.
pub fn parse_key(s: &str) -> Result<CoreKey> {
    let bare = s.strip_prefix("hyper://").map(|r| r.split('/').next().unwrap_or_default()).unwrap_or(s);
    let bytes = if bare.len() == 64 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(bare).ok()
    } else if bare.len() == 52 {
        crypto::z32_decode(bare)
    } else {
        None
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .map(CoreKey)
        .ok_or_else(|| anyhow!("{s:?} is not a key: give 64 hex digits, 52 z-base-32 characters or a hyper:// link"))
}

/// The most blocks `core dump` lists.
const MAX_DUMP_BLOCKS: u64 = 1 << 24;

/// `hyperfs core dump KEY --json`: a stored core with every block (null where not local).
pub fn core_dump(store: Arc<RocksStore>, key: &str) -> Result<Value> {
    let key = parse_key(key)?;
    let core = Hypercore::open(store, &key)?.ok_or_else(|| anyhow!("no core {} on this node", hex::encode(key)))?;
    // One entry per block, null where not local: a writer may sign a length near 2^55.
    if core.length() > MAX_DUMP_BLOCKS {
        bail!(
            "core {} has {} blocks ({} here): more than a dump lists ({MAX_DUMP_BLOCKS})",
            hex::encode(key),
            core.length(),
            core.local_blocks()
        );
    }
    let blocks: Vec<Value> = (0..core.length())
        .map(|i| match core.get(i) {
            Ok(b) => Ok(hex::encode(b).into()),
            Err(hyperfs_engine::Error::MissingBlock { .. }) => Ok(Value::Null),
            Err(e) => Err(e),
        })
        .collect::<Result<_, _>>()?;
    Ok(json!({
        "key": hex::encode(core.key()),
        "manifest": if core.is_compat() { None } else { core.manifest().map(|m| hex::encode(m.encode())) },
        "length": core.length(),
        "byteLength": core.byte_length(),
        "fork": core.fork(),
        "signature": hex::encode(core.signature()),
        "blocks": blocks,
    }))
}

/// `hyperfs keys export DRIVE FILE`: the drive's writer secret, in a new file of mode 0600.
pub fn keys_export(store: Arc<RocksStore>, key: &CoreKey, file: &Path) -> Result<crate::api::KeysExported> {
    let core = Hypercore::open(store, key)?.ok_or_else(|| anyhow!("no drive {} on this node", hex::encode(key)))?;
    let kp = core
        .key_pair()
        .ok_or_else(|| anyhow!("drive {} is a replica here: this node has no secret key for it", hex::encode(key)))?;
    let text = json!({"drive": hex::encode(key), "secretKey": hex::encode(kp.secret_key())}).to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {} (an existing file is never overwritten)", file.display()))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", file.display()))?;
    Ok(crate::api::KeysExported { drive: hex::encode(key), file: file.to_path_buf() })
}

/// `hyperfs keys import FILE`: makes the drive writable on this node; returns the drive. A
/// node that holds none of the drive's history refuses unless `offline_ok`: it would write a
/// second history under the key from its first change on.
pub fn keys_import(store: Arc<RocksStore>, file: &Path, offline_ok: bool) -> Result<Drive> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a key file written by `hyperfs keys export`", file.display()))?;
    let secret = v["secretKey"].as_str().and_then(|s| hex::decode(s).ok());
    let kp = secret
        .as_deref()
        .and_then(KeyPair::from_secret_key)
        .ok_or_else(|| anyhow!("{} has no valid \"secretKey\" (64 bytes as hex)", file.display()))?;
    // Checked before anything is stored: a file naming another drive stores nothing.
    let key = CoreKey(hyperfs_engine::hypercore::Manifest::single(kp.public_key()).hash());
    if let Some(named) = v["drive"].as_str() {
        if parse_key(named)? != key {
            bail!("{}: the secret key does not belong to drive {named}", file.display());
        }
    }
    let held = Hypercore::open(store.clone(), &key)?.is_some_and(|c| c.length() > 0);
    if held {
        // What the node holds must open as a drive before the secret joins it.
        Drive::open(store.clone(), &key)?;
    }
    if !held && !offline_ok {
        bail!(
            "this node does not hold drive {k}: a key imported here would start a second history \
             that forks the drive for every follower; clone it first (hyperfs clone {k} --peer \
             HOST:PORT), then import the key (--offline-ok forks it knowingly)",
            k = hex::encode(key)
        );
    }
    Ok(Drive::create(store, kp)?)
}
