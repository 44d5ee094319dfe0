//! `@hyperswarm/secret-stream` (reference holepunch-wire §2): libsodium's
//! `crypto_secretstream_xchacha20poly1305` and the framing JS peers speak over a byte stream —
//! `u24le(length)` ‖ bytes; a Noise XX handshake (the dialer initiates), then one plaintext
//! header frame each way (a stream id bound to the handshake and the secretstream header), then
//! one encrypted frame per protomux message. Sans IO.
//!
//! The secretstream is libsodium's construction exactly (its padding after the message included,
//! which is `mlen mod 16` zero bytes, not the usual complement), checked against frames the JS
//! package printed.
//!
//! Invariant: a frame that does not authenticate, a header that is not bound to this handshake,
//! or any malformed frame is an error — never a panic and never a partial message.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;

use crate::noise::{Done, Handshake, KeyPair, NoiseError, Pattern};

pub const TAG_MESSAGE: u8 = 0;
pub const TAG_REKEY: u8 = 2;
/// The encrypted tag byte and the MAC a message gains.
pub const ABYTES: usize = 17;
pub const HEADERBYTES: usize = 24;
/// A frame's largest length (`u24`).
pub const MAX_FRAME: usize = (1 << 24) - 1;

/// The namespace constants of `hyperswarm/secret-stream`: initiator, responder, send.
fn namespaces() -> &'static [[u8; 32]; 3] {
    static NS: std::sync::OnceLock<[[u8; 32]; 3]> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        let ns = hyperfs_engine::crypto::namespace("hyperswarm/secret-stream", 3);
        [ns[0], ns[1], ns[2]]
    })
}

/// The stream id a side of role `initiator` sends in its header.
pub fn stream_id(hash: &[u8; 64], initiator: bool) -> [u8; 32] {
    let ns = namespaces();
    hyperfs_engine::crypto::keyed_hash(hash, &ns[usize::from(!initiator)])
}

/// Poly1305 over a stream of bytes (libsodium's `update` takes any lengths; the crate takes
/// blocks).
struct Mac {
    poly: Poly1305,
    carry: [u8; 16],
    held: usize,
}

impl Mac {
    fn new(key: &[u8]) -> Mac {
        Mac { poly: Poly1305::new(poly1305::Key::from_slice(key)), carry: [0; 16], held: 0 }
    }

    fn update(&mut self, mut data: &[u8]) {
        if self.held > 0 {
            let n = (16 - self.held).min(data.len());
            self.carry[self.held..self.held + n].copy_from_slice(&data[..n]);
            self.held += n;
            data = &data[n..];
            if self.held < 16 {
                return;
            }
            self.poly.update_padded(&self.carry);
            self.held = 0;
        }
        let whole = data.len() / 16 * 16;
        if whole > 0 {
            self.poly.update_padded(&data[..whole]);
        }
        let rest = &data[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.held = rest.len();
    }

    fn finish(self) -> [u8; 16] {
        self.poly.compute_unpadded(&self.carry[..self.held]).into()
    }
}

/// One direction's secretstream state: the key and the nonce (counter ‖ inonce).
#[derive(Clone)]
pub struct State {
    k: [u8; 32],
    nonce: [u8; 12],
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("secretstream::State")
    }
}

const ZEROS: [u8; 16] = [0; 16];

impl State {
    /// `init_push`/`init_pull` with `header`.
    pub fn new(key: &[u8; 32], header: &[u8; HEADERBYTES]) -> State {
        let k = chacha20::hchacha::<chacha20::cipher::consts::U10>(key.into(), header[..16].into());
        let mut nonce = [0u8; 12];
        nonce[0] = 1;
        nonce[4..].copy_from_slice(&header[16..]);
        State { k: k.into(), nonce }
    }

    fn cipher(&self) -> ChaCha20 {
        ChaCha20::new(&self.k.into(), &self.nonce.into())
    }

    /// The MAC state and the cipher at block 1 (block 0 keyed the MAC).
    fn begin(&self) -> (Mac, ChaCha20) {
        let mut c = self.cipher();
        let mut block0 = [0u8; 64];
        c.apply_keystream(&mut block0);
        (Mac::new(&block0[..32]), c)
    }

