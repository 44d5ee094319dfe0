//! The node: one process per data directory that owns the store and the drives, serving the
//! other commands over a control socket (`node.sock` in the data directory, mode 0600).
//!
//! The protocol ([`crate::control`], its types in [`crate::api`]) is one JSON request per line,
//! answered by progress and bytes frames and one reply: `{"cmd": "create", ...}` →
//! `{"ok": {...}}` or `{"error": "one explaining line"}`. The handlers are in `handle`, mounts in `mounts`,
//! replicas and shares in `replicas`; this file has the process, its data directory and its
//! drives.
//!
//! Layout of a data directory: `hyperfs.dir` (the marker that says it is ours), `primary.key`
//! (32 random bytes, mode 0600, from which drive keys derive), `drives.json` (local names →
//! keys), `store/` (RocksDB), and while a node runs `node.sock`, `node.pid`; `node.log`.
//!
//! Invariant: only the node opens the store while it runs (RocksDB's lock makes a second node
//! fail with a clear error); SIGINT and SIGTERM close the socket and flush the store before exit.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use hyperfs_engine::crypto::{z32_encode, CoreKey};
use hyperfs_engine::drive::{keys, Drive, Entry, PutOptions, SharedDrive};
use hyperfs_engine::store::{RocksStore, Store};
use serde_json::{json, Value};

use crate::api::{self, NetOptions, Request};
use crate::control::Out;

mod handle;
mod mounts;
mod multi;
mod replicas;

use handle::*;
use mounts::*;
use replicas::*;

const MARKER: &str = "hyperfs.dir";
const MARKER_TEXT: &str = "hyperfs data directory, layout 1\n";

/// The control socket of the data directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("node.sock")
}

/// Makes `dir` a hyperfs data directory, or checks that it is one. A non-empty directory
/// without the marker belongs to something else and is refused. The directory holds every
/// drive's secret key: it is made 0700, and one that another user owns or that group or others
/// may enter is refused with the fix to run (as ssh refuses a loose `~/.ssh`).
pub fn claim_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating the data directory {}", dir.display())),
    }
    let marker = dir.join(MARKER);
    if marker.exists() {
        let text = std::fs::read_to_string(&marker).with_context(|| format!("reading {}", marker.display()))?;
        if text != MARKER_TEXT {
            bail!("{} was written by another version of hyperfs ({:?})", marker.display(), text.trim());
        }
        return check_private(dir);
    }
    let foreign = std::fs::read_dir(dir)?.next().is_some();
    if foreign {
        bail!("{} is not empty and is not a hyperfs data directory; choose another --data-dir", dir.display());
    }
    // An empty directory given to hyperfs becomes private before anything is put in it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    check_private(dir)?;
    write_state(dir, MARKER, MARKER_TEXT.as_bytes())?;
    Ok(())
}

