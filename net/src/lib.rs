//! hyperfs-net: sharing drives — Hypercore's replication messages in compact-encoding, a sans-IO
//! replication session (messages and `now` in; messages, timers and events out), the QUIC
//! endpoint (quinn + rustls with the ring provider), the swarm keyed by discovery keys, and
//! discovery (static peers, LAN, Mainline DHT).
//!
//! Knows nothing of: FUSE, inodes or the filesystem layer (`hyperfs-fs`); it reaches the data
//! only through `hyperfs-engine`. Every block and upgrade it receives is verified by the engine
//! before it is stored or handed to a reader.
//!
//! Modules: [`wire`] (the message set and its framing), [`session`] (one core with one peer,
//! sans IO), [`identity`] (the node's key and certificate), [`endpoint`] (QUIC, channels with
//! capabilities, fetches that hedge across peers), [`discovery`] (topics, the LAN protocol,
//! the Mainline DHT), [`dht`] and [`dht_node`] (HyperDHT's client and persistent node),
//! [`holepunch`] (NATs and punching, sans IO) and [`udx`]/[`udx_socket`] (the JS stack's UDP
//! transport). The swarm that decides whom to dial lives with the node (`cli/src/swarm.rs`).

pub mod congestion;
pub mod dht;
pub mod dht_node;
pub mod discovery;
pub mod endpoint;
pub mod holepunch;
pub mod identity;
pub mod noise;
pub mod secretstream;
pub mod session;
pub mod swarm;
pub mod udx;
pub mod udx_socket;
pub mod wire;

pub use endpoint::{Endpoint, Path, PeerInfo, Shared, SharedCore, Transport};
pub use identity::Identity;
pub use identity::PeerId;

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("node identity: {0}")]
    Identity(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
    /// The address dialed is this node's own (announced back to it).
    #[error("{0} is this node")]
    SelfDial(std::net::SocketAddr),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer broke a replication rule (a proof that does not verify, a flood past its
    /// budget): it is dropped and refused for a while.
    #[error("the peer broke the rules: {0}")]
    Misbehaved(String),
}
