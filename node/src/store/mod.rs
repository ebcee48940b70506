//! The shared-memory object store of one node.
//!
//! Large objects live as files in one directory (under `/dev/shm` by default), each named by
//! its object id in hex. A writer (driver or worker) asks the node to reserve room
//! ([`Store::reserve`]) under a ticket id, creates `<ticket>.partial` itself, maps and fills
//! it, and asks the node to seal it ([`Store::seal`]); the node renames it to `<id>`, so a
//! half-written object is never visible under an object's name. Readers map the file
//! read-only: no bytes go through the node or a socket.
//!
//! When memory is short, objects go to a spill directory on disk (least recently used first)
//! and come back when read, their digest checked ([`Store::ensure_in_memory`]).
//!
//! [`StoreIndex`] is the pure bookkeeping (capacity, locations, what to evict or spill);
//! [`Store`] adds the directories and their files.

use std::io;
use std::path::{Path, PathBuf};

use shoal_protocol::{CreateOutcome, Digest, NodeId, ObjectId, SharedObject, StoreError};

mod index;

pub use index::{Holder, Location, Plan, Sealed, StoreIndex};

/// Why a spilled object could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No room in memory, even after spilling.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The disk copy does not match its digest.
    #[error("the spilled copy does not match its digest: {0}")]
    Corrupted(String),
}

/// The store: its directories and index.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    spill_dir: PathBuf,
    index: StoreIndex,
}

/// The file of object `id` in store directory `dir`.
pub fn object_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(id.to_hex())
}

/// The file a writer fills before the node renames it to [`object_path`].
pub fn partial_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(format!("{}.partial", id.to_hex()))
}

