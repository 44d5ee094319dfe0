//! Compact-encoding, the byte format of every Hypercore wire message, manifest and signature
//! container (reference §1). One encoder and one bounded decoder; every on-disk or on-wire
//! struct of the engine is built from these primitives.
//!
//! Invariant: decoding never panics and never reads past the buffer it was given; truncated or
//! hostile input is an [`DecodeError`].

use thiserror::Error;

/// Why bytes could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("input ended early while decoding {0}")]
    Truncated(&'static str),
    /// A value is outside what the format allows.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes were left over after a complete value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Appends compact-encoded values to a growing buffer.
#[derive(Default, Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(cap: usize) -> Self {
        Self { buf: Vec::with_capacity(cap) }
    }

    /// An encoder that appends to `buf` (what it holds stays; `finish` gives it back).
    pub fn appending(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Variable-length unsigned integer: 1, 3, 5 or 9 bytes.
    pub fn uint(&mut self, n: u64) -> &mut Self {
        if n <= 0xfc {
            self.buf.push(n as u8);
        } else if n <= 0xffff {
            self.buf.push(0xfd);
            self.buf.extend_from_slice(&(n as u16).to_le_bytes());
        } else if n <= 0xffff_ffff {
            self.buf.push(0xfe);
            self.buf.extend_from_slice(&(n as u32).to_le_bytes());
        } else {
            self.buf.push(0xff);
            self.buf.extend_from_slice(&n.to_le_bytes());
        }
        self
    }

    pub fn u8(&mut self, n: u8) -> &mut Self {
        self.buf.push(n);
        self
    }

    pub fn u64_le(&mut self, n: u64) -> &mut Self {
        self.buf.extend_from_slice(&n.to_le_bytes());
        self
    }

    /// Raw bytes with no length prefix (`fixed32`, `fixed64`, `raw`).
    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Length-prefixed bytes (`buffer`; an empty buffer is the encoding of null).
    pub fn buffer(&mut self, bytes: &[u8]) -> &mut Self {
        self.uint(bytes.len() as u64);
        self.fixed(bytes)
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.buffer(s.as_bytes())
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.u8(u8::from(b))
    }
}

/// Reads compact-encoded values from a slice, never past its end.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let first = self.u8(what)?;
        let n = match first {
            0xfd => u16::from_le_bytes(self.array::<2>(what)?) as u64,
            0xfe => u32::from_le_bytes(self.array::<4>(what)?) as u64,
            0xff => u64::from_le_bytes(self.array::<8>(what)?),
            n => n as u64,
        };
        Ok(n)
    }

    /// A `uint` that must fit in memory-sized counts.
    pub fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.uint(what)?;
        usize::try_from(n).map_err(|_| DecodeError::Invalid(what))
    }

    pub fn u64_le(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn buffer(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(what)?;
        self.take(n, what)
    }

    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.buffer(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid(what))
    }

    /// An array count, refused above the JS decoder's limit of 0x100000 elements and above what
    /// the remaining bytes could hold (each element takes at least `min_elem` bytes).
    pub fn count(&mut self, what: &'static str, min_elem: usize) -> Result<usize, DecodeError> {
        let n = self.len(what)?;
        if n > 0x10_0000 || n.saturating_mul(min_elem.max(1)) > self.remaining() {
            return Err(DecodeError::Invalid(what));
        }
        Ok(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_boundaries_round_trip() {
        for n in [0u64, 1, 0xfc, 0xfd, 0xffff, 0x1_0000, 0xffff_ffff, 0x1_0000_0000, u64::MAX] {
            let mut e = Encoder::new();
            e.uint(n);
            let bytes = e.finish();
            let expected_len = match n {
                0..=0xfc => 1,
                0xfd..=0xffff => 3,
                0x1_0000..=0xffff_ffff => 5,
                _ => 9,
            };
            assert_eq!(bytes.len(), expected_len, "{n}");
            let mut d = Decoder::new(&bytes);
            assert_eq!(d.uint("n").expect("decodes"), n);
            d.finish().expect("no trailing bytes");
        }
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut d = Decoder::new(&[0xfe, 1, 2]);
        assert_eq!(d.uint("x"), Err(DecodeError::Truncated("x")));
        let mut d = Decoder::new(&[5, 1, 2]);
        assert!(d.buffer("b").is_err());
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(d.count("arr", 1).is_err());
    }
}
