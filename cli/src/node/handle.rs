//! The control socket's commands: each request's handler, by its `cmd`.

use super::*;
use hyperfs_engine::drive::Special;

/// Answers one request; the reply is the type [`crate::api`] gives that command.
pub(super) fn handle(state: &State, r: &Request, emit: &mut dyn FnMut(Out<'_>) -> bool) -> Result<Value> {
    fn reply(v: impl serde::Serialize) -> Result<Value> {
        Ok(serde_json::to_value(v)?)
    }
    match r {
        Request::Ping => reply(api::Pong { dir: state.dir.clone() }),
        Request::Stop => reply(api::Stopping { pid: std::process::id() }),
        Request::Create { name, multiwriter: false } => reply(create(state, name.as_deref())?),
        Request::Create { name, multiwriter: true } => reply(multi::create_multi(state, name.as_deref())?),
        Request::Invite { drive } => reply(multi::invite(state, drive)?),
        Request::Join { invite, name, wait_ms, net } => {
            let wait = std::time::Duration::from_millis(*wait_ms);
            reply(multi::join(state, invite, name.as_deref(), net, wait)?)
        }
        Request::Members { drive } => reply(multi::members(state, drive)?),
        Request::MembersRm { drive, member } => reply(multi::remove_member(state, drive, member)?),
        Request::Sync => {
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
            reply(api::Synced { synced: true })
        }
        Request::Drives => {
            let names = state.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
            reply(
                names
                    .into_iter()
                    .map(|(name, key)| {
                        let mounts = crate::local::parse_key(&key).map(|k| mounts_of(state, &k)).unwrap_or_default();
                        api::DriveListing { name, key, mounts }
                    })
                    .collect::<Vec<_>>(),
            )
        }
        Request::DrivesRm { drive, yes } => reply(remove_drive(state, drive, *yes)?),
        Request::Gc => {
            let started = std::time::Instant::now();
            let done = hyperfs_engine::gc::collect(&*state.store)?;
            reply(api::Collected { done, seconds: started.elapsed().as_secs_f64() })
        }
        Request::Prune { drive: which, keep_last, keep_within_ms, keep_daily, dry_run } => {
            let drive = open_drive(state, which)?;
            let mut d = drive.write();
            if !d.db().core().writable() {
                bail!("{which} is a replica: prune clears history of drives you write (`drives rm` removes a replica)");
            }
            let now_ms = multi::now_ms();
            let keep = hyperfs_engine::drive::prune::Keep {
                last: keep_last.unwrap_or(0),
                within_ms: *keep_within_ms,
                daily: keep_daily.unwrap_or(0),
                now_ms,
            };
            let p = d.prune_with(&keep, *dry_run)?;
            if !*dry_run {
                garbage_made(state, p.bytes_cleared);
                // Remembered, so a read of a version it cleared can say so.
                let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
                let mut all: BTreeMap<String, u64> = read_json(&state.dir, "pruned.json")?;
                all.insert(hex::encode(d.key()), p.kept_from);
                write_json(&state.dir, "pruned.json", &all)?;
            }
            reply(api::Pruned { done: p, version: d.version(), dry_run: *dry_run })
        }
        Request::Du { drive } => reply(usage(state, drive.as_deref())?),
        Request::Put { drive, path, file } => {
            let drive = open_drive(state, drive)?;
            let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
            let m = f.metadata().with_context(|| format!("reading {}", file.display()))?;
            if !m.is_file() {
                bail!("{} is not a file (hyperfs import mirrors a folder)", file.display());
            }
            let meta = crate::mirror::meta_of(&m);
            let opts = PutOptions { executable: meta.mode & 0o100 != 0, metadata: Some(meta.to_json(None)) };
            // Chunked and staged from a snapshot; the drive is held only for the commit.
            let prepared = drive.snapshot().prepare_blob(std::io::BufReader::new(f), false)?;
            let mut d = drive.write();
            let blob = d.write_prepared(prepared)?;
            let entry =
                Entry { executable: opts.executable, linkname: None, blob: Some(blob), metadata: opts.metadata };
            d.put_entry(path, &entry)?;
            reply(api::Changed { version: d.version() })
        }
        Request::Cat { drive, path, version } => {
            let drive = open_drive(state, drive)?;
            let d = drive.snapshot();
            let entry = {
                let v = version.unwrap_or(d.version());
                let view = d.checkout(v)?;
                match view.stat(path)? {
                    Some(st) => st.entry,
                    None if view.is_dir(path)? => bail!("{path} is a folder (hyperfs ls lists it)"),
                    None => bail!("no file at {path}"),
                }
            };
            let Some(blob) = entry.blob else { return reply(api::Sent { bytes: 0 }) };
            // The file goes out a window at a time, from the version it was found in.
            let mut offset = 0u64;
            loop {
                let chunk = d.read_blob(&blob, offset, 4 << 20).map_err(|e| pruned(state, &d, *version, e))?;
                if chunk.is_empty() {
                    return reply(api::Sent { bytes: offset });
                }
                offset += chunk.len() as u64;
                if !emit(Out::Bytes(&chunk)) {
                    bail!("the client went away");
                }
            }
        }
        Request::Import { drive, path, dir, dry_run } => {
            let drive = open_drive(state, drive)?;
            let dir = crate::mirror::check_dir_arg(dir)?;
            let mut progress = |p: api::MirrorProgress| emit(Out::Progress(json!(p)));
            reply(crate::mirror::import(&drive, &dir, path, *dry_run, &mut progress)?)
        }
        Request::Export { drive, path, dir, version, dry_run, owners } => {
            let drive = open_drive(state, drive)?;
            let dir = crate::mirror::check_dir_arg(dir)?;
            let mut progress = |p: api::MirrorProgress| emit(Out::Progress(json!(p)));
            let exported = crate::mirror::export(&drive, *version, path, &dir, *dry_run, *owners, &mut progress);
            reply(exported.map_err(|e| pruned(state, &drive.snapshot(), *version, e))?)
        }
        Request::Ls { drive, path, version, recursive } => {
            let drive = open_drive(state, drive)?;
            let d = drive.snapshot();
            let view = d.checkout(version.unwrap_or(d.version()))?;
            let describe = |name: String,
                            entry: Option<&Entry>,
                            dir_record: Option<Entry>,
                            special: bool|
             -> Result<api::LsEntry> {
                let special = entry.filter(|_| special).and_then(Special::of);
                let (kind, size) = match entry {
                    _ if special.is_some() => (
                        match special {
                            Some(Special::Fifo) => api::Kind::Fifo,
                            Some(Special::Socket) => api::Kind::Socket,
                            Some(Special::Char(_)) => api::Kind::CharDevice,
                            _ => api::Kind::BlockDevice,
                        },
                        None,
                    ),
                    Some(e) if e.linkname.is_some() => (api::Kind::Symlink, None),
                    Some(e) => (
                        api::Kind::File,
                        Some(match e.blob {
                            Some(b) => d.blob_size(&b)?,
                            None => 0,
                        }),
                    ),
                    None => (api::Kind::Directory, None),
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
                Ok(api::LsEntry {
                    name,
                    kind,
                    size,
                    mode,
                    mtime: metadata.and_then(|m| m["mtime"].as_i64()),
                    executable: entry.map(|e| e.executable),
                    linkname: entry.and_then(|e| e.linkname.clone()),
                    rdev: special.map(Special::rdev).filter(|&d| d != 0),
                })
            };
            let root = hyperfs_engine::drive::path::folder(path)?.is_empty();
            if let Some(st) = if root { None } else { view.stat(path)? } {
                return reply([describe(path.to_owned(), Some(&st.entry), None, false)?]);
            }
            if let Some(e) = if root { None } else { view.special(path)? } {
                return reply([describe(path.to_owned(), Some(&e), None, true)?]);
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
                    out.push(describe(name.clone(), c.entry.as_ref(), record, c.special)?);
                    if c.entry.is_none() && *recursive {
                        below.push((full, format!("{name}/")));
                    }
                }
                folders.extend(below.into_iter().rev());
            }
            reply(out)
        }
        Request::Rm { drive, path } => {
            let drive = open_drive(state, drive)?;
            let mut d = drive.write();
            if !d.del(path)? && !d.rmdir(path)? {
                bail!("no file at {path}");
            }
            reply(api::Changed { version: d.version() })
        }
        Request::Mv { drive, path, to } => {
            let drive = open_drive(state, drive)?;
            let mut d = drive.write();
            d.rename(path, to)?;
            reply(api::Changed { version: d.version() })
        }
        Request::Mkdir { drive, path } => {
            let drive = open_drive(state, drive)?;
            let mut d = drive.write();
            d.mkdir(path, None)?;
            reply(api::Changed { version: d.version() })
        }
        Request::Stat { drive, path, version } => {
            let drive = open_drive(state, drive)?;
            let d = drive.snapshot();
            let d = d.checkout(version.unwrap_or(d.version()))?;
            match d.stat(path)? {
                Some(st) => reply(api::StatReply {
                    path: path.clone(),
                    kind: if st.entry.linkname.is_some() { api::Kind::Symlink } else { api::Kind::File },
                    file: Some(api::FileStat {
                        size: st.size,
                        executable: st.entry.executable,
                        linkname: st.entry.linkname,
                        metadata: st.entry.metadata,
                        seq: st.seq,
                        block_map: st.entry.blob.is_some_and(|b| b.block_map),
                    }),
                }),
                None if d.is_dir(path)? => {
                    reply(api::StatReply { path: path.clone(), kind: api::Kind::Directory, file: None })
                }
                None => bail!("no file or directory at {path}"),
            }
        }
        Request::Log { drive, path, version } => {
            let drive = open_drive(state, drive)?;
            let d = drive.snapshot();
            let filter = Some(path.as_str()).filter(|p| *p != "/");
            let until = version.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            let history = d.history(0)?;
            let authors = multi::authors(state, drive.key(), &d, &history)?;
            for (i, c) in history.into_iter().enumerate().take_while(|(_, c)| c.version <= until) {
                let member = authors.as_ref().and_then(|a| a[i].clone());
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
                out.push(api::LogEntry { version: c.version, op: op.into(), path: c.path, size, time, member });
            }
            reply(out)
        }
        Request::Truncate { drive: which, version } => {
            let drive = open_drive(state, which)?;
            let version = *version;
            let key = *drive.snapshot().key();
            if state.multi.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key) {
                bail!("{which} is a multi-writer drive: its history is every member's, and is not cut back");
            }
            if mounts_of(state, &key).iter().any(|m| !m.read_only) {
                bail!("{which} is mounted read-write; unmount it first");
            }
            let mut d = drive.write();
            if !d.writable() {
                bail!("{which} is not yours to truncate (this node does not hold its key)");
            }
            if version > d.version() {
                bail!("{which} has no version {version} (it is at {})", d.version());
            }
            let before = d.blobs().local_bytes()?;
            d.truncate(version)?;
            let cut = before.saturating_sub(d.blobs().local_bytes()?);
            let reply_with = api::Truncated { version: d.version(), fork: d.db().core().fork() };
            drop(d);
            garbage_made(state, cut);
            reply(reply_with)
        }
        Request::Diff { drive, v1, v2 } => {
            let drive = open_drive(state, drive)?;
            let d = drive.snapshot();
            let out: Vec<api::DiffEntry> = d
                .diff(*v1, v2.unwrap_or(d.version()))?
                .into_iter()
                .map(|x| api::DiffEntry { path: x.path, change: format!("{:?}", x.kind).to_lowercase() })
                .collect();
            reply(out)
        }
        Request::Info { drive } => {
            let drive = open_drive(state, drive)?;
            let d = drive.snapshot();
            // Block data sent to and received from peers, both cores, since the node started.
            let (up, down) = match state.net.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(n) => {
                    let (a, b) = (n.endpoint.transferred(d.key()), n.endpoint.transferred(d.blobs().key()));
                    (a.0 + b.0, a.1 + b.1)
                }
                None => (0, 0),
            };
            let core = |c: &hyperfs_engine::Hypercore| api::CoreInfo {
                key: hex::encode(c.key()),
                length: c.length(),
                byte_length: c.byte_length(),
                local_blocks: c.local_blocks(),
                total_blocks: c.length(),
                fork: c.fork(),
                conflict: c.stored_conflict().ok().flatten().as_ref().map(api::ConflictInfo::from),
            };
            reply(api::Info {
                key: hex::encode(d.key()),
                discovery_key: hex::encode(d.db().core().discovery_key()),
                link: format!("hyper://{}", z32_encode(&d.key().0)),
                version: d.version(),
                writable: d.writable(),
                db: core(d.db().core()),
                blobs: core(d.blobs()),
                chunker: d.preset().name.to_string(),
                mounts: mounts_of(state, d.key()),
                bytes_uploaded: up,
                bytes_downloaded: down,
                bytes_on_disk: d.db().core().local_stored_bytes()? + d.blobs().local_stored_bytes()?,
            })
        }
        Request::Verify { drive } => {
            let drive = open_drive(state, drive)?;
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
            reply(api::Verification { bad })
        }
        Request::Mount { drive, dir, version, read_only, allow_other, uid, gid, net } => reply(mount(
            state,
            MountRequest {
                which: drive,
                dir,
                version: *version,
                read_only: *read_only,
                allow_other: *allow_other,
                uid: *uid,
                gid: *gid,
                net,
            },
        )?),
        Request::Unmount { dir, lazy } => reply(unmount(state, dir, *lazy)?),
        Request::Dump { key } => crate::local::core_dump(state.store.clone(), key),
        Request::KeysExport { drive, file } => {
            let key = drive_key(state, drive)?;
            reply(crate::local::keys_export(state.store.clone(), &key, file)?)
        }
        Request::KeysImport { file, offline_ok } => {
            let drive = crate::local::keys_import(state.store.clone(), file, *offline_ok)?;
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
            reply(api::Named { name, key: hexkey, link: None })
        }
        Request::Share { drive, no_announce, lan_only, net: options } => {
            let drive = open_drive(state, drive)?;
            let net = net(state, options)?;
            net.connect(&options.peers)?;
            let (key, blobs, writable) = {
                let d = drive.snapshot();
                (*d.key(), *d.blobs().key(), d.writable())
            };
            // A replica is served already, through the network's own instances of its cores.
            let served = !writable && matches!(net.replica_cores(&key, &blobs), (Some(_), Some(_)));
            let (announce, lan_only) = (!no_announce, *lan_only);
            if served {
                net.swarm.join(&key, announce, lan_only);
            } else {
                net.share(&drive, announce, lan_only);
                remember_share(state, &key, Some((announce, lan_only)))?;
            }
            reply(api::Sharing {
                key: hex::encode(key),
                link: format!("hyper://{}", z32_encode(&key.0)),
                address: net.endpoint.local_addr()?.to_string(),
                address6: net.endpoint.local_addr6().map(|a| a.to_string()),
                tcp: net.wire_addr(hyperfs_net::Transport::Tcp).map(|a| a.to_string()),
                udx: net.wire_addr(hyperfs_net::Transport::Udx).map(|a| a.to_string()),
            })
        }
        Request::Unshare { drive: which } => {
            let drive = open_drive(state, which)?;
            let net = state.net.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !net.is_some_and(|n| n.unshare(&drive)) {
                bail!("drive {which} is not shared");
            }
            remember_share(state, drive.snapshot().key(), None)?;
            reply(api::Done {})
        }
        Request::Clone { key, name, net } => reply(clone(state, key, name.as_deref(), net, emit)?),
        Request::Nat { net: options } => {
            let net = net(state, options)?;
            let Some((firewall, addresses, samples)) = net.endpoint.dht_nat() else {
                bail!("HyperDHT is off on this node (--no-hyperdht)")
            };
            reply(api::NatReport {
                firewall: firewall.name().to_owned(),
                addresses: addresses.iter().map(ToString::to_string).collect(),
                samples,
                key: hex::encode(net.endpoint.id().0),
                node: net.endpoint.dht_node().map(|(id, table)| api::DhtNodeReport { id: id.map(hex::encode), table }),
            })
        }
        Request::Peers { net: options } => {
            // Network options start the node's network with them (`peers --relay` starts a
            // relay), and peers given are connected to.
            if *options != api::NetOptions::default() {
                let n = net(state, options)?;
                if !options.peers.is_empty() {
                    n.connect(&options.peers)?;
                }
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
            let entries: Vec<api::PeerEntry> = peers
                .into_iter()
                .map(|(p, found)| {
                    // The drives are the db cores replicated with the peer, by local name.
                    let drives: Vec<String> = p
                        .cores
                        .iter()
                        .filter(|k| state.drives.lock().unwrap_or_else(|e| e.into_inner()).contains_key(*k))
                        .map(|k| local_name(&names, k).unwrap_or_else(|| hex::encode(k)))
                        .collect();
                    api::PeerEntry {
                        id: hex::encode(p.id),
                        address: p.address.to_string(),
                        drives,
                        found: found.to_owned(),
                        cores: p.cores.iter().map(hex::encode).collect(),
                        bytes_up: p.bytes_up,
                        bytes_down: p.bytes_down,
                        rtt_ms: p.rtt.as_secs_f64() * 1000.0,
                        transport: p.transport.name().to_owned(),
                        kind: if p.hyperfs { "hyperfs" } else { "js" }.to_owned(),
                        path: p.path.name().to_owned(),
                    }
                })
                .collect();
            reply(entries)
        }
    }
}

/// `e` from reading version `version` of drive `d`, said plainly where a block of a drive of
/// this node is gone: `prune` cleared it (or a power cut took it).
fn pruned<E: Into<anyhow::Error>>(
    state: &State,
    d: &hyperfs_engine::Drive,
    version: Option<u64>,
    e: E,
) -> anyhow::Error {
    let e = e.into();
    let missing = e.chain().any(|c| matches!(c.downcast_ref(), Some(hyperfs_engine::Error::MissingBlock { .. })));
    if missing && d.writable() {
        let which = version.map_or("this version".to_string(), |v| format!("version {v}"));
        let all: BTreeMap<String, u64> = read_json(&state.dir, "pruned.json").unwrap_or_default();
        let kept = match all.get(&hex::encode(d.key())) {
            Some(k) => format!("; the oldest version it kept is {k}"),
            None => String::new(),
        };
        return e.context(format!(
            "the contents of {which} are no longer on this node (`hyperfs prune` cleared them{kept}) and no connected peer that has the drive gave them"
        ));
    }
    e
}
