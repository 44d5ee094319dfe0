//! Mounts: mounting a drive on a folder, unmounting, and telling the kernel to forget what
//! it cached when a mounted drive moves on elsewhere.

use super::*;

pub(super) struct Mount {
    pub(super) mounted: hyperfs_fs::Mounted,
    pub(super) key: CoreKey,
    pub(super) version: Option<u64>,
    /// The drive, and the listener that tells [`watch_mounts`] of its versions (live mounts).
    pub(super) listening: Option<(Arc<SharedDrive>, u64)>,
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
pub(super) fn watch_mounts(state: &Arc<State>, changed: std::sync::mpsc::Receiver<PathBuf>) -> Result<()> {
    let state = Arc::downgrade(state);
    std::thread::Builder::new()
        .name("hyperfs-invalidate".into())
        .spawn(move || {
            while let Ok(first) = changed.recv() {
                let dirs: BTreeSet<PathBuf> = std::iter::once(first).chain(changed.try_iter()).collect();
                let Some(state) = state.upgrade() else { return };
                let mounts = state.mounts.lock().unwrap_or_else(|e| e.into_inner());
                for dir in dirs {
                    if let Some(m) = mounts.get(&dir) {
                        if m.mounted.fs().changed_elsewhere() {
                            m.mounted.invalidate();
                        }
                    }
                }
            }
        })
        .context("starting the mount watcher")?;
    Ok(())
}

/// Mounts a drive on `dir`: read-write if this node can write it, else (or with a version or
/// `readOnly`) read-only.
pub(super) struct MountRequest<'a> {
    pub which: &'a str,
    pub dir: &'a Path,
    pub version: Option<u64>,
    pub read_only: bool,
    pub allow_other: bool,
    pub uid: u32,
    pub gid: u32,
    pub net: &'a NetOptions,
}

pub(super) fn mount(state: &State, r: MountRequest<'_>) -> Result<api::Mounted> {
    let MountRequest { which, dir, version, read_only, allow_other, uid, gid, net: options } = r;
    let dir = prepare_mount_point(dir)?;
    if state.mounts.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&dir) {
        bail!("a drive is already mounted on {}", dir.display());
    }
    let drive = match open_drive(state, which) {
        Ok(d) => {
            if !options.peers.is_empty() {
                net(state, options)?.connect(&options.peers)?;
            }
            d
        }
        // A drive known by its key alone: mount a sparse replica that reads on demand.
        Err(_) if crate::local::parse_key(which).is_ok() => {
            let key = crate::local::parse_key(which)?;
            let d = replicate(state, &key, &options.peers, options, false)?;
            name_replica(state, &key, None, "replica")?;
            d
        }
        Err(e) => return Err(e),
    };
    let key = *drive.snapshot().key();
    let staging = state.dir.join("staging");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let cfg = hyperfs_fs::Config { version, read_only, staging, uid, gid };
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
        allow_other,
        changed_elsewhere: state.multi.lock().unwrap_or_else(|e| e.into_inner()).contains_key(drive.key()),
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
    Ok(api::Mounted { dir, key: hex::encode(key), version, read_only })
}

/// Checks that `dir` can be mounted on: an existing, empty directory (a dead hyperfs mount
/// left there is cleared first).
pub(super) fn prepare_mount_point(dir: &Path) -> Result<PathBuf> {
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

pub(super) fn unmount(state: &State, dir: &Path, lazy: bool) -> Result<api::Unmounted> {
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
            Ok(api::Unmounted { dir: canonical, stale: false })
        }
        None => {
            // A mount this node does not serve: one left behind by a node that was killed
            // (its connection is gone) is cleared; a live one belongs to another node.
            let dead = std::fs::metadata(dir).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN);
            if dead {
                hyperfs_fs::unmount(dir, true).with_context(|| format!("unmounting {}", dir.display()))?;
                Ok(api::Unmounted { dir: dir.to_path_buf(), stale: true })
            } else if is_fuse_mount(&canonical) {
                bail!("{} is served by another node; unmount it with that node's --data-dir", dir.display())
            } else {
                bail!("nothing is mounted on {}", dir.display())
            }
        }
    }
}

/// Whether `dir` is a FUSE mount point (live or dead), from /proc/self/mountinfo.
pub(super) fn is_fuse_mount(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1)).copied().unwrap_or_default();
        f.get(4) == Some(&want.as_str()) && fstype.starts_with("fuse")
    })
}

/// The mounts of drive `key` on this node.
pub(super) fn mounts_of(state: &State, key: &CoreKey) -> Vec<api::MountInfo> {
    state
        .mounts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, m)| m.key == *key)
        .map(|(dir, m)| api::MountInfo { dir: dir.clone(), version: m.version, read_only: m.mounted.fs().read_only() })
        .collect()
}
