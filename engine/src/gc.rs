//! Garbage collection of block bytes: the blocks no core of the store holds any more (after a
//! truncation, a core's removal, blocks cleared by pruning or eviction) are removed from the
//! index and their space given back to the file system ([`Store::collect_garbage`] does the
//! sweep; this module says what is referenced).
//!
//! A block is referenced when some core's bitfield marks it present: its key is the leaf hash
//! stored in that core's tree at the block's index. Blocks are content-addressed, so one block
//! shared by several cores or versions stays while any of them holds it.

use crate::crypto::Hash;
use crate::hypercore::bitfield::{decode_page, PAGE_BITS};
use crate::store::{Collected, SnapshotRead, Store, Table};
use crate::{Error, Result};

/// Collects the store's garbage now. Safe beside readers and writers of every core.
///
/// Runs on a thread of its own at the lowest priority (nice 19): mounts, writers and peers come
/// first when the cores are busy (a thread's niceness cannot be lowered again without
/// privilege, so the caller's thread is left as it was).
pub fn collect(store: &dyn Store) -> Result<Collected> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new().name("hyperfs-gc-work".into()).spawn_scoped(s, || {
            // SAFETY: setpriority on this thread's own id; it changes only its scheduling.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            store.collect_garbage(&referenced)
        });
        match worker {
            Ok(w) => w.join().unwrap_or_else(|_| Err(Error::Storage("the garbage collection failed".into()))),
            // No thread to spare: the caller's own does the work.
            Err(_) => store.collect_garbage(&referenced),
        }
    })
}

