use std::sync::Arc;

use super::*;
use crate::store::MemStore;
use crate::Error;

fn drive(seed: u8) -> Drive {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    Drive::create(store, keys::drive_key_pair(&[seed; 32], None)).expect("create drive")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Reference §8.6, written by JS Hyperdrive 13 on Corestore primary key 0x03×32.
#[test]
fn small_drive_matches_the_js_vector() {
    let mut d = drive(3);
    assert_eq!(hex::encode(d.key()), "c68c0d53be32c1b0960212809902fbd5668e8b16ab23fa5931be1dc470fae907");
    assert_eq!(hex::encode(d.blobs().key()), "798656ae8fa377647ee6e17ee1a2a98c57fbd8a248747ca34fc2f288e8a3e5c0");
    d.put("/hello.txt", b"hi there", &PutOptions::default()).expect("put");
    let opts = PutOptions { executable: true, metadata: Some(serde_json::json!({"m": 1})) };
    d.put("dir/a.txt", b"A", &opts).expect("put");
    d.symlink("/link", "/hello.txt", None).expect("symlink");
    assert!(d.del("/link").expect("del"));
    let core = d.db().core();
    assert_eq!(hex::encode(core.get(0).expect("header")), "0a0868797065726265651200");
    let value = |seq| crate::hyperbee::NodeBlock::decode(&core.get(seq).expect("block")).expect("node");
    assert_eq!(value(1).key, b"files\0/hello.txt");
    assert_eq!(
        String::from_utf8(value(1).value.expect("put")).expect("utf-8"),
        r#"{"executable":false,"linkname":null,"blob":{"blockOffset":0,"byteOffset":0,"blockLength":1,"byteLength":8},"metadata":null}"#
    );
    assert_eq!(
        String::from_utf8(value(2).value.expect("put")).expect("utf-8"),
        r#"{"executable":true,"linkname":null,"blob":{"blockOffset":1,"byteOffset":8,"blockLength":1,"byteLength":1},"metadata":{"m":1}}"#
    );
    assert_eq!(value(2).levels[0].keys, [2, 1]);
    assert_eq!(
        String::from_utf8(value(3).value.expect("put")).expect("utf-8"),
        r#"{"executable":false,"linkname":"/hello.txt","blob":null,"metadata":null}"#
    );
    assert_eq!(value(4).value, None);
    assert_eq!(d.blobs().get(0).expect("blob"), b"hi there");
    assert_eq!(d.get("/hello.txt").expect("get"), Some(b"hi there".to_vec()));
    assert_eq!(d.readdir("/").expect("readdir"), ["dir", "hello.txt"]);
    let listed: Vec<_> = d.list("/").expect("list").into_iter().map(|(p, _)| p).collect();
    assert_eq!(listed, ["/dir/a.txt", "/hello.txt"]);
    assert!(!d.exists("/link").expect("exists"));
}

#[test]
fn identical_files_and_new_versions_store_only_new_chunks() {
    let mut d = drive(5);
    let v1 = random(6 << 20, 1);
    d.put("/big.bin", &v1, &PutOptions::default()).expect("put");
    let after_first = d.blobs().byte_length();
    assert!(after_first >= v1.len() as u64);
    assert!(!d.entry("/big.bin").expect("entry").expect("exists").1.blob.expect("blob").block_map);

    // The same bytes under a second path: only a block map is appended.
    d.put("/copy.bin", &v1, &PutOptions::default()).expect("put");
    let map_bytes = d.blobs().byte_length() - after_first;
    assert!(map_bytes < 4096, "a copy cost {map_bytes} bytes");
    assert_eq!(d.get("/copy.bin").expect("get").expect("file"), v1);

    // One byte inserted at the front: a chunk or two change.
    let mut v2 = vec![b'x'];
    v2.extend_from_slice(&v1);
    let before = d.blobs().byte_length();
    d.put("/big.bin", &v2, &PutOptions::default()).expect("put");
    let grew = d.blobs().byte_length() - before;
    assert!(grew < (v2.len() / 100) as u64 + 600 * 1024, "the new version cost {grew} bytes");
    assert_eq!(d.get("/big.bin").expect("get").expect("file"), v2);
    assert_eq!(d.stat("/big.bin").expect("stat").expect("exists").size, v2.len() as u64);

    // Random access reads only what they ask for, in plain and mapped files alike.
    for (path, data) in [("/copy.bin", &v1), ("/big.bin", &v2)] {
        for (off, len) in [(0u64, 10u64), (65_000, 200_000), (data.len() as u64 - 5, 100), (3 << 20, 1)] {
            let end = (off + len).min(data.len() as u64) as usize;
            assert_eq!(d.read(path, off, len).expect("read"), data[off as usize..end], "{path} {off}+{len}");
        }
    }
}

#[test]
fn reads_from_rocksdb_equal_what_was_written_for_raw_and_compressed_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(crate::store::RocksStore::open(dir.path()).expect("open"));
    let mut d = Drive::create(store, keys::drive_key_pair(&[9; 32], None)).expect("create drive");
    // Random bytes are stored raw and read straight into the result; text is stored compressed.
    let noise = random(3 << 20, 4);
    let text: Vec<u8> = (0..200_000u32).flat_map(|i| format!("line {i} of a log file\n").into_bytes()).collect();
    let mut mixed = text.clone();
    mixed.extend_from_slice(&noise);
    for (path, data) in [("/noise.bin", &noise), ("/text.log", &text), ("/mixed", &mixed)] {
        d.put(path, data, &PutOptions::default()).expect("put");
        assert_eq!(&d.get(path).expect("get").expect("file"), data, "{path}");
        let n = data.len() as u64;
        for (off, len) in [(0u64, 1u64), (1, 70_000), (n / 2, 300_000), (n - 1, 10), (12_345, n)] {
            let end = (off + len).min(n) as usize;
            assert_eq!(d.read(path, off, len).expect("read"), data[off as usize..end], "{path} {off}+{len}");
        }
    }
    // A large file goes through the write pipeline, where chunks are compressed beside the
    // hashing: its text is stored compressed too, and reads back whole and in ranges.
    let log_len = || std::fs::metadata(dir.path().join("blocks.log")).expect("log").len();
    let before = log_len();
    let mut big: Vec<u8> = (0..1_500_000u32).flat_map(|i| format!("entry {i}: all is well\n").into_bytes()).collect();
    big.extend_from_slice(&random(5 << 20, 5));
    big.extend((0..500_000u32).flat_map(|i| format!("entry {i}: still well\n").into_bytes()));
    assert!(big.len() > 3 * APPEND_BATCH_BYTES, "several windows");
    d.put("/big.log", &big, &PutOptions::default()).expect("put");
    let text_bytes = (big.len() - (5 << 20)) as u64;
    assert!(log_len() - before < (5 << 20) + text_bytes / 2, "the text of a large file is stored compressed");
    assert!(d.get("/big.log").expect("get").expect("file") == big, "the large file reads back whole");
    let n = big.len() as u64;
    for (off, len) in [(0u64, 100u64), (n / 3, 3 << 20), (n - 5, 100)] {
        let end = (off + len).min(n) as usize;
        assert!(d.read("/big.log", off, len).expect("read") == big[off as usize..end], "/big.log {off}+{len}");
    }
}

