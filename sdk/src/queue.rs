//! [`Queue`]: a first-in first-out queue that tasks, actors and programs share, held by an
//! actor of its own (Ray's `ray.util.queue.Queue`).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::actor::{ActorError, ActorHandle, ActorOptions};
use crate::error::GetError;
use crate::object_ref::{self, ObjectRef};

use holder::{Item, QueueActor};

/// Why a queue operation failed.
///
/// ```no_run
/// use shoal::{Queue, QueueError};
/// # fn main() -> Result<(), QueueError> {
/// let jobs = Queue::<String>::new(10);
/// match jobs.get_nowait() {
///     Ok(job) => println!("working on {job}"),
///     Err(QueueError::Empty) => println!("nothing to do yet"),
///     Err(e) => return Err(e), // the queue's actor is gone, or an item did not decode
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QueueError {
    /// The queue is full (at once for a `*_nowait` put, else when the time limit passed).
    #[error("the queue is full")]
    Full,
    /// The queue is empty (at once for a `*_nowait` get, else when the time limit passed).
    #[error("the queue is empty")]
    Empty,
    /// The item's `Serialize` failed.
    #[error("cannot encode the item: {0}")]
    Encode(String),
    /// An item is not a `T`.
    #[error("cannot decode an item: {0}")]
    Decode(String),
    /// The queue's actor could not be reached (it was shut down, or its process died).
    #[error("the queue's actor failed: {0}")]
    Actor(#[from] GetError),
}

/// A first-in first-out queue of `T`s, held by an actor of its own, that every holder of a
/// handle may put to and get from: pass it (it is `Clone` and serializable) to tasks and
/// actors (Ray's `ray.util.queue.Queue`).
///
/// Each operation has a blocking form (`*_blocking`), an `async` one, and a `*_nowait` one
/// that fails at once with [`QueueError::Full`] or [`QueueError::Empty`]. A `timeout` of
/// `None` waits as long as it takes. Items keep the refs inside them alive while queued.
///
/// ```no_run
/// # #[shoal::remote] fn produce(q: shoal::Queue<u64>) { for i in 0..10 { q.put_blocking(i, None).unwrap(); } }
/// # fn main() -> Result<(), shoal::QueueError> {
/// let q = shoal::Queue::<u64>::new(100);
/// let done = produce.remote(q.clone());
/// let first = q.get_blocking(None)?;
/// assert_eq!(first, 0);
/// # let _ = done; Ok(()) }
/// ```
///
/// The queue's actor lives as any actor does (see [`ActorHandle`]); [`shutdown`](Self::shutdown)
/// ends it.
pub struct Queue<T> {
    actor: ActorHandle<QueueActor>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("actor", &ActorHandle::id(&self.actor))
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.actor.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            actor: ActorHandle::deserialize(d)?,
            _t: PhantomData,
        })
    }
}

