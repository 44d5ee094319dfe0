//! An in-memory [`Store`] for unit tests: the same semantics as RocksDB, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Batch, Op, Store, Table};
use crate::Result;

#[derive(Debug, Default)]
pub struct MemStore {
    tables: Mutex<BTreeMap<(Table, Vec<u8>), Vec<u8>>>,
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

    fn write(&self, batch: Batch) -> Result<()> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        for op in batch.ops {
            match op {
                Op::Put(table, k, v) => {
                    t.insert((table, k), v);
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
