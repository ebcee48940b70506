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

use crate::context::Context;

fn object_path(dir: &Path, id: &ObjectId) -> std::path::PathBuf {
    dir.join(id.to_hex())
}

/// Maps object `id` read-only and checks its length. `NotFound` means the node moved it
/// (spilled it to disk): ask the node again.
pub(crate) fn map(dir: &Path, id: &ObjectId, size: u64) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(object_path(dir, id))?;
    // SAFETY: sealed objects are immutable: no process writes to them after the seal.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    if map.len() as u64 != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("object {id} has {} bytes, expected {size}", map.len()),
        ));
    }
    Ok(map)
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", partial.display())))?;
        file.set_len(size as u64)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        // SAFETY: the partial file is ours alone until the node renames it at the seal.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .map_err(|e| StoreError::Io(e.to_string()))?;
        fill(&mut map).map_err(StoreError::Io)?;
        Ok(SharedObject {
            size: size as u64,
            digest: digest(&map),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
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
