//! The command line's arguments: every command and option, with the help texts clap shows.

use std::path::PathBuf;

use crate::api::NetOptions;
use clap::{Args, Parser, Subcommand};

/// A FUSE-mountable distributed filesystem on Hypercore logs.
#[derive(Debug, Parser)]
#[command(name = "hyperfs", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The data directory (default: $XDG_DATA_HOME/hyperfs, else ~/.local/share/hyperfs).
    #[arg(long, global = true, env = "HYPERFS_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How a command that uses the network reaches peers. Discovery options take effect when the
/// node's network starts (and are remembered for its next start).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct NetArgs {
    /// A peer to connect to (repeatable): HOST:PORT for a hyperfs node (QUIC), or
    /// tcp://HOST:PORT or udx://HOST:PORT for a peer on the JS stack's wire (a JS app serving
    /// `store.replicate(stream)` on a TCP server or a UDX socket, or a node listening with
    /// --tcp or --udx).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub(crate) peers: Vec<String>,
    /// Also accept peers over TCP on ADDR:PORT with the JS stack's wire (Noise, secret-stream,
    /// protomux, hypercore/alpha): JS peers that dial it and `store.replicate(socket)`
    /// (remembered for the node's next start).
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) tcp: Option<String>,
    /// The same over UDX on ADDR:PORT (UDP): a stream a peer starts on an id the node does not
    /// know is taken as a new connection, with that id both ways (remembered).
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) udx: Option<String>,
    /// The UDP address to listen on (default: the one used last time, else any free port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<String>,
    /// A Mainline DHT bootstrap node (repeatable; default: the public ones).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) bootstrap: Vec<String>,
    /// Do not use the DHT.
    #[arg(long)]
    pub(crate) no_dht: bool,
    /// Do not use LAN discovery.
    #[arg(long)]
    pub(crate) no_lan: bool,
    /// A HyperDHT bootstrap node (HOST:PORT; repeatable; remembered; default: the public ones).
    /// Shared drives are announced on HyperDHT under their discovery keys, as Hyperswarm does,
    /// and drives mounted or cloned by key are looked up there and their peers reached by key,
    /// through NATs (hole punching, else a relay).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) hyperdht_bootstrap: Vec<String>,
    /// Do not use HyperDHT.
    #[arg(long)]
    pub(crate) no_hyperdht: bool,
    /// Relay for peers that cannot reach each other, even by hole punching (two NATs that give
    /// each destination a new port): the node announces itself as a relay on HyperDHT, and
    /// forwards such pairs' encrypted streams, which it cannot read (JS's blind-relay
    /// protocol). Needs HyperDHT and a reachable address; remembered.
    #[arg(long)]
    pub(crate) relay: bool,
    /// A blind relay to go through when no hole punch joins this node and a peer (KEY: the
    /// relay's HyperDHT key, hex; repeatable; remembered): a hyperfs node started with --relay,
    /// or a JS peer serving `blind-relay`, tried before the relays found on HyperDHT.
    #[arg(long, value_name = "KEY", value_parser = parse_relay_key)]
    pub(crate) relay_through: Vec<String>,
    /// Be a persistent HyperDHT node on ADDR:PORT (UDP; remembered), for a host others can
    /// reach: JS and hyperfs nodes bootstrap from it, keep their records and registrations on
    /// it and meet through it (it relays their handshakes). With ADDR 0.0.0.0 the address is
    /// the one other DHT nodes see, once they reach it unasked. The node's HyperDHT traffic and
    /// its UDX peers use this socket.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) hyperdht_node: Option<String>,
    /// Bound the blocks kept of drives read on demand (sparse replicas; not clones or seeds)
    /// to SIZE (like 64MiB or 20G; remembered; default a tenth of the disk): least recently
    /// used blocks go first, and are fetched again when read.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) cache_size: Option<u64>,
}

