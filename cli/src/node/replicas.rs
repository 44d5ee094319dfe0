//! Replicas: following drives of other nodes (mounted by key, cloned, seeded), remembered in
//! `replicas.json` and `shared.json` and resumed when the node starts.

use super::*;

/// The replicas this node keeps (`replicas.json`: key → whether it is a full copy, and the
/// peers it was reached through), re-followed when the node starts.
pub(super) type Replicas = BTreeMap<String, Value>;

pub(super) fn read_replicas(dir: &Path) -> Result<Replicas> {
    read_json(dir, "replicas.json")
}

pub(super) fn remember_replica(state: &State, key: &CoreKey, full: bool, peers: &[String]) -> Result<()> {
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
pub(super) fn remember_share(state: &State, key: &CoreKey, how: Option<(bool, bool)>) -> Result<()> {
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

/// Shares again the drives this node shared before it stopped.
pub(super) fn resume_shares(state: &Arc<State>) {
    let shared = match read_json::<BTreeMap<String, Value>>(&state.dir, "shared.json") {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return,
        Err(e) => return tracing::warn!(error = %e, "not sharing again"),
    };
    let Ok(net) = net(state, &NetOptions::default()) else { return };
    for (key, how) in shared {
        match open_drive(state, &key) {
            Ok(drive) => net.share(&drive, how["announce"] != false, how["lanOnly"] == true),
            Err(e) => tracing::warn!(drive = %log_id(&key), error = %e, "sharing again"),
        }
    }
}

/// Follows again, in the background, the replicas this node kept before it stopped.
pub(super) fn resume_replicas(state: &Arc<State>) {
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
        if let Err(e) = replicate(state, &key, &[], &NetOptions::default(), full) {
            tracing::warn!(drive = %log_id(&hex::encode(key)), error = %e, "following a replica");
        }
        let peers: Vec<String> = serde_json::from_value(r["peers"].clone()).unwrap_or_default();
        all_peers.extend(peers.into_iter().map(|p| (key, p)));
    }
    let Ok(net) = net(state, &NetOptions::default()) else { return };
    // The swarm dials them (and again when they leave).
    for (key, p) in all_peers {
        match net.peer_address(&p) {
            Ok(addr) => net.swarm.add_peer(&key, addr),
            Err(e) => tracing::info!(peer = %p, error = %e, "a replica's peer"),
        }
    }
}

/// A replica of drive `key` followed live: from the store if this node has had it, else from
/// `peers` (its signed length and manifest first: they name the blobs core). `full` downloads
/// everything; otherwise readers fetch what they touch. Returns the drive readers use.
pub(super) fn replicate(
    state: &State,
    key: &CoreKey,
    peers: &[String],
    r: &NetOptions,
    full: bool,
) -> Result<Arc<SharedDrive>> {
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
        // Looked for often: the blobs core is asked for only after this (a look every 20 ms
        // left the link idle for 10 ms of a 0.5 s clone on average).
        std::thread::sleep(Duration::from_millis(2));
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
    // The blobs core's signed length comes in its own sync; files cannot be read before it
    // (a drive of no files, a new member's, has none to wait for).
    let deadline = Instant::now() + Duration::from_secs(5);
    let files = drive.view().has_files().unwrap_or(true);
    while files && blobs.state().1 == 0 && Instant::now() < deadline && drive.blobs().length() == 0 {
        std::thread::sleep(Duration::from_millis(2));
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
pub(super) fn name_replica(state: &State, key: &CoreKey, asked: Option<&str>, prefix: &str) -> Result<String> {
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
pub(super) fn clone(
    state: &State,
    which: &str,
    as_name: Option<&str>,
    r: &NetOptions,
    emit: &mut dyn FnMut(Out<'_>) -> bool,
) -> Result<api::Cloned> {
    use std::time::{Duration, Instant};
    let began = Instant::now();
    let key = crate::local::parse_key(which)?;
    let ours =
        state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(&key).is_some_and(|d| d.snapshot().writable());
    if ours || Drive::open(state.store.clone(), &key).ok().flatten().is_some_and(|d| d.writable()) {
        bail!("drive {} is this node's own", hex::encode(key));
    }
    let peers = &r.peers;
    let known = read_replicas(&state.dir)?.get(&hex::encode(key)).cloned();
    if known.as_ref().is_some_and(|k| k["full"] == true) {
        let name = local_name(&state.names.lock().unwrap_or_else(|e| e.into_inner()), &key);
        bail!("drive {} is on this node already (as {})", hex::encode(key), name.unwrap_or_else(|| hex::encode(key)));
    }
    let drive = replicate(state, &key, peers, r, true)?;
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
        let _ = emit(Out::Progress(json!(api::CloneProgress { blocks: have, total_blocks: dl + bl })));
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
        // A look is a lock of each core for a moment: looking often ends the command soon
        // after the last block (every 50 ms added 25 ms to a 0.5 s clone on average).
        std::thread::sleep(Duration::from_millis(5));
    }
    let version = {
        let mut d = drive.write();
        d.refresh()?;
        d.version()
    };
    let seconds = began.elapsed().as_secs_f64();
    let name = name_replica(state, &key, as_name, "clone")?;
    Ok(api::Cloned { name, key: hex::encode(key), version, seconds })
}
