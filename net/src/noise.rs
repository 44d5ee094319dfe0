//! The Noise handshakes of the JS stack (reference holepunch-wire §1): `Noise_XX` (what
//! `@hyperswarm/secret-stream` runs over a byte stream) and `Noise_IK` (what HyperDHT carries in
//! its handshake messages), with `noise-curve-ed`'s Ed25519 "DH", ChaCha20-Poly1305 and BLAKE2b.
//! Sans IO: messages in, messages out.
//!
//! The DH is the Ed25519 signing scalar of one side times the other side's Edwards point; its
//! output is that compressed point, not an X25519 value. A remote point that libsodium refuses
//! (not canonical, of small order, outside the prime-order subgroup, or a product that is the
//! identity) fails the handshake here too, so this side accepts exactly what JS accepts.
//!
//! Invariant: no input panics; every length is checked before it is used.

use blake2b_simd::Params;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use curve25519_dalek::edwards::CompressedEdwardsY;
use sha2::Digest;

/// BLAKE2b-512's output and HMAC's output.
const HASHLEN: usize = 64;
/// BLAKE2b's block, HMAC's key pad.
const BLOCKLEN: usize = 128;
/// A Noise message's most bytes.
const MAX_MESSAGE: usize = 65535;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    #[error("Noise handshake failed: {0}")]
    Failed(&'static str),
}

/// An Ed25519 key pair as the Noise DH uses it: the public key, and the clamped signing scalar.
#[derive(Clone)]
pub struct KeyPair {
    pub public: [u8; 32],
    scalar: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", hex_of(&self.public))
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl KeyPair {
    /// `crypto_sign_seed_keypair(seed)`, with its scalar.
    pub fn from_seed(seed: &[u8; 32]) -> KeyPair {
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let mut scalar = [0u8; 32];
        scalar.copy_from_slice(&sha2::Sha512::digest(seed)[..32]);
        scalar[0] &= 248;
        scalar[31] &= 127;
        scalar[31] |= 64;
        KeyPair { public: signing.verifying_key().to_bytes(), scalar }
    }

    /// A fresh key pair from the operating system's generator (an ephemeral).
    pub fn generate() -> KeyPair {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        KeyPair::from_seed(&seed)
    }

    /// The clamped scalar (for the vectors).
    pub fn scalar(&self) -> [u8; 32] {
        self.scalar
    }
}

/// `noise-curve-ed`'s DH: `crypto_scalarmult_ed25519_noclamp(scalar, remote)`, refusing the
/// points libsodium refuses.
pub fn dh(local: &KeyPair, remote: &[u8; 32]) -> Result<[u8; 32], NoiseError> {
    let bad = NoiseError::Failed("the peer's key is not a usable point");
    let point = CompressedEdwardsY(*remote).decompress().ok_or(bad.clone())?;
    // Canonical encodings only (y < p, no negative zero): the point compresses back the same.
    if point.compress().0 != *remote || point.is_small_order() || !point.is_torsion_free() {
        return Err(bad);
    }
    let product = point.mul_clamped(local.scalar);
    if product.is_small_order() {
        return Err(bad);
    }
    Ok(product.compress().0)
}

fn blake2b512(parts: &[&[u8]]) -> [u8; HASHLEN] {
    let mut s = Params::new().hash_length(HASHLEN).to_state();
    for p in parts {
        s.update(p);
    }
    let mut out = [0u8; HASHLEN];
    out.copy_from_slice(s.finalize().as_bytes());
    out
}

/// HMAC over BLAKE2b-512 with 128-byte blocks, of the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; HASHLEN] {
    let mut k = [0u8; BLOCKLEN];
    if key.len() > BLOCKLEN {
        k[..HASHLEN].copy_from_slice(&blake2b512(&[key]));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = vec![inner_pad.as_slice()];
    inner.extend_from_slice(parts);
    let inner = blake2b512(&inner);
    blake2b512(&[&outer_pad, &inner])
}

/// HKDF with empty info and two outputs.
fn hkdf(ck: &[u8], ikm: &[u8]) -> ([u8; HASHLEN], [u8; HASHLEN]) {
    let prk = hmac(ck, &[ikm]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    (t1, t2)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    E,
    S,
    EE,
    ES,
    SE,
    SS,
}

/// A handshake pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    XX,
    IK,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::XX => "XX",
            Pattern::IK => "IK",
        }
    }

    fn messages(self) -> &'static [&'static [Token]] {
        use Token::*;
        match self {
            Pattern::XX => &[&[E], &[E, EE, S, ES], &[S, SE]],
            Pattern::IK => &[&[E, ES, S, SS], &[E, EE, SE]],
        }
    }
}

