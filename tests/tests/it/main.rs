//! The integration tests of hyperfs: real binaries, real RocksDB, the JS packages as the oracle.

mod attacks;
mod bee_interop;
mod chunk_cli;
mod core_interop;
mod crash;
mod drive_dedup;
mod drive_interop;
mod gc_cli;
mod hyperdht;
mod js_wire;
mod keys_cli;
mod mirror_cli;
mod mount_stress;
mod mount_tools;
mod multiwriter;
mod node_cli;
mod posix;
mod posix_files;
mod power_cut;
mod proof_interop;
mod relay;
mod replica_store;
mod share_cli;
mod stalled;
mod swarm_netns;
mod wire_interop;