    fn end(mut mac: Mac, mlen: usize) -> [u8; 16] {
        mac.update(&ZEROS[..mlen & 15]);
        mac.update(&0u64.to_le_bytes());
        mac.update(&(64 + mlen as u64).to_le_bytes());
        mac.finish()
    }

    fn advance(&mut self, mac: &[u8; 16], tag: u8) {
        for (n, m) in self.nonce[4..].iter_mut().zip(mac) {
            *n ^= m;
        }
        let counter = u32::from_le_bytes([self.nonce[0], self.nonce[1], self.nonce[2], self.nonce[3]]).wrapping_add(1);
        self.nonce[..4].copy_from_slice(&counter.to_le_bytes());
        if tag & TAG_REKEY != 0 || counter == 0 {
            self.rekey();
        }
    }

    fn rekey(&mut self) {
        let mut fresh = [0u8; 40];
        fresh[..32].copy_from_slice(&self.k);
        fresh[32..].copy_from_slice(&self.nonce[4..]);
        self.cipher().apply_keystream(&mut fresh);
        self.k.copy_from_slice(&fresh[..32]);
        self.nonce[4..].copy_from_slice(&fresh[32..]);
        self.nonce[..4].copy_from_slice(&1u32.to_le_bytes());
    }

    /// `push` with no additional data: encrypts `m` in place; returns the encrypted tag byte
    /// (which goes in front) and the MAC (which goes after).
    pub fn push(&mut self, m: &mut [u8], tag: u8) -> (u8, [u8; 16]) {
        let (mut mac, mut c) = self.begin();
        let mut block = [0u8; 64];
        block[0] = tag;
        c.apply_keystream(&mut block);
        mac.update(&block);
        c.apply_keystream(m);
        mac.update(m);
        let out = State::end(mac, m.len());
        self.advance(&out, tag);
        (block[0], out)
    }

    /// `pull` with no additional data: checks the MAC and decrypts `c` in place; returns the tag.
    pub fn pull(&mut self, first: u8, c: &mut [u8], mac: &[u8; 16]) -> Result<u8, SecretStreamError> {
        let (mut poly, mut cipher) = self.begin();
        let mut block = [0u8; 64];
        block[0] = first;
        cipher.apply_keystream(&mut block);
        let tag = block[0];
        block[0] = first;
        poly.update(&block);
        poly.update(c);
        let expected = State::end(poly, c.len());
        // Constant time: a MAC is compared whole.
        if expected.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(SecretStreamError::Authentication);
        }
        cipher.apply_keystream(c);
        self.advance(&expected, tag);
        Ok(tag)
    }
}

/// One direction of the JS wire's frames between hyperfs nodes after a cipher switch:
/// AES-256-GCM in secret-stream's framing (`u24 length` ‖ ciphertext ‖ 16-byte tag), keyed
/// from that direction's secret-stream key, a frame counter as nonce.
pub struct AesFrames {
    key: ring::aead::LessSafeKey,
    /// Frames sealed so far: the nonce of the next.
    counter: u64,
}

impl AesFrames {
    /// Keyed from a direction's secret-stream key, for this use only.
    pub fn new(secret: &[u8; 32]) -> AesFrames {
        let derived = blake2b_simd::Params::new().hash_length(32).key(secret).hash(b"hyperfs aes-256-gcm frames v1");
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, derived.as_bytes())
            .expect("a 32-byte key is an AES-256 key");
        AesFrames { key: ring::aead::LessSafeKey::new(key), counter: 0 }
    }

    fn nonce(&mut self) -> ring::aead::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        ring::aead::Nonce::assume_unique_for_key(n)
    }

    /// Appends the frame of the message `write` appends, sealed in place.
    pub fn seal(&mut self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        out.extend_from_slice(&[0; 3]);
        write(out);
        let nonce = self.nonce();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut out[start + 3..])
            .expect("a frame is far below AES-GCM's limit");
        out.extend_from_slice(tag.as_ref());
        let len = (out.len() - start - 3) as u32;
        out[start..start + 3].copy_from_slice(&len.to_le_bytes()[..3]);
    }

    /// Opens a frame's body in place; the message's range within it.
    pub fn open(&mut self, body: &mut [u8]) -> Result<std::ops::Range<usize>, SecretStreamError> {
        let Some(n) = body.len().checked_sub(16) else {
            return Err(SecretStreamError::Short(body.len()));
        };
        let (text, tag) = body.split_at_mut(n);
        let tag = ring::aead::Tag::try_from(&tag[..]).map_err(|_| SecretStreamError::Authentication)?;
        let nonce = self.nonce();
        self.key
            .open_in_place_separate_tag(nonce, ring::aead::Aad::empty(), tag, text, 0..)
            .map_err(|_| SecretStreamError::Authentication)?;
        Ok(0..n)
    }
}