#[test]
fn page_reads_anywhere_in_raw_and_compressed_chunks_match_and_a_cut_log_is_reported_page_by_page() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(crate::store::RocksStore::open(dir.path()).expect("open"));
    let mut d = Drive::create(store, keys::drive_key_pair(&[10; 32], None)).expect("create drive");
    let text: Vec<u8> = (0..100_000u32).flat_map(|i| format!("row {i} of a table\n").into_bytes()).collect();
    let noise = random(2 << 20, 6);
    let log_path = dir.path().join("blocks.log");
    let log_len = || std::fs::metadata(&log_path).expect("log").len();
    d.put("/text.csv", &text, &PutOptions::default()).expect("put");
    let noise_from = log_len();
    d.put("/noise.bin", &noise, &PutOptions::default()).expect("put");
    // Reads the size of a page, and a few longer, anywhere: inside one chunk, across chunk
    // boundaries, in raw chunks (read in place) and compressed ones (decoded whole).
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (path, data) in [("/text.csv", &text), ("/noise.bin", &noise)] {
        let n = data.len() as u64;
        for _ in 0..300 {
            let len = if rng.gen_bool(0.9) { 4096 } else { rng.gen_range(1..200_000) };
            let off = rng.gen_range(0..n);
            let end = (off + len).min(n) as usize;
            assert!(d.read(path, off, len).expect("read") == data[off as usize..end], "{path} {off}+{len}");
        }
    }
    // The block log is cut in the middle of the noise's chunks (staged on every core, so in no
    // set order): each page of the file either reads as written or reports the damaged store,
    // and both happen; the text before the cut reads whole.
    let log = std::fs::OpenOptions::new().write(true).open(&log_path).expect("open log");
    log.set_len(noise_from + (log_len() - noise_from) / 2).expect("cut");
    let (mut intact, mut damaged) = (0, 0);
    for off in (0..noise.len()).step_by(4096) {
        match d.read("/noise.bin", off as u64, 4096) {
            Ok(bytes) => {
                assert!(bytes == noise[off..(off + 4096).min(noise.len())], "page at {off}");
                intact += 1;
            }
            Err(Error::Damaged { reason, .. }) => {
                assert!(reason.contains("blocks.log"), "{reason}");
                damaged += 1;
            }
            Err(e) => panic!("page at {off}: {e}"),
        }
    }
    assert!(intact > 100 && damaged > 100, "{intact} pages read, {damaged} reported damaged");
    assert!(d.get("/text.csv").expect("get").expect("file") == text);
}

#[test]
fn a_large_file_whose_reader_fails_midway_is_not_stored_and_the_drive_goes_on() {
    /// Gives `ok` bytes of noise, then an I/O error.
    struct Failing {
        data: Vec<u8>,
        at: usize,
    }
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.data.len() {
                return Err(std::io::Error::other("the disk went away"));
            }
            let n = buf.len().min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    let mut d = drive(11);
    let version = d.version();
    // Several append batches' worth, so the failure lands while earlier batches are appended.
    let err = d
        .put_reader(
            "/big.bin",
            Failing { data: random(3 * APPEND_BATCH_BYTES + 12_345, 8), at: 0 },
            &PutOptions::default(),
        )
        .expect_err("the read error is reported");
    assert!(err.to_string().contains("the disk went away"), "{err}");
    assert!(d.entry("/big.bin").expect("entry").is_none());
    assert_eq!(d.version(), version, "no version names the half-read file");
    let data = random(20 << 20, 9);
    d.put("/big.bin", &data, &PutOptions::default()).expect("a later put works");
    assert_eq!(d.get("/big.bin").expect("get").expect("file"), data);
}

