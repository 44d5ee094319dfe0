//! The RocksDB [`Store`]: one database per data directory, a column family per [`Table`].
//!
//! Block bytes are written once, to an append-only block log beside the database
//! (`blocks.log`); the `blocks` table maps each leaf hash to its place in the log. Writing block
//! bytes through RocksDB wrote them twice (write-ahead log, then table files) and made append
//! throughput disk-bound.
//!
//! The write order of a batch, which is what makes it atomic:
//! 1. block bytes are written into space reserved past everything written so far — staged
//!    ahead by writers on every core ([`Store::stage_block`]) or by the batch itself;
//! 2. if the batch is durable, fdatasync the log;
//! 3. write the RocksDB batch — index entries, every other record and the committed tail (the
//!    end of the furthest block it commits) — atomically through RocksDB's write-ahead log.
//!
//! A crash before step 3 leaves bytes that nothing references: past the committed tail, opening
//! cuts them off; below it (staged by a writer that lost the race to commit) they wait for
//! garbage collection.
//!
//! A power cut can also lose bytes the index already references: page writeback does not keep
//! RocksDB's write-ahead log and the block log in order. Everything below the *synced tail*
//! (recorded after each fdatasync of the log) is durable; after an unclean stop, the blocks above
//! it are suspect. [`RocksStore::recover_blocks`] checks each against its key (the caller says
//! how) and drops the index entries of those lost, remembering their keys until the cores that
//! held them have caught up ([`RocksStore::forget_lost`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, MemtableFactory, Options,
    SliceTransform, WriteBatch, WriteOptions, DB,
};

use super::{Batch, Collected, DiskUsage, Gate, Op, Pin, SnapshotRead, Staged, Store, Table};
use crate::{Error, Result};

#[derive(Debug)]
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    log: File,
    /// The committed end of the block log; held while a batch is written.
    tail: Mutex<u64>,
    /// The end of the block log known durable; below `tail` after an unclean stop until
    /// [`RocksStore::recover_blocks`] has checked what lies between.
    synced: AtomicU64,
    /// The end of everything written to the log, committed or staged. Space is reserved here
    /// with one atomic add, so writers on every core write block bytes at once.
    reserved: AtomicU64,
    /// Held while writing to the block log. The kernel lets one writer into a file at a time
    /// and spins the others on the CPU; waiting here instead leaves the core to a thread with
    /// other work (hashing, chunking).
    writing: Mutex<Writing>,
    /// The block log opened for direct I/O, for streamed writes ([`Store::stage_streamed`]);
    /// `None` when the file system refuses it.
    direct: Option<File>,
    /// Held by readers of the block log (from the index look-up to the read) and by writers
    /// from their [`Store::reuse_block`] decisions to their commit ([`Store::pin`]).
    gate: std::sync::Arc<Gate>,
    /// Garbage collection: one at a time, and while one runs the blocks writers decided to
    /// reuse ([`Store::reuse_block`]), which it keeps.
    collecting: Mutex<()>,
    reused: Mutex<Option<std::collections::HashSet<Vec<u8>>>>,
    tracking: std::sync::atomic::AtomicBool,
    /// How far ahead of its end the block log's space is allocated ([`ALLOCATE_AHEAD`] unless
    /// limited).
    ahead: AtomicU64,
}

/// What the block log's writer keeps between writes.
#[derive(Debug, Default)]
struct Writing {
    /// How far the log's space is allocated ahead of its end.
    allocated: u64,
    /// A reused buffer for direct writes (page-aligned inside; see [`aligned`]).
    staging: Vec<u8>,
    /// Set once a direct write was refused: later ones go through the page cache.
    refused: bool,
}

const LOG_NAME: &str = "blocks.log";
const TAIL_KEY: &[u8] = b"blocks_tail";
/// The end of the block log known durable (every byte below it was fdatasync-ed).
const SYNCED_KEY: &[u8] = b"blocks_synced";
/// `lost` ‖ key: a block whose bytes a power cut took, until the cores have forgotten it.
const LOST_PREFIX: &[u8] = b"lost\0";
/// Just past every `lost` record.
const LOST_END: &[u8] = b"lost\x01";

