//! An actor's process: a worker that was asked to host an actor runs its constructor, then
//! the calls the node sends, for the rest of its life.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use shoal_protocol::{ExecTask, HostActor, ObjectId, TaskError, TaskId, TaskOutcome, ToNode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    as_task, done, done_with, idle_until_closed, store_results, until_cancelled, Caught,
    MoreReturns,
};
use crate::actor::{Access, Actor, Guard};
use crate::function::Args;
use crate::runtime::{self, WorkItem};

/// Polls a future, turning a panic inside it into an error with the panic's message.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Caught>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(Caught::new(&*p))),
        }
    }
}

/// The actor this process hosts, once it is one.
static HOSTED: std::sync::OnceLock<shoal_protocol::ActorId> = std::sync::OnceLock::new();
/// What the hosted actor holds.
static HOSTED_RESOURCES: std::sync::OnceLock<shoal_protocol::ResourceSet> =
    std::sync::OnceLock::new();

/// What the actor this process hosts holds, if it hosts one.
pub(crate) fn hosted_resources() -> Option<shoal_protocol::ResourceSet> {
    HOSTED_RESOURCES.get().cloned()
}

/// The GPU devices the actor hosted here was given.
static HOSTED_GPU_IDS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// The GPU devices the actor hosted here was given, in an actor's worker.
pub(crate) fn hosted_gpu_ids() -> Option<Vec<u32>> {
    HOSTED_GPU_IDS.get().cloned()
}

/// The actor this process hosts, if it is an actor's.
pub(crate) fn hosted() -> Option<shoal_protocol::ActorId> {
    HOSTED.get().copied()
}

/// A call the node sent, as the host runs it.
struct Call {
    task_id: TaskId,
    function: Box<str>,
    args: Vec<shoal_protocol::ArgValue>,
    return_id: ObjectId,
    /// A blocking method of a `threaded` actor: it runs on the blocking pool.
    blocking: bool,
    /// A streaming method: its pace is forgotten when it ends.
    stream: bool,
}

/// The state, locked for a method of this access.
async fn lock<A>(state: Arc<tokio::sync::RwLock<A>>, access: Access) -> Guard<A> {
    match access {
        Access::Shared => Guard::Shared(state.read_owned().await),
        Access::Exclusive => Guard::Exclusive(state.write_owned().await),
    }
}

/// Runs a call holding its lock and its permit, and reports its end. A call cancelled before
/// it began never does; a cancel drops an `async` call at its next `.await`; a blocking one
/// runs to its end (it may ask `shoal::is_cancelled`), and its result stands.
async fn run_call<A: Actor>(call: Call, guard: Guard<A>, permit: OwnedSemaphorePermit) {
    let ctx = runtime::get();
    let Call {
        task_id,
        function,
        args,
        return_id,
        blocking,
        stream,
    } = call;
    if ctx.work.take_interrupted(task_id) {
        drop((guard, permit));
        if stream {
            ctx.work.end_pace(task_id);
        }
        done(
            ctx,
            task_id,
            TaskOutcome::Err(TaskError::Cancelled { task: task_id }),
        );
        return;
    }
    let end: (CallEnd, EncodedMore) = if blocking {
        let Some(f) = A::__blocking(guard, &function, Args::new(args)) else {
            unreachable!("a blocking method has a blocking call")
        };
        // On a thread of the pool, while the next calls start. The refs inside its result
        // were collected on that thread: they come back with it, for its `Done`.
        let run = tokio::task::spawn_blocking(move || {
            let end = as_task(task_id, || {
                std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| Caught::new(&*p))
            });
            let more = crate::function::take_more_returns();
            (end, more, crate::function::take_result_refs())
        });
        match run.await {
            Ok((end, more, refs)) => {
                crate::function::keep_result_refs(refs);
                (Some(end), more)
            }
            Err(e) => (
                Some(Err(Caught::other(format!("the call's thread failed: {e}")))),
                Vec::new(),
            ),
        }
    } else {
        let fut = A::__call(guard, &function, Args::new(args));
        let end = until_cancelled(ctx, task_id, CatchUnwind(Box::pin(fut))).await;
        // Its other returns were encoded on this thread at its end, in this same poll (no
        // other call ran since).
        (end, crate::function::take_more_returns())
    };
    drop(permit);
    if stream {
        ctx.work.end_pace(task_id);
    }
    finish_call::<A>(task_id, &function, return_id, end);
}

/// What a call ended with: its value, its error, its panic, or nothing (it was cancelled and
/// dropped).
type CallEnd = Option<Result<Result<Vec<u8>, TaskError>, Caught>>;

/// The other returns of a call of a method with several (`#[num_returns = n]`), encoded.
type EncodedMore = Vec<(Vec<u8>, Vec<crate::object_ref::RawRef>)>;

/// Reports the end of a call of `method` (storing its large results), forgetting its cancel
/// if it had one.
fn finish_call<A: Actor>(
    task_id: TaskId,
    method: &str,
    return_id: ObjectId,
    (end, more): (CallEnd, EncodedMore),
) {
    let ctx = runtime::get();
    ctx.work.take_interrupted(task_id);
    let (outcome, more) = match end {
        Some(Ok(Ok(bytes))) => store_results(ctx, task_id, return_id, bytes, more),
        Some(Ok(Err(e))) => (TaskOutcome::Err(e), MoreReturns::default()),
        Some(Err(caught)) => (
            TaskOutcome::Err(caught.into_error(format!("{}::{method}", A::CLASS))),
            MoreReturns::default(),
        ),
        None => (
            TaskOutcome::Err(TaskError::Cancelled { task: task_id }),
            MoreReturns::default(),
        ),
    };
    done_with(ctx, task_id, outcome, more, false);
}

