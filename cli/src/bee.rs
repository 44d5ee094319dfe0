//! `hyperfs bee replay`: the Hyperbee compliance tool run against JS hyperbee in the tests.
//!
//! Runs puts, deletes and batches on a fresh bee (a non-compat core made from the seed, on the
//! real RocksDB store in a temporary directory) and prints the key and every block. Optional
//! `queries` (get, range, history, diff; each optionally at a `version` and inside a `sub`) are
//! answered on the finished bee and printed as `answers`, in the shape the JS oracle prints.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::fetch::Blocks;
use hyperfs_engine::hyperbee::{Entry, HistoryRange, Range, View};
use hyperfs_engine::store::RocksStore;
use hyperfs_engine::{Hyperbee, Hypercore};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    seed: String,
    ops: Vec<Op>,
    #[serde(default)]
    queries: Vec<Query>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Op {
    Put((String, String)),
    Del(String),
    Batch(Vec<Op>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    version: Option<u64>,
    sub: Option<String>,
    get: Option<String>,
    range: Option<KeyRange>,
    history: Option<History>,
    diff: Option<Diff>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRange {
    gt: Option<String>,
    gte: Option<String>,
    lt: Option<String>,
    lte: Option<String>,
    #[serde(default)]
    reverse: bool,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    gt: Option<i64>,
    gte: Option<i64>,
    lt: Option<i64>,
    lte: Option<i64>,
    #[serde(default)]
    reverse: bool,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Diff {
    left: Option<u64>,
    right: u64,
    #[serde(flatten)]
    range: KeyRange,
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s).with_context(|| format!("{what} {s:?} is not hex"))
}

fn apply(batch: &mut hyperfs_engine::hyperbee::Batch<'_>, op: &Op, n: usize) -> Result<()> {
    match op {
        Op::Put((k, v)) => batch.put(&unhex("key", k)?, &unhex("value", v)?).with_context(|| format!("op {n}: put")),
        Op::Del(k) => batch.del(&unhex("key", k)?).map(drop).with_context(|| format!("op {n}: del")),
        Op::Batch(_) => Err(anyhow!("op {n}: a batch cannot hold a batch")),
    }
}

fn range(r: &KeyRange) -> Result<Range> {
    let bound = |incl: &Option<String>, excl: &Option<String>| -> Result<Bound<Vec<u8>>> {
        Ok(match (excl, incl) {
            (Some(k), _) => Bound::Excluded(unhex("bound", k)?),
            (None, Some(k)) => Bound::Included(unhex("bound", k)?),
            (None, None) => Bound::Unbounded,
        })
    };
    Ok(Range { lower: bound(&r.gte, &r.gt)?, upper: bound(&r.lte, &r.lt)?, reverse: r.reverse, limit: r.limit })
}

fn entry(e: Option<&Entry>) -> Value {
    e.map_or(Value::Null, |e| json!({"seq": e.seq, "key": hex::encode(&e.key), "value": hex::encode(&e.value)}))
}

fn answer<B: Blocks + Clone>(bee: &Hyperbee, view: View<B>, q: &Query) -> Result<Value> {
    let view = match &q.sub {
        Some(s) => view.sub(&unhex("sub", s)?),
        None => view,
    };
    if let Some(k) = &q.get {
        return Ok(entry(view.get(&unhex("key", k)?)?.as_ref()));
    }
    if let Some(r) = &q.range {
        let entries = view.range(&range(r)?).collect::<hyperfs_engine::Result<Vec<_>>>()?;
        return Ok(entries.iter().map(|e| entry(Some(e))).collect());
    }
    if let Some(h) = &q.history {
        let h = HistoryRange { gt: h.gt, gte: h.gte, lt: h.lt, lte: h.lte, reverse: h.reverse, limit: h.limit };
        let mut out = Vec::new();
        for e in view.history(&h) {
            let e = e?;
            out.push(json!({
                "type": if e.deletion { "del" } else { "put" },
                "seq": e.entry.seq,
                "key": hex::encode(&e.entry.key),
                "value": if e.deletion { Value::Null } else { hex::encode(&e.entry.value).into() },
            }));
        }
        return Ok(out.into());
    }
    if let Some(d) = &q.diff {
        let mut right = bee.checkout(d.right)?;
        if let Some(s) = &q.sub {
            right = right.sub(&unhex("sub", s)?);
        }
        let pairs = match d.left {
            Some(v) => {
                let mut left = bee.checkout(v)?;
                if let Some(s) = &q.sub {
                    left = left.sub(&unhex("sub", s)?);
                }
                left.diff(&right, &range(&d.range)?)?
            }
            None => view.diff(&right, &range(&d.range)?)?,
        };
        return Ok(pairs
            .iter()
            .map(|p| json!({"left": entry(p.left.as_ref()), "right": entry(p.right.as_ref())}))
            .collect());
    }
    Err(anyhow!("a query needs one of get, range, history and diff"))
}

pub fn run(path: &Path) -> Result<()> {
    let text = super::read_input(path)?;
    let script: Script = serde_json::from_slice(&text).context("the script is not valid bee replay JSON")?;
    let seed: [u8; 32] =
        unhex("seed", &script.seed)?.try_into().map_err(|_| anyhow!("seed must be 32 bytes (64 hex digits)"))?;
    let dir = tempfile::tempdir().context("creating a temporary store directory")?;
    let store = Arc::new(RocksStore::open(dir.path())?);
    let mut bee = Hyperbee::new(Hypercore::create(store, KeyPair::from_seed(&seed), false)?);
    for (n, op) in script.ops.iter().enumerate() {
        let mut batch = bee.batch();
        match op {
            Op::Batch(ops) => {
                for op in ops {
                    apply(&mut batch, op, n)?;
                }
            }
            op => apply(&mut batch, op, n)?,
        }
        batch.flush().with_context(|| format!("op {n}: append"))?;
    }
    let core = bee.core();
    let blocks =
        (0..core.length()).map(|i| core.get(i).map(hex::encode)).collect::<hyperfs_engine::Result<Vec<_>>>()?;
    let mut out = json!({"key": hex::encode(core.key()), "blocks": blocks});
    if !script.queries.is_empty() {
        let mut answers = Vec::new();
        for (n, q) in script.queries.iter().enumerate() {
            let a = match q.version {
                Some(v) => answer(&bee, bee.checkout(v)?, q),
                None => answer(&bee, bee.snapshot(), q),
            };
            answers.push(a.with_context(|| format!("query {n}"))?);
        }
        out["answers"] = answers.into();
    }
    println!("{out}");
    Ok(())
}
