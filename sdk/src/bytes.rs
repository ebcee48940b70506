//! Byte buffers without copies: [`Bytes`], [`put_bytes`] and [`ByteView`].
//!
//! A stored byte buffer is its length and its bytes. Reading one with
//! [`ObjectRef::get_view`] maps the store file and returns a view of the bytes in it: no copy
//! and no decode, so the time does not grow with the size.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_protocol::codec;

use crate::error::{GetError, PutError};
use crate::object_ref::{read_async, read_blocking, ObjectRef, Source};
use crate::runtime;

/// A byte buffer that encodes as one block (as `serde_bytes` does): puts and gets of it run
/// at memory speed, and [`ObjectRef::get_view`] reads it in place. Its encoding is that of a
/// `Vec<u8>` with the same bytes.
///
/// ```no_run
/// use shoal::Bytes;
///
/// #[shoal::remote]
/// fn checksum(data: Bytes) -> u64 {
///     data.iter().map(|b| u64::from(*b)).sum() // a `Bytes` derefs to `[u8]`
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let image = Bytes(vec![1u8; 64 << 20]);
/// assert_eq!(checksum.remote(image).get_blocking()?, 64 << 20);
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte buffer")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A borrowed buffer, encoded as [`Bytes`].
pub(crate) struct RawSlice<'a>(pub(crate) &'a [u8]);

impl Serialize for RawSlice<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Stores raw bytes (copied once, straight into shared memory when large, and not hashed on
/// the way in) and returns a ref to them as [`Bytes`]: a new object, as [`put`](crate::put)
/// makes.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = std::fs::read("weights.bin")?;
/// let weights = shoal::put_bytes(&file)?; // a ref that tasks take as a `Bytes` argument
/// let view = weights.get_view_blocking()?;
/// assert_eq!(&view[..], &file[..]);
/// # Ok(()) }
/// ```
pub fn put_bytes(bytes: &[u8]) -> Result<ObjectRef<Bytes>, PutError> {
    let ctx = runtime::get();
    crate::put::put_raw(ctx, bytes).map(ObjectRef::from_raw)
}

/// Types stored as a plain byte sequence, whose refs can be read as a [`ByteView`].
///
/// ```no_run
/// use shoal::{ByteSequence, ObjectRef};
///
/// // Works for refs of `Bytes` and of `Vec<u8>` alike.
/// fn first_byte<T: ByteSequence>(r: &ObjectRef<T>) -> Result<Option<u8>, shoal::GetError> {
///     Ok(r.get_view_blocking()?.first().copied())
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(first_byte(&shoal::put(&vec![7u8, 8])?)?, Some(7));
/// assert_eq!(first_byte(&shoal::put_bytes(b"xyz")?)?, Some(b'x'));
/// # Ok(()) }
/// ```
pub trait ByteSequence {}
impl ByteSequence for Bytes {}
impl ByteSequence for Vec<u8> {}

#[derive(Clone)]
enum Backing {
    Inline(Arc<Vec<u8>>),
    Mapped(Arc<crate::shm::Mapped>),
}

/// A read-only view of a stored byte buffer: inside the shared-memory file of a large object
/// (mapped, never copied), or inside the message of a small one. Cheap to clone. The bytes
/// stay valid as long as the view lives, even if the object is freed or spilled meanwhile.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let log = shoal::put_bytes(&std::fs::read("app.log")?)?;
/// let view: shoal::ByteView = log.get_view_blocking()?;
/// let lines = view.split(|b| *b == b'\n').count(); // a `ByteView` derefs to `[u8]`
/// println!("{lines} lines");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ByteView {
    backing: Backing,
    range: Range<usize>,
}

impl ByteView {
    /// Whether the view is of a shared-memory mapping (rather than a small inline value).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let small = shoal::put_bytes(b"tiny")?.get_view_blocking()?;
    /// let large = shoal::put_bytes(&vec![0u8; 16 << 20])?.get_view_blocking()?;
    /// // Above the inline threshold (64 KiB by default), a value lives in shared memory.
    /// assert!(!small.is_mapped());
    /// assert!(large.is_mapped());
    /// # Ok(()) }
    /// ```
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }
}

impl Deref for ByteView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.backing {
            Backing::Inline(v) => v,
            Backing::Mapped(m) => m,
        };
        &all[self.range.clone()]
    }
}

impl AsRef<[u8]> for ByteView {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for ByteView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ByteView({} bytes, {})",
            self.len(),
            if self.is_mapped() { "mapped" } else { "inline" }
        )
    }
}

/// A view of a stored byte sequence's bytes.
fn view(source: Source<'_>) -> Result<ByteView, GetError> {
    let range = codec::byte_range(&source).map_err(|e| GetError::Decode(e.to_string()))?;
    let backing = match source {
        Source::Inline(v) => Backing::Inline(v.clone()),
        Source::Mapped(m, _) => Backing::Mapped(Arc::new(m)),
    };
    Ok(ByteView { backing, range })
}

impl<T: ByteSequence> ObjectRef<T> {
    /// Waits for the buffer and returns a view of it in place: a large one is mapped from
    /// shared memory, not copied, so this takes the same time for a kilobyte as for a
    /// gigabyte.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let r = shoal::put_bytes(&vec![1u8; 256 << 20])?;
    /// let view = r.get_view().await?; // no copy of the 256 MiB
    /// assert_eq!(view.len(), 256 << 20);
    /// assert_eq!(view[0], 1);
    /// # Ok(()) }
    /// ```
    pub async fn get_view(&self) -> Result<ByteView, GetError> {
        read_async(self.id(), view).await
    }

    /// [`ObjectRef::get_view`] for synchronous code.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let r: shoal::ObjectRef<Vec<u8>> = shoal::put(&vec![0u8; 1 << 20])?;
    /// let view = r.get_view_blocking()?;
    /// assert!(view.iter().all(|b| *b == 0));
    /// # Ok(()) }
    /// ```
    pub fn get_view_blocking(&self) -> Result<ByteView, GetError> {
        read_blocking(self.id(), None, view)
    }
}

#[cfg(test)]
mod tests {
    use super::RawSlice;

    #[test]
    fn put_bytes_stores_what_a_vec_of_bytes_would() {
        let sample: Vec<u8> = (0..=255).collect();
        let raw = shoal_protocol::codec::encode(&RawSlice(&sample)).unwrap();
        assert_eq!(raw, shoal_protocol::codec::encode(&sample).unwrap());
    }

    #[test]
    fn a_byte_sequence_is_its_length_then_its_bytes() {
        // What the parallel copy of `put_raw` writes.
        for len in [0usize, 1, 250, 251, 65_535, 65_536, 1 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut want = shoal_protocol::codec::encode(&(len as u64)).unwrap();
            want.extend_from_slice(&bytes);
            assert_eq!(
                shoal_protocol::codec::encode(&RawSlice(&bytes)).unwrap(),
                want,
                "{len}"
            );
        }
    }
}
