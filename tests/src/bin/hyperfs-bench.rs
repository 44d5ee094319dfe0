//! The benchmark driver behind `scripts/bench`: every hyperfs figure beside a peer's, measured in
//! the same run.
//!
//!   hyperfs-bench chunk FILE          chunking and chunk+hash vs the fastcdc crate (v2020)
//!   hyperfs-bench append DIR          Hypercore append throughput into RocksDB (JSON)
//!   hyperfs-bench dedup OLD NEW       bytes a second version stores: CDC vs fixed 64 KiB blocks
//!   hyperfs-bench bee DIR [KEYS]      Hyperbee puts (single and batched) and gets per second (JSON)
//!   hyperfs-bench drive DIR           drive large-file and 4 KiB-file write and read rates (JSON)
//!   hyperfs-bench randread FILE N     N reads of 4 KiB at random offsets: latency percentiles (JSON)
//!   hyperfs-bench close MNT BIG       on a mount holding folders f0.. of 4 KiB files: listings and
//!                                     reads of names not seen before, quiet and then while BIG is
//!                                     copied in and closed, and of 4 KiB files written beside it
//!                                     (new versions of the same drive): latency percentiles (JSON)
//!   hyperfs-bench write DIR SRC N     N files, each SRC's bytes rotated differently, written into
//!                                     DIR in 1 MiB writes and closed: MiB/s (JSON)
//!   hyperfs-bench quic MIB | tcp MIB [aes]
//!                                     what raw QUIC, or the JS wire over TCP (secret-stream, or
//!                                     with aes the AES-256-GCM frames hyperfs nodes switch to),
//!                                     carries on loopback with the node's configuration (JSON)
//!   hyperfs-bench merge DIR N         a multi-writer drive's member comes back with N changes
//!                                     made offline (1 KiB files, half of them overwrites): the
//!                                     seconds the other member takes to merge them (JSON)
//!   hyperfs-bench flood ADDR KEY... S a hostile peer: for S seconds, floods the node at ADDR with
//!                                     bitfield, range, request and want messages on the channels
//!                                     of the cores KEY..., reconnecting whenever dropped (JSON)

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
        Some("randread") => randread(&args[2], args[3].parse().expect("a count")),
        Some("close") => close(&args[2], &args[3]),
        Some("write") => write_files(&args[2], &args[3], args[4].parse().expect("a count")),
        Some("quic") => quic(args[2].parse().expect("MiB")),
        Some("tcp") => tcp(args[2].parse().expect("MiB"), args.get(3).is_some_and(|a| a == "aes")),
        Some("merge") => merge(&args[2], args.get(3).and_then(|n| n.parse().ok()).unwrap_or(10_000)),
        Some("flood") => flood(&args[2], &args[3..args.len() - 1], args[args.len() - 1].parse().expect("seconds")),
        _ => {
            eprintln!(
                "usage: hyperfs-bench chunk FILE | append DIR [64k|4k] | dedup OLD NEW | bee DIR [KEYS] | drive DIR | randread FILE N | close MNT BIG | write DIR SRC N | merge DIR [N] | flood ADDR KEY... SECONDS | quic MIB | tcp MIB [aes]"
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

/// N reads of 4 KiB at random offsets of FILE (a mounted replica: each read of a chunk not yet
/// here travels), one at a time; the latency percentiles.
fn randread(path: &str, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open");
    let len = f.metadata().expect("stat").len();
    let mut buf = vec![0u8; 4096];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed % (len / 4096)) * 4096;
        let t = Instant::now();
        f.read_exact_at(&mut buf, at).expect("read");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{}",
        serde_json::json!({"reads": n, "p50Ms": pct(0.50), "p99Ms": pct(0.99), "maxMs": lat[lat.len() - 1]})
    );
}

/// Percentiles of latencies in ms.
fn percentiles(mut lat: Vec<f64>) -> serde_json::Value {
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    serde_json::json!({"samples": lat.len(), "p50Ms": pct(0.50), "p99Ms": pct(0.99), "maxMs": lat[lat.len() - 1]})
}

