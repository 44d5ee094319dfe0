//! The engine's one error type.

use std::path::PathBuf;

use crate::encoding::DecodeError;

/// Everything an engine operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds the store.
    #[error("the store at {path} is in use by another process (is a hyperfs node already running on it?)")]
    Locked { path: PathBuf },
    /// The store's bytes are not what hyperfs wrote.
    #[error("the store at {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// The store was written by a different, unknown version of hyperfs.
    #[error("the store at {path} has format version {found}; this hyperfs reads version {expected}")]
    UnknownFormat { path: PathBuf, found: u64, expected: u64 },
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A file operation of the store failed: `what` it was doing, and the OS's error (its kind
    /// and errno are what callers branch on — a full disk is `ENOSPC` here, never a message).
    #[error("storage error: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error("corrupt {what} record in the store: {source}")]
    CorruptRecord {
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    /// Bytes received or given could not be decoded.
    #[error("malformed {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    /// A proof, signature or block did not verify.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The core has no secret key on this node.
    #[error("this core is not writable here (no secret key)")]
    NotWritable,
    /// A block, node or length beyond what the core has.
    #[error("out of bounds: {0}")]
    OutOfBounds(String),
    /// The block is not stored locally (a sparse replica must fetch it from a peer).
    #[error("block {index} is not stored locally")]
    MissingBlock { index: u64 },
    /// A tree node needed for the operation is not stored locally.
    #[error("tree node {index} is not stored locally")]
    MissingNode { index: u64 },
    /// A snapshot whose blocks were truncated away.
    #[error("snapshot is stale: the core was truncated below block {index}")]
    StaleSnapshot { index: u64 },
    /// A request that does not make sense.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The core's writer signed two histories that cannot both be true (the same fork, trees
    /// that disagree); the core takes no more data from that fork, and the proof is kept
    /// ([`crate::hypercore::Conflict`]).
    #[error("the writer of core {core} signed two conflicting histories on fork {fork}")]
    Equivocation { core: String, fork: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error of the store while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }

    /// The OS error number behind this error, where there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
