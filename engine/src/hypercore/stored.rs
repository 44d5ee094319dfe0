//! How block bytes are kept in the `blocks` table: one tag byte, then the bytes raw (`0`) or
//! zstd-compressed (`1`). Compression happens here rather than inside RocksDB so it runs on every
//! core beside the leaf hashing, with a reused context per thread, and is skipped for blocks it
//! does not shrink.

use std::cell::RefCell;

use crate::{Error, Result};

pub(crate) const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Blocks smaller than this are not worth a compression attempt.
const MIN_COMPRESS: usize = 256;
const LEVEL: i32 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    /// A decompression context per thread: making one per block (zeroing its ~100 KiB of
    /// tables) was most of the cost of reading a small compressed block.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// A block whose first this-many bytes do not compress is stored raw without compressing the
/// rest: random and already-compressed data (most large files) then cost almost nothing.
const PROBE: usize = 1024;

/// How many leading bytes the randomness test counts: for uniform bytes its statistic is about
/// 255 with a spread of about 23 whatever the sample size, so 512 bytes tell random from text
/// as surely as the whole probe, at half the cost (the test was a fifth of a hashing thread's
/// time on 4 KiB blocks).
const RANDOM_PROBE: usize = 512;

/// The stored form of a block: its bytes behind the raw tag (borrowed, not copied), or a
/// compressed copy.
pub(crate) enum Encoded<'a> {
    Raw(&'a [u8]),
    Packed(std::borrow::Cow<'a, [u8]>),
}

impl Encoded<'_> {
    /// The stored bytes as two parts written one after the other.
    pub(crate) fn parts(&self) -> [&[u8]; 2] {
        match self {
            Encoded::Raw(data) => [&[RAW], data],
            Encoded::Packed(v) => [&v[..], &[]],
        }
    }
}

/// The stored form of `data`, without copying it when it is stored raw.
pub(crate) fn encode_parts(data: &[u8]) -> Encoded<'_> {
    let sample = &data[..data.len().min(PROBE)];
    if data.len() >= MIN_COMPRESS
        && !looks_random(&sample[..sample.len().min(RANDOM_PROBE)])
        && (data.len() <= PROBE || shrinks(sample))
    {
        if let Some(packed) = compress(data) {
            return Encoded::Packed(packed.into());
        }
    }
    Encoded::Raw(data)
}

/// The stored form of `data` when it is not stored raw: its compressed bytes behind their tag.
pub(crate) fn packed(data: &[u8]) -> Option<Vec<u8>> {
    match encode_parts(data) {
        Encoded::Raw(_) => None,
        Encoded::Packed(v) => Some(v.into_owned()),
    }
}

/// The stored form of `data`, joined (the tests' view of it).
#[cfg(test)]
fn encode(data: &[u8]) -> Vec<u8> {
    encode_parts(data).parts().concat()
}

/// The stored length of a block of `size` bytes kept raw (its tag and its bytes). Only the raw
/// form has it: a compressed form is kept only when it saves at least 1/16 ([`compress`]). A
/// stored form of this length is raw, and a part of it can be read without reading its tag.
pub(crate) fn raw_len(size: u64) -> Option<usize> {
    usize::try_from(size).ok()?.checked_add(1)
}

/// `data` compressed behind its tag, if that saves at least 1/16.
fn compress(data: &[u8]) -> Option<Vec<u8>> {
    let limit = data.len() - data.len() / 16;
    let mut out = vec![0u8; limit + 1];
    out[0] = ZSTD;
    let n = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        c.as_mut()?.compress_to_buffer(data, &mut out[1..]).ok()
    })?;
    out.truncate(n + 1);
    Some(out)
}

fn shrinks(sample: &[u8]) -> bool {
    compress(sample).is_some()
}