/// Why a secret stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretStreamError {
    #[error(transparent)]
    Noise(#[from] NoiseError),
    #[error("a frame that does not authenticate")]
    Authentication,
    #[error("an invalid header frame")]
    Header,
    #[error("a frame of {0} bytes where the handshake expects another")]
    Unexpected(usize),
    #[error("a frame too short to be a message ({0} bytes)")]
    Short(usize),
}

/// Appends `u24le(len)`.
fn length(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
}

/// Splits the first whole frame off `buf`: its body's range and the bytes used; `None` while
/// more bytes are needed.
pub fn take_frame(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    if buf.len() < 3 {
        return None;
    }
    let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
    (buf.len() >= 3 + len).then_some((3..3 + len, 3 + len))
}

/// A secret stream's handshake, until both headers have passed.
#[derive(Debug)]
pub struct Opening {
    initiator: bool,
    noise: Handshake,
    /// Our header's random bytes.
    header: [u8; HEADERBYTES],
    done: Option<Done>,
    push: Option<State>,
}

/// An open secret stream: encrypts what goes, decrypts what comes. A copy carries both
/// directions' states: a connection gives one to its reader and keeps one for what it sends.
#[derive(Debug, Clone)]
pub struct Stream {
    pub initiator: bool,
    pub handshake: Done,
    push: State,
    pull: State,
}

impl Opening {
    /// Starts the handshake with static key `me`. The initiator's first frame is in `out`.
    pub fn start(initiator: bool, me: KeyPair, out: &mut Vec<u8>) -> Result<Opening, SecretStreamError> {
        let mut header = [0u8; HEADERBYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut header);
        Opening::with(initiator, Handshake::new(Pattern::XX, initiator, me, &[], None), header, out)
    }

    /// As [`Opening::start`], with a given handshake and header (for the vectors).
    #[doc(hidden)]
    pub fn with(
        initiator: bool,
        mut noise: Handshake,
        header: [u8; HEADERBYTES],
        out: &mut Vec<u8>,
    ) -> Result<Opening, SecretStreamError> {
        if initiator {
            let m = noise.send(&[])?;
            length(out, m.len());
            out.extend_from_slice(&m);
        }
        Ok(Opening { initiator, noise, header, done: None, push: None })
    }

    /// A stream whose Noise handshake happened elsewhere (HyperDHT carries an IK handshake in
    /// its own messages, §2.6): our header goes at once, into `out`.
    pub fn established(initiator: bool, done: Done, me: KeyPair, out: &mut Vec<u8>) -> Opening {
        let mut header = [0u8; HEADERBYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut header);
        length(out, 56);
        out.extend_from_slice(&stream_id(&done.hash, initiator));
        out.extend_from_slice(&header);
        let push = Some(State::new(&done.tx, &header));
        // The Noise state is done with; a placeholder keeps the type whole.
        let noise = Handshake::new(Pattern::XX, initiator, me, &[], None);
        Opening { initiator, noise, header, done: Some(done), push }
    }

