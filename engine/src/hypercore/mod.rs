//! A Hypercore 11 log: an append-only, signed merkle log whose bytes match the JavaScript
//! implementation (reference §2–3).
//!
//! A [`Hypercore`] is either writable (it holds the secret key) or a replica that holds only the
//! key and accepts what [`Hypercore::apply_proof`] verifies. Every change — an append batch, a
//! truncation, an applied proof — is one atomic store batch holding the blocks, tree nodes,
//! bitfield pages and the new signed head, so a crash leaves the last committed state.
//!
//! Appends on this node are signed when a signature is first needed (a proof for a peer, a dump,
//! a verify), not at every append: a writer's head may be stored without one and is signed from
//! its roots on demand. Ed25519 is deterministic, so the deferred signature is the same bytes the
//! append would have made (JS signs every append; its store and ours differ only in when).
//!
//! Invariants: every signature the core hands out verifies over its roots; a block is
//! stored only after its leaf is part of a verified tree; blocks live in the store keyed by their
//! leaf hash, so the same bytes in two cores or two versions are stored once.

pub mod bitfield;
pub mod flat;
pub mod manifest;
pub mod proof;
pub(crate) mod stored;
pub mod tree;

use std::sync::{Arc, Mutex, RwLock};

use rayon::prelude::*;

use crate::crypto::{self, CoreKey, DiscoveryKey, Hash, KeyPair};
use crate::encoding::{Decoder, Encoder};
use crate::store::{Batch, Staged, Store, Table};
use crate::{Error, Result};
use bitfield::Bitfield;
pub use manifest::{Auth, Manifest};
pub use proof::{Proof, RangeProof, Request};
use tree::TreeBatch;
pub use tree::{Node, TreeIndex};

/// Below this many bytes a batch's leaves are hashed on the calling thread.
const PARALLEL_HASH_BYTES: usize = 1 << 20;
/// Leaves of a group of appended blocks, with where their bytes were staged if they are new.
type Prepared = Vec<(Node, Option<Staged>)>;

/// The leaves of `blocks`, appended from block `first` on, each with its stored form when the
/// store lacks it. `hashes`: the blocks' leaf hashes if the caller has them; `forms`: their
/// stored forms if the caller worked them out ([`stored::packed`]).
fn encode_group<'b, B: AsRef<[u8]>>(
    store: &dyn Store,
    blocks: &'b [B],
    first: u64,
    hashes: Option<&[Hash]>,
    forms: Option<&'b [Option<Vec<u8>>]>,
) -> Result<Vec<(Node, Option<stored::Encoded<'b>>)>> {
    let computed = if hashes.is_none() { crypto::leaf_hashes(blocks) } else { Vec::new() };
    let mut out = Vec::with_capacity(blocks.len());
    for (k, b) in blocks.iter().enumerate() {
        let hash = match hashes {
            Some(l) => l[k],
            None => computed[k],
        };
        let leaf = Node { index: 2 * (first + k as u64), size: b.as_ref().len() as u64, hash };
        let new = !store.reuse_block(&leaf.hash)?;
        let form = || match forms {
            Some(f) => match &f[k] {
                Some(packed) => stored::Encoded::Packed(packed[..].into()),
                None => stored::Encoded::Raw(b.as_ref()),
            },
            None => stored::encode_parts(b.as_ref()),
        };
        out.push((leaf, new.then(form)));
    }
    Ok(out)
}

/// Hashes (unless `hashes` are given), compresses and writes to the store's block log the
/// blocks the store lacks, as the blocks from index `first` of a core: the leaves and staged
/// bytes a commit then makes part of the core. Nothing refers to staged bytes until a commit
/// does, so this needs no core and may run beside its writer (a file being closed is chunked
/// and staged while the drive takes other writes).
pub(crate) fn stage<'b, B: AsRef<[u8]> + Sync>(
    store: &dyn Store,
    blocks: &'b [B],
    first: u64,
    hashes: Option<&[Hash]>,
    forms: Option<&'b [Option<Vec<u8>>]>,
    past_cache: bool,
) -> Result<Vec<(Node, Option<Staged>)>> {
    if blocks.is_empty() {
        return Ok(Vec::new());
    }
    let total: usize = blocks.iter().map(|b| b.as_ref().len()).sum();
    // Blocks are handled in groups of about STAGE_GROUP_BYTES so each group's new bytes reach
    // the block log in one write.
    let group = (STAGE_GROUP_BYTES / (total / blocks.len()).max(1)).clamp(1, blocks.len());
    let encode = |(g, chunk): (usize, &'b [B])| {
        let from = g * group;
        encode_group(store, chunk, first + from as u64, hashes.map(|h| &h[from..]), forms.map(|f| &f[from..]))
    };
    // Each group's new blocks are written with one call.
    let staged = |encoded: Vec<(Node, Option<stored::Encoded<'_>>)>| -> Result<Prepared> {
        let (leaves, fresh): (Vec<Node>, Vec<Option<stored::Encoded<'_>>>) = encoded.into_iter().unzip();
        let is_new: Vec<bool> = fresh.iter().map(Option::is_some).collect();
        let parts: Vec<[&[u8]; 2]> = fresh.iter().flatten().map(stored::Encoded::parts).collect();
        let staged = if past_cache { store.stage_streamed(&parts) } else { store.stage_blocks(&parts) };
        let mut staged = staged?.into_iter();
        Ok(leaves.into_iter().zip(is_new).map(|(leaf, new)| (leaf, if new { staged.next() } else { None })).collect())
    };
    let groups: Result<Vec<Prepared>> = if past_cache {
        // One direct write from this thread, which waits for the disk while the other
        // threads go on hashing. (Through the page cache, groups written from every core
        // measured 2–3× faster than one large write from one thread.)
        staged(encode((0, blocks))?).map(|p| vec![p])
    } else if total >= PARALLEL_HASH_BYTES && blocks.len() > 1 {
        blocks.par_chunks(group).enumerate().map(|g| staged(encode(g)?)).collect()
    } else {
        blocks.chunks(group).enumerate().map(|g| staged(encode(g)?)).collect()
    };
    Ok(groups?.into_iter().flatten().collect())
}

/// About how many bytes of blocks one thread hashes, compresses and writes to the block log as
/// one group (groups write at once, each with one vectored write).
const STAGE_GROUP_BYTES: usize = 256 << 10;

/// The signed state of a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub fork: u64,
    pub length: u64,
    pub byte_length: u64,
    pub tree_hash: Hash,
    pub signature: Vec<u8>,
    pub roots: Vec<Node>,
}

impl Head {
    fn empty() -> Self {
        Head {
            fork: 0,
            length: 0,
            byte_length: 0,
            tree_hash: tree::tree_hash(&[]),
            signature: Vec::new(),
            roots: vec![],
        }
    }
}

/// What [`Hypercore::apply_proof`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The core's length grew (or changed fork) to this.
    pub upgraded_to: Option<u64>,
    /// A block that was stored.
    pub block: Option<u64>,
    /// The core moved to a new fork; blocks at and after this index were dropped.
    pub truncated_to: Option<u64>,
}

/// A peer's proof verified against a core ([`Hypercore::verify_proof`]), not yet stored: what
/// [`Hypercore::store_verified`] adds to the core.
#[derive(Debug)]
pub struct Verified {
    /// The core's (fork, length) it was verified against.
    base: (u64, u64),
    /// The core's manifest, learned from this proof.
    learned: Option<Auth>,
    nodes: Vec<Node>,
    their_state: Option<SignedState>,
    new_head: Option<Head>,
    reorg: bool,
    /// The block: its index, bytes and leaf hash (hashed once, when the proof was verified).
    block: Option<(u64, Vec<u8>, Hash)>,
    /// The writer signed another history than the stored one: this proof shows it.
    conflict: Option<Conflict>,
    /// Only the manifest and a conflict are to be kept (a check of a peer's history).
    checked_only: bool,
}

impl Verified {
    /// The block it carries, if any.
    pub fn block(&self) -> Option<u64> {
        self.block.as_ref().map(|b| b.0)
    }

    /// The verified bytes of the block it carries, if any.
    pub fn block_bytes(&self) -> Option<&[u8]> {
        self.block.as_ref().map(|b| b.1.as_slice())
    }

    /// Whether it is a block of the current fork and nothing more (no upgrade, no manifest,
    /// no conflict): one of a run [`Hypercore::store_verified_all`] commits together.
    fn is_plain_block(&self) -> bool {
        self.block.is_some()
            && self.new_head.is_none()
            && self.their_state.is_none()
            && !self.reorg
            && self.conflict.is_none()
            && self.learned.is_none()
            && !self.checked_only
    }

    /// Whether it shows that the writer signed two histories.
    pub fn shows_conflict(&self) -> bool {
        self.conflict.is_some()
    }

    /// Keeps only what a check of a peer's history keeps: the manifest and a conflict.
    pub fn checked_only(self) -> Verified {
        Verified { checked_only: true, nodes: Vec::new(), new_head: None, block: None, ..self }
    }
}

/// A Hypercore log in a [`Store`].
#[derive(Debug)]
pub struct Hypercore {
    store: Arc<dyn Store>,
    id: u64,
    key: CoreKey,
    discovery_key: DiscoveryKey,
    auth: Option<Auth>,
    key_pair: Option<KeyPair>,
    head: Head,
    bitfield: Bitfield,
    /// (fork, length) of every truncation, shared with snapshots so they notice.
    truncations: Arc<RwLock<Vec<(u64, u64)>>>,
    durable: bool,
    /// Record a content → index hint for every appended block (see [`Hypercore::find_block`]).
    index_blocks: bool,
    /// The signature of a head committed unsigned (see the module doc), once made; shared with
    /// frozen copies of the same head, so it is made once however many serve it.
    deferred: Arc<std::sync::OnceLock<Vec<u8>>>,
    /// Proof that the writer signed two conflicting histories, once seen (kept in the store);
    /// shared with frozen copies, so the writer learns of one a copy serving peers found.
    conflict: Arc<std::sync::OnceLock<Conflict>>,
    /// A frozen copy ([`Hypercore::frozen_copy`]): reads and serves one state, changes nothing.
    frozen: bool,
}

