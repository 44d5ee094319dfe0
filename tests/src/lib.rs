//! hyperfs-tests: the shared harness of the integration tests — where the built `hyperfs` binary
//! and the pinned JavaScript packages are, temporary data directories, running commands.
//!
//! The tests themselves live in `tests/it/` (one test binary); helper programs the tests drive
//! live in `src/bin/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `hyperfs` binary built from this workspace. The README's test command builds it before
/// running the tests.
pub fn hyperfs_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/it-<hash> → target/<profile>/hyperfs
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("hyperfs");
    assert!(bin.exists(), "{} is missing: build the workspace first (scripts/test does)", bin.display());
    bin
}

/// Runs `hyperfs` with `args`; the output whatever the exit status.
pub fn hyperfs(args: &[&str]) -> Output {
    Command::new(hyperfs_bin()).args(args).output().expect("spawn hyperfs")
}

/// Runs `hyperfs` and returns its standard output, failing the test on a non-zero exit.
pub fn hyperfs_ok(args: &[&str]) -> String {
    let out = hyperfs(args);
    assert!(out.status.success(), "hyperfs {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `path` as a C string, for libc calls.
pub fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).expect("no NUL")
}

/// The errno of a failed call (0 when it succeeded).
pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Network options that keep a node on loopback with no discovery of its own (no LAN, Mainline
/// DHT or HyperDHT): it meets only the peers a test gives it.
pub const LOOPBACK_ONLY: [&str; 5] = ["--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"];

/// `args` followed by [`LOOPBACK_ONLY`].
pub fn loopback_only<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend_from_slice(&LOOPBACK_ONLY);
    all
}

/// Runs `hyperfs --data-dir DIR args…`; the output whatever the exit status.
pub fn hyperfs_in(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--data-dir", dir.to_str().expect("a UTF-8 data directory")];
    all.extend_from_slice(args);
    hyperfs(&all)
}

/// Runs `hyperfs --data-dir DIR args…` and returns its standard output, failing the test on a
/// non-zero exit.
/// On failure the message carries the end of the node's log, which the test's directory takes
/// with it.
pub fn hyperfs_in_ok(dir: &Path, args: &[&str]) -> String {
    let out = hyperfs_in(dir, args);
    if !out.status.success() {
        panic!(
            "hyperfs --data-dir {} {args:?} failed: {}\n{}\nthe end of node.log:\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            node_log_tail(dir)
        );
    }
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The last lines of the node.log in data directory `dir`.
pub fn node_log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Runs `hyperfs` in data directory `dir` and parses its standard output as JSON, failing the
/// test on a non-zero exit or other output.
pub fn hyperfs_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&hyperfs_in_ok(dir, args)).expect("JSON output")
}

/// Stops the node of a data directory when dropped (a test's nodes never outlive it).
pub struct StopNode(pub PathBuf);

impl Drop for StopNode {
    fn drop(&mut self) {
        let _ = hyperfs_in(&self.0, &["stop"]);
    }
}

/// The seed of a randomised test: `HYPERFS_TEST_SEED` if set, else a random one, printed so a
/// failure can be run again.
pub fn test_seed() -> u64 {
    let seed = std::env::var("HYPERFS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("HYPERFS_TEST_SEED={seed}");
    seed
}

/// Runs every script through the JS oracle `js` (all in one `node` run) and through
/// `hyperfs <replay…> SCRIPT` (one process each), and hands each pair of JSON outputs to `check`
/// with the index and the path of the script file.
pub fn replay_both(
    js: &str,
    replay: &[&str],
    scripts: &[serde_json::Value],
    mut check: impl FnMut(usize, &Path, &serde_json::Value, &serde_json::Value),
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = dir.path().join("scripts.json");
    std::fs::write(&all, serde_json::to_vec(scripts).expect("json")).expect("write scripts");
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&node(js, &[&all])).expect("the oracle prints JSON");
    assert_eq!(theirs.len(), scripts.len(), "the oracle answers every script");
    for (i, (script, expected)) in scripts.iter().zip(&theirs).enumerate() {
        let path = dir.path().join(format!("{i}.json"));
        std::fs::write(&path, serde_json::to_vec(script).expect("json")).expect("write script");
        let mut args = replay.to_vec();
        args.push(path.to_str().expect("utf-8"));
        let ours: serde_json::Value = serde_json::from_str(&hyperfs_ok(&args)).expect("replay prints JSON");
        check(i, &path, &ours, expected);
    }
}