impl Store {
    /// Makes the directories `shoal-<pid>-<node id>` under `parent` (memory) and
    /// `spill_parent` (disk), first removing directories left there by nodes whose process
    /// is gone.
    pub fn open(
        parent: &Path,
        spill_parent: &Path,
        node: NodeId,
        capacity: u64,
    ) -> io::Result<Self> {
        remove_stale_dirs(parent);
        remove_stale_dirs(spill_parent);
        let name = format!("shoal-{}-{}", std::process::id(), node);
        let dir = parent.join(&name);
        std::fs::create_dir_all(&dir)?;
        let spill_dir = spill_parent.join(&name);
        std::fs::create_dir_all(&spill_dir)?;
        Ok(Self {
            dir,
            spill_dir,
            index: StoreIndex::new(capacity),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spill directory.
    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// The bookkeeping.
    pub fn index(&self) -> &StoreIndex {
        &self.index
    }

    /// Reserves room for object (or ticket) `id`, spilling or evicting others if needed.
    pub fn reserve(
        &mut self,
        id: ObjectId,
        size: u64,
        holder: Holder,
    ) -> Result<CreateOutcome, StoreError> {
        if self.index.contains(&id) {
            return Ok(CreateOutcome::Exists);
        }
        self.make_room(size)?;
        self.index.reserve(id, size, holder)?;
        Ok(CreateOutcome::Write)
    }

    fn make_room(&mut self, size: u64) -> Result<(), StoreError> {
        let plan = self.index.plan_room(size)?;
        if plan.is_empty() {
            return Ok(());
        }
        for id in &plan.evict {
            remove_file(&object_path(&self.dir, id));
            self.index.evicted(id);
        }
        for id in &plan.spill {
            let from = object_path(&self.dir, id);
            let to = object_path(&self.spill_dir, id);
            match std::fs::copy(&from, &to) {
                Ok(_) => {
                    remove_file(&from);
                    self.index.spilled(id);
                    tracing::debug!(object = %id, "spilled to disk");
                }
                Err(e) => {
                    tracing::error!(object = %id, error = %e, to = %to.display(), "cannot spill");
                    let _ = std::fs::remove_file(&to);
                }
            }
        }
        Ok(())
    }

    /// Checks the writer's partial file of `ticket`, then seals it as `id` and renames it
    /// into place (or drops it if equal bytes are there already).
    pub fn seal(
        &mut self,
        ticket: ObjectId,
        id: ObjectId,
        object: SharedObject,
    ) -> Result<Sealed, StoreError> {
        let partial = partial_path(&self.dir, &ticket);
        let len = std::fs::metadata(&partial)
            .map_err(|e| StoreError::Io(format!("sealing {id}: {e}")))?
            .len();
        if len != object.size {
            return Err(StoreError::Mismatch(format!(
                "object {id} file has {len} bytes, sealed as {}",
                object.size
            )));
        }
        let sealed = self.index.seal(ticket, id, object)?;
        match sealed {
            Sealed::New => {
                if let Err(e) = std::fs::rename(&partial, object_path(&self.dir, &id)) {
                    self.index.remove(&id);
                    remove_file(&partial);
                    return Err(StoreError::Io(format!("sealing {id}: {e}")));
                }
            }
            Sealed::Duplicate => remove_file(&partial),
        }
        Ok(sealed)
    }

    /// Drops a reservation or an object and its files.
    pub fn remove(&mut self, id: &ObjectId) {
        let Some((mem, disk)) = self.index.remove(id) else {
            return;
        };
        match mem {
            Some(Location::Writing) => remove_file(&partial_path(&self.dir, id)),
            Some(_) => remove_file(&object_path(&self.dir, id)),
            None => {}
        }
        if disk {
            remove_file(&object_path(&self.spill_dir, id));
        }
    }

    /// Makes sure `id` is in memory, reading it back from disk (digest checked) if it was
    /// spilled. Marks it used.
    pub fn ensure_in_memory(&mut self, id: &ObjectId) -> Result<(), RestoreError> {
        self.index.touch(id);
        if self.index.location(id) != Some(Location::Disk) {
            return Ok(());
        }
        let Some(object) = self.index.sealed(id) else {
            return Err(StoreError::Mismatch(format!("object {id} is not sealed")).into());
        };
        self.make_room(object.size)?;
        self.index.restoring(id)?;
        match self.restore_file(id, object.digest) {
            Ok(()) => {
                tracing::debug!(object = %id, "read back from disk");
                Ok(())
            }
            Err(e) => {
                self.index.restore_failed(id);
                tracing::error!(object = %id, error = %e, "cannot read a spilled object back");
                Err(e)
            }
        }
    }

    fn restore_file(&self, id: &ObjectId, digest: Digest) -> Result<(), RestoreError> {
        let from = object_path(&self.spill_dir, id);
        let bytes = std::fs::read(&from)
            .map_err(|e| StoreError::Io(format!("reading {}: {e}", from.display())))?;
        let found = Digest::of(&bytes);
        if found != digest {
            return Err(RestoreError::Corrupted(format!(
                "{} has digest {found}, recorded {digest}",
                from.display()
            )));
        }
        let tmp = self.dir.join(format!("{}.restoring", id.to_hex()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, object_path(&self.dir, id)))
            .map_err(|e| {
                remove_file(&tmp);
                StoreError::Io(format!("restoring {id}: {e}"))
            })?;
        Ok(())
    }

    /// See [`StoreIndex::pin`].
    pub fn pin(&mut self, id: &ObjectId) {
        self.index.pin(id)
    }

    /// See [`StoreIndex::unpin`].
    pub fn unpin(&mut self, id: &ObjectId) {
        self.index.unpin(id)
    }

    /// Drops the unsealed reservations of a writer that went away.
    pub fn abort_holder(&mut self, holder: Holder) {
        for id in self.index.reservations_of(holder) {
            self.remove(&id);
        }
    }

    /// Drops `holder`'s reservation `id` (the writer gave up).
    pub fn abort(&mut self, id: &ObjectId, holder: Holder) {
        if self.index.reserved_by(id, holder) {
            self.remove(id);
        }
    }

    /// Removes the directories and everything in them.
    pub fn destroy(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.spill_dir);
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove store file");
        }
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

    fn obj(bytes: &[u8]) -> SharedObject {
        SharedObject {
            size: bytes.len() as u64,
            digest: Digest::of(bytes),
        }
    }

    fn write(store: &mut Store, ticket: ObjectId, bytes: &[u8]) -> Result<Sealed, StoreError> {
        assert_eq!(
            store.reserve(ticket, bytes.len() as u64, 1)?,
            CreateOutcome::Write
        );
        std::fs::write(partial_path(store.dir(), &ticket), bytes).unwrap();
        store.seal(ticket, ticket, obj(bytes))
    }

    #[test]
    fn files_spill_restore_and_stale_dirs() {
        let parent = std::env::temp_dir().join(format!("shoal-store-test-{}", std::process::id()));
        let spill = parent.join("spill");
        std::fs::create_dir_all(&spill).unwrap();
        // A directory of a pid that cannot exist is stale.
        let stale = parent.join("shoal-2147483646-abc");
        let stale_spill = spill.join("shoal-2147483646-abc");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::create_dir_all(&stale_spill).unwrap();
        let mut store = Store::open(&parent, &spill, NodeId([3; 16]), 10).unwrap();
        assert!(!stale.exists() && !stale_spill.exists());

        let (a, b) = (ObjectId([1; 32]), ObjectId([2; 32]));
        write(&mut store, a, b"aaaaaa").unwrap();
        assert!(object_path(store.dir(), &a).exists());
        // Room for b: a goes to disk.
        write(&mut store, b, b"bbbbbb").unwrap();
        assert!(!object_path(store.dir(), &a).exists());
        assert!(object_path(store.spill_dir(), &a).exists());
        assert_eq!(store.index().location(&a), Some(Location::Disk));
        // Reading a back sends b to disk.
        store.ensure_in_memory(&a).unwrap();
        assert_eq!(
            std::fs::read(object_path(store.dir(), &a)).unwrap(),
            b"aaaaaa"
        );
        assert_eq!(store.index().location(&b), Some(Location::Disk));
        // A corrupted disk copy is detected, not returned.
        std::fs::write(object_path(store.spill_dir(), &b), b"bbbbbX").unwrap();
        assert!(matches!(
            store.ensure_in_memory(&b),
            Err(RestoreError::Corrupted(_))
        ));
        assert_eq!(store.index().location(&b), Some(Location::Disk));
        store.remove(&a);
        store.remove(&b);
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(store.spill_dir()).unwrap().count(), 0);

        // A writer that goes away leaves nothing.
        store.reserve(a, 4, 2).unwrap();
        std::fs::write(partial_path(store.dir(), &a), b"ab").unwrap();
        store.abort_holder(2);
        assert!(!partial_path(store.dir(), &a).exists());
        assert_eq!(store.index().used(), 0);
        // Too large for the store at all.
        assert!(matches!(
            store.reserve(a, 11, 1),
            Err(StoreError::Full { requested: 11, .. })
        ));
        store.destroy();
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