/// One signed state of a core: what a writer's signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedState {
    pub length: u64,
    pub tree_hash: Hash,
    pub signature: Vec<u8>,
}

/// Two signed states of one writer that cannot both be true (JS hypercore's "conflict"): on
/// the same fork, trees that disagree — the same length with two tree hashes, or a node of the
/// tree both cover that differs. Each verifies against the writer's key: whoever holds the key
/// signed both. Kept in the store for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub fork: u64,
    /// The state this core held.
    pub ours: SignedState,
    /// The state a peer brought.
    pub theirs: SignedState,
    /// A tree index where they differ, if they differ below their roots.
    pub node: Option<u64>,
}

impl Conflict {
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.uint(1).uint(self.fork);
        for s in [&self.ours, &self.theirs] {
            e.uint(s.length).fixed(&s.tree_hash).buffer(&s.signature);
        }
        e.uint(self.node.map_or(0, |n| n + 1));
        e.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Conflict> {
        let e = record_err("conflict");
        let mut d = Decoder::new(bytes);
        d.uint("version").map_err(&e)?;
        let fork = d.uint("fork").map_err(&e)?;
        let mut state = || -> Result<SignedState> {
            Ok(SignedState {
                length: d.uint("length").map_err(&e)?,
                tree_hash: d.take(32, "tree hash").map_err(&e)?.try_into().map_err(|_| Error::CorruptRecord {
                    what: "conflict",
                    source: crate::encoding::DecodeError::Invalid("tree hash"),
                })?,
                signature: d.buffer("signature").map_err(&e)?.to_vec(),
            })
        };
        let ours = state()?;
        let theirs = state()?;
        let node = d.uint("node").map_err(&e)?.checked_sub(1);
        Ok(Conflict { fork, ours, theirs, node })
    }
}

/// The record of a core's [`Conflict`].
fn conflict_key(id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"conflict");
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

static ALLOC: Mutex<()> = Mutex::new(());

fn node_key(id: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The record of an atomic append of core `id` that ended at length `end`.
fn atomic_key(id: u64, end: u64) -> [u8; 22] {
    let mut k = [0u8; 22];
    k[..6].copy_from_slice(b"atomic");
    k[6..14].copy_from_slice(&id.to_be_bytes());
    k[14..].copy_from_slice(&end.to_be_bytes());
    k
}

fn chunk_key(id: u64, leaf: &Hash) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(leaf);
    k
}

fn record_err(what: &'static str) -> impl Fn(crate::encoding::DecodeError) -> Error {
    move |source| Error::CorruptRecord { what, source }
}

impl Hypercore {
    /// Opens the writable core of `key_pair`, creating it if this store has none. `compat`
    /// makes key = public key (Hypercore 10 style); otherwise key = manifest hash.
    pub fn create(store: Arc<dyn Store>, key_pair: KeyPair, compat: bool) -> Result<Self> {
        let auth = if compat {
            Auth::Compat { public_key: key_pair.public_key() }
        } else {
            Auth::Manifest(Manifest::single(key_pair.public_key()))
        };
        Self::create_with_auth(store, key_pair, auth)
    }

    /// Opens the writable core signed by `key_pair` under `manifest` (one signer, that key
    /// pair), creating it if this store has none. Hyperdrive's blobs core is made this way.
    pub fn create_with_manifest(store: Arc<dyn Store>, key_pair: KeyPair, manifest: Manifest) -> Result<Self> {
        if manifest.signers.len() != 1 || manifest.signers[0].public_key != key_pair.public_key() {
            return Err(Error::InvalidRequest("the manifest's one signer must be the key pair".into()));
        }
        Self::create_with_auth(store, key_pair, Auth::Manifest(manifest))
    }

    fn create_with_auth(store: Arc<dyn Store>, key_pair: KeyPair, auth: Auth) -> Result<Self> {
        let key = auth.key();
        if let Some(mut core) = Self::open(store.clone(), &key)? {
            if core.key_pair.is_none() {
                core.key_pair = Some(key_pair);
                core.write_record()?;
            }
            return Ok(core);
        }
        Self::init(store, key, Some(auth), Some(key_pair))
    }

    /// Opens a replica of `key`, creating an empty one if the store has none. The manifest, if
    /// known, must hash to the key (or be the compat manifest of it).
    pub fn open_replica(store: Arc<dyn Store>, key: CoreKey, manifest: Option<Manifest>) -> Result<Self> {
        if let Some(core) = Self::open(store.clone(), &key)? {
            return Ok(core);
        }
        let auth = match manifest {
            Some(m) => Some(auth_for(&key, m)?),
            None => None,
        };
        Self::init(store, key, auth, None)
    }

