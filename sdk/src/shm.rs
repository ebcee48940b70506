//! Writing and mapping objects in the node's shared-memory store.
//!
//! A writer reserves room with the node under a ticket id, creates `<ticket>.partial` in the
//! store directory, sizes and maps it, encodes the value straight into the mapping (no
//! intermediate buffer), hashes it only when its id is its content's hash (a `put_content`),
//! and asks the node to seal it; the node renames the file to the object's id, and takes the
//! digest of an object sealed without one when it first needs it. A reader maps `<id>`
//! read-only. The bytes never pass through the node or a socket.

use std::fs::OpenOptions;
use std::path::Path;

use shoal_protocol::{ObjectId, SharedObject, StoreError};

use crate::runtime::Context;

fn object_path(dir: &Path, id: &ObjectId) -> std::path::PathBuf {
    dir.join(id.to_hex())
}

/// A sealed object mapped read-only. While it lives, the file is locked shared, so the node
/// does not recycle it for another object (it unlinks it instead, and the mapping stays
/// valid).
#[derive(Debug)]
pub(crate) struct Mapped {
    map: memmap2::Mmap,
    _locked: std::fs::File,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// Maps object `id` read-only and checks its length. `NotFound` means the node moved it
/// (spilled it to disk, or freed it): ask the node again.
pub(crate) fn map(dir: &Path, id: &ObjectId, size: u64) -> std::io::Result<Mapped> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let path = object_path(dir, id);
    let file = std::fs::File::open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The node may have recycled the file between our open and our lock: then the name no
    // longer leads to this file.
    if std::fs::metadata(&path)?.ino() != file.metadata()?.ino() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("object {id} moved while being opened"),
        ));
    }
    // SAFETY: sealed objects are immutable: no process writes to them after the seal, and
    // the node does not reuse the file while we hold the lock.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    if map.len() as u64 != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("object {id} has {} bytes, expected {size}", map.len()),
        ));
    }
    Ok(Mapped { map, _locked: file })
}

/// Whether a write takes the digest of what it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    /// Now, before the seal (a content-addressed put: its id is its digest).
    Now,
    /// Not here: the node takes it when it is first needed (a `put`, a task's result).
    Later,
}

/// A file mapped for writing, with what identifies it.
struct Target {
    map: memmap2::MmapMut,
    /// Kept open, so that the file (and its inode number) lives as long as the mapping.
    _file: std::fs::File,
    /// Device and inode.
    key: (u64, u64),
}

/// The mapping of the last file this process wrote, kept for the next write. The node
/// recycles a freed object's file for the next reservation that fits it, so a program that
/// puts, drops and puts again is often handed the same file: writing through a mapping
/// whose pages are faulted in already costs a copy, where a fresh mapping costs a page-table
/// entry per 4 KiB page to fill and, later, to tear down (together about as much as the copy
/// of 800 MB on the machine measured). One file per process: if the node removes it rather
/// than recycling it, its memory is given back when the next write replaces it, or at
/// [`forget_kept`] (the shutdown).
static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(Kept {
    target: None,
    closed: false,
});

struct Kept {
    target: Option<Target>,
    /// Shut down: nothing is kept any more.
    closed: bool,
}

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the kept mapping for good (at the shutdown: no store file stays mapped).
pub(crate) fn forget_kept() {
    let mut kept = kept();
    kept.closed = true;
    kept.target = None;
}

impl Target {
    /// `file` (a partial file the node made for this writer) mapped: through the kept
    /// mapping when it is that same file, at the same length; freshly otherwise.
    fn of(file: std::fs::File) -> Result<Target, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let meta = file
            .metadata()
            .map_err(|e| StoreError::Io(format!("reading a partial file: {e}")))?;
        let key = (meta.dev(), meta.ino());
        let kept = kept()
            .target
            .take()
            .filter(|t| t.key == key && t.map.len() as u64 == meta.len());
        if let Some(kept) = kept {
            // The same file (kept open, its inode number cannot have been reused): the
            // node gave it to this writer again. Its old mapping writes into it.
            return Ok(Target {
                _file: file,
                ..kept
            });
        }
        // Page tables filled in one go (a recycled file's pages are in memory already; a
        // fault per 4 KiB page would cost more than the copy). SAFETY: the partial file is
        // ours alone until the node renames it at the seal.
        let map = unsafe { memmap2::MmapOptions::new().populate().map_mut(&file) }
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(Target {
            map,
            _file: file,
            key,
        })
    }

    /// Keeps this mapping for the next write (in place of the one kept before), unless
    /// this process has shut down.
    fn keep(self) {
        let mut kept = kept();
        if !kept.closed {
            kept.target = Some(self);
        }
    }
}

/// Writes an object of `size` bytes, reserved under `ticket`, with `fill`; returns its
/// description, with its digest if `hash` says so. The caller seals it (with `ToNode::Seal`
/// for a put, `ToNode::Done` for a result). On failure the reservation is given back.
pub(crate) fn write(
    ctx: &Context,
    ticket: ObjectId,
    size: usize,
    hash: Hash,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<SharedObject, StoreError> {
    if !ctx.create(ticket, size as u64)? {
        return Err(StoreError::Mismatch(format!(
            "object {ticket} exists already"
        )));
    }
    let partial = ctx.store_dir().join(format!("{}.partial", ticket.to_hex()));
    let result = (|| {
        // The node made it, `size` bytes long (often a recycled file, already in memory).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(|e| StoreError::Io(format!("opening {}: {e}", partial.display())))?;
        let mut target = Target::of(file)?;
        fill(&mut target.map).map_err(StoreError::Io)?;
        let object = SharedObject {
            size: size as u64,
            digest: (hash == Hash::Now).then(|| shoal_node::store::digest(&target.map)),
        };
        target.keep();
        Ok(object)
    })();
    if result.is_err() {
        // The node drops the reservation on the Abort and removes the file if it is still
        // there; this removal only frees the bytes sooner.
        if let Err(e) = std::fs::remove_file(&partial) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %partial.display(), error = %e, "cannot remove a failed put's partial file; the node removes it");
            }
        }
        ctx.push(shoal_protocol::ToNode::Abort { id: ticket });
    }
    result
}

/// A fresh ticket id for a reservation.
pub(crate) fn ticket() -> ObjectId {
    ObjectId(shoal_node::random_bytes::<32>())
}
