//! Writing: puts and deletes on the copy-on-write tree, in batches.
//!
//! This is a port of JS Hyperbee 2's write path, kept close to its shape on purpose: the bytes
//! of a block depend on which tree nodes an operation marks changed, on the pre-order in which
//! changed nodes are numbered, and — inside a batch — on JS's object identity, because later
//! operations re-index nodes of earlier blocks in place and `toBlocks` then drops and reorders
//! the entries of earlier blocks. Nodes and child slots therefore live in arenas and are shared
//! by index exactly where JS shares objects by reference.

use std::cmp::Ordering;
use std::sync::Arc;

use super::messages::{encode_index, encode_node};
use super::{malformed, Hyperbee, Level, Loader, NodeBlock, MAX_DEPTH};
use crate::Result;

/// B-tree order: a node holds at most `MAX_CHILDREN - 1` keys and, below the root, at least
/// `MIN_KEYS`.
const T: usize = 5;
const MIN_KEYS: usize = T - 1;
const MAX_CHILDREN: usize = MIN_KEYS * 2 + 1;

type NodeId = usize;
type SlotId = usize;

/// A tree node being edited (JS `TreeNode`): keys are block seqs.
struct WNode {
    keys: Vec<u64>,
    children: Vec<SlotId>,
    changed: bool,
}

/// A pointer to a child (JS `Child`): where it is stored, and the node once loaded.
struct Slot {
    seq: u64,
    offset: u64,
    node: Option<NodeId>,
}

/// A block of this batch not yet appended (JS `BatchEntry`).
struct Pending {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    index: Vec<Option<SlotId>>,
}

/// Writes to a bee, appended together (one core append, one signature) by [`Batch::flush`].
/// Dropping a batch without flushing discards its writes.
pub struct Batch<'a> {
    bee: &'a mut Hyperbee,
    nodes: Vec<WNode>,
    slots: Vec<Slot>,
    pending: Vec<Pending>,
    /// Core length when the first pending block was made: pending block i has seq base + i.
    base: u64,
    /// The key of the operation in progress, whose block is not pending yet.
    op_key: Vec<u8>,
}

impl<'a> Batch<'a> {
    pub(super) fn new(bee: &'a mut Hyperbee) -> Self {
        let base = bee.core.length();
        Batch { bee, nodes: Vec::new(), slots: Vec::new(), pending: Vec::new(), base, op_key: Vec::new() }
    }

    /// How many blocks this batch will append.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sets `key` to `value` (one block, even when the value is unchanged, as JS does).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let seq = self.start_op(key)?;
        let root = match self.root()? {
            Some(r) => r,
            None => self.new_node(),
        };
        let mut node = root;
        let mut stack = Vec::new();
        while !self.nodes[node].children.is_empty() {
            if stack.len() >= MAX_DEPTH {
                return Err(malformed("a tree deeper than any real one"));
            }
            stack.push(node);
            self.nodes[node].changed = true;
            match self.search(node, key)? {
                Ok(mid) => {
                    self.nodes[node].keys[mid] = seq;
                    self.nodes[node].changed = true;
                    self.append(root, seq, key, Some(value));
                    return Ok(());
                }
                Err(i) => node = self.child(node, i)?,
            }
        }