impl RocksStore {
    /// A block write that failed (a full disk, typically): the space it took is given back
    /// (the range is never committed, so nothing reads it), and the error says what happened.
    fn failed_stage(&self, offset: u64, len: u64, e: std::io::Error) -> Error {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.log);
        // SAFETY: fallocate on our own open file descriptor; it only frees the given range.
        unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            );
        }
        Error::io(format!("writing {LOG_NAME}"), e)
    }

    /// Opens (or creates) the store at `path`. A store held by another process, a damaged one
    /// or one of an unknown format version is an error; nothing is reset.
    pub fn open(path: &Path) -> Result<Self> {
        let fresh = !path.join("CURRENT").exists();
        if fresh {
            std::fs::create_dir_all(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        // After a power cut the write-ahead log may end inside a record: recover every batch
        // before it (each batch is whole or absent), as the cores' recovery expects.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_paranoid_checks(true);
        // One writer commits at a time anyway; the hash memtable of the blocks table needs this.
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = Table::ALL.iter().map(|t| ColumnFamilyDescriptor::new(t.name(), table_options(*t)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| classify(path, e))?;
        let log_path = path.join(LOG_NAME);
        let log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let store = RocksStore {
            db,
            path: path.to_path_buf(),
            log,
            tail: Mutex::new(0),
            synced: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            writing: Mutex::new(Writing::default()),
            direct: open_direct(&log_path),
            gate: Default::default(),
            collecting: Mutex::new(()),
            reused: Mutex::new(None),
            tracking: Default::default(),
            ahead: AtomicU64::new(ALLOCATE_AHEAD),
        };
        super::check_format(&store, path, fresh)?;
        let tail = match store.db.get_cf(store.cf(Table::Meta)?, TAIL_KEY).map_err(|e| store.err(e))? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| Error::Damaged {
                path: path.into(),
                reason: "the block log tail record has the wrong size".into(),
            })?),
            None => 0,
        };
        let synced = match store.db.get_cf(store.cf(Table::Meta)?, SYNCED_KEY).map_err(|e| store.err(e))? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| Error::Damaged {
                path: path.into(),
                reason: "the block log synced-tail record has the wrong size".into(),
            })?),
            // A new store: nothing is known durable yet.
            None if fresh => {
                let mut wb = WriteBatch::default();
                wb.put_cf(store.cf(Table::Meta)?, SYNCED_KEY, 0u64.to_le_bytes());
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                store.db.write_opt(wb, &wo).map_err(|e| store.err(e))?;
                0
            }
            // A store from before the record: what it holds is taken as it is.
            None => tail,
        };
        let len = store.log.metadata().map_err(|e| Error::io(log_path.display().to_string(), e))?.len();
        let mut synced = synced.min(tail);
        if len < synced {
            // Bytes that were synced are gone (a disk that lied, a copy cut short): everything
            // past what is there is checked as after a power cut, and the store still opens.
            tracing::warn!(len, synced, "{LOG_NAME} is shorter than what was synced to it");
            synced = len;
        }
        // Bytes of a batch that never committed are cut off, and space a killed node had
        // allocated ahead is given back (setting the length frees what lies past it). A log a
        // power cut left shorter than the committed tail is lengthened with zeros, which no
        // block's hash matches: the recovery finds those blocks lost, and no new block is
        // written where the index still points.
        store.log.set_len(tail).map_err(|e| Error::io(log_path.display().to_string(), e))?;
        store.synced.store(synced, Ordering::SeqCst);
        *store.tail.lock().unwrap_or_else(|e| e.into_inner()) = tail;
        store.reserved.store(tail, Ordering::SeqCst);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allocates the block log's space at most `bytes` ahead of its end (a node whose disk use
    /// is bounded keeps the space allocated ahead small beside the bound).
    pub fn limit_allocate_ahead(&self, bytes: u64) {
        self.ahead.fetch_min(bytes, Ordering::Relaxed);
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

fn table_options(table: Table) -> Options {
    let mut o = Options::default();
    let mut bb = BlockBasedOptions::default();
    bb.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&bb);
    // Every table holds small records; block bytes live in the block log.
    o.set_compression_type(DBCompressionType::None);
    o.set_write_buffer_size(32 << 20);
    if matches!(table, Table::Blocks | Table::Chunks) {
        // A bloom filter over the memtable's keys: most lookups here (the dedup check of every
        // new block) are for keys that are not there. Elsewhere lookups find what they look
        // for, and the filter would only cost every insert.
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(0.05);
    }
    if table == Table::Blocks {
        // Keyed by hashes, looked up only whole: a hash table of memtable buckets rather than
        // one skip list, where every insert of a random key walks cold memory. Each bucket is a
        // list: with random keys nearly every insert opens a bucket, and a skip list per bucket
        // cost an allocation and its setup each time (~7% faster 4 KiB appends as a list).
        o.set_prefix_extractor(SliceTransform::create_fixed_prefix(8));
        o.set_memtable_factory(MemtableFactory::HashLinkList { bucket_count: 1 << 18 });
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
        // RocksDB gives no errno, only its message: a full disk is told apart here, the one place
        // that reads RocksDB's errors, and is an `ENOSPC` to everything above.
        rocksdb::ErrorKind::IOError if msg.contains("No space left") => {
            Error::io(format!("RocksDB: {msg}"), std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        _ if msg.contains("does not exist") || msg.contains("No such file") || msg.contains("CURRENT") => {
            Error::Damaged { path: path.to_path_buf(), reason: msg }
        }
        _ => Error::Storage(msg),
    }
}

impl Store for RocksStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _reading = (table == Table::Blocks).then(|| self.gate.hold());
        let v = self.db.get_cf(self.cf(table)?, key).map_err(|e| self.err(e))?;
        match (table, v) {
            (Table::Blocks, Some(place)) => self.read_log(&place).map(Some),
            (_, v) => Ok(v),
        }
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

    fn first(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self.db.iterator_cf(self.cf(table)?, IteratorMode::From(start, Direction::Forward)).next() {
            Some(item) => {
                let (k, v) = item.map_err(|e| self.err(e))?;
                Ok((&*k < end).then(|| (k.into_vec(), v.into_vec())))
            }
            None => Ok(None),
        }
    }

    fn stage_block(&self, bytes: Vec<u8>) -> Result<Staged> {
        let len = u32::try_from(bytes.len()).map_err(|_| Error::InvalidRequest("block too large".into()))?;
        let offset = self.reserved.fetch_add(len as u64, Ordering::SeqCst);
        let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.allocate(&mut writing.allocated, offset + len as u64);
        self.log.write_all_at(&bytes, offset).map_err(|e| self.failed_stage(offset, len as u64, e))?;
        Ok(Staged { id: offset, len })
    }

    fn stage_blocks(&self, blocks: &[[&[u8]; 2]]) -> Result<Vec<Staged>> {
        self.stage(blocks, false)
    }

    fn stage_streamed(&self, blocks: &[[&[u8]; 2]]) -> Result<Vec<Staged>> {
        self.stage(blocks, true)
    }

    fn will_read(&self, keys: &[&[u8]]) {
        let Ok(cf) = self.cf(Table::Blocks) else { return };
        let mut places: Vec<(u64, u64)> = keys
            .iter()
            .filter_map(|k| self.db.get_pinned_cf(cf, k).ok().flatten())
            .filter_map(|p| self.place(&p).ok())
            .map(|(offset, len)| (offset, offset + len as u64))
            .collect();
        places.sort_unstable();
        // Neighbouring blocks (a file's chunks are written one after the other) are asked for
        // as one range.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (from, to) in places {
            match ranges.last_mut() {
                Some(last) if from <= last.1 + READ_GAP => last.1 = last.1.max(to),
                _ => ranges.push((from, to)),
            }
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.log);
        for (from, to) in ranges {
            // SAFETY: posix_fadvise on our own descriptor; it only starts reads into the cache.
            unsafe {
                libc::posix_fadvise(fd, from as libc::off_t, (to - from) as libc::off_t, libc::POSIX_FADV_WILLNEED);
            }
        }
    }

    fn read_block_into(&self, key: &[u8], bufs: &mut [std::io::IoSliceMut<'_>]) -> Result<Option<usize>> {
        let _reading = self.gate.hold();
        let Some(place) = self.db.get_pinned_cf(self.cf(Table::Blocks)?, key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let (offset, len) = self.place(&place)?;
        if len != bufs.iter().map(|b| b.len()).sum::<usize>() {
            return Ok(Some(len));
        }
        let damaged = |reason: String| Error::Damaged { path: self.path.clone(), reason };
        let mut at = offset;
        let mut rest = &mut bufs[..];
        while !rest.is_empty() {
            // SAFETY: IoSliceMut is ABI-compatible with iovec; the buffers outlive the call and
            // are at most a handful.
            let n = unsafe {
                libc::preadv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.log),
                    rest.as_ptr().cast::<libc::iovec>(),
                    rest.len() as libc::c_int,
                    at as libc::off_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(damaged(format!("reading {len} bytes at {offset} of {LOG_NAME}: {e}")));
            }
            if n == 0 {
                return Err(damaged(format!("{LOG_NAME} ends inside the {len} bytes at {offset}")));
            }
            at += n as u64;
            std::io::IoSliceMut::advance_slices(&mut rest, n as usize);
        }
        Ok(Some(len))
    }

    fn read_block_range(&self, key: &[u8], stored_len: usize, at: usize, out: &mut [u8]) -> Result<Option<usize>> {
        let _reading = self.gate.hold();
        let Some(place) = self.db.get_pinned_cf(self.cf(Table::Blocks)?, key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let (offset, len) = self.place(&place)?;
        match at.checked_add(out.len()) {
            Some(end) if len == stored_len && end <= len => {}
            _ => return Ok(Some(len)),
        }
        self.log.read_exact_at(out, offset + at as u64).map_err(|e| Error::Damaged {
            path: self.path.clone(),
            reason: format!("reading {} bytes at {} of {LOG_NAME}: {e}", out.len(), offset + at as u64),
        })?;
        Ok(Some(len))
    }

    fn write(&self, batch: Batch) -> Result<()> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut end = *tail;
        let mut wb = WriteBatch::default();
        let mut index = |wb: &mut WriteBatch, k: &[u8], s: Staged| -> Result<()> {
            let mut place = [0u8; 12];
            place[..8].copy_from_slice(&s.id.to_le_bytes());
            place[8..].copy_from_slice(&s.len.to_le_bytes());
            wb.put_cf(self.cf(Table::Blocks)?, k, place);
            end = end.max(s.id + s.len as u64);
            Ok(())
        };
        for op in batch.ops {
            match op {
                Op::Put(Table::Blocks, k, v) => {
                    let s = self.stage_block(v)?;
                    index(&mut wb, &k, s)?;
                }
                Op::PutStaged(k, s) => index(&mut wb, &k, s)?,
                Op::Put(t, k, v) => wb.put_cf(self.cf(t)?, k, v),
                Op::Delete(t, k) => wb.delete_cf(self.cf(t)?, k),
                Op::DeleteRange(t, s, e) => wb.delete_range_cf(self.cf(t)?, s, e),
            }
        }
        if end != *tail {
            wb.put_cf(self.cf(Table::Meta)?, TAIL_KEY, end.to_le_bytes());
        }
        // A durable batch makes every block it (or an earlier batch) committed durable first.
        let syncs_log = batch.sync && self.synced.load(Ordering::SeqCst) < end;
        if syncs_log {
            self.log.sync_data().map_err(|e| Error::io(format!("syncing {LOG_NAME}"), e))?;
            wb.put_cf(self.cf(Table::Meta)?, SYNCED_KEY, end.to_le_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(batch.sync);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
        *tail = end;
        if syncs_log {
            self.synced.fetch_max(end, Ordering::SeqCst);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // Every block committed so far lies below this tail; the sync runs without holding it,
        // so commits go on meanwhile (a sync behind many dirty pages can take a while).
        let tail = *self.tail.lock().unwrap_or_else(|e| e.into_inner());
        self.log.sync_data().map_err(|e| Error::io(format!("syncing {LOG_NAME}"), e))?;
        if self.synced.load(Ordering::SeqCst) < tail {
            let mut wb = WriteBatch::default();
            wb.put_cf(self.cf(Table::Meta)?, SYNCED_KEY, tail.to_le_bytes());
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
            self.synced.fetch_max(tail, Ordering::SeqCst);
        }
        self.db.flush_wal(true).map_err(|e| self.err(e))
    }

    fn unsynced(&self) -> bool {
        self.synced.load(Ordering::SeqCst) < *self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recover_blocks(&self, verifies: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.synced.load(Ordering::SeqCst);
        let mut lost: Vec<Vec<u8>> = self
            .scan(Table::Meta, LOST_PREFIX, LOST_END)?
            .into_iter()
            .map(|(k, _)| k[LOST_PREFIX.len()..].to_vec())
            .collect();
        if from >= *tail {
            return Ok(lost);
        }
        // The blocks above the synced tail: each whole and matching its key, or lost.
        let blocks = self.cf(Table::Blocks)?;
        let mut wb = WriteBatch::default();
        let mut found = 0usize;
        let mut ro = rocksdb::ReadOptions::default();
        // The blocks table is hashed by key prefix: a scan across prefixes needs total order.
        ro.set_total_order_seek(true);
        for item in self.db.iterator_cf_opt(blocks, ro, IteratorMode::Start) {
            let (k, place) = item.map_err(|e| self.err(e))?;
            let (offset, len) = self.place(&place)?;
            if offset + len as u64 <= from {
                continue;
            }
            if self.read_log(&place).is_ok_and(|bytes| verifies(&k, &bytes)) {
                continue;
            }
            wb.delete_cf(blocks, &k);
            let mut record = LOST_PREFIX.to_vec();
            record.extend_from_slice(&k);
            wb.put_cf(self.cf(Table::Meta)?, record, []);
            lost.push(k.into_vec());
            found += 1;
        }
        self.log.sync_data().map_err(|e| Error::io(format!("syncing {LOG_NAME}"), e))?;
        wb.put_cf(self.cf(Table::Meta)?, SYNCED_KEY, tail.to_le_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
        self.synced.store(*tail, Ordering::SeqCst);
        if found > 0 {
            tracing::warn!(blocks = found, "blocks a crash or power cut took before they reached the disk");
        }
        Ok(lost)
    }

    fn forget_lost(&self) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(self.cf(Table::Meta)?, LOST_PREFIX, LOST_END);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))
    }

    fn stored_len(&self, key: &[u8]) -> Result<Option<usize>> {
        match self.db.get_pinned_cf(self.cf(Table::Blocks)?, key).map_err(|e| self.err(e))? {
            Some(place) => Ok(Some(self.place(&place)?.1)),
            None => Ok(None),
        }
    }

    fn reuse_block(&self, key: &[u8]) -> Result<bool> {
        if !self.tracking.load(Ordering::SeqCst) {
            return self.contains(Table::Blocks, key);
        }
        // Looked up and noted in one step, so a collection's sweep (which takes the set under
        // this lock) either sees the note or ran before the look-up and removed the block.
        let mut reused = self.reused.lock().unwrap_or_else(|e| e.into_inner());
        let there = self.contains(Table::Blocks, key)?;
        if let Some(r) = reused.as_mut().filter(|_| there) {
            r.insert(key.to_vec());
        }
        Ok(there)
    }

    fn pin(&self) -> Pin {
        self.gate.enter()
    }

    /// Mark and sweep, beside readers and writers:
    /// 1. note every block writers decide to reuse from now on, and wait for the writers that
    ///    decided before (their pins) to commit;
    /// 2. mark: the blocks referenced in a snapshot of the tables;
    /// 3. sweep: drop the index entries of the others (unless noted in 1, or moved since) in
    ///    one batch, made durable (the write-ahead log synced) before anything else;
    /// 4. wait for the readers that may have looked up a dropped entry before it went, then
    ///    punch holes in the block log where only dropped blocks lay (whole pages only: a page
    ///    shared with a live block or a staged one stays).
    ///
    /// A crash anywhere leaves a consistent store: before 3 nothing changed; after it the
    /// dropped blocks are unreferenced bytes, given back by the punch or, if the crash came
    /// first, left as garbage.
    fn collect_garbage(
        &self,
        mark: &dyn Fn(&dyn SnapshotRead) -> Result<Vec<crate::crypto::Hash>>,
    ) -> Result<Collected> {
        let _one = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
        *self.reused.lock().unwrap_or_else(|e| e.into_inner()) = Some(Default::default());
        self.tracking.store(true, Ordering::SeqCst);
        let result = self.collect_tracked(mark);
        self.tracking.store(false, Ordering::SeqCst);
        *self.reused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result
    }

    fn disk_usage(&self) -> Result<DiskUsage> {
        use std::os::unix::fs::MetadataExt;
        let log = self.log.metadata().map_err(|e| Error::io(LOG_NAME, e))?.blocks() * 512;
        let mut blocks = 0u64;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_total_order_seek(true);
        for item in self.db.iterator_cf_opt(self.cf(Table::Blocks)?, ro, IteratorMode::Start) {
            let (_, place) = item.map_err(|e| self.err(e))?;
            blocks += self.place(&place)?.1 as u64;
        }
        let mut database = 0u64;
        let entries = std::fs::read_dir(&self.path).map_err(|e| Error::io(self.path.display().to_string(), e))?;
        for entry in entries.flatten() {
            if entry.file_name() != LOG_NAME {
                database += entry.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
            }
        }
        Ok(DiskUsage { block_log: log, blocks, database })
    }
}

/// A RocksDB snapshot as [`SnapshotRead`].
struct Snap<'a> {
    store: &'a RocksStore,
    snap: rocksdb::Snapshot<'a>,
}

impl SnapshotRead for Snap<'_> {
    fn each(&self, table: Table, start: &[u8], end: &[u8], f: super::Visit<'_>) -> Result<()> {
        let mut ro = rocksdb::ReadOptions::default();
        // The blocks table is hashed by key prefix: a scan across prefixes needs total order.
        ro.set_total_order_seek(true);
        let it = self.snap.iterator_cf_opt(self.store.cf(table)?, ro, IteratorMode::From(start, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| self.store.err(e))?;
            if &*k >= end {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }
}

impl RocksStore {
    /// [`Store::collect_garbage`] once reuse decisions are being noted.
    fn collect_tracked(
        &self,
        mark: &dyn Fn(&dyn SnapshotRead) -> Result<Vec<crate::crypto::Hash>>,
    ) -> Result<Collected> {
        self.gate.wait_older();
        let snap = Snap { store: self, snap: self.db.snapshot() };
        let live = mark(&snap)?;
        // The index at the same instant, merged with the sorted referenced keys.
        let mut dead: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut kept = 0u64;
        let mut next = live.iter().peekable();
        snap.each(Table::Blocks, &[], &[0xff; 33], &mut |k, place| {
            while next.peek().is_some_and(|l| l.as_slice() < k) {
                next.next();
            }
            if next.peek().is_some_and(|l| l.as_slice() == k) {
                kept += 1;
            } else {
                dead.push((k.to_vec(), place.to_vec()));
            }
            Ok(())
        })?;
        drop(snap);
        let mut out = Collected { blocks_kept: kept, ..Collected::default() };
        let mut freed: Vec<(u64, u64)> = Vec::new();
        {
            let reused = self.reused.lock().unwrap_or_else(|e| e.into_inner());
            let noted = reused.as_ref();
            // Under the tail: no commit lands between the check of an entry and its removal.
            let _tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            let blocks = self.cf(Table::Blocks)?;
            let mut wb = WriteBatch::default();
            for (k, place) in &dead {
                if noted.is_some_and(|n| n.contains(k)) {
                    out.blocks_kept += 1;
                    continue;
                }
                let now = self.db.get_pinned_cf(blocks, k).map_err(|e| self.err(e))?;
                if now.as_deref() != Some(place.as_slice()) {
                    continue;
                }
                let (offset, len) = self.place(place)?;
                wb.delete_cf(blocks, k);
                freed.push((offset, offset + len as u64));
                out.blocks_removed += 1;
                out.bytes_removed += len as u64;
            }
            if out.blocks_removed > 0 {
                self.db.write(wb).map_err(|e| self.err(e))?;
            }
        }
        if freed.is_empty() {
            return Ok(out);
        }
        // Durable before any space goes; synced here, not under the tail, so commits go on.
        self.db.flush_wal(true).map_err(|e| self.err(e))?;
        // Readers that found a removed entry before it went have read it once these are done.
        self.gate.wait_older();
        freed.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (from, to) in freed {
            match runs.last_mut() {
                Some(last) if from == last.1 => last.1 = to,
                _ => runs.push((from, to)),
            }
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.log);
        for (from, to) in runs {
            let (from, to) = (from.next_multiple_of(PAGE), to / PAGE * PAGE);
            if to <= from {
                continue;
            }
            // SAFETY: fallocate on our own descriptor; it frees only the given range, which no
            // index entry points into any more.
            let r = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                )
            };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                tracing::warn!(error = %e, "{LOG_NAME}: the file system gives no space back (hole punching)");
                break;
            }
            out.bytes_freed += to - from;
        }
        Ok(out)
    }
}

