//! The integration tests of hyperfs: real binaries, real RocksDB, the JS packages as the oracle.

mod core_interop;
mod chunk_cli;
mod crash;
