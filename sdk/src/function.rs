//! Remote functions as a worker sees them: the registry every `#[shoal::remote]` adds an
//! entry to, the arguments a task arrives with, and its encoded result.
//!
//! The refs inside a result stay held (on the worker's thread) until the task's `Done` is
//! queued, so the node never sees them unreferenced in between.

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::{codec, ArgValue, TaskError};

use crate::object_ref::{self, RawRef};
use crate::runtime;

/// A function callable by name in a worker.
#[derive(Debug)]
pub struct RemoteFunction {
    /// `module_path!()::name`.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the result.
    pub invoke: fn(Args) -> Result<Vec<u8>, TaskError>,
    /// How many times one worker process runs it before it is replaced by a fresh one
    /// (`#[shoal::remote(max_calls = n)]`, as Ray's `max_calls`); 0: no limit.
    pub max_calls: u32,
}

/// Every `#[shoal::remote]` function linked into this binary.
#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// The arguments of a task, as a worker received them.
#[derive(Debug)]
pub struct Args {
    values: Vec<Option<ArgValue>>,
}

impl Args {
    pub(crate) fn new(values: Vec<ArgValue>) -> Self {
        Self {
            values: values.into_iter().map(Some).collect(),
        }
    }

    /// Decodes argument `index` as a `T`.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, TaskError> {
        let bad = |message: String| TaskError::ArgDecode { index, message };
        let value = self
            .values
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                bad(format!(
                    "missing (the task has {} arguments)",
                    self.values.len()
                ))
            })?;
        match value {
            ArgValue::Inline(bytes) => {
                codec::decode(&bytes, usize::MAX).map_err(|e| bad(e.to_string()))
            }
            ArgValue::Shared(id, obj) => {
                let ctx = runtime::get();
                let map = crate::shm::map(ctx.store_dir(), &id, obj.size)
                    .map_err(|e| bad(e.to_string()))?;
                codec::decode(&map, usize::MAX).map_err(|e| bad(e.to_string()))
            }
        }
    }
}

thread_local! {
    /// Refs inside the result just encoded on this thread, held until its `Done` is queued.
    static RESULT_REFS: RefCell<Vec<RawRef>> = const { RefCell::new(Vec::new()) };
}

/// Encodes a function's result.
pub fn encode_result<T: Serialize + DeserializeOwned>(value: &T) -> Result<Vec<u8>, TaskError> {
    let (bytes, refs) = object_ref::encode_checked(value).map_err(|e| TaskError::ResultStore {
        message: e.to_string(),
    })?;
    if !refs.is_empty() {
        RESULT_REFS.with(|r| r.borrow_mut().extend(refs));
    }
    Ok(bytes)
}

/// The refs inside the result last encoded on this thread.
pub(crate) fn take_result_refs() -> Vec<RawRef> {
    RESULT_REFS.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Hands this thread the refs inside a result encoded on another (a blocking actor method's,
/// on a thread of the pool), for the call's `Done`.
pub(crate) fn keep_result_refs(refs: Vec<RawRef>) {
    if !refs.is_empty() {
        RESULT_REFS.with(|r| r.borrow_mut().extend(refs));
    }
}

thread_local! {
    /// The other returns of a function with several (`num_returns`) just encoded on this
    /// thread, in order, each with the refs inside it.
    static MORE_RETURNS: RefCell<Vec<(Vec<u8>, Vec<RawRef>)>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// Whether the function last run on this thread returned an `Err` worth a retry.
    static RETURNED_ERROR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records whether the function returned an `Err` worth a retry (`retry_exceptions`).
pub fn mark_returned_error(yes: bool) {
    RETURNED_ERROR.with(|r| r.set(yes));
}

/// Whether the function last run on this thread returned an `Err` worth a retry (and
/// forgets it).
pub(crate) fn take_returned_error() -> bool {
    RETURNED_ERROR.with(|r| r.replace(false))
}

/// Whether `value` is an `Err` that `retry_if` accepts (`#[remote(retry_if = ..)]`).
pub fn err_where<T, E>(value: &Result<T, E>, retry_if: impl Fn(&E) -> bool) -> bool {
    value.as_ref().err().is_some_and(retry_if)
}

/// A returned value, for [`IsErr`] and [`NotErr`] to tell an `Err` of a `Result` from any
/// other value, by its type: `(&Classify(&value)).returned_err()` finds `IsErr`'s method
/// for a `Result` first, and `NotErr`'s (one reference further) for anything else.
pub struct Classify<'a, T>(pub &'a T);

/// See [`Classify`]: a `Result`.
pub trait IsErr {
    /// Whether it is an `Err`.
    fn returned_err(&self) -> bool;
}

impl<T, E> IsErr for Classify<'_, Result<T, E>> {
    fn returned_err(&self) -> bool {
        self.0.is_err()
    }
}

/// See [`Classify`]: any other value.
pub trait NotErr {
    /// Never an `Err`.
    fn returned_err(&self) -> bool;
}

impl<T> NotErr for &Classify<'_, T> {
    fn returned_err(&self) -> bool {
        false
    }
}

