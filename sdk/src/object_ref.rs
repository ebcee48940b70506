//! `ObjectRef<T>`: a handle to a value that exists, or will, somewhere on the node.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_protocol::{codec, ClientId, EncodeError, ObjectId, ToNode};

use crate::error::GetError;
use crate::runtime::{self, Context, Value};
use std::sync::Arc;

thread_local! {
    /// While a value is encoded for the node: the refs serialized inside it, kept alive
    /// (counted) until the message that carries the value is queued.
    static NESTED: RefCell<Option<Vec<RawRef>>> = const { RefCell::new(None) };
}

/// Encodes `value`, collecting the refs inside it. The returned handles keep those objects
/// held by this process: drop them only after the message carrying the value (and their
/// ids) is queued, so the node never sees them unreferenced in between.
pub(crate) fn encode_collecting<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, Vec<RawRef>), EncodeError> {
    let (bytes, refs) = collecting(|| codec::encode(value));
    Ok((bytes?, refs))
}

thread_local! {
    /// The types (by the address of their name) whose encoding this thread has read back
    /// once: see [`encode_checked`]. A program sends few types: scanned, not hashed.
    static READ_BACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// [`encode_collecting`] for a value that will be read back as a `T` elsewhere (a task's
/// argument, a result). The first time this thread encodes a `T`, the bytes are read back as
/// a `T` here: a type the codec can write but not read (one that needs a self-describing
/// format, as `serde_json::Value`, untagged or flattened enums and `skip_serializing_if` do)
/// fails now, naming the type and the way out, instead of at the reader's `get`.
pub(crate) fn encode_checked<T: Serialize + DeserializeOwned>(
    value: &T,
) -> Result<(Vec<u8>, Vec<RawRef>), EncodeError> {
    let (bytes, refs) = encode_collecting(value)?;
    let key = std::any::type_name::<T>().as_ptr() as usize;
    if !READ_BACK.with(|c| c.borrow().contains(&key)) {
        // (Refs read back here are held already: reading them changes no count.)
        if let Err(e) = codec::decode::<T>(&bytes, usize::MAX) {
            return Err(EncodeError::Failed(codec_trap(
                std::any::type_name::<T>(),
                &e,
            )));
        }
        READ_BACK.with(|c| c.borrow_mut().push(key));
    }
    Ok((bytes, refs))
}

/// Why a type does not read back from the codec, and what to do.
pub(crate) fn codec_trap(type_name: &str, error: &dyn std::fmt::Display) -> String {
    format!(
        "`{type_name}` does not read back from Shoal's binary encoding ({error}): it needs a \
         self-describing format (as serde_json::Value, #[serde(untagged)] and \
         #[serde(flatten)] do, or a field skipped with skip_serializing_if); send it as \
         shoal::Json<{type_name}> (the `json` feature), or change its serde attributes"
    )
}

/// Runs `f` (an encoding) with ref collection on.
pub(crate) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<RawRef>)
where
    R: Sized,
{
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    let r = f();
    let refs = NESTED.with(|n| {
        let mut slot = n.borrow_mut();
        let mine = slot.take().unwrap_or_default();
        *slot = outer;
        mine
    });
    (r, refs)
}

/// The ids of collected refs, for the message that carries them.
pub(crate) fn ids_of(refs: &[RawRef]) -> Vec<ObjectId> {
    let mut ids: Vec<ObjectId> = refs.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// An untyped counted handle. Cloning and dropping it keeps this process's count of handles,
/// and the last drop in the owning process releases the object at the node.
pub struct RawRef {
    pub(crate) id: ObjectId,
    pub(crate) owner: ClientId,
}

impl RawRef {
    /// Wraps a handle already counted with `Context::add_ref`.
    pub(crate) fn counted(id: ObjectId, owner: ClientId) -> Self {
        Self { id, owner }
    }
}

impl Clone for RawRef {
    fn clone(&self) -> Self {
        runtime::get().add_ref(self.id, None);
        Self {
            id: self.id,
            owner: self.owner,
        }
    }
}

impl Drop for RawRef {
    fn drop(&mut self) {
        if let Some(ctx) = runtime::try_get() {
            ctx.drop_ref(self.id);
        }
    }
}

impl fmt::Debug for RawRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.id)
    }
}

