//! Kill a writer with SIGKILL at random moments; the store must reopen to the last committed
//! state with every block and signature intact.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::Hypercore;
use hyperfs_tests::crash_block;
use rand::Rng;

#[test]
fn sigkill_at_random_moments_never_loses_a_commit_or_corrupts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::thread_rng();
    let kills = std::env::var("HYPERFS_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_append-loop"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let run_for = Duration::from_millis(rng.gen_range(30..400));
        let start = Instant::now();
        let mut lines = Vec::new();
        while start.elapsed() < run_for {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(5)) {
                lines.push(l);
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // Every line the writer printed before it died: the reader ends at the pipe's end.
        lines.extend(rx.iter());

        let mut committed: Option<u64> = None;
        let mut attempted: Option<u64> = None;
        for l in &lines {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next().and_then(|n| n.parse().ok())) {
                (Some("begin"), Some(n)) => attempted = Some(n),
                (Some("done"), Some(n)) => {
                    committed = Some(n);
                    attempted = None;
                }
                _ => {}
            }
        }

        let store = Arc::new(RocksStore::open(dir.path()).expect("reopen after SIGKILL"));
        let core = Hypercore::create(store, KeyPair::from_seed(&[42; 32]), false).expect("core");
        let len = core.length();
        if let Some(c) = committed {
            assert!(
                len == c || Some(len) == attempted,
                "round {round}: reopened at length {len}, last committed {c}, in flight {attempted:?}"
            );
        }
        let bad = core.verify_local().expect("head signature and tree verify");
        assert!(bad.is_empty(), "round {round}: bad blocks {bad:?}");
        for i in 0..len {
            assert_eq!(core.get(i).expect("block"), crash_block(i), "round {round}: block {i}");
        }
    }
}

#[test]
fn a_store_held_by_another_process_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_append-loop"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Wait until the writer has the store open and has committed once.
    let first = lines.next().expect("writer output").expect("line");
    assert!(first.starts_with("begin"), "{first}");
    let err = RocksStore::open(dir.path()).expect_err("a second opener must be refused");
    child.kill().expect("kill");
    child.wait().expect("reap");
    let msg = err.to_string();
    assert!(msg.contains("in use by another process"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // Once the holder is gone the store opens and verifies.
    let store = Arc::new(RocksStore::open(dir.path()).expect("reopen"));
    let core = Hypercore::create(store, KeyPair::from_seed(&[42; 32]), false).expect("core");
    assert!(core.verify_local().expect("verifies").is_empty());
}

/// The reproduction: a node SIGKILLed after a large `put` that was never synced, whose
/// block log then loses its tail (what a power cut does to unsynced pages; RocksDB's log kept
/// the index). The node refused to start. Now it starts, says in its log what it rolled back,
/// the drive is at its last whole version (at least the synced one), verifies, and takes writes.
#[test]
fn a_node_whose_block_log_lost_its_tail_starts_and_rolls_back() {
    use hyperfs_tests::{hyperfs_in, hyperfs_in_ok, pseudo_random};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "synced before the cut").expect("write");
    hyperfs_in_ok(&dir, &["create", "--name", "d"]);
    hyperfs_in_ok(&dir, &["put", small.to_str().expect("utf-8"), "d:/small.txt"]);
    hyperfs_in_ok(&dir, &["sync"]);
    let info = |what: &str| -> serde_json::Value {
        serde_json::from_str(&hyperfs_in_ok(&dir, &["info", what, "--json"])).expect("json")
    };
    let synced = info("d")["version"].as_u64().expect("version");
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, pseudo_random(16 << 20, 3)).expect("write");
    hyperfs_in_ok(&dir, &["put", big.to_str().expect("utf-8"), "d:/big.bin"]);
    let pid: i32 = std::fs::read_to_string(dir.join("node.pid")).expect("pid").trim().parse().expect("a pid");
    // SAFETY: kill(2) on the node this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    hyperfs_tests::wait_for_exit(pid, Duration::from_secs(20)).expect("the node dies");
    let log = dir.join("store").join("blocks.log");
    let len = std::fs::metadata(&log).expect("log").len();
    std::fs::OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(len - (4 << 20))).expect("cut");

    let after = info("d");
    let version = after["version"].as_u64().expect("version");
    assert!(version >= synced, "the synced version survives: {after}");
    assert_eq!(hyperfs_in_ok(&dir, &["cat", "d:/small.txt"]), "synced before the cut");
    assert!(!hyperfs_in(&dir, &["cat", "d:/big.bin"]).status.success(), "the cut file is gone whole");
    assert!(hyperfs_in_ok(&dir, &["verify", "d"]).contains("verifies"));
    let node_log = std::fs::read_to_string(dir.join("node.log")).expect("node.log");
    assert!(node_log.contains("rolled back"), "the log says what was rolled back: {node_log}");
    hyperfs_in_ok(&dir, &["put", big.to_str().expect("utf-8"), "d:/big.bin"]);
    assert_eq!(hyperfs_in(&dir, &["cat", "d:/big.bin"]).stdout.len(), 16 << 20);
    hyperfs_in_ok(&dir, &["stop"]);
}

/// Garbage collection killed at random moments (it runs without pause beside appends and
/// truncations of three cores sharing blocks): the store reopens, and every block each core
/// holds is there and verifies. `HYPERFS_GC_KILLS` sets the count (default 100).
#[test]
fn sigkill_during_garbage_collection_loses_no_block_a_core_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::thread_rng();
    let kills = std::env::var("HYPERFS_GC_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let mut rounds_seen = 0usize;
    for kill in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gc-loop"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the collector");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Killed after some changes, at a random moment of the collection running beside them.
        let changes = rng.gen_range(5..60);
        for _ in 0..changes {
            match lines.next() {
                Some(Ok(_)) => rounds_seen += 1,
                other => panic!("kill {kill}: the victim stopped on its own: {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..20_000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let store = Arc::new(RocksStore::open(dir.path()).expect("reopen after SIGKILL"));
        let store: Arc<dyn hyperfs_engine::store::Store> = store;
        hyperfs_engine::recover::recover(&store).expect("recover");
        for seed in [51u8, 52, 53] {
            let core = Hypercore::create(store.clone(), KeyPair::from_seed(&[seed; 32]), false).expect("core");
            let bad = core.verify_local().expect("head and tree verify");
            assert!(bad.is_empty(), "kill {kill}: core {seed} lost blocks {bad:?}");
            for i in 0..core.length() {
                core.get(i).unwrap_or_else(|e| panic!("kill {kill}: core {seed} block {i}: {e}"));
            }
        }
    }
    assert!(rounds_seen > kills, "the victim made changes between kills");
}
