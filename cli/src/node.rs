//! The node: one process per data directory that owns the store and the drives, serving the
//! other commands over a control socket (`node.sock` in the data directory, mode 0600).
//!
//! The protocol is one JSON request per line and one JSON reply per line:
//! `{"cmd": "create", ...}` → `{"ok": {...}}` or `{"error": "one explaining line"}`.
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
use hyperfs_engine::crypto::{z32_encode, Hash};

use crate::control::Out;
use hyperfs_engine::drive::{keys, Drive, Entry, PutOptions, SharedDrive};
use hyperfs_engine::store::{RocksStore, Store};
use serde_json::{json, Value};

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

/// The proof of a writer's two histories, as `info --json` shows it.
fn conflict_json(c: &hyperfs_engine::hypercore::Conflict) -> Value {
    let state = |s: &hyperfs_engine::hypercore::SignedState| json!({"length": s.length, "treeHash": hex::encode(s.tree_hash), "signature": hex::encode(&s.signature)});
    json!({"fork": c.fork, "ours": state(&c.ours), "theirs": state(&c.theirs), "node": c.node})
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
    dir: PathBuf,
    store: Arc<RocksStore>,
    primary: [u8; 32],
    names: Mutex<BTreeMap<String, String>>,
    drives: Mutex<BTreeMap<Hash, Arc<SharedDrive>>>,
    /// Mounted drives by mount point.
    mounts: Mutex<BTreeMap<PathBuf, Mount>>,
    /// Mount points whose drive published a version (see [`watch_mounts`]).
    mount_changed: std::sync::mpsc::Sender<PathBuf>,
    /// The network, started by the first command that needs it.
    net: Mutex<Option<Arc<crate::share::Net>>>,
    /// Serialises read-modify-write changes to `replicas.json` and `shared.json`.
    state_files: Mutex<()>,
    stopping: AtomicBool,
}

struct Mount {
    mounted: hyperfs_fs::Mounted,
    key: Hash,
    version: Option<u64>,
    /// The drive, and the listener that tells [`watch_mounts`] of its versions (live mounts).
    listening: Option<(Arc<SharedDrive>, u64)>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some((drive, listener)) = &self.listening {
            drive.off(*listener);
        }
    }
}

/// Live mounts whose drive moved on other than through the mount (a peer's version of a
/// replica, a change from the command line) have the kernel forget what it cached, so new,
/// changed and removed files show at once: names and attributes would otherwise show for
/// their cache TTL, and listings, which the kernel keeps until the directory changes through
/// the mount, until then. The thread sleeps until a drive publishes a version.
fn watch_mounts(state: &Arc<State>, changed: std::sync::mpsc::Receiver<PathBuf>) {
    let state = Arc::downgrade(state);
    std::thread::Builder::new()
        .name("hyperfs-invalidate".into())
        .spawn(move || {
            while let Ok(first) = changed.recv() {
                let dirs: BTreeSet<PathBuf> = std::iter::once(first).chain(changed.try_iter()).collect();
                let Some(state) = state.upgrade() else { return };
                let mut mounts = state.mounts.lock().unwrap_or_else(|e| e.into_inner());
                for dir in dirs {
                    if let Some(m) = mounts.get_mut(&dir) {
                        if m.mounted.fs().changed_elsewhere() {
                            m.mounted.invalidate();
                        }
                    }
                }
            }
        })
        .expect("spawning the mount watcher");
}

/// Runs the node in the foreground until `stop`, SIGINT or SIGTERM; with `net_options` (those
/// of `hyperfs daemon`), its network starts at once with them.
pub fn run(dir: &Path, net_options: Option<Value>) -> Result<()> {
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
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    let state = Arc::new(State {
        dir: dir.to_path_buf(),
        store,
        primary: primary_key(dir)?,
        names: Mutex::new(read_names(dir)?),
        drives: Mutex::new(BTreeMap::new()),
        mounts: Mutex::new(BTreeMap::new()),
        mount_changed,
        net: Mutex::new(None),
        state_files: Mutex::new(()),
        stopping: AtomicBool::new(false),
    });
    // The daemon's own network options come first: the shares and replicas resumed next then
    // use its network rather than start one on the remembered address.
    if let Some(r) = &net_options {
        let n = net(&state, r)?;
        let peers = peers_of(r);
        if !peers.is_empty() {
            n.connect(&peers)?;
        }
    }
    sync_in_the_background(&state);
    resume_replicas(&state);
    resume_shares(&state);
    watch_mounts(&state, mount_changes);
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
        let request: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => json!({"cmd": "", "malformed": e.to_string()}),
        };
        let stop = request["cmd"] == "stop";
        // Long requests send lines before their reply: progress, or the bytes of a file. A
        // client that has gone away (Ctrl-C) makes the send fail, and the work stops.
        let mut emit = |out: Out<'_>| crate::control::write_out(&mut stream, out).is_ok();
        let reply = handle(state, &request, &mut emit).map_err(|e| format!("{e:#}"));
        if crate::control::write_reply(&mut writer, reply).is_err() {
            break;
        }
        if stop {
            return true;
        }
    }
    false
}

