//! `ObjectRef<T>`: a handle to a value that exists, or will, somewhere on the node.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_protocol::{codec, ClientId, ObjectId};

use crate::context::{self, Value};
use crate::error::GetError;

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
        context::get().add_ref(self.id, None);
        Self {
            id: self.id,
            owner: self.owner,
        }
    }
}

impl Drop for RawRef {
    fn drop(&mut self) {
        if let Some(ctx) = context::try_get() {
            ctx.drop_ref(self.id, self.owner);
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
    pub fn id(&self) -> ObjectId {
        self.raw.id
    }

    /// Whether the value (or the error) has arrived in this process.
    pub fn is_ready(&self) -> bool {
        context::get().is_done(&self.raw.id)
    }
}

fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, GetError> {
    codec::decode(v.bytes(), usize::MAX).map_err(|e| GetError::Decode(e.to_string()))
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Waits for the value. Works under any async executor.
    pub async fn get(&self) -> Result<T, GetError> {
        let ctx = context::get();
        let v = ctx.ready(self.raw.id).await?;
        decode(&v)
    }

    /// Waits at most `timeout` for the value.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let ctx = context::get();
        let ready = ctx.ready(self.raw.id);
        let sleep = ctx.sleep(timeout);
        match first(ready, sleep).await {
            Either::Left(v) => decode(&v?),
            Either::Right(()) => Err(GetError::Timeout(timeout)),
        }
    }

    /// Blocks this thread until the value is there: for synchronous code.
    pub fn get_blocking(&self) -> Result<T, GetError> {
        let v = context::get().wait_blocking(self.raw.id, None)?;
        decode(&v)
    }

    /// Blocks at most `timeout`.
    pub fn get_blocking_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let v = context::get().wait_blocking(self.raw.id, Some(timeout))?;
        decode(&v)
    }
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
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.raw.id, self.raw.owner).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (id, owner) = <(ObjectId, ClientId)>::deserialize(d)?;
        context::get().add_ref(id, None);
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
