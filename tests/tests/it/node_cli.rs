//! The node and the commands that talk to it, through the real binary: a node starts on demand,
//! serves create/drives/put/cat/ls, refuses a second node, survives SIGKILL (the next command
//! replaces the stale socket), stops cleanly on `stop` and SIGTERM, and refuses a data
//! directory that is not its own.

use std::path::Path;
use std::time::{Duration, Instant};

use hyperfs_tests::{hyperfs_in, hyperfs_in_ok, pseudo_random};
use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    hyperfs_in(dir, args)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    hyperfs_in_ok(dir, args)
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one explaining line: {err}");
    err
}

fn node_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("node.pid")).expect("node.pid").trim().parse().expect("a pid")
}

fn wait_gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        assert!(Instant::now() < deadline, "{} still exists", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_starts_on_demand_and_serves_drives() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let created: Value = serde_json::from_str(&ok(&dir, &["create", "--name", "photos", "--json"])).expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    assert_eq!(key.len(), 64);
    assert!(created["link"].as_str().expect("link").starts_with("hyper://"));
    let drives: Value = serde_json::from_str(&ok(&dir, &["drives", "--json"])).expect("json");
    assert_eq!(drives[0]["name"], "photos");
    assert_eq!(drives[0]["key"], key.as_str());
    let sock = dir.join("node.sock");
    assert_eq!(
        std::fs::metadata(&sock)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("socket"),
        0o600
    );

    let data = pseudo_random(300_000, 3);
    let file = tmp.path().join("blob.bin");
    std::fs::write(&file, &data).expect("write");
    ok(&dir, &["put", file.to_str().expect("utf-8"), "photos:/a/b/blob.bin"]);
    let out = run(&dir, &["cat", &format!("{key}:/a/b/blob.bin")]);
    assert!(out.status.success());
    assert!(out.stdout == data, "cat by key returns the bytes put by name");
    assert_eq!(ok(&dir, &["ls", "photos:/a"]).trim(), "b");

    // A second node on the same directory is refused.
    let err = one_line_error(&run(&dir, &["daemon"]));
    assert!(err.contains("in use") || err.contains("already"), "{err}");

    // Bad input: each one line, and nothing is lost.
    assert!(one_line_error(&run(&dir, &["cat", "nosuch:/x"])).contains("no drive named"));
    assert!(one_line_error(&run(&dir, &["cat", "photos:/missing"])).contains("no file"));
    assert!(one_line_error(&run(&dir, &["cat", "photos:/../../etc/passwd"])).contains("climbs above"));
    assert!(one_line_error(&run(&dir, &["put", "/nonexistent/file", "photos:/x"])).contains("nonexistent"));

    // SIGKILL leaves a stale socket; the next command replaces it and the data is all there.
    let pid = node_pid(&dir);
    // SAFETY: plain kill(2) of the node process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(sock.exists(), "a killed node leaves its socket behind");
    let out = run(&dir, &["cat", "photos:/a/b/blob.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == data);
    assert_ne!(node_pid(&dir), pid, "a new node serves");

    // SIGTERM: the node removes its socket and exits.
    // SAFETY: as above.
    unsafe { libc::kill(node_pid(&dir), libc::SIGTERM) };
    wait_gone(&sock);

    // `stop` as well.
    ok(&dir, &["drives"]);
    ok(&dir, &["stop"]);
    wait_gone(&sock);
    assert!(one_line_error(&run(&dir, &["stop"])).contains("no node runs"));
}

#[test]
fn a_directory_that_is_not_ours_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("thesis.tex"), "mine").expect("write");
    let err = one_line_error(&run(tmp.path(), &["create"]));
    assert!(err.contains("not a hyperfs data directory"), "{err}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("thesis.tex")).expect("kept"), "mine");
}

#[test]
fn file_commands_change_the_drive_and_show_its_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(&dir, &["create", "--name", "p"]);
    let file = tmp.path().join("hi.txt");
    std::fs::write(&file, "hi\n").expect("write");
    let f = file.to_str().expect("utf-8");
    ok(&dir, &["put", f, "p:/a/hi.txt"]);
    ok(&dir, &["put", f, "p:/a/copy.txt"]);
    let v_before_move: u64 = {
        let info: Value = serde_json::from_str(&ok(&dir, &["info", "p", "--json"])).expect("json");
        assert_eq!(info["chunker"], "hyperfs-cdc-v1");
        assert_eq!(info["blobs"]["length"], 2, "the copy stored only a block map");
        info["version"].as_u64().expect("version")
    };
    ok(&dir, &["mkdir", "p:/empty"]);
    ok(&dir, &["mv", "p:/a", "/b"]);
    ok(&dir, &["rm", "p:/b/copy.txt"]);
    assert_eq!(ok(&dir, &["ls", "p:/"]).lines().collect::<Vec<_>>(), ["b", "empty"]);
    let st: Value = serde_json::from_str(&ok(&dir, &["stat", "p:/b/hi.txt", "--json"])).expect("json");
    assert_eq!((st["type"].as_str(), st["size"].as_u64()), (Some("file"), Some(3)));
    let st: Value = serde_json::from_str(&ok(&dir, &["stat", "p:/empty", "--json"])).expect("json");
    assert_eq!(st["type"], "directory");

    let log: Value = serde_json::from_str(&ok(&dir, &["log", "p:/a/copy.txt", "--json"])).expect("json");
    let ops: Vec<_> =
        log.as_array().expect("log").iter().map(|e| (e["op"].as_str().unwrap_or(""), e["size"].clone())).collect();
    assert_eq!(ops, [("put", Value::from(3)), ("del", Value::Null)], "a deduplicated copy still reports its file size");

    let diff: Value =
        serde_json::from_str(&ok(&dir, &["diff", "p", &v_before_move.to_string(), "--json"])).expect("json");
    let changes: Vec<_> = diff
        .as_array()
        .expect("diff")
        .iter()
        .map(|e| format!("{} {}", e["change"].as_str().unwrap_or(""), e["path"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(changes, ["removed /a/copy.txt", "removed /a/hi.txt", "added /b/hi.txt"]);
    assert!(ok(&dir, &["verify", "p"]).contains("verifies"));
    // Read commands look at older versions.
    let v = v_before_move.to_string();
    assert_eq!(ok(&dir, &["ls", "p:/", "--version", &v]).trim(), "a");
    assert_eq!(ok(&dir, &["cat", "p:/a/copy.txt", "--version", &v]), "hi\n");
    assert!(one_line_error(&run(&dir, &["rm", "p:/nope"])).contains("no file"));
    ok(&dir, &["stop"]);
}

#[test]
fn a_node_stops_when_its_data_directory_is_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(&dir, &["drives"]);
    let pid = node_pid(&dir);
    std::fs::remove_dir_all(&dir).expect("remove");
    if let Err(e) = hyperfs_tests::wait_for_exit(pid, Duration::from_secs(10)) {
        panic!("the node outlived its data directory: {e}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_command_definitions() {
    let bash = hyperfs_tests::hyperfs_ok(&["completions", "bash"]);
    assert!(bash.contains("_hyperfs") && bash.contains("create") && bash.contains("keys"));
    let man = hyperfs_tests::hyperfs_ok(&["man"]);
    assert!(man.contains(".TH hyperfs") && man.contains("daemon"));
}

/// A node killed a moment ago can still hold its socket while its threads exit: it takes a
/// command's connection and drops it unread. The command then goes to a node started in its
/// place, instead of failing with "connection reset by peer" (seen after a SIGKILL on a busy
/// machine).
#[test]
fn a_command_that_meets_a_dying_node_goes_to_the_next_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(&dir, &["create", "--name", "d"]);
    ok(&dir, &["stop"]);
    let sock = dir.join("node.sock");
    let dying = std::os::unix::net::UnixListener::bind(&sock).expect("bind the dying node's socket");
    let node = std::thread::spawn(move || {
        let (conn, _) = dying.accept().expect("accept");
        // The request has arrived; the node dies before reading it.
        let mut peek = [0u8; 1];
        // SAFETY: a valid descriptor and a one-byte buffer that outlives the call.
        let n =
            unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(&conn), peek.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
        assert_eq!(n, 1, "the command sent its request");
        drop(dying);
        std::fs::remove_file(&sock).expect("the socket goes with the node");
    });
    let info: Value = serde_json::from_str(&ok(&dir, &["info", "d", "--json"])).expect("json");
    node.join().expect("the dying node");
    assert_eq!(info["writable"], true, "{info}");
    ok(&dir, &["stop"]);
}