#[test]
fn folders_list_their_names_once_beside_neighbours_that_sort_around_the_slash() {
    let mut d = drive(12);
    // '!' sorts before '/', '0' and '.' around it: the sub-folder "x" sits among its neighbours.
    for p in ["/d/x", "/d/x!", "/d/x/in/deep", "/d/x/y", "/d/x.txt", "/d/x0", "/d/a", "/d/z/1", "/d/z/2", "/e"] {
        d.put(p, p.as_bytes(), &PutOptions::default()).expect("put");
    }
    d.mkdir("/d/empty", None).expect("mkdir");
    assert_eq!(d.readdir("/d").expect("readdir"), ["a", "empty", "x", "x!", "x.txt", "x0", "z"]);
    assert_eq!(d.readdir("/d/x").expect("readdir"), ["in", "y"]);
    assert_eq!(d.readdir("/").expect("readdir"), ["d", "e"]);
    let files: Vec<_> =
        d.view().children("/d").expect("children").into_iter().map(|c| (c.name, c.entry.is_some())).collect();
    let expected =
        [("a", true), ("empty", false), ("x", true), ("x!", true), ("x.txt", true), ("x0", true), ("z", false)];
    assert_eq!(files, expected.map(|(n, f)| (n.to_owned(), f)));
}

#[test]
fn a_file_repeating_a_chunk_stores_it_once() {
    let mut d = drive(6);
    let part = random(300 * 1024, 7);
    let data = [part.clone(), part.clone(), part].concat();
    d.put("/rep.bin", &data, &PutOptions::default()).expect("put");
    assert!(d.blobs().byte_length() < 700 * 1024, "stored {}", d.blobs().byte_length());
    assert_eq!(d.get("/rep.bin").expect("get").expect("file"), data);
}

#[test]
fn empty_files_symlinks_and_bad_paths() {
    let mut d = drive(7);
    d.put("/empty", b"", &PutOptions::default()).expect("put");
    assert_eq!(d.get("/empty").expect("get"), Some(Vec::new()));
    assert_eq!(d.stat("/empty").expect("stat").expect("exists").size, 0);
    d.symlink("/l", "../x", None).expect("symlink");
    assert_eq!(d.entry("/l").expect("entry").expect("exists").1.linkname.as_deref(), Some("../x"));
    assert!(d.put("/", b"x", &PutOptions::default()).is_err());
    assert!(d.put("/../x", b"x", &PutOptions::default()).is_err());
    assert!(d.get("/nope").expect("get").is_none());
    assert!(!d.del("/nope").expect("del"));
}

#[test]
fn a_drive_reopens_from_its_store() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let kp = keys::drive_key_pair(&[8; 32], Some("photos"));
    let key = {
        let mut d = Drive::create(store.clone(), kp).expect("create");
        d.put("/a/b.txt", b"hello", &PutOptions::default()).expect("put");
        *d.key()
    };
    let mut d = Drive::open(store.clone(), &key).expect("open").expect("exists");
    assert!(d.writable());
    assert_eq!(d.get("/a/b.txt").expect("get"), Some(b"hello".to_vec()));
    // Dedup hints survive the reopen.
    let before = d.blobs().byte_length();
    d.put("/c.txt", b"hello", &PutOptions::default()).expect("put");
    assert!(d.blobs().byte_length() - before < 16);
    assert!(Drive::open(store, &crate::crypto::CoreKey([9; 32])).expect("open").is_none());
}

mod model {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    pub enum Op {
        Put(usize, usize, u8),
        Del(usize),
        Rename(usize, usize),
        Mkdir(usize),
        Truncate(usize),
    }

    const PATHS: [&str; 8] = ["/a", "/b", "/d/x", "/d/y", "/d/e/z", "/e", "/ü/名", "/d/e"];