/// A duration as `1d12h`: numbers each followed by s, m or min, h, d, w or y; in milliseconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a duration (like 36h, 7d or 1d12h)");
    let (mut total, mut rest) = (0i64, s.trim());
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit: i64 = match &rest[..unit_len] {
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A relay's key: 64 hex digits (refused here, before the node remembers it).
fn parse_relay_key(s: &str) -> Result<String, String> {
    match hex::decode(s) {
        Ok(b) if b.len() == 32 => Ok(s.to_lowercase()),
        _ => Err(format!("{s:?} is not a relay's key (64 hex digits)")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::cache::parse_size(s).map_err(|e| e.to_string())
}

impl NetArgs {
    /// These options as the control protocol carries them.
    pub(crate) fn options(&self) -> NetOptions {
        NetOptions {
            peers: self.peers.clone(),
            listen: self.listen.clone(),
            bootstrap: self.bootstrap.clone(),
            no_dht: self.no_dht,
            no_lan: self.no_lan,
            hyperdht_bootstrap: self.hyperdht_bootstrap.clone(),
            no_hyperdht: self.no_hyperdht,
            relay: self.relay,
            relay_through: self.relay_through.clone(),
            hyperdht_node: self.hyperdht_node.clone(),
            cache_size: self.cache_size,
            tcp: self.tcp.clone(),
            udx: self.udx.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run this data directory's node in the foreground (other commands start one when needed).
    /// Network options start its network at once with them: a seed on a fixed port.
    ///
    /// Example:
    ///   hyperfs daemon --data-dir /srv/hyperfs
    #[command(verbatim_doc_comment)]
    Daemon {
        #[command(flatten)]
        net: NetArgs,
    },
    /// Stop this data directory's node (it closes its socket and flushes its store).
    Stop,
    /// Make everything written so far durable: files open on mounts are committed and the
    /// store is synced to disk, so a power cut after this loses none of it (see the README's
    /// durability contract).
    Sync,
    /// Create a drive and print its key and hyper:// link.
    ///
    /// Examples:
    ///   hyperfs create
    ///   hyperfs create --name photos --json
    ///   hyperfs create --multiwriter --name notes
    #[command(verbatim_doc_comment)]
    Create {
        /// A local name for the drive (default: drive-N).
        #[arg(long)]
        name: Option<String>,
        /// A drive several devices write (`invite` adds one): each writes its own drive, and
        /// every member shows the one tree merged from all of them; edits of one file made
        /// apart keep both (a Syncthing-named conflict copy beside the winner).
        #[arg(long)]
        multiwriter: bool,
        /// Print JSON: name, key (hex) and link.
        #[arg(long)]
        json: bool,
    },
    /// List this node's drives, or remove one.
    ///
    /// Examples:
    ///   hyperfs drives
    ///   hyperfs drives rm old-replica
    #[command(verbatim_doc_comment)]
    Drives {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: Option<DrivesCommand>,
    },
    /// Give back the space of blocks no drive holds any more (after `rm`, `prune`, `truncate`,
    /// `drives rm`). Safe while drives are mounted, written and shared.
    Gc {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Clear the contents that only older versions of a drive of yours hold; `gc` then gives
    /// their space back. The history (the signed tree) stays: the drive still verifies, and a
    /// checkout of a pruned version reads what peers still have.
    ///
    /// Examples:
    ///   hyperfs prune photos --keep-last 10 --dry-run
    ///   hyperfs prune photos --keep-within 7d --keep-daily 30
    #[command(verbatim_doc_comment)]
    #[command(group(clap::ArgGroup::new("rules").required(true).multiple(true)))]
    Prune {
        /// The drive.
        drive: String,
        /// Keep the contents of the last N versions (the current one is always kept).
        #[arg(long, value_name = "N", group = "rules")]
        keep_last: Option<u64>,
        /// Keep the versions made within DURATION before now (like 36h, 7d, 2w, 1y; s, m(in), h,
        /// d, w and y can be combined: 1d12h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms, group = "rules")]
        keep_within: Option<i64>,
        /// Keep the last version of each of the last N days that have versions.
        #[arg(long, value_name = "N", group = "rules")]
        keep_daily: Option<u64>,
        /// Only show what would be cleared.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the store and each drive take on disk.
    Du {
        /// Only this drive.
        drive: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store a local file in a drive.
    ///
    /// Example:
    ///   hyperfs put report.pdf photos:/docs/report.pdf
    #[command(verbatim_doc_comment)]
    Put {
        /// The local file.
        file: PathBuf,
        /// DRIVE:/path (DRIVE is a local name, a key or a hyper:// link).
        target: String,
    },
    /// Mirror a local folder into a drive folder: add, change and remove until they match.
    ///
    /// Files are compared by size, modification time and mode (as rsync does), so importing an
    /// unchanged folder again writes nothing. Modes, times, symlinks and the executable bit are
    /// kept. Shows progress on a terminal.
    ///
    /// Examples:
    ///   hyperfs import ~/photos photos
    ///   hyperfs import ./site photos:/www --dry-run
    #[command(verbatim_doc_comment)]
    Import {
        /// The local folder.
        dir: PathBuf,
        /// DRIVE[:/folder] (DRIVE is a local name, a key or a hyper:// link).
        target: String,
        /// Only list what would change.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON (with every change).
        #[arg(long)]
        json: bool,
    },
    /// Mirror a drive folder into a local folder: add, change and remove until they match.
    ///
    /// Files in DIR that the drive folder lacks are removed (see --dry-run first). Modes,
    /// times, symlinks and the executable bit are kept; owners only with --owners (as root).
    /// Everything is written beneath DIR: no symlink is followed, entries whose names are not
    /// plain paths (or that sit below a file or link) are skipped with a note, and a drive this
    /// node cannot write loses its set-uid, set-gid and sticky bits.
    ///
    /// Examples:
    ///   hyperfs export photos ~/photos-copy
    ///   hyperfs export photos:/www /var/www --version 12 --dry-run
    #[command(verbatim_doc_comment)]
    Export {
        /// DRIVE[:/folder].
        source: String,
        /// The local folder (created if missing).
        dir: PathBuf,
        /// Export the drive as it was at this version.
        #[arg(long)]
        version: Option<u64>,
        /// Set the owners (uid and gid) the drive records (root only).
        #[arg(long)]
        owners: bool,
        /// Only list what would change.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON (with every change).
        #[arg(long)]
        json: bool,
    },
    /// Serve a drive to peers: they find it by its key (announced on the LAN and the DHT) or
    /// reach this node's address. --listen takes effect when the node's network starts.
    ///
    /// Examples:
    ///   hyperfs share photos
    ///   hyperfs share photos --listen 0.0.0.0:7400 --json
    #[command(verbatim_doc_comment)]
    Share {
        /// The drive.
        drive: String,
        /// Join the drive's topic without announcing it (peers that know of it may still dial).
        #[arg(long)]
        no_announce: bool,
        /// Announce it on the LAN only, not on the DHT.
        #[arg(long)]
        lan_only: bool,
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON: key, link, address.
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a drive (connected peers' channels for it close).
    Unshare {
        /// The drive.
        drive: String,
    },
    /// Download a whole drive from a peer, keep following its writer and serve it onwards
    /// (`seed` is the same command).
    ///
    /// Example:
    ///   hyperfs clone hyper://k3x...o4y --peer 192.0.2.7:7400 --name photos
    #[command(verbatim_doc_comment)]
    #[command(visible_alias = "seed")]
    Clone {
        /// The drive's key or hyper:// link.
        key: String,
        /// A local name for it (default: clone-<first key digits>).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a one-line invite that makes another device a member of a multi-writer drive
    /// (used once; it expires after a day).
    ///
    /// Example:
    ///   hyperfs invite notes
    #[command(verbatim_doc_comment)]
    Invite {
        /// The multi-writer drive.
        drive: String,
        /// Print JSON: invite, expiresMs.
        #[arg(long)]
        json: bool,
    },
    /// Become a member of a multi-writer drive with an invite from a member, and start syncing
    /// it (this node's drive NAME is its copy: mount it, write it).
    ///
    /// Example:
    ///   hyperfs join hyperfs-invite:... --name notes --peer 192.0.2.7:7400
    #[command(verbatim_doc_comment)]
    Join {
        /// The invite `hyperfs invite` printed.
        invite: String,
        /// A local name for the drive (default: drive-N); also this member's name.
        #[arg(long)]
        name: Option<String>,
        /// How long to wait for the inviting member to add this node, in seconds (it goes on
        /// in the background after).
        #[arg(long, default_value_t = 60)]
        wait: u64,
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON: name, key, founder, member.
        #[arg(long)]
        json: bool,
    },
    /// List the members of a multi-writer drive, or remove one.
    ///
    /// Examples:
    ///   hyperfs members notes
    ///   hyperfs members rm notes laptop
    #[command(verbatim_doc_comment)]
    Members {
        /// The multi-writer drive (for the list).
        drive: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: Option<MembersCommand>,
    },
    /// The connected peers: id, address, drives, bytes up and down, round-trip time.
    Peers {
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What HyperDHT's nodes see of this node: its NAT's kind (open, consistent: one public
    /// port whoever it sends to, random: a new port for each destination) and its public
    /// addresses, from the addresses the nodes that answered it saw.
    Nat {
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a file of a drive.
    ///
    /// Example:
    ///   hyperfs cat photos:/docs/report.txt
    #[command(verbatim_doc_comment)]
    Cat {
        /// DRIVE:/path.
        target: String,
        /// Read the drive as it was at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// List a folder of a drive.
    ///
    /// Examples:
    ///   hyperfs ls photos:/docs
    ///   hyperfs ls -lR photos --version 3
    #[command(verbatim_doc_comment)]
    Ls {
        /// DRIVE[:/folder].
        target: String,
        /// Long listing: type and mode, size, modification time, name (and link target).
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// List the folders inside too, recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Read the drive as it was at this version.
        #[arg(long)]
        version: Option<u64>,
        /// Print JSON: one object per name.
        #[arg(long)]
        json: bool,
    },
    /// Remove a file, symlink or empty directory from a drive (older versions keep it).
    ///
    /// Example:
    ///   hyperfs rm photos:/old.jpg
    #[command(verbatim_doc_comment)]
    Rm {
        /// DRIVE:/path.
        target: String,
    },
    /// Move a file or directory inside a drive, in one version.
    ///
    /// Example:
    ///   hyperfs mv photos:/2023 /archive/2023
    #[command(verbatim_doc_comment)]
    Mv {
        /// DRIVE:/from.
        from: String,
        /// The new path in the same drive.
        to: String,
    },
    /// Make an (empty) directory in a drive.
    Mkdir {
        /// DRIVE:/path.
        target: String,
    },
    /// Show a file's entry: type, size, executable bit, link target, metadata.
    Stat {
        /// DRIVE:/path.
        target: String,
        /// Read the drive as it was at this version.
        #[arg(long)]
        version: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The versions of a drive (or of one path in it): version, op, path, size, time.
    Log {
        /// DRIVE[:/path].
        target: String,
        /// Show the history up to this version only.
        #[arg(long)]
        version: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cut a drive of yours back to an older version: the versions after it are gone, here and
    /// (as a new fork) on every peer that follows it. Refused while it is mounted read-write.
    ///
    /// Example:
    ///   hyperfs truncate photos 41
    #[command(verbatim_doc_comment)]
    Truncate {
        /// The drive.
        drive: String,
        /// The version to go back to.
        version: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The paths added, changed and removed between two versions (V2 defaults to the latest).
    Diff {
        /// The drive.
        drive: String,
        v1: u64,
        v2: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A drive's keys, version, cores and chunker.
    Info {
        /// The drive.
        drive: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mount a drive as a folder: read-write if this node holds its key, else read-only.
    ///
    /// Every close of a changed file makes one new drive version (see `hyperfs log`). The mount
    /// lives in the node; it goes away when the node stops, even if it is killed. A key this
    /// node does not have mounts a replica that fetches from peers only the blocks read and
    /// follows the writer's new versions.
    ///
    /// Examples:
    ///   hyperfs mount photos ~/photos
    ///   hyperfs mount photos ~/photos-then --version 42
    ///   hyperfs mount hyper://k3x...o4y ~/theirs --peer 192.0.2.7:7400
    #[command(verbatim_doc_comment)]
    Mount {
        /// The drive: a local name, a key or a hyper:// link.
        drive: String,
        /// An existing, empty directory.
        dir: PathBuf,
        /// Show the drive as it was at this version (read-only).
        #[arg(long)]
        version: Option<u64>,
        /// Refuse every change (EROFS).
        #[arg(long)]
        read_only: bool,
        /// Let other local users in (their access is checked against the modes). Without it
        /// the mount is yours alone; for a user other than root, /etc/fuse.conf must hold
        /// user_allow_other.
        #[arg(long)]
        allow_other: bool,
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unmount a mounted drive (also clears a mount left behind by a killed node).
    ///
    /// Example:
    ///   hyperfs unmount ~/photos
    #[command(verbatim_doc_comment)]
    Unmount {
        /// The mount point.
        dir: PathBuf,
        /// Detach it even while files in it are open.
        #[arg(long)]
        lazy: bool,
    },
    /// Print a shell completion script.
    ///
    /// Example:
    ///   hyperfs completions bash > /etc/bash_completion.d/hyperfs
    #[command(verbatim_doc_comment)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    ///
    /// Example:
    ///   hyperfs man > /usr/local/share/man/man1/hyperfs.1
    #[command(verbatim_doc_comment)]
    Man,
    /// Re-hash every local block of a drive and check its signatures; exit 1 if anything is bad.
    Verify {
        /// The drive.
        drive: String,
    },
    /// Low-level Hypercore tools.
    #[command(subcommand)]
    Core(CoreCommand),
    /// Low-level Hyperbee tools.
    #[command(subcommand)]
    Bee(BeeCommand),
    /// Back up or restore a drive's writer key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the content-defined chunks of files.
    ///
    /// One line per chunk: OFFSET LENGTH LEAF-HASH-HEX. Needs no node and no data directory.
    ///
    /// Examples:
    ///   hyperfs chunk big.iso
    ///   cat big.iso | hyperfs chunk -
    ///   hyperfs chunk --stats a.tar b.tar
    #[command(verbatim_doc_comment)]
    Chunk {
        /// Files to chunk; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print count, mean/min/max chunk size and throughput instead of the chunks.
        #[arg(long)]
        stats: bool,
    },
    /// Internal: started by the node beside each mount; unmounts it once the node is gone.
    #[command(hide = true)]
    MountGuard {
        /// The mount point.
        dir: PathBuf,
        /// The mount's id in /proc/self/mountinfo.
        mount_id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DrivesCommand {
    /// Remove a drive from this node: a replica, or (with --yes) a drive you write, whose
    /// secret key goes with it. Its space comes back at the next `gc`.
    Rm {
        /// The drive's name or key.
        drive: String,
        /// Confirm the removal of a drive you write: nobody can write it again.
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MembersCommand {
    /// Remove a member: what it writes from now on is not taken by any member.
    Rm {
        /// The multi-writer drive.
        drive: String,
        /// The member: its name or the start of its key.
        member: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CoreCommand {
    /// Run a JSON script of appends and truncations on a fresh core and print its signed state.
    ///
    /// The script: {"seed": "<hex 32>" | "secretKey": "<hex 64>", "compat": bool,
    /// "ops": [{"append": ["<hex block>", ...]} | {"truncate": N}, ...]}.
    /// It runs on the real RocksDB store in a temporary directory and prints key, discoveryKey,
    /// manifest, length, byteLength, fork, treeHash, signature and roots as one JSON object.
    ///
    /// Example:
    ///   hyperfs core replay script.json
    #[command(verbatim_doc_comment)]
    Replay {
        /// The script file; `-` reads standard input.
        script: PathBuf,
    },
    /// Print a core of this node's store: manifest, length, fork, signature and every block.
    ///
    /// Blocks not stored locally print as null.
    ///
    /// Example:
    ///   hyperfs core dump <core-key> --json
    #[command(verbatim_doc_comment)]
    Dump {
        /// The core's key: hex, z-base-32 or a hyper:// link.
        key: String,
        /// Print JSON (the only format so far).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Write a drive's secret key to a new file (mode 0600).
    ///
    /// Example:
    ///   hyperfs keys export hyper://<key> drive.key
    #[command(verbatim_doc_comment)]
    Export {
        /// The drive: its key as hex, z-base-32 or a hyper:// link.
        drive: String,
        /// The file to create; an existing file is never overwritten.
        file: PathBuf,
    },
    /// Make a drive writable on this node from a file written by `keys export`.
    ///
    /// The node must hold the drive's history first (clone it from a peer): a key imported on
    /// a node without it would start a second history under the same key, a fork every
    /// follower of the drive refuses.
    ///
    /// Example:
    ///   hyperfs clone hyper://<key> --peer HOST:PORT && hyperfs keys import drive.key
    #[command(verbatim_doc_comment)]
    Import {
        /// The key file.
        file: PathBuf,
        /// Import into a node that does not hold the drive: starts a new history under the key,
        /// forking the drive for everyone who follows it (only for a drive never shared).
        #[arg(long)]
        offline_ok: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BeeCommand {
    /// Run a JSON script of puts, deletes and batches on a fresh bee and print its blocks.
    ///
    /// The script: {"seed": "<hex 32>", "ops": [{"put": ["<hex key>", "<hex value>"]} |
    /// {"del": "<hex key>"} | {"batch": [put and del ops]}], "queries": [...]}.
    /// It runs on a non-compat core made from the seed, on the real RocksDB store in a temporary
    /// directory, and prints {"key": "<hex>", "blocks": ["<hex of block 0>", ...]}.
    ///
    /// Optional queries, answered on the finished bee into "answers":
    ///   {"get": "<hex key>"}, {"range": {"gt"|"gte"|"lt"|"lte": "<hex>", "reverse": bool,
    ///   "limit": N}}, {"history": {"gt"|"gte"|"lt"|"lte": N, "reverse": bool, "limit": N}},
    ///   {"diff": {"left": V, "right": V, range bounds}}; each may add "version": V and
    ///   "sub": "<hex prefix>".
    ///
    /// Example:
    ///   hyperfs bee replay script.json
    #[command(verbatim_doc_comment)]
    Replay {
        /// The script file; `-` reads standard input.
        script: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_as_restic_and_borg_users_write_them() {
        const H: i64 = 3_600_000;
        for (s, ms) in [("36h", 36 * H), ("7d", 168 * H), ("1d12h", 36 * H), ("2w", 336 * H), ("90m", 90 * 60_000)] {
            assert_eq!(super::parse_duration_ms(s), Ok(ms), "{s}");
        }
        for bad in ["", "7", "d", "7x", "1d 2h", "99999999999999y"] {
            assert!(super::parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