        let mut root = root;
        let mut needs_split = !self.insert_key(node, seq, None, key)?;
        while needs_split {
            let (median, right) = self.split(node);
            match stack.pop() {
                Some(parent) => {
                    let median_key = self.key_bytes(median)?;
                    needs_split = !self.insert_key(parent, median, Some(right), &median_key)?;
                    node = parent;
                }
                None => {
                    root = self.new_node();
                    let (l, r) = (self.new_slot(node), self.new_slot(right));
                    self.nodes[root].keys.push(median);
                    self.nodes[root].children.extend([l, r]);
                    needs_split = false;
                }
            }
        }
        self.append(root, seq, key, Some(value));
        Ok(())
    }

    /// Deletes `key`; returns whether it was present. A missing key writes nothing.
    pub fn del(&mut self, key: &[u8]) -> Result<bool> {
        let seq = self.start_op(key)?;
        let Some(root) = self.root()? else { return Ok(false) };
        let mut stack = Vec::new();
        let mut node = root;
        loop {
            if stack.len() >= MAX_DEPTH {
                return Err(malformed("a tree deeper than any real one"));
            }
            stack.push(node);
            match self.search(node, key)? {
                Ok(mid) => {
                    if self.nodes[node].children.is_empty() {
                        self.remove_key(node, mid);
                    } else {
                        self.set_key_to_nearest_leaf(node, mid, &mut stack)?;
                    }
                    // Marked late so that a delete of a missing key rewrites nothing.
                    for &n in &stack {
                        self.nodes[n].changed = true;
                    }
                    let root = self.rebalance(&mut stack)?;
                    self.append(root, seq, key, None);
                    return Ok(true);
                }
                Err(i) => {
                    if self.nodes[node].children.is_empty() {
                        return Ok(false);
                    }
                    node = self.child(node, i)?;
                }
            }
        }
    }

    /// Appends the batch's blocks to the core in one append.
    pub fn flush(mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let blocks = self.encode_pending();
        let decoded: Vec<_> = blocks.iter().map(|(_, node)| node.clone()).collect();
        let raw: Vec<Vec<u8>> = blocks.into_iter().map(|(raw, _)| raw).collect();
        self.bee.core.append_atomic(&raw)?;
        let loader = Loader { blocks: &self.bee.core, fetch: None, cache: &self.bee.cache };
        for (i, node) in decoded.into_iter().enumerate() {
            loader.remember(self.base + i as u64, node);
        }
        Ok(())
    }

    /// Writes the header if the core is empty and fixes the seq the next operation gets.
    fn start_op(&mut self, key: &[u8]) -> Result<u64> {
        self.bee.ensure_header()?;
        if self.pending.is_empty() {
            self.base = self.bee.core.length();
        }
        self.op_key.clear();
        self.op_key.extend_from_slice(key);
        Ok(self.base + self.pending.len() as u64)
    }

    fn loader(&self) -> Loader<'_> {
        Loader { blocks: &self.bee.core, fetch: self.bee.fetch.as_deref(), cache: &self.bee.cache }
    }

    /// The root the next operation starts from: the last pending block's, else the stored one.
    fn root(&mut self) -> Result<Option<NodeId>> {
        if let Some(p) = self.pending.last() {
            let slot = p.index.first().copied().flatten().ok_or_else(|| malformed("a pending block without a root"))?;
            return self.slots[slot].node.map(Some).ok_or_else(|| malformed("a pending root not in memory"));
        }
        let version = self.bee.version();
        if version < 2 {
            return Ok(None);
        }
        self.load(version - 1, 0).map(Some)
    }

    fn load(&mut self, seq: u64, offset: u64) -> Result<NodeId> {
        let block = self.loader().node(seq)?;
        let level = usize::try_from(offset)
            .ok()
            .and_then(|o| block.levels.get(o))
            .ok_or_else(|| malformed("a pointer to a level its block does not have"))?;
        let children = level
            .children
            .iter()
            .map(|&(seq, offset)| {
                self.slots.push(Slot { seq, offset, node: None });
                self.slots.len() - 1
            })
            .collect();
        self.nodes.push(WNode { keys: level.keys.clone(), children, changed: false });
        Ok(self.nodes.len() - 1)
    }

    fn new_node(&mut self) -> NodeId {
        self.nodes.push(WNode { keys: Vec::new(), children: Vec::new(), changed: true });
        self.nodes.len() - 1
    }

    fn new_slot(&mut self, node: NodeId) -> SlotId {
        self.slots.push(Slot { seq: 0, offset: 0, node: Some(node) });
        self.slots.len() - 1
    }

    fn child(&mut self, node: NodeId, i: usize) -> Result<NodeId> {
        let slot = *self.nodes[node].children.get(i).ok_or_else(|| malformed("a child slot a node does not have"))?;
        if let Some(n) = self.slots[slot].node {
            return Ok(n);
        }
        let Slot { seq, offset, .. } = self.slots[slot];
        if seq >= self.base && !self.pending.is_empty() {
            return Err(malformed("a pointer into a pending block that is not in memory"));
        }
        let n = self.load(seq, offset)?;
        self.slots[slot].node = Some(n);
        Ok(n)
    }

    fn key_bytes(&self, seq: u64) -> Result<Vec<u8>> {
        self.with_key(seq, <[u8]>::to_vec)
    }

    fn compare(&self, key: &[u8], seq: u64) -> Result<Ordering> {
        self.with_key(seq, |k| key.cmp(k))
    }

    /// Calls `f` with the key of block `seq`: pending, in progress, or stored.
    fn with_key<R>(&self, seq: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        if seq >= self.base {
            let i = (seq - self.base) as usize;
            if let Some(p) = self.pending.get(i) {
                return Ok(f(&p.key));
            }
            if i == self.pending.len() {
                return Ok(f(&self.op_key));
            }
        }
        Ok(f(&self.loader().node(seq)?.key))
    }

    fn search(&self, node: NodeId, key: &[u8]) -> Result<std::result::Result<usize, usize>> {
        let keys = &self.nodes[node].keys;
        let (mut s, mut e) = (0, keys.len());
        while s < e {
            let mid = (s + e) >> 1;
            match self.compare(key, keys[mid])? {
                Ordering::Equal => return Ok(Ok(mid)),
                Ordering::Less => e = mid,
                Ordering::Greater => s = mid + 1,
            }
        }
        Ok(Err(s))
    }

    /// JS `insertKey`: replaces an equal key or inserts (with `child` right of it); false when
    /// the node is now full and must split.
    fn insert_key(&mut self, node: NodeId, seq: u64, child: Option<NodeId>, key: &[u8]) -> Result<bool> {
        match self.search(node, key)? {
            Ok(mid) => {
                self.nodes[node].keys[mid] = seq;
                self.nodes[node].changed = true;
                Ok(true)
            }
            Err(i) => {
                self.nodes[node].keys.insert(i, seq);
                if let Some(c) = child {
                    let slot = self.new_slot(c);
                    self.nodes[node].children.insert(i + 1, slot);
                }
                self.nodes[node].changed = true;
                Ok(self.nodes[node].keys.len() < MAX_CHILDREN)
            }
        }
    }

    /// JS `split`: the node keeps the lower half, returns the median and a new right node.
    fn split(&mut self, node: NodeId) -> (u64, NodeId) {
        let right = self.new_node();
        let n = &mut self.nodes[node];
        let len = n.keys.len() >> 1;
        let right_keys = n.keys.split_off(n.keys.len() - len);
        let median = n.keys.pop().expect("a node that splits has 2·len + 1 keys");
        let right_children =
            if n.children.is_empty() { Vec::new() } else { n.children.split_off(n.children.len() - (len + 1)) };
        n.changed = true;
        self.nodes[right].keys = right_keys;
        self.nodes[right].children = right_children;
        (median, right)
    }

    fn remove_key(&mut self, node: NodeId, index: usize) {
        let n = &mut self.nodes[node];
        n.keys.remove(index);
        if !n.children.is_empty() {
            let freed = n.children.remove(index + 1);
            self.slots[freed].seq = 0;
        }
        self.nodes[node].changed = true;
    }

    fn leaf_size(&mut self, mut node: NodeId, go_left: bool) -> Result<usize> {
        for _ in 0..MAX_DEPTH {
            let len = self.nodes[node].children.len();
            if len == 0 {
                return Ok(self.nodes[node].keys.len());
            }
            node = self.child(node, if go_left { 0 } else { len - 1 })?;
        }
        Err(malformed("a tree deeper than any real one"))
    }

    /// JS `setKeyToNearestLeaf`: replaces an inner key by its in-order neighbour from the
    /// fuller of the two adjacent leaves (the successor only when strictly fuller).
    fn set_key_to_nearest_leaf(&mut self, node: NodeId, index: usize, stack: &mut Vec<NodeId>) -> Result<()> {
        let mut left = self.child(node, index)?;
        let mut right = self.child(node, index + 1)?;
        let ls = self.leaf_size(left, false)?;
        let rs = self.leaf_size(right, true)?;
        if ls < rs {
            stack.push(right);
            while !self.nodes[right].children.is_empty() {
                right = self.child(right, 0)?;
                stack.push(right);
            }
            if self.nodes[right].keys.is_empty() {
                return Err(malformed("an empty leaf"));
            }
            self.nodes[node].keys[index] = self.nodes[right].keys.remove(0);
        } else {
            stack.push(left);
            while !self.nodes[left].children.is_empty() {
                let last = self.nodes[left].children.len() - 1;
                left = self.child(left, last)?;
                stack.push(left);
            }
            let k = self.nodes[left].keys.pop().ok_or_else(|| malformed("an empty leaf"))?;
            self.nodes[node].keys[index] = k;
        }
        Ok(())
    }

    /// JS `rebalance`: walking up, an underfull node borrows from a sibling with keys to spare
    /// (left first) or merges with one; an emptied root gives way to its only child.
    fn rebalance(&mut self, stack: &mut Vec<NodeId>) -> Result<NodeId> {
        let root = stack[0];
        while stack.len() > 1 {
            let node = stack.pop().expect("stack has more than one node");
            let parent = *stack.last().expect("stack has a parent");
            if self.nodes[node].keys.len() >= MIN_KEYS {
                return Ok(root);
            }
            let siblings = &self.nodes[parent].children;
            let index = siblings
                .iter()
                .position(|&s| self.slots[s].node == Some(node))
                .ok_or_else(|| malformed("a node missing from its parent"))?;
            let count = siblings.len();
            let left = if index > 0 { Some(self.child(parent, index - 1)?) } else { None };
            let right = if index + 1 < count { Some(self.child(parent, index + 1)?) } else { None };

            if let Some(left) = left.filter(|&l| self.nodes[l].keys.len() > MIN_KEYS) {
                self.nodes[left].changed = true;
                let sep = self.nodes[parent].keys[index - 1];
                self.nodes[node].keys.insert(0, sep);
                if let Some(c) = self.nodes[left].children.pop() {
                    self.nodes[node].children.insert(0, c);
                }
                let k = self.nodes[left].keys.pop().ok_or_else(|| malformed("an empty sibling"))?;
                self.nodes[parent].keys[index - 1] = k;
                return Ok(root);
            }
            if let Some(right) = right.filter(|&r| self.nodes[r].keys.len() > MIN_KEYS) {
                self.nodes[right].changed = true;
                let sep = *self.nodes[parent].keys.get(index).ok_or_else(|| malformed("a missing separator"))?;
                self.nodes[node].keys.push(sep);
                if !self.nodes[right].children.is_empty() {
                    let c = self.nodes[right].children.remove(0);
                    self.nodes[node].children.push(c);
                }
                if self.nodes[right].keys.is_empty() {
                    return Err(malformed("an empty sibling"));
                }
                self.nodes[parent].keys[index] = self.nodes[right].keys.remove(0);
                return Ok(root);
            }

            let (left, right, index) = match (left, right) {
                (Some(l), _) => (l, node, index - 1),
                (None, Some(r)) => (node, r, index),
                (None, None) => return Err(malformed("an inner node with one child")),
            };
            let median = *self.nodes[parent].keys.get(index).ok_or_else(|| malformed("a missing separator"))?;
            let (keys, children) = (self.nodes[right].keys.clone(), self.nodes[right].children.clone());
            let l = &mut self.nodes[left];
            l.changed = true;
            l.keys.push(median);
            l.keys.extend(keys);
            l.children.extend(children);
            self.remove_key(parent, index);
        }
        if self.nodes[root].keys.is_empty() && !self.nodes[root].children.is_empty() {
            return self.child(root, 0);
        }
        Ok(root)
    }

    /// JS `_append` for a batch: numbers the changed nodes in pre-order into a new pending block.
    fn append(&mut self, root: NodeId, seq: u64, key: &[u8], value: Option<&[u8]>) {
        let mut index = Vec::new();
        self.index_changes(root, &mut index, seq);
        self.slots.push(Slot { seq, offset: 0, node: Some(root) });
        index[0] = Some(self.slots.len() - 1);
        self.pending.push(Pending { key: key.to_vec(), value: value.map(<[u8]>::to_vec), index });
    }

    fn index_changes(&mut self, node: NodeId, index: &mut Vec<Option<SlotId>>, seq: u64) -> u64 {
        let offset = index.len();
        index.push(None);
        self.nodes[node].changed = false;
        for i in 0..self.nodes[node].children.len() {
            let slot = self.nodes[node].children[i];
            let Some(child) = self.slots[slot].node else { continue };
            if !self.nodes[child].changed {
                continue;
            }
            self.slots[slot].seq = seq;
            let o = self.index_changes(child, index, seq);
            self.slots[slot].offset = o;
            index[o as usize] = Some(slot);
        }
        offset as u64
    }

    /// JS `toBlocks`: every pending block but the last keeps only the entries still pointing at
    /// it (renumbered, with JS's swap-remove order), then each is encoded.
    fn encode_pending(&mut self) -> Vec<(Vec<u8>, Arc<NodeBlock>)> {
        let count = self.pending.len();
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let seq = self.base + i as u64;
            let mut index = std::mem::take(&mut self.pending[i].index);
            if i + 1 < count {
                index[0] = None;
                let mut j = 0;
                while j < index.len() {
                    if let Some(slot) = index[j] {
                        if self.slots[slot].seq == seq {
                            self.slots[slot].offset = j as u64;
                            j += 1;
                            continue;
                        }
                    }
                    let last = index.pop().expect("j < len");
                    if j < index.len() {
                        index[j] = last;
                    }
                }
            }
            let levels: Vec<Level> = index
                .iter()
                .map(|slot| {
                    let node = slot.and_then(|s| self.slots[s].node).map(|n| &self.nodes[n]);
                    match node {
                        Some(n) => Level {
                            keys: n.keys.clone(),
                            children: n.children.iter().map(|&c| (self.slots[c].seq, self.slots[c].offset)).collect(),
                        },
                        None => Level::default(),
                    }
                })
                .collect();
            let p = &self.pending[i];
            let raw = encode_node(&encode_index(&levels), &p.key, p.value.as_deref());
            out.push((raw, Arc::new(NodeBlock { key: p.key.clone(), value: p.value.clone(), levels })));
            self.pending[i].index = index;
        }
        out
    }
}