/// Hosts an actor of class `A` for the rest of this process's life: runs the constructor,
/// then the calls the node sends, starting them in the order it sends them. Calls run on
/// this thread, on a single-threaded runtime: a `&mut self` call runs alone; `&self` calls
/// may overlap (up to the actor's max concurrency) when they are `async` and wait. The
/// blocking methods of a `threaded` actor run on the runtime's blocking pool instead (as many
/// at once as the max concurrency), so that they overlap too. A panic fails its call only;
/// the state stays as the call left it.
pub fn host_actor<A: Actor>(host: HostActor) -> i32 {
    let ctx = runtime::get();
    let actor = host.actor_id;
    if !host.holds.gpu_ids.is_empty() {
        // Before the constructor, which may initialise CUDA.
        super::set_visible_devices(&host.holds.gpu_ids);
    }
    if HOSTED.set(actor).is_err()
        | HOSTED_RESOURCES.set(host.holds.resources.clone()).is_err()
        | HOSTED_GPU_IDS.set(host.holds.gpu_ids.clone()).is_err()
    {
        tracing::warn!(actor = %actor, "a second actor for a worker that hosts one");
    }
    let span = tracing::info_span!(
        "actor",
        actor = %actor,
        class = A::CLASS,
        incarnation = host.incarnation
    );
    let _enter = span.enter();
    let Some(mut rx) = ctx.work.take_queue() else {
        return 0;
    };
    // A threaded actor's blocking calls run on the runtime's blocking pool, as many at once
    // as its max concurrency and its concurrency groups allow.
    let limit = host.max_concurrency.max(1) as usize;
    let groups: HashMap<String, Arc<Semaphore>> = host
        .concurrency_groups
        .iter()
        .map(|(name, max)| (name.clone(), Arc::new(Semaphore::new(*max as usize))))
        .collect();
    let pool = limit
        + host
            .concurrency_groups
            .iter()
            .map(|(_, max)| *max as usize)
            .sum::<usize>();
    let threaded = A::THREADED && pool > 1;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(pool)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal actor {actor}: cannot build its runtime: {e}");
            return 1;
        }
    };
    let args = Args::new(host.args);
    let built = std::panic::catch_unwind(AssertUnwindSafe(|| A::__construct(args)));
    let built = match built {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(format!("the constructor {}", Caught::new(&*p).describe())),
    };
    let state = match built {
        Ok(state) => state,
        Err(message) => {
            tracing::warn!(%message, "actor constructor failed");
            ctx.push(ToNode::ActorStarted {
                actor,
                result: Err(TaskError::ActorCreationFailed { actor, message }),
            });
            ctx.work.put_back(rx);
            return idle_until_closed(ctx);
        }
    };
    ctx.push(ToNode::ActorStarted {
        actor,
        result: Ok(()),
    });
    tracing::debug!("actor constructed");
    let state = Arc::new(tokio::sync::RwLock::new(state));
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        while let Some(item) = rx.recv().await {
            let WorkItem::Task(call) = item else {
                tracing::warn!("a second actor for a worker that hosts one; ignored");
                continue;
            };
            let ExecTask {
                task_id,
                function,
                args,
                return_id,
                holds: _,
                stream,
            } = call;
            if let Some(allowed) = stream {
                // A streaming method: how far it may run at first.
                ctx.work.stream_ack(task_id, allowed.get());
            }
            let Some(access) = A::__access(&function) else {
                done(
                    ctx,
                    task_id,
                    TaskOutcome::Err(TaskError::NoSuchFunction {
                        name: format!("{}::{function}", A::CLASS),
                    }),
                );
                continue;
            };
            let blocking = threaded && A::__is_blocking(&function);
            let call = Call {
                task_id,
                function,
                args,
                return_id,
                blocking,
                stream: stream.is_some(),
            };
            if let Some(group) = A::__group(&call.function) {
                let Some(permits) = groups.get(group).cloned() else {
                    let reason = format!(
                        "{}::{} is of concurrency group `{group}`, which the actor's options \
                         do not give (ActorOptions::concurrency_group)",
                        A::CLASS,
                        call.function
                    );
                    done(
                        ctx,
                        task_id,
                        TaskOutcome::Err(TaskError::InvalidOptions { reason }),
                    );
                    continue;
                };
                // Beside the other calls: its group's permits and the lock are taken in the
                // group's order of arrival (both queues are fair).
                let state = state.clone();
                tokio::task::spawn_local(async move {
                    let Ok(permit) = permits.acquire_owned().await else {
                        return;
                    };
                    let guard = lock(state, access).await;
                    run_call(call, guard, permit).await;
                });
                continue;
            }
            // Permits and locks are taken here, in arrival order, so calls start in the
            // order they were sent.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let guard = lock(state.clone(), access).await;
            if limit == 1 && !blocking {
                run_call(call, guard, permit).await;
            } else {
                // Runs alongside the next calls and reports its own outcome.
                tokio::task::spawn_local(run_call(call, guard, permit));
            }
        }
    });
    0
}
