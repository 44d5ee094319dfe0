//! Manifests, core keys, signables and signature containers (reference §3.3–3.4).
//!
//! A non-compat core's key is the hash of its manifest; a compat core's key is its single
//! signer's public key. Signatures cover the 112-byte signable (manifest version ≥ 1) or the
//! 80-byte compat signable, and non-compat signatures travel in the multisig container even for
//! one signer.

use crate::crypto::{self, caps, CoreKey, Hash, KeyPair};
use crate::encoding::{DecodeError, Decoder, Encoder};

/// One signer of a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub namespace: Hash,
    pub public_key: Hash,
}

/// A tree every valid history must start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prologue {
    pub hash: Hash,
    pub length: u64,
}

/// What defines a core: who signs it and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: u64,
    pub allow_patch: bool,
    pub quorum: u64,
    pub signers: Vec<Signer>,
    pub prologue: Option<Prologue>,
    pub linked: Option<Vec<Hash>>,
    pub user_data: Option<Vec<u8>>,
}

impl Manifest {
    /// The manifest Corestore and Hypercore 11 make for a key pair: version 1, one signer in
    /// the default namespace.
    pub fn single(public_key: Hash) -> Self {
        Manifest {
            version: 1,
            allow_patch: false,
            quorum: 1,
            signers: vec![Signer { namespace: *caps::default_namespace(), public_key }],
            prologue: None,
            linked: None,
            user_data: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(80);
        if self.version == 0 {
            self.encode_v0(&mut e);
            return e.finish();
        }
        e.uint(self.version);
        let mut flags = 0u64;
        if self.allow_patch {
            flags |= 1;
        }
        if self.prologue.is_some() {
            flags |= 2;
        }
        if self.linked.is_some() {
            flags |= 4;
        }
        if self.user_data.is_some() {
            flags |= 8;
        }
        e.uint(flags).uint(0).uint(self.quorum).uint(self.signers.len() as u64);
        for s in &self.signers {
            e.uint(0).fixed(&s.namespace).fixed(&s.public_key);
        }
        if let Some(p) = &self.prologue {
            e.fixed(&p.hash).uint(p.length);
        }
        if let Some(linked) = &self.linked {
            e.uint(linked.len() as u64);
            for k in linked {
                e.fixed(k);
            }
        }
        if let Some(u) = &self.user_data {
            e.buffer(u);
        }
        e.finish()
    }

    fn encode_v0(&self, e: &mut Encoder) {
        e.uint(0).uint(0);
        if self.signers.is_empty() {
            e.uint(0).fixed(&self.prologue.as_ref().map(|p| p.hash).unwrap_or([0; 32]));
        } else if self.signers.len() == 1 && !self.allow_patch && self.quorum == 1 {
            e.uint(1).uint(0).fixed(&self.signers[0].namespace).fixed(&self.signers[0].public_key);
        } else {
            e.uint(2).uint(u64::from(self.allow_patch)).uint(self.quorum).uint(self.signers.len() as u64);
            for s in &self.signers {
                e.uint(0).fixed(&s.namespace).fixed(&s.public_key);
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        let m = Self::decode_from(&mut d)?;
        d.finish()?;
        Ok(m)
    }

    pub fn decode_from(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let version = d.uint("manifest version")?;
        if version > 3 {
            return Err(DecodeError::Invalid("manifest version"));
        }
        if version == 0 {
            return Self::decode_v0(d);
        }
        let flags = d.uint("manifest flags")?;
        if flags & !0xf != 0 {
            return Err(DecodeError::Invalid("manifest flags"));
        }
        if d.uint("manifest hash")? != 0 {
            return Err(DecodeError::Invalid("manifest hash type"));
        }
        let quorum = d.uint("manifest quorum")?;
        let signers = decode_signers(d)?;
        let prologue = if flags & 2 != 0 {
            Some(Prologue { hash: d.array("prologue hash")?, length: d.uint("prologue length")? })
        } else {
            None
        };
        let linked = if flags & 4 != 0 {
            let n = d.count("linked", 32)?;
            Some((0..n).map(|_| d.array::<32>("linked key")).collect::<Result<Vec<_>, _>>()?)
        } else {
            None
        };
        let user_data = if flags & 8 != 0 { Some(d.buffer("user data")?.to_vec()) } else { None };
        Ok(Manifest { version, allow_patch: flags & 1 != 0, quorum, signers, prologue, linked, user_data })
    }

    fn decode_v0(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        if d.uint("manifest hash")? != 0 {
            return Err(DecodeError::Invalid("manifest hash type"));
        }
        let kind = d.uint("manifest type")?;
        let mut m = Manifest {
            version: 0,
            allow_patch: false,
            quorum: 1,
            signers: Vec::new(),
            prologue: None,
            linked: None,
            user_data: None,
        };
        match kind {
            0 => {
                m.quorum = 0;
                m.prologue = Some(Prologue { hash: d.array("prologue hash")?, length: 0 });
            }
            1 => {
                if d.uint("signature type")? != 0 {
                    return Err(DecodeError::Invalid("signature type"));
                }
                m.signers.push(Signer { namespace: d.array("namespace")?, public_key: d.array("public key")? });
            }
            2 => {
                m.allow_patch = d.uint("manifest flags")? & 1 != 0;
                m.quorum = d.uint("manifest quorum")?;
                m.signers = decode_signers(d)?;
            }
            _ => return Err(DecodeError::Invalid("manifest type")),
        }
        Ok(m)
    }

    /// BLAKE2b-256(MANIFEST ‖ encoded manifest): the key of a non-compat core.
    pub fn hash(&self) -> Hash {
        crypto::hash(&[caps::manifest(), &self.encode()])
    }

    /// Whether a core with this manifest and `key` is a compat core.
    pub fn is_compat_for(&self, key: &CoreKey) -> bool {
        self.signers.len() == 1 && self.signers[0].public_key == key.0
    }
}

fn decode_signers(d: &mut Decoder<'_>) -> Result<Vec<Signer>, DecodeError> {
    let n = d.count("signers", 65)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if d.uint("signature type")? != 0 {
            return Err(DecodeError::Invalid("signature type"));
        }
        out.push(Signer { namespace: d.array("namespace")?, public_key: d.array("public key")? });
    }
    Ok(out)
}

/// How a core's key relates to its signers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// key = manifest hash (Hypercore 11 and Corestore default).
    Manifest(Manifest),
    /// key = the single signer's public key; raw 64-byte signatures over the 80-byte signable.
    Compat { public_key: Hash },
}

impl Auth {
    pub fn key(&self) -> CoreKey {
        match self {
            Auth::Manifest(m) => CoreKey(m.hash()),
            Auth::Compat { public_key } => CoreKey(*public_key),
        }
    }

