//! Versions travel along chains of replicas: a writer, seeds that clone it (or clone a seed),
//! and a reader that knows only the last seed. Each replica passes on every verified new
//! length to its own peers, so the reader's mount and `cat` show the writer's new file within
//! about a second of the seed next to it having it; a seed that restarts picks the chain up
//! again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperfs_tests::{hyperfs_in, hyperfs_in_ok, hyperfs_json, StopNode};

fn address(node: &Path) -> String {
    std::fs::read_to_string(node.join("listen.addr")).expect("the node's address").trim().to_owned()
}

fn version(node: &Path, drive: &str) -> u64 {
    hyperfs_json(node, &["info", drive, "--json"])["version"].as_u64().expect("version")
}

/// Waits until `done` holds, polling every 20 ms; how long it took.
fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A writer and a chain of `seeds` replicas, each cloning the one before it only; a reader
/// mounted from the last seed only.
struct Chain {
    root: PathBuf,
    writer: PathBuf,
    seeds: Vec<PathBuf>,
    reader: PathBuf,
    link: String,
    mnt: PathBuf,
    _stops: Vec<StopNode>,
}

impl Chain {
    fn new(root: &Path, seeds: usize) -> Chain {
        let writer = root.join("writer");
        let mut stops = vec![StopNode(writer.clone())];
        hyperfs_in_ok(&writer, &["create", "--name", "src"]);
        let shared = hyperfs_json(
            &writer,
            &["share", "src", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"],
        );
        let link = shared["link"].as_str().expect("link").to_owned();
        let mut chain = Chain {
            root: root.to_owned(),
            writer: writer.clone(),
            seeds: Vec::new(),
            reader: root.join("reader"),
            link: link.clone(),
            mnt: root.join("mnt"),
            _stops: Vec::new(),
        };
        chain.put("first.txt", "first");
        let mut previous = writer;
        for i in 0..seeds {
            let seed = root.join(format!("seed{i}"));
            stops.push(StopNode(seed.clone()));
            let from = address(&previous);
            hyperfs_in_ok(&seed, &hyperfs_tests::loopback_only(&["clone", &link, "--peer", &from, "--name", "copy"]));
            previous = seed.clone();
            chain.seeds.push(seed);
        }
        stops.push(StopNode(chain.reader.clone()));
        std::fs::create_dir(&chain.mnt).expect("mkdir");
        let from = address(&previous);
        let mnt = chain.mnt.to_str().expect("utf-8").to_owned();
        hyperfs_in_ok(&chain.reader, &hyperfs_tests::loopback_only(&["mount", &link, &mnt, "--peer", &from]));
        assert_eq!(std::fs::read_to_string(chain.mnt.join("first.txt")).expect("read"), "first");
        chain._stops = stops;
        chain
    }

    fn put(&self, name: &str, text: &str) {
        let file = self.root.join(name);
        std::fs::write(&file, text).expect("write");
        hyperfs_in_ok(&self.writer, &["put", file.to_str().expect("utf-8"), &format!("src:/{name}")]);
    }

    /// The writer puts `name`; every seed gets it; the reader's mount and `cat` show it, each
    /// within `limit` of the last seed having it. The time from that seed to the reader.
    fn new_file_reaches_the_reader(&self, name: &str, limit: Duration) -> Duration {
        self.put(name, name);
        let target = version(&self.writer, "src");
        for seed in &self.seeds {
            until(Duration::from_secs(15), &format!("{} follows", seed.display()), || version(seed, "copy") >= target);
        }
        let path = self.mnt.join(name);
        let took = until(limit, "the reader's mount shows the new file", || {
            std::fs::read_to_string(&path).is_ok_and(|t| t == name)
        });
        assert_eq!(hyperfs_in_ok(&self.reader, &["cat", &format!("{}/{name}", self.link)]), name);
        took
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = hyperfs_in(&self.reader, &["unmount", self.mnt.to_str().expect("utf-8")]);
    }
}

#[test]
fn a_reader_behind_one_seed_sees_new_versions_within_a_second() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chain = Chain::new(tmp.path(), 1);
    for i in 0..3 {
        let took = chain.new_file_reaches_the_reader(&format!("new{i}.txt"), Duration::from_millis(1500));
        eprintln!("seed to reader: {took:?}");
    }
}

#[test]
fn versions_travel_along_a_chain_of_three_replicas() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chain = Chain::new(tmp.path(), 2);
    let took = chain.new_file_reaches_the_reader("new.txt", Duration::from_millis(1500));
    eprintln!("last seed to reader: {took:?}");
}

/// A seed stops and starts again between versions: the chain picks up where it was.
#[test]
fn a_seed_that_restarts_passes_versions_on_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chain = Chain::new(tmp.path(), 1);
    chain.new_file_reaches_the_reader("before.txt", Duration::from_millis(1500));
    let seed = &chain.seeds[0];
    hyperfs_in_ok(seed, &["stop"]);
    chain.put("while-down.txt", "while-down.txt");
    hyperfs_in_ok(seed, &["drives"]);
    chain.new_file_reaches_the_reader("after.txt", Duration::from_secs(15));
    assert_eq!(std::fs::read_to_string(chain.mnt.join("while-down.txt")).expect("read"), "while-down.txt");
}