    fn content(base: usize, edit: u8) -> Vec<u8> {
        // Few bases, so files share chunks; an edit changes one byte somewhere.
        let mut data = super::random([1000, 90_000, 200_000][base % 3], base as u64 + 1);
        if edit > 0 && !data.is_empty() {
            let i = (edit as usize * 7919) % data.len();
            data[i] ^= edit;
        }
        data
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..PATHS.len(), 0..3usize, 0..3u8).prop_map(|(p, b, e)| Op::Put(p, b, e)),
            2 => (0..PATHS.len()).prop_map(Op::Del),
            2 => (0..PATHS.len(), 0..PATHS.len()).prop_map(|(a, b)| Op::Rename(a, b)),
            1 => (0..PATHS.len()).prop_map(Op::Mkdir),
            1 => any::<usize>().prop_map(Op::Truncate),
        ]
    }

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Tree {
        files: BTreeMap<String, Vec<u8>>,
        dirs: BTreeSet<String>,
    }

    fn check(view: &DriveView<'_, impl Blocks>, t: &Tree) -> Result<(), TestCaseError> {
        let listed: Vec<_> = view.list("/").expect("list").into_iter().map(|(p, _)| p).collect();
        prop_assert_eq!(&listed, &t.files.keys().cloned().collect::<Vec<_>>());
        for (p, data) in &t.files {
            let got = view.get(p).expect("get");
            prop_assert_eq!(got.as_ref(), Some(data), "{}", p);
        }
        let mut top: BTreeSet<String> =
            t.files.keys().chain(&t.dirs).map(|p| p[1..].split('/').next().unwrap_or("").to_owned()).collect();
        top.remove("");
        let mut names = view.readdir("/").expect("readdir");
        names.sort();
        prop_assert_eq!(names, top.into_iter().collect::<Vec<_>>());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Random operations against a model tree; every past version reads as the model did.
        #[test]
        fn drive_agrees_with_a_model_tree(ops in prop::collection::vec(op(), 1..30)) {
            let mut d = drive(40);
            let mut t = Tree::default();
            let mut versions: Vec<(u64, Tree)> = vec![(d.version(), t.clone())];
            for op in ops {
                match op {
                    Op::Put(p, b, e) => {
                        let path = PATHS[p];
                        // A file cannot also be a folder of other files in the model.
                        if t.files.keys().any(|f| f.starts_with(&format!("{path}/"))) || t.files.keys().any(|f| path.starts_with(&format!("{f}/"))) {
                            continue;
                        }
                        let data = content(b, e);
                        d.put(path, &data, &PutOptions::default()).expect("put");
                        t.files.insert(path.to_owned(), data);
                    }
                    Op::Del(p) => {
                        prop_assert_eq!(d.del(PATHS[p]).expect("del"), t.files.remove(PATHS[p]).is_some());
                    }
                    Op::Rename(a, b) => {
                        let (from, to) = (PATHS[a], PATHS[b]);
                        // Files only, onto a free path or another file.
                        if from == to || !t.files.contains_key(from) || t.files.keys().any(|f| f.starts_with(&format!("{to}/")) || to.starts_with(&format!("{f}/"))) {
                            continue;
                        }
                        d.rename(from, to).expect("rename");
                        let data = t.files.remove(from).expect("present");
                        t.files.insert(to.to_owned(), data);
                    }
                    Op::Mkdir(p) => {
                        d.mkdir(PATHS[p], None).expect("mkdir");
                        t.dirs.insert(PATHS[p].to_owned());
                    }
                    Op::Truncate(i) => {
                        let (v, old) = versions[i % versions.len()].clone();
                        d.truncate(v).expect("truncate");
                        versions.retain(|(w, _)| *w <= v);
                        t = old;
                    }
                }
                let v = d.version();
                versions.retain(|(w, _)| *w < v);
                versions.push((v, t.clone()));
            }
            check(&d.view(), &t)?;
            for (v, tree) in &versions {
                check(&d.checkout(*v).expect("checkout"), tree)?;
            }
            prop_assert!(d.blobs().verify_local().expect("verify").is_empty());
        }
    }
}

#[test]
fn rename_moves_directories_in_one_version_and_history_and_diff_follow() {
    let mut d = drive(41);
    d.put("/dir/a", b"1", &PutOptions::default()).expect("put");
    d.put("/dir/sub/b", b"2", &PutOptions::default()).expect("put");
    d.mkdir("/dir/empty", None).expect("mkdir");
    let v1 = d.version();
    d.rename("/dir", "/moved").expect("rename");
    let v2 = d.version();
    assert_eq!(d.readdir("/").expect("readdir"), ["moved"]);
    assert_eq!(d.readdir("/moved").expect("readdir"), ["a", "empty", "sub"]);
    assert_eq!(d.get("/moved/sub/b").expect("get"), Some(b"2".to_vec()));
    assert!(d.is_dir("/moved/empty").expect("is_dir") && !d.is_dir("/dir").expect("is_dir"));
    assert!(d.rename("/moved", "/moved/inside").is_err());
    assert!(d.rename("/nothing", "/x").is_err());

    let diff = d.diff(v1, v2).expect("diff");
    let kinds: Vec<_> = diff.iter().map(|x| (x.path.as_str(), x.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("/dir/a", DiffKind::Removed),
            ("/dir/sub/b", DiffKind::Removed),
            ("/moved/a", DiffKind::Added),
            ("/moved/sub/b", DiffKind::Added)
        ]
    );
    let h = d.history(0).expect("history");
    assert_eq!(h.first().map(|c| c.path.as_str()), Some("/dir/a"));
    assert!(h.iter().any(|c| c.path == "/dir/a" && c.entry.is_none()));

    d.truncate(v1).expect("truncate");
    assert_eq!(d.readdir("/").expect("readdir"), ["dir"]);
    assert_eq!(d.get("/dir/a").expect("get"), Some(b"1".to_vec()));
}

/// Serves blocks of the writer's cores to a sparse replica, verified from proofs.
struct FromWriter {
    cores: Vec<Hypercore>,
    replicas: std::sync::Mutex<Vec<Hypercore>>,
    fetched: std::sync::atomic::AtomicUsize,
}

