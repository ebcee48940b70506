//! Worker mode: the loop a worker process runs instead of `main`.
//!
//! A node starts a worker from the driver's executable with `SHOAL_WORKER_ID` set. The
//! constructor that every `#[shoal::remote]` emits runs before `main` (and before libtest's
//! `main` in test binaries), sees the variable, connects to the node, runs the tasks it is
//! given one after another, and exits the process when the node goes away: the program's own
//! `main` never runs in a worker. A worker asked to host an actor becomes that actor's
//! process for the rest of its life ([`host`]).

pub(crate) mod host;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_protocol::{
    ExecTask, ObjectId, ObjectValue, ReturnValue, TaskError, TaskId, TaskOutcome, ToNode,
};

use crate::actor::ACTOR_CLASSES;
use crate::function::{self, Args, RemoteFunction, REMOTE_FUNCTIONS};
use crate::runtime::{self, Context, WorkItem};

static ENTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static TASK_RT: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
    /// The task or actor call this thread runs, in a worker.
    static CURRENT: std::cell::Cell<Option<TaskId>> = const { std::cell::Cell::new(None) };
    /// What the function task this thread runs holds, when not the default demand.
    static RESOURCES: RefCell<Option<Box<shoal_protocol::ResourceSet>>> = const { RefCell::new(None) };
    /// The GPU devices the function task this thread runs was given.
    static GPU_IDS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The GPU devices the task or actor running here was given (Ray's `get_gpu_ids()`).
pub(crate) fn current_gpu_ids() -> Vec<u32> {
    if let Some(ids) = host::hosted_gpu_ids() {
        return ids;
    }
    GPU_IDS.with(|g| g.borrow().clone())
}

/// This process's `CUDA_VISIBLE_DEVICES` as its node started it, before a task set it.
static CUDA_ORIGINAL: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Whether a task set `CUDA_VISIBLE_DEVICES` and it was not put back yet.
static CUDA_SET: AtomicBool = AtomicBool::new(false);

/// Sets `CUDA_VISIBLE_DEVICES` to the devices a task or actor was given (as Ray does), or
/// puts back the process's own value once a task that set it is done (`ids` empty).
///
/// The environment is changed while the SDK's other threads run: they read no environment
/// variable through libc (Rust's own reads and writes of it take one lock), which is what
/// makes this sound in practice. CUDA reads the variable when it is first initialised in the
/// process: a program that uses devices from tasks should give them a worker each
/// (`max_calls = 1`) or use an actor, which has a process of its own.
pub(crate) fn set_visible_devices(ids: &[u32]) {
    let original = CUDA_ORIGINAL.get_or_init(|| std::env::var_os("CUDA_VISIBLE_DEVICES"));
    if ids.is_empty() {
        if CUDA_SET.swap(false, Ordering::Relaxed) {
            match original {
                Some(v) => std::env::set_var("CUDA_VISIBLE_DEVICES", v),
                None => std::env::remove_var("CUDA_VISIBLE_DEVICES"),
            }
        }
        return;
    }
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    std::env::set_var("CUDA_VISIBLE_DEVICES", list.join(","));
    CUDA_SET.store(true, Ordering::Relaxed);
}

/// What the task or actor running here holds (its demand), if this is a worker running one.
pub(crate) fn current_resources() -> Option<shoal_protocol::ResourceSet> {
    if let Some(r) = host::hosted_resources() {
        return Some(r);
    }
    current_task()?;
    let told = RESOURCES.with(|r| r.borrow().as_deref().cloned());
    Some(told.unwrap_or_else(|| shoal_protocol::ResourceSet::cpus(1.0)))
}

/// The panic payload that ends an `async` task dropped at a cancel (caught by the worker,
/// which reports [`TaskError::Cancelled`]).
struct Interrupted;

/// The task or actor call this thread runs, in a worker.
pub(crate) fn current_task() -> Option<TaskId> {
    CURRENT.with(|c| c.get())
}

/// Runs `f` as `task` (what [`crate::is_cancelled`] asks about).
pub(crate) fn as_task<R>(task: TaskId, f: impl FnOnce() -> R) -> R {
    let outer = CURRENT.with(|c| c.replace(Some(task)));
    struct Restore(Option<TaskId>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

/// Runs `f` on this thread's task runtime (made on first use): how a worker runs an `async`
/// remote function. A cancel of the task it belongs to drops `f` at its next `.await`.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let task = current_task();
    let out = TASK_RT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rt = slot.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot build the task runtime")
        });
        match (task, runtime::try_get()) {
            (Some(task), Some(ctx)) => rt.block_on(until_cancelled(ctx, task, f)),
            _ => Some(rt.block_on(f)),
        }
    });
    match out {
        Some(v) => v,
        None => std::panic::resume_unwind(Box::new(Interrupted)),
    }
}

