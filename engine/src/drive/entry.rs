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
        // Straight into the fields (no map of the whole entry, no copy of its metadata): a
        // listing decodes every entry of a folder. A loose field of the wrong type reads as
        // its default; a blob must be an object of whole numbers (or null).
        let raw: RawEntry = from_object(bytes)?;
        let blob = match raw.blob {
            None => None,
            Some(b) => {
                let n = |v: Value| v.as_u64().ok_or(bad("blob field"));
                Some(Blob {
                    block_offset: n(b.block_offset)?,
                    byte_offset: n(b.byte_offset)?,
                    block_length: n(b.block_length)?,
                    byte_length: n(b.byte_length)?,
                    block_map: b.block_map.as_bool().unwrap_or(false),
                })
            }
        };
        Ok(Entry {
            executable: raw.executable.as_bool().unwrap_or(false),
            linkname: match raw.linkname {
                Value::String(s) => Some(s),
                _ => None,
            },
            blob,
            metadata: Some(raw.metadata).filter(|m| !m.is_null()),
        })
    }

    /// Whether a stored entry is a symlink (what [`Entry::decode`] gives a `linkname` for),
    /// read without decoding the rest of it: a plain listing needs each entry's kind, not its
    /// blob or metadata.
    ///
    /// Files are told without parsing as Hyperdrive writes them: in an object without a
    /// backslash no string can hold a quote or an escaped key, so if the word `linkname` appears
    /// at most once, and then as `"linkname":null`, the entry has no string `linkname` at its
    /// top level. The rest of it is checked when the entry is decoded.
    pub fn decode_is_link(bytes: &[u8]) -> Result<bool> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        if start.is_some_and(|i| bytes[i] == b'{') && memchr::memchr(b'\\', bytes).is_none() {
            static LINKNAME: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
                std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"linkname"));
            let mut found = LINKNAME.find_iter(bytes);
            match (found.next(), found.next()) {
                (None, _) => return Ok(false),
                (Some(at), None) if bytes[at..].starts_with(b"linkname\":null") => return Ok(false),
                _ => {}
            }
        }
        #[derive(serde::Deserialize)]
        struct Link {
            #[serde(default)]
            linkname: Value,
        }
        Ok(from_object::<Link>(bytes)?.linkname.is_string())
    }
}

/// What kind of special file an entry of the `special` sub-database is (kept in its metadata as
/// `"type"`, with `"rdev"` for devices): FIFOs, sockets and device nodes, which JS Hyperdrive
/// has no entry for and does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Socket,
    /// A character device and its device number (as `makedev` makes it).
    Char(u64),
    Block(u64),
}

impl Special {
    /// The special file `entry` records; `None` if its metadata names no known type.
    pub fn of(entry: &Entry) -> Option<Special> {
        let m = entry.metadata.as_ref()?.as_object()?;
        let rdev = m.get("rdev").and_then(Value::as_u64).unwrap_or(0);
        Some(match m.get("type")?.as_str()? {
            "fifo" => Special::Fifo,
            "socket" => Special::Socket,
            "char" => Special::Char(rdev),
            "block" => Special::Block(rdev),
            _ => return None,
        })
    }

    /// `metadata` with this type (and device number) recorded.
    pub fn to_json(self, metadata: Value) -> Value {
        let mut m = match metadata {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let (kind, rdev) = match self {
            Special::Fifo => ("fifo", None),
            Special::Socket => ("socket", None),
            Special::Char(d) => ("char", Some(d)),
            Special::Block(d) => ("block", Some(d)),
        };
        m.insert("type".into(), Value::from(kind));
        match rdev {
            Some(d) => m.insert("rdev".into(), Value::from(d)),
            None => m.remove("rdev"),
        };
        Value::Object(m)
    }

    /// The device number (0 for FIFOs and sockets).
    pub fn rdev(self) -> u64 {
        match self {
            Special::Char(d) | Special::Block(d) => d,
            Special::Fifo | Special::Socket => 0,
        }
    }
}

/// The metadata key naming a file's hard-link group (see the drive's `links` module).
pub const LINK_KEY: &str = "inode";

impl Entry {
    /// The hard-link group this entry's name belongs to: 32 lowercase hex digits in its
    /// metadata's `"inode"`, anything else is no group.
    pub fn link_id(&self) -> Option<&str> {
        let id = self.metadata.as_ref()?.get(LINK_KEY)?.as_str()?;
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(id)
    }