impl Fetch for FromWriter {
    fn fetch(&self, core: &crate::crypto::CoreKey, index: u64) -> crate::Result<Vec<u8>> {
        let i = self.cores.iter().position(|c| c.key() == core).expect("a known core");
        let mut replicas = self.replicas.lock().expect("lock");
        let r = &mut replicas[i];
        let req = r.block_request(index, self.cores[i].length())?;
        r.apply_proof(&self.cores[i].proof(&req)?)?;
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r.get(index)
    }

    /// The writer names the block; its proof and the byte offset it proves must agree.
    fn seek(&self, core: &crate::crypto::CoreKey, bytes: u64) -> crate::Result<(u64, u64)> {
        let i = self.cores.iter().position(|c| c.key() == core).expect("a known core");
        let (index, _) = self.cores[i].seek(bytes)?;
        let mut replicas = self.replicas.lock().expect("lock");
        let r = &mut replicas[i];
        let req = r.block_request(index, self.cores[i].length())?;
        r.apply_proof(&self.cores[i].proof(&req)?)?;
        let start = r.byte_offset(index)?;
        let size = r.get(index)?.len() as u64;
        if !(start..start + size).contains(&bytes) {
            return Err(Error::Verification("the peer's seek names the wrong block".into()));
        }
        Ok((index, bytes - start))
    }
}

/// An empty replica of `w` that knows its signed length (an upgrade proof, no blocks).
fn sparse(store: Arc<dyn Store>, w: &Hypercore) -> Hypercore {
    use crate::hypercore::proof::{Request, RequestUpgrade};
    let mut r = Hypercore::open_replica(store, *w.key(), w.manifest().cloned()).expect("replica");
    let req = Request {
        upgrade: Some(RequestUpgrade { start: 0, length: w.length() }),
        manifest: true,
        ..Request::default()
    };
    r.apply_proof(&w.proof(&req).expect("proof")).expect("upgrade");
    r
}

#[test]
fn a_sparse_replica_reads_a_byte_range_by_fetching_only_its_chunks() {
    let mut w = drive(42);
    let big = random(8 << 20, 9);
    w.put("/big.bin", &big, &PutOptions::default()).expect("put");
    for i in 0..50 {
        w.put(&format!("/small/{i}"), format!("file {i}").as_bytes(), &PutOptions::default()).expect("put");
    }
    let key = *w.key();
    let cores = vec![w.db().core(), w.blobs()];

    // Without a fetcher, a replica says which block it lacks instead of answering wrongly.
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    sparse(store.clone(), cores[0]);
    sparse(store.clone(), cores[1]);
    let plain = Drive::open(store.clone(), &key).expect("open").expect("replica");
    assert!(matches!(plain.read("/big.bin", 100, 10), Err(Error::MissingBlock { .. })));
    drop(plain);

    let fetcher = Arc::new(FromWriter {
        replicas: std::sync::Mutex::new(cores.iter().map(|c| sparse(Arc::new(MemStore::new()), c)).collect()),
        cores: cores
            .into_iter()
            .map(|c| Hypercore::open(c.store().clone(), c.key()).expect("open").expect("core"))
            .collect(),
        fetched: 0.into(),
    });
    let r = Drive::open_with(store, &key, Some(fetcher.clone())).expect("open").expect("replica");
    let off = 5_000_000u64;
    assert_eq!(r.read("/big.bin", off, 4096).expect("read"), big[off as usize..off as usize + 4096]);
    let fetched = fetcher.fetched.load(std::sync::atomic::Ordering::Relaxed);
    // The db path to the entry plus one or two chunks: not the 8 MiB file.
    assert!(fetched <= 12, "a 4 KiB read fetched {fetched} blocks");
    assert_eq!(r.get("/small/7").expect("get"), Some(b"file 7".to_vec()));
}

/// Many small files share appends: nothing reaches the blobs core until the batch finishes,
/// an entry naming unfinished bytes is refused, and a file repeating another file of the same
/// batch reuses its chunks.
#[test]
fn a_blob_batch_writes_many_files_in_shared_appends() {
    let mut d = drive(7);
    d.put("/before", b"already here", &PutOptions::default()).expect("put");
    let base = d.blobs().length();
    let mut batch = BlobBatch::new();
    let files: Vec<Vec<u8>> = (0..50).map(|i| random(100 + i * 37, i as u64)).collect();
    let blobs: Vec<Blob> =
        files.iter().map(|f| d.write_blob_into(&mut batch, f.as_slice()).expect("write blob")).collect();
    let again = d.write_blob_into(&mut batch, files[3].as_slice()).expect("write a repeated blob");
    assert!(again.block_map, "a repeated file reuses the batch's chunks");
    assert_eq!(d.blobs().length(), base, "nothing appended before the batch finishes");
    assert!(batch.is_pending());
    let early = Entry { executable: false, linkname: None, blob: Some(blobs[0]), metadata: None };
    assert!(matches!(d.apply(&[Op::Put("/early", &early)]), Err(Error::InvalidRequest(_))));
    d.finish_blobs(&mut batch).expect("finish");
    assert!(!batch.is_pending());
    let entries: Vec<(String, Entry)> = blobs
        .iter()
        .chain([&again])
        .enumerate()
        .map(|(i, b)| (format!("/f/{i}"), Entry { executable: false, linkname: None, blob: Some(*b), metadata: None }))
        .collect();
    let ops: Vec<Op<'_>> = entries.iter().map(|(p, e)| Op::Put(p, e)).collect();
    d.apply(&ops).expect("apply");
    for (i, f) in files.iter().enumerate() {
        assert_eq!(d.get(&format!("/f/{i}")).expect("get").as_deref(), Some(f.as_slice()));
    }
    assert_eq!(d.get("/f/50").expect("get").as_deref(), Some(files[3].as_slice()));
    assert_eq!(d.get("/before").expect("get").as_deref(), Some(&b"already here"[..]));
    // A batch noticed the blobs core growing beside it.
    let mut batch = BlobBatch::new();
    d.write_blob_into(&mut batch, &b"pending"[..]).expect("write blob");
    d.put("/other", b"another writer", &PutOptions::default()).expect("put");
    assert!(matches!(d.finish_blobs(&mut batch), Err(Error::InvalidRequest(_))));
}

