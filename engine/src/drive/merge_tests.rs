//! The merge, case by case, and against a model of members writing, syncing and partitioned.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn w(i: u8) -> Writer {
    Writer([i; 32])
}

/// A member's log and what it has seen of every log (its own included).
#[derive(Debug, Clone, Default)]
struct Member {
    seen: Clock,
}

/// Members writing into one merge of everyone's changes (what each member holds is the prefix
/// of each log its clock says).
#[derive(Debug, Default)]
struct World {
    logs: BTreeMap<Writer, Vec<Change<u64>>>,
    members: Vec<(Writer, Member)>,
}

impl World {
    fn new(n: u8) -> World {
        let members = (0..n).map(|i| (w(i + 1), Member::default())).collect();
        World { logs: BTreeMap::new(), members }
    }

    /// The merge member `m` holds.
    fn merge(&self, m: usize) -> Merge<u64> {
        let seen = &self.members[m].1.seen;
        let mut merge = Merge::new();
        for (writer, log) in &self.logs {
            for c in log.iter().take(seen.get(writer) as usize) {
                merge.add(c.clone());
            }
        }
        merge
    }

    fn tree(&self, m: usize) -> BTreeMap<String, (u64, bool)> {
        let merge = self.merge(m);
        let tree = merge.tree(|a, b| a == b);
        tree.into_iter()
            .map(|(p, r)| match r.change.op {
                Op::Put { value, .. } => (p, (value, r.conflict)),
                Op::Delete => unreachable!("a tree holds puts"),
            })
            .collect()
    }

    /// Member `m` writes `op` at `path`.
    fn write(&mut self, m: usize, path: &str, op: Op<u64>) -> Change<u64> {
        let (writer, member) = &mut self.members[m];
        let log = self.logs.entry(*writer).or_default();
        let seq = log.len() as u64;
        let change = Change { writer: *writer, seq, clock: member.seen.clone(), path: path.into(), op };
        log.push(change.clone());
        member.seen.set(*writer, seq + 1);
        change
    }

    /// Member `a` takes in everything member `b` holds.
    fn sync(&mut self, a: usize, b: usize) {
        let theirs = self.members[b].1.seen.clone();
        self.members[a].1.seen.merge(&theirs);
    }
}

fn put(value: u64, mtime_ms: u64) -> Op<u64> {
    Op::Put { value, mtime_ms }
}

#[test]
fn a_change_made_after_seeing_another_wins_whatever_the_clocks_say() {
    let mut world = World::new(2);
    world.write(0, "/a.txt", put(1, 5_000));
    world.sync(1, 0);
    // B saw A's write; its mtime is older (a slow clock), and still it wins.
    world.write(1, "/a.txt", put(2, 1_000));
    world.sync(0, 1);
    assert_eq!(world.tree(0), BTreeMap::from([("/a.txt".into(), (2, false))]));
    assert_eq!(world.tree(0), world.tree(1));
}

#[test]
fn concurrent_edits_keep_one_winner_and_a_conflict_copy_named_as_syncthing_does() {
    let mut world = World::new(2);
    world.write(0, "/docs/report.txt", put(1, 1_000));
    world.sync(1, 0);
    // Apart, both edit it: A later (by mtime) than B.
    let b = world.write(1, "/docs/report.txt", put(3, 1_796_646_896_000));
    world.write(0, "/docs/report.txt", put(2, 1_796_646_897_000));
    world.sync(0, 1);
    world.sync(1, 0);
    let copy = format!("/docs/report.sync-conflict-20261207-123456-{}.txt", b.writer.short());
    let want = BTreeMap::from([("/docs/report.txt".to_owned(), (2, false)), (copy.clone(), (3, true))]);
    assert_eq!(world.tree(0), want);
    assert_eq!(world.tree(1), want);
    assert_eq!(b.writer.short().len(), 7);
    // A change that saw both edits the file again: the copy stays, as Syncthing's do…
    world.write(1, "/docs/report.txt", put(4, 1_796_646_898_000));
    world.sync(0, 1);
    let want = BTreeMap::from([("/docs/report.txt".to_owned(), (4, false)), (copy.clone(), (3, true))]);
    assert_eq!(world.tree(0), want);
    // …until a member that had seen it deletes it.
    world.write(0, &copy, Op::Delete);
    world.sync(1, 0);
    assert_eq!(world.tree(1), BTreeMap::from([("/docs/report.txt".to_owned(), (4, false))]));
    // One who had not seen it does not take it away.
    let mut apart = World::new(3);
    apart.write(0, "/f", put(1, 2_000));
    let lost = apart.write(1, "/f", put(2, 1_000));
    apart.write(2, &conflict_name("/f", 1_000, &lost.writer), Op::Delete);
    for (a, b) in [(0, 1), (0, 2), (1, 0), (2, 0)] {
        apart.sync(a, b);
    }
    assert_eq!(apart.tree(0).get(&conflict_name("/f", 1_000, &lost.writer)), Some(&(2, true)));
}