/// The directory of the pinned npm packages (`scripts/js`), installed by the README's commands.
pub fn js_dir() -> PathBuf {
    let dir = repo_root().join("scripts/js");
    assert!(
        dir.join("node_modules/hypercore").exists(),
        "the JS oracle is not installed in {}: run scripts/setup (the README's test command does)",
        dir.display()
    );
    dir
}

/// Runs `node scripts/js/<script> args…` and returns its standard output.
pub fn node(script: &str, args: &[&Path]) -> String {
    let dir = js_dir();
    let out = Command::new("node").arg(dir.join(script)).args(args).current_dir(&dir).output().expect("spawn node");
    assert!(out.status.success(), "node {script} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The content the crash-test writer gives block `i`: reproducible from the index alone.
pub fn crash_block(i: u64) -> Vec<u8> {
    let len = (i.wrapping_mul(7919) % (64 * 1024)) as usize;
    pseudo_random(len, i + 1)
}

/// A drive of a fresh node mounted on a temporary directory through the real kernel; the node
/// stops (and unmounts) when it is dropped.
pub struct MountedDrive {
    pub tmp: tempfile::TempDir,
    /// The node's data directory.
    pub data: PathBuf,
    /// The mount point.
    pub dir: PathBuf,
    pub name: String,
}

impl MountedDrive {
    /// Creates drive `t` on a new node and mounts it read-write.
    pub fn new() -> MountedDrive {
        MountedDrive::with(&[])
    }

    /// [`MountedDrive::new`] mounted with more arguments (`--allow-other`).
    pub fn with(mount_args: &[&str]) -> MountedDrive {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        hyperfs_in_ok(&data, &["create", "--name", "t"]);
        let m = MountedDrive { tmp, data, dir, name: "t".into() };
        let mut args = vec!["mount", "t", m.dir.to_str().expect("utf-8")];
        args.extend_from_slice(mount_args);
        m.ok(&args);
        m
    }

    /// Runs `hyperfs` against this node.
    pub fn run(&self, args: &[&str]) -> Output {
        hyperfs_in(&self.data, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        hyperfs_in_ok(&self.data, args)
    }

    /// The drive's current version.
    pub fn version(&self) -> u64 {
        let info: serde_json::Value = serde_json::from_str(&self.ok(&["info", &self.name, "--json"])).expect("json");
        info["version"].as_u64().expect("version")
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Default for MountedDrive {
    fn default() -> Self {
        MountedDrive::new()
    }
}

impl Drop for MountedDrive {
    fn drop(&mut self) {
        let _ = hyperfs_in(&self.data, &["stop"]);
        // Never let the temporary directory's removal reach into a mount that is still up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_mounted(&self.dir) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether `dir` is a mount point (from /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Whether process `pid` still runs: neither gone nor a zombie waiting for whoever inherited it
/// to reap it. A zombie leader whose other threads are still exiting runs: its files (a
/// listening socket, a store's lock) close with its last thread.
pub fn process_alive(pid: i32) -> bool {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    process_state(pid).is_some_and(|s| s != "Z" || threads > 1)
}

/// Process `pid`'s state letter (`R`, `S`, `D`, `Z`, …), or None once it is gone.
pub fn process_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?.to_owned();
    Some(state)
}

/// Waits up to `limit` for `pid` to end; says what it was doing if it did not.
pub fn wait_for_exit(pid: i32, limit: std::time::Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    while process_alive(pid) {
        if std::time::Instant::now() >= deadline {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            return Err(format!(
                "process {pid} still runs after {limit:?}: state {:?}, waiting in {wchan:?}\n{stack}",
                process_state(pid)
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Runs a bash script (`set -euo pipefail`) in `cwd`; fails the test if it fails. Returns its
/// standard output.
pub fn sh(cwd: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(cwd)
        .output()
        .expect("spawn bash");
    assert!(
        out.status.success(),
        "script failed in {}: {}\n{script}\nstdout: {}\nstderr: {}",
        cwd.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hosts as network namespaces on one bridge (`10.S.0.N/24`, S per instance), for tests where
/// nodes must be on different hosts: LAN discovery, a DHT, NAT. Commands run on a host through
/// `nsenter --net` (the mount namespace stays the test's, so FUSE mounts made there are
/// visible). Everything is removed on drop. Needs root.
pub struct Hosts {
    /// Namespace names, host 0 first.
    pub names: Vec<String>,
    bridge: String,
    subnet: u8,
    /// Extra namespaces (routers, NATed hosts) to remove on drop.
    extra: Vec<String>,
    /// Homes behind NATs made so far ([`Hosts::behind_nat`]).
    homes: u8,
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `args` inside namespace `ns`, failing the test if it fails.
pub fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter").arg(format!("--net=/run/netns/{ns}")).args(args).output().expect("run nsenter");
    assert!(out.status.success(), "in {ns}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Hosts {
    /// `n` hosts on a fresh bridge, each with its address, loopback up and routes for the
    /// bridge's subnet and for multicast.
    pub fn new(n: usize) -> Hosts {
        // Names are unique within this process (a count) and across processes (the pid); a
        // random draw alone had two tests of one run pick the same bridge. Interface names
        // stay within the kernel's 15 bytes: "hbr" + 6 + "rp" at most.
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:04x}{count:02x}", std::process::id() % 0xffff);
        let subnet = 100 + count % 100;
        let bridge = format!("hbr{tag}");
        // One left by a killed run of a process with this pid goes first.
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip_cmd(&["link", "add", &bridge, "type", "bridge", "mcast_snooping", "0"]);
        ip_cmd(&["link", "set", &bridge, "up"]);
        let mut hosts = Hosts { names: Vec::new(), bridge, subnet, extra: Vec::new(), homes: 0 };
        for i in 0..n {
            let ns = format!("h{tag}{i}");
            // Named before it is made, so a failure half-way still removes it on drop.
            hosts.names.push(ns.clone());
            hosts.attach(&ns, (i + 1) as u8);
        }
        hosts
    }

    /// Creates namespace `ns` with address `10.S.0.host` on the bridge.
    fn attach(&self, ns: &str, host: u8) {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        ip_cmd(&["netns", "add", ns]);
        let (outside, inside) = (format!("{ns}o"), format!("{ns}i"));
        ip_cmd(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
        ip_cmd(&["link", "set", &outside, "master", &self.bridge, "up"]);
        ip_cmd(&["link", "set", &inside, "netns", ns]);
        in_ns(ns, &["ip", "link", "set", "lo", "up"]);
        in_ns(ns, &["ip", "addr", "add", &format!("10.{}.0.{host}/24", self.subnet), "dev", &inside]);
        in_ns(ns, &["ip", "link", "set", &inside, "up"]);
        in_ns(ns, &["ip", "route", "add", "224.0.0.0/4", "dev", &inside]);
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.subnet, i + 1)
    }

    /// Host `i`'s IPv6 address, once [`Hosts::with_ipv6`] gave it one.
    pub fn ip6(&self, i: usize) -> String {
        format!("fd48:{}::{}", self.subnet, i + 1)
    }

    /// Gives every host an IPv6 address on the bridge ([`Hosts::ip6`], a unique local one), and
    /// with `only` takes their IPv4 addresses away: an IPv6-only LAN. Returns once the hosts'
    /// addresses, link-local ones included, are usable (past duplicate address detection).
    pub fn with_ipv6(&self, only: bool) {
        for (i, ns) in self.names.iter().enumerate() {
            let inside = format!("{ns}i");
            in_ns(ns, &["ip", "-6", "addr", "add", &format!("{}/64", self.ip6(i)), "dev", &inside, "nodad"]);
            if only {
                in_ns(ns, &["ip", "-4", "addr", "flush", "dev", &inside]);
            }
        }
        let started = std::time::Instant::now();
        for ns in &self.names {
            while !in_ns(ns, &["ip", "-6", "addr", "show", "tentative"]).trim().is_empty() {
                assert!(started.elapsed() < std::time::Duration::from_secs(10), "IPv6 addresses still tentative");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    /// The first NAT router's public address and the private address of the host behind it
    /// (see [`Hosts::behind_nat`]).
    pub fn nat_ips(&self) -> (String, String) {
        self.home_ips(0)
    }

    /// Home `k`'s router's public address (`10.S.0.(254 − k)`) and its host's private one
    /// (`192.168.S.2` for the first home, `172.(16 + k).S.2` for the others).
    pub fn home_ips(&self, k: u8) -> (String, String) {
        (format!("10.{}.0.{}", self.subnet, 254 - k), self.private(k, 2))
    }

    fn private(&self, k: u8, host: u8) -> String {
        if k == 0 {
            format!("192.168.{}.{host}", self.subnet)
        } else {
            format!("172.{}.{}.{host}", 16 + k, self.subnet)
        }
    }

    /// Home `k`'s router namespace.
    fn router(&self, k: u8) -> String {
        if k == 0 {
            format!("{}r", self.bridge)
        } else {
            format!("{}r{k}", self.bridge)
        }
    }

    /// A host behind a NAT, in a home of its own: a router namespace on the bridge that
    /// masquerades a private link to the new host ([`Hosts::home_ips`]), keeping ports as most
    /// home routers do. Returns the host's namespace. The private host reaches the bridge's
    /// hosts; they cannot reach it unless its NAT has a mapping for them.
    pub fn behind_nat(&mut self) -> String {
        let k = self.homes;
        self.homes += 1;
        let router = self.router(k);
        let host = self.home_host(k);
        self.attach(&router, 254 - k);
        let _ = Command::new("ip").args(["netns", "del", &host]).output();
        ip_cmd(&["netns", "add", &host]);
        self.extra.push(router.clone());
        self.extra.push(host.clone());
        let (r_if, h_if) = (format!("{router}p"), format!("{host}p"));
        ip_cmd(&["link", "add", &r_if, "type", "veth", "peer", "name", &h_if]);
        ip_cmd(&["link", "set", &r_if, "netns", &router]);
        ip_cmd(&["link", "set", &h_if, "netns", &host]);
        in_ns(&router, &["ip", "addr", "add", &format!("{}/24", self.private(k, 1)), "dev", &r_if]);
        in_ns(&router, &["ip", "link", "set", &r_if, "up"]);
        in_ns(&router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        // Nothing from outside reaches the private side, or the router itself, unless it answers
        // a connection from inside (OpenWrt's defaults for its WAN zone). A router that took
        // unasked packets in would keep a conntrack entry for each, and a NAT mapping its host
        // makes to the same address later would be given another port.
        let public_if = format!("{router}i");
        for chain in ["FORWARD", "INPUT"] {
            in_ns(
                &router,
                &["iptables", "-A", chain, "-i", &public_if, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
            );
        }
        self.home_random(k, false);
        in_ns(&host, &["ip", "link", "set", "lo", "up"]);
        in_ns(&host, &["ip", "addr", "add", &format!("{}/24", self.private(k, 2)), "dev", &h_if]);
        in_ns(&host, &["ip", "link", "set", &h_if, "up"]);
        in_ns(&host, &["ip", "route", "add", "default", "via", &self.private(k, 1)]);
        host
    }

    /// Home `k`'s host namespace.
    fn home_host(&self, k: u8) -> String {
        if k == 0 {
            format!("{}n", self.bridge)
        } else {
            format!("{}n{k}", self.bridge)
        }
    }

    /// Home `k`'s host's IPv6 address (`fd48:S:(k+1)::2`), once [`Hosts::homes_with_ipv6`] gave
    /// it one.
    pub fn home_ip6(&self, k: u8) -> String {
        format!("fd48:{}:{}::2", self.subnet, k + 1)
    }

    /// IPv6 everywhere, routed and never translated, beside the homes' IPv4 NATs: the bridge's
    /// hosts get [`Hosts::ip6`], each home's router `fd48:S::(254 − k)` outside and
    /// `fd48:S:(k+1)::1` inside, its host [`Hosts::home_ip6`], and every namespace on the bridge
    /// a route to each home's prefix through its router. With `guarded`, the routers drop
    /// unasked IPv6 packets coming in, as home routers' IPv6 firewalls do.
    pub fn homes_with_ipv6(&self, guarded: bool) {
        self.with_ipv6(false);
        let routers: Vec<String> = (0..self.homes).map(|k| self.router(k)).collect();
        for k in 0..self.homes {
            let (router, host) = (self.router(k), self.home_host(k));
            let outside = format!("fd48:{}::{}/64", self.subnet, 254 - k);
            in_ns(&router, &["ip", "-6", "addr", "add", &outside, "dev", &format!("{router}i"), "nodad"]);
            let inside = format!("fd48:{}:{}::1/64", self.subnet, k + 1);
            in_ns(&router, &["ip", "-6", "addr", "add", &inside, "dev", &format!("{router}p"), "nodad"]);
            in_ns(&router, &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
            if guarded {
                let public_if = format!("{router}i");
                let drop = ["-A", "FORWARD", "-i", &public_if, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"];
                let mut rule = vec!["ip6tables"];
                rule.extend_from_slice(&drop);
                in_ns(&router, &rule);
            }
            in_ns(
                &host,
                &["ip", "-6", "addr", "add", &format!("{}/64", self.home_ip6(k)), "dev", &format!("{host}p"), "nodad"],
            );
            in_ns(
                &host,
                &["ip", "-6", "route", "add", "default", "via", &format!("fd48:{}:{}::1", self.subnet, k + 1)],
            );
        }
        for ns in self.names.iter().chain(&routers) {
            for j in 0..self.homes {
                if *ns == self.router(j) {
                    continue;
                }
                let prefix = format!("fd48:{}:{}::/64", self.subnet, j + 1);
                in_ns(ns, &["ip", "-6", "route", "add", &prefix, "via", &format!("fd48:{}::{}", self.subnet, 254 - j)]);
            }
        }
    }

    /// How the first home's NAT maps its host's ports (see [`Hosts::home_random`]).
    pub fn nat_random(&self, random: bool) {
        self.home_random(0, random);
    }

    /// How home `k`'s NAT maps its host's ports: kept (as most home routers do, MASQUERADE's
    /// default) or a new random one for each destination (`--random-fully`).
    pub fn home_random(&self, k: u8, random: bool) {
        let router = self.router(k);
        let (nat_src, public_if) = (format!("{}/24", self.private(k, 0)), format!("{router}i"));
        in_ns(&router, &["iptables", "-t", "nat", "-F", "POSTROUTING"]);
        let mut rule =
            vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", &nat_src, "-o", &public_if, "-j", "MASQUERADE"];
        if random {
            rule.push("--random-fully");
        }
        in_ns(&router, &rule);
        // Mappings made under the old rule go.
        let _ = Command::new("nsenter").arg(format!("--net=/run/netns/{router}")).args(["conntrack", "-F"]).output();
    }

    /// Whether home `k`'s router drops unasked packets to itself (as it does at first, like
    /// OpenWrt) or takes them in (then it keeps a conntrack entry for each, and a mapping its
    /// host makes to the same address later is given another port).
    pub fn home_guarded(&self, k: u8, guarded: bool) {
        let router = self.router(k);
        let public_if = format!("{router}i");
        let rule = ["INPUT", "-i", &public_if, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"];
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{router}"))
            .arg("iptables")
            .arg("-D")
            .args(rule)
            .output();
        if guarded {
            let mut add = vec!["iptables", "-A"];
            add.extend_from_slice(&rule);
            in_ns(&router, &add);
        }
    }

    /// Home `k`'s NAT forgets a UDP mapping after `secs` seconds without packets (one that saw
    /// packets both ways after `secs` + 3), as mobile and some home NATs do; Linux's defaults
    /// are 30 and 120.
    pub fn home_udp_timeout(&self, k: u8, secs: u32) {
        let router = self.router(k);
        in_ns(&router, &["sysctl", "-q", "-w", &format!("net.netfilter.nf_conntrack_udp_timeout={secs}")]);
        in_ns(&router, &["sysctl", "-q", "-w", &format!("net.netfilter.nf_conntrack_udp_timeout_stream={}", secs + 3)]);
    }

    /// Starts hyperdht's testnet of `n` JS nodes on host `i` (`scripts/js/nat-peer.js`);
    /// returns it (killed when dropped) and its bootstrap addresses.
    pub fn hyperdht(&self, i: usize, n: usize) -> (KillOnDrop, Vec<String>) {
        self.hyperdht_joining(i, n, None)
    }

    /// As [`Hosts::hyperdht`], the nodes joining the DHT of `bootstrap` when given (whose
    /// addresses are then the ones returned).
    pub fn hyperdht_joining(&self, i: usize, n: usize, bootstrap: Option<&str>) -> (KillOnDrop, Vec<String>) {
        let dir = js_dir();
        let mut node = Command::new("node");
        node.arg(dir.join("nat-peer.js")).args(["testnet", &self.ip(i), &n.to_string()]).current_dir(&dir);
        if let Some(b) = bootstrap {
            node.arg(b);
        }
        let (child, first) = self.start_in(i, node);
        let bootstrap =
            first["bootstrap"].as_array().expect("bootstrap").iter().map(|b| b.as_str().expect("addr").to_owned());
        (KillOnDrop(child), bootstrap.collect())
    }

    /// Starts `cmd` on host `i` (through `nsenter`, standard input and output piped) and
    /// returns it with the JSON of its first line of output.
    fn start_in(&self, i: usize, cmd: Command) -> (std::process::Child, serde_json::Value) {
        Hosts::start_on(&self.names[i], cmd)
    }

    /// Starts `scripts/js/SCRIPT args…` on namespace `ns`; returns it (killed when dropped)
    /// with the JSON of its first line of output.
    pub fn start_js(ns: &str, script: &str, args: &[&str]) -> (KillOnDrop, serde_json::Value) {
        let dir = js_dir();
        let mut node = Command::new("node");
        node.arg(dir.join(script)).args(args).current_dir(&dir);
        let (child, first) = Hosts::start_on(ns, node);
        (KillOnDrop(child), first)
    }

    /// Runs `scripts/js/SCRIPT args…` on namespace `ns` to its end; the JSON of its last line.
    pub fn run_js(ns: &str, script: &str, args: &[&str]) -> serde_json::Value {
        let dir = js_dir();
        let mut all = vec!["node".to_owned(), dir.join(script).display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = in_ns(ns, &all);
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: {last:?}: {e}"))
    }

    /// Starts `cmd` on namespace `ns` (as [`Hosts::start_in`]).
    fn start_on(ns: &str, cmd: Command) -> (std::process::Child, serde_json::Value) {
        use std::io::BufRead;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .current_dir(cmd.get_current_dir().unwrap_or(Path::new(".")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?} on {ns}: {e}", cmd.get_program()));
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufReader::new(out).read_line(&mut line).expect("a first line of output");
        let first = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        (child, first)
    }

    /// Runs `hyperfs --data-dir DIR args…` on host namespace `ns`.
    pub fn hyperfs(ns: &str, dir: &Path, args: &[&str]) -> Output {
        Hosts::hyperfs_env(ns, dir, args, &[])
    }

    /// As [`Hosts::hyperfs`] with environment variables set (a node the command starts takes
    /// them: `RUST_LOG`, `HYPERFS_TRANSPORT`).
    pub fn hyperfs_env(ns: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(hyperfs_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("spawn hyperfs in a namespace")
    }

    /// As [`Hosts::hyperfs`], failing the test on a non-zero exit; returns standard output.
    pub fn hyperfs_ok(ns: &str, dir: &Path, args: &[&str]) -> String {
        let out = Hosts::hyperfs(ns, dir, args);
        assert!(
            out.status.success(),
            "hyperfs {args:?} on {ns} failed: {}\n{}\nthe end of node.log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            node_log_tail(dir)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Starts a private Mainline DHT of `n` nodes on host `i` (the `dht-testnet` helper);
    /// returns it (it stops when dropped) and its bootstrap addresses.
    pub fn dht(&self, i: usize, n: usize) -> (std::process::Child, Vec<String>) {
        let mut helper = Command::new(hyperfs_bin().with_file_name("dht-testnet"));
        helper.arg(self.ip(i)).arg(n.to_string());
        let (child, first) = self.start_in(i, helper);
        (child, serde_json::from_value(first).expect("a JSON list of addresses"))
    }
}

/// A child process killed when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.names.iter().chain(&self.extra) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// A script of `scripts/js` run as a peer: a JSON command per line in, a JSON answer per line
/// out; killed when dropped.
pub struct JsProcess {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Where its standard error goes, shown when it ends early.
    stderr: tempfile::NamedTempFile,
    script: String,
}

impl JsProcess {
    /// Starts `node scripts/js/<script> args…` and returns it with its first line.
    pub fn start(script: &str, args: &[&str]) -> (JsProcess, serde_json::Value) {
        let stderr = tempfile::NamedTempFile::new().expect("a file for stderr");
        let mut child = std::process::Command::new("node")
            .arg(js_dir().join(script))
            .args(args)
            .current_dir(js_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::from(stderr.reopen().expect("stderr file")))
            .spawn()
            .expect("spawn node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = JsProcess { child, stdin, stdout, stderr, script: script.to_owned() };
        let first = peer.line();
        (peer, first)
    }

    /// Its next line.
    pub fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut line).expect("read");
        if line.is_empty() {
            let err = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
            panic!("{} ended early: {err}", self.script);
        }
        serde_json::from_str(&line).expect("a JSON line")
    }

    /// Sends a command and returns the answer.
    pub fn ask(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        std::io::Write::write_all(&mut self.stdin, format!("{cmd}\n").as_bytes()).expect("write");
        self.line()
    }
}

impl Drop for JsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