/// Encodes the next of a function's other returns (returns 1 and on, in order; the first is
/// encoded with [`encode_result`] after them).
pub fn encode_return<T: Serialize + DeserializeOwned>(value: &T) -> Result<(), TaskError> {
    let encoded = object_ref::encode_checked(value).map_err(|e| TaskError::ResultStore {
        message: e.to_string(),
    })?;
    MORE_RETURNS.with(|r| r.borrow_mut().push(encoded));
    Ok(())
}

/// The other returns last encoded on this thread (none for a function with one).
pub(crate) fn take_more_returns() -> Vec<(Vec<u8>, Vec<RawRef>)> {
    MORE_RETURNS.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Runs a streaming generator's items out (the task or actor call this thread runs): each
/// item becomes its own object as it is yielded, told to the node in order; the iterator is
/// not asked for the next one while the node says the consumer is `window` items behind
/// (this thread waits). The result is the number of items.
pub fn yield_items<T: Serialize + DeserializeOwned>(
    items: impl IntoIterator<Item = T>,
) -> Result<Vec<u8>, TaskError> {
    let (ctx, task) = generator()?;
    let mut items = items.into_iter();
    let mut index: u32 = 0;
    loop {
        let next = next_index(index)?;
        if !ctx.work.wait_pace(task, next) {
            return Err(TaskError::Cancelled { task });
        }
        let Some(item) = items.next() else {
            break;
        };
        index = next;
        yield_one(ctx, task, index, &item)?;
    }
    encode_result(&u64::from(index))
}

/// [`yield_items`] for an `async` actor method: the wait for the consumer is awaited, so the
/// actor's other calls go on meanwhile.
pub async fn yield_items_async<T: Serialize + DeserializeOwned>(
    items: impl IntoIterator<Item = T>,
) -> Result<Vec<u8>, TaskError> {
    let (ctx, task) = generator()?;
    let mut items = items.into_iter();
    let mut index: u32 = 0;
    loop {
        let next = next_index(index)?;
        if !ctx.work.wait_pace_async(task, next).await {
            return Err(TaskError::Cancelled { task });
        }
        let Some(item) = items.next() else {
            break;
        };
        index = next;
        yield_one(ctx, task, index, &item)?;
    }
    encode_result(&u64::from(index))
}

/// The context and the task of the generator this thread runs.
fn generator() -> Result<(&'static runtime::Context, shoal_protocol::TaskId), TaskError> {
    let ctx = runtime::get();
    match crate::worker::current_task() {
        Some(task) => Ok((ctx, task)),
        None => Err(TaskError::ResultStore {
            message: "a streaming generator runs only as a task or an actor's call".into(),
        }),
    }
}

/// The number of the item after `index`, if a generator may yield one more.
fn next_index(index: u32) -> Result<u32, TaskError> {
    index
        .checked_add(1)
        .filter(|i| *i <= shoal_protocol::MAX_STREAM_ITEMS)
        .ok_or_else(|| TaskError::ResultStore {
            message: format!("a streaming generator yields at most {index} items"),
        })
}

/// Stores item `index` of `task` (inline or in the store) and tells the node.
fn yield_one<T: Serialize + DeserializeOwned>(
    ctx: &runtime::Context,
    task: shoal_protocol::TaskId,
    index: u32,
    item: &T,
) -> Result<(), TaskError> {
    let (bytes, refs) = object_ref::encode_checked(item).map_err(|e| TaskError::ResultStore {
        message: format!("item {index}: {e}"),
    })?;
    let id = shoal_protocol::ObjectId::for_return(task, index);
    let value = match crate::worker::store_result(ctx, id, bytes) {
        shoal_protocol::TaskOutcome::Ok(value) => value,
        shoal_protocol::TaskOutcome::Err(e) => return Err(e),
    };
    let nested = object_ref::ids_of(&refs);
    ctx.push(shoal_protocol::ToNode::Yield {
        task,
        index,
        item: shoal_protocol::ReturnValue { value, nested },
    });
    // (Held until the item's message is queued.)
    drop(refs);
    Ok(())
}