/// Milliseconds of a timeout, as the actor takes them.
fn millis(timeout: Option<Duration>) -> Option<u64> {
    timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue of at most `maxsize` items (0: no bound), on an actor that holds no CPU.
    ///
    /// ```no_run
    /// let bounded = shoal::Queue::<u64>::new(1000); // puts wait while 1000 items are queued
    /// let unbounded = shoal::Queue::<String>::new(0);
    /// # let _ = (bounded, unbounded);
    /// ```
    pub fn new(maxsize: usize) -> Self {
        Self {
            actor: QueueActor::remote(maxsize as u64),
            _t: PhantomData,
        }
    }

    /// A queue whose actor is made with `options` (say, a name for other programs to find it
    /// by with [`Queue::named`]).
    ///
    /// ```no_run
    /// use shoal::{ActorOptions, Queue};
    /// # fn main() -> Result<(), shoal::ActorError> {
    /// // Found by other programs on the node with Queue::named("jobs"), and outlives this one.
    /// let options = ActorOptions::new().name("jobs").detached(true);
    /// let jobs = Queue::<String>::with_options(0, options)?;
    /// # let _ = jobs; Ok(()) }
    /// ```
    pub fn with_options(maxsize: usize, options: ActorOptions) -> Result<Self, ActorError> {
        Ok(Self {
            actor: QueueActor::options(options).try_remote(maxsize as u64)?,
            _t: PhantomData,
        })
    }

    /// The queue whose actor is named `name`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // In another program than the one that made it with Queue::with_options.
    /// let jobs = shoal::Queue::<String>::named("jobs")?;
    /// jobs.put_blocking("resize photo 17".to_string(), None)?;
    /// # Ok(()) }
    /// ```
    pub fn named(name: &str) -> Result<Self, ActorError> {
        Ok(Self {
            actor: crate::get_actor::<QueueActor>(name)?,
            _t: PhantomData,
        })
    }

    /// Puts `item` at the back, waiting at most `timeout` for room.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn run() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(100);
    /// q.put(1, None).await?; // waits as long as the queue is full
    /// if let Err(shoal::QueueError::Full) = q.put(2, Some(Duration::from_secs(1))).await {
    ///     eprintln!("still full after a second: dropping 2");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, item: T, timeout: Option<Duration>) -> Result<(), QueueError> {
        let item = Item::encode(&item)?;
        full_unless(self.actor.put(item, millis(timeout)).get().await?)
    }

    /// [`put`](Self::put), blocking this thread.
    ///
    /// ```no_run
    /// #[shoal::remote]
    /// fn produce(q: shoal::Queue<u64>, n: u64) -> Result<(), String> {
    ///     for i in 0..n {
    ///         q.put_blocking(i, None).map_err(|e| e.to_string())?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn put_blocking(&self, item: T, timeout: Option<Duration>) -> Result<(), QueueError> {
        let item = Item::encode(&item)?;
        full_unless(self.actor.put(item, millis(timeout)).get_blocking()?)
    }

    /// Puts `item` at the back if there is room now.
    ///
    /// ```no_run
    /// use shoal::QueueError;
    /// # fn main() -> Result<(), QueueError> {
    /// let q = shoal::Queue::<u64>::new(1);
    /// q.put_nowait(1)?;
    /// assert_eq!(q.put_nowait(2), Err(QueueError::Full));
    /// # Ok(()) }
    /// ```
    pub fn put_nowait(&self, item: T) -> Result<(), QueueError> {
        self.put_nowait_batch(std::iter::once(item))
    }

    /// Puts every one of `items`, in order, if there is room for all of them now (else none).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(10);
    /// q.put_nowait_batch(0..8)?;
    /// assert!(q.put_nowait_batch(0..3).is_err()); // 11 do not fit: none is put
    /// assert_eq!(q.len()?, 8);
    /// # Ok(()) }
    /// ```
    pub fn put_nowait_batch(&self, items: impl IntoIterator<Item = T>) -> Result<(), QueueError> {
        let items = items
            .into_iter()
            .map(|i| Item::encode(&i))
            .collect::<Result<Vec<_>, _>>()?;
        full_unless(self.actor.put_batch(items).get_blocking()?)
    }

    /// Takes the item at the front, waiting at most `timeout` for one.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn run() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<String>::new(0);
    /// // Serve items until none came for a minute.
    /// while let Ok(item) = q.get(Some(Duration::from_secs(60))).await {
    ///     println!("{item}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, timeout: Option<Duration>) -> Result<T, QueueError> {
        self.actor
            .get(millis(timeout))
            .get()
            .await?
            .ok_or(QueueError::Empty)?
            .decode()
    }

    /// [`get`](Self::get), blocking this thread.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use shoal::QueueError;
    /// # fn main() -> Result<(), QueueError> {
    /// let q = shoal::Queue::<u64>::new(0);
    /// match q.get_blocking(Some(Duration::from_secs(5))) {
    ///     Ok(n) => println!("got {n}"),
    ///     Err(QueueError::Empty) => println!("nothing within 5 s"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get_blocking(&self, timeout: Option<Duration>) -> Result<T, QueueError> {
        self.actor
            .get(millis(timeout))
            .get_blocking()?
            .ok_or(QueueError::Empty)?
            .decode()
    }

    /// Takes the item at the front if there is one now.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(0);
    /// q.put_blocking(7, None)?;
    /// assert_eq!(q.get_nowait()?, 7);
    /// assert_eq!(q.get_nowait(), Err(shoal::QueueError::Empty));
    /// # Ok(()) }
    /// ```
    pub fn get_nowait(&self) -> Result<T, QueueError> {
        let mut items = self.get_nowait_batch(1)?;
        items.pop().ok_or(QueueError::Empty)
    }

    /// Takes the `n` items at the front if there are that many now (else none).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(0);
    /// q.put_nowait_batch([1, 2, 3])?;
    /// assert_eq!(q.get_nowait_batch(2)?, vec![1, 2]);
    /// assert!(q.get_nowait_batch(2).is_err()); // only one is left: none is taken
    /// # Ok(()) }
    /// ```
    pub fn get_nowait_batch(&self, n: usize) -> Result<Vec<T>, QueueError> {
        self.actor
            .get_batch(n as u64)
            .get_blocking()?
            .ok_or(QueueError::Empty)?
            .into_iter()
            .map(Item::decode)
            .collect()
    }

    /// How many items are queued.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(0);
    /// q.put_nowait_batch(0..5)?;
    /// assert_eq!(q.len()?, 5);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> Result<usize, QueueError> {
        Ok(self.actor.len().get_blocking()? as usize)
    }

    /// Whether no item is queued.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(0);
    /// assert!(q.is_empty()?);
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// Whether the queue is at its bound.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::QueueError> {
    /// let q = shoal::Queue::<u64>::new(2);
    /// q.put_nowait_batch([1, 2])?;
    /// assert!(q.is_full()?);
    /// # Ok(()) }
    /// ```
    pub fn is_full(&self) -> Result<bool, QueueError> {
        Ok(self.actor.is_full().get_blocking()?)
    }

    /// Ends the queue's actor at once: every operation of every holder fails with
    /// [`QueueError::Actor`] from then on, and the items queued are gone.
    ///
    /// ```no_run
    /// let q = shoal::Queue::<u64>::new(0);
    /// let other = q.clone();
    /// q.shutdown();
    /// assert!(matches!(other.put_nowait(1), Err(shoal::QueueError::Actor(_))));
    /// ```
    pub fn shutdown(self) {
        crate::kill(&self.actor);
    }
}

