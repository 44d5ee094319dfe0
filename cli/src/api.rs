//! The control protocol's requests and replies, defined once for both sides: the command line
//! sends a [`Request`] and reads the reply as the type its command gets back; the node parses
//! the [`Request`] and answers with that type. Their JSON is the wire form ([`crate::control`]
//! frames it) and what `--json` prints: field names in camelCase, a request's command in `cmd`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a command that uses the network reaches peers (see `NetArgs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetOptions {
    pub peers: Vec<String>,
    pub listen: Option<String>,
    pub bootstrap: Vec<String>,
    pub no_dht: bool,
    pub no_lan: bool,
    pub hyperdht_bootstrap: Vec<String>,
    pub no_hyperdht: bool,
    /// Relay for peers that cannot punch through to each other (remembered).
    pub relay: bool,
    /// Blind relays (their keys, hex) to go through first when no punch joins two NATs
    /// (remembered).
    pub relay_through: Vec<String>,
    /// Be a persistent HyperDHT node on this UDP address (remembered).
    pub hyperdht_node: Option<String>,
    /// The bound of the cache of sparse replicas' blocks, in bytes (remembered).
    pub cache_size: Option<u64>,
    /// Also accept peers over TCP with the JS stack's wire on this address (remembered).
    pub tcp: Option<String>,
    /// … and over UDX (remembered).
    pub udx: Option<String>,
}

/// One request to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum Request {
    Ping,
    Stop,
    Sync,
    Create {
        name: Option<String>,
        #[serde(default)]
        multiwriter: bool,
    },
    /// An invite to a multi-writer drive.
    Invite {
        drive: String,
    },
    /// Joins a multi-writer drive, waiting up to `wait_ms` to be added.
    Join {
        invite: String,
        name: Option<String>,
        wait_ms: u64,
        #[serde(flatten)]
        net: NetOptions,
    },
    /// The members of a multi-writer drive.
    Members {
        drive: String,
    },
    MembersRm {
        drive: String,
        member: String,
    },
    Drives,
    /// Removes a drive or a replica (an own drive only with `yes`).
    DrivesRm {
        drive: String,
        yes: bool,
    },
    /// Collects the store's garbage now.
    Gc,
    /// Clears the contents only older versions of a drive hold.
    Prune {
        drive: String,
        keep_last: Option<u64>,
        keep_within_ms: Option<i64>,
        keep_daily: Option<u64>,
        dry_run: bool,
    },
    /// What the store and each drive take on disk.
    Du {
        drive: Option<String>,
    },
    Put {
        drive: String,
        path: String,
        file: PathBuf,
    },
    Cat {
        drive: String,
        path: String,
        version: Option<u64>,
    },
    Import {
        drive: String,
        path: String,
        dir: PathBuf,
        dry_run: bool,
    },
    Export {
        drive: String,
        path: String,
        dir: PathBuf,
        version: Option<u64>,
        dry_run: bool,
        owners: bool,
    },
    Ls {
        drive: String,
        path: String,
        version: Option<u64>,
        recursive: bool,
    },
    Rm {
        drive: String,
        path: String,
    },
    Mv {
        drive: String,
        path: String,
        to: String,
    },
    Mkdir {
        drive: String,
        path: String,
    },
    Stat {
        drive: String,
        path: String,
        version: Option<u64>,
    },
    Log {
        drive: String,
        path: String,
        version: Option<u64>,
    },
    Truncate {
        drive: String,
        version: u64,
    },
    Diff {
        drive: String,
        v1: u64,
        v2: Option<u64>,
    },
    Info {
        drive: String,
    },
    Verify {
        drive: String,
    },
    Mount {
        drive: String,
        dir: PathBuf,
        version: Option<u64>,
        read_only: bool,
        allow_other: bool,
        uid: u32,
        gid: u32,
        #[serde(flatten)]
        net: NetOptions,
    },
    Unmount {
        dir: PathBuf,
        lazy: bool,
    },
    Dump {
        key: String,
    },
    KeysExport {
        drive: String,
        file: PathBuf,
    },
    KeysImport {
        file: PathBuf,
        offline_ok: bool,
    },
    Share {
        drive: String,
        no_announce: bool,
        lan_only: bool,
        #[serde(flatten)]
        net: NetOptions,
    },
    Unshare {
        drive: String,
    },
    Clone {
        key: String,
        name: Option<String>,
        #[serde(flatten)]
        net: NetOptions,
    },
    Peers {
        #[serde(flatten)]
        net: NetOptions,
    },
    Nat {
        #[serde(flatten)]
        net: NetOptions,
    },
}

/// The reply of `nat`: what HyperDHT's nodes see of this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatReport {
    /// `unknown` (too few answers yet), `open`, `consistent` or `random`.
    pub firewall: String,
    /// The public addresses a peer is told (a random NAT's: its IP, port 0).
    pub addresses: Vec<String>,
    /// How many DHT nodes' answers the verdict rests on.
    pub samples: u32,
    /// The key peers reach this node by on HyperDHT (hex).
    #[serde(default)]
    pub key: String,
    /// As a persistent HyperDHT node (`--hyperdht-node`): its node id (hex, once its address
    /// is known) and the nodes its routing table holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<DhtNodeReport>,
}

