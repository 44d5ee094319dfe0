//! A member log written as the format says, read back as changes and merged.

use std::sync::Arc;

use super::*;
use crate::crypto::KeyPair;
use crate::drive::merge::Merge;
use crate::hyperbee::{HistoryRange, Hyperbee};
use crate::hypercore::Hypercore;
use crate::store::{MemStore, Store};

fn bee(seed: u8) -> Hyperbee {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    Hyperbee::new(Hypercore::create(store, KeyPair::from_seed(&[seed; 32]), false).expect("create"))
}

fn file(mtime_ms: u64) -> Entry {
    Entry { executable: false, linkname: None, blob: None, metadata: Some(serde_json::json!({ "mtime": mtime_ms })) }
}

/// One batch: `ops` (a key and a value, or `None` to delete the key) and the clock marker.
fn batch(b: &mut Hyperbee, ops: &[(Vec<u8>, Option<Vec<u8>>)], clock: &Clock) {
    let mut batch = b.batch();
    for (k, v) in ops {
        match v {
            Some(v) => batch.put(k, v).expect("put"),
            None => {
                batch.del(k).expect("del");
            }
        }
    }
    batch.put(CLOCK, &encode_clock(clock)).expect("clock");
    batch.flush().expect("flush");
}

fn key(prefix: &[u8], rest: &str) -> Vec<u8> {
    [prefix, rest.as_bytes()].concat()
}

fn history(b: &Hyperbee) -> Vec<HistoryEntry> {
    b.view().history(&HistoryRange::default()).map(|e| e.expect("history")).collect()
}

#[test]
fn a_member_log_reads_back_as_changes_with_their_batches_clocks() {
    let me = Writer(KeyPair::from_seed(&[1; 32]).public_key());
    let other = Writer([2; 32]);
    let mut b = bee(1);
    let mut clock = Clock::default();
    batch(
        &mut b,
        &[
            (key(b"files\0", "/a.txt"), Some(file(1_000).encode())),
            (key(MEMBER, &crate::crypto::to_hex(&other.0)), Some(b"laptop".to_vec())),
        ],
        &clock,
    );
    clock.set(other, 4);
    clock.set(me, b.version());
    batch(
        &mut b,
        &[
            (key(b"files\0", "/a.txt"), None),
            (key(GONE, "/a.txt"), Some(Vec::new())),
            (key(GONE, "/theirs"), Some(Vec::new())),
        ],
        &clock,
    );
    // A batch left without its marker (cut short) is not a change yet.
    b.put(&key(b"files\0", "/late"), &file(9).encode()).expect("put");

    let changes = changes(me, history(&b));
    let summary: Vec<(&str, bool, u64)> =
        changes.iter().map(|c| (c.path.as_str(), matches!(c.op, Op::Put { .. }), c.clock.get(&other))).collect();
    let member = member_path(&other);
    assert_eq!(
        summary,
        vec![("/a.txt", true, 0), (member.as_str(), true, 0), ("/a.txt", false, 4), ("/theirs", false, 4)]
    );
    assert!(matches!(&changes[0].op, Op::Put { mtime_ms: 1_000, value: Value::File(_) }));
    assert!(matches!(&changes[1].op, Op::Put { value: Value::Member(n), .. } if n == "laptop"));
    // Places are the blocks' own, in log order.
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut merge = Merge::new();
    for c in changes {
        merge.add(c);
    }
    let tree = merge.tree(|_, _| false);
    assert_eq!(tree.keys().collect::<Vec<_>>(), vec![&member], "the file was deleted; the member stays");
}

#[test]
fn a_clock_round_trips_and_junk_does_not_decode() {
    let mut clock = Clock::default();
    clock.set(Writer([1; 32]), 7);
    clock.set(Writer([2; 32]), 300);
    assert_eq!(decode_clock(&encode_clock(&clock)), Some(clock));
    assert_eq!(decode_clock(&[5, 1, 2]), None);
    let mut huge = Encoder::new();
    huge.uint(MAX_MEMBERS as u64 + 1);
    assert_eq!(decode_clock(&huge.finish()), None);
}

#[test]
fn an_undecodable_entry_drops_its_batch_and_a_bad_member_key_is_no_change() {
    let me = Writer([1; 32]);
    let mut b = bee(1);
    batch(
        &mut b,
        &[(key(b"files\0", "/bad"), Some(b"not json".to_vec())), (key(b"files\0", "/good"), Some(file(1).encode()))],
        &Clock::default(),
    );
    batch(
        &mut b,
        &[(key(MEMBER, "zz"), Some(b"x".to_vec())), (key(b"files\0", "/next"), Some(file(2).encode()))],
        &Clock::default(),
    );
    let paths: Vec<String> = changes(me, history(&b)).into_iter().map(|c| c.path).collect();
    assert_eq!(paths, vec!["/next".to_owned()]);
}

mod hostile {
    use proptest::prelude::*;

    use super::*;
    use crate::hyperbee::Entry as BeeEntry;

    /// Keys a member log may hold, and junk.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        let tail = proptest::collection::vec(any::<u8>(), 0..80);
        (0usize..6, tail).prop_map(|(k, tail)| {
            let prefix: &[u8] = [b"files\0/".as_slice(), GONE, MEMBER, REMOVED, CLOCK, b"junk"][k];
            if k == 4 {
                prefix.to_vec()
            } else {
                [prefix, &tail].concat()
            }
        })
    }

    /// Values: junk, an empty clock, or a file's entry.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), Just(vec![0]), Just(file(5).encode()),]
    }

    proptest! {
        /// Whatever another member's log holds, reading it never panics, and every change it
        /// yields sits before a marker whose clock decoded, at a place in the log it came from.
        #[test]
        fn any_log_reads_without_panicking(
            ops in proptest::collection::vec((key(), value(), any::<bool>()), 0..60)
        ) {
            let history: Vec<HistoryEntry> = ops
                .into_iter()
                .enumerate()
                .map(|(i, (key, value, deletion))| HistoryEntry { deletion, entry: BeeEntry { seq: i as u64 + 1, key, value } })
                .collect();
            let last_marker = history
                .iter()
                .filter(|h| !h.deletion && h.entry.key == CLOCK && decode_clock(&h.entry.value).is_some())
                .map(|h| h.entry.seq)
                .max();
            let (changes, _) = changes_and_next(Writer([1; 32]), history.clone());
            for c in &changes {
                prop_assert!(last_marker.is_some_and(|m| c.seq < m), "a change after the last good marker: {:?}", c.seq);
                prop_assert!(history.iter().any(|h| h.entry.seq == c.seq && !h.deletion));
            }
        }
    }
}