/// The versions inside an atomic change have no tree of their own: reading one is refused
/// with the versions to read instead, and history names the version that shows each change.
#[test]
fn versions_inside_an_atomic_change_are_refused_and_history_names_the_visible_one() {
    let mut d = drive(8);
    d.put("/a", b"a", &PutOptions::default()).expect("put");
    let before = d.version();
    let e = Entry { executable: false, linkname: None, blob: None, metadata: None };
    d.apply(&[Op::Put("/b", &e), Op::Put("/c", &e), Op::Del("/a")]).expect("apply");
    let after = d.version();
    assert_eq!(after, before + 3);
    for v in before + 1..after {
        match d.checkout(v).map(|_| ()) {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(&format!("versions {before} to {after}")), "{m}"),
            other => panic!("version {v} inside the batch gave {other:?}"),
        }
        assert!(matches!(d.truncate(v), Err(Error::InvalidRequest(_))));
    }
    assert_eq!(d.checkout(after).expect("end").readdir("/").expect("readdir"), ["b", "c"]);
    assert_eq!(d.checkout(before).expect("start").readdir("/").expect("readdir"), ["a"]);
    let visible: Vec<(String, u64)> =
        d.history(before).expect("history").into_iter().map(|c| (c.path, c.version)).collect();
    assert_eq!(visible, [("/b".into(), after), ("/c".into(), after), ("/a".into(), after)]);
    // Truncating before the batch forgets it: the same lengths are ordinary versions again.
    d.truncate(before).expect("truncate");
    d.put("/x", b"x", &PutOptions::default()).expect("put");
    d.put("/y", b"y", &PutOptions::default()).expect("put");
    assert_eq!(d.checkout(before + 1).expect("a plain version").readdir("/").expect("readdir"), ["a", "x"]);
}

/// A replica's cores fed by another instance on the same store (as the network layer does):
/// the drive sees the new versions and blocks after a refresh, and follows a truncation.
#[test]
fn a_replica_drive_refreshes_what_another_instance_stored() {
    let mut w = drive(11);
    w.put("/a.txt", b"first", &PutOptions::default()).expect("put");
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let feed = |from: &Hypercore, to: &mut Hypercore| {
        for i in 0..from.length() {
            let req = to.block_request(i, from.length()).expect("request");
            to.apply_proof(&from.proof(&req).expect("proof")).expect("verifies");
        }
    };
    let mut net_db = Hypercore::open_replica(store.clone(), *w.key(), None).expect("replica");
    feed(w.db().core(), &mut net_db);
    let mut r = Drive::open(store.clone(), w.key()).expect("open").expect("a drive");
    let mut net_blobs = Hypercore::open_replica(store.clone(), *r.blobs().key(), None).expect("blobs");
    feed(w.blobs(), &mut net_blobs);
    r.refresh().expect("refresh");
    assert_eq!(r.get("/a.txt").expect("get").as_deref(), Some(&b"first"[..]));
    // The writer goes on; the network instance applies it; the drive follows after a refresh.
    w.put("/b.txt", b"second", &PutOptions::default()).expect("put");
    feed(w.db().core(), &mut net_db);
    feed(w.blobs(), &mut net_blobs);
    assert_eq!(r.version(), 2, "not yet");
    assert!(r.refresh().expect("refresh"));
    assert_eq!(r.version(), w.version());
    assert_eq!(r.get("/b.txt").expect("get").as_deref(), Some(&b"second"[..]));
    assert!(!r.refresh().expect("refresh"), "nothing new");
}