/// The keys of every block some core holds, sorted and without repeats.
///
/// A present block whose leaf is missing from its tree is damage: the collection stops with an
/// error rather than drop a block it cannot name.
pub fn referenced(snap: &dyn SnapshotRead) -> Result<Vec<Hash>> {
    // Runs of present blocks: (core id, first block, end).
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    snap.each(Table::Bitfield, &[], &[0xff; 17], &mut |k, v| {
        let (Some(id), Some(page)) = (be_u64(k.get(..8)), be_u64(k.get(8..16))) else {
            return Err(damaged("a bitfield key has the wrong size"));
        };
        let bits = decode_page(v).ok_or_else(|| damaged("a bitfield page is malformed"))?;
        let base = page * PAGE_BITS;
        let mut run: Option<u64> = None;
        for i in 0..=PAGE_BITS {
            let set = i < PAGE_BITS && bits[(i >> 3) as usize] & (1 << (i & 7)) != 0;
            match (set, run) {
                (true, None) => run = Some(i),
                (false, Some(s)) => {
                    match runs.last_mut() {
                        Some(last) if last.0 == id && last.2 == base + s => last.2 = base + i,
                        _ => runs.push((id, base + s, base + i)),
                    }
                    run = None;
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    let mut live: Vec<Hash> = Vec::new();
    for (id, start, end) in runs {
        let mut found = 0u64;
        snap.each(Table::Nodes, &node_key(id, 2 * start), &node_key(id, 2 * end), &mut |k, v| {
            let index = be_u64(k.get(8..16)).ok_or_else(|| damaged("a tree node key has the wrong size"))?;
            if index % 2 == 0 {
                let hash: Hash =
                    v.get(8..40).and_then(|h| h.try_into().ok()).ok_or_else(|| damaged("a leaf is malformed"))?;
                live.push(hash);
                found += 1;
            }
            Ok(())
        })?;
        if found != end - start {
            return Err(damaged(&format!(
                "core {id} holds blocks {start}..{end} but its tree lacks {} of their leaves",
                end - start - found
            )));
        }
    }
    live.sort_unstable();
    live.dedup();
    Ok(live)
}

fn node_key(id: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn be_u64(b: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_be_bytes(b?.try_into().ok()?))
}

fn damaged(reason: &str) -> Error {
    Error::Storage(format!("garbage collection stopped: {reason}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::KeyPair;
    use crate::drive::{keys, Drive, PutOptions};
    use crate::store::RocksStore;
    use crate::Hypercore;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut out = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    fn open(dir: &std::path::Path) -> (Arc<RocksStore>, Arc<dyn Store>) {
        let rocks = Arc::new(RocksStore::open(dir).expect("open"));
        let store: Arc<dyn Store> = rocks.clone();
        (rocks, store)
    }

    #[test]
    fn a_removed_and_pruned_file_gives_its_space_back_and_the_rest_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (rocks, store) = open(dir.path());
        let mut d = Drive::create(store.clone(), keys::drive_key_pair(&[3; 32], None)).expect("create");
        let keep = random(300_000, 1);
        d.put("/keep.bin", &keep, &PutOptions::default()).expect("put");
        d.put("/small.txt", b"small", &PutOptions::default()).expect("put");
        let before = rocks.disk_usage().expect("du").block_log;
        let big = random(16 << 20, 2);
        d.put("/big.bin", &big, &PutOptions::default()).expect("put");
        // The same bytes under a second name, then an edited copy: shared chunks are kept
        // while one version holds them.
        d.put("/big-copy.bin", &big, &PutOptions::default()).expect("put");
        assert!(d.del("/big.bin").expect("del"));

        // Nothing is unreferenced yet: every version still holds its blocks.
        assert_eq!(collect(&*store).expect("gc").blocks_removed, 0);

        assert!(d.del("/big-copy.bin").expect("del"));
        let dry = d.prune(1, true).expect("dry run");
        assert!(dry.bytes_cleared >= 16 << 20, "{dry:?}");
        assert_eq!(collect(&*store).expect("gc").blocks_removed, 0, "a dry run clears nothing");
        let pruned = d.prune(1, false).expect("prune");
        assert_eq!(pruned, dry, "the dry run told what goes");
        let done = collect(&*store).expect("gc");
        assert!(done.bytes_removed >= 16 << 20 && done.bytes_freed >= 15 << 20, "{done:?}");
        let after = rocks.disk_usage().expect("du").block_log;
        assert!(after < before + (1 << 20), "the log is back near its size before: {before} → {after}");

        // What the current version holds reads back, and every local block verifies.
        assert_eq!(d.get("/keep.bin").expect("get").expect("file"), keep);
        assert_eq!(d.get("/small.txt").expect("get").expect("file"), b"small");
        assert!(d.db().core().verify_local().expect("verify").is_empty());
        assert!(d.blobs().verify_local().expect("verify").is_empty());
        // A pruned version says its contents are gone rather than read wrong bytes.
        let old = d.version() - 2;
        assert!(d.checkout(old).expect("checkout").get("/big-copy.bin").is_err());
        // A new write of the same bytes works again (its blocks are written anew).
        d.put("/again.bin", &big, &PutOptions::default()).expect("put again");
        assert!(d.get("/again.bin").expect("get").expect("file") == big);
        assert_eq!(collect(&*store).expect("gc").blocks_removed, 0);
        let key = *d.key();
        drop(d);
        drop(store);
        drop(rocks);
        // And all of it after a reopen.
        let (_rocks, store) = open(dir.path());
        let d = Drive::open(store, &key).expect("open").expect("the drive");
        assert!(d.get("/again.bin").expect("get").expect("file") == big);
        assert!(d.blobs().verify_local().expect("verify").is_empty());
    }

    #[test]
    fn a_removed_drive_goes_and_blocks_it_shared_with_another_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_rocks, store) = open(dir.path());
        let shared = random(2 << 20, 7);
        let mut a = Drive::create(store.clone(), keys::drive_key_pair(&[4; 32], Some("a"))).expect("create");
        let mut b = Drive::create(store.clone(), keys::drive_key_pair(&[4; 32], Some("b"))).expect("create");
        a.put("/f", &shared, &PutOptions::default()).expect("put");
        a.put("/only-a", &random(1 << 20, 8), &PutOptions::default()).expect("put");
        b.put("/f", &shared, &PutOptions::default()).expect("put");
        let key = *a.key();
        drop(a);
        assert!(Drive::remove(&store, &key).expect("remove"));
        assert!(Drive::open(store.clone(), &key).expect("open").is_none(), "the drive is gone");
        let done = collect(&*store).expect("gc");
        assert!(done.bytes_removed >= 1 << 20 && done.bytes_removed < 2 << 20, "only a's own file goes: {done:?}");
        assert!(b.get("/f").expect("get").expect("file") == shared);
        assert!(b.blobs().verify_local().expect("verify").is_empty());
        assert!(!Drive::remove(&store, &key).expect("remove again"));
    }

    /// A block that is garbage when a collection starts and that a writer reuses meanwhile
    /// (the same bytes appended to another core) is kept: the race the pins and the noted
    /// reuses close.
    #[test]
    fn a_block_reused_during_a_collection_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_rocks, store) = open(dir.path());
        let mut a = Hypercore::create(store.clone(), KeyPair::generate(), false).expect("core a");
        let b = Arc::new(std::sync::Mutex::new(
            Hypercore::create(store.clone(), KeyPair::generate(), false).expect("core b"),
        ));
        for round in 0..150u64 {
            let blocks: Vec<Vec<u8>> = (0..8).map(|k| random(3000, round * 100 + k)).collect();
            a.append_batch(&blocks).expect("append a");
            a.truncate(0).expect("truncate a");
            // b appends the same bytes while the collection runs.
            let writer = {
                let b = b.clone();
                let blocks = blocks.clone();
                std::thread::spawn(move || {
                    let mut b = b.lock().expect("b");
                    for blk in &blocks {
                        b.append(blk).expect("append b");
                    }
                })
            };
            collect(&*store).expect("gc");
            writer.join().expect("writer");
            let b = b.lock().expect("b");
            let base = b.length() - 8;
            for (k, blk) in blocks.iter().enumerate() {
                assert_eq!(&b.get(base + k as u64).expect("read b"), blk, "round {round}, block {k}");
            }
        }
        assert!(b.lock().expect("b").verify_local().expect("verify").is_empty());
    }
}