/// What a finished handshake gives: the transport keys, the handshake hash and the peer's key.
#[derive(Clone)]
pub struct Done {
    pub tx: [u8; 32],
    pub rx: [u8; 32],
    pub hash: [u8; HASHLEN],
    pub remote_static: [u8; 32],
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Done(remote {})", hex_of(&self.remote_static))
    }
}

/// One side of a handshake.
pub struct Handshake {
    pattern: Pattern,
    initiator: bool,
    s: KeyPair,
    e: Option<KeyPair>,
    rs: Option<[u8; 32]>,
    re: Option<[u8; 32]>,
    h: [u8; HASHLEN],
    ck: [u8; HASHLEN],
    k: Option<[u8; 32]>,
    n: u64,
    step: usize,
    done: Option<Done>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handshake({:?}, initiator {}, step {})", self.pattern, self.initiator, self.step)
    }
}

impl Handshake {
    /// A handshake of `pattern` with static key `s`. IK needs the responder's key on the
    /// initiator's side (`remote_static`).
    pub fn new(
        pattern: Pattern,
        initiator: bool,
        s: KeyPair,
        prologue: &[u8],
        remote_static: Option<[u8; 32]>,
    ) -> Self {
        let name = format!("Noise_{}_Ed25519_ChaChaPoly_BLAKE2b", pattern.name());
        let mut h = [0u8; HASHLEN];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mut hs = Handshake {
            pattern,
            initiator,
            s,
            e: None,
            rs: None,
            re: None,
            h,
            ck: h,
            k: None,
            n: 0,
            step: 0,
            done: None,
        };
        hs.mix_hash(prologue);
        if pattern == Pattern::IK {
            // The pre-message `<- s`: both sides hash the responder's static key.
            let key = if initiator {
                hs.rs = remote_static;
                remote_static.unwrap_or_default()
            } else {
                hs.s.public
            };
            hs.mix_hash(&key);
        }
        hs
    }

    /// Uses `e` as the ephemeral key rather than a fresh one (for the vectors).
    #[doc(hidden)]
    pub fn with_ephemeral(mut self, e: KeyPair) -> Self {
        self.e = Some(e);
        self
    }

    /// Whether it is this side's turn to send.
    pub fn my_turn(&self) -> bool {
        self.done.is_none() && self.step.is_multiple_of(2) == self.initiator
    }

    /// The result, once the last message went or came.
    pub fn done(&self) -> Option<&Done> {
        self.done.as_ref()
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = blake2b512(&[&self.h, data]);
    }

    fn mix_key(&mut self, local_static: bool, remote_static: bool) -> Result<(), NoiseError> {
        let missing = NoiseError::Failed("a key the pattern needs is missing");
        let local = if local_static { Some(&self.s) } else { self.e.as_ref() }.ok_or(missing.clone())?;
        let remote = if remote_static { self.rs } else { self.re }.ok_or(missing)?;
        let shared = dh(local, &remote)?;
        let (ck, k) = hkdf(&self.ck, &shared);
        self.ck = ck;
        let mut key = [0u8; 32];
        key.copy_from_slice(&k[..32]);
        self.k = Some(key);
        self.n = 0;
        Ok(())
    }

