//! hyperfs-fs: filesystem semantics over a drive — inodes, handles, staging of writes, POSIX
//! rules and the one errno mapping — as a FUSE-free layer tested directly, plus a thin `fuser`
//! adapter that mounts it.
//!
//! Knows nothing of: QUIC, peers or the swarm (`hyperfs-net`). A read of a block that is not
//! local goes through the engine's fetch seam and waits with a timeout on a worker thread, never
//! on the FUSE session thread.
//!
//! Not built yet: this crate is the place for issue 7 (mount a drive as a folder).
