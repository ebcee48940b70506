//! Storing values: [`put`], [`put_content`], and the puts behind large task arguments and
//! byte buffers.
//!
//! A small value stays in this process (a copy goes to the node inline); a value above the
//! node's inline threshold is encoded straight into a file of the shared-memory store and
//! sealed. A `put` gets a fresh id at once and is not hashed on its way in: the node takes
//! its digest when the object first leaves the node, is spilled or is verified. A
//! [`put_content`] is named by its content's blake3 hash instead, so that equal values
//! share one id and one copy, at the cost of hashing every byte before it returns.

use std::sync::Arc;

use serde::Serialize;
use shoal_protocol::{ObjectId, SharedObject, ToNode};

use crate::error::PutError;
use crate::object_ref::{self, ObjectRef, RawRef};
use crate::runtime::{self, Context, Value};
use crate::shm;

/// Stores `value` and returns a reference to it. Small values stay in this process (and a
/// copy at the node); values above the inline threshold (64 KiB by default) are encoded
/// straight into the node's shared-memory store, where other processes map them. Each put
/// is a new object with a new id, as in Ray: a large one costs one copy of its bytes, no
/// hashing (the node takes its digest later, when the object first leaves the node or is
/// spilled, and checks every copy against it from then on). Use [`put_content`] to share
/// one copy between equal values. Refs inside `value` stay alive as long as it does.
///
/// ```no_run
/// #[shoal::remote]
/// fn count_words(text: String, word: String) -> usize {
///     text.split_whitespace().filter(|w| *w == word).count()
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Stored once, read by every task: not sent again with each call.
/// let book = shoal::put(&"the cat saw the dog ".repeat(100_000))?;
/// let the = count_words.remote(&book, "the");
/// let cat = count_words.remote(&book, "cat");
/// assert_eq!(the.get_blocking()?, 2 * cat.get_blocking()?);
/// # Ok(()) }
/// ```
pub fn put<T: Serialize>(value: &T) -> Result<ObjectRef<T>, PutError> {
    let ctx = runtime::get();
    put_value(ctx, value, Ids::Fresh).map(ObjectRef::from_raw)
}

/// Stores `value` under its content id (the blake3 hash of its encoding), as [`put`] does
/// otherwise: equal values put anywhere on a node share one id and one copy in its store.
/// Worth it for values put again and again (a model's weights every run, a dataset many
/// drivers load); it hashes every byte before it returns, which [`put`] does not.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let weights = vec![0.5f32; 1 << 20];
/// let a = shoal::put_content(&weights)?;
/// let b = shoal::put_content(&weights)?;
/// assert_eq!(a.id(), b.id()); // one copy in the store
/// assert_ne!(shoal::put(&weights)?.id(), a.id()); // a put is always a new object
/// # Ok(()) }
/// ```
pub fn put_content<T: Serialize>(value: &T) -> Result<ObjectRef<T>, PutError> {
    let ctx = runtime::get();
    put_value(ctx, value, Ids::Content).map(ObjectRef::from_raw)
}

/// How a put's object is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ids {
    /// A fresh random id, given at once; no hashing on the put's path.
    Fresh,
    /// The content's hash: equal values share one id and one copy.
    Content,
}

fn encode_error(e: impl std::fmt::Display) -> PutError {
    PutError::Encode(e.to_string())
}

/// Stores a value, encoding it once (into the store if it is large).
pub(crate) fn put_value<T: Serialize + ?Sized>(
    ctx: &Context,
    value: &T,
    ids: Ids,
) -> Result<RawRef, PutError> {
    if ctx.is_shut_down() {
        return Err(PutError::Shutdown);
    }
    // Measured with its refs collected (and let go): they are not leaving the process.
    let (len, _measured) = object_ref::collecting(|| shoal_protocol::codec::encoded_len(value));
    let len = len.map_err(encode_error)?;
    if len <= ctx.inline_threshold {
        let (bytes, nested) = object_ref::encode_collecting(value).map_err(encode_error)?;
        if is_bare_ref(&bytes, &nested) {
            return Err(PutError::ObjectRef);
        }
        return Ok(put_inline(ctx, bytes, nested, ids));
    }
    let ticket = shm::ticket();
    let mut nested = Vec::new();
    let object = shm::write(ctx, ticket, len, hash_for(ids), |buf| {
        let (written, refs) =
            object_ref::collecting(|| shoal_protocol::codec::encode_into_slice(buf, value));
        nested = refs;
        match written {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(format!("encoded {n} bytes, {len} expected")),
            Err(e) => Err(e.to_string()),
        }
    })?;
    Ok(seal_put(ctx, ticket, object, nested))
}

fn hash_for(ids: Ids) -> shm::Hash {
    match ids {
        Ids::Fresh => shm::Hash::Later,
        Ids::Content => shm::Hash::Now,
    }
}

