//! hyperfs-chunker
