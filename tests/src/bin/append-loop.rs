//! The crash test's victim: appends deterministic blocks to a core in a RocksDB store forever,
//! truncating now and then, and reports on stdout "begin N" before and "done N FORK" after each
//! commit. The test kills it with SIGKILL at random moments.

use std::io::Write;
use std::sync::Arc;

use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::Hypercore;
use hyperfs_tests::crash_block;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: append-loop DIR");
    let store = Arc::new(RocksStore::open(std::path::Path::new(&dir)).expect("open store"));
    let mut core = Hypercore::create(store, KeyPair::from_seed(&[42; 32]), false).expect("open core");
    let mut out = std::io::stdout();
    let mut step = 0u64;
    loop {
        step += 1;
        let len = core.length();
        if step.is_multiple_of(11) && len > 3 {
            let target = len - 3;
            writeln!(out, "begin {target}").and_then(|_| out.flush()).expect("stdout");
            core.truncate(target).expect("truncate");
        } else {
            let n = 1 + step % 5;
            let blocks: Vec<Vec<u8>> = (len..len + n).map(crash_block).collect();
            writeln!(out, "begin {}", len + n).and_then(|_| out.flush()).expect("stdout");
            core.append_batch(&blocks).expect("append");
        }
        writeln!(out, "done {} {}", core.length(), core.fork()).and_then(|_| out.flush()).expect("stdout");
    }
}