    fn init(store: Arc<dyn Store>, key: CoreKey, auth: Option<Auth>, key_pair: Option<KeyPair>) -> Result<Self> {
        let _g = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let id = match store.get(Table::Meta, b"next_core_id")? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| Error::CorruptRecord {
                what: "core counter",
                source: crate::encoding::DecodeError::Invalid("length"),
            })?),
            None => 0,
        };
        let core = Hypercore {
            store,
            id,
            key,
            discovery_key: crypto::discovery_key(&key),
            auth,
            key_pair,
            head: Head::empty(),
            bitfield: Bitfield::new(),
            truncations: Arc::default(),
            durable: false,
            index_blocks: false,
            deferred: Arc::default(),
            conflict: Arc::default(),
            frozen: false,
        };
        let mut b = Batch { sync: true, ..Batch::default() };
        b.put(Table::Meta, b"next_core_id".to_vec(), (id + 1).to_le_bytes().to_vec());
        b.put(Table::Cores, key.to_vec(), core.encode_record());
        b.put(Table::Heads, id.to_be_bytes().to_vec(), encode_head(&core.head));
        core.store.write(b)?;
        Ok(core)
    }

    /// Removes the core of `key` from the store, secret key included: its record, head, tree,
    /// bitfield, dedup hints and atomic spans, in one durable batch. Its blocks stay until a
    /// garbage collection finds nothing else holds them. Returns whether the store had it.
    /// Instances of the core still open must not be used for writing afterwards.
    pub fn remove(store: &dyn Store, key: &CoreKey) -> Result<bool> {
        let Some(rec) = store.get(Table::Cores, &key.0)? else {
            return Ok(false);
        };
        let mut d = Decoder::new(&rec);
        let e = record_err("core");
        d.uint("version").map_err(&e)?;
        let id = d.uint("id").map_err(&e)?;
        let mut b = Batch { sync: true, ..Batch::default() };
        b.delete(Table::Cores, key.0.to_vec());
        b.delete(Table::Heads, id.to_be_bytes().to_vec());
        for t in [Table::Nodes, Table::Bitfield] {
            b.delete_range(t, node_key(id, 0).to_vec(), node_key(id + 1, 0).to_vec());
        }
        b.delete_range(Table::Chunks, chunk_key(id, &[0; 32]).to_vec(), chunk_key(id + 1, &[0; 32]).to_vec());
        b.delete_range(Table::Meta, atomic_key(id, 0).to_vec(), atomic_key(id + 1, 0).to_vec());
        b.delete(Table::Meta, conflict_key(id).to_vec());
        store.write(b)?;
        Ok(true)
    }

    /// Opens the core of `key` if this store has it.
    pub fn open(store: Arc<dyn Store>, key: &CoreKey) -> Result<Option<Self>> {
        let Some(rec) = store.get(Table::Cores, &key.0)? else {
            return Ok(None);
        };
        let mut d = Decoder::new(&rec);
        let e = record_err("core");
        let version = d.uint("version").map_err(&e)?;
        if version != 1 {
            return Err(Error::CorruptRecord {
                what: "core",
                source: crate::encoding::DecodeError::Invalid("version"),
            });
        }
        let id = d.uint("id").map_err(&e)?;
        let flags = d.uint("flags").map_err(&e)?;
        let mut auth = None;
        if flags & 1 != 0 {
            auth = Some(Auth::Compat { public_key: key.0 });
        }
        if flags & 2 != 0 {
            auth = Some(Auth::Manifest(Manifest::decode(d.buffer("manifest").map_err(&e)?).map_err(&e)?));
        }
        let key_pair = if flags & 4 != 0 {
            let sk = d.take(64, "secret key").map_err(&e)?;
            Some(KeyPair::from_secret_key(sk).ok_or(Error::CorruptRecord {
                what: "core",
                source: crate::encoding::DecodeError::Invalid("secret key"),
            })?)
        } else {
            None
        };
        let head_bytes = store
            .get(Table::Heads, &id.to_be_bytes())?
            .ok_or(Error::CorruptRecord { what: "head", source: crate::encoding::DecodeError::Truncated("missing") })?;
        let (fork, length, tree_hash, signature) = decode_head(&head_bytes)?;
        let mut roots = Vec::new();
        for index in flat::full_roots(2 * length) {
            let raw = store.get(Table::Nodes, &node_key(id, index))?.ok_or(Error::MissingNode { index })?;
            roots.push(
                Node::decode(index, &raw).ok_or(Error::CorruptRecord {
                    what: "node",
                    source: crate::encoding::DecodeError::Invalid("size"),
                })?,
            );
        }
        if tree::tree_hash(&roots) != tree_hash {
            return Err(Error::Verification(format!(
                "stored roots of core {} do not match its head",
                hex::encode(key)
            )));
        }
        let mut bitfield = Bitfield::new();
        let start = node_key(id, 0);
        let end = node_key(id, u64::MAX);
        for (k, v) in store.scan(Table::Bitfield, &start, &end)? {
            let page = u64::from_be_bytes(k[8..16].try_into().map_err(|_| Error::CorruptRecord {
                what: "bitfield",
                source: crate::encoding::DecodeError::Invalid("key"),
            })?);
            if !bitfield.load_page(page, &v) {
                return Err(Error::CorruptRecord {
                    what: "bitfield",
                    source: crate::encoding::DecodeError::Invalid("page"),
                });
            }
        }
        if signature.is_empty() && length > 0 && key_pair.is_none() {
            return Err(Error::Verification(format!(
                "core {} has an unsigned head and no key to sign it with",
                hex::encode(key)
            )));
        }
        let byte_length = roots.iter().map(|r| r.size).sum();
        let conflict = Arc::new(std::sync::OnceLock::new());
        if let Some(raw) = store.get(Table::Meta, &conflict_key(id))? {
            let _ = conflict.set(Conflict::decode(&raw)?);
        }
        Ok(Some(Hypercore {
            store,
            id,
            key: *key,
            discovery_key: crypto::discovery_key(key),
            auth,
            key_pair,
            head: Head { fork, length, byte_length, tree_hash, signature, roots },
            bitfield,
            truncations: Arc::default(),
            durable: false,
            index_blocks: false,
            deferred: Arc::default(),
            conflict,
            frozen: false,
        }))
    }

    /// The proof that this core's writer signed two conflicting histories, if one was seen.
    pub fn conflict(&self) -> Option<&Conflict> {
        self.conflict.get()
    }

    /// A copy of this core as it is now that only reads: what a published snapshot of a drive
    /// reads and what peers are served from, while this instance goes on changing. It shares
    /// the block store, the truncations (a read of a block a later truncation took fails as a
    /// snapshot's does) and the conflict cell; it signs a deferred head as this one would.
    /// Every change through it fails with [`Error::NotWritable`].
    pub fn frozen_copy(&self) -> Hypercore {
        Hypercore {
            store: self.store.clone(),
            id: self.id,
            key: self.key,
            discovery_key: self.discovery_key,
            auth: self.auth.clone(),
            key_pair: self.key_pair.clone(),
            head: self.head.clone(),
            bitfield: self.bitfield.clone(),
            truncations: self.truncations.clone(),
            durable: self.durable,
            index_blocks: self.index_blocks,
            deferred: self.deferred.clone(),
            conflict: self.conflict.clone(),
            frozen: true,
        }
    }

    /// Whether this is a [`Hypercore::frozen_copy`].
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn changeable(&self) -> Result<()> {
        if self.frozen {
            return Err(Error::NotWritable);
        }
        Ok(())
    }

    /// [`Hypercore::conflict`] as the store has it now: another instance of this core (the
    /// network's replica of it) may have found one since this one was opened.
    pub fn stored_conflict(&self) -> Result<Option<Conflict>> {
        if let Some(c) = self.conflict.get() {
            return Ok(Some(c.clone()));
        }
        match self.store.get(Table::Meta, &conflict_key(self.id))? {
            Some(raw) => Ok(Some(Conflict::decode(&raw)?)),
            None => Ok(None),
        }
    }

    fn encode_record(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        let mut flags = 0u64;
        if matches!(self.auth, Some(Auth::Compat { .. })) {
            flags |= 1;
        }
        if matches!(self.auth, Some(Auth::Manifest(_))) {
            flags |= 2;
        }
        if self.key_pair.is_some() {
            flags |= 4;
        }
        e.uint(1).uint(self.id).uint(flags);
        if let Some(Auth::Manifest(m)) = &self.auth {
            e.buffer(&m.encode());
        }
        if let Some(kp) = &self.key_pair {
            e.fixed(&kp.secret_key());
        }
        e.finish()
    }

    fn write_record(&self) -> Result<()> {
        let mut b = Batch { sync: true, ..Batch::default() };
        b.put(Table::Cores, self.key.to_vec(), self.encode_record());
        self.store.write(b)
    }

    /// Make every later change durable (synced) before the call that made it returns.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Keep, with every later append, a hint from each block's content (its merkle leaf hash) to
    /// its index, so [`Hypercore::find_block`] can find it. Hints are verified when used, so a
    /// truncation or a crash can only make one useless, never wrong.
    pub fn set_index_blocks(&mut self, on: bool) {
        self.index_blocks = on;
    }

    /// The index of a local block of this core whose merkle leaf hash is `leaf`, if an indexed
    /// append recorded one and it is still part of the core.
    pub fn find_block(&self, leaf: &Hash) -> Result<Option<u64>> {
        let Some(raw) = self.store.get(Table::Chunks, &chunk_key(self.id, leaf))? else { return Ok(None) };
        let Ok(bytes) = <[u8; 8]>::try_from(raw.as_slice()) else { return Ok(None) };
        let index = u64::from_be_bytes(bytes);
        if index >= self.head.length || !self.bitfield.get(index) {
            return Ok(None);
        }
        Ok(self.leaf(index)?.filter(|n| n.hash == *leaf).map(|_| index))
    }

    pub fn key(&self) -> &CoreKey {
        &self.key
    }
    pub fn discovery_key(&self) -> &DiscoveryKey {
        &self.discovery_key
    }
    pub fn length(&self) -> u64 {
        self.head.length
    }
    pub fn byte_length(&self) -> u64 {
        self.head.byte_length
    }
    pub fn fork(&self) -> u64 {
        self.head.fork
    }
    pub fn head(&self) -> &Head {
        &self.head
    }
    pub fn tree_hash(&self) -> Hash {
        self.head.tree_hash
    }
    /// The head's signature (empty for an empty core never truncated). A head appended on this
    /// node is signed here the first time it is asked for.
    pub fn signature(&self) -> &[u8] {
        if !self.head.signature.is_empty() || self.head.length == 0 {
            return &self.head.signature;
        }
        match (&self.key_pair, &self.auth) {
            (Some(kp), Some(auth)) => {
                self.deferred.get_or_init(|| auth.sign(kp, &self.head.tree_hash, self.head.length, self.head.fork))
            }
            // Only a writer commits an unsigned head, and opening one without its key fails.
            _ => &self.head.signature,
        }
    }
    pub fn roots(&self) -> &[Node] {
        &self.head.roots
    }
    pub fn auth(&self) -> Option<&Auth> {
        self.auth.as_ref()
    }
    pub fn manifest(&self) -> Option<&Manifest> {
        self.auth.as_ref().and_then(Auth::manifest)
    }
    pub fn is_compat(&self) -> bool {
        matches!(self.auth, Some(Auth::Compat { .. }))
    }
    pub fn key_pair(&self) -> Option<&KeyPair> {
        self.key_pair.as_ref()
    }
    pub fn writable(&self) -> bool {
        self.key_pair.is_some() && self.auth.is_some()
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether block `index` is stored locally.
    pub fn has(&self, index: u64) -> bool {
        index < self.head.length && self.bitfield.get(index)
    }

    /// The first block in `[from, end)` (within the length) that is stored locally (`stored`) or
    /// not: in time that follows the blocks held, not the length, which a writer may sign as
    /// anything up to 2^55.
    pub fn next_local(&self, from: u64, end: u64, stored: bool) -> Option<u64> {
        self.bitfield.next(from, end.min(self.head.length), stored)
    }

    /// Bytes of the blocks stored locally (their length as blocks, before compression).
    pub fn local_bytes(&self) -> Result<u64> {
        let (mut total, mut from) = (0u64, 0u64);
        while let Some(start) = self.next_local(from, self.head.length, true) {
            let end = self.next_local(start, self.head.length, false).unwrap_or(self.head.length);
            let end_byte = if end == self.head.length { self.head.byte_length } else { self.byte_offset(end)? };
            total += end_byte.saturating_sub(self.byte_offset(start)?);
            from = end;
        }
        Ok(total)
    }

    /// Bytes the blocks stored locally take in the store (compressed where they were), each
    /// distinct block once; a block shared with another core counts here too.
    pub fn local_stored_bytes(&self) -> Result<u64> {
        let mut total = 0u64;
        for leaf in self.local_leaves()? {
            total += self.store.stored_len(&leaf)?.unwrap_or(0) as u64;
        }
        Ok(total)
    }

    /// The keys (leaf hashes) of the blocks stored locally, each once.
    pub fn local_leaves(&self) -> Result<std::collections::HashSet<Hash>> {
        let mut seen = std::collections::HashSet::new();
        let mut next = self.next_local(0, self.head.length, true);
        while let Some(i) = next {
            if let Some(leaf) = self.leaf(i)? {
                seen.insert(leaf.hash);
            }
            next = self.next_local(i + 1, self.head.length, true);
        }
        Ok(seen)
    }

    /// Number of blocks stored locally.
    pub fn local_blocks(&self) -> u64 {
        self.bitfield.count(self.head.length)
    }

    /// A tree node, if stored locally.
    pub fn node(&self, index: TreeIndex) -> Result<Option<Node>> {
        let TreeIndex(index) = index;
        match self.store.get(Table::Nodes, &node_key(self.id, index))? {
            None => Ok(None),
            Some(raw) => Node::decode(index, &raw)
                .map(Some)
                .ok_or(Error::CorruptRecord { what: "node", source: crate::encoding::DecodeError::Invalid("size") }),
        }
    }

    /// The leaf node of block `block`, if stored.
    pub fn leaf(&self, block: u64) -> Result<Option<Node>> {
        self.node(TreeIndex::leaf(block))
    }

    /// Block `index`. A block of this core's length that is not local is
    /// [`Error::MissingBlock`]; the caller fetches it from a peer.
    pub fn get(&self, index: u64) -> Result<Vec<u8>> {
        self.readable(index)?;
        read_block(&*self.store, self.id, index)
    }

    /// A hint that the local blocks among `indexes` are about to be read: the store may start
    /// loading them (see [`Store::will_read`]).
    pub fn will_read(&self, indexes: impl IntoIterator<Item = u64>) {
        let hashes: Vec<Hash> = indexes
            .into_iter()
            .filter(|&i| self.has(i))
            .filter_map(|i| read_leaf(&*self.store, self.id, i).ok())
            .map(|leaf| leaf.hash)
            .collect();
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        self.store.will_read(&keys);
    }

    /// Block `index` read straight into `out`, which must be exactly its size (a reader's own
    /// buffer: no copy in between for the blocks stored raw).
    pub fn get_into(&self, index: u64, out: &mut [u8]) -> Result<()> {
        self.readable(index)?;
        read_block_into(&*self.store, self.id, index, out)
    }

    /// Bytes `from..from + out.len()` of block `index`, which must hold `size` bytes.
    pub fn get_part(&self, index: u64, size: u64, from: usize, out: &mut [u8]) -> Result<()> {
        self.readable(index)?;
        read_block_part(&*self.store, self.id, index, size, from, out)
    }

    /// Whether block `index` can be read here: within the core and local.
    fn readable(&self, index: u64) -> Result<()> {
        if index >= self.head.length {
            return Err(Error::OutOfBounds(format!("block {index} of a core of length {}", self.head.length)));
        }
        if self.frozen && stale(&self.truncations, self.head.fork, index) {
            return Err(Error::StaleSnapshot { index });
        }
        if !self.bitfield.get(index) {
            return Err(Error::MissingBlock { index });
        }
        Ok(())
    }

    /// Appends one block; returns the new length.
    pub fn append(&mut self, block: &[u8]) -> Result<u64> {
        self.append_batch(&[block])
    }

    /// Appends blocks with one signature over the new tree; returns the new length.
    pub fn append_batch<B: AsRef<[u8]> + Sync>(&mut self, blocks: &[B]) -> Result<u64> {
        self.append_inner(blocks, None, false, None, false)
    }

    /// Appends blocks that only mean something together (a Hyperbee batch): the lengths inside
    /// the append are recorded as no version of their own (see [`Hypercore::atomic_span`]).
    pub fn append_atomic<B: AsRef<[u8]> + Sync>(&mut self, blocks: &[B]) -> Result<u64> {
        self.append_inner(blocks, None, blocks.len() > 1, None, false)
    }

    /// The atomic append `(start, end)` that `length` falls strictly inside, if any (only
    /// appends made on this node are known).
    pub fn atomic_span(&self, length: u64) -> Result<Option<(u64, u64)>> {
        let from = atomic_key(self.id, length.saturating_add(1));
        let to = atomic_key(self.id, u64::MAX);
        let Some((k, v)) = self.store.first(Table::Meta, &from, &to)? else { return Ok(None) };
        let end = k.get(k.len().saturating_sub(8)..).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        let start = <[u8; 8]>::try_from(v.as_slice()).ok().map(u64::from_be_bytes);
        match (start, end) {
            (Some(s), Some(e)) => Ok((s < length && length < e).then_some((s, e))),
            _ => Err(Error::Storage(format!("a damaged atomic-append record of core {}", hex::encode(self.key)))),
        }
    }

    /// Every atomic append of this core as `(start, end)`, in order.
    pub fn atomic_spans(&self) -> Result<Vec<(u64, u64)>> {
        let rows = self.store.scan(Table::Meta, &atomic_key(self.id, 0), &atomic_key(self.id, u64::MAX))?;
        rows.into_iter()
            .map(|(k, v)| {
                let end = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                let start = <[u8; 8]>::try_from(v.as_slice()).ok().map(u64::from_be_bytes);
                start.zip(end).ok_or_else(|| Error::Storage("a damaged atomic-append record".into()))
            })
            .collect()
    }

    /// [`Hypercore::append_batch`] for blocks whose merkle leaf hashes the caller already
    /// computed (`leaves[i]` = `crypto::leaf_hash(blocks[i])`), so they are not hashed twice.
    ///
    /// `forms`: the blocks' stored forms, when the caller worked them out on every core beside
    /// the hashing ([`stored::packed`]: the compressed bytes, or `None` for raw), as a large
    /// file's writer does. With `past_cache` (an import's large file), the new blocks go through
    /// [`Store::stage_streamed`] in one write from this thread, which waits for the disk while
    /// other threads go on hashing.
    pub(crate) fn append_batch_hashed<B: AsRef<[u8]> + Sync>(
        &mut self,
        blocks: &[B],
        leaves: &[Hash],
        forms: Option<&[Option<Vec<u8>>]>,
        past_cache: bool,
    ) -> Result<u64> {
        if leaves.len() != blocks.len() || forms.is_some_and(|f| f.len() != blocks.len()) {
            return Err(Error::InvalidRequest("one leaf hash and stored form per block".into()));
        }
        self.append_inner(blocks, Some(leaves), false, forms, past_cache)
    }

    fn append_inner<'b, B: AsRef<[u8]> + Sync>(
        &mut self,
        blocks: &'b [B],
        hashes: Option<&[Hash]>,
        atomic: bool,
        forms: Option<&'b [Option<Vec<u8>>]>,
        past_cache: bool,
    ) -> Result<u64> {
        self.check_appendable()?;
        if blocks.is_empty() {
            return Ok(self.head.length);
        }
        let start = self.head.length;
        // Blocks found stored are referenced from here to the commit (see `crate::gc`).
        let _pin = self.store.pin();
        let prepared = stage(&*self.store, blocks, start, hashes, forms, past_cache)?;
        self.commit_staged(start, prepared, atomic)
    }

    /// Appends blocks whose bytes [`stage`] already wrote to the block log (the hashing,
    /// compression and writing done beforehand, without the core): what is left is the tree and
    /// the commit. Each block is its leaf hash, its length and its staged bytes (`None` when the
    /// store held the bytes already).
    pub(crate) fn append_staged(&mut self, blocks: &[(Hash, u64, Option<Staged>)]) -> Result<u64> {
        self.check_appendable()?;
        let start = self.head.length;
        let prepared = blocks
            .iter()
            .enumerate()
            .map(|(k, &(hash, size, staged))| (Node { index: 2 * (start + k as u64), size, hash }, staged))
            .collect();
        self.commit_staged(start, prepared, false)
    }

    /// Refuses appends to a core this node may not extend.
    fn check_appendable(&self) -> Result<()> {
        if !self.writable() || self.frozen {
            return Err(Error::NotWritable);
        }
        // The key signed another history elsewhere: writing on would make a third.
        if let Some(c) = self.conflict.get() {
            if c.fork == self.head.fork {
                return Err(Error::Equivocation { core: hex::encode(self.key), fork: c.fork });
            }
        }
        Ok(())
    }

    /// Commits staged blocks as the next ones from `start` (the core's length): their tree
    /// nodes, the dedup hints, the staged bytes and the new head, in one batch.
    fn commit_staged(&mut self, start: u64, prepared: Vec<(Node, Option<Staged>)>, atomic: bool) -> Result<u64> {
        if prepared.is_empty() {
            return Ok(self.head.length);
        }
        let mut tb = TreeBatch::new(self.head.roots.clone(), self.head.fork);
        for (leaf, _) in &prepared {
            tb.append_leaf(*leaf);
        }
        let tree_hash = tb.hash();
        // Signed when first needed (see the module doc).
        let signature = Vec::new();

        let mut b = Batch { sync: self.durable, ..Batch::default() };
        if atomic {
            b.put(Table::Meta, atomic_key(self.id, tb.length).to_vec(), start.to_be_bytes().to_vec());
        }
        if self.index_blocks {
            // In key order, as the tree nodes are (see `commit`).
            let mut rows: Vec<_> =
                prepared.iter().map(|(leaf, _)| (chunk_key(self.id, &leaf.hash), leaf.index / 2)).collect();
            rows.sort_by_key(|r| r.0);
            for (key, block) in rows {
                b.put(Table::Chunks, key.to_vec(), block.to_be_bytes().to_vec());
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(prepared.len());
        for (leaf, staged) in prepared {
            if let Some(staged) = staged.filter(|_| seen.insert(leaf.hash)) {
                b.put_staged(leaf.hash.to_vec(), staged);
            }
        }
        let new_head = Head {
            fork: tb.fork,
            length: tb.length,
            byte_length: tb.byte_length,
            tree_hash,
            signature,
            roots: tb.roots.clone(),
        };
        self.commit(b, &tb.nodes, new_head, &[(start, tb.length)], None)?;
        Ok(self.head.length)
    }

    /// Writes nodes, bitfield changes and the head in `b`, then adopts the new head.
    fn commit(
        &mut self,
        mut b: Batch,
        nodes: &[Node],
        head: Head,
        present: &[(u64, u64)],
        truncate_from: Option<u64>,
    ) -> Result<()> {
        let touched_start = truncate_from.into_iter().chain(present.iter().map(|p| p.0)).min().unwrap_or(0);
        let touched_end =
            truncate_from.map(|f| self.head.length.max(f)).into_iter().chain(present.iter().map(|p| p.1)).max();
        let mut bitfield = self.bitfield.subset(touched_start, touched_end.unwrap_or(0));
        if let Some(from) = truncate_from {
            self.delete_tree_from(&mut b, from);
            // Atomic appends that end after the new length are gone (or cut short) with it.
            b.delete_range(
                Table::Meta,
                atomic_key(self.id, from.saturating_add(1)).to_vec(),
                atomic_key(self.id, u64::MAX).to_vec(),
            );
            bitfield.set_range(from, self.head.length.max(from), false);
        }
        // In key order: the memtable's skip list then inserts each next to the last, where the
        // tree's own order (leaf, parent, leaf, grandparent...) made it search for most.
        let mut sorted: Vec<&Node> = nodes.iter().collect();
        sorted.sort_unstable_by_key(|n| n.index);
        for n in sorted {
            b.put(Table::Nodes, node_key(self.id, n.index).to_vec(), n.encode().to_vec());
        }
        for &(s, e) in present {
            bitfield.set_range(s, e, true);
        }
        for (page, bytes) in bitfield.take_dirty() {
            b.put(Table::Bitfield, node_key(self.id, page).to_vec(), bytes);
        }
        b.put(Table::Heads, self.id.to_be_bytes().to_vec(), encode_head(&head));
        self.store.write(b)?;
        self.bitfield.merge(bitfield);
        self.head = head;
        self.deferred = Arc::default();
        Ok(())
    }

    /// Deletes every stored node of the tree at or after block `from` (and the parents that
    /// span it).
    fn delete_tree_from(&self, b: &mut Batch, from: u64) {
        let head = 2 * from;
        b.delete_range(Table::Nodes, node_key(self.id, head).to_vec(), node_key(self.id, u64::MAX).to_vec());
        if from > 0 {
            let mut it = flat::Iter::new(head - 2);
            loop {
                if it.contains(head) && it.index < head {
                    b.delete(Table::Nodes, node_key(self.id, it.index).to_vec());
                }
                if it.offset == 0 {
                    break;
                }
                it.parent();
            }
        }
    }

    /// Truncates to `length` blocks on a new fork (fork + 1) and signs the result.
    pub fn truncate(&mut self, length: u64) -> Result<()> {
        self.truncate_to_fork(length, self.head.fork + 1)
    }

    /// Truncates to `length` blocks on `fork`, which must be greater than the current fork.
    pub fn truncate_to_fork(&mut self, length: u64, fork: u64) -> Result<()> {
        self.changeable()?;
        let (Some(kp), Some(auth)) = (&self.key_pair, &self.auth) else {
            return Err(Error::NotWritable);
        };
        if length > self.head.length {
            return Err(Error::OutOfBounds(format!("truncate to {length} beyond length {}", self.head.length)));
        }
        if fork <= self.head.fork {
            return Err(Error::InvalidRequest(format!("fork {fork} is not after {}", self.head.fork)));
        }
        let mut roots = Vec::new();
        for index in flat::full_roots(2 * length) {
            roots.push(self.node(TreeIndex(index))?.ok_or(Error::MissingNode { index })?);
        }
        let tree_hash = tree::tree_hash(&roots);
        let signature = auth.sign(kp, &tree_hash, length, fork);
        let head = Head {
            fork,
            length,
            byte_length: roots.iter().map(|r| r.size).sum(),
            tree_hash,
            signature,
            roots: roots.clone(),
        };
        // The new roots are re-written because deleting the spanning parents may remove none
        // of them, but must never remove one.
        self.commit(Batch { sync: self.durable, ..Batch::default() }, &roots, head, &[], Some(length))?;
        self.truncations.write().unwrap_or_else(|e| e.into_inner()).push((fork, length));
        Ok(())
    }

    /// Re-reads what another instance of this core on the same store committed — the signed
    /// head, the manifest, which blocks are local — as when the network layer applies proofs
    /// to its own instance of a replica. Returns whether anything changed.
    pub fn refresh(&mut self) -> Result<bool> {
        self.changeable()?;
        let Some(fresh) = Hypercore::open(self.store.clone(), &self.key)? else { return Ok(false) };
        let end = fresh.head.length.max(self.head.length);
        let changed = fresh.head != self.head || fresh.bitfield.count(end) != self.bitfield.count(end);
        if fresh.head.fork != self.head.fork {
            // Snapshots of the old fork must notice: everything past the shorter length may be
            // gone.
            let at = fresh.head.length.min(self.head.length);
            self.truncations.write().unwrap_or_else(|e| e.into_inner()).push((fresh.head.fork, at));
        }
        self.head = fresh.head;
        self.bitfield = fresh.bitfield;
        if self.auth.is_none() {
            self.auth = fresh.auth;
        }
        if let (None, Some(c)) = (self.conflict.get(), fresh.conflict.get()) {
            let _ = self.conflict.set(c.clone());
        }
        Ok(changed)
    }

    /// A read-only view of the core as it is now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            store: self.store.clone(),
            id: self.id,
            key: self.key,
            length: self.head.length,
            byte_length: self.head.byte_length,
            fork: self.head.fork,
            bitfield: self.bitfield.clone(),
            truncations: self.truncations.clone(),
        }
    }

    /// A read-only view of the first `length` blocks.
    pub fn checkout(&self, length: u64) -> Result<Snapshot> {
        if length > self.head.length {
            return Err(Error::OutOfBounds(format!("checkout {length} beyond length {}", self.head.length)));
        }
        let mut s = self.snapshot();
        s.length = length;
        // The byte length at `length` is the size of that tree's roots.
        s.byte_length = 0;
        for index in flat::full_roots(2 * length) {
            s.byte_length += self.node(TreeIndex(index))?.ok_or(Error::MissingNode { index })?.size;
        }
        Ok(s)
    }

    /// Byte offset of block `index`.
    pub fn byte_offset(&self, index: u64) -> Result<u64> {
        proof::byte_offset(self, &self.head.roots, 2 * index)
    }

    /// The block holding byte `bytes` and the offset inside it.
    pub fn seek(&self, bytes: u64) -> Result<(u64, u64)> {
        if bytes >= self.head.byte_length {
            return Err(Error::OutOfBounds(format!("byte {bytes} of {}", self.head.byte_length)));
        }
        let mut rel = bytes;
        for root in &self.head.roots {
            if rel >= root.size {
                rel -= root.size;
                continue;
            }
            let mut it = flat::Iter::new(root.index);
            while it.index & 1 == 1 {
                let left = it.left_child();
                let l = self.node(TreeIndex(left))?.ok_or(Error::MissingNode { index: left })?;
                if rel >= l.size {
                    rel -= l.size;
                    it.sibling();
                }
            }
            return Ok((it.index / 2, rel));
        }
        Err(Error::OutOfBounds(format!("byte {bytes}")))
    }

    /// How many ancestors of tree index `index`, starting with itself, are not stored here: the
    /// `nodes` a replica puts in a request.
    pub fn missing_nodes(&self, index: u64) -> Result<u64> {
        let head = 2 * self.head.length;
        let mut it = flat::Iter::new(index);
        let mut n = 0;
        while !it.contains(head) && self.node(TreeIndex(it.index))?.is_none() {
            n += 1;
            it.parent();
        }
        Ok(n)
    }

    /// The request a replica sends for block `index` to a peer whose signed length is
    /// `remote_length`: the proof levels it lacks, an upgrade when the peer is ahead, and the
    /// manifest while it has none.
    pub fn block_request(&self, index: u64, remote_length: u64) -> Result<Request> {
        let nodes = if index < self.head.length { self.missing_nodes(2 * index)? } else { 0 };
        let upgrade = (remote_length > self.head.length)
            .then(|| proof::RequestUpgrade { start: self.head.length, length: remote_length - self.head.length });
        Ok(Request {
            fork: self.head.fork,
            block: Some(proof::RequestIndexed { index, nodes }),
            upgrade,
            manifest: self.auth.is_none(),
            ..Request::default()
        })
    }

    /// The request that brings this (sparse) replica the tree nodes [`Hypercore::seek`] lacks
    /// to find byte `bytes`; `None` when it can seek already. Asks, as JS does, for the hash of
    /// the first block under the deepest node it has on the way down, with a seek: the peer
    /// replaces the siblings on that path that hold the byte by the path down to it. A byte at a
    /// node boundary may take a second round.
    pub fn seek_request(&self, bytes: u64) -> Result<Option<Request>> {
        let missing = match self.seek(bytes) {
            Ok(_) => return Ok(None),
            Err(Error::MissingNode { index }) => index,
            Err(e) => return Err(e),
        };
        // The walk lacked the left child of the node it stood on.
        let leaf = flat::left_span(flat::parent(missing));
        Ok(Some(Request {
            fork: self.head.fork,
            hash: Some(proof::RequestIndexed { index: leaf, nodes: self.missing_nodes(leaf)? }),
            seek: Some(proof::RequestSeek { bytes, padding: 0 }),
            manifest: self.auth.is_none(),
            ..Request::default()
        }))
    }

    /// Answers a request from the local tree, with the block's bytes when one is asked for.
    pub fn proof(&self, req: &Request) -> Result<Proof> {
        let mut p = proof::generate(self, &self.head.roots, self.head.length, self.head.fork, self.signature(), req)?;
        if let Some(b) = &mut p.block {
            b.value = self.get(b.index)?;
        }
        if req.manifest {
            p.manifest = self.manifest().map(Manifest::encode);
        }
        Ok(p)
    }

    /// Answers a hyperfs peer's seek-and-block request: the block holding byte `bytes`, with
    /// its path up to a root of this tree as it was at `length` blocks (the asker's length on
    /// this fork), so it verifies against the asker's roots with no upgrade. Block offsets do not
    /// change as a core grows, so the seek at today's length finds the same block. Fails where
    /// this core cannot answer: shorter than `length`, the byte past it, or the block not here.
    pub fn seek_block_proof(&self, bytes: u64, length: u64) -> Result<Proof> {
        if length == 0 || length > self.head.length {
            return Err(Error::OutOfBounds(format!("a seek at length {length} of {}", self.head.length)));
        }
        let (index, _) = self.seek(bytes)?;
        if index >= length {
            return Err(Error::OutOfBounds(format!("byte {bytes} is past block {length}")));
        }
        let full = flat::full_roots(2 * length);
        let roots = full
            .iter()
            .map(|&i| self.node(TreeIndex(i))?.ok_or(Error::MissingNode { index: i }))
            .collect::<Result<Vec<_>>>()?;
        // The whole path: as many levels as lie between the block and its root.
        let leaf = 2 * index;
        let root = full.iter().find(|&&r| flat::left_span(r) <= leaf && leaf <= flat::right_span(r));
        let nodes = u64::from(root.map_or(0, |&r| flat::depth(r)));
        let req =
            Request { fork: self.head.fork, block: Some(proof::RequestIndexed { index, nodes }), ..Request::default() };
        let mut p = proof::generate(self, &roots, length, self.head.fork, &[], &req)?;
        if let Some(b) = &mut p.block {
            b.value = self.get(b.index)?;
        }
        Ok(p)
    }

    /// Answers a hyperfs peer's request for blocks `start..start + count`, proven against its
    /// tree at `length` blocks (the asker's length on this fork; see [`proof::range_nodes`]).
    /// Stops after the block that brings the bytes to `max_bytes`, or before the first block
    /// not here: the asker asks again for the rest. Fails where nothing can be sent.
    pub fn range_proof(&self, start: u64, count: u64, length: u64, max_bytes: u64) -> Result<RangeProof> {
        if length == 0 || length > self.head.length || count == 0 || start >= length {
            return Err(Error::OutOfBounds(format!(
                "blocks {start}+{count} at length {length} of {}",
                self.head.length
            )));
        }
        let end = start.saturating_add(count).min(length);
        let (mut blocks, mut bytes) = (Vec::new(), 0u64);
        for index in start..end {
            if bytes >= max_bytes {
                break;
            }
            match self.get(index) {
                Ok(b) => {
                    bytes += b.len() as u64;
                    blocks.push(b);
                }
                Err(Error::MissingBlock { .. }) if !blocks.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        let end = start + blocks.len() as u64;
        let nodes = proof::range_nodes(length, start, end)
            .into_iter()
            .map(|i| self.node(TreeIndex(i))?.ok_or(Error::MissingNode { index: i }))
            .collect::<Result<Vec<_>>>()?;
        Ok(RangeProof { fork: self.head.fork, length, start, blocks, nodes, hashed: Vec::new() })
    }

    /// Verifies a peer's [`RangeProof`] against this core, reading only: the blocks' leaves
    /// (hashed on the other cores when there are many bytes and cores) and the nodes given fold into the
    /// roots of the tree at the proof's length, which must equal those this core holds. One
    /// [`Verified`] a block, in order, for [`Hypercore::store_verified_all`] to store in one
    /// commit. A core that moved to another fork since the request refuses it
    /// ([`Error::StaleSnapshot`]); one that lacks a root to check against says which
    /// ([`Error::MissingNode`]): neither is the peer's fault.
    pub fn verify_range(&self, p: RangeProof) -> Result<Vec<Verified>> {
        if let Some(c) = self.conflict.get() {
            if p.fork <= c.fork {
                return Err(Error::Equivocation { core: hex::encode(self.key), fork: c.fork });
            }
        }
        if p.fork != self.head.fork || p.length > self.head.length {
            return Err(Error::StaleSnapshot { index: p.start });
        }
        let mut p = p;
        // Leaves hashed on arrival are the same hashes of the same bytes: this node computed
        // them ([`RangeProof::hash_leaves`]); a count or start that does not fit is hashed anew.
        let fits = p.hashed.len() == p.blocks.len() && !matches!(p.hashed.first(), Some(l) if l.index != 2 * p.start);
        if !fits {
            p.hash_leaves();
        }
        let leaves = std::mem::take(&mut p.hashed);
        let mut met = Vec::with_capacity(2 * leaves.len() + 2 * 64);
        let roots = proof::fold_range(p.length, p.start, &leaves, &p.nodes, &mut met)?;
        for r in roots {
            let trusted = match p.length == self.head.length {
                true => self.head.roots.iter().find(|t| t.index == r.index).copied(),
                false => self.node(TreeIndex(r.index))?,
            };
            match trusted {
                None => return Err(Error::MissingNode { index: r.index }),
                Some(t) if t.hash != r.hash || t.size != r.size => {
                    return Err(Error::Verification(format!("node {} does not match the signed tree", r.index)));
                }
                Some(_) => {}
            }
        }
        let base = (self.head.fork, self.head.length);
        let mut nodes = Some(met);
        Ok(p.blocks
            .into_iter()
            .zip(leaves)
            .map(|(value, leaf)| Verified {
                base,
                learned: None,
                // The nodes go with the first block: the run is stored in one commit.
                nodes: nodes.take().unwrap_or_default(),
                their_state: None,
                new_head: None,
                reorg: false,
                block: Some((leaf.index / 2, value, leaf.hash)),
                conflict: None,
                checked_only: false,
            })
            .collect())
    }

    /// Verifies a proof received from a peer and stores what it proves: new signed length,
    /// nodes and the block. Nothing is stored from a proof that does not verify.
    pub fn apply_proof(&mut self, p: &Proof) -> Result<Applied> {
        self.changeable()?;
        let verified = self.verify_proof(p.clone())?;
        self.store_verified(verified)
    }

    /// Verifies a proof of a peer's tree against the stored one without taking anything of
    /// it: [`Error::Equivocation`] (the proof kept) where the two disagree, `Ok` where they
    /// agree. How a replica checks a peer whose upgrade from our length did not verify.
    pub fn check_proof(&mut self, p: &Proof) -> Result<()> {
        let verified = self.verify_proof(p.clone())?.checked_only();
        self.store_verified(verified).map(drop)
    }

    /// Verifies a proof received from a peer against this core, reading only: what storing it
    /// would add ([`Hypercore::store_verified`], by the core's owner), or why it is refused.
    /// The replication session calls this; its driver stores the result.
    pub fn verify_proof(&self, p: Proof) -> Result<Verified> {
        if let Some(c) = self.conflict.get() {
            if p.fork <= c.fork {
                return Err(Error::Equivocation { core: hex::encode(self.key), fork: c.fork });
            }
        }
        if p.fork < self.head.fork {
            return Err(Error::Verification(format!("proof for old fork {} (we are on {})", p.fork, self.head.fork)));
        }
        let reorg = p.fork != self.head.fork;
        if reorg && p.upgrade.as_ref().is_none_or(|u| u.start != 0) {
            return Err(Error::Verification("a proof for a new fork must upgrade from length 0".into()));
        }
        let mut auth = self.auth.clone();
        if let Some(m) = &p.manifest {
            let raw_hash = crypto::hash(&[crypto::caps::manifest(), m]);
            let m = Manifest::decode(m).map_err(|source| Error::Decode { what: "manifest", source })?;
            // The key commits to the bytes received, not to what a lenient decoder made of them.
            if raw_hash != self.key.0 && !m.is_compat_for(&self.key) {
                return Err(Error::Verification("manifest does not match the core key".into()));
            }
            let a = auth_for(&self.key, m)?;
            if auth.is_none() {
                auth = Some(a);
            }
        }

        let mut nodes = Vec::new();
        let mut unverified = proof::verify_tree(&p, &mut nodes)?;
        let mut new_head = None;
        let mut their_state = None;
        if let Some(up) = &p.upgrade {
            let start_roots = if reorg {
                Vec::new()
            } else {
                let mut r = Vec::new();
                for index in flat::full_roots(2 * up.start) {
                    r.push(self.node(TreeIndex(index))?.ok_or(Error::MissingNode { index })?);
                }
                r
            };
            let mut tb = TreeBatch::new(start_roots, p.fork);
            if proof::verify_upgrade(&p, unverified, &mut tb)? {
                unverified = None;
            }
            let th = tb.hash();
            let auth_ref = match &auth {
                Some(a) => a,
                None => {
                    // A core without a known manifest may be a compat core: key = public key.
                    let compat = Auth::Compat { public_key: self.key.0 };
                    if !compat.verify(&up.signature, &th, tb.length, tb.fork) {
                        return Err(Error::Verification("no manifest to verify the upgrade with".into()));
                    }
                    auth = Some(compat);
                    auth.as_ref().expect("just set")
                }
            };
            if !auth_ref.verify(&up.signature, &th, tb.length, tb.fork) {
                return Err(Error::Verification(format!("bad signature for length {} fork {}", tb.length, tb.fork)));
            }
            nodes.extend(tb.nodes.iter().copied());
            their_state = Some(SignedState { length: tb.length, tree_hash: th, signature: up.signature.clone() });
            if reorg || tb.length > self.head.length {
                new_head = Some(Head {
                    fork: tb.fork,
                    length: tb.length,
                    byte_length: tb.byte_length,
                    tree_hash: th,
                    signature: up.signature.clone(),
                    roots: tb.roots.clone(),
                });
            }
        }
        if let Some(u) = unverified {
            let trusted = self.node(TreeIndex(u.index))?;
            if trusted.is_none_or(|t| t.hash != u.hash || t.size != u.size) {
                return Err(Error::Verification(format!("node {} does not match the signed tree", u.index)));
            }
        }
        let length = new_head.as_ref().map_or(self.head.length, |h| h.length);
        if let Some(bp) = &p.block {
            if bp.index >= length {
                return Err(Error::Verification(format!("block {} beyond signed length {length}", bp.index)));
            }
        }
        let conflict = match reorg {
            false => self.find_conflict(their_state.as_ref(), &nodes)?,
            true => None,
        };
        // The block's leaf was hashed to verify it; storing it reuses that hash.
        let block = match p.block {
            Some(b) => {
                let leaf = match nodes.iter().find(|n| n.index == 2 * b.index) {
                    Some(n) => n.hash,
                    None => crypto::leaf_hash(&b.value),
                };
                Some((b.index, b.value, leaf))
            }
            None => None,
        };
        Ok(Verified {
            base: (self.head.fork, self.head.length),
            learned: if auth != self.auth { auth } else { None },
            nodes,
            their_state,
            new_head,
            reorg,
            block,
            conflict,
            checked_only: false,
        })
    }

    /// Stores what [`Hypercore::verify_proof`] verified: the new signed length (or fork), the
    /// nodes and the block, in one batch. The core may have moved on since (another peer's
    /// proof): on the same fork what was verified still holds — a shorter length is not taken,
    /// and the nodes are checked again against what is stored now; on another fork the proof is
    /// refused ([`Error::StaleSnapshot`]) and the block asked for again. A conflict the proof
    /// showed is recorded (by a frozen copy too: the writer shares its cell) and refused.
    pub fn store_verified(&mut self, v: Verified) -> Result<Applied> {
        if let Some(a) = v.learned.filter(|_| self.auth.is_none()) {
            self.auth = Some(a);
            self.write_record()?;
        }
        let conflict = match v.conflict {
            Some(c) => Some(c),
            None if !v.reorg && v.base.1 != self.head.length && self.head.fork == v.base.0 => {
                self.find_conflict(v.their_state.as_ref(), &v.nodes)?
            }
            None => None,
        };
        if let Some(c) = conflict {
            return Err(self.record_conflict(c));
        }
        if let Some(c) = self.conflict.get() {
            if v.new_head.as_ref().map_or(self.head.fork, |h| h.fork) <= c.fork {
                return Err(Error::Equivocation { core: hex::encode(self.key), fork: c.fork });
            }
        }
        let mut applied = Applied::default();
        if v.checked_only {
            return Ok(applied);
        }
        self.changeable()?;
        if self.head.fork != v.base.0 {
            return Err(Error::StaleSnapshot { index: v.block.map_or(0, |b| b.0) });
        }
        let new_head = v.new_head.filter(|h| v.reorg || h.length > self.head.length);
        let mut b = Batch { sync: self.durable, ..Batch::default() };
        let mut truncate_from = None;
        if v.reorg {
            let ancestors = self.common_ancestors(&new_head.as_ref().expect("reorg has upgrade").roots)?;
            truncate_from = Some(ancestors);
            applied.truncated_to = Some(ancestors);
        }
        let mut present = None;
        let _pin = self.store.pin();
        if let Some((index, value, leaf)) = &v.block {
            if !self.store.reuse_block(leaf)? {
                // Its tag and bytes go to the block log in one vectored write, not joined first.
                let encoded = stored::encode_parts(value);
                if let Some(&staged) = self.store.stage_blocks(&[encoded.parts()])?.first() {
                    b.put_staged(leaf.to_vec(), staged);
                }
            }
            present = Some((*index, index + 1));
            applied.block = Some(*index);
        }
        let head = match new_head {
            Some(h) => {
                applied.upgraded_to = Some(h.length);
                h
            }
            None => self.head.clone(),
        };
        self.commit(b, &v.nodes, head, present.as_slice(), truncate_from)?;
        if let Some(t) = applied.truncated_to {
            self.truncations.write().unwrap_or_else(|e| e.into_inner()).push((self.head.fork, t));
        }
        Ok(applied)
    }

    /// Stores several verified proofs, in order, with one result each. Runs of plain blocks of
    /// the current fork (no upgrade, nothing else learned) go in one commit: a download of
    /// small blocks pays one RocksDB write per arrival batch, not one per block. Anything else
    /// is stored as [`Hypercore::store_verified`] does.
    pub fn store_verified_all(&mut self, all: Vec<Verified>) -> Vec<Result<Applied>> {
        self.store_arrivals(all, false)
    }

    /// [`Hypercore::store_verified_all`], the blocks' bytes written past the page cache where
    /// the store allows when `past_cache` (a whole-core download, which nothing reads back
    /// soon): a clone's bytes then take no page-cache pages, whose first use costs a virtual
    /// machine more than the copy (writes into fresh pages ran at ~400 MB/s here, direct ones
    /// at ~2.2 GB/s).
    pub fn store_arrivals(&mut self, all: Vec<Verified>, past_cache: bool) -> Vec<Result<Applied>> {
        let mut results = Vec::with_capacity(all.len());
        let mut run: Vec<Verified> = Vec::new();
        for v in all {
            if v.is_plain_block() && v.base.0 == self.head.fork {
                run.push(v);
                continue;
            }
            self.store_run(std::mem::take(&mut run), past_cache, &mut results);
            results.push(self.store_verified(v));
        }
        self.store_run(run, past_cache, &mut results);
        results
    }

    /// One commit for a run of plain verified blocks ([`Hypercore::store_verified_all`]).
    fn store_run(&mut self, run: Vec<Verified>, past_cache: bool, results: &mut Vec<Result<Applied>>) {
        let n = run.len();
        if n == 0 {
            return;
        }
        let stored = (|| -> Result<Vec<u64>> {
            self.changeable()?;
            if let Some(c) = self.conflict.get() {
                if self.head.fork <= c.fork {
                    return Err(Error::Equivocation { core: hex::encode(self.key), fork: c.fork });
                }
            }
            let mut b = Batch { sync: self.durable, ..Batch::default() };
            let (mut nodes, mut present, mut indices) = (Vec::new(), Vec::with_capacity(n), Vec::with_capacity(n));
            let mut seen = std::collections::HashSet::with_capacity(n);
            let mut encoded = Vec::new();
            let _pin = self.store.pin();
            for v in &run {
                let Some((index, value, leaf)) = &v.block else { continue };
                if seen.insert(*leaf) && !self.store.reuse_block(leaf)? {
                    encoded.push((*leaf, stored::encode_parts(value)));
                }
                nodes.extend_from_slice(&v.nodes);
                present.push((*index, index + 1));
                indices.push(*index);
            }
            // Their tags and bytes go to the block log in one vectored write.
            let parts: Vec<[&[u8]; 2]> = encoded.iter().map(|(_, e)| e.parts()).collect();
            let staged =
                if past_cache { self.store.stage_streamed(&parts)? } else { self.store.stage_blocks(&parts)? };
            for ((leaf, _), staged) in encoded.iter().zip(staged) {
                b.put_staged(leaf.to_vec(), staged);
            }
            // Proofs asked for together carry the same uncles: each is written once.
            nodes.sort_unstable_by_key(|n| n.index);
            nodes.dedup_by_key(|n| n.index);
            let head = self.head.clone();
            self.commit(b, &nodes, head, &present, None)?;
            Ok(indices)
        })();
        match stored {
            Ok(indices) => {
                results.extend(indices.into_iter().map(|i| Ok(Applied { block: Some(i), ..Applied::default() })))
            }
            Err(e) => {
                let why = e.to_string();
                results.push(Err(e));
                results.extend((1..n).map(|_| Err(Error::Storage(why.clone()))));
            }
        }
    }

    /// Checks verified nodes and an upgrade of the current fork against what is stored: a node
    /// that differs, or the same length signed with another tree hash, is proof the writer
    /// signed two histories ([`Conflict`]; stored nodes were once overwritten here, silently).
    fn find_conflict(&self, theirs: Option<&SignedState>, nodes: &[Node]) -> Result<Option<Conflict>> {
        // Without a signed state of theirs, every node of the proof hashed up to one this core
        // trusts: none can differ from the stored tree, and no lookups are spent on it.
        let Some(theirs) = theirs else { return Ok(None) };
        let mut differs = None;
        for n in nodes {
            if let Some(stored) = self.node(TreeIndex(n.index))? {
                if stored.hash != n.hash || stored.size != n.size {
                    differs = Some(Some(n.index));
                    break;
                }
            }
        }
        if differs.is_none() && theirs.length == self.head.length && theirs.tree_hash != self.head.tree_hash {
            differs = Some(None);
        }
        // A writer signs every state of its core itself: a longer one it did not sign here is the
        // same key writing on another machine.
        if differs.is_none() && self.key_pair.is_some() && theirs.length > self.head.length {
            differs = Some(None);
        }
        Ok(differs.map(|node| Conflict {
            fork: self.head.fork,
            ours: SignedState {
                length: self.head.length,
                tree_hash: self.head.tree_hash,
                signature: self.signature().to_vec(),
            },
            theirs: theirs.clone(),
            node,
        }))
    }

    /// Keeps a conflict in the store and in the cell every instance of this core shares; the
    /// error to report (nothing of the proof that showed it is stored).
    fn record_conflict(&mut self, conflict: Conflict) -> Error {
        let mut b = Batch { sync: true, ..Batch::default() };
        b.put(Table::Meta, conflict_key(self.id).to_vec(), conflict.encode());
        if let Err(e) = self.store.write(b) {
            return e;
        }
        let _ = self.conflict.set(conflict);
        Error::Equivocation { core: hex::encode(self.key), fork: self.head.fork }
    }

    /// Blocks shared with a new fork's roots: whole roots whose node equals ours.
    fn common_ancestors(&self, roots: &[Node]) -> Result<u64> {
        let mut len = 0;
        for r in roots {
            match self.node(TreeIndex(r.index))? {
                Some(n) if n.hash == r.hash && (flat::right_span(r.index) / 2) < self.head.length => {
                    len = flat::right_span(r.index) / 2 + 1;
                }
                _ => break,
            }
        }
        Ok(len.min(self.head.length))
    }

    /// The local blocks whose leaf hash is one of `hashes` (blocks a power cut took, say):
    /// O(local blocks), each one leaf read.
    pub fn local_among(&self, hashes: &std::collections::HashSet<Hash>) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        if hashes.is_empty() {
            return Ok(out);
        }
        let mut next = self.next_local(0, self.head.length, true);
        while let Some(i) = next {
            next = self.next_local(i + 1, self.head.length, true);
            if self.leaf(i)?.is_some_and(|leaf| hashes.contains(&leaf.hash)) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Marks blocks `indexes` as not local (their bytes are gone): readers fetch them from
    /// peers again. The signed tree stays as it is.
    pub fn forget(&mut self, indexes: &[u64]) -> Result<()> {
        self.changeable()?;
        let (Some(&lo), Some(&hi)) = (indexes.iter().min(), indexes.iter().max()) else { return Ok(()) };
        let mut bitfield = self.bitfield.subset(lo, hi + 1);
        for &i in indexes {
            bitfield.set_range(i, i + 1, false);
        }
        let mut b = Batch { sync: true, ..Batch::default() };
        for (page, bytes) in bitfield.take_dirty() {
            b.put(Table::Bitfield, node_key(self.id, page).to_vec(), bytes);
        }
        self.store.write(b)?;
        self.bitfield.merge(bitfield);
        Ok(())
    }

    /// Re-hashes every local block against its leaf and checks the head's signature. Returns
    /// the indexes of bad blocks; a bad signature or tree is an error.
    pub fn verify_local(&self) -> Result<Vec<u64>> {
        let auth = self.auth.as_ref().ok_or_else(|| Error::Verification("the core's manifest is unknown".into()))?;
        if tree::tree_hash(&self.head.roots) != self.head.tree_hash {
            return Err(Error::Verification("roots do not match the tree hash".into()));
        }
        if self.head.length > 0
            && !auth.verify(self.signature(), &self.head.tree_hash, self.head.length, self.head.fork)
        {
            return Err(Error::Verification("the head's signature does not verify".into()));
        }
        let mut bad = Vec::new();
        // Only the blocks held: a signed length can be near 2^55.
        let mut next = self.next_local(0, self.head.length, true);
        while let Some(i) = next {
            next = self.next_local(i + 1, self.head.length, true);
            let leaf = self.leaf(i)?.ok_or(Error::MissingNode { index: 2 * i })?;
            let ok = match self.store.get(Table::Blocks, &leaf.hash)? {
                Some(v) => stored::decode(&v, leaf.size, i).is_ok_and(|v| crypto::leaf_hash(&v) == leaf.hash),
                None => false,
            };
            if !ok {
                bad.push(i);
            }
        }
        // Every parent on the way to the roots must hash from its children where both are local.
        for r in &self.head.roots {
            self.verify_subtree(r)?;
        }
        Ok(bad)
    }

    fn verify_subtree(&self, n: &Node) -> Result<()> {
        if n.index & 1 == 0 {
            return Ok(());
        }
        let mut it = flat::Iter::new(n.index);
        let l = it.left_child();
        let r = flat::sibling(l);
        let (Some(ln), Some(rn)) = (self.node(TreeIndex(l))?, self.node(TreeIndex(r))?) else {
            return Ok(());
        };
        if Node::parent(n.index, &ln, &rn) != *n {
            return Err(Error::Verification(format!("tree node {} does not hash from its children", n.index)));
        }
        self.verify_subtree(&ln)?;
        self.verify_subtree(&rn)
    }
}

impl proof::NodeSource for Hypercore {
    fn node(&self, index: u64) -> Result<Option<Node>> {
        Hypercore::node(self, TreeIndex(index))
    }
}

fn auth_for(key: &CoreKey, m: Manifest) -> Result<Auth> {
    if m.hash() == key.0 {
        Ok(Auth::Manifest(m))
    } else if m.is_compat_for(key) {
        Ok(Auth::Compat { public_key: key.0 })
    } else {
        Err(Error::Verification("manifest does not match the core key".into()))
    }
}

fn read_leaf(store: &dyn Store, id: u64, index: u64) -> Result<Node> {
    let raw = store.get(Table::Nodes, &node_key(id, 2 * index))?.ok_or(Error::MissingNode { index: 2 * index })?;
    Node::decode(2 * index, &raw)
        .ok_or(Error::CorruptRecord { what: "node", source: crate::encoding::DecodeError::Invalid("size") })
}

fn read_block(store: &dyn Store, id: u64, index: u64) -> Result<Vec<u8>> {
    let leaf = read_leaf(store, id, index)?;
    let raw = store.get(Table::Blocks, &leaf.hash)?.ok_or(Error::MissingBlock { index })?;
    stored::decode(&raw, leaf.size, index)
}

fn read_block_into(store: &dyn Store, id: u64, index: u64, out: &mut [u8]) -> Result<()> {
    let leaf = read_leaf(store, id, index)?;
    if leaf.size != out.len() as u64 {
        return Err(Error::Verification(format!("block {index} has {} bytes, not the {} read", leaf.size, out.len())));
    }
    let mut tag = [0u8; 1];
    let stored_len = {
        let mut bufs = [std::io::IoSliceMut::new(&mut tag), std::io::IoSliceMut::new(out)];
        store.read_block_into(&leaf.hash, &mut bufs)?.ok_or(Error::MissingBlock { index })?
    };
    if stored_len == out.len() + 1 && tag[0] == stored::RAW {
        return Ok(());
    }
    // Compressed (or damaged, which decoding reports): decode it the usual way.
    let raw = store.get(Table::Blocks, &leaf.hash)?.ok_or(Error::MissingBlock { index })?;
    out.copy_from_slice(&stored::decode(&raw, leaf.size, index)?);
    Ok(())
}

/// Bytes `from..from + out.len()` of block `index`, which its leaf must say holds `size` bytes
/// (the size the reader's file map gives it). A raw block is read from the disk only in that
/// range; a compressed one is read whole and decoded.
fn read_block_part(store: &dyn Store, id: u64, index: u64, size: u64, from: usize, out: &mut [u8]) -> Result<()> {
    let leaf = read_leaf(store, id, index)?;
    let part = crate::fetch::part_range(index, leaf.size, size, from, out.len())?;
    let raw_len =
        stored::raw_len(size).ok_or_else(|| Error::InvalidRequest(format!("block {index} of {size} bytes")))?;
    let stored_len =
        store.read_block_range(&leaf.hash, raw_len, from + 1, out)?.ok_or(Error::MissingBlock { index })?;
    if stored_len == raw_len {
        return Ok(());
    }
    let raw = store.get(Table::Blocks, &leaf.hash)?.ok_or(Error::MissingBlock { index })?;
    out.copy_from_slice(&stored::decode(&raw, leaf.size, index)?[part]);
    Ok(())
}

fn encode_head(h: &Head) -> Vec<u8> {
    let mut e = Encoder::with_capacity(48 + h.signature.len());
    e.uint(h.fork).uint(h.length).fixed(&h.tree_hash).buffer(&h.signature);
    e.finish()
}

fn decode_head(bytes: &[u8]) -> Result<(u64, u64, Hash, Vec<u8>)> {
    let e = record_err("head");
    let mut d = Decoder::new(bytes);
    let fork = d.uint("fork").map_err(&e)?;
    let length = d.uint("length").map_err(&e)?;
    let th = d.array::<32>("tree hash").map_err(&e)?;
    let sig = d.buffer("signature").map_err(&e)?.to_vec();
    d.finish().map_err(&e)?;
    Ok((fork, length, th, sig))
}

/// A read-only view of a core at a length.
#[derive(Debug, Clone)]
pub struct Snapshot {
    store: Arc<dyn Store>,
    id: u64,
    key: CoreKey,
    length: u64,
    byte_length: u64,
    fork: u64,
    bitfield: Bitfield,
    truncations: Arc<RwLock<Vec<(u64, u64)>>>,
}

impl Snapshot {
    pub fn key(&self) -> &CoreKey {
        &self.key
    }
    pub fn length(&self) -> u64 {
        self.length
    }
    pub fn byte_length(&self) -> u64 {
        self.byte_length
    }
    pub fn fork(&self) -> u64 {
        self.fork
    }

    pub fn get(&self, index: u64) -> Result<Vec<u8>> {
        self.readable(index)?;
        read_block(&*self.store, self.id, index)
    }

    /// [`Hypercore::get_into`] of the snapshot.
    pub fn get_into(&self, index: u64, out: &mut [u8]) -> Result<()> {
        self.readable(index)?;
        read_block_into(&*self.store, self.id, index, out)
    }

    /// Bytes `from..from + out.len()` of block `index`, which must hold `size` bytes.
    pub fn get_part(&self, index: u64, size: u64, from: usize, out: &mut [u8]) -> Result<()> {
        self.readable(index)?;
        read_block_part(&*self.store, self.id, index, size, from, out)
    }

    /// Whether block `index` of this snapshot can be read here: within it, not cut off by a
    /// later truncation, and local.
    fn readable(&self, index: u64) -> Result<()> {
        if index >= self.length {
            return Err(Error::OutOfBounds(format!("block {index} of a snapshot of length {}", self.length)));
        }
        if stale(&self.truncations, self.fork, index) {
            return Err(Error::StaleSnapshot { index });
        }
        if !self.bitfield.get(index) {
            return Err(Error::MissingBlock { index });
        }
        Ok(())
    }
}

/// Whether a truncation after `fork` took block `index`.
fn stale(truncations: &RwLock<Vec<(u64, u64)>>, fork: u64, index: u64) -> bool {
    truncations.read().unwrap_or_else(|e| e.into_inner()).iter().any(|&(f, len)| f > fork && len <= index)
}

/// A live core and a snapshot read blocks the same way.
macro_rules! impl_blocks {
    ($($t:ty),*) => {$(
        impl crate::fetch::Blocks for $t {
            fn core_key(&self) -> &CoreKey {
                self.key()
            }
            fn length(&self) -> u64 {
                self.length()
            }
            fn fork(&self) -> u64 {
                self.fork()
            }
            fn block(&self, index: u64) -> Result<Vec<u8>> {
                self.get(index)
            }
            fn block_into(&self, index: u64, out: &mut [u8]) -> Result<()> {
                self.get_into(index, out)
            }
            fn block_part(&self, index: u64, size: u64, from: usize, out: &mut [u8]) -> Result<()> {
                self.get_part(index, size, from, out)
            }
        }
    )*};
}

impl_blocks!(Hypercore, Snapshot);

#[cfg(test)]
mod tests;