impl Drop for RocksStore {
    /// Gives back the space allocated past the log's end (setting the length frees what lies
    /// past it; punching a hole there does not, on ext4).
    fn drop(&mut self) {
        let allocated = self.writing.lock().unwrap_or_else(|e| e.into_inner()).allocated;
        if let Ok(m) = self.log.metadata() {
            if allocated > m.len() {
                let _ = self.log.set_len(m.len());
            }
        }
    }
}

/// Streamed writes ([`Store::stage_streamed`]) of at least this many bytes go to the block log
/// past the page cache (`O_DIRECT`).
const DIRECT_FROM: u64 = 256 << 10;

/// Blocks this close together in the block log are read ahead as one range.
const READ_GAP: u64 = 128 << 10;

/// The unit of direct I/O: buffers, lengths and offsets of direct writes are multiples of it.
const PAGE: u64 = 4096;

/// The block log opened for direct writes, if the file system allows it.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

/// The page-aligned `len` bytes inside `buf`, grown as needed (by a page more than asked).
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len + PAGE as usize {
        *buf = vec![0; len + PAGE as usize];
    }
    let skip = buf.as_ptr().align_offset(PAGE as usize).min(PAGE as usize);
    &mut buf[skip..skip + len]
}

/// Blocks smaller than this on average are joined into one buffer before they are written.
const JOIN_BELOW: u64 = 16 << 10;