    /// The hard-link group of a stored entry, decoding it only if it may name one.
    pub fn link_id_of(bytes: &[u8]) -> Option<String> {
        memchr::memmem::find(bytes, LINK_KEY.as_bytes())?;
        Entry::decode(bytes).ok()?.link_id().map(str::to_owned)
    }
}

/// The fields of a stored entry, which must be a JSON object (a derived struct would also take
/// the array form).
fn from_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let bad = |what| Error::Decode { what: "drive entry", source: DecodeError::Invalid(what) };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad("entry that is not an object"));
    }
    serde_json::from_slice(bytes).map_err(|_| bad("JSON"))
}

/// An entry's JSON object as read: its known keys, any others skipped.
#[derive(serde::Deserialize)]
struct RawEntry {
    #[serde(default)]
    executable: Value,
    #[serde(default)]
    linkname: Value,
    #[serde(default)]
    blob: Option<RawBlob>,
    #[serde(default)]
    metadata: Value,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBlob {
    #[serde(default)]
    block_offset: Value,
    #[serde(default)]
    byte_offset: Value,
    #[serde(default)]
    block_length: Value,
    #[serde(default)]
    byte_length: Value,
    #[serde(default)]
    block_map: Value,
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

/// The largest chunk a block map may name: the largest block a peer sends (a frame).
pub const MAX_MAP_CHUNK: u64 = 8 << 20;

/// Decodes the blocks of a block map into one list. A map is someone else's bytes: each block
/// lists at most [`MAP_BLOCK_ENTRIES`] chunks (as hyperblobs writes them; a crafted one could
/// list millions, and a file's stat decoded gigabytes), each chunk a block below
/// `blobs_length` of at most [`MAX_MAP_CHUNK`] bytes, and the file's size fits in 64 bits.
pub fn decode_block_map(parts: &[Vec<u8>], blobs_length: u64) -> Result<Vec<MapBlock>> {
    let err = |source| Error::Decode { what: "block map", source };
    let mut out = Vec::new();
    let mut size = 0u64;
    for p in parts {
        let mut d = Decoder::new(p);
        if d.uint("block map version").map_err(err)? != 0 {
            return Err(err(DecodeError::Invalid("block map version")));
        }
        let n = d.count("block map length", 2).map_err(err)?;
        if n > MAP_BLOCK_ENTRIES {
            return Err(err(DecodeError::Invalid("a block map block of more entries than hyperblobs writes")));
        }
        out.reserve(n);
        for _ in 0..n {
            let index = d.uint("block index").map_err(err)?;
            let byte_length = d.uint("block length").map_err(err)?;
            if index >= blobs_length || byte_length > MAX_MAP_CHUNK {
                return Err(err(DecodeError::Invalid("a block map entry beyond the blobs core or over 8 MiB")));
            }
            size = size.checked_add(byte_length).ok_or(err(DecodeError::Invalid("a block map over 2^64 bytes")))?;
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
        assert!(Entry::decode_is_link(&link.encode()).expect("a link"));
        assert!(!Entry::decode_is_link(&e.encode()).expect("a file"));
        assert!(!Entry::decode_is_link(br#"{"linkname": 5, "metadata": {"linkname": "x"}}"#).expect("loose"));
        assert!(Entry::decode_is_link(br#"["/x"]"#).is_err());
        // A key spelt in escapes is still `linkname`; bytes without the word are not parsed.
        assert!(Entry::decode_is_link(br#"{"\u006cinkname": "/x"}"#).expect("escaped"));
        assert!(!Entry::decode_is_link(br#" {"blob": {"blockOffset": 0}, "metadata": null}"#).expect("plain"));
        assert!(!Entry::decode_is_link(br#"{"linkname":null,"blob":null}"#).expect("as written"));
        assert!(!Entry::decode_is_link(br#"{"metadata":{"linkname":null}}"#).expect("nested"));
        assert!(Entry::decode_is_link(br#"{"metadata":{"linkname":null},"linkname":"/x"}"#).expect("twice"));
        assert!(Entry::decode_is_link(br#"{"linkname" : "/x"}"#).expect("spaced"));
        assert!(Entry::decode(br#"{"blob": {"blockOffset": -1}}"#).is_err());
        assert!(Entry::decode(br#"{"blob": {"blockOffset": 0, "byteOffset": 0, "blockLength": 1}}"#).is_err());
        assert!(Entry::decode(br#"{"blob": 7}"#).is_err());
        // Any key order, unknown keys skipped, loose fields of another type read as defaults,
        // metadata kept whole.
        let e = Entry::decode(
            br#"{"metadata":{"mode":420,"x":[1,{"y":null}]},"other":{"a":[]},"blob":{"byteLength":3,"blockMap":true,
                "blockLength":1,"byteOffset":5,"blockOffset":2,"extra":1},"executable":"yes","linkname":null}"#,
        )
        .expect("decode");
        assert_eq!(
            e,
            Entry {
                executable: false,
                linkname: None,
                blob: Some(Blob { block_offset: 2, byte_offset: 5, block_length: 1, byte_length: 3, block_map: true }),
                metadata: Some(serde_json::json!({"mode": 420, "x": [1, {"y": null}]})),
            }
        );
        assert_eq!(
            Entry::decode(b"{}").expect("empty entry"),
            Entry { executable: false, linkname: None, blob: None, metadata: None }
        );
    }

    #[test]
    fn block_maps_round_trip_and_split_at_8192() {
        let blocks: Vec<_> = (0..20_000).map(|i| MapBlock { index: i * 3, byte_length: 65536 + i }).collect();
        let parts = encode_block_map(&blocks);
        assert_eq!(parts.len(), 3);
        assert_eq!(decode_block_map(&parts, 60_000).expect("decode"), blocks);
        assert!(decode_block_map(&[vec![1, 0]], 60_000).is_err());
    }

    /// A crafted map cannot make a stat decode gigabytes, name blocks the core lacks, or sum to
    /// a size that wraps.
    #[test]
    fn crafted_block_maps_are_refused_before_they_cost() {
        let map = |entries: &[(u64, u64)]| {
            let mut e = Encoder::new();
            e.uint(0).uint(entries.len() as u64);
            for &(i, l) in entries {
                e.uint(i).uint(l);
            }
            e.finish()
        };
        // One block listing more chunks than hyperblobs puts in one.
        let big: Vec<(u64, u64)> = vec![(0, 1); MAP_BLOCK_ENTRIES + 1];
        assert!(decode_block_map(&[map(&big)], 10).is_err());
        // A count far past the bytes there.
        let mut lying = Encoder::new();
        lying.uint(0).uint(1 << 40);
        assert!(decode_block_map(&[lying.finish()], 10).is_err());
        assert!(decode_block_map(&[map(&[(10, 1)])], 10).is_err(), "a block the core lacks");
        assert!(decode_block_map(&[map(&[(0, MAX_MAP_CHUNK + 1)])], 10).is_err(), "an oversized chunk");
        // Sizes that sum past 2^64 even though each is small enough: 64 blocks of 8192 × 8 MiB
        // is 2^42, so the wrap needs the per-chunk bound: checked with the largest allowed.
        let ok: Vec<(u64, u64)> = vec![(1, MAX_MAP_CHUNK); MAP_BLOCK_ENTRIES];
        assert_eq!(decode_block_map(&[map(&ok)], 10).expect("at the bounds").len(), MAP_BLOCK_ENTRIES);
    }
}