    /// The bytes a writer signs for a tree of `length` and `fork` with `tree_hash`.
    pub fn signable(&self, tree_hash: &Hash, length: u64, fork: u64, signer: usize) -> Vec<u8> {
        match self {
            Auth::Compat { .. } => compat_signable(tree_hash, length, fork),
            Auth::Manifest(m) if m.version == 0 => {
                let ns = m.signers.get(signer).map(|s| s.namespace).unwrap_or([0; 32]);
                manifest_signable(&ns, tree_hash, length, fork)
            }
            Auth::Manifest(m) => manifest_signable(&m.hash(), tree_hash, length, fork),
        }
    }

    /// Signs a tree with the one key pair of this core; the stored signature bytes.
    pub fn sign(&self, kp: &KeyPair, tree_hash: &Hash, length: u64, fork: u64) -> Vec<u8> {
        let sig = kp.sign(&self.signable(tree_hash, length, fork, 0));
        match self {
            Auth::Compat { .. } => sig.to_vec(),
            Auth::Manifest(m) if m.version == 0 => sig.to_vec(),
            Auth::Manifest(_) => Multisig { proofs: vec![(0, sig, 0)], nodes: vec![] }.encode(),
        }
    }

    /// Whether `signature` is a valid signature of this tree.
    pub fn verify(&self, signature: &[u8], tree_hash: &Hash, length: u64, fork: u64) -> bool {
        match self {
            Auth::Compat { public_key } => {
                crypto::verify(public_key, &compat_signable(tree_hash, length, fork), signature)
            }
            Auth::Manifest(m) => {
                if let Some(p) = &m.prologue {
                    if length <= p.length {
                        return length == p.length && &p.hash == tree_hash;
                    }
                }
                if m.version == 0 && m.signers.len() == 1 {
                    return crypto::verify(
                        &m.signers[0].public_key,
                        &self.signable(tree_hash, length, fork, 0),
                        signature,
                    );
                }
                let Ok(ms) = Multisig::decode(signature) else {
                    return false;
                };
                let mut used = vec![false; m.signers.len()];
                let mut valid = 0u64;
                for (signer, sig, patch) in &ms.proofs {
                    let Ok(i) = usize::try_from(*signer) else {
                        return false;
                    };
                    // Patched proofs need the shared nodes; hyperfs cores never write them and
                    // refuse them unless a later issue adds patch support.
                    if i >= m.signers.len() || used[i] || *patch != 0 {
                        return false;
                    }
                    used[i] = true;
                    let msg = self.signable(tree_hash, length, fork, i);
                    if !crypto::verify(&m.signers[i].public_key, &msg, sig) {
                        return false;
                    }
                    valid += 1;
                }
                valid >= m.quorum.max(1)
            }
        }
    }

    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Auth::Manifest(m) => Some(m),
            Auth::Compat { .. } => None,
        }
    }
}