    /// Takes one frame from the peer; writes any answer to `out`. Returns the open stream once
    /// the peer's header came.
    pub fn on_frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<Option<Stream>, SecretStreamError> {
        let Some(done) = self.done.clone() else {
            if !matches!(frame.len(), 32 | 96 | 64) {
                return Err(SecretStreamError::Unexpected(frame.len()));
            }
            self.noise.recv(frame)?;
            if self.noise.my_turn() {
                let m = self.noise.send(&[])?;
                length(out, m.len());
                out.extend_from_slice(&m);
            }
            if let Some(done) = self.noise.done().cloned() {
                // Our header follows our last handshake message at once.
                length(out, 56);
                out.extend_from_slice(&stream_id(&done.hash, self.initiator));
                out.extend_from_slice(&self.header);
                self.push = Some(State::new(&done.tx, &self.header));
                self.done = Some(done);
            }
            return Ok(None);
        };
        if frame.len() != 32 + HEADERBYTES || frame[..32] != stream_id(&done.hash, !self.initiator) {
            return Err(SecretStreamError::Header);
        }
        let header: [u8; HEADERBYTES] = frame[32..].try_into().map_err(|_| SecretStreamError::Header)?;
        let pull = State::new(&done.rx, &header);
        let push = self.push.clone().ok_or(SecretStreamError::Header)?;
        Ok(Some(Stream { initiator: self.initiator, handshake: done, push, pull }))
    }
}

impl Stream {
    /// Appends the frame of a message whose plaintext `write` appends to `out`: the message is
    /// written once, in place, and encrypted there.
    pub fn send_with(&mut self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        write(out);
        let mlen = out.len() - start - 4;
        let (first, mac) = self.push.push(&mut out[start + 4..], TAG_MESSAGE);
        out[start + 3] = first;
        out.extend_from_slice(&mac);
        let len = (mlen + ABYTES) as u32;
        out[start..start + 3].copy_from_slice(&len.to_le_bytes()[..3]);
    }

    /// Appends the frame of `message`.
    pub fn send(&mut self, out: &mut Vec<u8>, message: &[u8]) {
        self.send_with(out, |o| o.extend_from_slice(message));
    }

