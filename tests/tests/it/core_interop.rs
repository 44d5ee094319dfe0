//! `hyperfs core replay` against JS hypercore@11 on random scripts: same key, discovery key,
//! manifest bytes, tree hash, roots and signature.

use hyperfs_tests::{hyperfs_ok, replay_both, test_seed};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

fn random_script(rng: &mut StdRng) -> Value {
    let seed: [u8; 32] = rng.gen();
    let mut ops = Vec::new();
    let mut len = 0u64;
    for _ in 0..rng.gen_range(1..8) {
        if len > 0 && rng.gen_bool(0.2) {
            let to = rng.gen_range(0..=len);
            ops.push(json!({"truncate": to}));
            len = to;
            continue;
        }
        let n = rng.gen_range(1..6);
        let blocks: Vec<String> = (0..n)
            .map(|_| {
                let size = match rng.gen_range(0..100) {
                    0..=4 => rng.gen_range(64 * 1024..=200 * 1024),
                    5..=14 => 0,
                    _ => rng.gen_range(1..2048),
                };
                let mut b = vec![0u8; size];
                rng.fill(&mut b[..]);
                hex::encode(b)
            })
            .collect();
        len += n;
        ops.push(json!({"append": blocks}));
    }
    let compat = rng.gen_bool(0.5);
    if rng.gen_bool(0.2) {
        let kp = hyperfs_engine::crypto::KeyPair::from_seed(&seed);
        json!({"secretKey": hex::encode(kp.secret_key()), "compat": compat, "ops": ops})
    } else {
        json!({"seed": hex::encode(seed), "compat": compat, "ops": ops})
    }
}

#[test]
fn two_hundred_random_scripts_match_js_hypercore() {
    let seed = test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let scripts: Vec<Value> = (0..200).map(|_| random_script(&mut rng)).collect();
    replay_both("core-replay.js", &["core", "replay"], &scripts, |i, _, ours, expected| {
        assert_eq!(ours, expected, "script {i} differs from JS (HYPERFS_TEST_SEED={seed})");
    });
}

#[test]
fn reference_vector_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let script = json!({"seed": "01".repeat(32), "compat": true,
        "ops": [{"append": ["68656c6c6f", "776f726c64", "21"]}, {"truncate": 2}, {"append": ["2121"]}]});
    std::fs::write(&path, script.to_string()).expect("write");
    let out: Value =
        serde_json::from_str(&hyperfs_ok(&["core", "replay", path.to_str().expect("utf-8")])).expect("json");
    assert_eq!(out["key"], "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c");
    assert_eq!(out["manifest"], Value::Null);
    assert_eq!(out["treeHash"], "06bedb5030b90e1508d8ed3b628106f6ec6e29de21c89eafdc0f3d8cfd3c26dc");
    assert_eq!(
        out["signature"],
        "d27449e2ffc2f6dafc34950331439f7dbbafb39821f7e359e264a912c46e3382600527a69e6bd636590b220dda30a0902a4e08216fba841d6c0efa3e5b5ed001"
    );
    assert_eq!(
        (out["length"].as_u64(), out["fork"].as_u64(), out["byteLength"].as_u64()),
        (Some(3), Some(1), Some(12))
    );
}

#[test]
fn bad_scripts_get_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    std::fs::write(&path, r#"{"seed": "zz", "ops": []}"#).expect("write");
    let out = hyperfs_tests::hyperfs(&["core", "replay", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seed is not hex"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
    std::fs::write(
        &path,
        r#"{"seed": "00000000000000000000000000000000000000000000000000000000000000aa", "ops": [{"truncate": 5}]}"#,
    )
    .expect("write");
    let out = hyperfs_tests::hyperfs(&["core", "replay", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncate"), "{}", String::from_utf8_lossy(&out.stderr));
}
