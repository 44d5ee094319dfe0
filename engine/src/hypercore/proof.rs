//! Proofs in the shapes of Hypercore's request/data messages (reference §3.8): generation by a
//! holder of the tree and verification by a replica that may hold any subset of it.
//!
//! Invariant: verification is pure — it folds the received nodes into a [`TreeBatch`] and returns
//! what to store; nothing is trusted until the caller has checked the signature (upgrades) or
//! matched the folded root against a node it already trusts.

use super::flat::{self, Iter};
use super::tree::{Node, TreeBatch};
use crate::{Error, Result};

/// A block (`value: true`) or any tree node (`value: false`) with `nodes` levels of proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestIndexed {
    pub index: u64,
    /// How many ancestors, starting at the node itself, the requester lacks.
    pub nodes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSeek {
    pub bytes: u64,
    pub padding: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestUpgrade {
    /// The length of the signed tree the requester already has.
    pub start: u64,
    /// How many blocks beyond `start` to prove.
    pub length: u64,
}

/// What a replica asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub fork: u64,
    pub block: Option<RequestIndexed>,
    pub hash: Option<RequestIndexed>,
    pub seek: Option<RequestSeek>,
    pub upgrade: Option<RequestUpgrade>,
    pub manifest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockProof {
    pub index: u64,
    pub value: Vec<u8>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashProof {
    pub index: u64,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekProof {
    pub bytes: u64,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeProof {
    pub start: u64,
    pub length: u64,
    pub nodes: Vec<Node>,
    pub additional_nodes: Vec<Node>,
    pub signature: Vec<u8>,
}

/// What a holder sends back: the `data` message without its request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    pub fork: u64,
    pub block: Option<BlockProof>,
    pub hash: Option<HashProof>,
    pub seek: Option<SeekProof>,
    pub upgrade: Option<UpgradeProof>,
    /// The encoded manifest, when asked for.
    pub manifest: Option<Vec<u8>>,
}

/// Blocks `start..start + blocks.len()` of a tree of `length` blocks with the nodes beside
/// them ([`range_nodes`]): a hyperfs peer's answer to a request for a range of blocks, proven
/// against the asker's roots at `length` by one list of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeProof {
    pub fork: u64,
    pub length: u64,
    pub start: u64,
    pub blocks: Vec<Vec<u8>>,
    pub nodes: Vec<Node>,
    /// The blocks' leaves, hashed by the receiver as the proof arrived
    /// ([`RangeProof::hash_leaves`]) so that the thread that verifies it does not: never on the
    /// wire, and empty until then (the verifier hashes what is missing).
    pub hashed: Vec<Node>,
}

impl RangeProof {
    /// Hashes the blocks' leaves into [`RangeProof::hashed`]: a connection's reader does it
    /// beside the thread that verifies and stores, which otherwise spent half its time there.
    pub fn hash_leaves(&mut self) {
        self.hashed = self.blocks.iter().enumerate().map(|(i, b)| Node::leaf(self.start + i as u64, b)).collect();
    }
}

/// Read access to the prover's tree.
pub trait NodeSource {
    fn node(&self, index: u64) -> Result<Option<Node>>;
}

fn need(src: &dyn NodeSource, index: u64) -> Result<Node> {
    src.node(index)?.ok_or(Error::MissingNode { index })
}

struct Indexed {
    index: u64,
    value: bool,
    nodes: u64,
    last_block: u64,
}

#[derive(Default)]
struct Pending {
    block: Option<Vec<u64>>,
    seek: Option<Vec<u64>>,
    upgrade: Option<Vec<u64>>,
    additional: Option<Vec<u64>>,
}

/// The tree nodes (by index) that answer `req` for a tree of `length` blocks; the caller fills in
/// the block value and signature. Fails on requests the prover cannot answer.
pub(crate) fn generate(
    src: &dyn NodeSource,
    roots: &[Node],
    length: u64,
    fork: u64,
    signature: &[u8],
    req: &Request,
) -> Result<Proof> {
    let head = 2 * length;
    let (from, to) = match req.upgrade {
        Some(u) => {
            let from = u.start.checked_mul(2).ok_or_else(|| Error::InvalidRequest("upgrade start".into()))?;
            let to = u.length.checked_mul(2).and_then(|l| l.checked_add(from));
            (from, to.ok_or_else(|| Error::InvalidRequest("upgrade length".into()))?)
        }
        None => (0, head),
    };
    if from >= to || to > head {
        return Err(Error::InvalidRequest(format!("upgrade {from}..{to} outside the tree (head {head})")));
    }
    if req.seek.is_some_and(|s| s.padding != 0) {
        return Err(Error::InvalidRequest("seek padding (encrypted cores) is not supported".into()));
    }
    if req.block.is_some_and(|b| b.index >= length) || req.hash.is_some_and(|h| h.index >= head) {
        return Err(Error::OutOfBounds(format!("request beyond length {length}")));
    }
    let indexed = match (req.block, req.hash) {
        (Some(b), _) => Some(Indexed { index: 2 * b.index, value: true, nodes: b.nodes, last_block: b.index }),
        (None, Some(h)) => {
            Some(Indexed { index: h.index, value: false, nodes: h.nodes, last_block: flat::right_span(h.index) / 2 })
        }
        (None, None) => None,
    };
    if let Some(ix) = &indexed {
        if flat::right_span(ix.index) >= head {
            return Err(Error::OutOfBounds(format!("node {} beyond length {length}", ix.index)));
        }
    }
    if req.seek.is_some() && req.upgrade.is_some() && indexed.as_ref().is_some_and(|ix| ix.index >= from) {
        return Err(Error::InvalidRequest("cannot both seek and ask for a block when upgrading".into()));
    }

    let mut p = Pending::default();
    let mut sub_tree = head;
    let seek_bytes = req.seek.map(|s| s.bytes);

    match (&indexed, req.upgrade) {
        (Some(ix), up) if up.is_none_or(|u| ix.last_block < u.start) => {
            sub_tree = nodes_to_root(ix.index, ix.nodes, to)?;
            let seek_root = match seek_bytes {
                Some(bytes) => seek_untrusted_tree(src, roots, sub_tree, bytes)?,
                None => head,
            };
            block_and_seek_proof(Some(ix), seek_bytes.is_some(), seek_root, sub_tree, &mut p);
        }
        (ix, Some(_)) if ix.is_some() || seek_bytes.is_some() => {
            sub_tree = match (seek_bytes, ix) {
                (Some(bytes), _) => seek_from_head(src, to, bytes)?,
                (None, Some(ix)) => ix.index,
                (None, None) => head,
            };
        }
        _ => {}
    }

    if req.upgrade.is_some() {
        upgrade_proof(indexed.as_ref(), seek_bytes.is_some(), from, to, sub_tree, &mut p);
        if head > to {
            additional_upgrade_proof(to, head, &mut p);
        }
    }

    let fetch = |ids: &Option<Vec<u64>>| -> Result<Vec<Node>> {
        ids.as_deref().unwrap_or(&[]).iter().map(|&i| need(src, i)).collect()
    };
    if indexed.is_some() && p.block.is_none() {
        // The block lies beyond the upgrade it was asked with.
        return Err(Error::InvalidRequest("the requested block is not inside the proven tree".into()));
    }
    let mut proof = Proof { fork, ..Proof::default() };
    if let Some(b) = req.block {
        proof.block = Some(BlockProof { index: b.index, value: Vec::new(), nodes: fetch(&p.block)? });
    } else if let Some(h) = req.hash {
        proof.hash = Some(HashProof { index: h.index, nodes: fetch(&p.block)? });
    }
    if let (Some(s), Some(_)) = (req.seek, &p.seek) {
        proof.seek = Some(SeekProof { bytes: s.bytes, nodes: fetch(&p.seek)? });
    }
    if let Some(u) = req.upgrade {
        proof.upgrade = Some(UpgradeProof {
            start: u.start,
            length: u.length,
            nodes: fetch(&p.upgrade)?,
            additional_nodes: fetch(&p.additional)?,
            signature: signature.to_vec(),
        });
    }
    Ok(proof)
}

fn nodes_to_root(index: u64, nodes: u64, head: u64) -> Result<u64> {
    let mut it = Iter::new(index);
    for _ in 0..nodes {
        it.parent();
        if it.contains(head) {
            return Err(Error::InvalidRequest("nodes out of bounds".into()));
        }
    }
    Ok(it.index)
}

/// Byte offset of the first byte under tree index `index`, using the tree's roots.
pub(crate) fn byte_offset(src: &dyn NodeSource, roots: &[Node], index: u64) -> Result<u64> {
    let index = if index & 1 == 1 { flat::left_span(index) } else { index };
    let mut head = 0u64;
    let mut offset = 0u64;
    for root in roots {
        head += 2 * ((root.index - head) + 1);
        if index >= head {
            offset += root.size;
            continue;
        }
        let mut it = Iter::new(root.index);
        while it.index != index {
            if index < it.index {
                it.left_child();
            } else {
                offset += need(src, it.left_child())?.size;
                it.sibling();
            }
        }
        return Ok(offset);
    }
    Err(Error::OutOfBounds(format!("node {index} beyond the tree")))
}

fn seek_trusted_tree(src: &dyn NodeSource, root: u64, mut bytes: u64) -> Result<u64> {
    if bytes == 0 {
        return Ok(root);
    }
    let mut it = Iter::new(root);
    while it.index & 1 == 1 {
        match src.node(it.left_child())? {
            Some(l) => {
                if l.size == bytes {
                    return Ok(it.index);
                }
                if l.size > bytes {
                    continue;
                }
                bytes -= l.size;
                it.sibling();
            }
            None => {
                it.parent();
                return Ok(it.index);
            }
        }
    }
    Ok(it.index)
}

fn seek_untrusted_tree(src: &dyn NodeSource, roots: &[Node], root: u64, bytes: u64) -> Result<u64> {
    let offset = byte_offset(src, roots, root)?;
    if offset > bytes {
        return Err(Error::InvalidRequest("invalid seek".into()));
    }
    if offset == bytes {
        return Ok(root);
    }
    let rel = bytes - offset;
    if need(src, root)?.size <= rel {
        return Err(Error::InvalidRequest("invalid seek".into()));
    }
    seek_trusted_tree(src, root, rel)
}

fn seek_from_head(src: &dyn NodeSource, head: u64, mut bytes: u64) -> Result<u64> {
    for root in flat::full_roots(head) {
        let node = need(src, root)?;
        if bytes == node.size {
            return Ok(root);
        }
        if bytes > node.size {
            bytes -= node.size;
            continue;
        }
        return seek_trusted_tree(src, root, bytes);
    }
    Ok(head)
}

fn seek_proof(seek_root: u64, root: u64, p: &mut Pending) {
    let mut it = Iter::new(seek_root);
    let mut out = vec![it.index];
    while it.index != root {
        it.sibling();
        out.push(it.index);
        it.parent();
    }
    p.seek = Some(out);
}

fn block_and_seek_proof(ix: Option<&Indexed>, seek: bool, seek_root: u64, root: u64, p: &mut Pending) {
    let Some(ix) = ix else {
        seek_proof(seek_root, root, p);
        return;
    };
    let mut it = Iter::new(ix.index);
    let mut out = Vec::new();
    if !ix.value {
        out.push(it.index);
    }
    while it.index != root {
        it.sibling();
        if seek && it.contains(seek_root) && it.index != seek_root {
            seek_proof(seek_root, it.index, p);
        } else {
            out.push(it.index);
        }
        it.parent();
    }
    p.block = Some(out);
}

fn upgrade_proof(ix: Option<&Indexed>, seek: bool, from: u64, to: u64, sub_tree: u64, p: &mut Pending) {
    let nodes = grow_nodes(from, to, |index| {
        // The block's own proof up to this node replaces the node itself.
        if p.block.is_none() && p.seek.is_none() && Iter::new(index).contains(sub_tree) {
            block_and_seek_proof(ix, seek, sub_tree, index, p);
            return true;
        }
        false
    });
    p.upgrade = Some(nodes);
}

fn additional_upgrade_proof(from: u64, to: u64, p: &mut Pending) {
    p.additional = Some(grow_nodes(from, to, |_| false));
}

/// The nodes that grow a tree of head `from` to head `to`: for the root holding the last old
/// leaf, the right-hand siblings on its path up; then every further root. `replaced(index)`
/// may emit something else for a node instead (and return true).
fn grow_nodes(from: u64, to: u64, mut replaced: impl FnMut(u64) -> bool) -> Vec<u64> {
    let mut out = Vec::new();
    let mut connected = from == 0;
    let mut it = Iter::new(0);
    while it.full_root(to) {
        if it.index + it.factor / 2 < from {
            it.next_tree();
            continue;
        }
        if !connected && it.contains(from - 2) {
            connected = true;
            let root = it.index;
            let target = from - 2;
            it.seek(target);
            while it.index != root {
                it.sibling();
                if it.index > target && !replaced(it.index) {
                    out.push(it.index);
                }
                it.parent();
            }
            it.next_tree();
            continue;
        }
        connected = true;
        if !replaced(it.index) {
            out.push(it.index);
        }
        it.next_tree();
    }
    out
}

/// Hands out proof nodes in order, with one optional extra node (a folded seek root) that may be
/// consumed at its index.
struct NodeQueue<'a> {
    nodes: &'a [Node],
    i: usize,
    extra: Option<Node>,
}

impl<'a> NodeQueue<'a> {
    fn new(nodes: &'a [Node], extra: Option<Node>) -> Self {
        NodeQueue { nodes, i: 0, extra }
    }

    fn len(&self) -> usize {
        self.nodes.len() - self.i + usize::from(self.extra.is_some())
    }

    fn shift(&mut self, index: u64) -> Result<Node> {
        if let Some(e) = self.extra {
            if e.index == index {
                self.extra = None;
                return Ok(e);
            }
        }
        let Some(node) = self.nodes.get(self.i) else {
            return Err(Error::Verification(format!("expected node {index}, got none")));
        };
        if node.index != index {
            return Err(Error::Verification(format!("expected node {index}, got node {}", node.index)));
        }
        self.i += 1;
        Ok(*node)
    }
}

/// Folds the block/hash and seek parts of a proof into the top node they prove, remembering
/// every node met. `None` when the proof carries neither.
pub(crate) fn verify_tree(proof: &Proof, nodes: &mut Vec<Node>) -> Result<Option<Node>> {
    check_indexes(proof)?;
    // (tree index, block bytes if a block, proof nodes)
    type Untrusted<'a> = (u64, Option<&'a [u8]>, &'a [Node]);
    let untrusted: Option<Untrusted> = match (&proof.block, &proof.hash) {
        (Some(b), _) => Some((
            b.index.checked_mul(2).ok_or_else(|| Error::Verification("block index".into()))?,
            Some(&b.value),
            &b.nodes,
        )),
        (None, Some(h)) => Some((h.index, None, &h.nodes)),
        (None, None) => None,
    };
    let seek_nodes = proof.seek.as_ref().map(|s| s.nodes.as_slice()).unwrap_or(&[]);
    if untrusted.is_none() && seek_nodes.is_empty() {
        return Ok(None);
    }
    let mut root = None;
    if let Some(first) = seek_nodes.first() {
        let mut it = Iter::new(first.index);
        let mut q = NodeQueue::new(seek_nodes, None);
        let mut r = q.shift(it.index)?;
        nodes.push(r);
        while q.len() > 0 {
            let n = q.shift(it.sibling())?;
            r = Node::parent(it.parent(), &r, &n);
            nodes.push(n);
            nodes.push(r);
        }
        root = Some(r);
    }
    let Some((index, value, proof_nodes)) = untrusted else {
        return Ok(root);
    };
    let mut it = Iter::new(index);
    let mut q = NodeQueue::new(proof_nodes, root);
    let mut r = match value {
        Some(v) => Node { index, size: v.len() as u64, hash: crate::crypto::leaf_hash(v) },
        None => q.shift(it.index)?,
    };
    nodes.push(r);
    while q.len() > 0 {
        let n = q.shift(it.sibling())?;
        r = Node::parent(it.parent(), &r, &n);
        nodes.push(n);
        nodes.push(r);
    }
    Ok(Some(r))
}

/// Grows `batch` (holding the roots of the requester's signed tree at `upgrade.start`) by the
/// upgrade nodes. Returns whether `block_root` was consumed as one of them.
pub(crate) fn verify_upgrade(proof: &Proof, block_root: Option<Node>, batch: &mut TreeBatch) -> Result<bool> {
    let Some(up) = &proof.upgrade else {
        return Ok(false);
    };
    let mut q = NodeQueue::new(&up.nodes, block_root);
    let mut grow = !batch.roots.is_empty();
    let mut i = 0usize;
    let to = up
        .start
        .checked_add(up.length)
        .and_then(|l| l.checked_mul(2))
        .filter(|&t| t < (1 << 62))
        .ok_or_else(|| Error::Verification("upgrade length".into()))?;
    let mut it = Iter::new(0);
    while it.full_root(to) {
        if i < batch.roots.len() && batch.roots[i].index == it.index {
            i += 1;
            it.next_tree();
            continue;
        }
        if grow {
            grow = false;
            let root = it.index;
            if i < batch.roots.len() {
                let last = batch.roots[batch.roots.len() - 1].index;
                it.seek(last);
                while it.index != root {
                    let sib = it.sibling();
                    let n = q.shift(sib)?;
                    batch.append_root(n, it);
                    // append_root merged the pair; follow the merged root upward.
                    it.seek(batch.roots[batch.roots.len() - 1].index);
                }
                it.next_tree();
                continue;
            }
        }
        let n = q.shift(it.index)?;
        batch.append_root(n, it);
        it.seek(batch.roots[batch.roots.len() - 1].index);
        it.next_tree();
    }
    if q.nodes.len() != q.i {
        return Err(Error::Verification("unexpected extra upgrade nodes".into()));
    }

    let extra = &up.additional_nodes;
    let mut j = 0usize;
    if let Some(last) = batch.roots.last() {
        it.seek(last.index);
        while j < extra.len() && extra[j].index == it.sibling() {
            batch.append_root(extra[j], it);
            j += 1;
            it.seek(batch.roots[batch.roots.len() - 1].index);
        }
        // Undo the probe of the loop condition.
        it.seek(batch.roots[batch.roots.len() - 1].index);
        it.sibling();
    } else {
        it.seek(0);
    }
    while j < extra.len() {
        let n = extra[j];
        j += 1;
        while n.index != it.index {
            if it.factor == 2 {
                return Err(Error::Verification(format!("unexpected node {}", n.index)));
            }
            it.left_child();
        }
        batch.append_root(n, it);
        it.seek(batch.roots[batch.roots.len() - 1].index);
        it.sibling();
    }
    batch.fork = proof.fork;
    Ok(q.extra.is_none() && block_root.is_some())
}

/// Tree indexes at or above this are refused before any tree math touches them: no real core
/// comes near, and the iterator's arithmetic must not overflow on a hostile proof.
const MAX_INDEX: u64 = 1 << 56;

fn check_indexes(proof: &Proof) -> Result<()> {
    let all = proof
        .block
        .iter()
        .flat_map(|b| b.nodes.iter())
        .chain(proof.hash.iter().flat_map(|h| h.nodes.iter()))
        .chain(proof.seek.iter().flat_map(|s| s.nodes.iter()))
        .chain(proof.upgrade.iter().flat_map(|u| u.nodes.iter().chain(u.additional_nodes.iter())))
        .map(|n| n.index)
        .chain(proof.block.iter().map(|b| b.index.saturating_mul(2)))
        .chain(proof.hash.iter().map(|h| h.index))
        .chain(proof.upgrade.iter().map(|u| u.start.saturating_add(u.length).saturating_mul(2)));
    for i in all {
        if i >= MAX_INDEX {
            return Err(Error::Verification(format!("tree index {i} is out of range")));
        }
    }
    Ok(())
}

/// The nodes a holder sends beside blocks `start..end` of its tree at `length` blocks, for a
/// replica that hashes those blocks to reach every root of that tree they lie under: the
/// largest subtrees beside the range, left to right (at most two a level). A contiguous
/// range of blocks is proven by one such list, where a proof a block carries up to four
/// dozen nodes of its own.
pub(crate) fn range_nodes(length: u64, start: u64, end: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if start >= end || end > length {
        return out;
    }
    let (lo, hi) = (2 * start, 2 * (end - 1));
    for root in flat::full_roots(2 * length) {
        if flat::right_span(root) >= lo && flat::left_span(root) <= hi {
            beside(root, lo, hi, &mut out);
        }
    }
    out
}

/// The subtrees under `node` (which overlaps leaves `lo..=hi`) that lie outside those leaves.
fn beside(node: u64, lo: u64, hi: u64, out: &mut Vec<u64>) {
    let (l, r) = (flat::left_span(node), flat::right_span(node));
    if r < lo || l > hi {
        out.push(node);
    } else if !(lo <= l && r <= hi) {
        // Partly inside, so not a leaf: both children.
        let half = 1u64 << (flat::depth(node) - 1);
        beside(node - half, lo, hi, out);
        beside(node + half, lo, hi, out);
    }
}

/// Folds the leaves of a contiguous range of blocks (`leaves`, block `start` first) and the
/// nodes beside it (as [`range_nodes`] lists them) into the roots of the tree at `length`
/// blocks that the range lies under, left to right; every node met (leaves, the parents
/// computed, the nodes given) goes to `met`. Fails when the nodes given are not the ones
/// listed. The caller matches the roots against those it trusts.
pub(crate) fn fold_range(
    length: u64,
    start: u64,
    leaves: &[Node],
    given: &[Node],
    met: &mut Vec<Node>,
) -> Result<Vec<Node>> {
    let end = start.checked_add(leaves.len() as u64).filter(|&e| e <= length && e > start).ok_or_else(|| {
        Error::Verification(format!("a range of {} blocks from {start} at length {length}", leaves.len()))
    })?;
    let (lo, hi) = (2 * start, 2 * (end - 1));
    let mut given = given.iter();
    let mut roots = Vec::new();
    for root in flat::full_roots(2 * length) {
        if flat::right_span(root) >= lo && flat::left_span(root) <= hi {
            roots.push(fold(root, lo, hi, leaves, &mut given, met)?);
        }
    }
    if given.next().is_some() {
        return Err(Error::Verification("a range proof with more nodes than it needs".into()));
    }
    Ok(roots)
}

fn fold(
    node: u64,
    lo: u64,
    hi: u64,
    leaves: &[Node],
    given: &mut std::slice::Iter<Node>,
    met: &mut Vec<Node>,
) -> Result<Node> {
    let (l, r) = (flat::left_span(node), flat::right_span(node));
    let n = if r < lo || l > hi {
        match given.next() {
            Some(n) if n.index == node => *n,
            Some(n) => {
                return Err(Error::Verification(format!("a range proof gave node {} where {node} belongs", n.index)))
            }
            None => return Err(Error::Verification(format!("a range proof lacks node {node}"))),
        }
    } else if node.is_multiple_of(2) {
        // A leaf inside the range.
        leaves[((node - lo) / 2) as usize]
    } else {
        let half = 1u64 << (flat::depth(node) - 1);
        let a = fold(node - half, lo, hi, leaves, given, met)?;
        let b = fold(node + half, lo, hi, leaves, given, met)?;
        Node::parent(node, &a, &b)
    };
    met.push(n);
    Ok(n)
}
