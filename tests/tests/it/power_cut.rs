//! Power cuts, simulated in the spirit of ALICE and CrashMonkey: a mixed workload (a writer's
//! puts of small and large files, deletions, truncations, and a replica taking a remote core's
//! upgrades and blocks) runs on a real RocksDB store; at sync points (`Store::flush`, what an
//! `fsync` on a mounted file and `hyperfs sync` do) the store's files are copied as the disk
//! holds them; at random cut points a disk image is built as the kernel may leave it: each file
//! the store appends to (the block log, RocksDB's write-ahead log) keeps what was synced plus any
//! prefix of what was written since, with random pages of that unsynced part never written
//! (zeros: writeback does not keep order); files RocksDB syncs before use are as they were.
//! Each image must open, recover, keep every version synced before the cut, verify, and take
//! new writes. `HYPERFS_POWER_CUTS` sets the count (CI runs the default; `scripts/power-cut`
//! runs more).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::drive::PutOptions;
use hyperfs_engine::hypercore::proof::{Request, RequestUpgrade};
use hyperfs_engine::recover::{recover, Recovered};
use hyperfs_engine::store::{MemStore, RocksStore, Store};
use hyperfs_engine::{Drive, Hypercore};
use hyperfs_tests::pseudo_random;
use rand::{Rng, SeedableRng};

type Image = BTreeMap<String, Vec<u8>>;

/// Every file of the store directory as it is now (the workload is paused; with small
/// workloads RocksDB runs no flush or compaction in the background).
fn snapshot(dir: &Path) -> Image {
    let mut out = Image::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            out.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"));
        }
    }
    out
}

/// Whether a power cut can leave `name` anywhere between what was synced and what was written:
/// the files written by appending without a sync of their own.
fn appended(name: &str) -> bool {
    name == "blocks.log" || name.ends_with(".log") && name.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// What the disk may hold after a cut, given the last synced state and the state at the cut.
/// Returns the image and how many unsynced bytes it lost.
fn cut(synced: &Image, now: &Image, rng: &mut impl Rng) -> (Image, u64) {
    let mut out = Image::new();
    let mut lost = 0;
    for (name, bytes) in now {
        if !appended(name) {
            out.insert(name.clone(), bytes.clone());
            continue;
        }
        let base = synced.get(name).map_or(0, |b| b.len().min(bytes.len()));
        let mut kept = bytes[..rng.gen_range(base..=bytes.len())].to_vec();
        // Pages of the unsynced part that never reached the disk read as zeros.
        if rng.gen_bool(0.5) {
            let first_page = base / 4096;
            for page in first_page..kept.len().div_ceil(4096) {
                if rng.gen_bool(0.3) {
                    let from = (page * 4096).max(base);
                    let to = ((page + 1) * 4096).min(kept.len());
                    kept[from..to].fill(0);
                }
            }
        }
        lost += (bytes.len() - kept.len()) as u64;
        out.insert(name.clone(), kept);
    }
    (out, lost)
}

fn write_image(image: &Image, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in image {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

/// What a sync point promises: the drive's version and files, the replica's length and blocks.
#[derive(Clone, Default)]
struct Promise {
    version: u64,
    files: BTreeMap<String, Vec<u8>>,
    replica_length: u64,
    replica_blocks: Vec<u64>,
}

impl Promise {
    /// What the store holds now: promised once it is synced.
    fn now(drive: &Drive, files: &BTreeMap<String, Vec<u8>>, replica: &Hypercore) -> Promise {
        Promise {
            version: drive.version(),
            files: files.clone(),
            replica_length: replica.length(),
            replica_blocks: (0..replica.length()).filter(|&i| replica.has(i)).collect(),
        }
    }
}

/// The drive and the replica a workload writes, and the remote core the replica follows.
#[derive(Clone, Copy)]
struct Subjects<'a> {
    drive: &'a hyperfs_engine::crypto::CoreKey,
    replica: &'a hyperfs_engine::crypto::CoreKey,
    remote: &'a Hypercore,
}

struct Tally {
    cuts: usize,
    /// Blocks garbage collections removed.
    collected: usize,
    /// Images cut in the middle of a collection (its batch durable, its punches partly done).
    during_gc: usize,
    rolled_back: BTreeMap<u64, usize>,
    forgotten: usize,
    lost_bytes: u64,
}

/// One image: opens, recovers, and holds the promise.
fn check(image: &Image, dir: &Path, promise: &Promise, subjects: &Subjects<'_>, tally: &mut Tally, at_cut: u64) {
    let Subjects { drive: key, replica: replica_key, remote } = *subjects;
    let _ = std::fs::remove_dir_all(dir);
    write_image(image, dir);
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir).expect("the store opens after a power cut"));
    let recovered = recover(&store).expect("recovery");
    let mut drive = Drive::open(store.clone(), key).expect("the drive opens").expect("held");
    assert!(
        drive.version() >= promise.version,
        "version {} < synced {}: {recovered:?}",
        drive.version(),
        promise.version
    );
    for r in &recovered {
        if let Recovered::Forgotten { blocks, .. } = r {
            tally.forgotten += blocks;
        }
    }
    *tally.rolled_back.entry(at_cut.saturating_sub(drive.version())).or_default() += 1;
    // The synced version reads as it was.
    let view = drive.checkout(promise.version).expect("checkout");
    let listed: Vec<String> = view.list("/").expect("list").into_iter().map(|(p, _)| p).collect();
    assert_eq!(listed, promise.files.keys().cloned().collect::<Vec<_>>(), "the synced version's files");
    for (path, data) in &promise.files {
        assert!(view.get(path).expect("read").as_deref() == Some(&data[..]), "{path} at the synced version");
    }
    drop(view);
    for core in [drive.db().core(), drive.blobs()] {
        assert_eq!(core.verify_local().expect("signature and tree"), Vec::<u64>::new(), "no bad block");
    }
    // The latest version reads whole too.
    for (path, _) in drive.list("/").expect("list") {
        drive.get(&path).expect("every file of the latest version reads");
    }
    // The replica kept what was synced and verifies; what it lost comes back from the remote.
    let mut replica = Hypercore::open(store.clone(), replica_key).expect("open").expect("held");
    assert!(replica.length() >= promise.replica_length);
    assert_eq!(
        replica.verify_local().expect("replica verifies"),
        Vec::<u64>::new(),
        "{recovered:?} held at sync {:?}",
        promise.replica_blocks
    );
    for &i in &promise.replica_blocks {
        assert!(replica.has(i), "synced replica block {i}");
    }
    if let Some(i) = (0..replica.length()).find(|&i| !replica.has(i)) {
        let req = replica.block_request(i, remote.length()).expect("request");
        replica.apply_proof(&remote.proof(&req).expect("proof")).expect("a lost block comes back");
        assert!(replica.has(i));
    }
    // And the drive takes new writes.
    drive.put("/after-the-cut", b"still writable", &PutOptions::default()).expect("a write after recovery");
    assert_eq!(drive.get("/after-the-cut").expect("read").as_deref(), Some(&b"still writable"[..]));
    tally.cuts += 1;
}

