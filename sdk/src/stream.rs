//! Streaming generators (Ray's `num_returns="streaming"` and its `ObjectRefGenerator`): a
//! remote function marked `#[shoal::remote(streaming)]` (or an actor's method marked
//! `#[streaming]`) returns an iterator, and its call gives an [`ObjectRefStream`] of one ref
//! per item, each available as soon as it is yielded, wherever it runs.

use std::marker::PhantomData;

use shoal_protocol::{codec, ObjectId, ObjectValue, TaskError, TaskId, ToNode};

use crate::error::GetError;
use crate::object_ref::{ObjectRef, RawRef};
use crate::runtime::{self, StreamNext, Value};

/// The refs to the items of a streaming generator's run, in the order it yielded them (as
/// Ray's `ObjectRefGenerator`): returned at once by the `remote` call of a
/// `#[shoal::remote(streaming)]` function, or the call of an actor's `#[streaming]` method.
///
/// - Each item is its own object, made as soon as the function yields it: the stream gives
///   its ref then, before the function goes on or ends. Taking it does not read its value
///   (a large one stays where it was made until a `get` asks), and the ref can be passed to
///   other tasks like any other.
/// - Back-pressure: the function pauses while the items it yielded and this stream did not
///   give out yet number [`TaskOptions::backpressure`](crate::TaskOptions::backpressure)
///   (64 by default).
/// - If the function fails (it panics, its worker dies past its retries, it is cancelled),
///   the stream gives the items it yielded before, then one more ref whose `get` gives the
///   error, then ends. A run after a failure yields its items again: those given out
///   already are not given twice (as Ray, runs are taken to be deterministic).
/// - Dropping the stream before its end cancels the task (its items not taken are
///   released).
/// - Iterate it blocking (`for r in stream`, as a Python loop over Ray's generator) or
///   await [`ObjectRefStream::recv`].
///
/// ```no_run
/// #[shoal::remote(streaming)]
/// fn squares(n: u64) -> impl Iterator<Item = u64> {
///     (1..=n).map(|i| i * i)
/// }
///
/// # fn main() -> Result<(), shoal::GetError> {
/// let mut sum = 0;
/// for r in squares.remote(4) {
///     sum += r.get_blocking()?;
/// }
/// assert_eq!(sum, 1 + 4 + 9 + 16);
/// # Ok(()) }
/// ```
pub struct ObjectRefStream<T> {
    task: TaskId,
    /// The end (the task's first return): held until the stream ends.
    end: Option<RawRef>,
    /// Items given out.
    taken: u32,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ObjectRefStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRefStream")
            .field("task", &self.task)
            .field("taken", &self.taken)
            .field("ended", &self.end.is_none())
            .finish()
    }
}

impl<T> ObjectRefStream<T> {
    pub(crate) fn new(task: TaskId, end: RawRef) -> Self {
        Self {
            task,
            end: Some(end),
            taken: 0,
            _t: PhantomData,
        }
    }