/// TREE ‖ ctx ‖ treeHash ‖ u64le(length) ‖ u64le(fork): 112 bytes.
pub fn manifest_signable(ctx: &Hash, tree_hash: &Hash, length: u64, fork: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(112);
    out.extend_from_slice(caps::tree());
    out.extend_from_slice(ctx);
    out.extend_from_slice(tree_hash);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&fork.to_le_bytes());
    out
}

/// TREE ‖ treeHash ‖ u64le(length) ‖ u64le(fork): 80 bytes.
pub fn compat_signable(tree_hash: &Hash, length: u64, fork: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(caps::tree());
    out.extend_from_slice(tree_hash);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&fork.to_le_bytes());
    out
}

/// The multisig signature container: proofs of (signer, signature, patch) and shared nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multisig {
    pub proofs: Vec<(u64, [u8; 64], u64)>,
    pub nodes: Vec<(u64, u64, Hash)>,
}

impl Multisig {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(68);
        e.uint(self.proofs.len() as u64);
        for (signer, sig, patch) in &self.proofs {
            e.uint(*signer).fixed(sig).uint(*patch);
        }
        e.uint(self.nodes.len() as u64);
        for (index, size, hash) in &self.nodes {
            e.uint(*index).uint(*size).fixed(hash);
        }
        e.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        let n = d.count("multisig proofs", 66)?;
        let mut proofs = Vec::with_capacity(n);
        for _ in 0..n {
            proofs.push((d.uint("signer")?, d.array::<64>("signature")?, d.uint("patch")?));
        }
        let n = d.count("multisig nodes", 34)?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push((d.uint("node index")?, d.uint("node size")?, d.array::<32>("node hash")?));
        }
        d.finish()?;
        Ok(Multisig { proofs, nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_manifest_bytes_and_key_match_reference() {
        let kp = KeyPair::from_seed(&[1; 32]);
        let m = Manifest::single(kp.public_key());
        assert_eq!(
            hex::encode(m.encode()),
            "0100000101004144eea531e483d54e0c14f4ca68e0644f355343ff6fcb0f005200e12cd747cb\
             8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(hex::encode(m.hash()), "d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72");
        assert_eq!(Manifest::decode(&m.encode()).expect("decodes"), m);
    }

    #[test]
    fn manifest_with_every_optional_field_round_trips() {
        let mut m = Manifest::single([7; 32]);
        m.version = 2;
        m.allow_patch = true;
        m.prologue = Some(Prologue { hash: [3; 32], length: 9 });
        m.linked = Some(vec![[4; 32], [5; 32]]);
        m.user_data = Some(b"hi".to_vec());
        assert_eq!(Manifest::decode(&m.encode()).expect("decodes"), m);
        let mut v0 = Manifest::single([7; 32]);
        v0.version = 0;
        assert_eq!(Manifest::decode(&v0.encode()).expect("decodes"), v0);
    }

    #[test]
    fn hostile_manifest_bytes_are_refused() {
        assert!(Manifest::decode(&[9]).is_err());
        assert!(Manifest::decode(&[1, 0, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let mut bytes = Manifest::single([1; 32]).encode();
        bytes.push(0);
        assert!(Manifest::decode(&bytes).is_err());
        let mut bytes = Manifest::single([1; 32]).encode();
        bytes[1] = 0x80;
        assert!(Manifest::decode(&bytes).is_err(), "unknown flag bits are refused");
    }
}