#[test]
fn conflict_names_keep_the_extension_last_and_dot_files_whole() {
    let x = w(9);
    let s = x.short();
    assert_eq!(conflict_name("/a/b.tar.gz", 0, &x), format!("/a/b.tar.sync-conflict-19700101-000000-{s}.gz"));
    assert_eq!(conflict_name("/.bashrc", 86_399_000, &x), format!("/.bashrc.sync-conflict-19700101-235959-{s}"));
    assert_eq!(conflict_name("/Makefile", 951_782_400_000, &x), format!("/Makefile.sync-conflict-20000229-000000-{s}"));
}

#[test]
fn a_modify_beats_a_concurrent_delete_and_a_delete_that_saw_the_modify_wins() {
    let mut world = World::new(2);
    world.write(0, "/f", put(1, 1_000));
    world.sync(1, 0);
    world.write(0, "/f", Op::Delete);
    world.write(1, "/f", put(2, 2_000));
    world.sync(0, 1);
    world.sync(1, 0);
    assert_eq!(world.tree(0), BTreeMap::from([("/f".into(), (2, false))]));
    assert_eq!(world.tree(1), world.tree(0));
    world.write(0, "/f", Op::Delete);
    world.sync(1, 0);
    assert!(world.tree(1).is_empty());
}

#[test]
fn the_same_content_from_two_writers_is_no_conflict() {
    let mut world = World::new(2);
    world.write(0, "/same", put(7, 1_000));
    world.write(1, "/same", put(7, 2_000));
    world.sync(0, 1);
    assert_eq!(world.tree(0), BTreeMap::from([("/same".into(), (7, false))]));
}

#[test]
fn a_removed_writers_later_changes_are_not_taken() {
    let mut world = World::new(2);
    world.write(1, "/x", put(1, 1_000));
    world.write(1, "/y", put(2, 1_000));
    world.sync(0, 1);
    let removal = world.members[0].1.seen.get(&w(2));
    world.write(1, "/x", put(3, 9_000));
    world.write(1, "/z", put(4, 9_000));
    world.sync(0, 1);
    let mut merge = world.merge(0);
    merge.ignore_from(w(2), removal);
    let tree = merge.tree(|a, b| a == b);
    let values: BTreeMap<&str, u64> = tree
        .iter()
        .map(|(p, r)| (p.as_str(), if let Op::Put { value, .. } = r.change.op { value } else { 0 }))
        .collect();
    assert_eq!(values, BTreeMap::from([("/x", 1), ("/y", 2)]));
}

/// One step of the model.
#[derive(Debug, Clone)]
enum Step {
    Put {
        member: usize,
        path: usize,
        mtime_ms: u64,
    },
    Delete {
        member: usize,
        path: usize,
    },
    Rename {
        member: usize,
        from: usize,
        to: usize,
    },
    Sync {
        a: usize,
        b: usize,
    },
    /// Members split into two groups that sync only within themselves (0: healed).
    Partition(u8),
}

