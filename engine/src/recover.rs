//! What opening a store does after a crash or power cut, above the store itself.
//!
//! The store finds the blocks whose bytes never reached the disk ([`Store::recover_blocks`]);
//! here every core that held one catches up. A replica forgets it (readers fetch it from peers
//! again, a clone tops it up). A writable drive rolls back to its latest version whose db
//! blocks and every blob they reference are intact, on a new fork (a writer cannot fetch its own
//! unsent blocks from anyone); a writable core outside a drive rolls back to the block before its
//! first lost one. Only then does the store forget the lost keys, so a second cut during
//! recovery repeats it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::crypto::{CoreKey, Hash};
use crate::store::{Store, Table};
use crate::{Drive, Hypercore, Result};

/// What recovery did to one drive or core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// A writable drive rolled back from version `from` to `to`.
    DriveRolledBack { drive: CoreKey, from: u64, to: u64 },
    /// A writable core (not a drive's) rolled back from length `from` to `to`.
    CoreRolledBack { core: CoreKey, from: u64, to: u64 },
    /// A replica lost `blocks` blocks it will fetch again.
    Forgotten { core: CoreKey, blocks: usize },
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |k: &Hash| hex::encode(&k[..6]);
        match self {
            Recovered::DriveRolledBack { drive, from, to } => {
                write!(
                    f,
                    "drive {}: rolled back from version {from} to {to} (a power cut took its newest blocks)",
                    short(drive)
                )
            }
            Recovered::CoreRolledBack { core, from, to } => {
                write!(f, "core {}: rolled back from length {from} to {to}", short(core))
            }
            Recovered::Forgotten { core, blocks } => {
                write!(f, "replica core {}: {blocks} blocks lost, to be fetched again", short(core))
            }
        }
    }
}

/// Recovers what a crash or power cut left (nothing to do after a clean stop): see the module.
pub fn recover(store: &Arc<dyn Store>) -> Result<Vec<Recovered>> {
    let lost: HashSet<Hash> = store
        .recover_blocks(&crate::hypercore::stored::verifies)?
        .into_iter()
        .filter_map(|k| Hash::try_from(k.as_slice()).ok())
        .collect();
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<CoreKey> = store
        .scan(Table::Cores, &[], &[0xff; 33])?
        .into_iter()
        .filter_map(|(k, _)| Hash::try_from(k.as_slice()).ok().map(CoreKey))
        .collect();
    // Which blocks of which core; which writable cores make drives (not the blobs cores
    // derived from them: a blobs core opens as a bee too, its first chunk read as a header).
    let mut hit: HashMap<CoreKey, Vec<u64>> = HashMap::new();
    let mut writable = Vec::new();
    let mut blobs_cores = HashSet::new();
    for key in &keys {
        let Some(core) = Hypercore::open(store.clone(), key)? else { continue };
        let among = core.local_among(&lost)?;
        if core.writable() {
            writable.push(*key);
            if let Some(m) = core.manifest().and_then(|m| crate::drive::keys::blobs_manifest(m, key)) {
                blobs_cores.insert(CoreKey(m.hash()));
            }
        }
        if !among.is_empty() {
            hit.insert(*key, among);
        }
    }
    let mut out = Vec::new();
    if hit.keys().any(|k| writable.contains(k)) {
        for key in writable.iter().filter(|k| !blobs_cores.contains(*k)) {
            let Ok(Some(mut drive)) = Drive::open(store.clone(), key) else { continue };
            let blobs = *drive.blobs().key();
            let (db_lost, blobs_lost) = (hit.remove(key), hit.remove(&blobs));
            if db_lost.is_none() && blobs_lost.is_none() {
                continue;
            }
            let first = |v: Option<Vec<u64>>| v.and_then(|v| v.into_iter().min());
            if let Some((from, to)) = drive.roll_back_to_intact(first(db_lost), first(blobs_lost))? {
                out.push(Recovered::DriveRolledBack { drive: *key, from, to });
            }
        }
    }
    for (key, among) in hit {
        let Some(mut core) = Hypercore::open(store.clone(), &key)? else { continue };
        if core.writable() {
            let from = core.length();
            let to = among.iter().copied().min().unwrap_or(from);
            core.truncate(to)?;
            out.push(Recovered::CoreRolledBack { core: key, from, to });
        } else {
            core.forget(&among)?;
            out.push(Recovered::Forgotten { core: key, blocks: among.len() });
        }
    }
    store.forget_lost()?;
    Ok(out)
}
