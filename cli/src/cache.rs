//! The bounded cache of other people's data: the blocks of sparse replicas (drives mounted by
//! key, read on demand) count against a limit (`--cache-size`, remembered in `cache.json`; by
//! default a tenth of the data directory's file system, at least 1 GiB), and a minimum of free
//! disk is kept. Full copies (`clone`, `seed`) and drives of this node never count and are never
//! evicted.
//!
//! Least recently used blocks go first: a block's time is its last read (told by the replica's
//! fetcher) or, for one never read, when the cache first saw it (a sequential reader's window
//! read ahead is newer than what it read long ago); among equals, lower indexes first. An
//! evicted block is cleared in the network's instance of its core (`Hypercore::forget`), so a
//! later read fetches it from a peer again; the most recently used blocks ([`IN_USE`]: what
//! readers are reading and what just arrived for them) are never evicted, and a read already
//! under way of an older one reads it before the space goes or fetches it again (the store's
//! garbage collection waits for readers that found it).
//! The space comes back in a garbage collection, run once enough was evicted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hyperfs_engine::crypto::CoreKey;
use hyperfs_engine::store::Store;

use crate::share::ReplicaCore;

/// At least this much of the disk stays free, whatever the limit.
pub const MIN_FREE: u64 = 1 << 30;
/// Eviction goes down to this share of the limit (in tenths), so it runs in rounds, not per block.
const DOWN_TO_TENTHS: u64 = 9;
/// The most recently used blocks are never evicted, whatever the limit: the ones a reader is
/// reading now and the read-ahead that just arrived for it (two windows of a sequential
/// reader). A cache smaller than a reader's window would otherwise evict what the reader was
/// about to read, to fetch it again. (Blocks still on their way are not stored, so not held.)
const IN_USE: usize = 128;

/// The cache's limit and what it knows of its blocks' use.
pub struct Cache {
    limit: AtomicU64,
    dir: PathBuf,
    state: Mutex<State>,
    /// Held through an enforcement: the refresher and readers making room take turns.
    enforcing: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// A clock that moves on with every use.
    tick: u64,
    /// The last use of a block (or when it was first seen), by core and index.
    used: HashMap<(CoreKey, u64), u64>,
    /// Bytes evicted since the last garbage collection.
    uncollected: u64,
}

/// The cache settings remembered in `cache.json`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// The limit in bytes; `None`: the default.
    pub size: Option<u64>,
}

/// What `du` shows of the cache.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Use {
    pub limit: u64,
    pub used: u64,
}