/// A persistent HyperDHT node's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhtNodeReport {
    pub id: Option<String>,
    pub table: usize,
}

/// The reply of `ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    pub dir: PathBuf,
}

/// The reply of `stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stopping {
    pub pid: u32,
}

/// The reply of `sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Synced {
    pub synced: bool,
}

/// The reply of `create` and of `keys import`: a drive by its local name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The reply of `invite`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invitation {
    pub invite: String,
    /// When it can no longer be used (ms since the epoch).
    pub expires_ms: i64,
}

/// The reply of `join`: this node's drive of the multi-writer drive, and whether a member
/// added it yet (else it goes on asking in the background).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub name: String,
    pub key: String,
    pub founder: String,
    pub member: bool,
}

/// One member of `members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub key: String,
    pub name: String,
    /// This node.
    pub me: bool,
    pub founder: bool,
    /// Its drive's version as this node holds it (none yet: not found so far).
    pub version: Option<u64>,
}

/// One drive of `drives`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriveListing {
    pub name: String,
    pub key: String,
    pub mounts: Vec<MountInfo>,
}

/// A mount of a drive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountInfo {
    pub dir: PathBuf,
    pub version: Option<u64>,
    pub read_only: bool,
}

/// The reply of a change (`put`, `rm`, `mv`, `mkdir`): the drive's version after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    pub version: u64,
}

/// The reply of `cat`, after the file's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    pub bytes: u64,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    #[serde(rename = "char")]
    CharDevice,
    #[serde(rename = "block")]
    BlockDevice,
}

/// One entry of `ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LsEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub size: Option<u64>,
    pub mode: u64,
    pub mtime: Option<i64>,
    pub executable: Option<bool>,
    pub linkname: Option<String>,
    /// A device's number (`dev_t`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
}

/// The reply of `stat`: a folder has only its path and kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatReply {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStat>,
}

/// What `stat` says of a file or link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStat {
    pub size: u64,
    pub executable: bool,
    pub linkname: Option<String>,
    pub metadata: Option<Value>,
    pub seq: u64,
    pub block_map: bool,
}

/// One change of `log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub version: u64,
    /// `put`, `del` or `symlink`.
    pub op: String,
    pub path: String,
    pub size: Option<u64>,
    pub time: Option<i64>,
    /// On a multi-writer drive: the member who made the change (its name, else the start of
    /// its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// The reply of `truncate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truncated {
    pub version: u64,
    pub fork: u64,
}

/// One path of `diff`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffEntry {
    pub path: String,
    /// `added`, `removed` or `modified`.
    pub change: String,
}

/// The reply of `info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub key: String,
    pub discovery_key: String,
    pub link: String,
    pub version: u64,
    pub writable: bool,
    pub db: CoreInfo,
    pub blobs: CoreInfo,
    pub chunker: String,
    pub mounts: Vec<MountInfo>,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    /// What the drive's local blocks take in the store (blocks shared with other drives count
    /// in each).
    pub bytes_on_disk: u64,
}

/// One core of a drive, in `info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoreInfo {
    pub key: String,
    pub length: u64,
    pub byte_length: u64,
    pub local_blocks: u64,
    pub total_blocks: u64,
    pub fork: u64,
    pub conflict: Option<ConflictInfo>,
}

/// The proof that a writer signed two histories.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub fork: u64,
    pub ours: SignedInfo,
    pub theirs: SignedInfo,
    pub node: Option<u64>,
}

/// One signed state of a core.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedInfo {
    pub length: u64,
    pub tree_hash: String,
    pub signature: String,
}

impl From<&hyperfs_engine::hypercore::Conflict> for ConflictInfo {
    fn from(c: &hyperfs_engine::hypercore::Conflict) -> Self {
        let state = |s: &hyperfs_engine::hypercore::SignedState| SignedInfo {
            length: s.length,
            tree_hash: hex::encode(s.tree_hash),
            signature: hex::encode(&s.signature),
        };
        ConflictInfo { fork: c.fork, ours: state(&c.ours), theirs: state(&c.theirs), node: c.node }
    }
}

/// The reply of `verify`: what does not verify, one line each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub bad: Vec<String>,
}

/// The reply of `mount`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mounted {
    pub dir: PathBuf,
    pub key: String,
    pub version: Option<u64>,
    pub read_only: bool,
}

/// The reply of `unmount`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unmounted {
    pub dir: PathBuf,
    /// The mount was gone already (its folder was left behind).
    #[serde(default)]
    pub stale: bool,
}

/// The reply of `keys export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysExported {
    pub drive: String,
    pub file: PathBuf,
}

/// The reply of `share`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sharing {
    pub key: String,
    pub link: String,
    pub address: String,
    /// The node's IPv6 address (every IPv6 address, the same port), where the host has IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    /// The TCP address JS peers dial (`store.replicate(socket)`), when the node listens on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// The UDX address JS peers dial, when the node listens on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udx: Option<String>,
}

