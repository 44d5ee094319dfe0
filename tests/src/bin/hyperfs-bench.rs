//! The benchmark driver behind `scripts/bench`: every hyperfs figure beside a peer's, measured in
//! the same run.
//!
//!   hyperfs-bench chunk FILE          chunking and chunk+hash vs the fastcdc crate (v2020)
//!   hyperfs-bench append DIR          Hypercore append throughput into RocksDB (JSON)
//!   hyperfs-bench dedup OLD NEW       bytes a second version stores: CDC vs fixed 64 KiB blocks
//!   hyperfs-bench bee DIR [KEYS]      Hyperbee puts (single and batched) and gets per second (JSON)
//!   hyperfs-bench drive DIR           drive large-file and 4 KiB-file write and read rates (JSON)

use std::sync::Arc;
use std::time::Instant;

use hyperfs_chunker::{chunks, leaf_hash, Chunker, HYPERFS_CDC_V1};
use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::Hypercore;
use rayon::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("chunk") => chunk(&args[2]),
        Some("append") => append(&args[2], args.get(3).map(String::as_str)),
        Some("dedup") => dedup(&args[2], &args[3]),
        Some("drive") => drive(&args[2]),
        Some("bee") => bee(&args[2], args.get(3).and_then(|n| n.parse().ok()).unwrap_or(100_000)),
        _ => {
            eprintln!(
                "usage: hyperfs-bench chunk FILE | append DIR [64k|4k] | dedup OLD NEW | bee DIR [KEYS] | drive DIR"
            );
            std::process::exit(2);
        }
    }
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

fn chunk(path: &str) {
    let data = std::fs::read(path).expect("read input");
    let gb = data.len() as f64 / 1e9;
    let p = HYPERFS_CDC_V1;
    let (ours, n_ours) = best_of(3, || chunks(p, &data).len());
    let (theirs, n_theirs) = best_of(3, || {
        fastcdc::v2020::FastCDC::new(&data, p.min_size as u32, p.avg_size as u32, p.max_size as u32).count()
    });
    // Chunk + leaf hash: ours streams cut points to a pool that hashes on every core.
    let (ours_h, _) = best_of(3, || {
        let mut cuts = Vec::with_capacity(data.len() / p.avg_size + 1);
        let mut c = Chunker::new(p);
        let mut hashed: Vec<[u8; 32]> = Vec::new();
        // Chunk in 64 MiB windows and hash each window's chunks in parallel while chunking on.
        let window = 64 << 20;
        let mut at = 0;
        rayon::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<hyperfs_chunker::Chunk>>();
            let data = &data;
            let hashed = &mut hashed;
            s.spawn(move |_| {
                for batch in rx {
                    hashed.par_extend(
                        batch.par_iter().map(|ch| leaf_hash(&data[ch.offset as usize..ch.offset as usize + ch.len])),
                    );
                }
            });
            while at < data.len() {
                let end = (at + window).min(data.len());
                let start = cuts.len();
                c.push(&data[at..end], |ch| cuts.push(ch));
                tx.send(cuts[start..].to_vec()).expect("hasher alive");
                at = end;
            }
            if let Some(last) = c.finish() {
                tx.send(vec![last]).expect("hasher alive");
            }
        });
        hashed.len()
    });
    let (theirs_h, _) = best_of(3, || {
        fastcdc::v2020::FastCDC::new(&data, p.min_size as u32, p.avg_size as u32, p.max_size as u32)
            .map(|ch| std::hint::black_box(leaf_hash(&data[ch.offset..ch.offset + ch.length])))
            .fold(0usize, |n, h| n + usize::from(h[0] & 1))
    });
    println!(
        "{{\"bytes\":{},\"chunks\":{},\"fastcdcChunks\":{},\"chunkGBps\":{:.3},\"fastcdcGBps\":{:.3},\"chunkHashGBps\":{:.3},\"fastcdcHashGBps\":{:.3}}}",
        data.len(),
        n_ours,
        n_theirs,
        gb / ours,
        gb / theirs,
        gb / ours_h,
        gb / theirs_h
    );
}

/// Both block sizes, or only the one named (for profiling).
fn append(dir: &str, only: Option<&str>) {
    let mut out = Vec::new();
    for (label, size, count, batch) in [("64k", 64 * 1024, 8192usize, 64usize), ("4k", 4096, 50_000, 500)] {
        if only.is_some_and(|o| o != label) {
            continue;
        }
        let path = std::path::Path::new(dir).join(label);
        let _ = std::fs::remove_dir_all(&path);
        // Start without the previous run's dirty pages being written back under this one.
        let _ = std::process::Command::new("sync").status();
        let store = Arc::new(RocksStore::open(&path).expect("open store"));
        let mut core = Hypercore::create(store.clone(), KeyPair::generate(), false).expect("core");
        let mut blocks: Vec<Vec<u8>> =
            (0..batch).map(|i| hyperfs_tests::pseudo_random(size, i as u64 + size as u64)).collect();
        let t = Instant::now();
        let mut n = 0;
        let mut round = 0u64;
        while n < count {
            // Distinct content every batch, so dedup does not flatter the figure; the buffers are
            // reused (as in the JS run) so the figure is the append, not the harness's copying.
            for (i, b) in blocks.iter_mut().enumerate() {
                b[..8].copy_from_slice(&(round * batch as u64 + i as u64).to_le_bytes());
            }
            core.append_batch(&blocks).expect("append");
            n += batch;
            round += 1;
        }
        // Like the JS run, the figure ends when the last append returns (committed, not fsynced).
        let secs = t.elapsed().as_secs_f64();
        out.push(format!(
            "\"{label}\":{{\"mibps\":{:.1},\"blocksPerSec\":{:.0}}}",
            (n * size) as f64 / secs / (1 << 20) as f64,
            n as f64 / secs
        ));
    }
    println!("{{{}}}", out.join(","));
}

