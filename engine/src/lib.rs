//! hyperfs-engine: the data model of hyperfs — Hypercore logs, the Hyperbee index and drives —
//! over a storage trait, with RocksDB as the store.
//!
//! Owns: `encoding` (compact-encoding), `crypto` (BLAKE2b/Ed25519 as Hypercore uses them),
//! `hypercore` (merkle log, signatures, proofs, bitfield), `hyperbee` (the B-tree index over a
//! log), `drive` (Hyperdrive-13 file trees over a bee and a deduplicated blobs core), `fetch`
//! (the seam through which a block that is not local is asked for), `store` (the
//! only RocksDB user, plus an in-memory store for unit tests).
//!
//! Knows nothing of: FUSE, QUIC, tokio or peers. A block that is not local is reported as
//! [`Error::MissingBlock`]; fetching it is the business of whoever holds the network.
//!
//! Invariant: only `store::rocks` imports `rocksdb`; every mutation of a core is one atomic batch.

pub mod crypto;
pub mod drive;
pub mod encoding;
mod error;
pub mod fetch;
pub mod gc;
pub mod hyperbee;
pub mod hypercore;
pub mod recover;
pub mod store;

#[cfg(test)]
mod fuzz;

pub use drive::{Drive, SharedDrive};
pub use error::{Error, Result};
pub use hyperbee::Hyperbee;
pub use hypercore::Hypercore;