fn run(cuts: usize, seed: u64) -> Tally {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut tally =
        Tally { cuts: 0, collected: 0, during_gc: 0, rolled_back: BTreeMap::new(), forgotten: 0, lost_bytes: 0 };
    let mut round = 0u64;
    while tally.cuts < cuts {
        round += 1;
        let dir = tmp.path().join(format!("store{round}"));
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(&dir).expect("open"));
        // A key of its own each round, never the remote's.
        let mut seed = [1u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        let kp = KeyPair::from_seed(&seed);
        let mut drive = Drive::create(store.clone(), kp).expect("create");
        let key = *drive.key();
        // A remote writer whose core this store replicates.
        let mut remote =
            Hypercore::create(Arc::new(MemStore::new()), KeyPair::from_seed(&[200; 32]), false).expect("remote");
        let mut replica =
            Hypercore::open_replica(store.clone(), *remote.key(), remote.manifest().cloned()).expect("replica");
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut versions: HashMap<u64, BTreeMap<String, Vec<u8>>> = HashMap::new();
        store.flush().expect("flush");
        let mut promise = Promise { version: drive.version(), ..Promise::default() };
        let mut synced = snapshot(&dir);
        for op in 0..40 {
            match rng.gen_range(0..11) {
                0..=3 => {
                    let len = if rng.gen_bool(0.3) { rng.gen_range(100_000..700_000) } else { rng.gen_range(1..5000) };
                    let data = pseudo_random(len, rng.gen());
                    let path = format!("/f{}", rng.gen_range(0..8));
                    drive.put(&path, &data, &PutOptions::default()).expect("put");
                    files.insert(path, data);
                }
                4 => {
                    if let Some(path) = files.keys().next().cloned() {
                        if rng.gen_bool(0.5) {
                            drive.del(&path).expect("del");
                            files.remove(&path);
                        } else {
                            // A rename is one atomic change of two blocks: no version between.
                            let to = format!("/r{}", rng.gen_range(0..8));
                            if !files.contains_key(&to) {
                                drive.rename(&path, &to).expect("rename");
                                let data = files.remove(&path).expect("the renamed file");
                                files.insert(to, data);
                            }
                        }
                    }
                }
                5 if op > 10 => {
                    // Back to a version that had no atomic change in flight.
                    let to = rng.gen_range(promise.version.max(1)..=drive.version());
                    if let Some(f) = versions.get(&to) {
                        if drive.truncate(to).is_ok() {
                            files = f.clone();
                        }
                    }
                }
                6..=7 => {
                    for _ in 0..rng.gen_range(1..4) {
                        remote.append(&pseudo_random(rng.gen_range(1..20_000), rng.gen())).expect("append");
                    }
                    let req = Request {
                        upgrade: Some(RequestUpgrade {
                            start: replica.length(),
                            length: remote.length() - replica.length(),
                        }),
                        manifest: replica.manifest().is_none(),
                        ..Request::default()
                    };
                    replica.apply_proof(&remote.proof(&req).expect("proof")).expect("upgrade");
                    for _ in 0..rng.gen_range(0..4) {
                        let i = rng.gen_range(0..replica.length());
                        if !replica.has(i) {
                            let req = replica.block_request(i, remote.length()).expect("request");
                            replica.apply_proof(&remote.proof(&req).expect("proof")).expect("block");
                        }
                    }
                }
                8 if op > 5 => {
                    // Space given back: the contents only versions before the synced one held
                    // are pruned, some replica blocks evicted, and a collection runs. Its
                    // batch is durable, so it is a sync point; a cut after it may find any
                    // of its punched pages punched or not.
                    let keep = drive.version() - promise.version + 1;
                    drive.prune(keep, false).expect("prune");
                    let held: Vec<u64> = (0..replica.length()).filter(|&i| replica.has(i)).collect();
                    let evict: Vec<u64> = held.iter().copied().filter(|_| rng.gen_bool(0.3)).collect();
                    replica.forget(&evict).expect("evict");
                    let before = snapshot(&dir);
                    let done = hyperfs_engine::gc::collect(&*store).expect("gc");
                    tally.collected += done.blocks_removed as usize;
                    store.flush().expect("flush");
                    promise = Promise::now(&drive, &files, &replica);
                    synced = snapshot(&dir);
                    let mut image = synced.clone();
                    if let (Some(old), Some(now)) = (before.get("blocks.log"), image.get_mut("blocks.log")) {
                        for page in 0..old.len().min(now.len()).div_ceil(4096) {
                            if rng.gen_bool(0.5) {
                                let (from, to) = (page * 4096, ((page + 1) * 4096).min(old.len()).min(now.len()));
                                now[from..to].copy_from_slice(&old[from..to]);
                            }
                        }
                    }
                    let image_dir = tmp.path().join("image");
                    let subjects = Subjects { drive: &key, replica: replica.key(), remote: &remote };
                    check(&image, &image_dir, &promise, &subjects, &mut tally, drive.version());
                    tally.during_gc += 1;
                }
                _ => {
                    store.flush().expect("flush");
                    promise = Promise::now(&drive, &files, &replica);
                    synced = snapshot(&dir);
                }
            }
            versions.insert(drive.version(), files.clone());
            if rng.gen_bool(0.25) {
                let now = snapshot(&dir);
                for _ in 0..2 {
                    let (image, lost) = cut(&synced, &now, &mut rng);
                    tally.lost_bytes += lost;
                    let image_dir = tmp.path().join("image");
                    let subjects = Subjects { drive: &key, replica: replica.key(), remote: &remote };
                    check(&image, &image_dir, &promise, &subjects, &mut tally, drive.version());
                }
            }
        }
        drop((drive, replica));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    tally
}

#[test]
fn power_cuts_at_random_points_lose_nothing_synced_and_never_brick_the_store() {
    let cuts = std::env::var("HYPERFS_POWER_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(800);
    let seed = hyperfs_tests::test_seed();
    let tally = run(cuts, seed);
    eprintln!(
        "{} simulated power cuts (seed {seed}): 0 failed to open, 0 synced versions lost, 0 verify failures; \
         versions rolled back past the synced point → cuts: {:?}; replica blocks to fetch again: {}; \
         unsynced bytes lost: {}; blocks garbage collected: {}, cuts in the middle of a collection: {}",
        tally.cuts, tally.rolled_back, tally.forgotten, tally.lost_bytes, tally.collected, tally.during_gc
    );
    assert!(tally.collected > 0, "the collections beside the workload removed blocks");
}