impl Cache {
    /// The cache of data directory `dir`, with the remembered limit (or the default).
    pub fn new(dir: &Path) -> Cache {
        let settings: Settings = crate::node::read_state_json(dir, "cache.json").unwrap_or_default();
        let limit = settings.size.unwrap_or_else(|| default_limit(dir));
        Cache {
            limit: AtomicU64::new(limit),
            dir: dir.to_path_buf(),
            state: Mutex::default(),
            enforcing: Mutex::default(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::SeqCst)
    }

    /// Sets the limit (and remembers it for the next start).
    pub fn set_limit(&self, bytes: u64) -> Result<()> {
        self.limit.store(bytes, Ordering::SeqCst);
        crate::node::write_state_json(&self.dir, "cache.json", &Settings { size: Some(bytes) })
    }

    /// Block `index` of `core` was read.
    pub fn touch(&self, core: &CoreKey, index: u64) {
        let mut s = lock(&self.state);
        s.tick += 1;
        let t = s.tick;
        s.used.insert((*core, index), t);
    }

    /// Bytes the sparse replica cores `cores` hold.
    pub fn used(cores: &[Arc<ReplicaCore>]) -> u64 {
        cores.iter().map(|c| lock(&c.core).local_bytes().unwrap_or(0)).sum()
    }

    /// Evicts least recently used blocks of `cores` (the sparse replicas' cores) while they
    /// hold more than the limit or the disk has less than [`MIN_FREE`] free, and collects
    /// garbage in `store` once enough was evicted. Returns the bytes evicted.
    pub fn enforce(&self, cores: &[Arc<ReplicaCore>], store: &dyn Store) -> u64 {
        let _turn = lock(&self.enforcing);
        let used = Cache::used(cores);
        let free = free_bytes(&self.dir);
        let budget = self.limit().min((used + free).saturating_sub(MIN_FREE));
        let mut evicted = 0;
        if used > budget {
            let target = budget / 10 * DOWN_TO_TENTHS;
            evicted = self.evict(cores, used - target);
        }
        let collect = {
            let mut s = lock(&self.state);
            s.uncollected += evicted;
            let due = s.uncollected > 0 && s.uncollected >= (self.limit() / 8).clamp(1 << 20, 256 << 20);
            if due {
                s.uncollected = 0;
            }
            due
        };
        if collect {
            match hyperfs_engine::gc::collect(store) {
                Ok(c) => tracing::debug!(freed = c.bytes_freed, "cache: evicted blocks collected"),
                Err(e) => tracing::warn!(error = %e, "cache: collecting evicted blocks"),
            }
        }
        evicted
    }

    /// Clears at least `want` bytes of the least recently used blocks of `cores`.
    fn evict(&self, cores: &[Arc<ReplicaCore>], want: u64) -> u64 {
        // Every held block with its time: (time, core, index, size).
        let mut held: Vec<(u64, usize, u64, u64)> = Vec::new();
        {
            let mut s = lock(&self.state);
            s.tick += 1;
            let now = s.tick;
            for (k, slot) in cores.iter().enumerate() {
                let core = lock(&slot.core);
                let mut next = core.next_local(0, core.length(), true);
                while let Some(i) = next {
                    let size = core.leaf(i).ok().flatten().map_or(0, |n| n.size);
                    let t = *s.used.entry((slot.key, i)).or_insert(now);
                    held.push((t, k, i, size));
                    next = core.next_local(i + 1, core.length(), true);
                }
            }
        }
        held.sort_unstable();
        held.truncate(held.len().saturating_sub(IN_USE));
        // Per core: the blocks chosen, and their bytes.
        let mut chosen: Vec<(Vec<u64>, u64)> = vec![(Vec::new(), 0); cores.len()];
        let mut bytes = 0;
        for &(_, k, i, size) in &held {
            if bytes >= want {
                break;
            }
            chosen[k].0.push(i);
            chosen[k].1 += size;
            bytes += size;
        }
        let mut done = 0;
        for (slot, (indexes, size)) in cores.iter().zip(chosen) {
            if indexes.is_empty() {
                continue;
            }
            match lock(&slot.core).forget(&indexes) {
                Ok(()) => {
                    let mut s = lock(&self.state);
                    for i in &indexes {
                        s.used.remove(&(slot.key, *i));
                    }
                    done += size;
                }
                Err(e) => tracing::warn!(error = %e, "cache: evicting blocks"),
            }
        }
        if done > 0 {
            tracing::debug!(bytes = done, "cache: evicted least recently used blocks");
        }
        done
    }

    /// What `du` shows.
    pub fn usage(&self, cores: &[Arc<ReplicaCore>]) -> Use {
        Use { limit: self.limit(), used: Cache::used(cores) }
    }
}

/// A tenth of the file system holding `dir`, at least 1 GiB.
fn default_limit(dir: &Path) -> u64 {
    let total = statvfs(dir).map_or(0, |(total, _)| total);
    (total / 10).max(1 << 30)
}

/// Bytes free for this user on the file system holding `dir` (`u64::MAX` if unknown).
fn free_bytes(dir: &Path) -> u64 {
    statvfs(dir).map_or(u64::MAX, |(_, free)| free)
}

/// (total, available) bytes of the file system holding `dir`.
fn statvfs(dir: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some((st.f_blocks.saturating_mul(st.f_frsize), st.f_bavail.saturating_mul(st.f_frsize)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A size as people write it: `64MiB`, `1.5G`, `500M`, `4096` (bytes). K, M, G, T are powers
/// of 1024, with or without `i` and `B`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow::anyhow!("{s:?} is not a size (like 64MiB or 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => anyhow::bail!("{s:?} is not a size (like 64MiB or 2G)"),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        anyhow::bail!("{s:?} is out of range");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_as_people_write_them() {
        for (s, n) in [("4096", 4096), ("64MiB", 64 << 20), ("64M", 64 << 20), ("1.5G", 3 << 29), ("2gb", 2 << 30)] {
            assert_eq!(parse_size(s).expect(s), n, "{s}");
        }
        for bad in ["", "lots", "12X", "-1M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