/// `f`'s output, or `None` once `task` is cancelled (then `f` is dropped). `f` is polled
/// first: a call that finishes without waiting keeps its result.
pub(crate) async fn until_cancelled<F: Future>(
    ctx: &Context,
    task: TaskId,
    f: F,
) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    // Watched for a cancel only once it waits: most calls end in their first poll, and then
    // cost no allocation and no registration.
    let mut cancelled: Option<std::pin::Pin<Box<dyn Future<Output = ()> + '_>>> = None;
    std::future::poll_fn(move |cx| {
        if let std::task::Poll::Ready(v) = as_task(task, || f.as_mut().poll(cx)) {
            return std::task::Poll::Ready(Some(v));
        }
        cancelled
            .get_or_insert_with(|| Box::pin(ctx.work.interrupted(task)))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    })
    .await
}

/// Enters worker mode if this process was started as a worker. Runs before `main`, from
/// the constructor of every remote function and actor (so it must be idempotent and cheap).
pub extern "C" fn worker_ctor() {
    if ENTERED.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(id) = std::env::var(shoal_protocol::env::WORKER_ID).ok() else {
        return;
    };
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
    if tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
        .is_err()
    {
        // A subscriber is set already (a constructor of the program's own): it is used.
    }
    let socket = std::env::var_os(shoal_protocol::env::SOCKET)
        .map(PathBuf::from)
        .unwrap_or_else(shoal_node::config::default_socket_path);
    let ctx = match runtime::init_worker(worker_id, socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal worker {worker_id}: {e}");
            return 1;
        }
    };
    install_panic_hook();
    let registry: HashMap<&'static str, &'static RemoteFunction> =
        REMOTE_FUNCTIONS.iter().map(|f| (f.name, f)).collect();
    let span = tracing::info_span!("worker", worker = worker_id, pid = std::process::id());
    let _enter = span.enter();
    tracing::debug!(functions = registry.len(), "worker ready");
    // Runs of each function with a `max_calls`.
    let mut calls: HashMap<&'static str, u32> = HashMap::new();
    loop {
        match ctx.work.next_blocking() {
            // Queued before it retired: the node gives it to another worker.
            Some(WorkItem::Task(task)) if ctx.work.is_retired() => ctx.push(ToNode::Returned {
                tasks: vec![task.task_id],
            }),
            Some(WorkItem::Task(task)) => {
                let function = registry.get(&*task.function).copied();
                let limited = function
                    .filter(|f| f.max_calls > 0)
                    .map(|f| (f.name, f.max_calls));
                execute(ctx, function, task);
                if let Some((name, max)) = limited {
                    let n = calls.entry(name).or_insert(0);
                    *n += 1;
                    if *n >= max {
                        tracing::debug!(
                            function = name,
                            max_calls = max,
                            "ran its max_calls: retiring"
                        );
                        ctx.retire();
                    }
                }
            }
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

thread_local! {
    /// Where the last panic on this thread happened, and its backtrace if one was asked for
    /// (set by the worker's panic hook, taken where the panic is caught).
    static LAST_PANIC: RefCell<Option<(Option<String>, Option<String>)>> = const { RefCell::new(None) };
}

/// The longest backtrace a failure carries (the worker's stderr has it whole).
const MAX_BACKTRACE: usize = 32 * 1024;

/// Records where each panic happens (and its backtrace when `RUST_BACKTRACE` asks), for the
/// task's error, then prints it as before.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| l.to_string());
        let bt = std::backtrace::Backtrace::capture();
        let backtrace = (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| {
            let mut text = bt.to_string();
            if text.len() > MAX_BACKTRACE {
                let mut cut = MAX_BACKTRACE;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("\n[cut]");
            }
            text
        });
        if LAST_PANIC
            .try_with(|l| *l.borrow_mut() = Some((location, backtrace)))
            .is_err()
        {
            // A panic while the thread ends: nothing reads it.
        }
        previous(info);
    }));
}

/// A panic caught in a worker: its message, where it happened, and its backtrace if one was
/// asked for. Made on the thread that panicked.
#[derive(Debug)]
pub(crate) struct Caught {
    message: String,
    location: Option<String>,
    backtrace: Option<String>,
}

