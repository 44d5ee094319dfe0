//! The protobuf messages of Hyperbee 2 blocks (reference §7.1): `Header` (block 0), `Node`
//! (every later block) and the `YoloIndex` packed inside a node.
//!
//! Encoding writes fields in tag order and omits absent optional fields, as the JS
//! protocol-buffers encoder does, so equal messages give equal bytes. Decoding skips unknown
//! fields by wire type, refuses missing required fields, and never reads past its input.

use crate::encoding::DecodeError;

/// Block 0 of a bee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub protocol: String,
    pub metadata: Option<Metadata>,
}

/// The optional metadata of a [`Header`] (Hyperdrive stores its blobs key here in older
/// versions; Hyperdrive 13 writes it present but empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub content_feed: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
}

/// One level of a block's index: the keys of one tree node (block seqs) and its children as
/// (seq, offset) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Level {
    pub keys: Vec<u64>,
    pub children: Vec<(u64, u64)>,
}

/// A decoded block ≥ 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBlock {
    pub key: Vec<u8>,
    /// `None` in a deletion block (and never otherwise).
    pub value: Option<Vec<u8>>,
    pub levels: Vec<Level>,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        put_bytes(&mut out, 1, self.protocol.as_bytes());
        if let Some(m) = &self.metadata {
            let mut inner = Vec::new();
            if let Some(c) = &m.content_feed {
                put_bytes(&mut inner, 1, c);
            }
            if let Some(u) = &m.user_data {
                put_bytes(&mut inner, 2, u);
            }
            put_bytes(&mut out, 2, &inner);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut protocol = None;
        let mut metadata = None;
        let mut r = Reader { buf };
        while let Some((tag, field)) = r.field()? {
            match (tag, field) {
                (1, Field::Bytes(b)) => {
                    protocol = Some(String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid("header protocol"))?)
                }
                (2, Field::Bytes(b)) => {
                    let mut m = Metadata::default();
                    let mut r = Reader { buf: b };
                    while let Some((tag, field)) = r.field()? {
                        match (tag, field) {
                            (1, Field::Bytes(b)) => m.content_feed = Some(b.to_vec()),
                            (2, Field::Bytes(b)) => m.user_data = Some(b.to_vec()),
                            _ => {}
                        }
                    }
                    metadata = Some(m);
                }
                _ => {}
            }
        }
        Ok(Header { protocol: protocol.ok_or(DecodeError::Invalid("header without protocol"))?, metadata })
    }
}

impl NodeBlock {
    pub fn encode(&self) -> Vec<u8> {
        let index = encode_index(&self.levels);
        encode_node(&index, &self.key, self.value.as_deref())
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut index = None;
        let mut key = None;
        let mut value = None;
        let mut r = Reader { buf };
        while let Some((tag, field)) = r.field()? {
            match (tag, field) {
                (1, Field::Bytes(b)) => index = Some(b),
                (2, Field::Bytes(b)) => key = Some(b.to_vec()),
                (3, Field::Bytes(b)) => value = Some(b.to_vec()),
                _ => {}
            }
        }
        let index = index.ok_or(DecodeError::Invalid("node without index"))?;
        let key = key.ok_or(DecodeError::Invalid("node without key"))?;
        Ok(NodeBlock { key, value, levels: decode_index(index)? })
    }
}

/// Encodes a node block from its parts (the index already encoded).
pub fn encode_node(index: &[u8], key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(index.len() + key.len() + value.map_or(0, |v| v.len()) + 12);
    put_bytes(&mut out, 1, index);
    put_bytes(&mut out, 2, key);
    if let Some(v) = value {
        put_bytes(&mut out, 3, v);
    }
    out
}

/// Encodes a `YoloIndex`.
pub fn encode_index(levels: &[Level]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut level = Vec::new();
    let mut packed = Vec::new();
    for l in levels {
        level.clear();
        packed.clear();
        for &k in &l.keys {
            put_varint(&mut packed, k);
        }
        if !packed.is_empty() {
            put_bytes(&mut level, 1, &packed);
        }
        packed.clear();
        for &(seq, offset) in &l.children {
            put_varint(&mut packed, seq);
            put_varint(&mut packed, offset);
        }
        if !packed.is_empty() {
            put_bytes(&mut level, 2, &packed);
        }
        put_bytes(&mut out, 1, &level);
    }
    out
}

/// Decodes a `YoloIndex`. Children come in (seq, offset) pairs; an odd count is refused.
pub fn decode_index(buf: &[u8]) -> Result<Vec<Level>, DecodeError> {
    let mut levels = Vec::new();
    let mut r = Reader { buf };
    while let Some((tag, field)) = r.field()? {
        let (1, Field::Bytes(b)) = (tag, field) else { continue };
        let mut level = Level::default();
        let mut children = Vec::new();
        let mut r = Reader { buf: b };
        while let Some((tag, field)) = r.field()? {
            match (tag, field) {
                (1, Field::Bytes(p)) => unpack(p, &mut level.keys)?,
                (1, Field::Varint(v)) => level.keys.push(v),
                (2, Field::Bytes(p)) => unpack(p, &mut children)?,
                (2, Field::Varint(v)) => children.push(v),
                _ => {}
            }
        }
        if children.len() % 2 != 0 {
            return Err(DecodeError::Invalid("odd number of child pointers"));
        }
        level.children = children.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        levels.push(level);
    }
    Ok(levels)
}

fn unpack(mut p: &[u8], out: &mut Vec<u64>) -> Result<(), DecodeError> {
    while !p.is_empty() {
        let (v, n) = varint(p)?;
        out.push(v);
        p = &p[n..];
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((v, i + 1));
        }
    }
    if buf.len() < 10 {
        Err(DecodeError::Truncated("varint"))
    } else {
        Err(DecodeError::Invalid("varint longer than 10 bytes"))
    }
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let (prefix, n) = varint(self.buf)?;
        self.buf = &self.buf[n..];
        let tag = prefix >> 3;
        let field = match prefix & 7 {
            0 => {
                let (v, n) = varint(self.buf)?;
                self.buf = &self.buf[n..];
                Field::Varint(v)
            }
            1 => {
                self.skip(8)?;
                Field::Fixed
            }
            2 => {
                let (len, n) = varint(self.buf)?;
                self.buf = &self.buf[n..];
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated("field"))?;
                if len > self.buf.len() {
                    return Err(DecodeError::Truncated("field"));
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            5 => {
                self.skip(4)?;
                Field::Fixed
            }
            _ => return Err(DecodeError::Invalid("protobuf wire type")),
        };
        Ok(Some((tag, field)))
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated("field"));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}
