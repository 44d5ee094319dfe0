//! Three members of one multi-writer drive, each with its own drive in one store, holding the
//! others' drives as of their last sync (frozen copies): what each writes, and the one tree all
//! of them hold once they have synced.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::crypto::KeyPair;
use crate::store::{MemStore, Store};

/// `n` members (the first the founder, who adds the others), each holding nothing of the
/// others yet.
fn members(n: u8) -> Vec<MultiDrive> {
    let mut all = strangers(n);
    for i in 1..n as usize {
        let w = all[i].writer();
        all[0].add_member(w, &format!("member {i}")).expect("add");
    }
    all
}

/// `n` drives of one multi-writer drive made by the first, none added yet.
fn strangers(n: u8) -> Vec<MultiDrive> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let drives: Vec<Drive> =
        (0..n).map(|i| Drive::create(store.clone(), KeyPair::from_seed(&[i + 1; 32])).expect("drive")).collect();
    let copies: Vec<Drive> = drives.iter().map(Drive::frozen_copy).collect();
    let founder = Writer(drives[0].key().0);
    drives
        .into_iter()
        .enumerate()
        .map(|(i, own)| {
            let others = copies.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, d)| d.frozen_copy()).collect();
            MultiDrive::new(founder, own, others)
        })
        .collect()
}

/// Member `a` takes in what member `b` holds: `b`'s own drive and the others as `b` has them,
/// where that is further than `a`'s.
fn sync(all: &mut [MultiDrive], a: usize, b: usize) {
    let theirs: Vec<Drive> = all[b].drives().map(Drive::frozen_copy).collect();
    let me = all[a].writer();
    for d in theirs {
        if d.key().0 == me.0 {
            continue;
        }
        let slot = all[a].others_mut().iter_mut().find(|o| o.key() == d.key()).expect("a member");
        if d.db().version() > slot.db().version() {
            *slot = d;
        }
    }
}

fn sync_all(all: &mut [MultiDrive]) {
    for _ in 0..2 {
        for a in 0..all.len() {
            for b in 0..all.len() {
                if a != b {
                    sync(all, a, b);
                }
            }
        }
    }
}

fn at(mtime_ms: u64) -> PutOptions {
    PutOptions { executable: false, metadata: Some(serde_json::json!({ "mtime": mtime_ms })) }
}

/// Each member's tree as paths, bytes and whether a conflict copy.
fn contents(m: &MultiDrive) -> BTreeMap<String, (Vec<u8>, bool)> {
    m.tree()
        .expect("tree")
        .into_iter()
        .map(|(p, h)| {
            let bytes = m.content(&h).expect("content");
            (p, (bytes, h.conflict))
        })
        .collect()
}

fn same_everywhere(all: &[MultiDrive]) -> BTreeMap<String, (Vec<u8>, bool)> {
    let first = contents(&all[0]);
    for m in &all[1..] {
        assert_eq!(contents(m), first, "members differ");
    }
    // What each member read bit by bit is what reading every log afresh gives.
    for m in all {
        let fresh = MultiDrive::new(m.founder, m.own.frozen_copy(), m.others.iter().map(Drive::frozen_copy).collect());
        assert_eq!(contents(&fresh), first, "a merge read in steps differs from one read at once");
    }
    first
}

#[test]
fn three_members_write_and_converge_on_one_tree() {
    let mut all = members(3);
    sync_all(&mut all);
    for (i, m) in all.iter_mut().enumerate() {
        m.put(&format!("/from-{i}.txt"), format!("written by {i}").as_bytes(), &at(1_000)).expect("put");
    }
    sync_all(&mut all);
    let tree = same_everywhere(&all);
    assert_eq!(tree.len(), 3);
    assert_eq!(tree["/from-1.txt"], (b"written by 1".to_vec(), false));
    // Each member's own drive is an ordinary drive holding what it wrote.
    assert_eq!(all[2].own().get("/from-2.txt").expect("get"), Some(b"written by 2".to_vec()));
    assert_eq!(all[2].own().get("/from-1.txt").expect("get"), None);
}

