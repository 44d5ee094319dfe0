//! Hyperdrive entry values: the JSON text stored as a file's value in the db bee (reference
//! §8.3), and the block maps that list a deduplicated file's chunks (hyperblobs `block-map`).
//!
//! Encoding writes the keys in the order Hyperdrive writes them, so the same entry gives the
//! same bytes; decoding accepts any order and ignores unknown keys.

use serde_json::Value;

use crate::encoding::{DecodeError, Decoder, Encoder};
use crate::{Error, Result};

/// Where a file's bytes are in the blobs core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Blob {
    pub block_offset: u64,
    pub byte_offset: u64,
    pub block_length: u64,
    /// The file's size for a plain blob; the size of the map blocks for a block-mapped one.
    pub byte_length: u64,
    /// The blocks at `block_offset` are a block map listing the file's chunks, not its bytes.
    pub block_map: bool,
}

/// A file or symlink of a drive.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub executable: bool,
    pub linkname: Option<String>,
    pub blob: Option<Blob>,
    pub metadata: Option<Value>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(160);
        s.push_str(r#"{"executable":"#);
        s.push_str(if self.executable { "true" } else { "false" });
        s.push_str(r#","linkname":"#);
        match &self.linkname {
            Some(l) => s.push_str(&Value::from(l.as_str()).to_string()),
            None => s.push_str("null"),
        }
        s.push_str(r#","blob":"#);
        match &self.blob {
            Some(b) => {
                s.push_str(&format!(
                    r#"{{"blockOffset":{},"byteOffset":{},"blockLength":{},"byteLength":{}"#,
                    b.block_offset, b.byte_offset, b.block_length, b.byte_length
                ));
                if b.block_map {
                    s.push_str(r#","blockMap":true"#);
                }
                s.push('}');
            }
            None => s.push_str("null"),
        }
        s.push_str(r#","metadata":"#);
        match &self.metadata {
            Some(m) => s.push_str(&m.to_string()),
            None => s.push_str("null"),
        }
        s.push('}');
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |what| Error::Decode { what: "drive entry", source: DecodeError::Invalid(what) };
        let v: Value = serde_json::from_slice(bytes).map_err(|_| bad("JSON"))?;
        let o = v.as_object().ok_or(bad("entry that is not an object"))?;
        let blob = match o.get("blob") {
            None | Some(Value::Null) => None,
            Some(Value::Object(b)) => {
                let n = |k: &str| b.get(k).and_then(Value::as_u64).ok_or(bad("blob field"));
                Some(Blob {
                    block_offset: n("blockOffset")?,
                    byte_offset: n("byteOffset")?,
                    block_length: n("blockLength")?,
                    byte_length: n("byteLength")?,
                    block_map: b.get("blockMap").and_then(Value::as_bool).unwrap_or(false),
                })
            }
            Some(_) => return Err(bad("blob")),
        };
        Ok(Entry {
            executable: o.get("executable").and_then(Value::as_bool).unwrap_or(false),
            linkname: o.get("linkname").and_then(Value::as_str).map(str::to_owned),
            blob,
            metadata: o.get("metadata").filter(|m| !m.is_null()).cloned(),
        })
    }
}

/// One chunk of a block-mapped file: a blobs block and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapBlock {
    pub index: u64,
    pub byte_length: u64,
}

/// Entries per map block, as hyperblobs splits them.
pub const MAP_BLOCK_ENTRIES: usize = 8192;

/// The most map blocks hyperblobs will read for one file.
pub const MAX_MAP_BLOCKS: u64 = 64;

/// Encodes a block map as hyperblobs does: blocks of `uint 0 ‖ array(uint index, uint len)`.
pub fn encode_block_map(blocks: &[MapBlock]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for part in blocks.chunks(MAP_BLOCK_ENTRIES) {
        let mut e = Encoder::with_capacity(2 + part.len() * 6);
        e.uint(0).uint(part.len() as u64);
        for b in part {
            e.uint(b.index).uint(b.byte_length);
        }
        out.push(e.finish());
    }
    if out.is_empty() {
        let mut e = Encoder::new();
        e.uint(0).uint(0);
        out.push(e.finish());
    }
    out
}

/// Decodes the blocks of a block map into one list.
pub fn decode_block_map(parts: &[Vec<u8>]) -> Result<Vec<MapBlock>> {
    let err = |source| Error::Decode { what: "block map", source };
    let mut out = Vec::new();
    for p in parts {
        let mut d = Decoder::new(p);
        if d.uint("block map version").map_err(err)? != 0 {
            return Err(err(DecodeError::Invalid("block map version")));
        }
        let n = d.count("block map length", 2).map_err(err)?;
        for _ in 0..n {
            let index = d.uint("block index").map_err(err)?;
            let byte_length = d.uint("block length").map_err(err)?;
            out.push(MapBlock { index, byte_length });
        }
        d.finish().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_encode_as_hyperdrive_writes_them() {
        let e = Entry {
            executable: false,
            linkname: None,
            blob: Some(Blob { block_offset: 0, byte_offset: 0, block_length: 1, byte_length: 8, block_map: false }),
            metadata: None,
        };
        assert_eq!(
            String::from_utf8(e.encode()).expect("utf-8"),
            r#"{"executable":false,"linkname":null,"blob":{"blockOffset":0,"byteOffset":0,"blockLength":1,"byteLength":8},"metadata":null}"#
        );
        assert_eq!(Entry::decode(&e.encode()).expect("decode"), e);
        let link = Entry { executable: false, linkname: Some("/hello.txt".into()), blob: None, metadata: None };
        assert_eq!(
            String::from_utf8(link.encode()).expect("utf-8"),
            r#"{"executable":false,"linkname":"/hello.txt","blob":null,"metadata":null}"#
        );
        assert!(Entry::decode(b"[1]").is_err());
        assert!(Entry::decode(br#"{"blob": {"blockOffset": -1}}"#).is_err());
    }

    #[test]
    fn block_maps_round_trip_and_split_at_8192() {
        let blocks: Vec<_> = (0..20_000).map(|i| MapBlock { index: i * 3, byte_length: 65536 + i }).collect();
        let parts = encode_block_map(&blocks);
        assert_eq!(parts.len(), 3);
        assert_eq!(decode_block_map(&parts).expect("decode"), blocks);
        assert!(decode_block_map(&[vec![1, 0]]).is_err());
    }
}