/// The same keys and values as `scripts/js/bench-bee.js`: 16-byte keys, 64-byte values.
fn bee(dir: &str, n: usize) {
    use hyperfs_engine::Hyperbee;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| hyperfs_tests::pseudo_random(16, i as u64 + 1)).collect();
    let values: Vec<Vec<u8>> = (0..n).map(|i| hyperfs_tests::pseudo_random(64, (i + n) as u64 + 1)).collect();
    let open = |name: &str| {
        let path = std::path::Path::new(dir).join(name);
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::process::Command::new("sync").status();
        let store = Arc::new(RocksStore::open(&path).expect("open store"));
        Hyperbee::new(Hypercore::create(store, KeyPair::generate(), false).expect("core"))
    };

    let mut db = open("single");
    let t = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        db.put(k, v).expect("put");
    }
    let puts = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        let e = db.get(&keys[(i * 7919) % n]).expect("get");
        assert!(e.is_some(), "missing key");
    }
    let gets = n as f64 / t.elapsed().as_secs_f64();
    drop(db);

    let mut db = open("batch");
    let t = Instant::now();
    for (ks, vs) in keys.chunks(1000).zip(values.chunks(1000)) {
        let mut b = db.batch();
        for (k, v) in ks.iter().zip(vs) {
            b.put(k, v).expect("put");
        }
        b.flush().expect("flush");
    }
    let batch_puts = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"puts\":{{\"perSec\":{puts:.0}}},\"gets\":{{\"perSec\":{gets:.0}}},\"batchPuts\":{{\"perSec\":{batch_puts:.0}}}}}"
    );
}

/// The same workload as `scripts/js/bench-drive.js`.
fn drive(dir: &str) {
    use hyperfs_engine::drive::{keys, Drive, PutOptions};
    let open = |name: &str| {
        let path = std::path::Path::new(dir).join(name);
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::process::Command::new("sync").status();
        let store = Arc::new(RocksStore::open(&path).expect("open store"));
        Drive::create(store, keys::drive_key_pair(&rand::random(), None)).expect("drive")
    };
    let opts = PutOptions::default();
    let big = hyperfs_tests::pseudo_random(256 << 20, rand::random());
    let mut d = open("large");
    let t = Instant::now();
    d.put("/big.bin", &big, &opts).expect("put");
    let large_write = 256.0 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = d.get("/big.bin").expect("get").expect("file");
    let large_read = 256.0 / t.elapsed().as_secs_f64();
    assert_eq!(back.len(), big.len());
    drop((d, back, big));

    let mut d = open("small");
    let n = 10_000;
    let files: Vec<Vec<u8>> = (0..n).map(|i| hyperfs_tests::pseudo_random(4096, rand::random::<u64>() ^ i)).collect();
    let t = Instant::now();
    for (i, f) in files.iter().enumerate() {
        d.put(&format!("/d{}/f{i}", i % 100), f, &opts).expect("put");
    }
    let small_put = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        let b = d.get(&format!("/d{}/f{i}", i % 100)).expect("get").expect("file");
        assert_eq!(b.len(), 4096);
    }
    let small_get = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"largeWrite\":{{\"mibps\":{large_write:.1}}},\"largeRead\":{{\"mibps\":{large_read:.1}}},\"smallPut\":{{\"perSec\":{small_put:.0}}},\"smallGet\":{{\"perSec\":{small_get:.0}}}}}"
    );
}

fn dedup(old: &str, new: &str) {
    let a = std::fs::read(old).expect("read old");
    let b = std::fs::read(new).expect("read new");
    let cdc = |d: &[u8]| -> Vec<([u8; 32], usize)> {
        chunks(HYPERFS_CDC_V1, d)
            .par_iter()
            .map(|c| (leaf_hash(&d[c.offset as usize..c.offset as usize + c.len]), c.len))
            .collect()
    };
    let fixed =
        |d: &[u8]| -> Vec<([u8; 32], usize)> { d.par_chunks(64 * 1024).map(|c| (leaf_hash(c), c.len())).collect() };
    let new_bytes = |old: Vec<([u8; 32], usize)>, new: Vec<([u8; 32], usize)>| -> u64 {
        let seen: std::collections::HashSet<[u8; 32]> = old.into_iter().map(|x| x.0).collect();
        let mut added = std::collections::HashSet::new();
        new.into_iter().filter(|(h, _)| !seen.contains(h) && added.insert(*h)).map(|(_, l)| l as u64).sum()
    };
    let c = new_bytes(cdc(&a), cdc(&b));
    let f = new_bytes(fixed(&a), fixed(&b));
    println!("{{\"newVersionBytes\":{},\"cdcStored\":{c},\"fixed64kStored\":{f}}}", b.len());
}
