//! `hyperfs bee replay` against JS hyperbee@2 on random scripts: the same blocks, byte for byte,
//! and the same answers to get, range, history and diff queries on the finished trees.

use std::collections::BTreeSet;

use hyperfs_tests::{replay_both, test_seed};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::{json, Value};

/// Random keys that share prefixes: a few stems, then a short tail over a small alphabet.
fn random_key(rng: &mut StdRng) -> Vec<u8> {
    const STEMS: [&[u8]; 7] = [b"", b"a", b"ab", b"files\0/", b"s\0", b"\0", b"\xff"];
    const ALPHABET: [u8; 6] = [0, 1, b'a', b'b', b'c', 0xff];
    let mut k = STEMS.choose(rng).expect("stems").to_vec();
    for _ in 0..rng.gen_range(0..=4) {
        k.push(*ALPHABET.choose(rng).expect("alphabet"));
    }
    k
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_bool(0.2) {
        return Vec::new();
    }
    let mut v = vec![0u8; rng.gen_range(1..40)];
    rng.fill(&mut v[..]);
    v
}

/// One put or delete; tracks the keys present and counts the blocks it writes.
fn random_op(rng: &mut StdRng, present: &mut BTreeSet<Vec<u8>>, blocks: &mut u64) -> Value {
    let roll = rng.gen_range(0..100);
    if roll < 70 || present.is_empty() {
        let k = random_key(rng);
        let v = random_value(rng);
        present.insert(k.clone());
        *blocks += 1;
        json!({"put": [hex::encode(k), hex::encode(v)]})
    } else if roll < 92 {
        let k = present.iter().nth(rng.gen_range(0..present.len())).expect("non-empty").clone();
        present.remove(&k);
        *blocks += 1;
        json!({"del": hex::encode(k)})
    } else {
        let k = random_key(rng);
        if present.remove(&k) {
            *blocks += 1;
        }
        json!({"del": hex::encode(k)})
    }
}

fn random_bounds(rng: &mut StdRng, q: &mut serde_json::Map<String, Value>) {
    for (incl, excl) in [("gte", "gt"), ("lte", "lt")] {
        match rng.gen_range(0..3) {
            0 => {}
            1 => drop(q.insert(incl.into(), hex::encode(random_key(rng)).into())),
            _ => drop(q.insert(excl.into(), hex::encode(random_key(rng)).into())),
        }
    }
    if rng.gen_bool(0.3) {
        q.insert("reverse".into(), true.into());
    }
    if rng.gen_bool(0.3) {
        q.insert("limit".into(), rng.gen_range(0..20).into());
    }
}

/// A random query. `versions` are the versions between operations: a version inside a batch has
/// no tree of its own (JS fails to read it), so queries are only asked at these.
fn random_query(rng: &mut StdRng, versions: &[u64], present: &BTreeSet<Vec<u8>>) -> Value {
    let version = *versions.last().expect("at least one version");
    let pick = |rng: &mut StdRng| *versions.choose(rng).expect("at least one version");
    let mut q = serde_json::Map::new();
    let at = if rng.gen_bool(0.3) {
        let v = pick(rng);
        q.insert("version".into(), v.into());
        v
    } else {
        version
    };
    let sub = rng.gen_bool(0.15);
    if sub {
        q.insert("sub".into(), hex::encode(b"s").into());
    }
    match rng.gen_range(0..4) {
        0 => {
            let k = if !present.is_empty() && rng.gen_bool(0.6) {
                present.iter().nth(rng.gen_range(0..present.len())).expect("non-empty").clone()
            } else {
                random_key(rng)
            };
            q.insert("get".into(), hex::encode(k).into());
        }
        1 => {
            let mut r = serde_json::Map::new();
            random_bounds(rng, &mut r);
            q.insert("range".into(), r.into());
        }
        2 => {
            // Bounds JS answers without waiting for blocks it does not have: within the version.
            let mut h = serde_json::Map::new();
            let pos = |rng: &mut StdRng| rng.gen_range(1..=at) as i64;
            let neg = |rng: &mut StdRng| if at > 1 { -(rng.gen_range(1..at) as i64) } else { 1 };
            match rng.gen_range(0..4) {
                0 => {}
                1 => drop(h.insert("gte".into(), pos(rng).into())),
                2 => drop(h.insert("gte".into(), neg(rng).into())),
                _ => drop(h.insert("gt".into(), (pos(rng) - 1).into())),
            }
            match rng.gen_range(0..4) {
                0 => {}
                1 => drop(h.insert("lt".into(), pos(rng).into())),
                2 => drop(h.insert("lt".into(), neg(rng).into())),
                _ => drop(h.insert("lte".into(), (pos(rng) - 1).into())),
            }
            if rng.gen_bool(0.3) {
                h.insert("reverse".into(), true.into());
            }
            if rng.gen_bool(0.3) {
                h.insert("limit".into(), rng.gen_range(0..20).into());
            }
            q.insert("history".into(), h.into());
        }
        _ => {
            // A diff is always taken from the current version, or from an explicit left.
            q.remove("version");
            let mut d = serde_json::Map::new();
            d.insert("right".into(), pick(rng).into());
            if !sub && rng.gen_bool(0.4) {
                d.insert("left".into(), pick(rng).into());
            }
            random_bounds(rng, &mut d);
            d.remove("reverse");
            q.insert("diff".into(), d.into());
        }
    }
    q.into()
}