/// Lists folder `mnt/f{k}` (names and attributes, as `ls -la`) and reads ten of its files, each
/// a name this mount has not shown before (the kernel cannot answer from its caches): the
/// latency of each listing and each read.
fn browse(mnt: &str, k: usize, lat: &mut Vec<(Instant, f64)>) {
    let dir = std::path::Path::new(mnt).join(format!("f{k}"));
    let t = Instant::now();
    let names: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            e.metadata().expect("lstat");
            e.path()
        })
        .collect();
    lat.push((t, t.elapsed().as_secs_f64() * 1e3));
    for p in names.iter().take(10) {
        let t = Instant::now();
        assert_eq!(std::fs::read(p).expect("read").len(), 4096);
        lat.push((t, t.elapsed().as_secs_f64() * 1e3));
    }
}

/// Browsing a drive while a 1 GiB file is closed on it, beside browsing it quiet.
fn close(mnt: &str, big: &str) {
    use std::io::Write;
    let folders = (0..).take_while(|k| std::path::Path::new(mnt).join(format!("f{k}")).is_dir()).count();
    let half = folders / 2;
    // Quiet: the first half of the folders.
    let mut quiet = Vec::new();
    for k in 0..half {
        browse(mnt, k, &mut quiet);
    }
    let quiet_dir = std::path::Path::new(mnt).join("written-quiet");
    std::fs::create_dir_all(&quiet_dir).expect("mkdir");
    let quiet_writes: Vec<f64> = (0..200)
        .map(|k: usize| {
            let t = Instant::now();
            std::fs::write(quiet_dir.join(format!("w{k}")), [k as u8; 4096]).expect("write");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    // Busy: the copy runs on this thread; the browser starts on the second half once the
    // close has begun, and stops when it ends.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let browser = {
        let (closing, closed, mnt) = (closing.clone(), closed.clone(), mnt.to_owned());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !closing.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            let mut k = half;
            while !closed.load(std::sync::atomic::Ordering::SeqCst) && k < folders {
                browse(&mnt, k, &mut lat);
                k += 1;
            }
            lat
        })
    };
    // Writing beside it: 4 KiB files created and closed in a folder of their own, each a new
    // version of the same drive.
    let writer = {
        let (closing, closed, mnt) = (closing.clone(), closed.clone(), mnt.to_owned());
        std::thread::spawn(move || {
            let dir = std::path::Path::new(&mnt).join("written");
            std::fs::create_dir_all(&dir).expect("mkdir");
            let mut lat = Vec::new();
            while !closing.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            let mut k = 0;
            while !closed.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                std::fs::write(dir.join(format!("w{k}")), [k as u8; 4096]).expect("write beside the close");
                lat.push((t, t.elapsed().as_secs_f64() * 1e3));
                k += 1;
            }
            lat
        })
    };
    let src = std::fs::read(big).expect("read BIG");
    let mut f = std::fs::File::create(std::path::Path::new(mnt).join("big.bin")).expect("create");
    for chunk in src.chunks(1 << 20) {
        f.write_all(chunk).expect("write");
    }
    closing.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = Instant::now();
    drop(f);
    let close_s = t.elapsed().as_secs_f64();
    closed.store(true, std::sync::atomic::Ordering::SeqCst);
    let inside = |lat: Vec<(Instant, f64)>, what: &str| -> Vec<f64> {
        let inside: Vec<f64> =
            lat.iter().filter(|(at, _)| at.duration_since(t).as_secs_f64() <= close_s).map(|l| l.1).collect();
        if inside.is_empty() {
            eprintln!("hyperfs-bench: no {what} fell inside the close");
            std::process::exit(1);
        }
        inside
    };
    let during = inside(browser.join().expect("browser"), "listing or read");
    let written = inside(writer.join().expect("writer"), "write");
    println!(
        "{}",
        serde_json::json!({
            "quiet": percentiles(quiet.into_iter().map(|l| l.1).collect()),
            "closing": percentiles(during),
            "quietWrites": percentiles(quiet_writes),
            "writes": percentiles(written),
            "closeSeconds": close_s,
        })
    );
}