const PATHS: [&str; 5] = ["/a", "/b", "/dir/c", "/dir/d.txt", "/e.md"];

fn step(members: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..members, 0..PATHS.len(), 0u64..50).prop_map(|(member, path, t)| Step::Put { member, path, mtime_ms: t * 1000 }),
        1 => (0..members, 0..PATHS.len()).prop_map(|(member, path)| Step::Delete { member, path }),
        1 => (0..members, 0..PATHS.len(), 0..PATHS.len()).prop_map(|(member, from, to)| Step::Rename { member, from, to }),
        3 => (0..members, 0..members).prop_map(|(a, b)| Step::Sync { a, b }),
        1 => (0u8..4).prop_map(Step::Partition),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random edits by three members under random partitions: once everyone has synced, every
    /// member holds the same tree, and every content any member saved is in it (at its path or
    /// in a conflict copy) or was overwritten or deleted by a change that had seen it.
    #[test]
    fn members_converge_and_lose_nothing_they_did_not_see_overwritten(
        steps in proptest::collection::vec(step(3), 1..80)
    ) {
        let mut world = World::new(3);
        let mut next = 1u64;
        let mut partition = 0u8;
        let mut saved: Vec<Change<u64>> = Vec::new();
        for s in steps {
            match s {
                Step::Put { member, path, mtime_ms } => {
                    saved.push(world.write(member, PATHS[path], put(next, mtime_ms)));
                    next += 1;
                }
                Step::Delete { member, path } => {
                    // Any path the member holds, conflict copies too.
                    let held: Vec<String> = world.tree(member).into_keys().collect();
                    if !held.is_empty() {
                        world.write(member, &held[path % held.len()], Op::Delete);
                    }
                }
                Step::Rename { member, from, to } => {
                    // A delete and a put of the same content (what a rename is here).
                    let Some(&(value, _)) = world.tree(member).get(PATHS[from]) else { continue };
                    if from != to {
                        world.write(member, PATHS[from], Op::Delete);
                        saved.push(world.write(member, PATHS[to], put(value, 60_000)));
                    }
                }
                Step::Sync { a, b } => {
                    // A partition keeps member 0 (and 1 with bit 1 set) apart from the rest.
                    let side = |m: usize| m == 0 && partition & 1 != 0 || m == 1 && partition & 2 != 0;
                    if partition == 0 || side(a) == side(b) {
                        world.sync(a, b);
                    }
                }
                Step::Partition(p) => partition = p,
            }
        }
        for _ in 0..2 {
            for a in 0..3 {
                for b in 0..3 {
                    world.sync(a, b);
                }
            }
        }
        let tree = world.tree(0);
        prop_assert_eq!(&tree, &world.tree(1));
        prop_assert_eq!(&tree, &world.tree(2));
        let merge = world.merge(0);
        let all: Vec<&Change<u64>> = world.logs.values().flatten().collect();
        let held: BTreeSet<u64> = tree.values().map(|(v, _)| *v).collect();
        for s in &saved {
            let Op::Put { value, .. } = s.op else { continue };
            // Overwritten or deleted, at its path or at its conflict copy's, by a change that
            // had seen it.
            let copy = conflict_name(&s.path, s.mtime(), &s.writer);
            let seen_over = all.iter().any(|c| (c.path == s.path || c.path == copy) && s.before(c));
            prop_assert!(held.contains(&value) || seen_over, "content {} of {:?} was lost", value, s);
        }
        // And nothing the tree holds at its own path was seen overwritten or deleted there.
        for (path, (value, conflict)) in &tree {
            if *conflict {
                continue;
            }
            let made = all.iter().filter(|c| &c.path == path && matches!(c.op, Op::Put { value: v, .. } if v == *value));
            let live = made.clone().any(|m| !all.iter().any(|c| &c.path == path && m.before(c)));
            prop_assert!(live, "{} holds {}, which a later change there had seen", path, value);
        }
        prop_assert_eq!(merge.len(), all.len());
    }
}