    /// The next item's ref, waiting until the function yields it; `None` once the stream
    /// ended. Works under any async executor.
    ///
    /// ```no_run
    /// #[shoal::remote(streaming)]
    /// fn pages(n: u32) -> impl Iterator<Item = String> {
    ///     (1..=n).map(|i| format!("page {i}"))
    /// }
    ///
    /// # async fn run() -> Result<(), shoal::GetError> {
    /// let mut stream = pages.remote(10);
    /// while let Some(page) = stream.recv().await {
    ///     println!("{}", page.await?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<ObjectRef<T>> {
        let end = self.end.as_ref()?.id;
        let ctx = runtime::get();
        let next = std::future::poll_fn(|cx| ctx.poll_stream(end, Some(cx.waker()))).await;
        self.step(next)
    }

    /// The generator's task (as `shoal list tasks` shows it). Its item `i` (from 1) is the
    /// object `ObjectId::for_return(task, i)`.
    ///
    /// ```no_run
    /// # #[shoal::remote(streaming)]
    /// # fn pages(n: u32) -> impl Iterator<Item = String> { (1..=n).map(|i| i.to_string()) }
    /// use shoal::ObjectId;
    /// let mut stream = pages.remote(10);
    /// let task = stream.task_id();
    /// if let Some(first) = stream.next() {
    ///     assert_eq!(first.id(), ObjectId::for_return(task, 1));
    /// }
    /// ```
    pub fn task_id(&self) -> TaskId {
        self.task
    }

    /// How many item refs the stream gave out so far.
    ///
    /// ```no_run
    /// # #[shoal::remote(streaming)]
    /// # fn pages(n: u32) -> impl Iterator<Item = String> { (1..=n).map(|i| i.to_string()) }
    /// let mut stream = pages.remote(10);
    /// let first_three: Vec<_> = stream.by_ref().take(3).collect();
    /// assert_eq!(stream.taken(), 3);
    /// # let _ = first_three;
    /// ```
    pub fn taken(&self) -> u32 {
        self.taken
    }

    /// Whether the stream ended (every item was given out, and the end seen).
    ///
    /// ```no_run
    /// # #[shoal::remote(streaming)]
    /// # fn pages(n: u32) -> impl Iterator<Item = String> { (1..=n).map(|i| i.to_string()) }
    /// let mut stream = pages.remote(2);
    /// let all: Vec<_> = stream.by_ref().collect();
    /// assert_eq!(all.len(), 2);
    /// assert!(stream.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.end.is_none()
    }

    /// What the stream gives for `next`.
    fn step(&mut self, next: StreamNext) -> Option<ObjectRef<T>> {
        let ctx = runtime::get();
        match next {
            StreamNext::Item(index, value) => {
                let id = ObjectId::for_return(self.task, index);
                // The node counted this process as its holder when it sent it.
                match value {
                    Some(ObjectValue::Error(e)) => ctx.add_failed(id, GetError::Task(e)),
                    Some(ObjectValue::Inline(v)) => {
                        ctx.add_ref(id, Some(Value::Inline(std::sync::Arc::new(v))));
                    }
                    Some(ObjectValue::Shared(o)) => {
                        ctx.add_ref(id, Some(Value::Shared(o)));
                    }
                    None => {
                        ctx.add_ref(id, None);
                    }
                }
                self.taken = index;
                ctx.push(ToNode::StreamTaken {
                    task: self.task,
                    taken: index,
                });
                Some(ObjectRef::from_raw(RawRef::counted(id, ctx.client)))
            }
            StreamNext::End(Ok(value)) => {
                let count = match value {
                    Value::Inline(bytes) => codec::decode::<u64>(&bytes, 8).ok(),
                    Value::Shared(_) => None,
                };
                match count {
                    // An item told to have been yielded never came (its message was lost
                    // with its peer): its ref says so, rather than the stream ending short.
                    Some(n) if n > u64::from(self.taken) => {
                        self.taken += 1;
                        let id = ObjectId::for_return(self.task, self.taken);
                        tracing::warn!(task = %self.task, item = self.taken, "a streaming generator's item never came");
                        ctx.add_failed(id, GetError::Task(TaskError::ObjectLost { id }));
                        Some(ObjectRef::from_raw(RawRef::counted(id, ctx.client)))
                    }
                    Some(_) => {
                        self.end = None;
                        None
                    }
                    None => {
                        // Not a count: the end itself says what went wrong on a get.
                        tracing::warn!(task = %self.task, "a streaming generator's end is not a count");
                        self.end.take().map(ObjectRef::from_raw)
                    }
                }
            }
            // The function failed: the end's ref gives the error, once.
            StreamNext::End(Err(_)) => self.end.take().map(ObjectRef::from_raw),
        }
    }
}

impl<T> Iterator for ObjectRefStream<T> {
    type Item = ObjectRef<T>;

    /// The next item's ref, blocking this thread until the function yields it.
    ///
    /// ```no_run
    /// # #[shoal::remote(streaming)]
    /// # fn pages(n: u32) -> impl Iterator<Item = String> { (1..=n).map(|i| i.to_string()) }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut stream = pages.remote(10);
    /// while let Some(page) = stream.next() {
    ///     println!("{}", page.get_blocking()?);
    /// }
    /// # Ok(()) }
    /// ```
    fn next(&mut self) -> Option<ObjectRef<T>> {
        let end = self.end.as_ref()?.id;
        let next = runtime::get().next_blocking(end);
        self.step(next)
    }
}

impl<T> Drop for ObjectRefStream<T> {
    fn drop(&mut self) {
        let Some(end) = self.end.take() else {
            return;
        };
        let Some(ctx) = runtime::try_get() else {
            return;
        };
        // Still running (or about to): nothing will take its items, so it stops. (Its end
        // and its items not taken are released with the end's last handle.)
        if !ctx.is_done(&end.id) {
            ctx.set_handled(end.id);
            ctx.push(ToNode::Cancel {
                task: self.task,
                force: false,
                recursive: false,
            });
        }
        drop(end);
    }
}
