//! Writing and mapping objects in the node's shared-memory store.
//!
//! A writer reserves room with the node under a ticket id, creates `<ticket>.partial` in the
//! store directory, sizes and maps it, encodes the value straight into the mapping (no
//! intermediate buffer), hashes it and asks the node to seal it; the node renames the file to
//! the object's id. A reader maps `<id>` read-only. The bytes never pass through the node or
//! a socket.

use std::fs::OpenOptions;
use std::path::Path;

use shoal_protocol::{Digest, ObjectId, SharedObject, StoreError};

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

/// Inputs at least this long are hashed on two threads.
const PARALLEL_HASH_MIN: usize = 4 << 20;

/// The blake3 digest of `bytes`: the two halves of the hash tree on two threads for large
/// inputs (the same digest as [`Digest::of`]).
pub(crate) fn digest(bytes: &[u8]) -> Digest {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_root, HasherExt, Mode};
    if bytes.len() < PARALLEL_HASH_MIN {
        return Digest::of(bytes);
    }
    let split = left_subtree_len(bytes.len() as u64);
    let (left, right) = bytes.split_at(split as usize);
    let (l, r) = std::thread::scope(|s| {
        let r = s.spawn(|| {
            let mut h = blake3::Hasher::new();
            h.set_input_offset(split);
            h.update(right);
            h.finalize_non_root()
        });
        let mut h = blake3::Hasher::new();
        h.update(left);
        let l = h.finalize_non_root();
        (l, r.join())
    });
    match r {
        Ok(r) => Digest(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()),
        // The hashing thread cannot panic on a slice; hash in one piece if it somehow did.
        Err(_) => Digest::of(bytes),
    }
}

/// Writes an object of `size` bytes, reserved under `ticket`, with `fill`; returns its
/// description. The caller seals it (with `ToNode::Seal` for a put, `ToNode::Done` for a
/// result). On failure the reservation is given back.
pub(crate) fn write(
    ctx: &Context,
    ticket: ObjectId,
    size: usize,
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
        // Page tables filled in one go (a recycled file's pages are in memory already; a
        // fault per 4 KiB page would cost more than the copy). SAFETY: the partial file is
        // ours alone until the node renames it at the seal.
        let mut map = unsafe { memmap2::MmapOptions::new().populate().map_mut(&file) }
            .map_err(|e| StoreError::Io(e.to_string()))?;
        fill(&mut map).map_err(StoreError::Io)?;
        Ok(SharedObject {
            size: size as u64,
            digest: digest(&map),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_digest_is_blake3() {
        for len in [
            0,
            1,
            1024,
            PARALLEL_HASH_MIN,
            PARALLEL_HASH_MIN + 12345,
            9 << 20,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(digest(&bytes), Digest::of(&bytes), "len {len}");
        }
    }
}