/// `n` files of SRC's bytes (each rotated differently, so no file dedups against another)
/// written into `dir` in 1 MiB writes and closed, one after another.
fn write_files(dir: &str, src: &str, n: usize) {
    use std::io::Write;
    let data = std::fs::read(src).expect("read SRC");
    std::fs::create_dir_all(dir).expect("mkdir");
    let t = Instant::now();
    for i in 0..n {
        let at = (i * 7919 * 4096 + 12345) % data.len();
        let mut f = std::fs::File::create(std::path::Path::new(dir).join(format!("w{i}.bin"))).expect("create");
        for part in [&data[at..], &data[..at]] {
            for chunk in part.chunks(1 << 20) {
                f.write_all(chunk).expect("write");
            }
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"files": n, "seconds": s, "mibps": (n * data.len()) as f64 / s / (1 << 20) as f64})
    );
}

/// A hostile peer: connects to `addr`, and for `seconds` sends on the channels of `keys` as fast
/// as the connection takes them: bitfields of 64 KiB, runs of ranges, requests for random
/// blocks and wants of everything — far past any budget. Dropped, it connects again.
fn flood(addr: &str, keys: &[String], seconds: u64) {
    use hyperfs_engine::crypto::CoreKey;
    use hyperfs_engine::hypercore::proof::{Request, RequestIndexed};
    use hyperfs_engine::store::{MemStore, Store};
    use hyperfs_net::wire::Message;
    use hyperfs_net::{Endpoint, Identity, Shared, SharedCore};
    use std::sync::Mutex;

    struct Core(Mutex<Hypercore>, CoreKey);
    impl SharedCore for Core {
        fn key(&self) -> CoreKey {
            self.1
        }
        fn read(&self, f: &mut dyn FnMut(&Hypercore)) {
            f(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }
        fn write(&self, f: &mut dyn FnMut(&mut Hypercore)) {
            f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }
    struct Cores(Vec<Arc<dyn SharedCore>>);
    impl Shared for Cores {
        fn cores(&self) -> Vec<Arc<dyn SharedCore>> {
            self.0.clone()
        }
    }
    let keys: Vec<CoreKey> = keys
        .iter()
        .map(|k| CoreKey(hex::decode(k).ok().and_then(|b| b.try_into().ok()).expect("a key as 64 hex digits")))
        .collect();
    // Each connection comes from a fresh identity and port, as an attacker that is dropped and
    // refused would make it: every one gets a new budget to overrun.
    let fresh = || {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let cores: Vec<Arc<dyn SharedCore>> = keys
            .iter()
            .map(|k| {
                let c = Hypercore::open_replica(store.clone(), *k, None).expect("replica");
                Arc::new(Core(Mutex::new(c), *k)) as Arc<dyn SharedCore>
            })
            .collect();
        Endpoint::start(
            &Identity::from_seed(&rand::random()),
            "127.0.0.1:0".parse().expect("address"),
            Arc::new(Cores(cores)),
        )
        .expect("endpoint")
    };
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR as HOST:PORT");
    let end = Instant::now() + std::time::Duration::from_secs(seconds);
    let (mut connects, mut batches, mut i) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        let endpoint = fresh();
        if endpoint.connect(addr).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        connects += 1;
        let opened = Instant::now();
        let mut flooded = false;
        while Instant::now() < end {
            i += 1;
            let mut batch = vec![Message::Bitfield { start: i * 1_000_000, bitfield: vec![0x5555_5555; 16 << 10] }];
            batch.extend((0..256).map(|r| Message::Range { drop: false, start: 2 * (i * 256 + r), length: 1 }));
            batch.extend((0..64).map(|r| Message::Request {
                id: r + 1,
                request: Request {
                    fork: 0,
                    // Real blocks of the file, each answered with its bytes: the serving node
                    // writes while this peer floods.
                    block: Some(RequestIndexed { index: (i * 64 + r) % 8192, nodes: 0 }),
                    ..Request::default()
                },
                priority: None,
            }));
            batch.extend((0..64).map(|_| Message::Want { start: 0, length: u64::MAX, any: false }));
            let mut sent = 0;
            for k in &keys {
                sent += endpoint.send_raw(k, &batch);
            }
            if sent == 0 {
                if flooded || opened.elapsed() > std::time::Duration::from_secs(2) {
                    break; // dropped (or the channels never opened): connect again
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            batches += 1;
            flooded = true;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        endpoint.shutdown();
    }
    println!("{}", serde_json::json!({"connects": connects, "batches": batches}));
}

/// The JS wire over TCP on loopback: a Noise handshake, then the listener sends `mib` MiB in
/// messages of 64 KiB, each sealed (secret-stream, or with `aes` the AES-256-GCM frames hyperfs
/// nodes switch to), and the dialer authenticates and opens every one (two threads, as two
/// nodes). What a clone over TCP cannot exceed.
fn tcp(mib: u64, aes: bool) {
    use hyperfs_net::noise::KeyPair as NoiseKeys;
    use hyperfs_net::secretstream::{take_frame, AesFrames, Opening, Stream};
    use std::io::{Read, Write};
    // Runs the handshake on `s`; what came after it stays in `buf`.
    fn open(s: &mut std::net::TcpStream, initiator: bool, seed: u8, buf: &mut Vec<u8>) -> Stream {
        let mut out = Vec::new();
        let mut opening = Opening::start(initiator, NoiseKeys::from_seed(&[seed; 32]), &mut out).expect("start");
        s.write_all(&out).expect("write");
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            while let Some((body, used)) = take_frame(buf) {
                let mut o = Vec::new();
                let frame = buf[body].to_vec();
                buf.drain(..used);
                let done = opening.on_frame(&frame, &mut o).expect("handshake");
                s.write_all(&o).expect("write");
                if let Some(stream) = done {
                    return stream;
                }
            }
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "closed in the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("address");
    let total = mib << 20;
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("a dialer");
        s.set_nodelay(true).expect("nodelay");
        let mut stream = open(&mut s, false, 1, &mut Vec::new());
        let mut sealer = aes.then(|| AesFrames::new(&stream.handshake.tx));
        let block = vec![7u8; 64 << 10];
        let mut out = Vec::with_capacity(1 << 20);
        let mut sent = 0;
        while sent < total {
            for _ in 0..16 {
                match &mut sealer {
                    Some(a) => a.seal(&mut out, |o| o.extend_from_slice(&block)),
                    None => stream.send(&mut out, &block),
                }
            }
            s.write_all(&out).expect("send");
            out.clear();
            sent += 16 * block.len() as u64;
        }
    });
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("dial");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::new();
    let mut stream = open(&mut s, true, 2, &mut buf);
    let mut opener = aes.then(|| AesFrames::new(&stream.handshake.rx));
    let mut got = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    while got < total {
        let mut at = 0;
        while let Some((body, used)) = take_frame(&buf[at..]) {
            let body = at + body.start..at + body.end;
            let opened = match &mut opener {
                Some(a) => a.open(&mut buf[body]),
                None => stream.open(&mut buf[body]),
            };
            got += opened.expect("authentic").len() as u64;
            at += used;
        }
        buf.drain(..at);
        if got >= total {
            break;
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    let seconds = t.elapsed().as_secs_f64();
    server.join().expect("the sender");
    assert_eq!(got, total);
    println!("{}", serde_json::json!({"seconds": seconds, "MiBps": mib as f64 / seconds}));
}

/// Raw QUIC on loopback with the node's own configuration (TLS, transport, congestion control):
/// one process dials another's endpoint (two runtimes of two workers, as two nodes), and the
/// listener sends `mib` MiB on the dialer's stream, as a seed answers a clone. What quinn alone
/// carries, the ceiling of a clone.
fn quic(mib: u64) {
    use hyperfs_net::identity::Identity;
    let runtime =
        || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let (serving, dialing) = (runtime(), runtime());
    let (server, _) = hyperfs_net::endpoint::quic_configs(&Identity::from_seed(&[1; 32])).expect("configs");
    let (_, client) = hyperfs_net::endpoint::quic_configs(&Identity::from_seed(&[2; 32])).expect("configs");
    let listener = {
        let _g = serving.enter();
        quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("address")).expect("listen")
    };
    let addr = listener.local_addr().expect("address");
    let total = mib << 20;
    serving.spawn(async move {
        let conn = listener.accept().await.expect("a dialer").await.expect("a connection");
        let (mut send, mut recv) = conn.accept_bi().await.expect("a stream");
        let mut one = [0u8; 1];
        recv.read_exact(&mut one).await.expect("the first byte");
        let block = vec![7u8; 64 << 10];
        let mut sent = 0;
        while sent < total {
            send.write_all(&block).await.expect("send");
            sent += block.len() as u64;
        }
        send.finish().expect("finish");
        conn.closed().await;
    });
    let seconds = dialing.block_on(async move {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("bind");
        let t = Instant::now();
        let conn = ep.connect_with(client, addr, "hyperfs").expect("dial").await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        send.write_all(&[1]).await.expect("the first byte");
        let mut got = 0u64;
        while let Some(c) = recv.read_chunk(1 << 20, true).await.expect("read") {
            got += c.bytes.len() as u64;
        }
        assert_eq!(got, total);
        let seconds = t.elapsed().as_secs_f64();
        conn.close(0u32.into(), b"done");
        seconds
    });
    println!("{}", serde_json::json!({"seconds": seconds, "MiBps": mib as f64 / seconds}));
}

/// Two members of a multi-writer drive in one RocksDB store: B makes `n` changes offline (1 KiB
/// files on `n / 2` paths, so half overwrite), A 100 of its own; then A takes B's drive in and
/// merges. The merge reads every member's log from its start: the figure is a whole merge.
fn merge(dir: &str, n: usize) {
    use hyperfs_engine::drive::merge::Writer;
    use hyperfs_engine::drive::multi::MultiDrive;
    use hyperfs_engine::drive::{Drive, PutOptions};
    let store: Arc<dyn hyperfs_engine::store::Store> =
        Arc::new(RocksStore::open(std::path::Path::new(dir)).expect("store"));
    let a = Drive::create(store.clone(), KeyPair::from_seed(&[1; 32])).expect("drive");
    let b = Drive::create(store.clone(), KeyPair::from_seed(&[2; 32])).expect("drive");
    let founder = Writer(a.key().0);
    let (a_copy, b_copy) = (a.frozen_copy(), b.frozen_copy());
    let mut ma = MultiDrive::new(founder, a, vec![b_copy]);
    let mut mb = MultiDrive::new(founder, b, vec![a_copy]);
    ma.add_member(mb.writer(), "b").expect("add");
    mb.others_mut()[0] = ma.own().frozen_copy();
    let opts = |t: u64| PutOptions { executable: false, metadata: Some(serde_json::json!({ "mtime": t })) };
    let data = vec![7u8; 1024];
    let started = Instant::now();
    for i in 0..n {
        mb.put(&format!("/offline/{}.txt", i % (n / 2).max(1)), &data, &opts(i as u64)).expect("put");
    }
    let write_secs = started.elapsed().as_secs_f64();
    for i in 0..100 {
        ma.put(&format!("/online/{i}.txt"), &data, &opts(i)).expect("put");
    }
    ma.others_mut()[0] = mb.own().frozen_copy();
    let started = Instant::now();
    let tree = ma.tree().expect("tree");
    let merge_secs = started.elapsed().as_secs_f64();
    assert_eq!(tree.len(), (n / 2).max(1) + 100, "every path merged");
    let json = serde_json::json!({
        "changes": n,
        "mergeSeconds": merge_secs,
        "changesPerSecond": n as f64 / merge_secs,
        "offlineWriteSeconds": write_secs,
    });
    println!("{json}");
}