#[test]
fn an_edit_on_two_members_apart_keeps_both_and_a_delete_loses_to_a_modify() {
    let mut all = members(3);
    sync_all(&mut all);
    all[0].put("/notes.md", b"first", &at(1_000)).expect("put");
    sync_all(&mut all);
    // Apart: member 1 edits later (by mtime) than member 2; member 0 deletes.
    all[1].put("/notes.md", b"from one", &at(3_000)).expect("put");
    all[2].put("/notes.md", b"from two", &at(2_000)).expect("put");
    sync_all(&mut all);
    let tree = same_everywhere(&all);
    let copy = super::super::merge::conflict_name("/notes.md", 2_000, &all[2].writer());
    assert_eq!(tree["/notes.md"], (b"from one".to_vec(), false));
    assert_eq!(tree[&copy], (b"from two".to_vec(), true));
    assert_eq!(tree.len(), 2);

    all[0].put("/gone-or-not", b"v1", &at(1_000)).expect("put");
    sync_all(&mut all);
    assert!(all[0].delete("/gone-or-not").expect("delete"));
    all[1].put("/gone-or-not", b"v2", &at(1_500)).expect("put");
    sync_all(&mut all);
    assert_eq!(same_everywhere(&all)["/gone-or-not"], (b"v2".to_vec(), false), "the modify wins");
    // A delete that saw the modify takes it away, on every member.
    assert!(all[2].delete("/gone-or-not").expect("delete"));
    sync_all(&mut all);
    assert!(!same_everywhere(&all).contains_key("/gone-or-not"));
}

#[test]
fn a_rename_of_another_members_file_moves_its_content() {
    let mut all = members(2);
    sync_all(&mut all);
    all[0].put("/a/old.bin", &[7u8; 100_000], &at(1_000)).expect("put");
    sync_all(&mut all);
    all[1].rename("/a/old.bin", "/b/new.bin").expect("rename");
    sync_all(&mut all);
    let tree = same_everywhere(&all);
    assert_eq!(tree.keys().collect::<Vec<_>>(), vec!["/b/new.bin"]);
    assert_eq!(tree["/b/new.bin"].0, vec![7u8; 100_000]);
    // Member 0's own drive still has the old file: its bytes are where they were.
    assert!(all[0].own().exists("/a/old.bin").expect("exists"));
}

#[test]
fn only_members_write_and_a_removed_member_s_later_writes_are_not_taken() {
    let mut all = strangers(3);
    all[1].put("/uninvited", b"x", &at(1_000)).expect("put");
    sync_all(&mut all);
    assert!(same_everywhere(&all).is_empty(), "a writer nobody added is not taken");
    let (one, two) = (all[1].writer(), all[2].writer());
    all[0].add_member(one, "laptop").expect("add");
    sync_all(&mut all);
    assert_eq!(same_everywhere(&all).keys().collect::<Vec<_>>(), vec!["/uninvited"]);
    // A member adds another.
    all[1].add_member(two, "desktop").expect("add");
    all[2].put("/from-two", b"y", &at(1_000)).expect("put");
    sync_all(&mut all);
    let names: Vec<String> = all[2].members().expect("members").into_iter().map(|(_, n)| n).collect();
    assert_eq!(names.len(), 3);
    assert!(names.contains(&"laptop".to_owned()) && names.contains(&"desktop".to_owned()), "{names:?}");
    assert_eq!(same_everywhere(&all).len(), 2);

    // Removed: what it wrote before stays, what it writes after is not taken.
    all[0].remove_member(two).expect("remove");
    all[2].put("/after-removal", b"z", &at(9_000)).expect("put");
    all[2].delete("/uninvited").expect("delete");
    sync_all(&mut all);
    let tree = same_everywhere(&all);
    assert_eq!(tree.keys().collect::<Vec<_>>(), vec!["/from-two", "/uninvited"]);
    assert_eq!(all[0].members().expect("members").len(), 2);
}

