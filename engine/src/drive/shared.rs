//! One owner per drive: writes are serialised by the owner, and every state they leave is
//! published as a frozen copy of the drive that readers take without waiting.
//!
//! A [`SharedDrive`] is what the node hands to its mounts, its command handlers and the network.
//! A writer takes [`SharedDrive::write`] (one at a time); when it lets go, the drive as it left
//! it is published. A reader takes [`SharedDrive::snapshot`] — an `Arc` of a
//! [`Drive::frozen_copy`] — which costs a pointer copy under a lock held for nothing else, and
//! keeps it as long as it likes: a read never waits on a write in progress (a close chunking a
//! large file, a replica's refresh), and a write never waits on a reader (one stalled on a
//! peer). Whoever needs to know of a new version subscribes ([`SharedDrive::on_change`]) instead
//! of polling.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::crypto::CoreKey;
use crate::drive::Drive;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a listener is told: the drive as just published.
pub type Listener = Arc<dyn Fn(&Arc<Drive>) + Send + Sync>;

/// The state a version change is told by: (db fork, version, blobs length).
pub type DriveState = (u64, u64, u64);

/// A drive with one owner for its writes and published snapshots for its reads.
pub struct SharedDrive {
    key: CoreKey,
    writable: bool,
    owner: Mutex<Drive>,
    current: Mutex<Arc<Drive>>,
    listeners: Mutex<Vec<(u64, Listener)>>,
    next_listener: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SharedDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDrive").field("key", &hex::encode(self.key)).finish_non_exhaustive()
    }
}

/// The state of a drive that readers notice.
pub fn state_of(d: &Drive) -> DriveState {
    (d.db().core().fork(), d.version(), d.blobs().length())
}

impl SharedDrive {
    pub fn new(drive: Drive) -> Arc<SharedDrive> {
        let current = Arc::new(drive.frozen_copy());
        Arc::new(SharedDrive {
            key: *drive.key(),
            writable: drive.writable(),
            owner: Mutex::new(drive),
            current: Mutex::new(current),
            listeners: Mutex::new(Vec::new()),
            next_listener: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn key(&self) -> &CoreKey {
        &self.key
    }

    /// Whether this node writes the drive.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The drive as its last write left it. Never waits on a write in progress.
    pub fn snapshot(&self) -> Arc<Drive> {
        lock(&self.current).clone()
    }

    /// The drive for a change, once the writes before have finished; what it leaves is
    /// published when the guard is dropped (if it was used to change anything: only a mutable
    /// use of the guard publishes).
    pub fn write(&self) -> Writing<'_> {
        Writing { shared: self, drive: Some(lock(&self.owner)), touched: false }
    }

    /// Calls `f` with every snapshot that changes the drive's state (a new version, a fork, new
    /// content), on the writer's thread after it let the drive go: `f` must be quick (send on a
    /// channel). Returns an id for [`SharedDrive::off`].
    pub fn on_change(&self, f: Listener) -> u64 {
        let id = self.next_listener.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.listeners).push((id, f));
        id
    }

    pub fn off(&self, id: u64) {
        lock(&self.listeners).retain(|(i, _)| *i != id);
    }

    fn publish(&self, drive: &Drive) -> Option<Arc<Drive>> {
        let fresh = Arc::new(drive.frozen_copy());
        let old = std::mem::replace(&mut *lock(&self.current), fresh.clone());
        (state_of(&old) != state_of(&fresh)).then_some(fresh)
    }
}

/// The drive held for a change (see [`SharedDrive::write`]).
pub struct Writing<'a> {
    shared: &'a SharedDrive,
    drive: Option<MutexGuard<'a, Drive>>,
    /// The drive was borrowed mutably: it may have changed, and is published on release.
    touched: bool,
}

