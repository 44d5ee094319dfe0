//! The RocksDB [`Store`]: one database per data directory, a column family per [`Table`].
//!
//! Blocks are keyed by their merkle leaf hash and kept in blob files (large values bypass LSM
//! compaction); every other table is small records.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use super::{Batch, Op, Store, Table};
use crate::{Error, Result};

#[derive(Debug)]
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl RocksStore {
    /// Opens (or creates) the store at `path`. A store held by another process, a damaged one
    /// or one of an unknown format version is an error; nothing is reset.
    pub fn open(path: &Path) -> Result<Self> {
        let fresh = !path.join("CURRENT").exists();
        if fresh {
            std::fs::create_dir_all(path).map_err(|e| Error::Storage(format!("creating {}: {e}", path.display())))?;
        }
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_paranoid_checks(true);
        let cfs = Table::ALL.iter().map(|t| ColumnFamilyDescriptor::new(t.name(), table_options(*t)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| classify(path, e))?;
        let store = RocksStore { db, path: path.to_path_buf() };
        super::check_format(&store, path, fresh)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, t: Table) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(t.name())
            .ok_or_else(|| Error::Damaged { path: self.path.clone(), reason: format!("table {} is missing", t.name()) })
    }

    fn err(&self, e: rocksdb::Error) -> Error {
        classify(&self.path, e)
    }
}

fn table_options(t: Table) -> Options {
    let mut o = Options::default();
    let mut bb = BlockBasedOptions::default();
    bb.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&bb);
    match t {
        Table::Blocks => {
            // Block bytes arrive already zstd-compressed where that helps (hypercore::stored).
            o.set_compression_type(DBCompressionType::None);
            o.set_enable_blob_files(true);
            o.set_min_blob_size(1024);
            o.set_blob_compression_type(DBCompressionType::None);
            o.set_blob_file_size(256 << 20);
            o.set_write_buffer_size(128 << 20);
            o.set_max_write_buffer_number(4);
        }
        _ => {
            o.set_compression_type(DBCompressionType::None);
            o.set_write_buffer_size(32 << 20);
        }
    }
    o
}

fn classify(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    match e.kind() {
        rocksdb::ErrorKind::IOError if msg.contains("lock") || msg.contains("LOCK") => {
            Error::Locked { path: path.to_path_buf() }
        }
        rocksdb::ErrorKind::Corruption => Error::Damaged { path: path.to_path_buf(), reason: msg },
        _ if msg.contains("does not exist") || msg.contains("No such file") || msg.contains("CURRENT") => {
            Error::Damaged { path: path.to_path_buf(), reason: msg }
        }
        _ => Error::Storage(msg),
    }
}

impl Store for RocksStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(table)?, key).map_err(|e| self.err(e))
    }

    fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        let cf = self.cf(table)?;
        if !self.db.key_may_exist_cf(cf, key) {
            return Ok(false);
        }
        Ok(self.db.get_pinned_cf(cf, key).map_err(|e| self.err(e))?.is_some())
    }

    fn scan(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(table)?, IteratorMode::From(start, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if &*k >= end {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn write(&self, batch: Batch) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(t, k, v) => wb.put_cf(self.cf(*t)?, k, v),
                Op::Delete(t, k) => wb.delete_cf(self.cf(*t)?, k),
                Op::DeleteRange(t, s, e) => wb.delete_range_cf(self.cf(*t)?, s, e),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(batch.sync);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_a_held_store_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = RocksStore::open(dir.path()).expect("first open");
        let err = RocksStore::open(dir.path()).expect_err("second open must fail");
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another process"));
    }

    #[test]
    fn unknown_format_version_is_refused_not_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = RocksStore::open(dir.path()).expect("open");
            let mut b = Batch::default();
            b.put(Table::Meta, b"format".to_vec(), 99u64.to_le_bytes().to_vec());
            b.put(Table::Meta, b"keep".to_vec(), b"me".to_vec());
            s.write(b).expect("write");
        }
        let err = RocksStore::open(dir.path()).expect_err("must refuse");
        assert!(matches!(err, Error::UnknownFormat { found: 99, .. }), "{err}");
        // Nothing was reset: forcing the old version back shows the data is still there.
        let mut opts = Options::default();
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), Table::ALL.map(|t| t.name())).expect("raw open");
        let cf = db.cf_handle("meta").expect("meta cf");
        assert_eq!(db.get_cf(cf, b"keep").expect("get").as_deref(), Some(&b"me"[..]));
    }

    #[test]
    fn damaged_store_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(RocksStore::open(dir.path()).expect("open"));
        // Wipe the manifest the CURRENT file points at.
        let current = std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT");
        std::fs::write(dir.path().join(current.trim()), b"garbage garbage garbage").expect("overwrite");
        let err = RocksStore::open(dir.path()).expect_err("must refuse");
        assert!(matches!(err, Error::Damaged { .. } | Error::Storage(_)), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()) || matches!(err, Error::Storage(_)));
    }
}