/// A drive header's `contentFeed` is the writer's word: naming a core of the victim's store
/// (its own drive's blobs) made the victim's replica read — and serve to every peer — that
/// core. Only the key Hyperdrive derives from the db is accepted.
#[test]
fn a_header_naming_a_foreign_content_core_is_refused() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut own = Drive::create(store.clone(), keys::drive_key_pair(&[1; 32], None)).expect("create");
    own.put("/private.txt", b"mine alone", &PutOptions::default()).expect("put");
    let victim_blobs = *own.blobs().key();
    let kp = keys::drive_key_pair(&[2; 32], None);
    let mut db = Hypercore::create(store.clone(), kp.clone(), false).expect("create");
    let header = crate::hyperbee::Header {
        protocol: "hyperbee".into(),
        metadata: Some(crate::hyperbee::Metadata { content_feed: Some(victim_blobs.to_vec()), user_data: None }),
    };
    db.append(&header.encode()).expect("append");
    let err = Drive::open(store.clone(), db.key()).expect_err("refused");
    assert!(matches!(err, Error::Verification(_)), "{err}");
    // The derived key, named explicitly (as older writers do), is fine.
    let derived = keys::blobs_manifest(db.manifest().expect("manifest"), db.key()).expect("v1").hash();
    let kp2 = keys::drive_key_pair(&[3; 32], None);
    let mut db2 = Hypercore::create(store.clone(), kp2, false).expect("create");
    let derived2 = keys::blobs_manifest(db2.manifest().expect("manifest"), db2.key()).expect("v1").hash();
    assert_ne!(derived, derived2);
    let header = crate::hyperbee::Header {
        protocol: "hyperbee".into(),
        metadata: Some(crate::hyperbee::Metadata { content_feed: Some(derived2.to_vec()), user_data: None }),
    };
    db2.append(&header.encode()).expect("append");
    let d = Drive::open(store, db2.key()).expect("opens").expect("held");
    assert_eq!(d.blobs().key().0, derived2);
}

/// A close chunks, hashes and stages its file on a snapshot while the drive's owner takes
/// other writes; the commit then reuses every chunk the drive has by then (including ones
/// written after the snapshot) and appends only the rest.
#[test]
fn a_file_prepared_on_a_snapshot_commits_beside_other_writes_with_only_its_new_chunks() {
    let shared = SharedDrive::new(drive(21));
    let v1 = random(12 << 20, 1);
    shared.write().put("/big.bin", &v1, &PutOptions::default()).expect("put");
    let snap = shared.snapshot();

    // The owner is held by another writer all through the preparation.
    let mut other = shared.write();
    let mut v2 = b"new first bytes".to_vec();
    v2.extend_from_slice(&v1);
    let prepared =
        std::thread::scope(|s| s.spawn(|| snap.prepare_blob(&v2[..], false)).join().expect("thread")).expect("prepare");
    // Meanwhile a file sharing most of v3's chunks arrives through the owner.
    let v3_base = random(9 << 20, 3);
    other.put("/other.bin", &v3_base, &PutOptions::default()).expect("put");
    drop(other);
    let mut v3 = v3_base.clone();
    v3.extend_from_slice(b"a tail");
    let prepared3 = shared.snapshot().prepare_blob(&v3[..], false).expect("prepare");
    let prepared_early = snap.prepare_blob(&v3[..], false).expect("prepare before other.bin was in");

    let mut d = shared.write();
    let before = d.blobs().byte_length();
    let blob = d.write_prepared(prepared).expect("commit v2");
    d.put_entry("/big.bin", &Entry { executable: false, linkname: None, blob: Some(blob), metadata: None })
        .expect("entry");
    let grew = d.blobs().byte_length() - before;
    assert!(grew < 600 << 10, "v2 cost {grew} bytes: its old chunks were not reused");

    // Prepared before other.bin was written: the chunks it shares are found again at commit.
    let before = d.blobs().byte_length();
    let early = d.write_prepared(prepared_early).expect("commit v3 prepared early");
    let late = d.write_prepared(prepared3).expect("commit v3");
    assert!(d.blobs().byte_length() - before < 600 << 10, "v3 did not reuse other.bin's chunks");
    for (path, blob) in [("/v3.bin", early), ("/v3b.bin", late)] {
        d.put_entry(path, &Entry { executable: false, linkname: None, blob: Some(blob), metadata: None })
            .expect("entry");
    }
    drop(d);
    let now = shared.snapshot();
    assert_eq!(now.get("/big.bin").expect("get").expect("file"), v2);
    assert_eq!(now.get("/other.bin").expect("get").expect("file"), v3_base);
    assert_eq!(now.get("/v3.bin").expect("get").expect("file"), v3);
    assert_eq!(now.get("/v3b.bin").expect("get").expect("file"), v3);
}

/// A blob prepared before the drive was truncated does not name blocks the truncation took:
/// its chunks are looked up again and the missing ones appended from their staged bytes.
#[test]
fn a_blob_prepared_before_a_truncation_is_written_whole_after_it() {
    let shared = SharedDrive::new(drive(22));
    shared.write().put("/a", b"first", &PutOptions::default()).expect("put");
    let v = shared.snapshot().version();
    let data = random(10 << 20, 4);
    shared.write().put("/big.bin", &data, &PutOptions::default()).expect("put");
    let prepared = shared.snapshot().prepare_blob(&data[..], false).expect("prepare");
    shared.write().truncate(v).expect("truncate");
    let mut d = shared.write();
    let blob = d.write_prepared(prepared).expect("commit");
    d.put_entry("/again.bin", &Entry { executable: false, linkname: None, blob: Some(blob), metadata: None })
        .expect("entry");
    drop(d);
    assert_eq!(shared.snapshot().get("/again.bin").expect("get").expect("file"), data);
    // A blob prepared for another drive is refused, not committed as garbage.
    let other = drive(23).prepare_blob(&b"x"[..], false).expect("prepare");
    assert!(matches!(shared.write().write_prepared(other), Err(Error::InvalidRequest(_))));
}