impl std::ops::Deref for Writing<'_> {
    type Target = Drive;
    fn deref(&self) -> &Drive {
        self.drive.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Drive {
        self.touched = true;
        self.drive.as_mut().expect("held until dropped")
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let Some(d) = self.drive.take() else { return };
        if !self.touched {
            return;
        }
        let changed = self.shared.publish(&d);
        drop(d);
        if let Some(snap) = changed {
            let listeners: Vec<Listener> = lock(&self.shared.listeners).iter().map(|(_, f)| f.clone()).collect();
            for f in listeners {
                f(&snap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::drive::{keys, PutOptions};
    use crate::store::{MemStore, Store};
    use crate::Error;

    fn shared() -> Arc<SharedDrive> {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        SharedDrive::new(Drive::create(store, keys::drive_key_pair(&[9; 32], None)).expect("create"))
    }

    fn put(d: &SharedDrive, path: &str, data: &[u8]) {
        d.write().put(path, data, &PutOptions::default()).expect("put");
    }

    #[test]
    fn readers_never_wait_on_a_write_in_progress() {
        let d = shared();
        put(&d, "/a.txt", b"first");
        let (holding, held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let writer = {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut w = d.write();
                w.put("/b.txt", b"second", &PutOptions::default()).expect("put");
                holding.send(()).expect("tell");
                released.recv().expect("wait");
            })
        };
        held.recv().expect("the writer holds the drive");
        // The write is committed but not let go: readers see the drive as before it, at once.
        let (tx, rx) = mpsc::channel();
        let reader = {
            let d = d.clone();
            std::thread::spawn(move || {
                let s = d.snapshot();
                tx.send((s.get("/a.txt").expect("read"), s.exists("/b.txt").expect("exists"))).expect("send");
            })
        };
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("the reader did not wait on the writer");
        assert_eq!(got, (Some(b"first".to_vec()), false));
        release.send(()).expect("release");
        writer.join().expect("writer");
        reader.join().expect("reader");
        assert_eq!(d.snapshot().get("/b.txt").expect("read"), Some(b"second".to_vec()));
    }

    #[test]
    fn a_snapshot_keeps_its_version_while_the_drive_moves_on() {
        let d = shared();
        put(&d, "/f", b"one");
        let old = d.snapshot();
        put(&d, "/f", b"two");
        d.write().del("/f").expect("del");
        assert_eq!(old.get("/f").expect("read"), Some(b"one".to_vec()));
        assert_eq!(d.snapshot().get("/f").expect("read"), None);
        assert!(d.snapshot().version() > old.version());
    }

    #[test]
    fn listeners_hear_each_new_state_once_and_nothing_else() {
        let d = shared();
        let (tx, rx) = mpsc::channel();
        let id = d.on_change(Arc::new(move |s: &Arc<Drive>| tx.send(s.version()).expect("send")));
        put(&d, "/x", b"1");
        let v = d.snapshot().version();
        // A write that changes nothing is not a new state (nor published: only a mutable use
        // of the guard publishes).
        d.write().flush().expect("flush");
        let before = d.snapshot();
        let _ = d.write().version();
        assert!(Arc::ptr_eq(&before, &d.snapshot()), "a guard only read from publishes nothing");
        put(&d, "/y", b"2");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![v, d.snapshot().version()]);
        d.off(id);
        put(&d, "/z", b"3");
        assert!(rx.try_recv().is_err(), "a listener taken off hears nothing");
    }

    #[test]
    fn a_frozen_copy_refuses_every_change() {
        let d = shared();
        put(&d, "/f", b"data");
        let mut copy = d.snapshot().frozen_copy();
        assert!(matches!(copy.put("/g", b"x", &PutOptions::default()), Err(Error::NotWritable)));
        assert!(matches!(copy.truncate(1), Err(Error::NotWritable)));
        assert!(matches!(copy.blobs_mut().append(b"x"), Err(Error::NotWritable)));
        assert!(matches!(copy.blobs_mut().forget(&[0]), Err(Error::NotWritable)));
        assert!(matches!(copy.refresh(), Err(Error::NotWritable)));
        // The owner's drive is untouched, and still takes changes.
        put(&d, "/g", b"y");
        assert_eq!(d.snapshot().get("/f").expect("read"), Some(b"data".to_vec()));
    }

    #[test]
    fn a_snapshot_from_before_a_truncation_never_reads_the_new_history() {
        let d = shared();
        put(&d, "/f", b"old bytes of the first history");
        let old = d.snapshot();
        let blob = old.entry("/f").expect("entry").expect("some").1.blob.expect("blob");
        {
            let mut w = d.write();
            w.truncate(1).expect("truncate");
        }
        // The new history writes other bytes where the old blob's blocks were.
        put(&d, "/f", b"new bytes, other ones, longer...");
        match old.read_blob(&blob, 0, blob.byte_length) {
            Err(Error::StaleSnapshot { .. }) => {}
            other => panic!("a stale snapshot read {other:?}"),
        }
    }
}