/// The files an ordinary reader of a member's own drive sees.
fn files(d: &Drive) -> BTreeMap<String, Vec<u8>> {
    d.list("/").expect("list").into_iter().map(|(p, _)| (p.clone(), d.get(&p).expect("get").expect("bytes"))).collect()
}

/// Changes made through the member's drive itself, as a mount or `put` makes them, then closed.
fn close(m: &mut MultiDrive) {
    let tail = closing(&m.own, &Clock::default()).expect("closing").expect("changes open");
    m.own.apply_with(&[], &tail).expect("close");
    assert_eq!(closing(&m.own, &Clock::default()).expect("closing"), None, "closed");
}

#[test]
fn each_member_s_drive_shows_the_merged_tree_and_edits_made_in_it_are_changes() {
    let mut all = members(3);
    sync_all(&mut all);
    all[0].put("/a.txt", b"from zero", &at(1_000)).expect("put");
    all[1].put("/b/b.txt", b"from one", &at(1_000)).expect("put");
    sync_all(&mut all);
    for m in all.iter_mut() {
        m.show().expect("show");
    }
    let both =
        BTreeMap::from([("/a.txt".to_owned(), b"from zero".to_vec()), ("/b/b.txt".to_owned(), b"from one".to_vec())]);
    for m in &all {
        assert_eq!(files(m.own()), both);
    }
    // Showing the tree is no change: the merge is what it was, and nothing is left to show.
    sync_all(&mut all);
    assert_eq!(same_everywhere(&all).len(), 2);
    for m in all.iter_mut() {
        assert_eq!(m.show().expect("show"), 0);
    }

    // Edits through member 2's own drive (a new file, another member's file deleted), closed.
    let meta = at(2_000);
    all[2].own.put("/c.txt", b"from two", &meta).expect("put");
    assert!(all[2].own.del("/a.txt").expect("del"));
    close(&mut all[2]);
    sync_all(&mut all);
    for m in all.iter_mut() {
        m.show().expect("show");
    }
    let now =
        BTreeMap::from([("/b/b.txt".to_owned(), b"from one".to_vec()), ("/c.txt".to_owned(), b"from two".to_vec())]);
    for m in &all {
        assert_eq!(files(m.own()), now);
    }
    assert_eq!(same_everywhere(&all).len(), 2);

    // The same file edited in two members' drives apart: both drives then hold the winner and
    // the conflict copy, with the same bytes.
    all[0].own.put("/b/b.txt", b"zero's edit", &at(5_000)).expect("put");
    close(&mut all[0]);
    all[1].own.put("/b/b.txt", b"one's edit", &at(4_000)).expect("put");
    close(&mut all[1]);
    sync_all(&mut all);
    for m in all.iter_mut() {
        m.show().expect("show");
    }
    let copy = super::super::merge::conflict_name("/b/b.txt", 4_000, &all[1].writer());
    let shown = files(all[0].own());
    assert_eq!(shown["/b/b.txt"], b"zero's edit");
    assert_eq!(shown[&copy], b"one's edit");
    for m in &all[1..] {
        assert_eq!(files(m.own()), shown);
    }

    // A member started afresh (nothing noted of what it copied) finds its drive shows the tree.
    let m = &all[1];
    let fresh = MultiDrive::new(m.founder, m.own.frozen_copy(), m.others.iter().map(Drive::frozen_copy).collect());
    assert_eq!(fresh.view_steps().expect("steps").0, Vec::new());
}

#[test]
fn a_path_no_drive_can_hold_is_not_shown() {
    let mut all = members(2);
    // Member 1 writes a hostile key straight into its db, closed as a change.
    let entry = Entry { executable: false, linkname: None, blob: None, metadata: None };
    let mut b = all[1].own.db_mut().batch();
    b.put(b"files\0/../escape", &entry.encode()).expect("put");
    b.flush().expect("flush");
    close(&mut all[1]);
    all[1].put("/fine", b"ok", &at(1)).expect("put");
    sync_all(&mut all);
    assert!(contents(&all[0]).contains_key("/../escape"), "the merge holds it");
    all[0].show().expect("show");
    assert_eq!(files(all[0].own()).into_keys().collect::<Vec<_>>(), vec!["/fine"]);
}