/// A reference to an object: the result of a task (`f.remote(..)`) or a value stored with
/// [`crate::put`]. It is returned at once; [`ObjectRef::get`] waits for the value.
///
/// Handles are cheap to clone, can be passed as task arguments (the task waits for the value
/// and receives it) and can be nested inside other values (they travel as references).
///
/// ```no_run
/// #[shoal::remote]
/// fn total(parts: Vec<shoal::ObjectRef<u64>>) -> u64 {
///     // A panic fails the task, with its message.
///     shoal::get_all_blocking(&parts, None).expect("every part").iter().sum()
/// }
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let three: shoal::ObjectRef<u64> = shoal::put(&3)?;
/// let nine = square.remote(&three);          // the task receives the value 3
/// let sum = total.remote(vec![three, nine]); // refs inside a value travel as refs
/// assert_eq!(sum.get_blocking()?, 12);
/// # Ok(()) }
/// ```
pub struct ObjectRef<T> {
    pub(crate) raw: RawRef,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_raw(raw: RawRef) -> Self {
        Self {
            raw,
            _t: PhantomData,
        }
    }

    /// The object's id.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::PutError> {
    /// let a = shoal::put(&"same value")?;
    /// let b = shoal::put(&"same value")?;
    /// assert_eq!(a.id(), b.id()); // equal values share one id
    /// println!("stored as {}", a.id());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> ObjectId {
        self.raw.id
    }

    /// Whether the value (or the error) has arrived in this process.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
    /// let refs: Vec<_> = (0..8).map(|i| square.remote(i)).collect();
    /// let done = refs.iter().filter(|r| r.is_ready()).count();
    /// println!("{done} of {} done so far", refs.len());
    /// ```
    pub fn is_ready(&self) -> bool {
        runtime::get().is_done(&self.raw.id)
    }
}

/// The bytes of a ready value, as a reader sees them.
pub(crate) enum Source<'a> {
    /// A small value, from its message.
    Inline(&'a Arc<Vec<u8>>),
    /// A large one: its store file, mapped (and locked against reuse) for as long as this
    /// lives.
    Mapped(crate::shm::Mapped, shoal_protocol::SharedObject),
}

impl std::ops::Deref for Source<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Source::Inline(v) => v,
            Source::Mapped(m, _) => m,
        }
    }
}

/// How many times a read follows an object the node moved before giving up.
const MAX_MOVES: usize = 8;