/// How far ahead of its end the block log's space is allocated at a time.
const ALLOCATE_AHEAD: u64 = 64 << 20;
/// Space is allocated ahead only while the file system has this much free, so that a nearly
/// full disk is left to RocksDB's own files.
const ALLOCATE_WHILE_FREE: u64 = 16 * ALLOCATE_AHEAD;

impl RocksStore {
    /// Allocates the block log's space up to `end` (and [`ALLOCATE_AHEAD`] beyond) before it is
    /// written, without changing the file's size: writes into allocated space cost the kernel
    /// about a third less than writes that extend the file. A failure (a full disk, a file system
    /// without it) only means writes allocate as they go; they report a full disk themselves.
    fn allocate(&self, allocated: &mut u64, end: u64) {
        if end <= *allocated {
            return;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.log);
        // SAFETY: fstatvfs fills the zeroed struct it is given for our own descriptor.
        let free = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::fstatvfs(fd, &mut st) != 0 {
                return;
            }
            st.f_bavail.saturating_mul(st.f_frsize)
        };
        if free < ALLOCATE_WHILE_FREE {
            return;
        }
        let ahead = self.ahead.load(Ordering::Relaxed);
        let from = (*allocated).max(end.saturating_sub(ahead));
        let len = end - from + ahead;
        // SAFETY: fallocate on our own open file descriptor; KEEP_SIZE leaves its length alone.
        let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, from as libc::off_t, len as libc::off_t) };
        if r == 0 {
            *allocated = from + len;
        }
    }

    /// Stages blocks with one write: `streamed` ones past the page cache when they are large
    /// enough and the file system allows.
    fn stage(&self, blocks: &[[&[u8]; 2]], streamed: bool) -> Result<Vec<Staged>> {
        if blocks.len() < 2 {
            return blocks.iter().map(|parts| self.stage_block(parts.concat())).collect();
        }
        let total: u64 = blocks.iter().flatten().map(|p| p.len() as u64).sum();
        let mut out = Vec::with_capacity(blocks.len());
        let start = self.reserved.fetch_add(total, Ordering::SeqCst);
        let mut at = start;
        for [a, b] in blocks {
            let len = u32::try_from(a.len() + b.len()).map_err(|_| Error::InvalidRequest("block too large".into()))?;
            out.push(Staged { id: at, len });
            at += len as u64;
        }
        let parts: Vec<&[u8]> = blocks.iter().flatten().copied().filter(|p| !p.is_empty()).collect();
        let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.allocate(&mut writing.allocated, start + total);
        if streamed && total >= DIRECT_FROM && !writing.refused {
            if let Some(direct) = &self.direct {
                match self.write_direct(direct, &mut writing.staging, &parts, start) {
                    Ok(()) => return Ok(out),
                    // Refused (alignment, or the file system): this and later writes go through
                    // the page cache.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => writing.refused = true,
                    Err(e) => return Err(self.failed_stage(start, total, e)),
                }
            }
        }
        // Large blocks go in one vectored write per IOV_MAX parts, not copied into a joined
        // buffer; small ones are joined first (the kernel's cost per part outweighs a copy).
        let joined: Vec<u8>;
        let parts: Vec<&[u8]> = if total / (blocks.len() as u64) < JOIN_BELOW {
            joined = parts.concat();
            vec![&joined[..]]
        } else {
            parts
        };
        self.write_parts(&parts, start).map_err(|e| self.failed_stage(start, total, e))?;
        Ok(out)
    }

    /// Writes `parts` (none of them empty), one after the other, at `offset` through the page
    /// cache: one vectored write per IOV_MAX parts.
    fn write_parts(&self, parts: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
        for group in parts.chunks(1024) {
            let mut slices: Vec<std::io::IoSlice<'_>> = group.iter().map(|p| std::io::IoSlice::new(p)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call and
                // the count is at most 1024 (IOV_MAX).
                let n = unsafe {
                    libc::pwritev(
                        std::os::fd::AsRawFd::as_raw_fd(&self.log),
                        rest.as_ptr().cast::<libc::iovec>(),
                        rest.len() as libc::c_int,
                        offset as libc::off_t,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the block log took no bytes"));
                }
                offset += n as u64;
                std::io::IoSlice::advance_slices(&mut rest, n as usize);
            }
        }
        Ok(())
    }

    /// Writes `parts` at `start` with the whole pages among them going direct, copied into the
    /// aligned `staging` buffer; the partial pages at either end (which neighbouring writes
    /// share) go through the page cache. Nothing is written when the direct write is refused.
    fn write_direct(&self, direct: &File, staging: &mut Vec<u8>, parts: &[&[u8]], start: u64) -> std::io::Result<()> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let (from, to) = (start.next_multiple_of(PAGE), (start + total) / PAGE * PAGE);
        if to <= from {
            return self.write_parts(parts, start);
        }
        let buf = aligned(staging, (to - from) as usize);
        // The bytes of [from, to) out of the parts, and the two ends that stay outside it.
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let mut at = start;
        for p in parts {
            let (lo, hi) = (at, at + p.len() as u64);
            let cut = |a: u64, b: u64| &p[(a.clamp(lo, hi) - lo) as usize..(b.clamp(lo, hi) - lo) as usize];
            head.extend_from_slice(cut(start, from));
            let mid = cut(from, to);
            let into = (at.clamp(from, to) - from) as usize;
            buf[into..into + mid.len()].copy_from_slice(mid);
            tail.extend_from_slice(cut(to, start + total));
            at = hi;
        }
        direct.write_all_at(buf, from)?;
        for (bytes, offset) in [(head, start), (tail, to)] {
            if !bytes.is_empty() {
                self.write_parts(&[&bytes], offset)?;
            }
        }
        Ok(())
    }

    /// The (offset, length) in the block log of a block index entry.
    fn place(&self, place: &[u8]) -> Result<(u64, usize)> {
        match (place.get(..8).map(<[u8; 8]>::try_from), place.get(8..).map(<[u8; 4]>::try_from)) {
            (Some(Ok(o)), Some(Ok(l))) => Ok((u64::from_le_bytes(o), u32::from_le_bytes(l) as usize)),
            _ => {
                Err(Error::Damaged { path: self.path.clone(), reason: "a block index entry has the wrong size".into() })
            }
        }
    }

    /// Reads the block bytes an index entry points at.
    fn read_log(&self, place: &[u8]) -> Result<Vec<u8>> {
        let damaged = |reason: String| Error::Damaged { path: self.path.clone(), reason };
        let (offset, len) = self.place(place)?;
        let mut buf = vec![0u8; len];
        self.log
            .read_exact_at(&mut buf, offset)
            .map_err(|e| damaged(format!("reading {len} bytes at {offset} of {LOG_NAME}: {e}")))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FORMAT_VERSION;

    #[test]
    fn second_open_of_a_held_store_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = RocksStore::open(dir.path()).expect("first open");
        let err = RocksStore::open(dir.path()).expect_err("second open must fail");
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another process"));
    }

    #[test]
    fn a_version_1_store_opens_reads_its_whole_pages_and_is_marked_current() {
        use crate::crypto::KeyPair;
        use crate::hypercore::{bitfield, Hypercore};
        let dir = tempfile::tempdir().expect("tempdir");
        let key = {
            let s: std::sync::Arc<dyn Store> = std::sync::Arc::new(RocksStore::open(dir.path()).expect("open"));
            let mut core = Hypercore::create(s.clone(), KeyPair::from_seed(&[3; 32]), false).expect("core");
            for i in 0..10 {
                core.append(format!("block {i}").as_bytes()).expect("append");
            }
            // As version 1 left it: its format record, and each bitfield page stored whole.
            let mut b = Batch { sync: true, ..Batch::default() };
            b.put(Table::Meta, b"format".to_vec(), 1u64.to_le_bytes().to_vec());
            let rows = s.scan(Table::Bitfield, &[], &[0xff; 32]).expect("scan");
            assert!(!rows.is_empty() && rows.iter().all(|(_, v)| v.len() < 16), "stored as runs: {rows:?}");
            for (k, v) in rows {
                b.put(Table::Bitfield, k, bitfield::decode_page(&v).expect("page").to_vec());
            }
            s.write(b).expect("write");
            *core.key()
        };
        let s: std::sync::Arc<dyn Store> = std::sync::Arc::new(RocksStore::open(dir.path()).expect("opens"));
        let format = s.get(Table::Meta, b"format").expect("get");
        assert_eq!(format, Some(FORMAT_VERSION.to_le_bytes().to_vec()), "marked current: older builds refuse it");
        let core = Hypercore::open(s, &key).expect("open core").expect("core");
        assert!((0..10).all(|i| core.has(i)) && !core.has(10), "whole pages read as before");
    }

    #[test]
    fn a_store_killed_before_its_format_record_opens_as_new_and_one_with_data_is_damaged() {
        let raw = |dir: &Path, rows: &[(&str, &[u8], &[u8])]| {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir, Table::ALL.map(|t| t.name())).expect("raw open");
            for (cf, k, v) in rows {
                db.put_cf(db.cf_handle(cf).expect("cf"), k, v).expect("put");
            }
        };
        // RocksDB made its files, then the process died: nothing of ours is in it.
        let empty = tempfile::tempdir().expect("tempdir");
        raw(empty.path(), &[]);
        let s = RocksStore::open(empty.path()).expect("an empty store without its format record opens");
        assert_eq!(s.get(Table::Meta, b"format").expect("get"), Some(FORMAT_VERSION.to_le_bytes().to_vec()));
        drop(s);
        RocksStore::open(empty.path()).expect("and opens again");
        // A store holding records but no format record is damaged, and left as it is.
        let held = tempfile::tempdir().expect("tempdir");
        raw(held.path(), &[("heads", b"\0\0\0\0\0\0\0\x01", b"head")]);
        let err = RocksStore::open(held.path()).expect_err("refused");
        assert!(matches!(err, Error::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("format record is missing"), "{err}");
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
    fn block_log_cuts_uncommitted_bytes_and_reports_lost_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = RocksStore::open(dir.path()).expect("open");
            let mut b = Batch::default();
            b.put(Table::Blocks, b"block-k1".to_vec(), b"first block".to_vec());
            b.put(Table::Blocks, b"block-k2".to_vec(), b"second".to_vec());
            s.write(b).expect("write");
        }
        let log = dir.path().join(LOG_NAME);
        // A batch that crashed before committing left bytes past the tail.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"orphan"))
            .expect("append");
        {
            let s = RocksStore::open(dir.path()).expect("reopen");
            assert_eq!(std::fs::metadata(&log).expect("stat").len(), 17);
            assert_eq!(s.get(Table::Blocks, b"block-k2").expect("get").as_deref(), Some(&b"second"[..]));
            assert!(s.contains(Table::Blocks, b"block-k1").expect("contains"));
        }
        // Committed bytes that never reached the disk (nothing was synced): the store opens,
        // and the recovery finds both blocks lost (one cut short, one gone), drops them and
        // remembers them until the cores have caught up.
        std::fs::OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(5)).expect("truncate");
        let s = RocksStore::open(dir.path()).expect("a store whose log lost its tail opens");
        let expected =
            |k: &[u8], v: &[u8]| (k == b"block-k1" && v == b"first block") || (k == b"block-k2" && v == b"second");
        let mut lost = s.recover_blocks(&expected).expect("recover");
        lost.sort();
        assert_eq!(lost, vec![b"block-k1".to_vec(), b"block-k2".to_vec()]);
        assert!(!s.contains(Table::Blocks, b"block-k1").expect("contains"));
        drop(s);
        let s = RocksStore::open(dir.path()).expect("reopen");
        assert_eq!(s.recover_blocks(&|_, _| false).expect("again").len(), 2, "remembered until forgotten");
        s.forget_lost().expect("forget");
        assert!(s.recover_blocks(&|_, _| false).expect("again").is_empty());
        // A block written and synced afterwards is never suspect again.
        let mut b = Batch { sync: true, ..Batch::default() };
        b.put(Table::Blocks, b"block-k3".to_vec(), b"third".to_vec());
        s.write(b).expect("write");
        drop(s);
        let s = RocksStore::open(dir.path()).expect("reopen");
        assert!(s.recover_blocks(&|_, _| false).expect("clean").is_empty());
        assert_eq!(s.get(Table::Blocks, b"block-k3").expect("get").as_deref(), Some(&b"third"[..]));
    }

    #[test]
    fn streamed_writes_past_the_page_cache_keep_their_neighbours() {
        // Streamed batches go direct in whole pages and share their partial end pages with
        // the cached writes around them: every byte must come back, after a reopen too.
        let dir = tempfile::tempdir().expect("tempdir");
        let noise = |len: usize, seed: u64| -> Vec<u8> {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        // Keys as long as the leaf hashes they stand for (the table's buckets take 8 bytes).
        let key = |name: String| format!("{name:<32}").into_bytes();
        let mut written: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        {
            let s = RocksStore::open(dir.path()).expect("open");
            assert!(s.direct.is_some(), "the test's file system takes direct I/O");
            let mut batch = Batch::default();
            for round in 0..4u64 {
                // Cached blocks first, so the streamed batch starts at an unaligned offset (in
                // round 0 at an aligned one).
                let small: Vec<Vec<u8>> =
                    (0..round).map(|i| noise(1 + (round * 777 + i) as usize, round + i)).collect();
                let parts: Vec<[&[u8]; 2]> = small.iter().map(|b| [&b[..1], &b[1..]]).collect();
                for (i, (st, b)) in s.stage_blocks(&parts).expect("stage small").into_iter().zip(small).enumerate() {
                    batch.put_staged(key(format!("small {round}-{i}")), st);
                    written.push((key(format!("small {round}-{i}")), b));
                }
                let blocks: Vec<Vec<u8>> = (0..40)
                    .map(|i| noise(30_000 + (i * 1237 + round as usize * 11) % 40_000, round * 100 + i as u64))
                    .collect();
                // Tags as the block log stores them: some blocks whole in their first part.
                let parts: Vec<[&[u8]; 2]> = blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| if i % 3 == 0 { [&b[..], &[][..]] } else { [&b[..1], &b[1..]] })
                    .collect();
                let staged = s.stage_streamed(&parts).expect("stage streamed");
                assert!(staged.iter().map(|x| x.len as u64).sum::<u64>() >= DIRECT_FROM, "large enough to go direct");
                for (i, (st, b)) in staged.into_iter().zip(blocks).enumerate() {
                    batch.put_staged(key(format!("large {round}-{i}")), st);
                    written.push((key(format!("large {round}-{i}")), b));
                }
            }
            assert!(!s.writing.lock().expect("lock").refused, "direct writes were taken");
            s.write(batch).expect("commit");
            reads_back(&s, &written);
        }
        reads_back(&RocksStore::open(dir.path()).expect("reopen"), &written);
    }

    /// Asserts that every block of `written` reads back from `s` as it was written.
    fn reads_back(s: &RocksStore, written: &[(Vec<u8>, Vec<u8>)]) {
        for (k, v) in written {
            assert!(
                s.get(Table::Blocks, k).expect("get").as_ref() == Some(v),
                "{} reads back wrong",
                String::from_utf8_lossy(k)
            );
        }
    }

    #[test]
    fn staged_blocks_commit_in_any_order_and_uncommitted_ones_vanish() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = RocksStore::open(dir.path()).expect("open");
            let a = s.stage_block(b"aaaa".to_vec()).expect("stage");
            let b = s.stage_block(b"bbbbbb".to_vec()).expect("stage");
            let _never = s.stage_block(b"cc".to_vec()).expect("stage");
            let mut batch = Batch::default();
            batch.put_staged(b"b".to_vec(), b);
            s.write(batch).expect("commit b");
            let mut batch = Batch::default();
            batch.put_staged(b"a".to_vec(), a);
            s.write(batch).expect("commit a after b");
        }
        let s = RocksStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get(Table::Blocks, b"a").expect("get").as_deref(), Some(&b"aaaa"[..]));
        assert_eq!(s.get(Table::Blocks, b"b").expect("get").as_deref(), Some(&b"bbbbbb"[..]));
        // The block staged last was never committed: it is cut off, and new bytes go after b.
        assert_eq!(std::fs::metadata(dir.path().join(LOG_NAME)).expect("stat").len(), 10);
        let c = s.stage_block(b"dd".to_vec()).expect("stage");
        assert_eq!(c.id, 10);
    }

    #[test]
    fn a_range_of_a_block_is_read_without_the_rest_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RocksStore::open(dir.path()).expect("open");
        // Keyed like real blocks, by a 32-byte hash.
        let (key, absent) = ([7u8; 32], [8u8; 32]);
        let block: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
        let mut batch = Batch::default();
        batch.put_staged(key.to_vec(), s.stage_block(block.clone()).expect("stage"));
        s.write(batch).expect("commit");
        let n = block.len();
        let mut page = vec![0u8; 4096];
        assert_eq!(s.read_block_range(&key, n, 8192, &mut page).expect("read"), Some(n));
        assert_eq!(page, block[8192..][..4096]);
        // A stored length other than the one expected, or a range past the end: nothing read.
        page.fill(0);
        assert_eq!(s.read_block_range(&key, n + 1, 0, &mut page).expect("read"), Some(n));
        assert_eq!(s.read_block_range(&key, n, n - 100, &mut page).expect("read"), Some(n));
        assert!(page.iter().all(|&b| b == 0));
        assert_eq!(s.read_block_range(&absent, n, 0, &mut page).expect("read"), None);
        // The log loses the block's second half: its first half still reads, its second half
        // reports the damaged store.
        let log = std::fs::OpenOptions::new().write(true).open(dir.path().join(LOG_NAME)).expect("open log");
        log.set_len((n / 2) as u64).expect("cut");
        assert_eq!(s.read_block_range(&key, n, 0, &mut page).expect("the intact half"), Some(n));
        assert_eq!(page, block[..4096]);
        let err = s.read_block_range(&key, n, n - 4096, &mut page).expect_err("the cut half");
        assert!(matches!(&err, Error::Damaged { reason, .. } if reason.contains(LOG_NAME)), "{err}");
    }

    #[test]
    fn space_allocated_ahead_of_the_block_log_is_given_back_on_close() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(LOG_NAME);
        let used = || std::fs::metadata(&log).expect("stat").blocks() * 512;
        let s = RocksStore::open(dir.path()).expect("open");
        let mut batch = Batch::default();
        batch.put_staged(b"a".to_vec(), s.stage_block(vec![7u8; 1 << 20]).expect("stage"));
        s.write(batch).expect("commit");
        // SAFETY: statvfs of an existing path into a zeroed struct.
        let free = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            let p = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
            assert_eq!(libc::statvfs(p.as_ptr(), &mut st), 0);
            st.f_bavail * st.f_frsize
        };
        if free >= ALLOCATE_WHILE_FREE + ALLOCATE_AHEAD {
            assert!(used() >= ALLOCATE_AHEAD, "{} bytes allocated ahead", used());
        }
        assert_eq!(std::fs::metadata(&log).expect("stat").len(), 1 << 20, "allocating ahead keeps the length");
        drop(s);
        assert!(used() <= (1 << 20) + (64 << 10), "{} bytes still allocated after close", used());
        let s = RocksStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get(Table::Blocks, b"a").expect("get"), Some(vec![7u8; 1 << 20]));
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
