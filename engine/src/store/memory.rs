//! An in-memory [`Store`] for unit tests: the same semantics as RocksDB, no durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Batch, Op, Staged, Store, Table};
use crate::Result;

type Tables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemStore {
    tables: Mutex<Tables>,
    staged: Mutex<HashMap<u64, Vec<u8>>>,
    next_staged: AtomicU64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.get(&(table, key.to_vec())).cloned())
    }

    fn scan(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.range((table, start.to_vec())..(table, end.to_vec())).map(|((_, k), v)| (k.clone(), v.clone())).collect())
    }

    fn stage_block(&self, bytes: Vec<u8>) -> Result<Staged> {
        let id = self.next_staged.fetch_add(1, Ordering::Relaxed);
        let len = u32::try_from(bytes.len()).map_err(|_| crate::Error::InvalidRequest("block too large".into()))?;
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).insert(id, bytes);
        Ok(Staged { id, len })
    }

    fn write(&self, batch: Batch) -> Result<()> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        for op in batch.ops {
            match op {
                Op::Put(table, k, v) => {
                    t.insert((table, k), v);
                }
                Op::PutStaged(k, s) => {
                    let v = staged
                        .remove(&s.id)
                        .ok_or_else(|| crate::Error::Storage(format!("staged block {} is unknown", s.id)))?;
                    t.insert((Table::Blocks, k), v);
                }
                Op::Delete(table, k) => {
                    t.remove(&(table, k));
                }
                Op::DeleteRange(table, s, e) => {
                    let keys: Vec<_> = t.range((table, s)..(table, e)).map(|(k, _)| k.clone()).collect();
                    for k in keys {
                        t.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