/// Reads `id` with `f`, mapping a large value's file for the call. `None`: the file is gone
/// (the node spilled it meanwhile); the cell is reset so that the next wait asks the node,
/// which reads it back first.
fn read_once<R>(
    ctx: &Context,
    id: ObjectId,
    v: &Value,
    f: &mut impl FnMut(Source<'_>) -> Result<R, GetError>,
) -> Result<Option<R>, GetError> {
    match v {
        Value::Inline(bytes) => f(Source::Inline(bytes)).map(Some),
        Value::Shared(obj) => match crate::shm::map(ctx.store_dir(), &id, obj.size) {
            Ok(map) => f(Source::Mapped(map, *obj)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ctx.refetch(id);
                Ok(None)
            }
            Err(e) => Err(GetError::Store(e.to_string())),
        },
    }
}

/// Waits (async) for `id` and reads it with `f`, following moves.
pub(crate) async fn read_async<R>(
    id: ObjectId,
    mut f: impl FnMut(Source<'_>) -> Result<R, GetError>,
) -> Result<R, GetError> {
    let ctx = runtime::get();
    for _ in 0..MAX_MOVES {
        let v = ctx.ready(id).await?;
        if let Some(r) = read_once(ctx, id, &v, &mut f)? {
            return Ok(r);
        }
    }
    Err(moved_too_often(id))
}

/// Waits (blocking this thread, at most `timeout`) for `id` and reads it with `f`,
/// following moves.
pub(crate) fn read_blocking<R>(
    id: ObjectId,
    timeout: Option<Duration>,
    mut f: impl FnMut(Source<'_>) -> Result<R, GetError>,
) -> Result<R, GetError> {
    let ctx = runtime::get();
    // A value this process has already is returned whatever the timeout, even when the
    // node must first read it back from disk (as Ray's `get` does).
    let deadline = timeout
        .filter(|_| !ctx.is_done(&id))
        .map(|t| std::time::Instant::now() + t);
    for _ in 0..MAX_MOVES {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let v = ctx.wait_blocking(id, left)?;
        if let Some(r) = read_once(ctx, id, &v, &mut f)? {
            return Ok(r);
        }
    }
    Err(moved_too_often(id))
}

fn decode<T: DeserializeOwned>(bytes: Source<'_>) -> Result<T, GetError> {
    codec::decode(&bytes, usize::MAX).map_err(|e| GetError::Decode(e.to_string()))
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Waits for the value. Works under any async executor.
    ///
    /// ```no_run
    /// # #[shoal::remote] async fn square(x: u64) -> u64 { x * x }
    /// # async fn run() -> Result<(), shoal::GetError> {
    /// let r = square.remote(3);
    /// assert_eq!(r.get().await?, 9);
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<T, GetError> {
        read_async(self.raw.id, decode).await
    }

    /// Waits at most `timeout` for the value. A value this process has already (say, one it
    /// put) is returned whatever the timeout, even when the node must first read it back
    /// from disk, as Ray's `get` does.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[shoal::remote] async fn slow() -> u64 { 1 }
    /// # async fn run() -> Result<(), shoal::GetError> {
    /// match slow.remote().get_timeout(Duration::from_secs(5)).await {
    ///     Ok(v) => println!("got {v}"),
    ///     Err(shoal::GetError::Timeout(after)) => eprintln!("no value after {after:?}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let ctx = runtime::get();
        if ctx.is_done(&self.raw.id) {
            return self.get().await;
        }
        let sleep = ctx.sleep(timeout);
        match first(self.get(), sleep).await {
            Either::Left(v) => v,
            Either::Right(()) => Err(GetError::Timeout(timeout)),
        }
    }

    /// Blocks this thread until the value is there: for synchronous code.
    ///
    /// ```no_run
    /// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let r = square.remote(3);
    /// assert_eq!(r.get_blocking()?, 9);
    /// # Ok(()) }
    /// ```
    pub fn get_blocking(&self) -> Result<T, GetError> {
        read_blocking(self.raw.id, None, decode)
    }

    /// Blocks at most `timeout` (but see [`ObjectRef::get_timeout`] for a value here
    /// already).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[shoal::remote] fn slow() -> u64 { 1 }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let r = slow.remote();
    /// if let Err(shoal::GetError::Timeout(_)) = r.get_blocking_timeout(Duration::from_secs(1)) {
    ///     eprintln!("not done within a second; waiting on");
    ///     r.get_blocking()?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get_blocking_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        read_blocking(self.raw.id, Some(timeout), decode)
    }
}

/// `r.await` is `r.get().await`: the value, or why there is none.
///
/// ```no_run
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// # async fn run() -> Result<(), shoal::GetError> {
/// let nine = square.remote(3).await?;
/// let r = square.remote(4);
/// assert_eq!((&r).await?, 16); // a reference awaits too, and keeps the ref
/// # assert_eq!(nine, 9); Ok(()) }
/// ```
impl<T: DeserializeOwned + Send + 'static> std::future::IntoFuture for ObjectRef<T> {
    type Output = Result<T, GetError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, GetError>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.get().await })
    }
}

impl<'a, T: DeserializeOwned + Send + 'static> std::future::IntoFuture for &'a ObjectRef<T> {
    type Output = Result<T, GetError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, GetError>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.get())
    }
}