/// Stores raw bytes as a byte sequence would be encoded (its length, then the bytes), as a
/// new object: a large buffer is copied into the store on several threads, as Ray's put
/// does (one thread's copy is below what memory can take).
pub(crate) fn put_raw(ctx: &Context, bytes: &[u8]) -> Result<RawRef, PutError> {
    let raw = crate::bytes::RawSlice(bytes);
    let header = shoal_protocol::codec::encode(&(bytes.len() as u64)).map_err(encode_error)?;
    let len = header.len() + bytes.len();
    let same = shoal_protocol::codec::encoded_len(&raw).is_ok_and(|n| n == len);
    if len < PARALLEL_COPY_MIN || !same || ctx.is_shut_down() {
        return put_value(ctx, &raw, Ids::Fresh);
    }
    let ticket = shm::ticket();
    let object = shm::write(ctx, ticket, len, shm::Hash::Later, |buf| {
        let (head, body) = buf.split_at_mut(header.len());
        head.copy_from_slice(&header);
        parallel_copy(body, bytes);
        Ok(())
    })?;
    Ok(seal_put(ctx, ticket, object, Vec::new()))
}

/// Buffers at least this long are copied on several threads.
const PARALLEL_COPY_MIN: usize = 32 << 20;
/// Threads a copy uses at most.
const COPY_THREADS: usize = 4;

/// `dst.copy_from_slice(src)`, in as many pieces as there are CPUs (at most
/// [`COPY_THREADS`]), each on its own thread.
fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(COPY_THREADS);
    if threads < 2 || src.len() < threads {
        dst.copy_from_slice(src);
        return;
    }
    let piece = src.len().div_ceil(threads);
    std::thread::scope(|s| {
        let mut pieces = dst.chunks_mut(piece).zip(src.chunks(piece));
        // This thread copies the first piece; the others go to their own threads.
        let first = pieces.next();
        for (to, from) in pieces {
            s.spawn(move || to.copy_from_slice(from));
        }
        if let Some((to, from)) = first {
            to.copy_from_slice(from);
        }
    });
}

/// Whether `bytes` (a value's encoding, with the refs it holds) is one ref and nothing
/// else: an `ObjectRef`, or a newtype around one.
fn is_bare_ref(bytes: &[u8], nested: &[RawRef]) -> bool {
    let [only] = nested else {
        return false;
    };
    shoal_protocol::codec::encode(&(only.id, only.owner)).is_ok_and(|alone| alone == bytes)
}

/// Stores already encoded bytes (a large task argument) as a new object.
pub(crate) fn put_encoded(
    ctx: &Context,
    bytes: Vec<u8>,
    nested: Vec<RawRef>,
) -> Result<RawRef, PutError> {
    if ctx.is_shut_down() {
        return Err(PutError::Shutdown);
    }
    if bytes.len() <= ctx.inline_threshold {
        return Ok(put_inline(ctx, bytes, nested, Ids::Fresh));
    }
    let ticket = shm::ticket();
    let object = shm::write(ctx, ticket, bytes.len(), shm::Hash::Later, |buf| {
        buf.copy_from_slice(&bytes);
        Ok(())
    })?;
    Ok(seal_put(ctx, ticket, object, nested))
}

fn put_inline(ctx: &Context, bytes: Vec<u8>, nested: Vec<RawRef>, ids: Ids) -> RawRef {
    let id = match ids {
        Ids::Fresh => shm::ticket(),
        Ids::Content => ObjectId::for_content(&bytes),
    };
    let fresh = ctx.add_ref(id, Some(Value::Inline(Arc::new(bytes.clone()))));
    if fresh {
        ctx.push(ToNode::Put {
            id,
            value: bytes,
            nested: object_ref::ids_of(&nested),
        });
    }
    drop(nested);
    RawRef::counted(id, ctx.client)
}

/// Seals a written put: under its ticket when it was not hashed, under its content id
/// otherwise, unless this process holds equal bytes already.
fn seal_put(ctx: &Context, ticket: ObjectId, object: SharedObject, nested: Vec<RawRef>) -> RawRef {
    let id = object.digest.map_or(ticket, ObjectId::from_digest);
    if !ctx.add_ref(id, Some(Value::Shared(object))) {
        // Held here already: one copy is enough.
        ctx.push(ToNode::Abort { id: ticket });
    } else {
        ctx.push(ToNode::Seal {
            ticket,
            id,
            object,
            nested: object_ref::ids_of(&nested),
        });
    }
    drop(nested);
    RawRef::counted(id, ctx.client)
}

#[cfg(test)]
mod tests {
    use super::parallel_copy;

    #[test]
    fn a_parallel_copy_copies_every_byte_in_place() {
        for len in [0usize, 1, 7, 4096, (1 << 20) + 3] {
            let src: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut dst = vec![0u8; len];
            parallel_copy(&mut dst, &src);
            assert!(dst == src, "{len}");
        }
    }
}
