//! Worker mode: the loop a worker process runs instead of `main`.
//!
//! A node starts a worker from the driver's executable with `SHOAL_WORKER_ID` set. The
//! constructor that every `#[shoal::remote]` emits runs before `main` (and before libtest's
//! `main` in test binaries), sees the variable, connects to the node, runs the tasks it is
//! given one after another, and exits the process when the node goes away: the program's own
//! `main` never runs in a worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_protocol::{ExecTask, HostActor, ObjectValue, TaskError, TaskOutcome, ToNode};

use crate::__private::{Access, Args, Guard, RemoteFunction, ACTOR_CLASSES, REMOTE_FUNCTIONS};
use crate::actor::Actor;
use crate::context::{self, Context, WorkItem};

static ENTERED: AtomicBool = AtomicBool::new(false);
static IS_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this process runs in worker mode.
pub(crate) fn in_worker() -> bool {
    IS_WORKER.load(Ordering::Relaxed)
}

thread_local! {
    static TASK_RT: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's task runtime (made on first use).
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    TASK_RT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rt = slot.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot build the task runtime")
        });
        rt.block_on(f)
    })
}

pub(crate) fn enter_if_worker() {
    if ENTERED.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(id) = std::env::var(shoal_protocol::env::WORKER_ID).ok() else {
        return;
    };
    IS_WORKER.store(true, Ordering::SeqCst);
    let code = match id.parse::<u64>() {
        Ok(id) => run(id),
        Err(_) => {
            eprintln!(
                "shoal worker: bad {} {id:?}",
                shoal_protocol::env::WORKER_ID
            );
            2
        }
    };
    std::process::exit(code);
}

fn run(worker_id: u64) -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let socket = std::env::var_os(shoal_protocol::env::SOCKET)
        .map(PathBuf::from)
        .unwrap_or_else(shoal_node::config::default_socket_path);
    let ctx = match context::init_worker(worker_id, socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal worker {worker_id}: {e}");
            return 1;
        }
    };
    let registry: HashMap<&'static str, &'static RemoteFunction> =
        REMOTE_FUNCTIONS.iter().map(|f| (f.name, f)).collect();
    let span = tracing::info_span!("worker", worker = worker_id, pid = std::process::id());
    let _enter = span.enter();
    tracing::debug!(functions = registry.len(), "worker ready");
    loop {
        // The lock is held only while idle; a running task's waits drain the queue.
        let next = match ctx
            .exec_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(rx) => rx.blocking_recv(),
            None => None,
        };
        match next {
            Some(WorkItem::Task(task)) => execute(ctx, &registry, task),
            Some(WorkItem::HostActor(host)) => {
                // From now on this process is the actor's: it never runs other tasks.
                return match ACTOR_CLASSES.iter().find(|c| c.name == host.class) {
                    Some(class) => (class.host)(host),
                    None => {
                        let actor = host.actor_id;
                        ctx.push(ToNode::ActorStarted {
                            actor,
                            result: Err(TaskError::ActorCreationFailed {
                                actor,
                                message: format!(
                                    "no actor class named `{}` in the worker's binary",
                                    host.class
                                ),
                            }),
                        });
                        idle_until_closed(ctx)
                    }
                };
            }
            None => return 0,
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

fn execute(
    ctx: &Context,
    registry: &HashMap<&'static str, &'static RemoteFunction>,
    task: ExecTask,
) {
    let span = tracing::info_span!("task", task = %task.task_id, function = %task.function);
    let _enter = span.enter();
    let outcome = match registry.get(task.function.as_str()) {
        None => TaskOutcome::Err(TaskError::NoSuchFunction {
            name: task.function.clone(),
        }),
        Some(f) => {
            ctx.in_task.store(true, Ordering::Relaxed);
            let args = Args::new(task.args);
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| (f.invoke)(args)));
            ctx.in_task.store(false, Ordering::Relaxed);
            match r {
                Ok(Ok(bytes)) => store_result(ctx, task.return_id, bytes),
                Ok(Err(e)) => TaskOutcome::Err(e),
                Err(p) => TaskOutcome::Err(TaskError::Panicked {
                    message: panic_message(&*p),
                }),
            }
        }
    };
    done(ctx, task.task_id, outcome);
}