/// The reply of `drives rm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub name: Option<String>,
    pub key: String,
    /// Whether it was a drive this node wrote (its secret went with it).
    pub own: bool,
}

/// The reply of `gc`: what the collection did, and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collected {
    #[serde(flatten)]
    pub done: hyperfs_engine::store::Collected,
    pub seconds: f64,
}

/// The reply of `prune`: what it cleared, the drive's version, and whether it was a dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    #[serde(flatten)]
    pub done: hyperfs_engine::drive::prune::Pruned,
    pub version: u64,
    pub dry_run: bool,
}

/// The reply of `du`: bytes on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The block log's allocated space.
    pub block_log: u64,
    /// Stored bytes of the blocks the index holds.
    pub blocks: u64,
    /// The block log's space that no block uses (garbage, or space allocated ahead).
    pub unused: u64,
    /// The database (index, trees, bitfields).
    pub database: u64,
    /// Everything.
    pub total: u64,
    pub drives: Vec<DriveUsage>,
    /// The cache of sparse replicas' blocks, while the network runs.
    pub cache: Option<crate::cache::Use>,
}

/// One drive's part of `du`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriveUsage {
    pub name: Option<String>,
    pub key: String,
    pub own: bool,
    /// Blocks held locally, and their bytes before compression (blocks shared with other
    /// drives count in each).
    pub blocks: u64,
    pub bytes: u64,
    /// What those blocks take in the store.
    pub bytes_on_disk: u64,
    /// The part of it other drives hold too (stored once for all of them).
    pub shared_bytes: u64,
}

/// A reply that says only that it was done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {}

/// The reply of `clone`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cloned {
    pub name: String,
    pub key: String,
    pub version: u64,
    /// Seconds from the node taking the command (its store open) to the last block stored.
    #[serde(default)]
    pub seconds: f64,
}

/// How far a clone has come.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneProgress {
    pub blocks: u64,
    pub total_blocks: u64,
}

/// How far an import or export has come.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorProgress {
    pub files: u64,
    pub total_files: u64,
    pub bytes: u64,
    pub total_bytes: u64,
}

/// The reply of `import` and `export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mirrored {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub version: Option<u64>,
    pub skipped: Vec<String>,
    pub changes: Vec<MirrorChange>,
}

/// One path an import or export changes (or would, with `--dry-run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorChange {
    pub path: String,
    pub rel: String,
    /// `add`, `change` or `remove`.
    pub action: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// One connected peer of `peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerEntry {
    pub id: String,
    pub address: String,
    /// Local names of the drives replicated with it.
    pub drives: Vec<String>,
    /// How it was found (`lan`, `dht`, `cache`, `given`, `incoming`).
    pub found: String,
    pub cores: Vec<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub rtt_ms: f64,
    /// `quic` (hyperfs's own transport), `tcp` or `udx` (the JS stack's wire: Noise,
    /// secret-stream, protomux).
    #[serde(default)]
    pub transport: String,
    /// `hyperfs` or `js`.
    #[serde(default)]
    pub kind: String,
    /// How the connection's path was made: `direct`, or `punched` through NATs.
    #[serde(default)]
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form is what both sides and `--json` readers rely on: `cmd` in kebab-case,
    /// fields in camelCase, network options beside the others.
    #[test]
    fn requests_keep_their_wire_form_and_round_trip() {
        let net = NetOptions { peers: vec!["127.0.0.1:7400".into()], no_dht: true, ..NetOptions::default() };
        let r = Request::Share { drive: "d".into(), no_announce: true, lan_only: false, net };
        let v = serde_json::to_value(&r).expect("serialize");
        assert_eq!(v["cmd"], "share");
        assert_eq!(v["noAnnounce"], true);
        assert_eq!(v["peers"][0], "127.0.0.1:7400");
        assert_eq!(v["noDht"], true);
        assert_eq!(serde_json::from_value::<Request>(v).expect("parse"), r);
        let r = Request::KeysImport { file: "/k".into(), offline_ok: true };
        let v = serde_json::to_value(&r).expect("serialize");
        assert_eq!(v, serde_json::json!({"cmd": "keys-import", "file": "/k", "offlineOk": true}));
        // Options a client leaves out take their defaults; an unknown command is an error.
        let p: Request = serde_json::from_str(r#"{"cmd":"peers"}"#).expect("parse");
        assert_eq!(p, Request::Peers { net: NetOptions::default() });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"put","drive":"d"}"#).is_err());
    }

    #[test]
    fn a_folder_stats_as_its_path_and_kind_only() {
        let dir = StatReply { path: "/a".into(), kind: Kind::Directory, file: None };
        assert_eq!(serde_json::to_value(&dir).expect("json"), serde_json::json!({"path": "/a", "type": "directory"}));
        let back: StatReply =
            serde_json::from_value(serde_json::json!({"path": "/a", "type": "directory"})).expect("parse");
        assert!(back.file.is_none());
    }
}
