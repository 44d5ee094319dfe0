//! A peer that stops answering (SIGSTOP) while a mount of its drive reads a block it does not
//! hold: the read waits, and nothing else does. Once, a read held the drive through the
//! network wait; the watch loop queued for the write lock behind it and every later `ls` queued
//! behind that — one slow peer froze the folder for ~15 s. Reads now take the drive's published
//! snapshot and hold nothing while they wait.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperfs_tests::{hyperfs_in_ok, hyperfs_json, pseudo_random, StopNode};

/// Lets a stopped node go on (before its `Stop` runs).
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the node process this test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn a_stalled_peer_never_freezes_the_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_sa, _sb) = (StopNode(a.clone()), StopNode(b.clone()));
    hyperfs_in_ok(&a, &["create", "--name", "src"]);
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, pseudo_random(64 << 20, 5)).expect("write");
    hyperfs_in_ok(&a, &["put", big.to_str().expect("utf-8"), "src:/big.bin"]);
    let note = tmp.path().join("note.txt");
    std::fs::write(&note, "local").expect("write");
    hyperfs_in_ok(&a, &["put", note.to_str().expect("utf-8"), "src:/note.txt"]);
    let shared = hyperfs_json(
        &a,
        &["share", "src", "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht", "--json"],
    );
    let (key, addr) =
        (shared["key"].as_str().expect("key").to_owned(), shared["address"].as_str().expect("addr").to_owned());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = mnt.to_str().expect("utf-8").to_owned();
    hyperfs_in_ok(
        &b,
        &["mount", &key, &m, "--peer", &addr, "--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"],
    );
    assert_eq!(std::fs::read_to_string(mnt.join("note.txt")).expect("read"), "local");

    // A sequential reader of the big file; A stops answering once it is under way.
    let (read, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let reader = {
        let (read, done, path) = (read.clone(), done.clone(), mnt.join("big.bin"));
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(path).expect("open");
            let mut buf = vec![0u8; 128 << 10];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                read.fetch_add(n as u64, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let start = Instant::now();
    while read.load(Ordering::SeqCst) < 2 << 20 {
        assert!(start.elapsed() < Duration::from_secs(30), "the reader got going");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid: i32 = std::fs::read_to_string(a.join("node.pid")).expect("pid").trim().parse().expect("pid");
    // SAFETY: kill(2) on the node process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let resume = Resume(pid);
    std::thread::sleep(Duration::from_millis(300));
    let stalled_at = read.load(Ordering::SeqCst);

    // While the read waits, the mount and the node answer at once.
    let mut worst: Vec<(&str, Duration)> = Vec::new();
    let mut time = |what: &'static str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        let took = t.elapsed();
        match worst.iter_mut().find(|(w, _)| *w == what) {
            Some((_, d)) => *d = (*d).max(took),
            None => worst.push((what, took)),
        }
    };
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        time("ls -la", &mut || {
            for e in std::fs::read_dir(&mnt).expect("readdir") {
                e.expect("entry").metadata().expect("lstat");
            }
        });
        time("stat", &mut || {
            std::fs::metadata(mnt.join("big.bin")).expect("stat");
        });
        time("cat of a local file", &mut || {
            assert_eq!(std::fs::read_to_string(mnt.join("note.txt")).expect("read"), "local");
        });
        time("hyperfs info", &mut || {
            hyperfs_json(&b, &["info", &key, "--json"]);
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_waiting = !done.load(Ordering::SeqCst) && read.load(Ordering::SeqCst) == stalled_at;
    eprintln!("while a read waited on the stopped peer ({still_waiting}): {worst:?}");
    drop(resume);
    reader.join().expect("the reader ends");
    assert!(still_waiting, "the read was waiting on the stopped peer all along");
    for (what, took) in worst {
        assert!(took <= Duration::from_millis(100), "{what} took {took:?} while a read waited on a stopped peer");
    }
    hyperfs_in_ok(&b, &["unmount", &m]);
}
