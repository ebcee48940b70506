//! Many refs at once: [`wait`] for some of them, [`get_all`] for all of them, [`free`] to
//! drop their values.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use shoal_protocol::{ObjectId, TaskError, ToNode};

use crate::error::{GetError, WaitError};
use crate::object_ref::{self, ObjectRef, RawRef};
use crate::runtime::{self, Context};

/// Frees the values of `refs` (Ray's `free`): the node drops them from its store, and the
/// copies it keeps at peers, at once, while the refs live on; a later read of one (here or
/// in a task) fails with [`TaskError::ObjectFreed`], and so do the tasks waiting for one.
/// A freed object is not made again from its lineage. Other processes keep a value they
/// read already. For memory that must go before its refs do; dropping the refs frees an
/// object anyway.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let big = shoal::put(&vec![0u8; 64 << 20])?;
/// shoal::free([&big])?;
/// assert!(matches!(
///     big.get_blocking(),
///     Err(shoal::GetError::Task(shoal::TaskError::ObjectFreed { .. }))
/// ));
/// # Ok(()) }
/// ```
pub fn free<'a, T: 'a>(refs: impl IntoIterator<Item = &'a ObjectRef<T>>) -> Result<(), GetError> {
    let ctx = runtime::get();
    if ctx.is_shut_down() {
        return Err(GetError::Shutdown);
    }
    let ids: Vec<ObjectId> = refs.into_iter().map(ObjectRef::id).collect();
    for id in &ids {
        ctx.settle_failed(*id, GetError::Task(TaskError::ObjectFreed { id: *id }));
    }
    if !ids.is_empty() {
        ctx.push(ToNode::Free { ids });
    }
    Ok(())
}

/// What [`wait`] returns: the ready refs, and the others.
///
/// ```no_run
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// use shoal::{ObjectRef, Split};
///
/// fn first_ready(refs: &[ObjectRef<u64>]) -> Result<Split<u64>, shoal::WaitError> {
///     shoal::wait_blocking(refs, 1, None)
/// }
///
/// let refs: Vec<_> = (0..4).map(|i| square.remote(i)).collect();
/// let (ready, pending) = first_ready(&refs)?;
/// # let _ = (ready, pending);
/// # Ok::<(), shoal::WaitError>(())
/// ```
pub type Split<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_ready` of `refs` are ready (or failed), or `timeout` passes. Returns at
/// most `num_ready` ready refs and the others (as Ray's `wait`), each in the order given.
///
/// As Ray's, it refuses a ref given twice ([`WaitError::Duplicate`]) and more ready refs
/// asked for than given ([`WaitError::TooMany`]).
///
/// ```no_run
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// # async fn run() -> Result<(), shoal::WaitError> {
/// let refs: Vec<_> = (0..4).map(|i| square.remote(i)).collect();
/// let (ready, pending) = shoal::wait(&refs, 2, None).await?;
/// assert_eq!(ready.len() + pending.len(), 4);
/// # Ok(()) }
/// ```
pub async fn wait<T>(
    refs: &[ObjectRef<T>],
    num_ready: usize,
    timeout: Option<Duration>,
) -> Result<Split<T>, WaitError> {
    check_wait(refs, num_ready)?;
    let ctx = runtime::get();
    let want = num_ready;
    let all = std::future::poll_fn(|cx| {
        let mut ready = 0;
        for r in refs {
            if ctx.poll_cell(r.id(), Some(cx.waker()), false).is_ready() {
                ready += 1;
            }
        }
        if ready >= want {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    });
    match timeout {
        Some(t) => {
            // Either way, the refs are split below by what is ready now.
            let _ = object_ref::first(all, ctx.sleep(t)).await;
        }
        None => all.await,
    }
    Ok(split_ready(ctx, refs, want))
}

/// [`wait`] for synchronous code.
///
/// ```no_run
/// # use std::time::Duration;
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Handle each result as it comes, waking at least once a second meanwhile.
/// let mut pending: Vec<_> = (0..8).map(|i| square.remote(i)).collect();
/// while !pending.is_empty() {
///     let (ready, rest) = shoal::wait_blocking(&pending, 1, Some(Duration::from_secs(1)))?;
///     for r in &ready {
///         println!("{}", r.get_blocking()?);
///     }
///     pending = rest;
/// }
/// # Ok(()) }
/// ```
pub fn wait_blocking<T>(
    refs: &[ObjectRef<T>],
    num_ready: usize,
    timeout: Option<Duration>,
) -> Result<Split<T>, WaitError> {
    check_wait(refs, num_ready)?;
    let ctx = runtime::get();
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    ctx.wait_many(&ids, num_ready, timeout.map(|t| Instant::now() + t));
    Ok(split_ready(ctx, refs, num_ready))
}

/// Ray's checks of a wait's arguments.
fn check_wait<T>(refs: &[ObjectRef<T>], num_ready: usize) -> Result<(), WaitError> {
    if num_ready > refs.len() {
        return Err(WaitError::TooMany {
            num_ready,
            refs: refs.len(),
        });
    }
    let mut seen: shoal_protocol::IdMap<ObjectId, ()> = Default::default();
    seen.reserve(refs.len());
    match refs.iter().find(|r| seen.insert(r.id(), ()).is_some()) {
        Some(r) => Err(WaitError::Duplicate(r.id())),
        None => Ok(()),
    }
}

/// At most `want` ready refs (as Ray's `num_returns`), and the rest.
fn split_ready<T>(
    ctx: &Context,
    refs: &[ObjectRef<T>],
    want: usize,
) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
    let mut ready = Vec::with_capacity(want);
    let mut pending = Vec::with_capacity(refs.len());
    // Every ref is cloned into one of the two lists: counted under one lock, not one each
    // (a loop of waits over 1,000 refs clones half a million).
    let done = ctx.hold_and_check(refs.iter().map(|r| r.id()));
    for (r, done) in refs.iter().zip(done) {
        let clone = ObjectRef::from_raw(RawRef::counted(r.raw.id, r.raw.owner));
        if ready.len() < want && done {
            ready.push(clone);
        } else {
            pending.push(clone);
        }
    }
    (ready, pending)
}