fn full_unless(put: bool) -> Result<(), QueueError> {
    if put {
        Ok(())
    } else {
        Err(QueueError::Full)
    }
}

/// What holds a queue: its actor, and its items as they travel (pub for the actor's
/// expansion, not reachable from outside).
#[allow(unreachable_pub)]
mod holder {
    use super::*;

    /// An item as it travels: its encoding, and the refs inside it (so that the objects they
    /// name stay alive while the item is in the queue).
    #[derive(Serialize, Deserialize)]
    #[doc(hidden)]
    pub struct Item {
        bytes: Vec<u8>,
        refs: Vec<ObjectRef<()>>,
    }

    impl Item {
        pub(super) fn encode<T: Serialize>(value: &T) -> Result<Item, QueueError> {
            let (bytes, refs) = object_ref::encode_collecting(value)
                .map_err(|e| QueueError::Encode(e.to_string()))?;
            let refs = refs.into_iter().map(ObjectRef::from_raw).collect();
            Ok(Item { bytes, refs })
        }

        pub(super) fn decode<T: DeserializeOwned>(self) -> Result<T, QueueError> {
            shoal_protocol::codec::decode(&self.bytes, usize::MAX)
                .map_err(|e| QueueError::Decode(e.to_string()))
        }
    }

    /// The actor that holds a [`Queue`]'s items (an implementation detail of `Queue`).
    #[doc(hidden)]
    pub struct QueueActor {
        state: Mutex<QueueState>,
        /// Woken at every put and get.
        changed: tokio::sync::Notify,
    }

    struct QueueState {
        items: VecDeque<Item>,
        maxsize: usize,
    }

    impl QueueState {
        fn room(&self, n: usize) -> bool {
            self.maxsize == 0 || self.items.len() + n <= self.maxsize
        }
    }

    impl QueueActor {
        fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Waits until `ready` holds (it is tried at once, and after every change), at most
        /// `timeout_ms`: what it gave, or `None` at the limit.
        async fn until<R>(
            &self,
            timeout_ms: Option<u64>,
            mut ready: impl FnMut(&mut QueueState) -> Option<R>,
        ) -> Option<R> {
            let wait = async {
                loop {
                    let changed = self.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if let Some(r) = ready(&mut self.state()) {
                        return r;
                    }
                    changed.await;
                }
            };
            match timeout_ms {
                None => Some(wait.await),
                Some(ms) => tokio::time::timeout(Duration::from_millis(ms), wait)
                    .await
                    .ok(),
            }
        }

        fn changed(&self) {
            self.changed.notify_waiters();
        }
    }

    #[crate::actor]
    impl QueueActor {
        pub fn new(maxsize: u64) -> Self {
            QueueActor {
                state: Mutex::new(QueueState {
                    items: VecDeque::new(),
                    maxsize: usize::try_from(maxsize).unwrap_or(usize::MAX),
                }),
                changed: tokio::sync::Notify::new(),
            }
        }

        pub async fn put(&self, item: Item, timeout_ms: Option<u64>) -> bool {
            let mut item = Some(item);
            let put = self
                .until(timeout_ms, |s| {
                    s.room(1).then(|| {
                        if let Some(i) = item.take() {
                            s.items.push_back(i);
                        }
                    })
                })
                .await
                .is_some();
            if put {
                self.changed();
            }
            put
        }

        pub async fn put_batch(&self, items: Vec<Item>) -> bool {
            let put = {
                let mut s = self.state();
                let room = s.room(items.len());
                if room {
                    s.items.extend(items);
                }
                room
            };
            if put {
                self.changed();
            }
            put
        }

        pub async fn get(&self, timeout_ms: Option<u64>) -> Option<Item> {
            let item = self.until(timeout_ms, |s| s.items.pop_front()).await;
            if item.is_some() {
                self.changed();
            }
            item
        }

        pub async fn get_batch(&self, n: u64) -> Option<Vec<Item>> {
            let items = {
                let mut s = self.state();
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                (s.items.len() >= n).then(|| s.items.drain(..n).collect::<Vec<_>>())
            };
            if items.is_some() {
                self.changed();
            }
            items
        }

        pub async fn len(&self) -> u64 {
            self.state().items.len() as u64
        }

        pub async fn is_full(&self) -> bool {
            !self.state().room(1)
        }
    }
}
