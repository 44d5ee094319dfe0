//! The control socket's commands: each request's handler, by its `cmd`.

use super::*;

/// The proof of a writer's two histories, as `info --json` shows it.
pub(super) fn conflict_json(c: &hyperfs_engine::hypercore::Conflict) -> Value {
    let state = |s: &hyperfs_engine::hypercore::SignedState| json!({"length": s.length, "treeHash": hex::encode(s.tree_hash), "signature": hex::encode(&s.signature)});
    json!({"fork": c.fork, "ours": state(&c.ours), "theirs": state(&c.theirs), "node": c.node})
}

pub(super) fn handle(state: &State, r: &Value, emit: &mut dyn FnMut(Out<'_>) -> bool) -> Result<Value> {
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
            // Chunked and staged from a snapshot; the drive is held only for the commit.
            let prepared = drive.snapshot().prepare_blob(std::io::BufReader::new(f), false)?;
            let mut d = drive.write();
            let blob = d.write_prepared(prepared)?;
            let entry =
                Entry { executable: opts.executable, linkname: None, blob: Some(blob), metadata: opts.metadata };
            d.put_entry(s("path")?, &entry)?;
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