/// Every value of `refs`, in the order given, as Ray's `get` of a list: it fails as soon as
/// one of them fails (with that error), without waiting for the others, and with
/// [`GetError::Timeout`] if `timeout` passes first. Works under any async executor.
///
/// ```no_run
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// # async fn run() -> Result<(), shoal::GetError> {
/// let refs: Vec<_> = (0..4).map(|i| square.remote(i)).collect();
/// assert_eq!(shoal::get_all(&refs, None).await?, vec![0, 1, 4, 9]);
/// # Ok(()) }
/// ```
pub async fn get_all<T: DeserializeOwned>(
    refs: &[ObjectRef<T>],
    timeout: Option<Duration>,
) -> Result<Vec<T>, GetError> {
    let ctx = runtime::get();
    let all = std::future::poll_fn(|cx| {
        let mut pending = false;
        for r in refs {
            match ctx.poll_cell(r.id(), Some(cx.waker()), true) {
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Ready(Ok(_)) => {}
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    });
    match timeout {
        Some(t) => match object_ref::first(all, ctx.sleep(t)).await {
            object_ref::Either::Left(r) => r?,
            object_ref::Either::Right(()) => return Err(GetError::Timeout(t)),
        },
        None => all.await?,
    }
    let mut values = Vec::with_capacity(refs.len());
    for r in refs {
        values.push(r.get().await?);
    }
    Ok(values)
}

/// [`get_all`] for synchronous code.
///
/// ```no_run
/// # use std::time::Duration;
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), shoal::GetError> {
/// let refs: Vec<_> = (0..4).map(|i| square.remote(i)).collect();
/// let squares = shoal::get_all_blocking(&refs, Some(Duration::from_secs(30)))?;
/// assert_eq!(squares, vec![0, 1, 4, 9]);
/// # Ok(()) }
/// ```
pub fn get_all_blocking<T: DeserializeOwned>(
    refs: &[ObjectRef<T>],
    timeout: Option<Duration>,
) -> Result<Vec<T>, GetError> {
    let ctx = runtime::get();
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    ctx.wait_until(&ids, deadline, |done, failed| {
        failed > 0 || done == ids.len()
    });
    let done = ctx.are_done(ids.iter().copied());
    // The first failure among them, in the order given.
    for (id, done) in ids.iter().zip(&done) {
        if let (true, std::task::Poll::Ready(Err(e))) = (*done, ctx.poll_cell(*id, None, true)) {
            return Err(e);
        }
    }
    if done.iter().any(|d| !d) {
        return Err(GetError::Timeout(timeout.unwrap_or_default()));
    }
    refs.iter()
        .map(|r| match deadline {
            Some(d) => r.get_blocking_timeout(d.saturating_duration_since(Instant::now())),
            None => r.get_blocking(),
        })
        .collect()
}
