//! The shared-memory object store of one node.
//!
//! Large objects live as files in one directory (under `/dev/shm` by default), each named by
//! its object id in hex. A writer (driver or worker) asks the node to reserve room
//! ([`Store::reserve`]), writes `<id>.partial` itself, maps and fills it, renames it to
//! `<id>` and asks the node to seal it ([`Store::seal`]): a half-written object is never
//! visible under its final name. Readers map the file read-only: no bytes go through the
//! node or a socket.
//!
//! [`StoreIndex`] is the pure bookkeeping (capacity, reservations, sealed objects);
//! [`Store`] adds the directory and its files.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use shoal_protocol::{CreateOutcome, NodeId, ObjectId, SharedObject, StoreError};

/// Who made a reservation: a node-local connection number.
pub type Holder = u64;

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Reserved { size: u64, holder: Holder },
    Sealed(SharedObject),
}

/// Capacity accounting and the set of objects, with no I/O.
#[derive(Debug)]
pub struct StoreIndex {
    capacity: u64,
    used: u64,
    entries: HashMap<ObjectId, Entry>,
}

impl StoreIndex {
    /// An empty index of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            entries: HashMap::new(),
        }
    }

    /// Reserves `size` bytes for `id`.
    pub fn reserve(
        &mut self,
        id: ObjectId,
        size: u64,
        holder: Holder,
    ) -> Result<CreateOutcome, StoreError> {
        if self.entries.contains_key(&id) {
            return Ok(CreateOutcome::Exists);
        }
        if self.used.saturating_add(size) > self.capacity {
            return Err(StoreError::Full {
                requested: size,
                used: self.used,
                capacity: self.capacity,
            });
        }
        self.used += size;
        self.entries.insert(id, Entry::Reserved { size, holder });
        Ok(CreateOutcome::Write)
    }

    /// Marks a reservation as sealed. The object must match the reservation.
    pub fn seal(&mut self, id: ObjectId, object: SharedObject) -> Result<(), StoreError> {
        match self.entries.get(&id) {
            Some(Entry::Reserved { size, .. }) if *size == object.size => {
                self.entries.insert(id, Entry::Sealed(object));
                Ok(())
            }
            Some(Entry::Reserved { size, .. }) => Err(StoreError::Mismatch(format!(
                "object {id} reserved {size} bytes but sealed {}",
                object.size
            ))),
            Some(Entry::Sealed(_)) => Err(StoreError::Mismatch(format!(
                "object {id} is already sealed"
            ))),
            None => Err(StoreError::Mismatch(format!(
                "object {id} was never reserved"
            ))),
        }
    }

    /// Forgets `id`, sealed or not; returns whether it was sealed.
    pub fn remove(&mut self, id: &ObjectId) -> Option<bool> {
        let e = self.entries.remove(id)?;
        let (size, sealed) = match e {
            Entry::Reserved { size, .. } => (size, false),
            Entry::Sealed(o) => (o.size, true),
        };
        self.used -= size;
        Some(sealed)
    }

    /// Unsealed reservations of `holder`.
    pub fn reservations_of(&self, holder: Holder) -> Vec<ObjectId> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Reserved { holder: h, .. } if *h == holder))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The sealed object `id`, if any.
    pub fn sealed(&self, id: &ObjectId) -> Option<SharedObject> {
        match self.entries.get(id) {
            Some(Entry::Sealed(o)) => Some(*o),
            _ => None,
        }
    }

    /// Bytes reserved or sealed.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The byte limit.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sealed objects.
    pub fn sealed_count(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::Sealed(_)))
            .count() as u64
    }
}

/// The store: its directory and index.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    index: StoreIndex,
}

/// The file of object `id` in store directory `dir`.
pub fn object_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(id.to_hex())
}

/// The file a writer fills before renaming it to [`object_path`].
pub fn partial_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(format!("{}.partial", id.to_hex()))
}

