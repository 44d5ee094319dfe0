//! hyperfs-net: sharing drives — Hypercore's replication messages in compact-encoding, a sans-IO
//! replication session (messages and `now` in; messages, timers and events out), the QUIC
//! endpoint (quinn + rustls with the ring provider), the swarm keyed by discovery keys, and
//! discovery (static peers, LAN, Mainline DHT).
//!
//! Knows nothing of: FUSE, inodes or the filesystem layer (`hyperfs-fs`); it reaches the data
//! only through `hyperfs-engine`. Every block and upgrade it receives is verified by the engine
//! before it is stored or handed to a reader.
//!
//! Built so far: [`wire`] (the message set and its framing). Still to come: the session, the
//! endpoint, the swarm and discovery (issues 8 and 9).

pub mod session;
pub mod wire;
