//! A model of one node's store files: what `StoreFiles` keeps in its directories, without
//! bytes. The core's store ops change it in the order they were issued, and fail where the
//! real ones would (a file that is not there).

use std::collections::BTreeMap;

use shoal_protocol::{Digest, ObjectId};

use crate::store::{OpKind, StoreFault};

/// The files of one simulated store, by object: size, and the digest of the bytes the
/// writer put in (what a digest taken of the file finds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimFiles {
    /// Partial files of writers (reservations not sealed yet): size, and what a writer
    /// filled it with (`None` until one did).
    partial: BTreeMap<ObjectId, (u64, Option<Digest>)>,
    /// Sealed objects in memory.
    memory: BTreeMap<ObjectId, (u64, Digest)>,
    /// Copies on disk.
    disk: BTreeMap<ObjectId, (u64, Digest)>,
}

impl SimFiles {
    /// Carries out one op, as the store's files would; the digest a `Digest` op (or a spill
    /// asked to) took.
    pub(crate) fn run(&mut self, kind: &OpKind) -> Result<Option<Digest>, StoreFault> {
        let missing = |what: &str, id: &ObjectId| StoreFault::Io(format!("no {what} file of {id}"));
        match kind {
            OpKind::Create { id, size } => {
                if self.partial.insert(*id, (*size, None)).is_some() {
                    return Err(StoreFault::Io(format!("{id}.partial exists")));
                }
            }
            OpKind::Seal {
                ticket,
                id,
                size,
                keep,
            } => {
                let (len, written) = self
                    .partial
                    .remove(ticket)
                    .ok_or_else(|| missing("partial", ticket))?;
                let Some(content) = written else {
                    return Err(StoreFault::Mismatch(format!(
                        "{ticket}.partial sealed before anyone wrote it"
                    )));
                };
                if len != *size {
                    return Err(StoreFault::Mismatch(format!(
                        "object {id} file has {len} bytes, sealed as {size}"
                    )));
                }
                if *keep {
                    self.memory.insert(*id, (len, content));
                }
            }
            OpKind::DropPartial { id } => {
                self.partial.remove(id);
            }
            OpKind::DropMemory { id, .. } => {
                self.memory.remove(id);
            }
            OpKind::DropDisk { id } => {
                self.disk.remove(id);
            }
            OpKind::Spill { id, digest, .. } => {
                let file = self
                    .memory
                    .remove(id)
                    .ok_or_else(|| missing("memory", id))?;
                self.disk.insert(*id, file);
                return Ok(digest.then_some(file.1));
            }
            OpKind::Digest { id } => {
                let (_, content) = self.memory.get(id).ok_or_else(|| missing("memory", id))?;
                return Ok(Some(*content));
            }
            OpKind::Restore { id, digest } => {
                let file = *self.disk.get(id).ok_or_else(|| missing("disk", id))?;
                if file.1 != *digest {
                    return Err(StoreFault::Corrupted(format!(
                        "{id} on disk has digest {}, recorded {digest}",
                        file.1
                    )));
                }
                self.memory.insert(*id, file);
            }
        }
        Ok(None)
    }

    /// The digest of the bytes in `id`'s memory file.
    pub(crate) fn content(&self, id: &ObjectId) -> Option<Digest> {
        self.memory.get(id).map(|f| f.1)
    }

    /// Whether object `id` is in memory.
    pub fn in_memory(&self, id: &ObjectId) -> bool {
        self.memory.contains_key(id)
    }

    /// The size of `id`'s disk copy.
    pub(crate) fn disk_size(&self, id: &ObjectId) -> Option<u64> {
        self.disk.get(id).map(|f| f.0)
    }

    /// A writer fills the partial file of `id` with bytes whose digest is `content`:
    /// whether it is there with that size.
    pub(crate) fn write_partial(&mut self, id: &ObjectId, size: u64, content: Digest) -> bool {
        match self.partial.get_mut(id) {
            Some((len, written)) if *len == size => {
                *written = Some(content);
                true
            }
            _ => false,
        }
    }

    /// Whether no file is left.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty() && self.memory.is_empty() && self.disk.is_empty()
    }

    /// Files left, for a report: (partial, memory, disk).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.partial.len(), self.memory.len(), self.disk.len())
    }
}