impl Store {
    /// Makes the directory `shoal-<pid>-<node id>` under `parent`, first removing directories
    /// left there by nodes whose process is gone.
    pub fn open(parent: &Path, node: NodeId, capacity: u64) -> io::Result<Self> {
        remove_stale_dirs(parent);
        let dir = parent.join(format!("shoal-{}-{}", std::process::id(), node));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            index: StoreIndex::new(capacity),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bookkeeping.
    pub fn index(&self) -> &StoreIndex {
        &self.index
    }

    /// See [`StoreIndex::reserve`].
    pub fn reserve(
        &mut self,
        id: ObjectId,
        size: u64,
        holder: Holder,
    ) -> Result<CreateOutcome, StoreError> {
        self.index.reserve(id, size, holder)
    }

    /// Checks that the writer's file is in place with the reserved size, then seals.
    pub fn seal(&mut self, id: ObjectId, object: SharedObject) -> Result<(), StoreError> {
        let len = std::fs::metadata(object_path(&self.dir, &id))
            .map_err(|e| StoreError::Io(format!("sealing {id}: {e}")))?
            .len();
        if len != object.size {
            return Err(StoreError::Mismatch(format!(
                "object {id} file has {len} bytes, sealed as {}",
                object.size
            )));
        }
        self.index.seal(id, object)
    }

    /// Drops a reservation or a sealed object and its file.
    pub fn remove(&mut self, id: &ObjectId) {
        if let Some(sealed) = self.index.remove(id) {
            let path = if sealed {
                object_path(&self.dir, id)
            } else {
                partial_path(&self.dir, id)
            };
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(object = %id, error = %e, "cannot remove store file");
                }
            }
            if !sealed {
                // A writer may have renamed before dying, without sealing.
                let _ = std::fs::remove_file(object_path(&self.dir, id));
            }
        }
    }

    /// Drops the unsealed reservations of a writer that went away.
    pub fn abort_holder(&mut self, holder: Holder) {
        for id in self.index.reservations_of(holder) {
            self.remove(&id);
        }
    }

    /// Removes the directory and everything in it.
    pub fn destroy(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes `shoal-<pid>-*` directories under `parent` whose pid no longer runs.
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("shoal-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || process_alive(pid) {
            continue;
        }
        tracing::info!(dir = %entry.path().display(), pid, "removing store directory of a dead node");
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Whether a process with this pid exists (and is not a zombie we could tell apart).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::Digest;

    fn obj(size: u64) -> SharedObject {
        SharedObject {
            size,
            digest: Digest([0; 32]),
        }
    }

    #[test]
    fn capacity_is_enforced_with_sizes_in_the_error() {
        let mut ix = StoreIndex::new(100);
        let a = ObjectId([1; 32]);
        let b = ObjectId([2; 32]);
        assert_eq!(ix.reserve(a, 60, 1), Ok(CreateOutcome::Write));
        assert_eq!(
            ix.reserve(b, 50, 1),
            Err(StoreError::Full {
                requested: 50,
                used: 60,
                capacity: 100
            })
        );
        assert_eq!(
            ix.reserve(a, 60, 2),
            Ok(CreateOutcome::Exists),
            "same id: dedup"
        );
        ix.seal(a, obj(60)).unwrap();
        assert_eq!(ix.sealed(&a), Some(obj(60)));
        assert_eq!(ix.remove(&a), Some(true));
        assert_eq!(ix.used(), 0);
        assert_eq!(ix.reserve(b, 50, 1), Ok(CreateOutcome::Write));
    }

    #[test]
    fn seal_must_match_reservation() {
        let mut ix = StoreIndex::new(100);
        let a = ObjectId([1; 32]);
        assert!(ix.seal(a, obj(1)).is_err());
        ix.reserve(a, 10, 7).unwrap();
        assert!(matches!(ix.seal(a, obj(11)), Err(StoreError::Mismatch(_))));
        assert_eq!(ix.reservations_of(7), vec![a]);
        ix.seal(a, obj(10)).unwrap();
        assert!(ix.reservations_of(7).is_empty());
        assert_eq!(ix.sealed_count(), 1);
    }

    #[test]
    fn store_files_and_stale_dirs() {
        let parent = std::env::temp_dir().join(format!("shoal-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        // A directory of a pid that cannot exist is stale.
        let stale = parent.join("shoal-2147483646-abc");
        std::fs::create_dir_all(&stale).unwrap();
        let mut store = Store::open(&parent, NodeId([3; 16]), 1 << 20).unwrap();
        assert!(!stale.exists());
        let id = ObjectId([9; 32]);
        store.reserve(id, 4, 1).unwrap();
        std::fs::write(partial_path(store.dir(), &id), b"abcd").unwrap();
        assert!(store.seal(id, obj(4)).is_err(), "not renamed yet");
        std::fs::rename(
            partial_path(store.dir(), &id),
            object_path(store.dir(), &id),
        )
        .unwrap();
        store.seal(id, obj(4)).unwrap();
        store.remove(&id);
        assert!(!object_path(store.dir(), &id).exists());
        store.reserve(id, 4, 2).unwrap();
        std::fs::write(partial_path(store.dir(), &id), b"ab").unwrap();
        store.abort_holder(2);
        assert!(!partial_path(store.dir(), &id).exists());
        assert_eq!(store.index().used(), 0);
        store.destroy();
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
