//! hyperfs, the command line: clap commands and their wiring to the engine.
//!
//! Owns: argument parsing, the JSON/text output of each command, user-facing errors (one clear
//! line, no backtrace). Knows nothing of the internals of the other crates beyond their public
//! APIs.

mod args;
mod bee;
mod beneath;
mod chunk;
mod client;
mod control;
mod local;
mod mirror;
mod node;
mod replay;
mod share;
mod swarm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use args::{BeeCommand, Cli, Command, CoreCommand, KeysCommand};
use hyperfs_engine::drive::printable;
use serde_json::{json, Value};

/// The node makes and frees many small objects per request (names, entries, listings): mimalloc
/// serves them from per-thread pages, where the system allocator spent a sixth of a listing's time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // fuser 0.16 takes an unmounted device for a mounted one (it reads POLLERR the wrong way
    // round) and logs a failed second unmount after every clean one; the node unmounts itself
    // and reports its own failures.
    let quiet_fuser = "fuser::mnt::fuse_pure=off".parse().expect("a valid directive");
    let cli = Cli::parse();
    // The node's log (its standard error) says what went wrong even without RUST_LOG: dropped
    // peers, what a recovery rolled back. Commands print only errors unless asked.
    let level = match cli.command {
        Command::Daemon { .. } => tracing::level_filters::LevelFilter::WARN,
        _ => tracing::level_filters::LevelFilter::ERROR,
    };
    let filter = tracing_subscriber::EnvFilter::builder().with_default_directive(level.into()).from_env_lossy();
    // A log line that cannot be written (node.log on a full disk) is dropped: by default the
    // subscriber reports that on standard error, whose failing write panicked the node.
    tracing_subscriber::fmt()
        .with_env_filter(filter.add_directive(quiet_fuser))
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    let dir = || local::data_dir(cli.data_dir.as_deref());
    let result = match cli.command {
        Command::Daemon { ref net } => dir().and_then(|d| {
            let given = !net.peers.is_empty()
                || net.listen.is_some()
                || !net.bootstrap.is_empty()
                || net.no_dht
                || net.no_lan;
            node::run(&d, given.then(|| net.add(json!({}))))
        }),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "hyperfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        Command::Stop => dir().and_then(|d| {
            let r = client::request(&d, &serde_json::json!({"cmd": "stop"}), false)?;
            client::wait_exit(r["pid"].as_u64().unwrap_or(0) as i32, &d)
        }),
        Command::Sync => dir().and_then(|d| {
            client::request(&d, &serde_json::json!({"cmd": "sync"}), true)?;
            Ok(())
        }),
        Command::Create { ref name, json } => dir().and_then(|d| {
            let r = client::request(&d, &serde_json::json!({"cmd": "create", "name": name}), true)?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "{}\t{}\t{}",
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                    r["link"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }),
        Command::Drives { json } => dir().and_then(|d| {
            let r = client::request(&d, &serde_json::json!({"cmd": "drives"}), true)?;
            if json {
                println!("{r}");
            } else {
                for e in r.as_array().into_iter().flatten() {
                    let mounts: Vec<&str> =
                        e["mounts"].as_array().into_iter().flatten().filter_map(|m| m["dir"].as_str()).collect();
                    println!(
                        "{}\t{}\t{}",
                        e["name"].as_str().unwrap_or_default(),
                        e["key"].as_str().unwrap_or_default(),
                        mounts.join(",")
                    );
                }
            }
            Ok(())
        }),
        Command::Put { ref file, ref target } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let file = std::fs::canonicalize(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let req = serde_json::json!({"cmd": "put", "drive": drive, "path": path, "file": file});
            client::request(&d, &req, true).map(drop)
        }),
        Command::Cat { ref target, version } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let req = json!({"cmd": "cat", "drive": drive, "path": path, "version": version});
            let mut out = std::io::stdout().lock();
            client::request_streaming(&d, &req, true, &mut |frame| {
                if let control::Frame::Bytes(bytes) = frame {
                    std::io::Write::write_all(&mut out, &bytes)?;
                }
                Ok(())
            })?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }),
        Command::Share { ref drive, no_announce, lan_only, ref net, json } => dir().and_then(|d| {
            let req = net.add(json!({"cmd": "share", "drive": drive, "noAnnounce": no_announce, "lanOnly": lan_only}));
            let r = client::request(&d, &req, true)?;
            if json {
                println!("{r}");
            } else {
                println!("sharing {} on {}", r["link"].as_str().unwrap_or_default(), r["address"].as_str().unwrap_or_default());
            }
            Ok(())
        }),
        Command::Clone { ref key, ref name, ref net, json } => dir().and_then(|d| {
            let req = net.add(json!({"cmd": "clone", "key": key, "name": name}));
            let mut bar = client::ProgressBar::new(!json);
            let r = client::request_streaming(&d, &req, true, &mut |frame| {
                let control::Frame::Progress(p) = frame else { return Ok(()) };
                bar.show(&json!({"bytes": p["blocks"], "totalBytes": p["totalBlocks"], "files": 0, "totalFiles": 0}));
                Ok(())
            });
            bar.done();
            let r = r?;
            if json {
                println!("{r}");
            } else {
                println!("cloned {} as {} (version {})", r["key"].as_str().unwrap_or_default(), r["name"].as_str().unwrap_or_default(), r["version"]);
            }
            Ok(())
        }),
        Command::Unshare { ref drive } => {
            dir().and_then(|d| client::request(&d, &json!({"cmd": "unshare", "drive": drive}), true).map(drop))
        }
        Command::Peers { ref net, json } => dir().and_then(|d| {
            let r = client::request(&d, &net.add(json!({"cmd": "peers"})), true)?;
            if json {
                println!("{r}");
            } else {
                for p in r.as_array().into_iter().flatten() {
                    let drives: Vec<&str> = p["drives"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    println!("{}\t{}\t{}\t{}\tup {}\tdown {}\t{:.1} ms", p["id"].as_str().unwrap_or_default(), p["address"].as_str().unwrap_or_default(), p["found"].as_str().unwrap_or_default(),
                        if drives.is_empty() { "-".to_owned() } else { drives.join(",") }, p["bytesUp"], p["bytesDown"], p["rttMs"].as_f64().unwrap_or(0.0));
                }
            }
            Ok(())
        }),
        Command::Import { dir: ref local, ref target, dry_run, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let req = json!({"cmd": "import", "drive": drive, "path": path, "dir": absolute(local)?, "dryRun": dry_run});
            mirror_command(&d, &req, dry_run, json, &format!("{} → {target}", local.display()))
        }),
        Command::Export { ref source, dir: ref local, version, owners, dry_run, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(source);
            let req = json!({"cmd": "export", "drive": drive, "path": path, "dir": absolute(local)?,
                "version": version, "dryRun": dry_run, "owners": owners});
            mirror_command(&d, &req, dry_run, json, &format!("{source} → {}", local.display()))
        }),
        Command::Rm { ref target } => dir().and_then(|d| target_request(&d, "rm", target, json!({})).map(drop)),
        Command::Mv { ref from, ref to } => dir().and_then(|d| target_request(&d, "mv", from, json!({"to": to})).map(drop)),
        Command::Mkdir { ref target } => dir().and_then(|d| target_request(&d, "mkdir", target, json!({})).map(drop)),
        Command::Stat { ref target, version, json } => dir().and_then(|d| {
            let r = target_request(&d, "stat", target, json!({"version": version}))?;
            if json {
                println!("{r}");
            } else {
                for (k, v) in r.as_object().into_iter().flatten() {
                    println!("{k}: {v}");
                }
            }
            Ok(())
        }),
        Command::Log { ref target, version, json } => dir().and_then(|d| {
            let r = target_request(&d, "log", target, json!({"version": version}))?;
            if json {
                println!("{r}");
            } else {
                for e in r.as_array().into_iter().flatten() {
                    let size = e["size"].as_u64().map_or("-".to_owned(), |s| s.to_string());
                    let time = e["time"].as_i64().map_or("-".to_owned(), format_time);
                    println!("{}\t{}\t{}\t{size}\t{}", e["version"], e["op"].as_str().unwrap_or_default(), time, shown(&e["path"]));
                }
                // A history the writer's key also signed otherwise is said where history is read.
                let (drive, _) = client::split_target(target);
                let info = client::request(&d, &json!({"cmd": "info", "drive": drive}), true)?;
                for core in ["db", "blobs"] {
                    let c = &info[core]["conflict"];
                    if !c.is_null() {
                        println!("CONFLICT: the writer signed another history of the {core} core on fork {} \
                            (length {} here, {} there); this node takes no more of that fork (info --json)",
                            c["fork"], c["ours"]["length"], c["theirs"]["length"]);
                    }
                }
            }
            Ok(())
        }),
        Command::Truncate { ref drive, version, json } => dir().and_then(|d| {
            let r = client::request(&d, &json!({"cmd": "truncate", "drive": drive, "version": version}), true)?;
            if json {
                println!("{r}");
            } else {
                println!("{drive} is back at version {} (fork {})", r["version"], r["fork"]);
            }
            Ok(())
        }),
        Command::Diff { ref drive, v1, v2, json } => dir().and_then(|d| {
            let r = client::request(&d, &json!({"cmd": "diff", "drive": drive, "v1": v1, "v2": v2}), true)?;
            if json {
                println!("{r}");
            } else {
                for e in r.as_array().into_iter().flatten() {
                    let sign = match e["change"].as_str() { Some("added") => "+", Some("removed") => "-", _ => "~" };
                    println!("{sign} {}", shown(&e["path"]));
                }
            }
            Ok(())
        }),
        Command::Info { ref drive, json } => dir().and_then(|d| {
            let r = client::request(&d, &json!({"cmd": "info", "drive": drive}), true)?;
            if json {
                println!("{r}");
            } else {
                println!("key: {}\nlink: {}\nversion: {}\nwritable: {}\ndb: {} blocks, {} bytes\nblobs: {} blocks, {} bytes\nchunker: {}",
                    r["key"].as_str().unwrap_or_default(), r["link"].as_str().unwrap_or_default(), r["version"], r["writable"],
                    r["db"]["length"], r["db"]["byteLength"], r["blobs"]["length"], r["blobs"]["byteLength"], r["chunker"].as_str().unwrap_or_default());
                for core in ["db", "blobs"] {
                    let c = &r[core]["conflict"];
                    if !c.is_null() {
                        println!("CONFLICT: the writer signed two histories of the {core} core on fork {} (lengths {} and {}); \
                            this node takes no more of that fork and keeps both signatures (info --json)",
                            c["fork"], c["ours"]["length"], c["theirs"]["length"]);
                    }
                }
            }
            Ok(())
        }),
        Command::Verify { ref drive } => dir().and_then(|d| {
            let r = client::request(&d, &json!({"cmd": "verify", "drive": drive}), true)?;
            let bad: Vec<&str> = r["bad"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if bad.is_empty() {
                println!("every local block and signature verifies");
                Ok(())
            } else {
                Err(anyhow::anyhow!("{}", bad.join("; ")))
            }
        }),
        Command::Mount { ref drive, dir: ref mount_dir, version, read_only, allow_other, ref net, json } => dir().and_then(|d| {
            // SAFETY: getuid and getgid cannot fail and touch no memory.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let req = json!({"cmd": "mount", "drive": drive, "dir": absolute(mount_dir)?, "version": version,
                "readOnly": read_only, "allowOther": allow_other, "uid": uid, "gid": gid});
            let req = net.add(req);
            let r = client::request(&d, &req, true)?;
            if json {
                println!("{r}");
            } else {
                let how = if r["readOnly"].as_bool().unwrap_or(false) { "read-only" } else { "read-write" };
                println!("mounted {drive} on {} ({how})", r["dir"].as_str().unwrap_or_default());
            }
            Ok(())
        }),
        Command::Unmount { dir: ref mount_dir, lazy } => dir().and_then(|d| {
            let req = json!({"cmd": "unmount", "dir": absolute(mount_dir)?, "lazy": lazy});
            client::request(&d, &req, true).map(drop)
        }),
        Command::Ls { ref target, long, recursive, version, json } => dir().and_then(|d| {
            let r = target_request(&d, "ls", target, json!({"version": version, "recursive": recursive}))?;
            let entries = r.as_array().cloned().unwrap_or_default();
            if json {
                println!("{r}");
            } else if long {
                for e in &entries {
                    let kind = match e["type"].as_str() { Some("directory") => 'd', Some("symlink") => 'l', _ => '-' };
                    let mode = e["mode"].as_u64().map_or("?????????".to_owned(), |m| mode_string(m as u32));
                    let size = e["size"].as_u64().map_or("-".to_owned(), |s| s.to_string());
                    let time = e["mtime"].as_i64().map_or("-".to_owned(), format_time);
                    let link = e["linkname"].as_str().map(|l| format!(" -> {}", printable(l))).unwrap_or_default();
                    println!("{kind}{mode} {size:>12} {time} {}{link}", shown(&e["name"]));
                }
            } else {
                for e in &entries {
                    println!("{}", shown(&e["name"]));
                }
            }
            Ok(())
        }),
        Command::Core(CoreCommand::Dump { ref key, .. }) => dir().and_then(|d| {
            println!("{}", client::request(&d, &serde_json::json!({"cmd": "dump", "key": key}), true)?);
            Ok(())
        }),
        Command::Keys(KeysCommand::Export { ref drive, ref file }) => dir().and_then(|d| {
            let file = absolute(file)?;
            let req = serde_json::json!({"cmd": "keys-export", "drive": drive, "file": file});
            client::request(&d, &req, true)?;
            eprintln!("wrote the secret key of drive {drive} to {}; keep it private", file.display());
            Ok(())
        }),
        Command::Keys(KeysCommand::Import { ref file, offline_ok }) => dir().and_then(|d| {
            let req = serde_json::json!({"cmd": "keys-import", "file": absolute(file)?, "offlineOk": offline_ok});
            let r = client::request(&d, &req, true)?;
            println!("{}", r["key"].as_str().unwrap_or_default());
            Ok(())
        }),
        Command::Core(CoreCommand::Replay { ref script }) => replay::run(script),
        Command::Bee(BeeCommand::Replay { ref script }) => bee::run(script),
        Command::Chunk { ref files, stats } => chunk::run(files, stats),
        Command::MountGuard { ref dir, mount_id } => match hyperfs_fs::run_guard(dir, mount_id) {
            Ok(true) => {
                tracing::info!(dir = %dir.display(), "the node is gone: unmounted its mount");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("unmounting {} after its node ended: {e}", dir.display())),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyperfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an import or export, with a progress bar on a terminal, and prints what it did.
fn mirror_command(dir: &std::path::Path, req: &Value, dry_run: bool, json: bool, what: &str) -> anyhow::Result<()> {
    let mut bar = client::ProgressBar::new(!json && !dry_run);
    let r = client::request_streaming(dir, req, true, &mut |frame| {
        if let control::Frame::Progress(p) = frame {
            bar.show(&p);
        }
        Ok(())
    });
    bar.done();
    let r = r?;
    let skipped: Vec<&str> = r["skipped"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if json {
        println!("{r}");
    } else {
        if dry_run {
            for c in r["changes"].as_array().into_iter().flatten() {
                let sign = match c["action"].as_str() {
                    Some("add") => "+",
                    Some("remove") => "-",
                    _ => "~",
                };
                println!("{sign} {}", shown(&c["path"]));
            }
        }
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let done = if dry_run { "would change" } else { "done" };
        let version = r["version"].as_u64().map(|v| format!(", version {v}")).unwrap_or_default();
        let moved = if dry_run {
            String::new()
        } else {
            let secs = r["seconds"].as_f64().unwrap_or(0.0);
            format!("; {} in {} files, {secs:.1} s", client::human_bytes(n("bytes")), n("files"))
        };
        println!(
            "{what}: {done}: {} added, {} changed, {} removed, {} unchanged{moved}{version}",
            n("added"),
            n("changed"),
            n("removed"),
            n("unchanged")
        );
    }
    for s in &skipped {
        eprintln!("hyperfs: skipped {}", printable(s));
    }
    if !skipped.is_empty() {
        anyhow::bail!("{} names were skipped (listed above)", skipped.len());
    }
    Ok(())
}

/// A name, path or link target from a drive as a terminal may be shown it: control characters
/// escaped ([`printable`]); `--json` output stays exact.
fn shown(v: &Value) -> String {
    printable(v.as_str().unwrap_or_default())
}

/// `0o755` → `rwxr-xr-x` (with set-id and sticky bits as ls shows them).
fn mode_string(mode: u32) -> String {
    let mut s: Vec<char> = "rwxrwxrwx".chars().collect();
    for (i, c) in s.iter_mut().enumerate() {
        if mode & (0o400 >> i) == 0 {
            *c = '-';
        }
    }
    for (bit, at, on, off) in [(0o4000, 2, 's', 'S'), (0o2000, 5, 's', 'S'), (0o1000, 8, 't', 'T')] {
        if mode & bit != 0 {
            s[at] = if s[at] == 'x' { on } else { off };
        }
    }
    s.into_iter().collect()
}

/// Milliseconds since the epoch as `2026-11-25 21:07:03` (UTC).
fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Sends `cmd` for the drive and path of `target` (DRIVE:/path), with `extra` fields.
fn target_request(dir: &std::path::Path, cmd: &str, target: &str, mut extra: Value) -> anyhow::Result<Value> {
    let (drive, path) = client::split_target(target);
    extra["cmd"] = cmd.into();
    extra["drive"] = drive.into();
    extra["path"] = path.into();
    client::request(dir, &extra, true)
}

/// `path` made absolute against the current directory (the node has its own).
fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

/// Reads a file, or standard input for `-`.
fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}
