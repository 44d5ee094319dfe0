//! The garbage-collection crash test's victim: three cores in a RocksDB store take appends of
//! blocks whose contents repeat across cores and rounds (so blocks are shared and reused),
//! and truncations (so blocks become garbage), while a second thread collects garbage without
//! pause. Prints "round N" after each change. The test kills it with SIGKILL at random moments
//! and checks that every block a core holds is still there and verifies.

use std::io::Write;
use std::sync::Arc;

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::store::{RocksStore, Store};
use hyperfs_engine::Hypercore;
use hyperfs_tests::crash_block;

/// The seeds of the victim's cores.
pub const SEEDS: [u8; 3] = [51, 52, 53];

fn main() {
    let dir = std::env::args().nth(1).expect("usage: gc-loop DIR");
    let rocks = Arc::new(RocksStore::open(std::path::Path::new(&dir)).expect("open store"));
    let store: Arc<dyn Store> = rocks.clone();
    hyperfs_engine::recover::recover(&store).expect("recover");
    let mut cores: Vec<Hypercore> = SEEDS
        .iter()
        .map(|s| Hypercore::create(store.clone(), KeyPair::from_seed(&[*s; 32]), false).expect("core"))
        .collect();
    let collector = store.clone();
    std::thread::spawn(move || loop {
        hyperfs_engine::gc::collect(&*collector).expect("gc");
    });
    let mut out = std::io::stdout();
    let mut step = 0u64;
    loop {
        step += 1;
        let core = &mut cores[(step % 3) as usize];
        let len = core.length();
        if step.is_multiple_of(4) && len > 4 {
            core.truncate(len / 2).expect("truncate");
        } else {
            // Contents from a small set: the same bytes land in several cores and come back
            // after a truncation made them garbage.
            let blocks: Vec<Vec<u8>> = (0..1 + step % 6).map(|k| crash_block((step * 7 + k) % 50)).collect();
            core.append_batch(&blocks).expect("append");
        }
        writeln!(out, "round {step}").and_then(|_| out.flush()).expect("stdout");
    }
}