    /// Decrypts a frame's body in place; returns the message's range within it.
    pub fn open(&mut self, body: &mut [u8]) -> Result<std::ops::Range<usize>, SecretStreamError> {
        if body.len() < ABYTES {
            return Err(SecretStreamError::Short(body.len()));
        }
        let n = body.len();
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&body[n - 16..]);
        let first = body[0];
        self.pull.pull(first, &mut body[1..n - 16], &mac)?;
        Ok(1..n - 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn key(s: &str) -> [u8; 32] {
        h(s).try_into().expect("32 bytes")
    }

    /// Reference §2.8 (a): frames `sodium-secretstream` pushed with a fixed header.
    #[test]
    fn frames_match_sodium_secretstream() {
        let tx = key("823c4bb32d9b39fd299f5d33ef51633b4391f1d7e24120fe2a2cd81462906291");
        let header = [0xa0; 24];
        let state = State::new(&tx, &header);
        let mut s = Stream {
            initiator: true,
            handshake: Done { tx, rx: tx, hash: [0; 64], remote_static: [0; 32] },
            push: state.clone(),
            pull: state,
        };
        let mut out = Vec::new();
        s.send(&mut out, b"hello");
        assert_eq!(out, h("160000c5d2fa5f1b73d12138e01ed2920058e0084f8b9e4af9"));
        let mut out = Vec::new();
        s.send(&mut out, b"");
        assert_eq!(out, h("110000d5860017d5fab4b1e807908b1713078ae8"));
        let mut out = Vec::new();
        s.send(&mut out, b"world");
        assert_eq!(out, h("160000d0b57643f1a7954a378de2aea73fd9f5f16ebbab925d"));
        // And the pull side reads them back; a flipped bit anywhere fails.
        let mut pull = State::new(&tx, &header);
        let mut f = h("160000c5d2fa5f1b73d12138e01ed2920058e0084f8b9e4af9");
        let mac: [u8; 16] = f[f.len() - 16..].try_into().expect("mac");
        let n = f.len();
        let first = f[3];
        assert_eq!(pull.pull(first, &mut f[4..n - 16], &mac), Ok(TAG_MESSAGE));
        assert_eq!(&f[4..n - 16], b"hello");
        for bit in [3usize, 4, 8, 20] {
            let mut pull = State::new(&tx, &header);
            let mut f = h("160000c5d2fa5f1b73d12138e01ed2920058e0084f8b9e4af9");
            f[bit] ^= 0x10;
            let mac: [u8; 16] = f[f.len() - 16..].try_into().expect("mac");
            let first = f[3];
            assert!(pull.pull(first, &mut f[4..n - 16], &mac).is_err(), "bit {bit}");
        }
    }

    /// Long messages of every padding, the rekey after 2^32 messages' counter wrap, both ends.
    #[test]
    fn push_and_pull_agree_across_lengths_and_rekeys() {
        let (k, header) = ([7u8; 32], [9u8; 24]);
        let (mut push, mut pull) = (State::new(&k, &header), State::new(&k, &header));
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut c = plain.clone();
            let tag = if len == 65 { TAG_REKEY } else { TAG_MESSAGE };
            let (first, mac) = push.push(&mut c, tag);
            assert_eq!(pull.pull(first, &mut c, &mac), Ok(tag));
            assert_eq!(c, plain);
        }
        push.nonce[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        pull.nonce[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        for _ in 0..3 {
            let mut c = b"wrap".to_vec();
            let (first, mac) = push.push(&mut c, TAG_MESSAGE);
            assert!(pull.pull(first, &mut c, &mac).is_ok());
            assert_eq!(c, b"wrap");
        }
    }

    /// Reference §2.8 (b): two real `NoiseSecretStream`s; the bytes of our side are theirs.
    #[test]
    fn a_session_matches_the_js_transcript() {
        use crate::noise::{Handshake, KeyPair, Pattern};
        let ia = Handshake::new(Pattern::XX, true, KeyPair::from_seed(&[0x11; 32]), &[], None)
            .with_ephemeral(KeyPair::from_seed(&[0xe0; 32]));
        let ra = Handshake::new(Pattern::XX, false, KeyPair::from_seed(&[0x22; 32]), &[], None)
            .with_ephemeral(KeyPair::from_seed(&[0xe1; 32]));
        let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
        let mut i = Opening::with(true, ia, [0xa0; 24], &mut to_r).expect("i");
        let mut r = Opening::with(false, ra, [0xa1; 24], &mut to_i).expect("r");
        assert_eq!(to_r, h("2000009ff6204d61b59a9e61afdd64fdf294bfe8a16687ba0538823ba59db6cb7b21ff"));
        // Frames flow until both are open.
        let (mut si, mut sr) = (None, None);
        for _ in 0..4 {
            let (a, b) = (std::mem::take(&mut to_r), std::mem::take(&mut to_i));
            let mut at = 0;
            while let Some((body, used)) = take_frame(&a[at..]) {
                if let Some(s) = r.on_frame(&a[at..][body], &mut to_i).expect("r frame") {
                    sr = Some(s);
                }
                at += used;
            }
            let mut at = 0;
            while let Some((body, used)) = take_frame(&b[at..]) {
                if let Some(s) = i.on_frame(&b[at..][body], &mut to_r).expect("i frame") {
                    si = Some(s);
                }
                at += used;
            }
            if at == 0 && a.is_empty() {
                break;
            }
        }
        let (mut si, mut sr) = (si.expect("initiator open"), sr.expect("responder open"));
        let mut out = Vec::new();
        si.send(&mut out, b"hello");
        assert_eq!(out, h("160000c5d2fa5f1b73d12138e01ed2920058e0084f8b9e4af9"));
        let (body, _) = take_frame(&out).expect("frame");
        let mut body = out[body].to_vec();
        let m = sr.open(&mut body).expect("open");
        assert_eq!(&body[m], b"hello");
        assert_eq!(
            stream_id(&si.handshake.hash, false).to_vec(),
            h("3522022550c2153f63030d8b7a04262140ab95ff5d164e432644d02b1a55d621")
        );
    }
}
