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

use crate::crypto::Hash;
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
    key: Hash,
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

    pub fn key(&self) -> &Hash {
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
    /// published when the guard is dropped.
    pub fn write(&self) -> Writing<'_> {
        Writing { shared: self, drive: Some(lock(&self.owner)) }
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
}

impl std::ops::Deref for Writing<'_> {
    type Target = Drive;
    fn deref(&self) -> &Drive {
        self.drive.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Drive {
        self.drive.as_mut().expect("held until dropped")
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let Some(d) = self.drive.take() else { return };
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
