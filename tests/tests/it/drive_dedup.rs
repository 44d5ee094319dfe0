//! Chunk-level dedup through the real store: a new version of a big file, and the same file
//! under a second path, cost only their new chunks — in the blobs core and on disk.

use std::io::Write;
use std::sync::Arc;

use hyperfs_engine::drive::{keys, Drive, PutOptions};
use hyperfs_engine::store::{RocksStore, Store};
use hyperfs_tests::pseudo_random;

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("metadata"))
        .map(|m| if m.is_file() { m.len() } else { 0 })
        .sum()
}

#[test]
fn a_one_byte_insert_into_256_mib_stores_under_one_percent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join("v1.bin");
    let v2 = dir.path().join("v2.bin");
    let data = pseudo_random(256 << 20, 256);
    std::fs::write(&v1, &data).expect("write v1");
    let mut f = std::fs::File::create(&v2).expect("create v2");
    f.write_all(b"!").and_then(|_| f.write_all(&data)).expect("write v2");
    drop(f);
    drop(data);

    let store_dir = dir.path().join("store");
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&store_dir).expect("store"));
    let mut d = Drive::create(store.clone(), keys::drive_key_pair(&[0x44; 32], None)).expect("drive");
    let open = |p: &std::path::Path| std::io::BufReader::new(std::fs::File::open(p).expect("open"));

    d.put_reader("/v.bin", open(&v1), &PutOptions::default()).expect("put v1");
    store.flush().expect("flush");
    let (blobs1, disk1) = (d.blobs().byte_length(), dir_size(&store_dir));
    assert!(blobs1 >= 256 << 20);

    d.put_reader("/v.bin", open(&v2), &PutOptions::default()).expect("put v2");
    store.flush().expect("flush");
    let grew = d.blobs().byte_length() - blobs1;
    assert!(grew <= (256 << 20) / 100, "a one-byte insert grew the blobs core by {grew} bytes");
    let disk_grew = dir_size(&store_dir).saturating_sub(disk1);
    assert!(disk_grew <= 8 << 20, "a one-byte insert grew the store on disk by {disk_grew} bytes");
    assert_eq!(d.stat("/v.bin").expect("stat").expect("file").size, (256 << 20) + 1);
    assert_eq!(d.read("/v.bin", 0, 1).expect("read"), b"!");

    let before = d.blobs().byte_length();
    d.put_reader("/copy.bin", open(&v1), &PutOptions::default()).expect("put copy");
    assert!(d.blobs().byte_length() - before < 64 << 10, "a copy stored its bytes again");
    let back = d.get("/copy.bin").expect("get").expect("file");
    assert!(back == std::fs::read(&v1).expect("read v1"), "the copy reads back as the file");
}