/// Reports a finished task with the refs inside its result (held until the report is
/// queued).
fn done(ctx: &Context, task_id: shoal_protocol::TaskId, outcome: TaskOutcome) {
    let refs = crate::__private::take_result_refs();
    let nested = match outcome {
        TaskOutcome::Ok(_) => crate::object_ref::ids_of(&refs),
        TaskOutcome::Err(_) => Vec::new(),
    };
    ctx.push(ToNode::Done {
        task_id,
        outcome,
        nested,
    });
    drop(refs);
}

fn store_result(ctx: &Context, id: shoal_protocol::ObjectId, bytes: Vec<u8>) -> TaskOutcome {
    if bytes.len() <= ctx.inline_threshold {
        return TaskOutcome::Ok(ObjectValue::Inline(bytes));
    }
    match crate::shm::write(ctx, id, bytes.len(), |buf| {
        buf.copy_from_slice(&bytes);
        Ok(())
    }) {
        Ok(obj) => TaskOutcome::Ok(ObjectValue::Shared(obj)),
        Err(e) => TaskOutcome::Err(TaskError::ResultStore {
            message: e.to_string(),
        }),
    }
}

/// After a failed constructor: wait for the node to stop this process, answering any call
/// that arrives meanwhile with the failure.
fn idle_until_closed(ctx: &Context) -> i32 {
    let Some(mut rx) = ctx.exec_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return 0;
    };
    while let Some(item) = rx.blocking_recv() {
        if let WorkItem::Task(task) = item {
            done(
                ctx,
                task.task_id,
                TaskOutcome::Err(TaskError::NoSuchFunction {
                    name: task.function,
                }),
            );
        }
    }
    0
}

/// Polls a future, turning a panic inside it into an error with the panic's message.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => std::task::Poll::Ready(Err(panic_message(&*p))),
        }
    }
}

/// Hosts an actor of class `A` for the rest of this process's life: runs the constructor,
/// then the calls the node sends, in the order it sends them. Calls run on this thread, on
/// a single-threaded runtime: a `&mut self` call runs alone; `&self` calls may overlap (up to
/// the actor's max concurrency) when they are `async` and wait. A panic fails its call only;
/// the state stays as the call left it.
pub(crate) fn host_actor<A: Actor>(host: HostActor) -> i32 {
    let ctx = context::get();
    let actor = host.actor_id;
    let span = tracing::info_span!(
        "actor",
        actor = %actor,
        class = A::CLASS,
        incarnation = host.incarnation
    );
    let _enter = span.enter();
    let Some(mut rx) = ctx.exec_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return 0;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
        Err(p) => Err(format!("the constructor panicked: {}", panic_message(&*p))),
    };
    let state = match built {
        Ok(state) => state,
        Err(message) => {
            tracing::warn!(%message, "actor constructor failed");
            ctx.push(ToNode::ActorStarted {
                actor,
                result: Err(TaskError::ActorCreationFailed { actor, message }),
            });
            *ctx.exec_rx.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
            return idle_until_closed(ctx);
        }
    };
    ctx.push(ToNode::ActorStarted {
        actor,
        result: Ok(()),
    });
    tracing::debug!("actor constructed");
    let state = std::sync::Arc::new(tokio::sync::RwLock::new(state));
    let limit = host.max_concurrency.max(1) as usize;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
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
            } = call;
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
            // Permits and locks are taken here, in arrival order, so calls start in the
            // order they were sent.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let guard = match access {
                Access::Shared => Guard::Shared(state.clone().read_owned().await),
                Access::Exclusive => Guard::Exclusive(state.clone().write_owned().await),
            };
            let fut = A::__call(guard, &function, Args::new(args));
            let run = async move {
                let out = CatchUnwind(Box::pin(fut)).await;
                drop(permit);
                let outcome = match out {
                    Ok(Ok(bytes)) => store_result(ctx, return_id, bytes),
                    Ok(Err(e)) => TaskOutcome::Err(e),
                    Err(message) => TaskOutcome::Err(TaskError::Panicked { message }),
                };
                done(ctx, task_id, outcome);
            };
            if limit == 1 {
                run.await;
            } else {
                tokio::task::spawn_local(run);
            }
        }
    });
    0
}