fn random_script(rng: &mut StdRng) -> Value {
    let seed: [u8; 32] = rng.gen();
    let n = if rng.gen_bool(0.1) { rng.gen_range(1000..=2000) } else { rng.gen_range(1..300) };
    let mut present = BTreeSet::new();
    let mut blocks = 0u64;
    let mut ops = Vec::new();
    let mut versions = vec![1];
    while ops.len() < n {
        if rng.gen_bool(0.08) {
            let inner: Vec<Value> =
                (0..rng.gen_range(1..40)).map(|_| random_op(rng, &mut present, &mut blocks)).collect();
            ops.push(json!({"batch": inner}));
        } else {
            ops.push(random_op(rng, &mut present, &mut blocks));
        }
        versions.push(blocks + 1);
    }
    versions.dedup();
    let queries: Vec<Value> = (0..16).map(|_| random_query(rng, &versions, &present)).collect();
    json!({"seed": hex::encode(seed), "ops": ops, "queries": queries})
}

/// The index of the first block that differs, for a readable failure.
fn first_difference(ours: &Value, js: &Value) -> String {
    let (a, b) = (ours["blocks"].as_array(), js["blocks"].as_array());
    if let (Some(a), Some(b)) = (a, b) {
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            return format!("block {i}: ours {:?}, js {:?}", a.get(i), b.get(i));
        }
    }
    let (a, b) = (ours["answers"].as_array(), js["answers"].as_array());
    if let (Some(a), Some(b)) = (a, b) {
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            return format!("answer {i}: ours {:?}, js {:?}", a.get(i), b.get(i));
        }
    }
    "keys differ".into()
}

#[test]
fn two_hundred_random_scripts_match_js_hyperbee() {
    let seed = test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let scripts: Vec<Value> = (0..200).map(|_| random_script(&mut rng)).collect();
    replay_both("bee-replay.js", &["bee", "replay"], &scripts, |i, path, ours, expected| {
        assert!(
            ours == expected,
            "script {i} differs from JS (HYPERFS_TEST_SEED={seed}, script {}): {}",
            path.display(),
            first_difference(ours, expected)
        );
    });
}

#[test]
fn bee_replay_explains_bad_scripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (script, says) in [
        (r#"{"seed": "00", "ops": []}"#, "32 bytes"),
        (r#"{"seed": "zz", "ops": []}"#, "not hex"),
        (r#"{"ops": []}"#, "not valid bee replay JSON"),
        (
            r#"{"seed": "0000000000000000000000000000000000000000000000000000000000000000", "ops": [{"put": ["0g", "00"]}]}"#,
            "not hex",
        ),
    ] {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, script).expect("write");
        let out = hyperfs_tests::hyperfs(&["bee", "replay", path.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script} was accepted");
        assert!(err.contains(says), "{script}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
