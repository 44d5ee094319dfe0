//! Where a drive's keys come from: Corestore's derivation of named key pairs from one primary
//! key (reference §5), and Hyperdrive 13's derivation of the blobs core from the db core's
//! manifest (reference §8.4).

use std::sync::OnceLock;

use crate::crypto::{self, CoreKey, Hash, KeyPair};
use crate::hypercore::manifest::Signer;
use crate::hypercore::Manifest;

/// Corestore's default namespace: 32 zero bytes.
pub const DEFAULT_NAMESPACE: Hash = [0; 32];

fn corestore_ns() -> &'static Hash {
    static NS: OnceLock<Hash> = OnceLock::new();
    NS.get_or_init(|| crypto::namespace("corestore", 1)[0])
}

fn blobs_ns() -> &'static Hash {
    static NS: OnceLock<Hash> = OnceLock::new();
    NS.get_or_init(|| crypto::namespace("hyperdrive", 1)[0])
}

/// Corestore's `namespace(name)`: BLAKE2b-256(namespace ‖ name).
pub fn sub_namespace(namespace: &Hash, name: &[u8]) -> Hash {
    crypto::hash(&[namespace, name])
}

/// The key pair Corestore gives the core `name` in `namespace` for `primary_key`.
pub fn corestore_key_pair(primary_key: &[u8; 32], namespace: &Hash, name: &[u8]) -> KeyPair {
    let mut msg = Vec::with_capacity(64 + name.len());
    msg.extend_from_slice(corestore_ns());
    msg.extend_from_slice(namespace);
    msg.extend_from_slice(name);
    KeyPair::from_seed(&crypto::keyed_hash(primary_key, &msg))
}

/// The db key pair of a drive: Hyperdrive's core "db", in Corestore's namespace `drive_name`
/// (`store.namespace(name)`), or in the default namespace when unnamed.
pub fn drive_key_pair(primary_key: &[u8; 32], drive_name: Option<&str>) -> KeyPair {
    let ns = match drive_name {
        Some(n) => sub_namespace(&DEFAULT_NAMESPACE, n.as_bytes()),
        None => DEFAULT_NAMESPACE,
    };
    corestore_key_pair(primary_key, &ns, b"db")
}

/// Hyperdrive 13's blobs manifest for a db core: each signer's namespace replaced by
/// BLAKE2b-256(BLOBS ‖ db key ‖ namespace); `None` for a v0 (compat-era) manifest.
pub fn blobs_manifest(db: &Manifest, db_key: &CoreKey) -> Option<Manifest> {
    if db.version < 1 {
        return None;
    }
    let signers = db
        .signers
        .iter()
        .map(|s| Signer { namespace: crypto::hash(&[blobs_ns(), &db_key.0, &s.namespace]), public_key: s.public_key })
        .collect();
    Some(Manifest {
        version: db.version,
        allow_patch: db.allow_patch,
        quorum: db.quorum,
        signers,
        prologue: None,
        linked: None,
        user_data: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference §5 and §8.6: Corestore primary key 0x03×32.
    #[test]
    fn keys_match_corestore_and_hyperdrive() {
        let kp = drive_key_pair(&[3; 32], None);
        let db = Manifest::single(kp.public_key());
        let key = db.hash();
        assert_eq!(hex::encode(key), "c68c0d53be32c1b0960212809902fbd5668e8b16ab23fa5931be1dc470fae907");
        let blobs = blobs_manifest(&db, &CoreKey(key)).expect("v1 manifest");
        assert_eq!(
            hex::encode(blobs.signers[0].namespace),
            "ddd030281eaf3ab0feef1f613252ad838292c1c7d8bc8fa5b43b41f4f52d0b99"
        );
        assert_eq!(hex::encode(blobs.hash()), "798656ae8fa377647ee6e17ee1a2a98c57fbd8a248747ca34fc2f288e8a3e5c0");
    }
}