/// Whether the bytes look uniformly random, so compressing is pointless: random and
/// already-compressed data, the bulk of large files. A chi-square test of the byte histogram
/// against the uniform one costs a fraction of the zstd attempt it saves.
fn looks_random(sample: &[u8]) -> bool {
    if sample.len() < 256 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    // Σ (count − n/256)² / (n/256), in integers scaled by 256: uniform bytes give about 255
    // (255 degrees of freedom); text and structured data give thousands.
    let n = sample.len() as u64;
    let chi_scaled: u64 = counts.iter().map(|&c| (u64::from(c) * 256).abs_diff(n).pow(2)).sum::<u64>() / 256;
    chi_scaled < 400 * n
}

/// The block bytes of a stored form whose leaf says it holds `size` bytes.
pub(crate) fn decode(stored: &[u8], size: u64, index: u64) -> Result<Vec<u8>> {
    let corrupt = |why: &str| Error::Verification(format!("stored block {index} is damaged: {why}"));
    let (&tag, body) = stored.split_first().ok_or_else(|| corrupt("empty record"))?;
    let out = match tag {
        RAW => body.to_vec(),
        ZSTD => {
            let cap = usize::try_from(size).map_err(|_| corrupt("size"))?;
            let mut out = vec![0u8; cap];
            let n = DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    let made = zstd::bulk::Decompressor::new();
                    *d = Some(made.map_err(|e| Error::Storage(format!("making a zstd context: {e}")))?);
                }
                match d.as_mut() {
                    Some(d) => d.decompress_to_buffer(body, &mut out).map_err(|e| corrupt(&e.to_string())),
                    None => Err(corrupt("no decompression context")),
                }
            })?;
            out.truncate(n);
            out
        }
        _ => return Err(corrupt("unknown encoding")),
    };
    if out.len() as u64 != size {
        return Err(corrupt("wrong length"));
    }
    Ok(out)
}

/// The largest block a recovery check decodes (no block hyperfs or JS writes comes near it).
const MAX_CHECKED: u64 = 64 << 20;

/// Whether `stored` (a block's stored form) decodes to bytes whose leaf hash is `key`: what a
/// store checks, after a power cut, of the blocks it may not have had on disk.
pub fn verifies(key: &[u8], stored: &[u8]) -> bool {
    let size = match stored.split_first() {
        Some((&RAW, body)) => body.len() as u64,
        Some((&ZSTD, body)) => match zstd::zstd_safe::get_frame_content_size(body) {
            Ok(Some(n)) if n <= MAX_CHECKED => n,
            _ => return false,
        },
        _ => return false,
    };
    decode(stored, size, 0).is_ok_and(|data| crate::crypto::leaf_hash(&data)[..] == *key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn compressible_blocks_shrink_and_round_trip() {
        let text = b"hyperfs ".repeat(1000);
        let s = encode(&text);
        assert_eq!(s[0], ZSTD);
        assert!(s.len() < text.len() / 4);
        assert_eq!(decode(&s, text.len() as u64, 0).expect("decodes"), text);
    }

    #[test]
    fn a_block_that_starts_incompressible_is_stored_raw() {
        let mut data = noise(8192);
        data.extend(std::iter::repeat_n(b'a', 60_000));
        let s = encode(&data);
        assert_eq!(s[0], RAW);
        assert_eq!(decode(&s, data.len() as u64, 0).expect("decodes"), data);
    }

    #[test]
    fn incompressible_and_small_blocks_stay_raw() {
        let random = noise(4096);
        let s = encode(&random);
        assert_eq!(decode(&s, 4096, 0).expect("decodes"), random);
        let s = encode(b"tiny");
        assert_eq!(s, b"\0tiny");
    }

    #[test]
    fn the_entropy_check_tells_noise_from_text() {
        assert!(looks_random(&noise(1024)));
        assert!(!looks_random(&b"hyperfs stores text ".repeat(60)));
        assert!(!looks_random(&[0u8; 1024]));
        assert!(!looks_random(&noise(100)), "too short to judge");
    }

    #[test]
    fn damaged_records_are_errors() {
        assert!(decode(&[], 0, 0).is_err());
        assert!(decode(&[7, 1, 2], 2, 0).is_err());
        assert!(decode(&[1, 1, 2, 3], 3, 0).is_err());
        assert!(decode(&[0, 1, 2, 3], 2, 0).is_err());
    }
}
