//! A model of one node's store files: what `StoreFiles` keeps in its directories, without
//! bytes. The core's store ops change it in the order they were issued, and fail where the
//! real ones would (a file that is not there).

use std::collections::BTreeMap;

use shoal_protocol::ObjectId;

use crate::store::{OpKind, StoreFault};

/// The files of one simulated store, by object and size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimFiles {
    /// Partial files of writers (reservations not sealed yet): size, and whether a writer
    /// filled it.
    partial: BTreeMap<ObjectId, (u64, bool)>,
    /// Sealed objects in memory.
    memory: BTreeMap<ObjectId, u64>,
    /// Copies on disk.
    disk: BTreeMap<ObjectId, u64>,
}

impl SimFiles {
    /// Carries out one op, as the store's files would.
    pub(crate) fn run(&mut self, kind: &OpKind) -> Result<(), StoreFault> {
        let missing = |what: &str, id: &ObjectId| StoreFault::Io(format!("no {what} file of {id}"));
        match kind {
            OpKind::Create { id, size } => {
                if self.partial.insert(*id, (*size, false)).is_some() {
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
                if !written {
                    return Err(StoreFault::Mismatch(format!(
                        "{ticket}.partial sealed before anyone wrote it"
                    )));
                }
                if len != *size {
                    return Err(StoreFault::Mismatch(format!(
                        "object {id} file has {len} bytes, sealed as {size}"
                    )));
                }
                if *keep {
                    self.memory.insert(*id, len);
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
            OpKind::Spill { id, .. } => {
                let len = self
                    .memory
                    .remove(id)
                    .ok_or_else(|| missing("memory", id))?;
                self.disk.insert(*id, len);
            }
            OpKind::Restore { id, .. } => {
                let len = *self.disk.get(id).ok_or_else(|| missing("disk", id))?;
                self.memory.insert(*id, len);
            }
        }
        Ok(())
    }

    /// Whether object `id` is in memory.
    pub fn in_memory(&self, id: &ObjectId) -> bool {
        self.memory.contains_key(id)
    }

    /// The size of `id`'s disk copy.
    pub(crate) fn disk_size(&self, id: &ObjectId) -> Option<u64> {
        self.disk.get(id).copied()
    }

    /// A writer fills the partial file of `id`: whether it is there with that size.
    pub(crate) fn write_partial(&mut self, id: &ObjectId, size: u64) -> bool {
        match self.partial.get_mut(id) {
            Some((len, written)) if *len == size => {
                *written = true;
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
