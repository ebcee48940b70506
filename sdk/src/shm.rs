//! Writing and mapping objects in the node's shared-memory store.
//!
//! A writer reserves room with the node, creates `<id>.partial` in the store directory, sizes
//! and maps it, fills it in place, renames it to `<id>` and seals it. A reader maps `<id>`
//! read-only. The bytes never pass through the node or a socket.

use std::fs::OpenOptions;
use std::path::Path;

use shoal_protocol::{Digest, ObjectId, SharedObject, StoreError};

use crate::context::Context;

fn object_path(dir: &Path, id: &ObjectId) -> std::path::PathBuf {
    dir.join(id.to_hex())
}

/// Maps object `id` read-only and checks its length.
pub(crate) fn map(dir: &Path, id: &ObjectId, size: u64) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(object_path(dir, id))?;
    // SAFETY: sealed objects are immutable: no process writes to them after the rename.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    if map.len() as u64 != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("object {id} has {} bytes, expected {size}", map.len()),
        ));
    }
    Ok(map)
}

/// Writes an object of `size` bytes with `fill`, returning its description, or `None` if an
/// object with this id already exists (content-addressed duplicates share one copy).
pub(crate) fn write(
    ctx: &Context,
    id: ObjectId,
    size: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<Option<SharedObject>, StoreError> {
    if !ctx.create(id, size as u64)? {
        return Ok(None);
    }
    let dir = ctx.store_dir();
    let partial = dir.join(format!("{}.partial", id.to_hex()));
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", partial.display())))?;
        file.set_len(size as u64)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        // SAFETY: the partial file is ours alone until it is renamed.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .map_err(|e| StoreError::Io(e.to_string()))?;
        fill(&mut map).map_err(StoreError::Io)?;
        let digest = Digest::of(&map);
        drop(map);
        std::fs::rename(&partial, object_path(dir, &id))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(SharedObject {
            size: size as u64,
            digest,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
        ctx.push(shoal_protocol::ToNode::Abort { id });
    }
    result.map(Some)
}
