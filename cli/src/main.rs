//! hyperfs, the command line: clap commands and their wiring to the engine.
//!
//! Owns: argument parsing, the JSON/text output of each command, user-facing errors (one clear
//! line, no backtrace). Knows nothing of the internals of the other crates beyond their public
//! APIs.

mod api;
mod args;
mod bee;
mod beneath;
mod cache;
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

use api::Request;
use args::{BeeCommand, Cli, Command, CoreCommand, DrivesCommand, KeysCommand, MembersCommand};
use client::human_bytes;
use hyperfs_engine::drive::printable;
use serde_json::Value;

/// The node makes and frees many small objects per request (names, entries, listings): mimalloc
/// serves them from per-thread pages, where the system allocator spent a sixth of a listing's time.
/// It is built without transparent huge pages (`no_thp`): freed memory it gives back is faulted in
/// again when reused, and a huge page's fault zeroes 2 MiB for a 64 KiB block buffer. Clearing
/// pages was 15% of a sparse read's CPU; paired runs, medians of 7: a 256 MiB clone 0.80 s ->
/// 0.63 s, a sparse read through a mount 1.21 s -> 0.99 s.
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
        // Colours only on a terminal: the node's log is a file (`node.log`) read with grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            node::run(&d, given.then(|| net.options()))
        }),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "hyperfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        Command::Stop => dir().and_then(|d| {
            let r: api::Stopping = client::call(&d, &Request::Stop, false)?;
            client::wait_exit(r.pid as i32, &d)
        }),
        Command::Sync => dir().and_then(|d| client::call::<api::Synced>(&d, &Request::Sync, true).map(drop)),
        Command::Create { ref name, multiwriter, json } => dir().and_then(|d| {
            let r: api::Named = client::call(&d, &Request::Create { name: name.clone(), multiwriter }, true)?;
            if json {
                print_json(&r);
            } else {
                println!("{}\t{}\t{}", r.name, r.key, r.link.unwrap_or_default());
            }
            Ok(())
        }),
        Command::Drives { cmd: Some(DrivesCommand::Rm { ref drive, yes, json }), .. } => dir().and_then(|d| {
            let r: api::Removed = client::call(&d, &Request::DrivesRm { drive: drive.clone(), yes }, true)?;
            if json {
                print_json(&r);
            } else {
                let what = if r.own { "drive" } else { "replica" };
                println!("removed {what} {} ({}); `hyperfs gc` gives its space back", r.name.unwrap_or_default(), r.key);
            }
            Ok(())
        }),
        Command::Gc { json } => dir().and_then(|d| {
            let r: api::Collected = client::call(&d, &Request::Gc, true)?;
            if json {
                print_json(&r);
            } else {
                let c = r.done;
                println!(
                    "removed {} blocks ({}), gave back {} of the block log; {} blocks kept ({:.1} s)",
                    c.blocks_removed,
                    human_bytes(c.bytes_removed),
                    human_bytes(c.bytes_freed),
                    c.blocks_kept,
                    r.seconds
                );
            }
            Ok(())
        }),
        Command::Prune { ref drive, keep_last, keep_within, keep_daily, dry_run, json } => dir().and_then(|d| {
            let req =
                Request::Prune { drive: drive.clone(), keep_last, keep_within_ms: keep_within, keep_daily, dry_run };
            let r: api::Pruned = client::call(&d, &req, true)?;
            if json {
                print_json(&r);
            } else {
                let verb = if r.dry_run { "would clear" } else { "cleared" };
                let p = r.done;
                println!(
                    "{verb} {} blocks ({}) that only versions before {} hold; kept {} versions",
                    p.blocks_cleared,
                    human_bytes(p.bytes_cleared),
                    p.kept_from,
                    p.versions_kept
                );
            }
            Ok(())
        }),
        Command::Du { ref drive, json } => dir().and_then(|d| {
            let r: api::Usage = client::call(&d, &Request::Du { drive: drive.clone() }, true)?;
            if json {
                print_json(&r);
            } else {
                for u in &r.drives {
                    let name = u.name.clone().unwrap_or_else(|| u.key.clone());
                    let own = if u.own { "own" } else { "replica" };
                    println!(
                        "{}\t{own}\t{} blocks\t{}\t{} on disk ({} shared with other drives)",
                        name,
                        u.blocks,
                        human_bytes(u.bytes),
                        human_bytes(u.bytes_on_disk),
                        human_bytes(u.shared_bytes)
                    );
                }
                println!(
                    "store\t{} on disk: blocks {}, unused log space {}, database {}",
                    human_bytes(r.total),
                    human_bytes(r.blocks),
                    human_bytes(r.unused),
                    human_bytes(r.database)
                );
                if let Some(c) = r.cache {
                    println!("cache\t{} of {} (drives read on demand)", human_bytes(c.used), human_bytes(c.limit));
                }
            }
            Ok(())
        }),
        Command::Invite { ref drive, json } => dir().and_then(|d| {
            let r: api::Invitation = client::call(&d, &Request::Invite { drive: drive.clone() }, true)?;
            if json {
                print_json(&r);
            } else {
                println!("{}", r.invite);
            }
            Ok(())
        }),
        Command::Join { ref invite, ref name, wait, ref net, json } => dir().and_then(|d| {
            let req =
                Request::Join { invite: invite.clone(), name: name.clone(), wait_ms: wait * 1000, net: net.options() };
            let r: api::Joined = client::call(&d, &req, true)?;
            if json {
                print_json(&r);
            } else if r.member {
                println!("joined as {} ({})", r.name, r.key);
            } else {
                println!("{} ({}) is waiting for a member to add it; the node goes on asking", r.name, r.key);
            }
            Ok(())
        }),
        Command::Members { cmd: Some(MembersCommand::Rm { ref drive, ref member, json }), .. } => dir().and_then(|d| {
            let req = Request::MembersRm { drive: drive.clone(), member: member.clone() };
            let r: api::MemberInfo = client::call(&d, &req, true)?;
            if json {
                print_json(&r);
            } else {
                println!("removed member {} ({})", r.name, r.key);
            }
            Ok(())
        }),
        Command::Members { ref drive, json, cmd: None } => dir().and_then(|d| {
            let Some(drive) = drive else { anyhow::bail!("which drive? hyperfs members DRIVE") };
            let r: Vec<api::MemberInfo> = client::call(&d, &Request::Members { drive: drive.clone() }, true)?;
            if json {
                print_json(&r);
            } else {
                for m in &r {
                    let mut notes = Vec::new();
                    if m.me {
                        notes.push("this node".to_owned());
                    }
                    if m.founder {
                        notes.push("founder".to_owned());
                    }
                    match m.version {
                        Some(v) => notes.push(format!("version {v}")),
                        None => notes.push("not reached yet".to_owned()),
                    }
                    println!("{}\t{}\t{}", m.key, m.name, notes.join(", "));
                }
            }
            Ok(())
        }),
        Command::Drives { json, cmd: None } => dir().and_then(|d| {
            let r: Vec<api::DriveListing> = client::call(&d, &Request::Drives, true)?;
            if json {
                print_json(&r);
            } else {
                for e in &r {
                    let mounts: Vec<String> = e.mounts.iter().map(|m| m.dir.display().to_string()).collect();
                    println!("{}\t{}\t{}", e.name, e.key, mounts.join(","));
                }
            }
            Ok(())
        }),
        Command::Put { ref file, ref target } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let file = std::fs::canonicalize(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let req = Request::Put { drive: drive.clone(), path, file };
            client::call::<api::Changed>(&d, &req, true).map(drop)
        }),
        Command::Cat { ref target, version } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let req = Request::Cat { drive: drive.clone(), path, version };
            let mut out = std::io::stdout().lock();
            client::call_streaming::<api::Sent>(&d, &req, true, &mut |frame| {
                if let control::Frame::Bytes(bytes) = frame {
                    std::io::Write::write_all(&mut out, &bytes)?;
                }
                Ok(())
            })?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }),
        Command::Share { ref drive, no_announce, lan_only, ref net, json } => dir().and_then(|d| {
            let req = Request::Share { drive: drive.clone(), no_announce, lan_only, net: net.options() };
            let r: api::Sharing = client::call(&d, &req, true)?;
            if json {
                print_json(&r);
            } else {
                let mut on = r.address.clone();
                if let Some(a6) = &r.address6 {
                    on.push_str(&format!(", {a6}"));
                }
                if r.tcp.is_some() || r.udx.is_some() {
                    on.push_str(" (quic)");
                }
                for (addr, name) in [(&r.tcp, "tcp"), (&r.udx, "udx")] {
                    if let Some(a) = addr {
                        on.push_str(&format!(", {a} ({name})"));
                    }
                }
                println!("sharing {} on {on}", r.link);
            }
            Ok(())
        }),
        Command::Clone { ref key, ref name, ref net, json } => dir().and_then(|d| {
            let req = Request::Clone { key: key.clone(), name: name.clone(), net: net.options() };
            let mut bar = client::ProgressBar::new(!json);
            let r = client::call_streaming::<api::Cloned>(&d, &req, true, &mut |frame| {
                let control::Frame::Progress(p) = frame else { return Ok(()) };
                let p: api::CloneProgress = serde_json::from_value(p)?;
                bar.show(&api::MirrorProgress { bytes: p.blocks, total_bytes: p.total_blocks, ..Default::default() });
                Ok(())
            });
            bar.done();
            let r = r?;
            if json {
                print_json(&r);
            } else {
                println!("cloned {} as {} (version {}) in {:.2} s", r.key, r.name, r.version, r.seconds);
            }
            Ok(())
        }),
        Command::Unshare { ref drive } => dir().and_then(|d| {
            client::call::<api::Done>(&d, &Request::Unshare { drive: drive.clone() }, true).map(drop)
        }),
        Command::Nat { ref net, json } => dir().and_then(|d| {
            let r: api::NatReport = client::call(&d, &Request::Nat { net: net.options() }, true)?;
            if json {
                print_json(&r);
            } else {
                let at = if r.addresses.is_empty() { "-".to_owned() } else { r.addresses.join(", ") };
                println!("{} NAT, public address {at} ({} DHT nodes answered)", r.firewall, r.samples);
                println!("reached on HyperDHT by key {}", r.key);
                if let Some(n) = &r.node {
                    let id = n.id.as_deref().unwrap_or("not known yet (its address is not)");
                    println!("a HyperDHT node, id {id}, {} nodes in its table", n.table);
                }
            }
            Ok(())
        }),
        Command::Peers { ref net, json } => dir().and_then(|d| {
            let r: Vec<api::PeerEntry> = client::call(&d, &Request::Peers { net: net.options() }, true)?;
            if json {
                print_json(&r);
            } else {
                for p in &r {
                    let drives = if p.drives.is_empty() { "-".to_owned() } else { p.drives.join(",") };
                    println!(
                        "{}\t{}\t{}\t{} {} {}\t{drives}\tup {}\tdown {}\t{:.1} ms",
                        p.id, p.address, p.found, p.kind, p.transport, p.path, p.bytes_up, p.bytes_down, p.rtt_ms
                    );
                }
            }
            Ok(())
        }),
        Command::Import { dir: ref local, ref target, dry_run, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let req = Request::Import { drive: drive.clone(), path, dir: absolute(local)?, dry_run };
            mirror_command(&d, &req, dry_run, json, &format!("{} → {target}", local.display()))
        }),
        Command::Export { ref source, dir: ref local, version, owners, dry_run, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(source);
            let req =
                Request::Export { drive: drive.clone(), path, dir: absolute(local)?, version, dry_run, owners };
            mirror_command(&d, &req, dry_run, json, &format!("{source} → {}", local.display()))
        }),
        Command::Rm { ref target } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            client::call::<api::Changed>(&d, &Request::Rm { drive: drive.clone(), path }, true).map(drop)
        }),
        Command::Mv { ref from, ref to } => dir().and_then(|d| {
            let (drive, path) = client::split_target(from);
            let req = Request::Mv { drive: drive.clone(), path, to: to.clone() };
            client::call::<api::Changed>(&d, &req, true).map(drop)
        }),
        Command::Mkdir { ref target } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            client::call::<api::Changed>(&d, &Request::Mkdir { drive: drive.clone(), path }, true).map(drop)
        }),
        Command::Stat { ref target, version, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let r: api::StatReply = client::call(&d, &Request::Stat { drive: drive.clone(), path, version }, true)?;
            if json {
                print_json(&r);
            } else {
                // One field a line, by the names `--json` gives them.
                for (k, v) in serde_json::to_value(&r)?.as_object().into_iter().flatten() {
                    println!("{k}: {v}");
                }
            }
            Ok(())
        }),
        Command::Log { ref target, version, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let r: Vec<api::LogEntry> =
                client::call(&d, &Request::Log { drive: drive.clone(), path, version }, true)?;
            if json {
                print_json(&r);
            } else {
                for e in &r {
                    let size = e.size.map_or("-".to_owned(), |s| s.to_string());
                    let time = e.time.map_or("-".to_owned(), format_time);
                    let by = e.member.as_ref().map_or(String::new(), |m| format!("\t{}", printable(m)));
                    println!("{}\t{}\t{}\t{size}\t{}{by}", e.version, e.op, time, printable(&e.path));
                }
                // A history the writer's key also signed otherwise is said where history is read.
                let info: api::Info = client::call(&d, &Request::Info { drive }, true)?;
                for (core, c) in [("db", &info.db), ("blobs", &info.blobs)] {
                    if let Some(c) = &c.conflict {
                        println!("CONFLICT: the writer signed another history of the {core} core on fork {} \
                            (length {} here, {} there); this node takes no more of that fork (info --json)",
                            c.fork, c.ours.length, c.theirs.length);
                    }
                }
            }
            Ok(())
        }),
        Command::Truncate { ref drive, version, json } => dir().and_then(|d| {
            let r: api::Truncated = client::call(&d, &Request::Truncate { drive: drive.clone(), version }, true)?;
            if json {
                print_json(&r);
            } else {
                println!("{drive} is back at version {} (fork {})", r.version, r.fork);
            }
            Ok(())
        }),
        Command::Diff { ref drive, v1, v2, json } => dir().and_then(|d| {
            let r: Vec<api::DiffEntry> = client::call(&d, &Request::Diff { drive: drive.clone(), v1, v2 }, true)?;
            if json {
                print_json(&r);
            } else {
                for e in &r {
                    let sign = match e.change.as_str() {
                        "added" => "+",
                        "removed" => "-",
                        _ => "~",
                    };
                    println!("{sign} {}", printable(&e.path));
                }
            }
            Ok(())
        }),
        Command::Info { ref drive, json } => dir().and_then(|d| {
            let r: api::Info = client::call(&d, &Request::Info { drive: drive.clone() }, true)?;
            if json {
                print_json(&r);
            } else {
                println!("key: {}\nlink: {}\nversion: {}\nwritable: {}\ndb: {} blocks, {} bytes\nblobs: {} blocks, {} bytes\nchunker: {}",
                    r.key, r.link, r.version, r.writable, r.db.length, r.db.byte_length, r.blobs.length, r.blobs.byte_length, r.chunker);
                for (core, c) in [("db", &r.db), ("blobs", &r.blobs)] {
                    if let Some(c) = &c.conflict {
                        println!("CONFLICT: the writer signed two histories of the {core} core on fork {} (lengths {} and {}); \
                            this node takes no more of that fork and keeps both signatures (info --json)",
                            c.fork, c.ours.length, c.theirs.length);
                    }
                }
            }
            Ok(())
        }),
        Command::Verify { ref drive } => dir().and_then(|d| {
            let r: api::Verification = client::call(&d, &Request::Verify { drive: drive.clone() }, true)?;
            if r.bad.is_empty() {
                println!("every local block and signature verifies");
                Ok(())
            } else {
                Err(anyhow::anyhow!("{}", r.bad.join("; ")))
            }
        }),
        Command::Mount { ref drive, dir: ref mount_dir, version, read_only, allow_other, ref net, json } => dir().and_then(|d| {
            // SAFETY: getuid and getgid cannot fail and touch no memory.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let req = Request::Mount { drive: drive.clone(), dir: absolute(mount_dir)?, version, read_only, allow_other, uid, gid, net: net.options() };
            let r: api::Mounted = client::call(&d, &req, true)?;
            if json {
                print_json(&r);
            } else {
                let how = if r.read_only { "read-only" } else { "read-write" };
                println!("mounted {drive} on {} ({how})", r.dir.display());
            }
            Ok(())
        }),
        Command::Unmount { dir: ref mount_dir, lazy } => dir().and_then(|d| {
            let req = Request::Unmount { dir: absolute(mount_dir)?, lazy };
            client::call::<api::Unmounted>(&d, &req, true).map(drop)
        }),
        Command::Ls { ref target, long, recursive, version, json } => dir().and_then(|d| {
            let (drive, path) = client::split_target(target);
            let req = Request::Ls { drive: drive.clone(), path, version, recursive };
            let entries: Vec<api::LsEntry> = client::call(&d, &req, true)?;
            if json {
                print_json(&entries);
            } else if long {
                for e in &entries {
                    let kind = match e.kind {
                        api::Kind::Directory => 'd',
                        api::Kind::Symlink => 'l',
                        api::Kind::File => '-',
                        api::Kind::Fifo => 'p',
                        api::Kind::Socket => 's',
                        api::Kind::CharDevice => 'c',
                        api::Kind::BlockDevice => 'b',
                    };
                    let mode = mode_string(e.mode as u32);
                    let size = e.size.map_or("-".to_owned(), |s| s.to_string());
                    let time = e.mtime.map_or("-".to_owned(), format_time);
                    let link = e.linkname.as_deref().map(|l| format!(" -> {}", printable(l))).unwrap_or_default();
                    println!("{kind}{mode} {size:>12} {time} {}{link}", printable(&e.name));
                }
            } else {
                for e in &entries {
                    println!("{}", printable(&e.name));
                }
            }
            Ok(())
        }),
        Command::Core(CoreCommand::Dump { ref key, .. }) => dir().and_then(|d| {
            println!("{}", client::call::<Value>(&d, &Request::Dump { key: key.clone() }, true)?);
            Ok(())
        }),
        Command::Keys(KeysCommand::Export { ref drive, ref file }) => dir().and_then(|d| {
            let req = Request::KeysExport { drive: drive.clone(), file: absolute(file)? };
            let r: api::KeysExported = client::call(&d, &req, true)?;
            eprintln!("wrote the secret key of drive {drive} to {}; keep it private", r.file.display());
            Ok(())
        }),
        Command::Keys(KeysCommand::Import { ref file, offline_ok }) => dir().and_then(|d| {
            let req = Request::KeysImport { file: absolute(file)?, offline_ok };
            let r: api::Named = client::call(&d, &req, true)?;
            println!("{}", r.key);
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
fn mirror_command(dir: &std::path::Path, req: &Request, dry_run: bool, json: bool, what: &str) -> anyhow::Result<()> {
    let mut bar = client::ProgressBar::new(!json && !dry_run);
    let r = client::call_streaming::<api::Mirrored>(dir, req, true, &mut |frame| {
        if let control::Frame::Progress(p) = frame {
            bar.show(&serde_json::from_value(p)?);
        }
        Ok(())
    });
    bar.done();
    let r = r?;
    if json {
        print_json(&r);
    } else {
        if dry_run {
            for c in &r.changes {
                let sign = match c.action.as_str() {
                    "add" => "+",
                    "remove" => "-",
                    _ => "~",
                };
                println!("{sign} {}", printable(&c.path));
            }
        }
        let done = if dry_run { "would change" } else { "done" };
        let version = r.version.map(|v| format!(", version {v}")).unwrap_or_default();
        let moved = if dry_run {
            String::new()
        } else {
            format!("; {} in {} files, {:.1} s", client::human_bytes(r.bytes), r.files, r.seconds)
        };
        println!(
            "{what}: {done}: {} added, {} changed, {} removed, {} unchanged{moved}{version}",
            r.added, r.changed, r.removed, r.unchanged
        );
    }
    for s in &r.skipped {
        eprintln!("hyperfs: skipped {}", printable(s));
    }
    if !r.skipped.is_empty() {
        anyhow::bail!("{} names were skipped (listed above)", r.skipped.len());
    }
    Ok(())
}

/// A reply as `--json` prints it: the control protocol's own form.
fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("hyperfs: {e}"),
    }
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
    let (year, month, day, h, m, s) = hyperfs_engine::drive::meta::utc(ms.div_euclid(1000));
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
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