#[test]
fn hard_links_share_writes_moves_and_removals_in_one_version_each() {
    let mut d = drive(41);
    d.put("/a", b"one", &PutOptions::default()).expect("put");
    d.apply(&[Op::Link("/a", "/dir/b")]).expect("link");
    let (_, a) = d.entry("/a").expect("entry").expect("a");
    let id = a.link_id().expect("a linked name carries its group").to_owned();
    assert_eq!(d.view().link_names(&id).expect("names"), ["/a", "/dir/b"]);
    assert_eq!(d.view().nlink("/dir/b", &a).expect("nlink"), 2);
    // JS reads the new name as a plain file with the same bytes.
    assert_eq!(d.get("/dir/b").expect("get"), Some(b"one".to_vec()));

    // A write through one name is written to every name, in one version.
    let blob = d.write_blob(&b"two"[..]).expect("blob");
    let changed = Entry { blob: Some(blob), ..a.clone() };
    let before = d.version();
    d.apply(&[Op::Put("/dir/b", &changed)]).expect("write through b");
    assert_eq!(d.get("/a").expect("get"), Some(b"two".to_vec()));
    assert_eq!(d.checkout(before).expect("old").get("/a").expect("get"), Some(b"one".to_vec()));

    // A third name, moved with its folder; the record follows.
    d.apply(&[Op::Link("/a", "/dir/c")]).expect("link");
    d.rename("/dir", "/moved").expect("move folder");
    assert_eq!(d.view().link_names(&id).expect("names"), ["/a", "/moved/b", "/moved/c"]);
    // A put over a name with an entry of no group takes the name out of the group.
    d.put("/moved/c", b"other", &PutOptions::default()).expect("replace");
    assert_eq!(d.view().link_names(&id).expect("names"), ["/a", "/moved/b"]);
    assert_eq!(d.get("/a").expect("get"), Some(b"two".to_vec()));
    // Removing a name leaves the others; the last one alone is a plain file again.
    assert!(d.del("/a").expect("del"));
    assert!(d.view().link_names(&id).expect("names").is_empty());
    let (_, b) = d.entry("/moved/b").expect("entry").expect("b");
    assert_eq!(d.view().nlink("/moved/b", &b).expect("nlink"), 1);
    assert_eq!(d.get("/moved/b").expect("get"), Some(b"two".to_vec()));
}

#[test]
fn a_record_never_makes_a_write_reach_a_file_outside_its_group() {
    let mut d = drive(42);
    d.put("/a", b"a", &PutOptions::default()).expect("put");
    d.put("/victim", b"keep", &PutOptions::default()).expect("put");
    d.apply(&[Op::Link("/a", "/b")]).expect("link");
    let (_, a) = d.entry("/a").expect("entry").expect("a");
    let id = a.link_id().expect("id").to_owned();
    // A record that also names another file (crafted, or left by a bug).
    let forged = serde_json::json!(["/a", "/b", "/victim"]).to_string();
    d.db.put(&key_in(links::LINKS, &id), forged.as_bytes()).expect("forge");
    let blob = d.write_blob(&b"new"[..]).expect("blob");
    d.apply(&[Op::Put("/a", &Entry { blob: Some(blob), ..a })]).expect("write");
    assert_eq!(d.get("/b").expect("get"), Some(b"new".to_vec()));
    assert_eq!(d.get("/victim").expect("get"), Some(b"keep".to_vec()));
}

#[test]
fn special_files_are_listed_moved_and_removed_outside_what_js_lists() {
    let mut d = drive(43);
    let meta = Special::Char(0x0103).to_json(serde_json::json!({"mode": 0o600}));
    let e = Entry { executable: false, linkname: None, blob: None, metadata: Some(meta) };
    d.apply(&[Op::Mknod("/dev/null0", &e)]).expect("mknod");
    let fifo = Entry { metadata: Some(Special::Fifo.to_json(serde_json::Value::Null)), ..e.clone() };
    d.apply(&[Op::Mknod("/dev/pipe", &fifo)]).expect("mkfifo");
    assert!(d.list("/").expect("list").is_empty(), "JS lists no special file");
    assert_eq!(d.readdir("/").expect("readdir"), ["dev"]);
    assert_eq!(d.readdir("/dev").expect("readdir"), ["null0", "pipe"]);
    let children = d.view().children("/dev").expect("children");
    assert!(children.iter().all(|c| c.special));
    assert_eq!(Special::of(&d.view().special("/dev/null0").expect("get").expect("there")), Some(Special::Char(0x0103)));
    let walk = d.view().walk("/").expect("walk");
    assert_eq!(walk.specials.len(), 2);
    d.rename("/dev", "/devices").expect("move");
    assert_eq!(Special::of(&d.view().special("/devices/pipe").expect("get").expect("there")), Some(Special::Fifo));
    d.apply(&[Op::DelSpecial("/devices/pipe")]).expect("rm");
    assert_eq!(d.readdir("/devices").expect("readdir"), ["null0"]);
    // Special files take hard links too.
    d.apply(&[Op::Link("/devices/null0", "/again")]).expect("link");
    let again = d.view().special("/again").expect("get").expect("there");
    assert_eq!(d.view().nlink("/again", &again).expect("nlink"), 2);
}
