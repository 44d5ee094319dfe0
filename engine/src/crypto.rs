//! Hypercore's cryptography (reference §2): BLAKE2b-256 leaf, parent and tree hashes with the
//! 0/1/2 type prefixes, namespaces, discovery keys and Ed25519 key pairs.
//!
//! Invariant: every size and index inside a hash is a u64 little-endian; every hash is 32 bytes.

use blake2b_simd::{Params, State};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

/// A 32-byte BLAKE2b-256 digest.
pub type Hash = [u8; 32];

/// Defines a 32-byte value of one kind (a discovery key, a peer id, a topic) as its own type, so
/// one kind is never passed where another is meant: the bytes are `.0`, `hex::encode` takes
/// it as it is, and it shows as hex.
#[macro_export]
macro_rules! bytes32 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), $crate::crypto::to_hex(&self.0))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&$crate::crypto::to_hex(&self.0))
            }
        }
    };
}

/// Bytes as lower-case hex (for [`bytes32`] types wherever they are defined).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

bytes32!(
    /// A core's key (a drive's is its db core's): the writer's public key or the hash of the
    /// core's manifest. Whoever knows it can read the core. It reads as its bytes where a hash
    /// input or a stored record wants them (`Deref`); a discovery key, a peer id or a leaf hash
    /// is never taken for one.
    CoreKey
);

impl std::ops::Deref for CoreKey {
    type Target = Hash;
    fn deref(&self) -> &Hash {
        &self.0
    }
}

bytes32!(
    /// The discovery key of a core ([`discovery_key`]): peers find each other by it without
    /// learning the core's key, which reads the core.
    DiscoveryKey
);

const PARENT_TYPE: u8 = 1;
const ROOT_TYPE: u8 = 2;

fn state() -> State {
    Params::new().hash_length(32).to_state()
}

fn finish(state: &State) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(state.finalize().as_bytes());
    out
}

/// BLAKE2b-256 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> Hash {
    let mut s = state();
    for p in parts {
        s.update(p);
    }
    finish(&s)
}

/// Keyed BLAKE2b-256 (`crypto_generichash` with a key).
pub fn keyed_hash(key: &[u8], msg: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(Params::new().hash_length(32).key(key).hash(msg).as_bytes());
    out
}

/// The merkle leaf hash of a block: BLAKE2b-256(00 ‖ u64le(len) ‖ data). The chunker owns it
/// because a chunk's id is its leaf.
pub use hyperfs_chunker::{leaf_hash, leaf_hashes};

/// The hash of a parent node over two children given lower tree index first.
pub fn parent_hash(left_hash: &Hash, right_hash: &Hash, size: u64) -> Hash {
    let mut s = state();
    s.update(&[PARENT_TYPE]);
    s.update(&size.to_le_bytes());
    s.update(left_hash);
    s.update(right_hash);
    finish(&s)
}

/// The tree hash of a list of roots `(index, size, hash)`, left to right.
pub fn tree_hash<'a>(roots: impl IntoIterator<Item = (u64, u64, &'a Hash)>) -> Hash {
    let mut s = state();
    s.update(&[ROOT_TYPE]);
    for (index, size, h) in roots {
        s.update(h);
        s.update(&index.to_le_bytes());
        s.update(&size.to_le_bytes());
    }
    finish(&s)
}

/// `namespace(name, n)`: n derived 32-byte constants.
pub fn namespace(name: &str, count: u8) -> Vec<Hash> {
    let base = hash(&[name.as_bytes()]);
    (0..count).map(|i| hash(&[&base, &[i]])).collect()
}

/// The discovery key of a core: keyed BLAKE2b-256 with the core key over "hypercore". Peers
/// find each other by it without learning the key.
pub fn discovery_key(key: &CoreKey) -> DiscoveryKey {
    DiscoveryKey(keyed_hash(&key.0, b"hypercore"))
}

/// The hypercore namespaces (reference §2).
pub mod caps {
    use super::Hash;
    use std::sync::OnceLock;

