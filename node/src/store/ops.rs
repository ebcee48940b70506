//! What the core asks of the store's files, and what comes back: plain values.
//!
//! The core keeps the [`StoreIndex`](super::StoreIndex) (capacity, locations, pins) and
//! decides; the shell carries each [`StoreOp`] out on a blocking thread with
//! [`StoreFiles::run`](super::StoreFiles::run), **strictly in the order given**, and hands
//! the core a [`StoreDone`] for each op that has an [`OpId`]. Because the ops run in order,
//! the files are always where the index said they would be once the ops issued before were
//! carried out: a spill that makes room runs before the file it made room for is created.

use shoal_protocol::{Digest, ObjectId, StoreError};

/// The number of an op whose completion the core waits for.
pub type OpId = u64;

/// One operation on the store's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOp {
    /// Its number, when the core waits for its completion ([`StoreDone`]).
    pub op: Option<OpId>,
    /// Bytes of memory the index counts once this op has run: files kept for reuse are
    /// dropped so that they and the objects stay within the capacity.
    pub used: u64,
    /// What to do.
    pub kind: OpKind,
}

/// What a [`StoreOp`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Make the partial file of `id` (`size` bytes) for a writer to map and fill; a file kept
    /// for reuse when one fits.
    Create {
        /// The reservation (object id or ticket).
        id: ObjectId,
        /// Its length.
        size: u64,
    },
    /// Check that the partial file of `ticket` has `size` bytes, then rename it to `id`
    /// (`keep`), or drop it because equal bytes are there already (`!keep`). A seal that
    /// fails leaves no partial file behind.
    Seal {
        /// The reservation.
        ticket: ObjectId,
        /// The object.
        id: ObjectId,
        /// Its length.
        size: u64,
        /// Whether the file becomes the object's (otherwise it is a duplicate).
        keep: bool,
    },
    /// Drop the partial file of an unsealed reservation.
    DropPartial {
        /// The reservation.
        id: ObjectId,
    },
    /// Drop an object's memory file (kept for reuse when no reader holds it).
    DropMemory {
        /// The object.
        id: ObjectId,
        /// Its length.
        size: u64,
    },
    /// Drop an object's disk copy.
    DropDisk {
        /// The object.
        id: ObjectId,
    },
    /// Copy an object to disk, then drop its memory file. A spill that fails keeps the
    /// memory file and leaves no disk file.
    Spill {
        /// The object.
        id: ObjectId,
        /// Its length.
        size: u64,
        /// Take its digest too (it has none yet): the restore checks the disk copy against
        /// it. Given in [`StoreDone::digest`].
        digest: bool,
    },
    /// Take the digest of an object in memory, which has none yet. Given in
    /// [`StoreDone::digest`].
    Digest {
        /// The object.
        id: ObjectId,
    },
    /// Read an object back from disk into memory, checking its digest (the disk copy stays).
    Restore {
        /// The object.
        id: ObjectId,
        /// Its recorded digest.
        digest: Digest,
    },
}

/// Why a store op failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreFault {
    /// A file-system error.
    #[error("{0}")]
    Io(String),
    /// A writer's file does not match what it sealed.
    #[error("{0}")]
    Mismatch(String),
    /// A disk copy does not match its digest.
    #[error("the spilled copy does not match its digest: {0}")]
    Corrupted(String),
}

impl StoreFault {
    /// As the store error a client is told.
    pub fn to_store_error(&self) -> StoreError {
        match self {
            StoreFault::Io(m) | StoreFault::Corrupted(m) => StoreError::Io(m.clone()),
            StoreFault::Mismatch(m) => StoreError::Mismatch(m.clone()),
        }
    }
}

/// The end of a [`StoreOp`] that had an [`OpId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDone {
    /// The op.
    pub op: OpId,
    /// How it went.
    pub result: Result<(), StoreFault>,
    /// The digest a [`OpKind::Digest`] took, or a [`OpKind::Spill`] asked to (taken even
    /// when the copy to disk then failed).
    pub digest: Option<Digest>,
}