impl Caught {
    /// The panic whose payload is `p`, caught on this thread.
    pub(crate) fn new(p: &(dyn std::any::Any + Send)) -> Self {
        let (location, backtrace) = LAST_PANIC
            .try_with(|l| l.borrow_mut().take())
            .ok()
            .flatten()
            .unwrap_or_default();
        Self {
            message: panic_message(p),
            location,
            backtrace,
        }
    }

    /// A failure that is not a panic of the code (its thread could not be joined, say).
    pub(crate) fn other(message: String) -> Self {
        Self {
            message,
            location: None,
            backtrace: None,
        }
    }

    /// The error of the task or call `function` (`Class::method` for an actor's).
    pub(crate) fn into_error(self, function: impl Into<String>) -> TaskError {
        let peer = runtime::try_get().and_then(|c| c.peer_id().map(str::to_string));
        TaskError::Panicked {
            message: self.message,
            origin: Some(Box::new(shoal_protocol::PanicOrigin {
                function: function.into(),
                location: self.location,
                pid: std::process::id(),
                peer,
                backtrace: self.backtrace,
            })),
        }
    }

    /// As a sentence: `panicked at src/lib.rs:3:5: the message`, and the backtrace.
    pub(crate) fn describe(&self) -> String {
        let mut s = match &self.location {
            Some(at) => format!("panicked at {at}: {}", self.message),
            None => format!("panicked: {}", self.message),
        };
        if let Some(bt) = &self.backtrace {
            s.push_str("\nstack backtrace:\n");
            s.push_str(bt);
        }
        s
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

/// Runs `task` with `function`, the registry's entry for its name (`None`: no such function).
fn execute(ctx: &Context, function: Option<&'static RemoteFunction>, task: ExecTask) {
    let span = tracing::info_span!("task", task = %task.task_id, function = %task.function);
    let _enter = span.enter();
    let task_id = task.task_id;
    ctx.work.set_current(Some(task_id));
    let mut more = MoreReturns::default();
    let mut returned_error = false;
    let outcome = match function {
        // Cancelled before it began: it never does.
        _ if ctx.work.is_interrupted(task_id) => {
            TaskOutcome::Err(TaskError::Cancelled { task: task_id })
        }
        None => TaskOutcome::Err(TaskError::NoSuchFunction {
            name: task.function.to_string(),
        }),
        Some(f) => {
            ctx.work.set_in_task(true);
            if let Some(allowed) = task.stream {
                ctx.work.stream_ack(task_id, allowed.get());
            }
            let args = Args::new(task.args);
            let (resources, gpu_ids) = match task.holds {
                Some(h) => (Some(Box::new(h.resources)), h.gpu_ids),
                None => (None, Vec::new()),
            };
            RESOURCES.with(|r| *r.borrow_mut() = resources);
            if !gpu_ids.is_empty() {
                set_visible_devices(&gpu_ids);
            }
            GPU_IDS.with(|g| *g.borrow_mut() = gpu_ids);
            function::take_returned_error();
            let r = as_task(task_id, || {
                std::panic::catch_unwind(AssertUnwindSafe(|| (f.invoke)(args)))
            });
            returned_error = function::take_returned_error();
            RESOURCES.with(|r| *r.borrow_mut() = None);
            if !GPU_IDS
                .with(|g| std::mem::take(&mut *g.borrow_mut()))
                .is_empty()
            {
                set_visible_devices(&[]);
            }
            ctx.work.set_in_task(false);
            // Its other returns, if it has several (encoded before its first).
            let encoded_more = function::take_more_returns();
            match r {
                // Its result is not awaited any more: not stored.
                Ok(Ok(_)) if ctx.work.is_interrupted(task_id) => {
                    TaskOutcome::Err(TaskError::Cancelled { task: task_id })
                }
                Ok(Ok(bytes)) => {
                    let (outcome, stored) =
                        store_results(ctx, task_id, task.return_id, bytes, encoded_more);
                    more = stored;
                    outcome
                }
                Ok(Err(e)) => TaskOutcome::Err(e),
                Err(p) if p.is::<Interrupted>() => {
                    TaskOutcome::Err(TaskError::Cancelled { task: task_id })
                }
                Err(p) => TaskOutcome::Err(Caught::new(&*p).into_error(&*task.function)),
            }
        }
    };
    ctx.work.take_interrupted(task_id);
    if task.stream.is_some() {
        ctx.work.end_pace(task_id);
    }
    // An `Err` worth a retry is told as such only when it is inline: a retry then leaves no
    // stored copy behind (an error larger than the inline threshold stands, as a value).
    let returned_error =
        returned_error && matches!(outcome, TaskOutcome::Ok(ObjectValue::Inline(_)));
    done_with(ctx, task_id, outcome, more, returned_error);
    ctx.work.set_current(None);
}

/// Reports a finished task with the refs inside its result (held until the report is
/// queued).
fn done(ctx: &Context, task_id: TaskId, outcome: TaskOutcome) {
    done_with(ctx, task_id, outcome, MoreReturns::default(), false);
}

/// The other returns of a task with several, stored, with the refs inside them (held until
/// the task's report is queued).
#[derive(Default)]
pub(super) struct MoreReturns(Vec<ReturnValue>, Vec<crate::object_ref::RawRef>);

/// [`done`] for a task with several returns.
pub(super) fn done_with(
    ctx: &Context,
    task_id: TaskId,
    outcome: TaskOutcome,
    more: MoreReturns,
    returned_error: bool,
) {
    let refs = function::take_result_refs();
    let (nested, more) = match outcome {
        TaskOutcome::Ok(_) => (crate::object_ref::ids_of(&refs), more.0),
        TaskOutcome::Err(_) => (Vec::new(), Vec::new()),
    };
    ctx.push(ToNode::Done {
        task_id,
        outcome,
        nested,
        more,
        returned_error,
    });
    drop(refs);
}

/// Stores the results of `task` that succeeded: its other returns (1 and on, if it has
/// several), then its first; if one cannot be stored, none is, and the task fails.
pub(super) fn store_results(
    ctx: &Context,
    task: TaskId,
    return_id: ObjectId,
    first: Vec<u8>,
    more: Vec<(Vec<u8>, Vec<crate::object_ref::RawRef>)>,
) -> (TaskOutcome, MoreReturns) {
    match store_more(ctx, task, more) {
        Ok(stored) => {
            let outcome = store_result(ctx, return_id, first);
            if let TaskOutcome::Err(_) = &outcome {
                abort_more(ctx, task, &stored.0);
                (outcome, MoreReturns::default())
            } else {
                (outcome, stored)
            }
        }
        Err(e) => (TaskOutcome::Err(e), MoreReturns::default()),
    }
}

/// Stores the other returns of `task` (returns 1 and on), each as its own object; on a
/// failure, what was reserved for them goes.
fn store_more(
    ctx: &Context,
    task: TaskId,
    more: Vec<(Vec<u8>, Vec<crate::object_ref::RawRef>)>,
) -> Result<MoreReturns, TaskError> {
    let mut stored = MoreReturns::default();
    for (i, (bytes, refs)) in more.into_iter().enumerate() {
        let id = ObjectId::for_return(task, i as u32 + 1);
        match store_result(ctx, id, bytes) {
            TaskOutcome::Ok(value) => {
                let nested = crate::object_ref::ids_of(&refs);
                stored.0.push(ReturnValue { value, nested });
                stored.1.extend(refs);
            }
            TaskOutcome::Err(e) => {
                abort_more(ctx, task, &stored.0);
                return Err(e);
            }
        }
    }
    Ok(stored)
}

/// Gives up the store reservations of `task`'s other returns that will not be reported.
fn abort_more(ctx: &Context, task: TaskId, stored: &[ReturnValue]) {
    for (i, r) in stored.iter().enumerate() {
        if let ObjectValue::Shared(_) = r.value {
            let id = ObjectId::for_return(task, i as u32 + 1);
            ctx.push(ToNode::Abort { id });
        }
    }
}

pub(crate) fn store_result(
    ctx: &Context,
    id: shoal_protocol::ObjectId,
    bytes: Vec<u8>,
) -> TaskOutcome {
    if bytes.len() <= ctx.inline_threshold {
        return TaskOutcome::Ok(ObjectValue::Inline(bytes));
    }
    // Not hashed here: the node takes the digest when the result first leaves it.
    match crate::shm::write(ctx, id, bytes.len(), crate::shm::Hash::Later, |buf| {
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
    let Some(mut rx) = ctx.work.take_queue() else {
        return 0;
    };
    while let Some(item) = rx.blocking_recv() {
        if let WorkItem::Task(task) = item {
            done(
                ctx,
                task.task_id,
                TaskOutcome::Err(TaskError::NoSuchFunction {
                    name: task.function.into(),
                }),
            );
        }
    }
    0
}
