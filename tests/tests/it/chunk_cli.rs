//! `hyperfs chunk` as a user runs it: one `OFFSET LENGTH LEAF-HASH` line per chunk, from files
//! or standard input, and `--stats`.

use std::io::Write;
use std::process::{Command, Stdio};

use hyperfs_tests::{hyperfs, hyperfs_bin, hyperfs_ok, pseudo_random};

#[test]
fn chunk_lines_cover_the_file_and_name_each_chunk_by_its_leaf_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pseudo_random(3 << 20, 11);
    let path = dir.path().join("data.bin");
    std::fs::write(&path, &data).expect("write");
    let out = hyperfs_ok(&["chunk", path.to_str().expect("utf-8")]);
    let mut at = 0usize;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() > 10, "{} chunks for 3 MiB", lines.len());
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "{line:?}");
        let (off, len): (usize, usize) = (f[0].parse().expect("offset"), f[1].parse().expect("length"));
        assert_eq!(off, at);
        assert_eq!(f[2], hex::encode(hyperfs_chunker::leaf_hash(&data[off..off + len])));
        at += len;
    }
    assert_eq!(at, data.len());

    // The same bytes through standard input give the same chunks.
    let mut child = Command::new(hyperfs_bin())
        .args(["chunk", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = data.clone();
    let writer = std::thread::spawn(move || {
        for piece in feed.chunks(7919) {
            stdin.write_all(piece).expect("write stdin");
        }
    });
    let piped = child.wait_with_output().expect("output");
    writer.join().expect("writer");
    assert!(piped.status.success());
    assert_eq!(String::from_utf8(piped.stdout).expect("utf-8"), out);

    let stats = hyperfs_ok(&["chunk", "--stats", path.to_str().expect("utf-8")]);
    assert!(stats.contains(&format!("chunks      {}", lines.len())), "{stats}");
    assert!(stats.contains("hyperfs-cdc-v1"), "{stats}");
    assert!(stats.contains("throughput"), "{stats}");
}

#[test]
fn missing_file_is_one_clear_line() {
    let out = hyperfs(&["chunk", "/nonexistent/file"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/file") && err.contains("No such file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