impl<T> ObjectRef<T> {
    /// Waits for the object, then checks its bytes in the shared-memory store (read in place)
    /// against its blake3 digest. A mismatch is [`TaskError::ObjectCorrupted`]. Small values
    /// travel whole inside messages: there is no stored copy to check.
    ///
    /// The digest is the one recorded when the object was sealed, or for a [`put`] (which is
    /// not hashed on its way in) the one its node took when the object first left the node,
    /// was spilled or was verified: a put verified before any of those has its digest taken
    /// then, from the copy that is still the original, and is checked against it from then on.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let big = shoal::put(&vec![7u8; 1 << 20])?; // large: kept in the shared-memory store
    /// match big.verify_blocking() {
    ///     Ok(()) => {}
    ///     Err(shoal::GetError::Task(shoal::TaskError::ObjectCorrupted { message, .. })) => {
    ///         eprintln!("the stored copy is damaged: {message}")
    ///     }
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// [`TaskError::ObjectCorrupted`]: crate::TaskError::ObjectCorrupted
    /// [`put`]: crate::put
    pub fn verify_blocking(&self) -> Result<(), GetError> {
        let id = self.raw.id;
        let ctx = runtime::get();
        let mut recorded = None;
        read_blocking(id, None, |source| match source {
            Source::Inline(_) => Ok(()),
            Source::Mapped(map, obj) => {
                let want = match (obj.digest, recorded) {
                    (Some(d), _) | (None, Some(d)) => d,
                    (None, None) => *recorded.insert(ctx.digest(id)?),
                };
                let found = shoal_node::store::digest(&map);
                if found == want {
                    Ok(())
                } else {
                    Err(GetError::Task(shoal_protocol::TaskError::ObjectCorrupted {
                        id,
                        message: format!("its bytes hash to {found}, recorded {want}"),
                    }))
                }
            }
        })
    }
}

fn moved_too_often(id: ObjectId) -> GetError {
    GetError::Store(format!(
        "object {id} kept moving between memory and disk while being read"
    ))
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self::from_raw(self.raw.clone())
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.raw.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw.id == other.raw.id
    }
}
impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.id.hash(state)
    }
}

impl<T> Serialize for ObjectRef<T> {
    /// A ref travels as its id and owner. Inside a value sent to the node (an argument, a
    /// result, a `put`), the node keeps the object alive as long as that value lives.
    /// Written by any other serializer (`serde_json`, say), the object is pinned: this
    /// process holds it until it ends, as Ray pins refs serialized out of band.
    ///
    /// ```no_run
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Shard {
    ///     name: String,
    ///     data: shoal::ObjectRef<Vec<u8>>, // travels as a ref; its object lives while it does
    /// }
    ///
    /// #[shoal::remote]
    /// fn size(shard: Shard) -> usize {
    ///     shard.data.get_blocking().map_or(0, |d| d.len())
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let shard = Shard { name: "a".to_string(), data: shoal::put(&vec![0u8; 1 << 20])? };
    /// assert_eq!(size.remote(shard).get_blocking()?, 1 << 20);
    /// # Ok(()) }
    /// ```
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let in_band = NESTED.with(|n| match n.borrow_mut().as_mut() {
            Some(refs) => {
                refs.push(self.raw.clone());
                true
            }
            None => false,
        });
        if !in_band {
            // Written by another serializer: wherever it goes, the object must outlive it.
            runtime::get().pin(self.raw.id);
        }
        (self.raw.id, self.raw.owner).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    /// A ref received inside a value: this process holds the object from now on, until its
    /// last handle here is dropped.
    ///
    /// ```no_run
    /// #[shoal::remote]
    /// fn keep_big(parts: Vec<shoal::ObjectRef<Vec<u8>>>) -> Vec<shoal::ObjectRef<Vec<u8>>> {
    ///     // The refs read from the argument hold their objects in this task's process, and
    ///     // the ones returned are held by the result.
    ///     parts.into_iter().filter(|p| p.get_blocking().is_ok_and(|v| v.len() > 1024)).collect()
    /// }
    /// ```
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (id, owner) = <(ObjectId, ClientId)>::deserialize(d)?;
        let ctx = runtime::get();
        if ctx.add_ref(id, None) {
            ctx.push(ToNode::Hold { ids: vec![id] });
        }
        Ok(Self::from_raw(RawRef::counted(id, owner)))
    }
}

pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// The first of two futures to finish (the left one is polled first).
pub(crate) fn first<A: Future, B: Future>(
    a: A,
    b: B,
) -> impl Future<Output = Either<A::Output, B::Output>> {
    struct First<A, B> {
        a: Pin<Box<A>>,
        b: Pin<Box<B>>,
    }
    impl<A: Future, B: Future> Future for First<A, B> {
        type Output = Either<A::Output, B::Output>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
            if let Poll::Ready(v) = self.a.as_mut().poll(cx) {
                return Poll::Ready(Either::Left(v));
            }
            if let Poll::Ready(v) = self.b.as_mut().poll(cx) {
                return Poll::Ready(Either::Right(v));
            }
            Poll::Pending
        }
    }
    First {
        a: Box::pin(a),
        b: Box::pin(b),
    }
}
