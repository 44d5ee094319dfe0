//! Merkle nodes, roots and the in-progress tree batch that appends and upgrades share
//! (reference §3.2).

use super::flat::{self, Iter};
use crate::crypto::{self, Hash};

/// A position in a core's merkle tree (flat-tree numbering: block `i`'s leaf is `2i`, parents
/// are odd), never a block index: a block's node is [`TreeIndex::leaf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeIndex(pub u64);

impl TreeIndex {
    /// The leaf of block `block`.
    pub fn leaf(block: u64) -> TreeIndex {
        TreeIndex(2 * block)
    }
}

/// A merkle tree node: a block leaf (even index) or a parent (odd index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub index: u64,
    /// Bytes of payload under this node.
    pub size: u64,
    pub hash: Hash,
}

impl Node {
    pub fn leaf(block: u64, data: &[u8]) -> Node {
        Node { index: 2 * block, size: data.len() as u64, hash: crypto::leaf_hash(data) }
    }

    /// The parent of two siblings, in either order.
    pub fn parent(index: u64, a: &Node, b: &Node) -> Node {
        let (l, r) = if a.index < b.index { (a, b) } else { (b, a) };
        let size = a.size + b.size;
        Node { index, size, hash: crypto::parent_hash(&l.hash, &r.hash, size) }
    }

    pub(crate) fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    pub(crate) fn decode(index: u64, bytes: &[u8]) -> Option<Node> {
        if bytes.len() != 40 {
            return None;
        }
        let size = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        let hash = bytes[8..].try_into().ok()?;
        Some(Node { index, size, hash })
    }
}

/// The tree hash of a root list.
pub fn tree_hash(roots: &[Node]) -> Hash {
    crypto::tree_hash(roots.iter().map(|r| (r.index, r.size, &r.hash)))
}

/// The length (in blocks) that a root list describes.
pub fn roots_length(roots: &[Node]) -> u64 {
    roots.last().map(|r| (flat::right_span(r.index) + 2) / 2).unwrap_or(0)
}

/// A tree being grown from a starting root list: new leaves or roots are appended and every
/// parent they complete is computed and remembered, so it can be stored.
#[derive(Debug, Clone)]
pub struct TreeBatch {
    pub roots: Vec<Node>,
    pub length: u64,
    pub byte_length: u64,
    pub fork: u64,
    /// Every node created or received while growing, to be stored.
    pub nodes: Vec<Node>,
}

impl TreeBatch {
    pub fn new(roots: Vec<Node>, fork: u64) -> Self {
        let length = roots_length(&roots);
        let byte_length = roots.iter().map(|r| r.size).sum();
        TreeBatch { roots, length, byte_length, fork, nodes: Vec::new() }
    }

    pub fn hash(&self) -> Hash {
        tree_hash(&self.roots)
    }

    /// Appends a block's leaf.
    pub fn append_leaf(&mut self, leaf: Node) {
        let it = Iter::new(leaf.index);
        self.append_root(leaf, it);
    }

    /// Appends a full subtree root positioned at `it`, merging completed siblings into parents.
    pub fn append_root(&mut self, node: Node, mut it: Iter) {
        self.length += it.factor / 2;
        self.byte_length += node.size;
        self.roots.push(node);
        self.nodes.push(node);
        while self.roots.len() > 1 {
            let a = self.roots[self.roots.len() - 1];
            let b = self.roots[self.roots.len() - 2];
            if it.sibling() != b.index {
                it.sibling();
                break;
            }
            let p = Node::parent(it.parent(), &a, &b);
            self.nodes.push(p);
            self.roots.truncate(self.roots.len() - 2);
            self.roots.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vector_tree_hash() {
        let mut b = TreeBatch::new(vec![], 0);
        for (i, d) in [&b"hello"[..], b"world", b"!"].iter().enumerate() {
            b.append_leaf(Node::leaf(i as u64, d));
        }
        assert_eq!(b.roots.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(b.length, 3);
        assert_eq!(b.byte_length, 11);
        assert_eq!(hex::encode(b.roots[0].hash), "56826d33f98cbe1757d804b3ad818a97b61d7ae83d505ba5ca4fb619646355f9");
        assert_eq!(hex::encode(b.hash()), "8b512f5301c09f0e0e21a0c71c98fce14ddcc51125f4dfd8303fa22c75858aff");
    }
}