#[test]
fn a_change_that_arrived_without_its_marker_is_not_seen() {
    let mut all = members(2);
    sync_all(&mut all);
    // Member 1's put through its drive, copied to member 0 before the marker closing it.
    all[1].own.put("/x.txt", b"not closed yet", &at(1_000)).expect("put");
    let put_at = all[1].own.db().version() - 1;
    sync_all(&mut all);
    let one = all[1].writer();
    let (steps, clock) = all[0].view_steps().expect("steps");
    assert_eq!(steps, Vec::new(), "nothing to show yet");
    assert!(clock.get(&one) <= put_at, "member 0's next change would be after a put it never showed");
    close(&mut all[1]);
    sync_all(&mut all);
    let (steps, clock) = all[0].view_steps().expect("steps");
    assert_eq!(steps.len(), 1);
    assert!(clock.get(&one) > put_at);
}

#[test]
fn empty_folders_made_and_removed_in_one_member_s_drive_show_on_the_others() {
    let mut all = members(2);
    sync_all(&mut all);
    let meta = Some(serde_json::json!({ "mode": 0o40750, "mtime": 1_000 }));
    all[0].own.mkdir("/empty/inner", meta.clone()).expect("mkdir");
    close(&mut all[0]);
    sync_all(&mut all);
    all[1].show().expect("show");
    let dirs = |m: &MultiDrive| m.own().view().list_dirs("/").expect("dirs");
    assert_eq!(
        dirs(&all[1]),
        vec![("/empty/inner".to_owned(), Entry { executable: false, linkname: None, blob: None, metadata: meta })]
    );
    assert!(all[1].own().is_dir("/empty").expect("is_dir"));
    // Removed on the other member: gone on both.
    assert!(all[1].own.rmdir("/empty/inner").expect("rmdir"));
    close(&mut all[1]);
    sync_all(&mut all);
    all[0].show().expect("show");
    assert_eq!(dirs(&all[0]), Vec::new());
    assert_eq!(all[0].show().expect("show"), 0);
}

#[test]
fn a_file_a_member_names_but_does_not_give_is_left_out_and_not_counted_as_seen() {
    let mut all = members(2);
    sync_all(&mut all);
    // Member 1 names blobs blocks its blobs core does not have, beside a good file.
    let blob =
        super::super::Blob { block_offset: 1_000, byte_offset: 0, block_length: 1, byte_length: 10, block_map: false };
    let entry = Entry { executable: false, linkname: None, blob: Some(blob), metadata: None };
    let mut b = all[1].own.db_mut().batch();
    b.put(b"files\0/missing.bin", &entry.encode()).expect("put");
    b.flush().expect("flush");
    let bad_at = all[1].own.db().version() - 1;
    close(&mut all[1]);
    all[1].put("/fine.txt", b"here", &at(1)).expect("put");
    sync_all(&mut all);
    let (steps, clock) = all[0].view_steps().expect("steps");
    assert_eq!(steps.len(), 2);
    let view = all[0].prepare_view(steps).expect("prepare");
    assert_eq!(view.skipped.len(), 1);
    let one = all[1].writer();
    assert!(clock.get(&one) > bad_at && view.seen(&clock).get(&one) <= bad_at);
    // The rest shows.
    assert_eq!(all[0].show().expect("show"), 2);
    assert_eq!(files(all[0].own()).into_keys().collect::<Vec<_>>(), vec!["/fine.txt"]);
}

#[test]
fn no_view_is_worked_out_over_edits_not_closed() {
    let mut all = members(2);
    sync_all(&mut all);
    all[0].own.put("/fresh.txt", b"just saved", &at(1)).expect("put");
    assert!(all[0].view_steps().is_err(), "a view would have deleted the fresh file");
    close(&mut all[0]);
    assert_eq!(all[0].show().expect("show"), 0);
    assert_eq!(files(all[0].own()).into_keys().collect::<Vec<_>>(), vec!["/fresh.txt"]);
}
