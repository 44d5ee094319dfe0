//! Multi-writer drives between three hosts (network namespaces on one bridge, finding each
//! other on the LAN alone): invites, every member writing through its own mount, convergence
//! to byte-identical trees, edits made apart (conflict copies, a modify beating a delete), a
//! partition healed, a member removed, and a reader who is no member. Needs root.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperfs_tests::{in_ns, Hosts};
use serde_json::Value;

/// Each member's name (its drive's local name on its node).
const NAMES: [&str; 3] = ["notes", "laptop", "desktop"];

/// LAN discovery only.
const LAN: [&str; 4] = ["--no-dht", "--no-hyperdht", "--listen", "0.0.0.0:0"];

fn json(ns: &str, dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&Hosts::hyperfs_ok(ns, dir, args)).expect("JSON output")
}

/// Stops a node when dropped (which unmounts its mounts).
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = hyperfs_tests::hyperfs_in(&self.0, &["stop"]);
    }
}

/// What a mount shows: every file's path, bytes and mode.
type Tree = BTreeMap<String, (Vec<u8>, u32)>;

fn tree(mnt: &Path) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![mnt.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p.strip_prefix(mnt).expect("inside").to_string_lossy().into_owned();
                out.insert(rel, (bytes, m.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

/// Three members of one multi-writer drive, each on its host with its mount.
struct Members {
    hosts: Hosts,
    dirs: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
    /// The invites members 1 and 2 joined with (each used).
    invites: Vec<String>,
    _stops: Vec<Stop>,
    _tmp: tempfile::TempDir,
}

impl Members {
    /// Member 0 founds the drive and invites the others, who join finding it on the LAN.
    fn new() -> Members {
        let hosts = Hosts::new(3);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("node{i}"))).collect();
        let stops = dirs.iter().map(|d| Stop(d.clone())).collect();
        let mounts: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("mnt{i}"))).collect();
        for (i, dir) in dirs.iter().enumerate() {
            let mut args = vec!["peers"];
            args.extend_from_slice(&LAN);
            Hosts::hyperfs_ok(&hosts.names[i], dir, &args);
        }
        let made = json(&hosts.names[0], &dirs[0], &["create", "--multiwriter", "--name", "notes", "--json"]);
        assert!(made["key"].is_string());
        let mut invites = Vec::new();
        for i in 1..3 {
            let invite = Hosts::hyperfs_ok(&hosts.names[0], &dirs[0], &["invite", "notes"]);
            invites.push(invite.trim().to_owned());
            let started = Instant::now();
            let joined = json(&hosts.names[i], &dirs[i], &["join", invite.trim(), "--name", NAMES[i], "--json"]);
            assert_eq!(joined["member"], true, "{joined}\n{}", hyperfs_tests::node_log_tail(&dirs[0]));
            assert_eq!(joined["founder"], made["key"]);
            eprintln!("member {i} joined in {:?}", started.elapsed());
            // Used once.
            let again = Hosts::hyperfs(&hosts.names[i], &dirs[i], &["join", invite.trim(), "--name", "again"]);
            assert!(!again.status.success(), "an invite used twice on one node");
        }
        for (i, mnt) in mounts.iter().enumerate() {
            std::fs::create_dir(mnt).expect("mkdir");
            Hosts::hyperfs_ok(&hosts.names[i], &dirs[i], &["mount", NAMES[i], mnt.to_str().expect("utf-8")]);
        }
        Members { hosts, dirs, mounts, invites, _stops: stops, _tmp: tmp }
    }

    fn path(&self, i: usize, rel: &str) -> PathBuf {
        self.mounts[i].join(rel)
    }

    /// Waits up to `limit` for the members in `which` to show one tree, which it returns.
    fn converge(&self, which: &[usize], limit: Duration) -> Tree {
        let started = Instant::now();
        loop {
            let trees: Vec<Tree> = which.iter().map(|&i| tree(&self.mounts[i])).collect();
            if trees.windows(2).all(|w| w[0] == w[1]) {
                eprintln!("members {which:?} converged in {:?}", started.elapsed());
                return trees.into_iter().next().expect("a member");
            }
            if started.elapsed() > limit {
                let names: Vec<Vec<&String>> = trees.iter().map(|t| t.keys().collect()).collect();
                let logs: Vec<String> = which.iter().map(|&i| hyperfs_tests::node_log_tail(&self.dirs[i])).collect();
                panic!("members {which:?} did not converge: {names:?}\n{}", logs.join("\n----\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts member `i` off the others (its host drops every packet but loopback's), or heals it.
    fn cut(&self, i: usize, apart: bool) {
        let ns = &self.hosts.names[i];
        // IPv6 too: the hosts' link-local addresses carry LAN discovery and connections.
        for tables in ["iptables", "ip6tables"] {
            if apart {
                in_ns(ns, &[tables, "-A", "INPUT", "!", "-i", "lo", "-j", "DROP"]);
                in_ns(ns, &[tables, "-A", "OUTPUT", "!", "-o", "lo", "-j", "DROP"]);
            } else {
                in_ns(ns, &[tables, "-F"]);
            }
        }
    }

    fn cli(&self, i: usize, args: &[&str]) -> String {
        Hosts::hyperfs_ok(&self.hosts.names[i], &self.dirs[i], args)
    }
}

#[test]
fn three_members_converge_keep_both_sides_of_a_conflict_and_heal_after_a_partition() {
    let m = Members::new();
    // Each writes through its mount; a save shows on the others within a second.
    for i in 0..3 {
        std::fs::create_dir_all(m.path(i, &format!("from-{i}"))).expect("mkdir");
        std::fs::write(m.path(i, &format!("from-{i}/note.txt")), format!("written on member {i}\n")).expect("write");
    }
    std::fs::write(m.path(1, "tool.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(m.path(1, "tool.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(m.path(0, "shared.txt"), "the first text\n").expect("write");
    std::fs::write(m.path(0, "doomed.txt"), "to be deleted, or not\n").expect("write");
    // Members find each other's drives as they join (each through the LAN, or from a member
    // that holds it already); on a loaded machine that may take a while.
    let all = m.converge(&[0, 1, 2], Duration::from_secs(20));
    assert_eq!(all.len(), 6, "{:?}", all.keys().collect::<Vec<_>>());
    assert_eq!(all["tool.sh"].1, 0o755, "modes travel");
    assert_eq!(all["from-2/note.txt"].0, b"written on member 2\n");
    let started = Instant::now();
    std::fs::write(m.path(2, "quick.txt"), "there at once\n").expect("write");
    while std::fs::read(m.path(0, "quick.txt")).ok().as_deref() != Some(b"there at once\n".as_slice()) {
        assert!(started.elapsed() < Duration::from_secs(1), "a save took over a second to show on a LAN");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("a save on member 2 showed on member 0 in {:?}", started.elapsed());
    // Empty folders travel too, and go when removed.
    std::fs::create_dir_all(m.path(1, "empty/inner")).expect("mkdir");
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("an empty folder did not show", &|| m.path(0, "empty/inner").is_dir() && m.path(2, "empty/inner").is_dir());
    std::fs::remove_dir(m.path(2, "empty/inner")).expect("rmdir");
    wait("a removed folder stayed", &|| !m.path(0, "empty/inner").exists() && m.path(0, "empty").is_dir());
    // `log` on any member tells who made each change.
    for (path, by) in [("from-2/note.txt", "desktop"), ("from-0/note.txt", "notes"), ("tool.sh", "laptop")] {
        let log = json(&m.hosts.names[0], &m.dirs[0], &["log", &format!("notes:/{path}"), "--json"]);
        let last = log.as_array().and_then(|l| l.last()).cloned().unwrap_or_default();
        assert_eq!(last["member"], by, "{path}: {log}");
    }

    // Member 2 apart: the same file edited on both sides (member 2 later), a file deleted on
    // one side and modified on the other, new files on both.
    m.cut(2, true);
    std::fs::write(m.path(0, "shared.txt"), "member 0's edit, made apart\n").expect("write");
    std::fs::remove_file(m.path(1, "doomed.txt")).expect("rm");
    std::fs::write(m.path(0, "while-apart-0.txt"), "0\n").expect("write");
    m.converge(&[0, 1], Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(m.path(2, "shared.txt"), "member 2's edit, made apart and later\n").expect("write");
    std::fs::write(m.path(2, "doomed.txt"), "member 2 kept working on it\n").expect("write");
    std::fs::write(m.path(2, "while-apart-2.txt"), "2\n").expect("write");
    assert!(!m.path(2, "while-apart-0.txt").exists(), "the partition let a change through");

    m.cut(2, false);
    let healed = m.converge(&[0, 1, 2], Duration::from_secs(30));
    assert_eq!(healed["shared.txt"].0, b"member 2's edit, made apart and later\n", "the later edit wins");
    let copies: Vec<(&String, &(Vec<u8>, u32))> =
        healed.iter().filter(|(p, _)| p.starts_with("shared.sync-conflict-") && p.ends_with(".txt")).collect();
    assert_eq!(copies.len(), 1, "one conflict copy: {:?}", healed.keys().collect::<Vec<_>>());
    assert_eq!(copies[0].1 .0, b"member 0's edit, made apart\n", "the losing edit is kept");
    assert_eq!(healed["doomed.txt"].0, b"member 2 kept working on it\n", "a modify beats a delete");
    assert!(healed.contains_key("while-apart-0.txt") && healed.contains_key("while-apart-2.txt"));

    // The conflict copy is an ordinary file: deleting it on one member deletes it everywhere.
    std::fs::remove_file(m.mounts[1].join(copies[0].0)).expect("rm");
    let tidy = m.converge(&[0, 1, 2], Duration::from_secs(10));
    assert!(!tidy.keys().any(|p| p.contains("sync-conflict")));
}

#[test]
fn a_removed_member_s_later_writes_are_ignored_and_readers_mount_the_merged_tree() {
    let m = Members::new();
    std::fs::write(m.path(2, "before.txt"), "written before the removal\n").expect("write");
    m.converge(&[0, 1, 2], Duration::from_secs(10));
    let members = json(&m.hosts.names[1], &m.dirs[1], &["members", "laptop", "--json"]);
    assert_eq!(members.as_array().map(Vec::len), Some(3), "{members}");
    let two = members.as_array().expect("list").iter().find(|x| x["name"] == "desktop" && x["me"] == false);
    assert!(two.is_some(), "{members}");
    let key2 = json(&m.hosts.names[2], &m.dirs[2], &["members", "desktop", "--json"])
        .as_array()
        .expect("list")
        .iter()
        .find(|x| x["me"] == true)
        .map(|x| x["key"].as_str().expect("key").to_owned())
        .expect("member 2 lists itself");

    // An invite is used once: a stranger holding one already used is not added.
    let stranger = m._tmp.path().join("stranger");
    let _stop_stranger = Stop(stranger.clone());
    let mut args = vec!["join", m.invites[0].as_str(), "--name", "stranger", "--wait", "3", "--json"];
    args.extend_from_slice(&LAN);
    let late = json(&m.hosts.names[0], &stranger, &args);
    assert_eq!(late["member"], false, "{late}");
    let now = json(&m.hosts.names[0], &m.dirs[0], &["members", "notes", "--json"]);
    assert_eq!(now.as_array().map(Vec::len), Some(3), "{now}");

    // A member's drive is every member's history: it is not cut back.
    let cut = Hosts::hyperfs(&m.hosts.names[0], &m.dirs[0], &["truncate", "notes", "1"]);
    assert!(!cut.status.success() && String::from_utf8_lossy(&cut.stderr).contains("multi-writer"));

    // Member 0 removes member 2; once member 1 has heard, member 2's new writes go nowhere.
    m.cli(0, &["members", "rm", "notes", &key2[..12]]);
    let started = Instant::now();
    loop {
        let now = json(&m.hosts.names[1], &m.dirs[1], &["members", "laptop", "--json"]);
        if now.as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the removal did not reach member 1: {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(m.path(2, "after.txt"), "written after the removal\n").expect("write");
    std::fs::remove_file(m.path(2, "before.txt")).expect("rm");
    std::thread::sleep(Duration::from_secs(3));
    let kept = m.converge(&[0, 1], Duration::from_secs(5));
    assert!(!kept.contains_key("after.txt"), "a removed member's write was taken");
    assert_eq!(kept["before.txt"].0, b"written before the removal\n", "what it wrote before stays");

    // A reader who is no member mounts the drive by its key and reads the merged tree.
    let key = json(&m.hosts.names[0], &m.dirs[0], &["drives", "--json"])[0]["key"].as_str().expect("key").to_owned();
    std::fs::write(m.path(1, "for-readers.txt"), "from member 1\n").expect("write");
    m.converge(&[0, 1], Duration::from_secs(10));
    let reader = m._tmp.path().join("reader");
    let _stop = Stop(reader.clone());
    let mnt = m._tmp.path().join("mnt-reader");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut args = vec!["mount", key.as_str(), mnt.to_str().expect("utf-8")];
    args.extend_from_slice(&LAN);
    Hosts::hyperfs_ok(&m.hosts.names[1], &reader, &args);
    let started = Instant::now();
    while tree(&mnt) != tree(&m.mounts[0]) {
        assert!(started.elapsed() < Duration::from_secs(10), "the reader's mount is not the merged tree");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(mnt.join("for-readers.txt")).expect("read"), b"from member 1\n");
    assert!(std::fs::write(mnt.join("nope.txt"), "x").is_err(), "a reader writes");
}

/// One operation of the randomised run.
#[derive(Debug)]
enum Op {
    Put { member: usize, path: &'static str, content: Vec<u8> },
    Delete { member: usize, path: &'static str },
    Apart { member: usize, apart: bool },
    Restart { member: usize },
}

/// Whether `name` is `path` or a conflict copy of it.
fn is_copy_of(name: &str, path: &str) -> bool {
    let (stem, ext) = match path.rfind('.') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    name == path || (name.starts_with(&format!("{stem}.sync-conflict-")) && name.ends_with(ext))
}

#[test]
fn random_edits_on_random_members_under_partitions_and_restarts_lose_nothing() {
    use rand::{Rng, SeedableRng};
    const PATHS: [&str; 4] = ["a.txt", "dir/b.txt", "dir/sub/c.txt", "d.md"];
    // A bounded run here; `HYPERFS_MW_ROUNDS` makes it longer (scripts/fuzz).
    let rounds: usize = std::env::var("HYPERFS_MW_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let m = Members::new();
    for round in 0..rounds {
        let seed = hyperfs_tests::test_seed().wrapping_add(round as u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut ops = Vec::new();
        let mut apart = [false; 3];
        // Who was cut off after each operation.
        let mut apart_after: Vec<[bool; 3]> = Vec::new();
        for _ in 0..30 {
            let member = rng.gen_range(0..3);
            let op = match rng.gen_range(0..10) {
                0..=4 => {
                    let content = format!("seed {seed}, op {}, member {member}\n", ops.len()).into_bytes();
                    Op::Put { member, path: PATHS[rng.gen_range(0..PATHS.len())], content }
                }
                5..=6 => Op::Delete { member, path: PATHS[rng.gen_range(0..PATHS.len())] },
                7..=8 => Op::Apart { member, apart: !apart[member] },
                _ => Op::Restart { member },
            };
            match &op {
                Op::Put { member, path, content } => {
                    let p = m.path(*member, path);
                    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&p, content).expect("write");
                }
                Op::Delete { member, path } => {
                    if std::fs::remove_file(m.path(*member, path)).is_err() {
                        continue;
                    }
                }
                Op::Apart { member, apart: a } => {
                    m.cut(*member, *a);
                    apart[*member] = *a;
                }
                Op::Restart { member } => {
                    m.cli(*member, &["stop"]);
                    m.cli(*member, &["mount", NAMES[*member], m.mounts[*member].to_str().expect("utf-8")]);
                }
            }
            ops.push(op);
            apart_after.push(apart);
            // Edits a few milliseconds apart, sometimes long enough for a sync between them.
            std::thread::sleep(Duration::from_millis(rng.gen_range(1..150)));
        }
        for (i, a) in apart.iter().enumerate() {
            if *a {
                m.cut(i, false);
            }
        }
        let tree = m.converge(&[0, 1, 2], Duration::from_secs(60));
        // Every content saved is in the tree or in a conflict copy, unless a later edit or
        // delete of its path by a member that may have seen it took it away: the same member,
        // or one that was, at some moment between, connected while the writer was too.
        let member_of = |o: &Op| match o {
            Op::Put { member, .. } | Op::Delete { member, .. } => *member,
            Op::Apart { member, .. } | Op::Restart { member } => *member,
        };
        for (k, op) in ops.iter().enumerate() {
            let Op::Put { path, content, member: i } = op else { continue };
            let seen_later = ops.iter().enumerate().skip(k + 1).any(|(l, o)| {
                let same_path = matches!(o, Op::Put { path: p, .. } | Op::Delete { path: p, .. } if p == path);
                let j = member_of(o);
                same_path && (j == *i || (k..l).any(|t| !apart_after[t][*i] && !apart_after[t][j]))
            });
            if seen_later {
                continue;
            }
            let kept = tree.iter().any(|(name, (bytes, _))| is_copy_of(name, path) && bytes == content);
            let near: Vec<(&String, String)> = tree
                .iter()
                .filter(|(name, _)| is_copy_of(name, path))
                .map(|(name, (bytes, _))| (name, String::from_utf8_lossy(bytes).into_owned()))
                .collect();
            assert!(kept, "seed {seed}: op {k} {op:?} was lost; at its path: {near:?}\nops: {ops:#?}");
        }
        // Every file is one of the paths written or a conflict copy of one.
        for name in tree.keys() {
            assert!(PATHS.iter().any(|p| is_copy_of(name, p)), "seed {seed}: {name} came from nowhere");
        }
    }
}