    fn all() -> &'static [Hash] {
        static NS: OnceLock<Vec<Hash>> = OnceLock::new();
        NS.get_or_init(|| super::namespace("hypercore", 6))
    }
    pub fn tree() -> &'static Hash {
        &all()[0]
    }
    pub fn replicate_initiator() -> &'static Hash {
        &all()[1]
    }
    pub fn replicate_responder() -> &'static Hash {
        &all()[2]
    }
    pub fn manifest() -> &'static Hash {
        &all()[3]
    }
    pub fn default_namespace() -> &'static Hash {
        &all()[4]
    }
}

/// An Ed25519 key pair; the secret key in libsodium's 64-byte form is seed ‖ public key.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", hex::encode(self.public_key()))
    }
}

impl KeyPair {
    /// A fresh random key pair from the operating system's generator.
    pub fn generate() -> Self {
        Self { signing: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// `crypto_sign_seed_keypair`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(seed) }
    }

    /// From a 64-byte libsodium secret key; its public half must match its seed.
    pub fn from_secret_key(secret: &[u8]) -> Option<Self> {
        let bytes: &[u8; 64] = secret.try_into().ok()?;
        SigningKey::from_keypair_bytes(bytes).ok().map(|signing| Self { signing })
    }

    pub fn public_key(&self) -> Hash {
        self.signing.verifying_key().to_bytes()
    }

    /// The 64-byte libsodium secret key.
    pub fn secret_key(&self) -> [u8; 64] {
        self.signing.to_keypair_bytes()
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

/// Detached Ed25519 verification; false for malformed keys or signatures.
pub fn verify(public_key: &Hash, msg: &[u8], signature: &[u8]) -> bool {
    let Ok(sig) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    let Ok(vk) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
}

const Z32_ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// The 32 secret bytes kept in `path` (a node's primary key, its network identity), created
/// with fresh random bytes and mode 0600 when the file does not exist yet. A file of another
/// size is reported as damaged, never replaced.
pub fn secret_seed_file(path: &std::path::Path) -> crate::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e: std::io::Error| crate::Error::io(format!("{what} {}", path.display()), e);
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| crate::Error::Damaged { path: path.into(), reason: "it must hold 32 bytes".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io("creating", e))?;
            f.write_all(&seed).and_then(|()| f.sync_all()).map_err(|e| io("writing", e))?;
            Ok(seed)
        }
        Err(e) => Err(io("reading", e)),
    }
}

/// z-base-32, the alphabet Hypercore ids are printed in.
pub fn z32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(Z32_ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(Z32_ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes z-base-32; `None` on a character outside the alphabet.
pub fn z32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = Z32_ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hx(h: &[u8]) -> String {
        hex::encode(h)
    }

    #[test]
    fn namespaces_match_reference() {
        assert_eq!(hx(caps::tree()), "9fac70b50ca14efc4e91c833b204e75b8b5aad8b5881bfc0adb5ef38a3275b9c");
        assert_eq!(hx(caps::manifest()), "e64b7108eacce47cfc61ac850568f55f8b15b82ec5ed78c4ec597b036e2a1498");
        assert_eq!(hx(caps::default_namespace()), "4144eea531e483d54e0c14f4ca68e0644f355343ff6fcb0f005200e12cd747cb");
        assert_eq!(
            hx(&namespace("hyperdrive", 1)[0]),
            "f217b747161784b495ceee3c42163b07dd62cb06df26e20e95ba4d438123aeeb"
        );
        assert_eq!(
            hx(&namespace("corestore", 1)[0]),
            "ac5c4cbfb1064776404637a280c71fac823281d351ebeced03151743270def29"
        );
    }

    #[test]
    fn z32_matches_reference_id() {
        let key = hex::decode("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c").expect("hex");
        let id = z32_encode(&key);
        assert_eq!(id, "tkrq8zmwb8a3m9k15csu3q17qmfgqnp9dskbrg9uq1rydpyxp7qy");
        assert_eq!(z32_decode(&id).expect("decodes"), key);
    }

    #[test]
    fn leaf_and_discovery_vectors() {
        assert_eq!(hx(&leaf_hash(b"hello")), "f2391083cfaa8043205fed76cdff843902146ca92aebcd7a196814ec45d8c8f8");
        let key: Hash = hex::decode("d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72")
            .expect("hex")
            .try_into()
            .expect("32");
        assert_eq!(
            hx(&discovery_key(&CoreKey(key)).0),
            "fb892b1c77fdcb05dcbd234607208b7036e00a13e7f2cc0bbaa463924e57865a"
        );
    }
}