    fn nonce(&self) -> chacha20poly1305::Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..8].copy_from_slice(&(self.n as u32).to_le_bytes());
        nonce.into()
    }

    fn encrypt_and_hash(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let start = out.len();
        out.extend_from_slice(plain);
        if let Some(k) = self.k {
            let tag = ChaCha20Poly1305::new(&k.into())
                .encrypt_in_place_detached(&self.nonce(), &self.h, &mut out[start..])
                .map_err(|_| NoiseError::Failed("encryption"))?;
            out.extend_from_slice(&tag);
            self.n += 1;
        }
        let c = out[start..].to_vec();
        self.mix_hash(&c);
        Ok(())
    }

    fn decrypt_and_hash(&mut self, c: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let plain = match self.k {
            None => c.to_vec(),
            Some(k) => {
                if c.len() < 16 {
                    return Err(NoiseError::Failed("a message too short for its tag"));
                }
                let (body, tag) = c.split_at(c.len() - 16);
                let mut plain = body.to_vec();
                ChaCha20Poly1305::new(&k.into())
                    .decrypt_in_place_detached(&self.nonce(), &self.h, &mut plain, tag.into())
                    .map_err(|_| NoiseError::Failed("a message that does not authenticate"))?;
                self.n += 1;
                plain
            }
        };
        self.mix_hash(c);
        Ok(plain)
    }

    /// Which keys a DH token uses: (local static, remote static).
    fn statics(&self, t: Token) -> (bool, bool) {
        match t {
            Token::ES => (!self.initiator, self.initiator),
            Token::SE => (self.initiator, !self.initiator),
            Token::SS => (true, true),
            _ => (false, false),
        }
    }

    fn finish_if_last(&mut self) {
        if self.step < self.pattern.messages().len() {
            return;
        }
        let (k1, k2) = hkdf(&self.ck, &[]);
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        a.copy_from_slice(&k1[..32]);
        b.copy_from_slice(&k2[..32]);
        let (tx, rx) = if self.initiator { (a, b) } else { (b, a) };
        self.done = Some(Done { tx, rx, hash: self.h, remote_static: self.rs.unwrap_or_default() });
    }

    /// This side's next message, carrying `payload`.
    pub fn send(&mut self, payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if !self.my_turn() {
            return Err(NoiseError::Failed("not this side's turn to send"));
        }
        let tokens = self.pattern.messages()[self.step];
        let mut out = Vec::new();
        for &t in tokens {
            match t {
                Token::E => {
                    let e = self.e.get_or_insert_with(KeyPair::generate).public;
                    self.mix_hash(&e);
                    out.extend_from_slice(&e);
                }
                Token::S => {
                    let s = self.s.public;
                    self.encrypt_and_hash(&s, &mut out)?;
                }
                dh => {
                    let (l, r) = self.statics(dh);
                    self.mix_key(l, r)?;
                }
            }
        }
        self.encrypt_and_hash(payload, &mut out)?;
        if out.len() > MAX_MESSAGE {
            return Err(NoiseError::Failed("a message over 65535 bytes"));
        }
        self.step += 1;
        self.finish_if_last();
        Ok(out)
    }

    /// Takes the peer's next message; returns its payload.
    pub fn recv(&mut self, msg: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if self.done.is_some() || self.my_turn() {
            return Err(NoiseError::Failed("a message out of turn"));
        }
        if msg.len() > MAX_MESSAGE {
            return Err(NoiseError::Failed("a message over 65535 bytes"));
        }
        let short = NoiseError::Failed("a message too short");
        let tokens = self.pattern.messages()[self.step];
        let mut at = 0;
        for &t in tokens {
            match t {
                Token::E => {
                    let re: [u8; 32] =
                        msg.get(at..at + 32).ok_or(short.clone())?.try_into().map_err(|_| short.clone())?;
                    at += 32;
                    self.mix_hash(&re);
                    self.re = Some(re);
                }
                Token::S => {
                    let len = if self.k.is_some() { 48 } else { 32 };
                    let c = msg.get(at..at + len).ok_or(short.clone())?;
                    at += len;
                    let s = self.decrypt_and_hash(c)?;
                    self.rs = Some(s.as_slice().try_into().map_err(|_| short.clone())?);
                }
                dh => {
                    let (l, r) = self.statics(dh);
                    self.mix_key(l, r)?;
                }
            }
        }
        let payload = self.decrypt_and_hash(&msg[at..])?;
        self.step += 1;
        self.finish_if_last();
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn pair(seed: u8) -> KeyPair {
        KeyPair::from_seed(&[seed; 32])
    }

    /// Reference §1.6, printed by `noise-handshake` with `noise-curve-ed`.
    #[test]
    fn keys_and_dh_match_noise_curve_ed() {
        let (a, b) = (pair(0x11), pair(0x22));
        assert_eq!(a.public.to_vec(), h("d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"));
        assert_eq!(b.public.to_vec(), h("a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0"));
        assert_eq!(a.scalar().to_vec(), h("805b920bda4cd49d251d3329144a0cf8bdaaa07502626fa87f08e80faedab15f"));
        let shared = h("2b6355c5f0e9667ee457b73ad5dc3cb172abf8d62362402d732c4e8241b97380");
        assert_eq!(dh(&a, &b.public).expect("dh").to_vec(), shared);
        assert_eq!(dh(&b, &a.public).expect("dh").to_vec(), shared);
        // What libsodium refuses: the identity, a small-order point, a non-canonical y.
        assert!(dh(&a, &[0; 32]).is_err());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(dh(&a, &identity).is_err());
        let mut noncanonical = [0xff; 32];
        noncanonical[31] = 0x7f;
        assert!(dh(&a, &noncanonical).is_err());
    }

    #[test]
    fn xx_matches_the_js_transcript() {
        let mut i = Handshake::new(Pattern::XX, true, pair(0x11), &[], None).with_ephemeral(pair(0xe0));
        let mut r = Handshake::new(Pattern::XX, false, pair(0x22), &[], None).with_ephemeral(pair(0xe1));
        assert_eq!(i.h.to_vec(), h("ccb02d59b57b48c5bc64fafb7fc70680eb907d6830a9b039c39136733f44bbd6ebcddac9b202ff6bf777f1b1c8cb8cb964038751f8f11d8adb8ec976fea28f18"));
        let m1 = i.send(&[]).expect("msg1");
        assert_eq!(m1, h("9ff6204d61b59a9e61afdd64fdf294bfe8a16687ba0538823ba59db6cb7b21ff"));
        assert!(r.recv(&m1).expect("r msg1").is_empty());
        let m2 = r.send(&[]).expect("msg2");
        assert_eq!(m2, h("25fc32c478a5a4f84e4557a0342e08278c883641b6149bdb0b4a986ab6c2cb786ea3b8b20bb06893877176570ed74e6839d74c81a32e610585c834b013944c1950e35306478eff299ae9d04d4a0cfc29b44f94591511185b509bc4b9ae4a641b"));
        i.recv(&m2).expect("i msg2");
        let m3 = i.send(&[]).expect("msg3");
        assert_eq!(m3, h("94216f6a391a58bf380b7b480a8d95df5e18fdc5c26d6ffe4c07240d53712ffb49cc2912e2a4513fc226b367f09068d3c2a73e9c383cbf10f649fe97f9036363"));
        r.recv(&m3).expect("r msg3");
        let (di, dr) = (i.done().expect("i done").clone(), r.done().expect("r done").clone());
        let hash = h("ef996b5cb5a6d5c4fda97382ab836f574086b6c17acf56e12ced51ce339daab2d61b8256b224e7435d6630732b6b97a2e99abdaa085092b67fcc191285498c09");
        assert_eq!(di.hash.to_vec(), hash);
        assert_eq!(dr.hash.to_vec(), hash);
        assert_eq!(di.tx.to_vec(), h("823c4bb32d9b39fd299f5d33ef51633b4391f1d7e24120fe2a2cd81462906291"));
        assert_eq!(di.rx.to_vec(), h("38f9abbeebe98594fa4e76baf76ac03ff4743befedf40b1cb1ef11f323eefb68"));
        assert_eq!((dr.tx, dr.rx), (di.rx, di.tx));
        assert_eq!(di.remote_static, pair(0x22).public);
        assert_eq!(dr.remote_static, pair(0x11).public);
    }

    #[test]
    fn ik_matches_the_js_transcript() {
        let prologue = h("14d6d4b49214ab1033ed204976caa258bae9e1e8543b9ad1fd996a910b0c4e3a");
        let b = pair(0x22);
        let mut i = Handshake::new(Pattern::IK, true, pair(0x11), &prologue, Some(b.public)).with_ephemeral(pair(0xe0));
        let mut r = Handshake::new(Pattern::IK, false, b, &prologue, None).with_ephemeral(pair(0xe1));
        assert_eq!(i.h.to_vec(), h("a387a50336b348c1ea03e3c30cd6774dc5f39a836c62ceb524f5bb4c5e0a0db5ecae2ce37186a750c2eef67bbe8e02f82f38e0ad10e434d09bd18e2a0f2a4e4e"));
        let client = h("011a000001c0a8010a49c20100fe040302010001");
        let server = h("0159000200010102030449c205060708a00f0100fe0d0c0b0a0001010102030449c2");
        let m1 = i.send(&client).expect("msg1");
        assert_eq!(m1, h("9ff6204d61b59a9e61afdd64fdf294bfe8a16687ba0538823ba59db6cb7b21ffb1c09125561efd080386e07a364f97846a2916fb29daa971388d6302f607cc4c422ed9f768c38d52ecbda7283dfade547bcd60292b0eaf510ad8d9368c664604fe3cd520d64d1fc4fe7e8ef9ecaadc32589cf3ee"));
        assert_eq!(r.recv(&m1).expect("r msg1"), client);
        let m2 = r.send(&server).expect("msg2");
        assert_eq!(m2, h("25fc32c478a5a4f84e4557a0342e08278c883641b6149bdb0b4a986ab6c2cb78c98e7a2b39020fd22e8c1cea74700975f5aa7a2770b7e50d0b749fbead9bd3a3e1bcd9df66e14141a50bd045f3d08b9ed816"));
        assert_eq!(i.recv(&m2).expect("i msg2"), server);
        let di = i.done().expect("done");
        assert_eq!(di.hash.to_vec(), h("7ce3e92b7e1cf09ba5f180c6785d8b4714cf2e00933514aca10cb59988b927a3238606651847e03d99204f7e63c943bfceb6a446fec4fd3511ae606281a7c4e3"));
        assert_eq!(di.tx.to_vec(), h("3efe507d8739ac68b267158ff10500fbad00f14718263038ff06600e227423a9"));
        assert_eq!(r.done().expect("done").remote_static, pair(0x11).public);
    }

    /// A tampered message, a truncated one, a message out of turn: each fails, none panics.
    #[test]
    fn bad_messages_fail_the_handshake() {
        let mut i = Handshake::new(Pattern::XX, true, pair(1), &[], None);
        let mut r = Handshake::new(Pattern::XX, false, pair(2), &[], None);
        assert!(r.send(&[]).is_err());
        let m1 = i.send(&[]).expect("msg1");
        r.recv(&m1).expect("msg1");
        let mut m2 = r.send(&[]).expect("msg2");
        for cut in [0, 31, 32, 79, 95] {
            let mut copy = Handshake::new(Pattern::XX, true, pair(1), &[], None);
            let _ = copy.send(&[]);
            assert!(copy.recv(&m2[..cut]).is_err(), "cut at {cut}");
        }
        m2[40] ^= 1;
        assert!(i.recv(&m2).is_err());
        // An all-zero ephemeral (small order) is refused.
        let mut r2 = Handshake::new(Pattern::XX, false, pair(2), &[], None);
        r2.recv(&[0; 32]).expect("e is only hashed");
        assert!(r2.send(&[]).is_err());
    }
}