/// Whether `dir` holds a hyperfs data directory's marker.
pub fn is_data_dir(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

/// Refuses a data directory that another user owns or that group or others may enter: it
/// holds every drive's secret key. Checked whenever a command uses it, as ssh checks `~/.ssh`.
pub fn check_private(dir: &Path) -> Result<()> {
    let m = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if m.uid() != me && me != 0 {
        bail!("the data directory {} belongs to uid {}, not to you (uid {me})", dir.display(), m.uid());
    }
    if m.mode() & 0o077 != 0 {
        bail!(
            "the data directory {} may be read by other users (mode {:o}) and holds secret keys; run: chmod 700 {}",
            dir.display(),
            m.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// Replaces `file` of the data directory atomically and privately: a new temporary file (mode
/// 0600, never opened through a symlink: a stale one is removed first), synced, renamed over.
pub fn write_state(dir: &Path, file: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{file}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", tmp.display()))
        }
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("replacing {file}"))?;
    Ok(())
}

/// How the log names a drive given by its key: a key is the capability to read the drive, so
/// the log gets the first bytes of its discovery key instead (what peers see on the wire).
fn log_id(key: &str) -> String {
    match crate::local::parse_key(key) {
        Ok(k) => format!("dk:{}", &hex::encode(hyperfs_engine::crypto::discovery_key(&k))[..16]),
        Err(_) => key.to_owned(),
    }
}

/// The uid of the process at the other end of a control connection (`SO_PEERCRED`).
fn peer_uid(conn: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a socket we hold and a ucred buffer of the length given.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(conn),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

struct State {
    /// The node's state itself, for the threads it starts.
    me: std::sync::Weak<State>,
    dir: PathBuf,
    store: Arc<RocksStore>,
    primary: [u8; 32],
    names: Mutex<BTreeMap<String, String>>,
    drives: Mutex<BTreeMap<CoreKey, Arc<SharedDrive>>>,
    /// Mounted drives by mount point.
    mounts: Mutex<BTreeMap<PathBuf, Mount>>,
    /// Mount points whose drive published a version (see [`watch_mounts`]).
    mount_changed: std::sync::mpsc::Sender<PathBuf>,
    /// The network, started by the first command that needs it.
    net: Mutex<Option<Arc<crate::share::Net>>>,
    /// Serialises read-modify-write changes to `replicas.json` and `shared.json`.
    state_files: Mutex<()>,
    stopping: AtomicBool,
    /// Bytes made garbage since the last collection (by `prune`, `truncate`, `drives rm`), as
    /// far as the node knows; past [`GC_AFTER`] a collection runs in the background.
    garbage: std::sync::atomic::AtomicU64,
    collect: std::sync::mpsc::SyncSender<()>,
    /// The multi-writer drives this node is a member of, by its own drive's key.
    multi: Mutex<BTreeMap<CoreKey, Arc<multi::Member>>>,
}

/// Garbage that starts a collection in the background, unless `HYPERFS_GC_AFTER` says
/// otherwise (a size, or `off`).
const GC_AFTER: u64 = 64 << 20;

fn gc_after() -> u64 {
    static AFTER: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *AFTER.get_or_init(|| match std::env::var("HYPERFS_GC_AFTER") {
        Ok(v) if v == "off" => u64::MAX,
        Ok(v) => crate::cache::parse_size(&v).unwrap_or(GC_AFTER),
        Err(_) => GC_AFTER,
    })
}

/// `bytes` were made garbage: a collection runs in the background once enough is.
fn garbage_made(state: &State, bytes: u64) {
    let total = state.garbage.fetch_add(bytes, Ordering::SeqCst) + bytes;
    if total >= gc_after() {
        // A collection already waiting takes this garbage too.
        let _ = state.collect.try_send(());
    }
}

/// Runs the node's collections in the background, one at a time: mounts, writes and peers go on
/// beside them (see `hyperfs_engine::gc`).
fn collect_in_the_background(state: &Arc<State>, wake: std::sync::mpsc::Receiver<()>) {
    let state = Arc::downgrade(state);
    let spawned = std::thread::Builder::new().name("hyperfs-gc".into()).spawn(move || {
        while wake.recv().is_ok() {
            let Some(state) = state.upgrade() else { return };
            if state.stopping.load(Ordering::SeqCst) {
                return;
            }
            state.garbage.store(0, Ordering::SeqCst);
            let started = std::time::Instant::now();
            match hyperfs_engine::gc::collect(&*state.store) {
                Ok(c) => tracing::info!(
                    blocks = c.blocks_removed,
                    freed = c.bytes_freed,
                    seconds = started.elapsed().as_secs_f64(),
                    "garbage collected in the background"
                ),
                Err(e) => tracing::warn!(error = %e, "collecting garbage in the background"),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting the garbage collector");
    }
}

/// Runs the node in the foreground until `stop`, SIGINT or SIGTERM; with `net_options` (those
/// of `hyperfs daemon`), its network starts at once with them.
pub fn run(dir: &Path, net_options: Option<NetOptions>) -> Result<()> {
    // Everything the node makes (RocksDB's files, staging, the socket) is the user's alone.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
    claim_dir(dir)?;
    // Signals go to one waiting thread, so every other thread runs undisturbed.
    let signals = block_stop_signals();
    let store = Arc::new(RocksStore::open(&dir.join("store"))?);
    // After a crash or power cut: blocks that never reached the disk are found, replicas will
    // fetch them again and own drives roll back to their latest whole version.
    // A recovery that fails is reported and the node still starts: what it could not mend
    // shows as damage of the cores concerned (`verify`), never as a store that will not open.
    match hyperfs_engine::recover::recover(&(store.clone() as Arc<dyn Store>)) {
        Ok(recovered) => recovered.iter().for_each(|r| tracing::warn!("recovery: {r}")),
        Err(e) => tracing::error!("recovery after an unclean stop failed: {e}"),
    }
    let sock = socket_path(dir);
    if sock.exists() {
        if UnixStream::connect(&sock).is_ok() {
            bail!("a node already serves {}", dir.display());
        }
        std::fs::remove_file(&sock).with_context(|| format!("removing the stale socket {}", sock.display()))?;
    }
    let listener = UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    let (mount_changed, mount_changes) = std::sync::mpsc::channel();
    let (collect, collect_wake) = std::sync::mpsc::sync_channel(1);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    let (primary, names) = (primary_key(dir)?, read_names(dir)?);
    let state = Arc::new_cyclic(|me| State {
        me: me.clone(),
        dir: dir.to_path_buf(),
        store,
        primary,
        names: Mutex::new(names),
        drives: Mutex::new(BTreeMap::new()),
        mounts: Mutex::new(BTreeMap::new()),
        mount_changed,
        net: Mutex::new(None),
        state_files: Mutex::new(()),
        stopping: AtomicBool::new(false),
        garbage: Default::default(),
        collect,
        multi: Mutex::new(BTreeMap::new()),
    });
    // The daemon's own network options come first: the shares and replicas resumed next then
    // use its network rather than start one on the remembered address.
    if let Some(r) = &net_options {
        let n = net(&state, r)?;
        let peers = &r.peers;
        if !peers.is_empty() {
            n.connect(peers)?;
        }
    }
    sync_in_the_background(&state);
    collect_in_the_background(&state, collect_wake);
    resume_replicas(&state);
    resume_shares(&state);
    multi::resume_members(&state);
    watch_mounts(&state, mount_changes)?;
    write_state(dir, "node.pid", format!("{}\n", std::process::id()).as_bytes())?;
    tracing::info!(dir = %dir.display(), "node started");
    {
        let state = state.clone();
        std::thread::spawn(move || {
            if let Some(set) = signals {
                let mut sig = 0;
                // SAFETY: `set` is an initialised signal set; sigwait only writes `sig`.
                unsafe { libc::sigwait(&set, &mut sig) };
                tracing::info!(signal = sig, "stopping");
            }
            state.stopping.store(true, Ordering::SeqCst);
        });
    }
    // The accept loop wakes at least once a second to notice a stop request, and a data
    // directory that was removed (a deleted test directory, a wiped disk): a node then stops
    // instead of serving a store nobody can reach.
    let marker = dir.join(MARKER);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    while !state.stopping.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the listener, which lives across the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if !marker.exists() {
            tracing::warn!("the data directory is gone; stopping");
            break;
        }
        if ready <= 0 {
            continue;
        }
        let Ok((conn, _)) = listener.accept() else { continue };
        let state = state.clone();
        std::thread::spawn(move || {
            if serve(&state, conn) {
                state.stopping.store(true, Ordering::SeqCst);
            }
        });
    }
    let _ = std::fs::remove_file(&sock);
    // Open files are written as their handles close; a mount still busy is detached.
    let mounts = std::mem::take(&mut *state.mounts.lock().unwrap_or_else(|e| e.into_inner()));
    for (dir, mut m) in mounts {
        let _ = m.mounted.fs().sync();
        if let Err(e) = m.mounted.unmount(false).or_else(|_| m.mounted.unmount(true)) {
            tracing::warn!(dir = %dir.display(), error = %e, "unmounting");
        }
    }
    // Peers hear we are leaving (and turn to others at once).
    if let Some(net) = state.net.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        net.endpoint.shutdown();
    }
    state.store.flush()?;
    // Last: `hyperfs stop` waits for this file to go.
    let _ = std::fs::remove_file(dir.join("node.pid"));
    tracing::info!("node stopped");
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread and the threads it starts; the returned set is
/// waited on by the signal thread.
fn block_stop_signals() -> Option<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; pthread_sigmask
    // only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        (libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0).then_some(set)
    }
}

/// Serves one connection; returns whether it asked the node to stop.
fn serve(state: &State, conn: UnixStream) -> bool {
    let Ok(mut writer) = conn.try_clone() else { return false };
    // The socket is 0600 in a 0700 directory; the peer's uid is checked all the same (a
    // descriptor passed on, a directory opened up by hand): its owner or root only.
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match peer_uid(&conn) {
        Some(uid) if uid == me || uid == 0 => {}
        uid => {
            tracing::warn!(?uid, "refused a control connection from another user");
            let reply = json!({"error": "this node serves only the user who runs it"});
            let _ = writer.write_all(format!("{reply}\n").as_bytes());
            return false;
        }
    }
    let Ok(mut stream) = conn.try_clone() else { return false };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let request = serde_json::from_str::<Request>(&line);
        let stop = matches!(request, Ok(Request::Stop));
        // Long requests send lines before their reply: progress, or the bytes of a file. A
        // client that has gone away (Ctrl-C) makes the send fail, and the work stops.
        let mut emit = |out: Out<'_>| crate::control::write_out(&mut stream, out).is_ok();
        let reply = match request {
            Ok(r) => handle(state, &r, &mut emit).map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("malformed request: {e}")),
        };
        if crate::control::write_reply(&mut writer, reply).is_err() {
            break;
        }
        if stop {
            return true;
        }
    }
    false
}

/// How long a committed version may wait to be synced to disk: what a power cut can take
/// (as the kernel's own writeback, `dirty_expire_centisecs`), and what the recovery after one
/// has to check.
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Syncs the store every [`SYNC_EVERY`] when something was committed since the last sync.
fn sync_in_the_background(state: &Arc<State>) {
    let state = Arc::downgrade(state);
    let spawned = std::thread::Builder::new().name("hyperfs-sync".into()).spawn(move || loop {
        std::thread::sleep(SYNC_EVERY);
        let Some(state) = state.upgrade() else { return };
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        if state.store.unsynced() {
            if let Err(e) = state.store.flush() {
                tracing::warn!(error = %e, "syncing the store");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting the sync thread");
    }
}

/// The node's network, started on first use: listening on the request's `listen`, finding
/// peers as its `bootstrap`, `noDht` and `noLan` say (remembered in `discovery.json` for the
/// next start; later requests do not change a running network).
fn net(state: &State, r: &NetOptions) -> Result<Arc<crate::share::Net>> {
    let mut slot = state.net.lock().unwrap_or_else(|e| e.into_inner());
    let listen = r.listen.as_deref().map(crate::share::resolve).transpose()?;
    if let Some(n) = &*slot {
        // An address the running network cannot take is refused, never silently ignored.
        if let (Some(want), Ok(runs)) = (listen, n.endpoint.local_addr()) {
            let port_ok = want.port() == 0 || want.port() == runs.port();
            // A network on every interface serves a request for one of them.
            let ip_ok = want.ip() == runs.ip() || runs.ip().is_unspecified();
            if !(port_ok && ip_ok) {
                bail!(
                    "the node's network already listens on {runs}; --listen {want} takes effect when it starts: \
                     run `hyperfs stop`, then this command again (or `hyperfs daemon --listen {want}`)"
                );
            }
        }
        if let Some(size) = r.cache_size {
            n.set_cache_limit(size)?;
        }
        for (transport, addr) in wire_listens(r) {
            if let Some(addr) = addr {
                n.listen_wire(&state.dir, transport, addr)?;
            }
        }
        return Ok(n.clone());
    }
    let asked = !r.bootstrap.is_empty()
        || r.no_dht
        || r.no_lan
        || !r.hyperdht_bootstrap.is_empty()
        || r.no_hyperdht
        || r.relay
        || !r.relay_through.is_empty()
        || r.hyperdht_node.is_some();
    let discovery: crate::swarm::Discovery = if asked {
        let d = crate::swarm::Discovery {
            bootstrap: r.bootstrap.clone(),
            no_dht: r.no_dht,
            no_lan: r.no_lan,
            hyperdht_bootstrap: r.hyperdht_bootstrap.clone(),
            no_hyperdht: r.no_hyperdht,
            relay: r.relay,
            relay_through: r.relay_through.clone(),
            hyperdht_node: r.hyperdht_node.clone(),
        };
        write_json(&state.dir, "discovery.json", &d)?;
        d
    } else {
        read_json(&state.dir, "discovery.json")?
    };
    let n = crate::share::Net::start(&state.dir, listen, &discovery, state.store.clone())?;
    if let Some(size) = r.cache_size {
        n.set_cache_limit(size)?;
    }
    // The JS wire over TCP and UDX: as asked, else as the last start had it (its port, or any
    // port when that one is taken now, as for QUIC).
    for (transport, addr) in wire_listens(r) {
        if let Some(addr) = addr {
            n.listen_wire(&state.dir, transport, addr)?;
            continue;
        }
        let remembered = std::fs::read_to_string(state.dir.join(format!("{}.addr", transport.name())));
        let Some(last) = remembered.ok().and_then(|s| s.trim().parse::<std::net::SocketAddr>().ok()) else { continue };
        if n.listen_wire(&state.dir, transport, &last.to_string()).is_err() {
            let any = std::net::SocketAddr::new(last.ip(), 0);
            n.listen_wire(&state.dir, transport, &any.to_string())?;
        }
    }
    // A small cache is not to be outgrown by the block log's space allocated ahead.
    state.store.limit_allocate_ahead(n.cache.limit() / 16);
    *slot = Some(n.clone());
    Ok(n)
}

/// The JS-wire listens asked for (`--tcp`, `--udx`).
fn wire_listens(r: &NetOptions) -> [(hyperfs_net::Transport, Option<&String>); 2] {
    [(hyperfs_net::Transport::Tcp, r.tcp.as_ref()), (hyperfs_net::Transport::Udx, r.udx.as_ref())]
}

/// The JSON state file `file` of the data directory (`drives.json`, `replicas.json`, …): its
/// default when it does not exist yet, an error when it is damaged or unreadable.
fn read_json<T: serde::de::DeserializeOwned + Default>(dir: &Path, file: &str) -> Result<T> {
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn create(state: &State, name: Option<&str>) -> Result<api::Named> {
    let mut names = state.names.lock().unwrap_or_else(|e| e.into_inner());
    let name = match name {
        Some(n) => {
            if names.contains_key(n) {
                bail!("a drive named {n:?} exists already");
            }
            n.to_owned()
        }
        None => (1..).map(|i| format!("drive-{i}")).find(|n| !names.contains_key(n)).expect("an unused name"),
    };
    let kp = keys::drive_key_pair(&state.primary, Some(&name));
    let removed: BTreeSet<String> = read_json(&state.dir, "removed.json")?;
    if removed.contains(&hex::encode(kp.public_key())) {
        bail!("a drive named {name:?} was removed: its key cannot be used again (readers hold its history); pick another name");
    }
    let drive = Drive::create(state.store.clone(), kp)?;
    let key = *drive.key();
    names.insert(name.clone(), hex::encode(key));
    write_names(&state.dir, &names)?;
    state.drives.lock().unwrap_or_else(|e| e.into_inner()).insert(key, SharedDrive::new(drive));
    Ok(api::Named { name, key: hex::encode(key), link: Some(format!("hyper://{}", z32_encode(&key.0))) })
}

/// Removes a drive or a replica from the node and its store (`drives rm`): it must not be
/// mounted; it stops being shared or followed, its name goes, and a drive of ours is
/// remembered as removed so that its name never makes its key again (a new history under the
/// old key would be a fork of the one peers hold).
fn remove_drive(state: &State, which: &str, yes: bool) -> Result<api::Removed> {
    let key = drive_key(state, which)?;
    let mounted = mounts_of(state, &key);
    if let Some(m) = mounted.first() {
        bail!("{which} is mounted at {}: unmount it first", m.dir.display());
    }
    let store: Arc<dyn Store> = state.store.clone();
    let drive = match state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned() {
        Some(d) => d,
        None => match Drive::open(store.clone(), &key)? {
            Some(d) => SharedDrive::new(d),
            None => bail!("no drive {which} on this node"),
        },
    };
    let (own, signer, blobs, held) = {
        let d = drive.snapshot();
        let held = d.db().core().local_bytes().unwrap_or(0) + d.blobs().local_bytes().unwrap_or(0);
        let signer = d.db().core().key_pair().map(|kp| hex::encode(kp.public_key()));
        (d.db().core().writable(), signer, *d.blobs().key(), held)
    };
    if own && !yes {
        bail!(
            "{which} is a drive you write: removing it deletes its secret key, and nobody can write it again \
             (its readers keep what they have). Run again with --yes to remove it"
        );
    }
    if let Some(n) = state.net.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        n.unshare(&drive);
        n.drop_replica(&key, &blobs);
    }
    remember_share(state, &key, None)?;
    {
        let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = read_replicas(&state.dir)?;
        if all.remove(&hex::encode(key)).is_some() {
            write_json(&state.dir, "replicas.json", &all)?;
        }
    }
    state.drives.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    drop(drive);
    if let Some(signer) = signer {
        // By the signing key: the name derives it again, whatever the key of the core.
        let mut removed: BTreeSet<String> = read_json(&state.dir, "removed.json")?;
        removed.insert(signer);
        write_json(&state.dir, "removed.json", &removed)?;
    }
    Drive::remove(&store, &key)?;
    garbage_made(state, held);
    let mut names = state.names.lock().unwrap_or_else(|e| e.into_inner());
    let name = local_name(&names, &key);
    names.retain(|_, k| *k != hex::encode(key));
    write_names(&state.dir, &names)?;
    tracing::info!(drive = %log_id(&hex::encode(key)), own, "drive removed");
    Ok(api::Removed { name, key: hex::encode(key), own })
}

/// What the store and its drives take on disk (`du`).
fn usage(state: &State, only: Option<&str>) -> Result<api::Usage> {
    let du = state.store.disk_usage()?;
    let names = state.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let shown: Option<CoreKey> = only.map(|which| drive_key(state, which)).transpose()?;
    let all: Vec<CoreKey> = names.values().filter_map(|k| crate::local::parse_key(k).ok()).collect();
    // Every drive's blocks, to tell those shared with another drive (stored once for both).
    let mut held: Vec<(CoreKey, Arc<Drive>, std::collections::HashSet<hyperfs_engine::crypto::Hash>)> = Vec::new();
    let mut holders: std::collections::HashMap<hyperfs_engine::crypto::Hash, u32> = std::collections::HashMap::new();
    for key in shown.iter().chain(all.iter().filter(|k| Some(**k) != shown)) {
        let drive = match open_drive(state, &hex::encode(key)) {
            Ok(d) => d,
            Err(e) if shown == Some(*key) => return Err(e),
            Err(_) => continue,
        };
        let d = drive.snapshot();
        let mut leaves = d.db().core().local_leaves()?;
        leaves.extend(d.blobs().local_leaves()?);
        for l in &leaves {
            *holders.entry(*l).or_default() += 1;
        }
        held.push((*key, d, leaves));
    }
    let mut drives = Vec::new();
    for (key, d, leaves) in &held {
        if shown.is_some_and(|s| s != *key) {
            continue;
        }
        let (db, blobs) = (d.db().core(), d.blobs());
        let (mut on_disk, mut shared) = (0u64, 0u64);
        for l in leaves {
            let n = state.store.stored_len(l)?.unwrap_or(0) as u64;
            on_disk += n;
            if holders.get(l).copied().unwrap_or(0) > 1 {
                shared += n;
            }
        }
        drives.push(api::DriveUsage {
            name: local_name(&names, key),
            key: hex::encode(key),
            own: db.writable(),
            blocks: db.local_blocks() + blobs.local_blocks(),
            bytes: db.local_bytes()? + blobs.local_bytes()?,
            bytes_on_disk: on_disk,
            shared_bytes: shared,
        });
    }
    Ok(api::Usage {
        block_log: du.block_log,
        blocks: du.blocks,
        unused: du.block_log.saturating_sub(du.blocks),
        database: du.database,
        total: du.block_log + du.database,
        drives,
        cache: state.net.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|n| n.cache.usage(&n.sparse_cores())),
    })
}

/// The local name of the drive with `key`, if it has one.
fn local_name(names: &BTreeMap<String, String>, key: &CoreKey) -> Option<String> {
    let hexkey = hex::encode(key);
    names.iter().find(|(_, k)| **k == hexkey).map(|(n, _)| n.clone())
}

/// The key of a drive given by local name or key.
fn drive_key(state: &State, which: &str) -> Result<CoreKey> {
    let named = state.names.lock().unwrap_or_else(|e| e.into_inner()).get(which).cloned();
    match named {
        Some(k) => crate::local::parse_key(&k),
        None => crate::local::parse_key(which).map_err(|_| anyhow!("no drive named {which:?} and not a key")),
    }
}

/// A drive by local name or key, opened once and kept.
fn open_drive(state: &State, which: &str) -> Result<Arc<SharedDrive>> {
    let key = drive_key(state, which)?;
    let mut drives = state.drives.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = drives.get(&key) {
        return Ok(d.clone());
    }
    let store: Arc<dyn Store> = state.store.clone();
    let drive = Drive::open(store, &key)?.ok_or_else(|| anyhow!("no drive {} on this node", hex::encode(key)))?;
    let d = SharedDrive::new(drive);
    drives.insert(key, d.clone());
    Ok(d)
}

fn primary_key(dir: &Path) -> Result<[u8; 32]> {
    Ok(hyperfs_engine::crypto::secret_seed_file(&dir.join("primary.key"))?)
}

fn read_names(dir: &Path) -> Result<BTreeMap<String, String>> {
    read_json(dir, "drives.json")
}

fn write_names(dir: &Path, names: &BTreeMap<String, String>) -> Result<()> {
    write_json(dir, "drives.json", names)
}

/// [`read_json`] for the rest of the binary.
pub(crate) fn read_state_json<T: serde::de::DeserializeOwned + Default>(dir: &Path, file: &str) -> Result<T> {
    read_json(dir, file)
}

/// [`write_json`] for the rest of the binary.
pub(crate) fn write_state_json(dir: &Path, file: &str, value: &impl serde::Serialize) -> Result<()> {
    write_json(dir, file, value)
}

/// Replaces the JSON state file `file` of the data directory ([`write_state`]).
fn write_json(dir: &Path, file: &str, value: &impl serde::Serialize) -> Result<()> {
    write_state(dir, file, serde_json::to_string_pretty(value)?.as_bytes())
}