fn handle(state: &State, r: &Value, emit: &mut dyn FnMut(Out<'_>) -> bool) -> Result<Value> {
    let s = |k: &str| r[k].as_str().ok_or_else(|| anyhow!("the request lacks {k:?}"));
    match r["cmd"].as_str().unwrap_or_default() {
        "ping" => Ok(json!({"dir": state.dir})),
        "stop" => Ok(json!({"pid": std::process::id()})),
        "create" => create(state, r["name"].as_str()),
        "sync" => {
            let mounts: Vec<_> = state
                .mounts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|m| m.mounted.fs().clone())
                .collect();
            for fs in mounts {
                fs.sync()?;
            }
            state.store.flush()?;
            Ok(json!({"synced": true}))
        }
        "drives" => {
            let names = state.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Ok(names
                .into_iter()
                .map(|(name, key)| {
                    let mounts = crate::local::parse_key(&key).map(|k| mounts_of(state, &k)).unwrap_or_default();
                    json!({"name": name, "key": key, "mounts": mounts})
                })
                .collect())
        }
        "put" => {
            let drive = open_drive(state, s("drive")?)?;
            let file = s("file")?;
            let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
            let m = f.metadata().with_context(|| format!("reading {file}"))?;
            if !m.is_file() {
                bail!("{file} is not a file (hyperfs import mirrors a folder)");
            }
            let meta = crate::mirror::meta_of(&m);
            let opts = PutOptions { executable: meta.mode & 0o100 != 0, metadata: Some(meta.to_json(None)) };
            let mut d = drive.write();
            d.put_reader(s("path")?, std::io::BufReader::new(f), &opts)?;
            Ok(json!({"version": d.version()}))
        }
        "cat" => {
            let drive = open_drive(state, s("drive")?)?;
            let path = s("path")?;
            let d = drive.snapshot();
            let entry = {
                let v = r["version"].as_u64().unwrap_or(d.version());
                let view = d.checkout(v)?;
                match view.stat(path)? {
                    Some(st) => st.entry,
                    None if view.is_dir(path)? => bail!("{path} is a folder (hyperfs ls lists it)"),
                    None => bail!("no file at {path}"),
                }
            };
            let Some(blob) = entry.blob else { return Ok(json!({})) };
            // The file goes out a window at a time, from the version it was found in.
            let mut offset = 0u64;
            loop {
                let chunk = d.read_blob(&blob, offset, 4 << 20)?;
                if chunk.is_empty() {
                    return Ok(json!({"bytes": offset}));
                }
                offset += chunk.len() as u64;
                if !emit(Out::Bytes(&chunk)) {
                    bail!("the client went away");
                }
            }
        }
        "import" | "export" => {
            let drive = open_drive(state, s("drive")?)?;
            let dir = crate::mirror::check_dir_arg(s("dir")?)?;
            let dry_run = r["dryRun"].as_bool().unwrap_or(false);
            let mut progress = |v: Value| emit(Out::Progress(v));
            if r["cmd"] == "import" {
                crate::mirror::import(&drive, &dir, s("path")?, dry_run, &mut progress)
            } else {
                let owners = r["owners"].as_bool().unwrap_or(false);
                crate::mirror::export(&drive, r["version"].as_u64(), s("path")?, &dir, dry_run, owners, &mut progress)
            }
        }
        "ls" => {
            let drive = open_drive(state, s("drive")?)?;
            let d = drive.snapshot();
            let view = d.checkout(r["version"].as_u64().unwrap_or(d.version()))?;
            let path = s("path")?;
            let describe = |name: String, entry: Option<&Entry>, dir_record: Option<Entry>| -> Result<Value> {
                let (kind, size) = match entry {
                    Some(e) if e.linkname.is_some() => ("symlink", None),
                    Some(e) => (
                        "file",
                        Some(match e.blob {
                            Some(b) => d.blob_size(&b)?,
                            None => 0,
                        }),
                    ),
                    None => ("directory", None),
                };
                let default = if entry.is_some_and(|e| e.executable) {
                    0o755
                } else if entry.is_some() {
                    0o644
                } else {
                    0o755
                };
                let metadata =
                    entry.map_or(dir_record.as_ref().and_then(|e| e.metadata.as_ref()), |e| e.metadata.as_ref());
                let mode = metadata.and_then(|m| m["mode"].as_u64()).map_or(default, |m| m & 0o7777);
                Ok(json!({"name": name, "type": kind, "size": size, "mode": mode,
                    "mtime": metadata.and_then(|m| m["mtime"].as_i64()),
                    "executable": entry.map(|e| e.executable), "linkname": entry.and_then(|e| e.linkname.clone())}))
            };
            let root = hyperfs_engine::drive::path::folder(path)?.is_empty();
            if let Some(st) = if root { None } else { view.stat(path)? } {
                return Ok(json!([describe(path.to_owned(), Some(&st.entry), None)?]));
            }
            if !view.is_dir(path)? {
                bail!("no file or folder at {path}");
            }
            let mut out = Vec::new();
            let mut folders = vec![(hyperfs_engine::drive::path::folder(path)?, String::new())];
            while let Some((folder, prefix)) = folders.pop() {
                let mut below = Vec::new();
                for c in view.children(if folder.is_empty() { "/" } else { &folder })? {
                    let name = format!("{prefix}{}", c.name);
                    let full = format!("{folder}/{}", c.name);
                    let record = if c.entry.is_none() { view.dir_entry(&full)? } else { None };
                    out.push(describe(name.clone(), c.entry.as_ref(), record)?);
                    if c.entry.is_none() && r["recursive"].as_bool().unwrap_or(false) {
                        below.push((full, format!("{name}/")));
                    }
                }
                folders.extend(below.into_iter().rev());
            }
            Ok(out.into())
        }
        "rm" => {
            let drive = open_drive(state, s("drive")?)?;
            let mut d = drive.write();
            let path = s("path")?;
            if !d.del(path)? && !d.rmdir(path)? {
                bail!("no file at {path}");
            }
            Ok(json!({"version": d.version()}))
        }
        "mv" => {
            let drive = open_drive(state, s("drive")?)?;
            let mut d = drive.write();
            d.rename(s("path")?, s("to")?)?;
            Ok(json!({"version": d.version()}))
        }
        "mkdir" => {
            let drive = open_drive(state, s("drive")?)?;
            let mut d = drive.write();
            d.mkdir(s("path")?, None)?;
            Ok(json!({"version": d.version()}))
        }
        "stat" => {
            let drive = open_drive(state, s("drive")?)?;
            let d = drive.snapshot();
            let path = s("path")?;
            let d = d.checkout(r["version"].as_u64().unwrap_or(d.version()))?;
            match d.stat(path)? {
                Some(st) => Ok(json!({
                    "path": path, "type": if st.entry.linkname.is_some() { "symlink" } else { "file" },
                    "size": st.size, "executable": st.entry.executable, "linkname": st.entry.linkname,
                    "metadata": st.entry.metadata, "seq": st.seq,
                    "blockMap": st.entry.blob.is_some_and(|b| b.block_map),
                })),
                None if d.is_dir(path)? => Ok(json!({"path": path, "type": "directory"})),
                None => bail!("no file or directory at {path}"),
            }
        }
        "log" => {
            let drive = open_drive(state, s("drive")?)?;
            let d = drive.snapshot();
            let filter = r["path"].as_str().filter(|p| *p != "/");
            let until = r["version"].as_u64().unwrap_or(u64::MAX);
            let mut out = Vec::new();
            for c in d.history(0)?.into_iter().take_while(|c| c.version <= until) {
                if filter.is_some_and(|f| c.path != f && !c.path.starts_with(&format!("{f}/"))) {
                    continue;
                }
                let size = match c.entry.as_ref().and_then(|e| e.blob) {
                    Some(b) => Some(d.blob_size(&b)?),
                    None => None,
                };
                // The time a change was made, as far as the entry tells it (hyperfs writes ctime).
                let time = c
                    .entry
                    .as_ref()
                    .and_then(|e| e.metadata.as_ref())
                    .and_then(|m| m["ctime"].as_i64().or(m["mtime"].as_i64()));
                let op = match &c.entry {
                    None => "del",
                    Some(e) if e.linkname.is_some() => "symlink",
                    Some(_) => "put",
                };
                out.push(json!({"version": c.version, "op": op, "path": c.path, "size": size, "time": time}));
            }
            Ok(out.into())
        }
        "truncate" => {
            let which = s("drive")?;
            let drive = open_drive(state, which)?;
            let version = r["version"].as_u64().ok_or_else(|| anyhow!("the request lacks \"version\""))?;
            let key = *drive.snapshot().key();
            if mounts_of(state, &key).iter().any(|m| m["readOnly"] == false) {
                bail!("{which} is mounted read-write; unmount it first");
            }
            let mut d = drive.write();
            if !d.writable() {
                bail!("{which} is not yours to truncate (this node does not hold its key)");
            }
            if version > d.version() {
                bail!("{which} has no version {version} (it is at {})", d.version());
            }
            d.truncate(version)?;
            Ok(json!({"version": d.version(), "fork": d.db().core().fork()}))
        }
        "diff" => {
            let drive = open_drive(state, s("drive")?)?;
            let d = drive.snapshot();
            let v1 = r["v1"].as_u64().ok_or_else(|| anyhow!("the request lacks \"v1\""))?;
            let v2 = r["v2"].as_u64().unwrap_or(d.version());
            let out: Vec<Value> = d
                .diff(v1, v2)?
                .into_iter()
                .map(|x| json!({"path": x.path, "change": format!("{:?}", x.kind).to_lowercase()}))
                .collect();
            Ok(out.into())
        }
        "info" => {
            let drive = open_drive(state, s("drive")?)?;
            let d = drive.snapshot();
            // Block data sent to and received from peers, both cores, since the node started.
            let (up, down) = match state.net.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(n) => {
                    let (a, b) = (n.endpoint.transferred(d.key()), n.endpoint.transferred(d.blobs().key()));
                    (a.0 + b.0, a.1 + b.1)
                }
                None => (0, 0),
            };
            let core = |c: &hyperfs_engine::Hypercore| {
                json!({"key": hex::encode(c.key()), "length": c.length(), "byteLength": c.byte_length(),
                    "localBlocks": c.local_blocks(), "totalBlocks": c.length(), "fork": c.fork(),
                    "conflict": c.stored_conflict().ok().flatten().as_ref().map(conflict_json)})
            };
            Ok(json!({
                "key": hex::encode(d.key()),
                "discoveryKey": hex::encode(d.db().core().discovery_key()),
                "link": format!("hyper://{}", z32_encode(d.key())),
                "version": d.version(),
                "writable": d.writable(),
                "db": core(d.db().core()),
                "blobs": core(d.blobs()),
                "chunker": d.preset().name,
                "mounts": mounts_of(state, d.key()),
                "bytesUploaded": up,
                "bytesDownloaded": down,
            }))
        }
        "verify" => {
            let drive = open_drive(state, s("drive")?)?;
            let d = drive.snapshot();
            let mut bad = Vec::new();
            for (name, c) in [("db", d.db().core()), ("blobs", d.blobs())] {
                match c.verify_local() {
                    Ok(blocks) => {
                        bad.extend(blocks.into_iter().map(|i| format!("{name} block {i} does not match its tree")))
                    }
                    Err(e) => bad.push(format!("{name}: {e}")),
                }
                if let Ok(Some(c)) = c.stored_conflict() {
                    bad.push(format!(
                        "{name}: the writer signed two histories on fork {} (lengths {} and {}); the proof is kept",
                        c.fork, c.ours.length, c.theirs.length
                    ));
                }
            }
            // Entries no reader follows (a climbing path, one below a link, one that does not
            // decode) are named; a tree not held whole here is checked as far as it is.
            match d.view().walk("/") {
                Ok(w) => bad.extend(w.rejected.into_iter().map(|r| format!("entry {}: {}", r.path, r.why))),
                Err(hyperfs_engine::Error::MissingBlock { .. }) => {}
                Err(e) => bad.push(format!("the file tree: {e}")),
            }
            Ok(json!({"bad": bad}))
        }
        "mount" => mount(state, s("drive")?, Path::new(s("dir")?), r),
        "unmount" => unmount(state, Path::new(s("dir")?), r["lazy"].as_bool().unwrap_or(false)),
        "dump" => crate::local::core_dump(state.store.clone(), s("key")?),
        "keys-export" => {
            let key = drive_key(state, s("drive")?)?;
            crate::local::keys_export(state.store.clone(), &key, Path::new(s("file")?))
        }
        "keys-import" => {
            let offline_ok = r["offlineOk"].as_bool().unwrap_or(false);
            let drive = crate::local::keys_import(state.store.clone(), Path::new(s("file")?), offline_ok)?;
            let key = *drive.key();
            let mut names = state.names.lock().unwrap_or_else(|e| e.into_inner());
            let hexkey = hex::encode(key);
            let name = match local_name(&names, &key) {
                Some(n) => n,
                None => {
                    let n = format!("imported-{}", &hexkey[..8]);
                    names.insert(n.clone(), hexkey.clone());
                    write_names(&state.dir, &names)?;
                    n
                }
            };
            state.drives.lock().unwrap_or_else(|e| e.into_inner()).insert(key, SharedDrive::new(drive));
            Ok(json!({"name": name, "key": hexkey}))
        }
        "share" => {
            let drive = open_drive(state, s("drive")?)?;
            let net = net(state, r)?;
            net.connect(&peers_of(r))?;
            let (key, blobs, writable) = {
                let d = drive.snapshot();
                (*d.key(), *d.blobs().key(), d.writable())
            };
            // A replica is served already, through the network's own instances of its cores.
            let served = !writable && matches!(net.replica_cores(&key, &blobs), (Some(_), Some(_)));
            let (announce, lan_only) = (r["noAnnounce"] != true, r["lanOnly"] == true);
            if served {
                net.swarm.join(&key, announce, lan_only);
            } else {
                net.share(&drive, announce, lan_only);
                remember_share(state, &key, Some((announce, lan_only)))?;
            }
            Ok(json!({"key": hex::encode(key), "link": format!("hyper://{}", z32_encode(&key)),
                "address": net.endpoint.local_addr()?.to_string()}))
        }
        "unshare" => {
            let drive = open_drive(state, s("drive")?)?;
            let net = state.net.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !net.is_some_and(|n| n.unshare(&drive)) {
                bail!("drive {} is not shared", s("drive")?);
            }
            remember_share(state, drive.snapshot().key(), None)?;
            Ok(json!({}))
        }
        "clone" => clone(state, s("key")?, r, emit),
        "peers" => {
            let peers = peers_of(r);
            if !peers.is_empty() {
                net(state, r)?.connect(&peers)?;
            }
            let net = state.net.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let peers: Vec<(hyperfs_net::PeerInfo, &str)> = net
                .map(|n| {
                    n.endpoint
                        .peers()
                        .into_iter()
                        .map(|p| {
                            let found = n.swarm.source(&p.address).name();
                            (p, found)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let names = state.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Ok(peers
                .into_iter()
                .map(|(p, found)| {
                    // The drives are the db cores replicated with the peer, by local name.
                    let drives: Vec<String> = p
                        .cores
                        .iter()
                        .filter(|k| state.drives.lock().unwrap_or_else(|e| e.into_inner()).contains_key(*k))
                        .map(|k| local_name(&names, k).unwrap_or_else(|| hex::encode(k)))
                        .collect();
                    json!({"id": hex::encode(p.id), "address": p.address.to_string(), "drives": drives, "found": found,
                        "cores": p.cores.iter().map(hex::encode).collect::<Vec<_>>(),
                        "bytesUp": p.bytes_up, "bytesDown": p.bytes_down, "rttMs": p.rtt.as_secs_f64() * 1000.0})
                })
                .collect())
        }
        "" if r.get("malformed").is_some() => bail!("malformed request: {}", r["malformed"]),
        other => bail!("unknown request {other:?}"),
    }
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
fn net(state: &State, r: &Value) -> Result<Arc<crate::share::Net>> {
    let mut slot = state.net.lock().unwrap_or_else(|e| e.into_inner());
    let listen = r["listen"].as_str().map(crate::share::resolve).transpose()?;
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
        return Ok(n.clone());
    }
    let asked = r.get("bootstrap").is_some_and(|b| b.as_array().is_some_and(|a| !a.is_empty()))
        || r["noDht"] == true
        || r["noLan"] == true;
    let discovery: crate::swarm::Discovery = if asked {
        let d = crate::swarm::Discovery {
            bootstrap: peers_from(&r["bootstrap"]),
            no_dht: r["noDht"] == true,
            no_lan: r["noLan"] == true,
        };
        write_json(&state.dir, "discovery.json", &d)?;
        d
    } else {
        read_json(&state.dir, "discovery.json")?
    };
    let n = crate::share::Net::start(&state.dir, listen, &discovery, state.store.clone())?;
    *slot = Some(n.clone());
    Ok(n)
}

fn peers_from(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect()
}

fn peers_of(r: &Value) -> Vec<String> {
    peers_from(&r["peers"])
}

/// The replicas this node keeps (`replicas.json`: key → whether it is a full copy, and the
/// peers it was reached through), re-followed when the node starts.
type Replicas = BTreeMap<String, Value>;

fn read_replicas(dir: &Path) -> Result<Replicas> {
    read_json(dir, "replicas.json")
}

fn remember_replica(state: &State, key: &Hash, full: bool, peers: &[String]) -> Result<()> {
    let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = read_replicas(&state.dir)?;
    let entry = all.entry(hex::encode(key)).or_insert_with(|| json!({"full": full, "peers": []}));
    // A sparse replica cloned later becomes a full one; never the other way.
    if full {
        entry["full"] = json!(true);
    }
    let mut known: Vec<String> = serde_json::from_value(entry["peers"].clone()).unwrap_or_default();
    for p in peers {
        if !known.contains(p) {
            known.push(p.clone());
        }
    }
    entry["peers"] = json!(known);
    write_json(&state.dir, "replicas.json", &all)
}

/// Records in `shared.json` that drive `key` is shared (with whether it is announced and on
/// the LAN only), or with `None` that it no longer is.
fn remember_share(state: &State, key: &Hash, how: Option<(bool, bool)>) -> Result<()> {
    let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = read_json::<BTreeMap<String, Value>>(&state.dir, "shared.json")?;
    match how {
        Some((announce, lan_only)) => {
            all.insert(hex::encode(key), json!({"announce": announce, "lanOnly": lan_only}));
        }
        None => {
            all.remove(&hex::encode(key));
        }
    }
    write_json(&state.dir, "shared.json", &all)
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

/// Shares again the drives this node shared before it stopped.
fn resume_shares(state: &Arc<State>) {
    let shared = match read_json::<BTreeMap<String, Value>>(&state.dir, "shared.json") {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, "not sharing again"),
    };
    let Ok(net) = net(state, &Value::Null) else { return };
    for (key, how) in shared {
        match open_drive(state, &key) {
            Ok(drive) => net.share(&drive, how["announce"] != false, how["lanOnly"] == true),
            Err(e) => tracing::warn!(drive = %log_id(&key), error = %e, "sharing again"),
        }
    }
}

/// Follows again, in the background, the replicas this node kept before it stopped.
fn resume_replicas(state: &Arc<State>) {
    let replicas = match read_replicas(&state.dir) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, "not following replicas"),
    };
    // Attached before the node answers anyone (from the store: quick), connected after.
    let mut all_peers = Vec::new();
    for (key, r) in replicas {
        let Ok(key) = crate::local::parse_key(&key) else { continue };
        let full = r["full"].as_bool().unwrap_or(false);
        if let Err(e) = replicate(state, &key, &[], &Value::Null, full) {
            tracing::warn!(drive = %log_id(&hex::encode(key)), error = %e, "following a replica");
        }
        let peers: Vec<String> = serde_json::from_value(r["peers"].clone()).unwrap_or_default();
        all_peers.extend(peers.into_iter().map(|p| (key, p)));
    }
    let Ok(net) = net(state, &Value::Null) else { return };
    // The swarm dials them (and again when they leave).
    for (key, p) in all_peers {
        match crate::share::resolve(&p) {
            Ok(addr) => net.swarm.add_peer(&key, addr),
            Err(e) => tracing::info!(peer = %p, error = %e, "a replica's peer"),
        }
    }
}

/// A replica of drive `key` followed live: from the store if this node has had it, else from
/// `peers` (its signed length and manifest first: they name the blobs core). `full` downloads
/// everything; otherwise readers fetch what they touch. Returns the drive readers use.
fn replicate(state: &State, key: &Hash, peers: &[String], r: &Value, full: bool) -> Result<Arc<SharedDrive>> {
    use std::time::{Duration, Instant};
    let net = net(state, r)?;
    let store: Arc<dyn Store> = state.store.clone();
    let db = net.add_replica(hyperfs_engine::Hypercore::open_replica(store.clone(), *key, None)?, full);
    // Found by its key: on the LAN and the DHT, as well as at the peers given.
    net.swarm.join(key, true, false);
    if let Err(e) = net.connect_for(key, peers) {
        // Known replicas still read what they hold.
        if !db.has_manifest() {
            return Err(e);
        }
        tracing::warn!(error = %e, "connecting to a replica's peers");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(db.has_manifest() && db.state().1 > 0) {
        if Instant::now() > deadline {
            bail!(
                "no peer gave drive {} within 15 s: none was found on the LAN or the DHT{}",
                hex::encode(key),
                if peers.is_empty() { " (give one with --peer HOST:PORT)" } else { ", nor at the peers given" }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let existing = state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
    if let Some(d) = existing {
        if full {
            net.set_full(d.snapshot().blobs().key());
        }
        remember_replica(state, key, full, peers)?;
        return Ok(d);
    }
    let fetch = crate::share::NetFetch::new(&net);
    let drive = Drive::open_with(store.clone(), key, Some(fetch))?
        .ok_or_else(|| anyhow!("the drive vanished from the store"))?;
    let blobs_key = *drive.blobs().key();
    let blobs = hyperfs_engine::Hypercore::open_replica(store, blobs_key, None)?;
    let blobs = net.add_replica(blobs, full);
    // The blobs core's signed length comes in its own sync; files cannot be read before it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while blobs.state().1 == 0 && Instant::now() < deadline && drive.blobs().length() == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut drive = drive;
    drive.refresh()?;
    let drive = SharedDrive::new(drive);
    net.follow(drive.clone(), vec![db, blobs]);
    remember_replica(state, key, full, peers)?;
    let mut drives = state.drives.lock().unwrap_or_else(|e| e.into_inner());
    Ok(drives.entry(*key).or_insert(drive).clone())
}

/// Gives a replica a local name (the one asked for, else `prefix-<first key digits>`) unless it
/// has one.
fn name_replica(state: &State, key: &Hash, asked: Option<&str>, prefix: &str) -> Result<String> {
    let mut names = state.names.lock().unwrap_or_else(|e| e.into_inner());
    let hexkey = hex::encode(key);
    if let Some(n) = local_name(&names, key) {
        return Ok(n);
    }
    let name = match asked {
        Some(n) if names.contains_key(n) => bail!("a drive named {n:?} exists already"),
        Some(n) => n.to_owned(),
        None => format!("{prefix}-{}", &hexkey[..8]),
    };
    names.insert(name.clone(), hexkey);
    write_names(&state.dir, &names)?;
    Ok(name)
}

/// `hyperfs clone KEY --peer HOST:PORT`: a full replica of a drive, kept following its writer.
fn clone(state: &State, which: &str, r: &Value, emit: &mut dyn FnMut(Out<'_>) -> bool) -> Result<Value> {
    use std::time::{Duration, Instant};
    let key = crate::local::parse_key(which)?;
    let ours =
        state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(&key).is_some_and(|d| d.snapshot().writable());
    if ours || Drive::open(state.store.clone(), &key).ok().flatten().is_some_and(|d| d.writable()) {
        bail!("drive {} is this node's own", hex::encode(key));
    }
    let peers = peers_of(r);
    let known = read_replicas(&state.dir)?.get(&hex::encode(key)).cloned();
    if known.as_ref().is_some_and(|k| k["full"] == true) {
        let name = local_name(&state.names.lock().unwrap_or_else(|e| e.into_inner()), &key);
        bail!("drive {} is on this node already (as {})", hex::encode(key), name.unwrap_or_else(|| hex::encode(key)));
    }
    let drive = replicate(state, &key, &peers, r, true)?;
    let net = net(state, r)?;
    let (db, blobs) = net.replica_cores(&key, drive.snapshot().blobs().key());
    let (Some(db), Some(blobs)) = (db, blobs) else { bail!("the replica's cores are not followed") };
    // Everything, with progress; a peer that stops giving for 30 s ends the wait. The blobs
    // core must reach at least what the db's entries name.
    let mut last = (0, Instant::now());
    let mut needed = None;
    loop {
        let (_, dl, dh) = db.state();
        let (_, bl, bh) = blobs.state();
        let have = dh + bh;
        let _ = emit(Out::Progress(json!({"blocks": have, "totalBlocks": dl + bl})));
        if dh == dl && needed.is_none() {
            drive.write().refresh()?;
            let d = drive.snapshot();
            let mut end = 0;
            for (_, e) in d.list("/")? {
                if let Some(b) = e.blob {
                    end = end.max(b.block_offset + b.block_length);
                }
            }
            needed = Some(end);
        }
        if needed.is_some_and(|n| bl >= n && bh == bl) {
            break;
        }
        if have != last.0 {
            last = (have, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            bail!("the download stalled at {have} of {} blocks (the peer stopped answering)", dl + bl);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let version = {
        let mut d = drive.write();
        d.refresh()?;
        d.version()
    };
    let name = name_replica(state, &key, r["name"].as_str(), "clone")?;
    Ok(json!({"name": name, "key": hex::encode(key), "version": version}))
}

/// Mounts a drive on `dir`: read-write if this node can write it, else (or with a version or
/// `readOnly`) read-only.
fn mount(state: &State, which: &str, dir: &Path, r: &Value) -> Result<Value> {
    let dir = prepare_mount_point(dir)?;
    if state.mounts.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&dir) {
        bail!("a drive is already mounted on {}", dir.display());
    }
    let drive = match open_drive(state, which) {
        Ok(d) => {
            let peers = peers_of(r);
            if !peers.is_empty() {
                net(state, r)?.connect(&peers)?;
            }
            d
        }
        // A drive known by its key alone: mount a sparse replica that reads on demand.
        Err(_) if crate::local::parse_key(which).is_ok() => {
            let key = crate::local::parse_key(which)?;
            let peers = peers_of(r);
            let d = replicate(state, &key, &peers, r, false)?;
            name_replica(state, &key, None, "replica")?;
            d
        }
        Err(e) => return Err(e),
    };
    let key = *drive.snapshot().key();
    let version = r["version"].as_u64();
    let staging = state.dir.join("staging");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let cfg = hyperfs_fs::Config {
        version,
        read_only: r["readOnly"].as_bool().unwrap_or(false),
        staging,
        uid: r["uid"].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
        gid: r["gid"].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
    };
    let fs = hyperfs_fs::Fs::new(drive.clone(), cfg).map_err(|e| match version {
        Some(v) => anyhow!("drive {which} has no version {v} (or it falls inside an atomic change; see hyperfs log)"),
        None => anyhow!("{e}"),
    })?;
    let read_only = fs.read_only();
    let name =
        local_name(&state.names.lock().unwrap_or_else(|e| e.into_inner()), &key).unwrap_or_else(|| hex::encode(key));
    let guard = std::env::current_exe().context("finding this program to run as the mount guard")?;
    let opts = hyperfs_fs::MountOptions {
        fsname: format!("hyperfs:{name}"),
        guard: Some(guard),
        allow_other: r["allowOther"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    let mounted =
        hyperfs_fs::mount(Arc::new(fs), &dir, &opts).with_context(|| format!("mounting on {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), drive = %log_id(&name), ?version, read_only, "mounted");
    // A live mount hears of every version its drive publishes; a checkout never changes.
    let listening = version.is_none().then(|| {
        let (tell, at, fs) = (state.mount_changed.clone(), dir.clone(), Arc::downgrade(mounted.fs()));
        // Changes made through the mount itself wake nobody.
        let listener = drive.on_change(Arc::new(move |snap| {
            if fs.upgrade().is_some_and(|fs| fs.is_behind(snap)) {
                let _ = tell.send(at.clone());
            }
        }));
        (drive.clone(), listener)
    });
    state
        .mounts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir.clone(), Mount { mounted, key, version, listening });
    Ok(json!({"dir": dir, "key": hex::encode(key), "version": version, "readOnly": read_only}))
}

/// Checks that `dir` can be mounted on: an existing, empty directory (a dead hyperfs mount
/// left there is cleared first).
fn prepare_mount_point(dir: &Path) -> Result<PathBuf> {
    if let Err(e) = std::fs::metadata(dir) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            tracing::info!(dir = %dir.display(), "clearing a dead mount");
            hyperfs_fs::unmount(dir, true).with_context(|| format!("clearing the dead mount on {}", dir.display()))?;
        }
    }
    let dir = std::fs::canonicalize(dir).with_context(|| format!("mount point {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty; mount on an empty directory", dir.display());
    }
    Ok(dir)
}

fn unmount(state: &State, dir: &Path, lazy: bool) -> Result<Value> {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut mounts = state.mounts.lock().unwrap_or_else(|e| e.into_inner());
    match mounts.get_mut(&canonical) {
        Some(m) => {
            let _ = m.mounted.fs().sync();
            if let Err(e) = m.mounted.unmount(lazy) {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    bail!("{} is busy; close what uses it, or pass --lazy", canonical.display());
                }
                bail!("unmounting {}: {e}", canonical.display());
            }
            mounts.remove(&canonical);
            Ok(json!({"dir": canonical}))
        }
        None => {
            // A mount this node does not serve: one left behind by a node that was killed
            // (its connection is gone) is cleared; a live one belongs to another node.
            let dead = std::fs::metadata(dir).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN);
            if dead {
                hyperfs_fs::unmount(dir, true).with_context(|| format!("unmounting {}", dir.display()))?;
                Ok(json!({"dir": dir, "stale": true}))
            } else if is_fuse_mount(&canonical) {
                bail!("{} is served by another node; unmount it with that node's --data-dir", dir.display())
            } else {
                bail!("nothing is mounted on {}", dir.display())
            }
        }
    }
}

/// Whether `dir` is a FUSE mount point (live or dead), from /proc/self/mountinfo.
fn is_fuse_mount(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1)).copied().unwrap_or_default();
        f.get(4) == Some(&want.as_str()) && fstype.starts_with("fuse")
    })
}

/// The mounts of drive `key` on this node.
fn mounts_of(state: &State, key: &Hash) -> Vec<Value> {
    state
        .mounts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, m)| m.key == *key)
        .map(|(dir, m)| json!({"dir": dir, "version": m.version, "readOnly": m.mounted.fs().read_only()}))
        .collect()
}

fn create(state: &State, name: Option<&str>) -> Result<Value> {
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
    let drive = Drive::create(state.store.clone(), kp)?;
    let key = *drive.key();
    names.insert(name.clone(), hex::encode(key));
    write_names(&state.dir, &names)?;
    state.drives.lock().unwrap_or_else(|e| e.into_inner()).insert(key, SharedDrive::new(drive));
    Ok(json!({"name": name, "key": hex::encode(key), "link": format!("hyper://{}", z32_encode(&key))}))
}

/// The local name of the drive with `key`, if it has one.
fn local_name(names: &BTreeMap<String, String>, key: &Hash) -> Option<String> {
    let hexkey = hex::encode(key);
    names.iter().find(|(_, k)| **k == hexkey).map(|(n, _)| n.clone())
}

/// The key of a drive given by local name or key.
fn drive_key(state: &State, which: &str) -> Result<Hash> {
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

/// Replaces the JSON state file `file` of the data directory ([`write_state`]).
fn write_json(dir: &Path, file: &str, value: &impl serde::Serialize) -> Result<()> {
    write_state(dir, file, serde_json::to_string_pretty(value)?.as_bytes())
}
