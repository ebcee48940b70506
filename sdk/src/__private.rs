//! What the macros' expansions call. Not a public API: names and signatures may change.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::{
    codec, ActorCreate, ActorId, ArgValue, EncodeError, ObjectId, TaskError, TaskId, TaskKind,
    TaskSpec, ToNode,
};

pub use linkme;

pub use crate::actor::RawActor;
use crate::actor::{Actor, ActorError, ActorHandle, ActorOptions};
use crate::context;
use crate::object_ref::{ObjectRef, RawRef};
use crate::{GetError, TaskOptions};

/// One argument of a call, before it is sent.
#[derive(Debug)]
pub enum ArgBuf {
    /// An encoded value and the refs inside it (or why it could not be encoded).
    Value(Result<(Vec<u8>, Vec<RawRef>), EncodeError>),
    /// A reference whose value the task receives.
    Ref(RawRef),
}

/// A function callable by name in a worker.
#[derive(Debug)]
pub struct RemoteFunction {
    /// `module_path!()::name`.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the result.
    pub invoke: fn(Args) -> Result<Vec<u8>, TaskError>,
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
                let ctx = context::get();
                let map = crate::shm::map(ctx.store_dir(), &id, obj.size)
                    .map_err(|e| bad(e.to_string()))?;
                codec::decode(&map, usize::MAX).map_err(|e| bad(e.to_string()))
            }
        }
    }
}

thread_local! {
    /// Refs inside the result just encoded on this thread, held until its `Done` is queued.
    static RESULT_REFS: std::cell::RefCell<Vec<RawRef>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes a function's result.
pub fn encode_result<T: Serialize>(value: &T) -> Result<Vec<u8>, TaskError> {
    let (bytes, refs) =
        crate::object_ref::encode_collecting(value).map_err(|e| TaskError::ResultStore {
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

/// Runs an async function's future to completion on the worker's task runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    crate::worker::block_on(f)
}

/// Enters worker mode if this process was started as a worker. Runs before `main`.
pub extern "C" fn worker_ctor() {
    crate::worker::enter_if_worker();
}

/// Submits a call of `name` and returns the reference to its result.
pub fn submit<R>(name: &'static str, options: &TaskOptions, args: Vec<ArgBuf>) -> ObjectRef<R> {
    let ctx = context::get();
    let task_id = TaskId::new(ctx.client, ctx.next_task_seq());
    submit_spec(
        ctx,
        task_id,
        name,
        options.clone(),
        TaskKind::Function,
        args,
    )
}

/// Calls `method` of an actor and returns the reference to its result. Calls are never
/// retried (as Ray's default `max_task_retries`).
pub fn call_actor<R>(actor: &RawActor, method: &'static str, args: Vec<ArgBuf>) -> ObjectRef<R> {
    let ctx = context::get();
    let task_id = TaskId::new(ctx.client, ctx.next_task_seq());
    submit_spec(
        ctx,
        task_id,
        method,
        TaskOptions::new().num_cpus(0.0).max_retries(0),
        TaskKind::ActorMethod { actor: actor.id() },
        args,
    )
}

/// Creates an actor with the default options; see [`create_actor_with`]. Unnamed creation
/// cannot be refused up front: a failure shows in the actor's calls.
pub fn create_actor<A: Actor>(options: &ActorOptions, args: Vec<ArgBuf>) -> ActorHandle<A> {
    let ctx = context::get();
    let (handle, _ret) = submit_create::<A>(ctx, options, args);
    handle
}

/// Creates an actor. With a name, waits for the node's answer (the name may be taken, or a
/// get-or-create may find an existing actor).
pub fn create_actor_with<A: Actor>(
    options: &ActorOptions,
    args: Vec<ArgBuf>,
) -> Result<ActorHandle<A>, ActorError> {
    let ctx = context::get();
    let (handle, ret) = submit_create::<A>(ctx, options, args);
    let Some(name) = &options.name else {
        return Ok(handle);
    };
    match ret.get_blocking() {
        Ok(id) if id == ActorHandle::id(&handle) => Ok(handle),
        // Get-or-create found another: a handle to it, not owned by us.
        Ok(id) => Ok(ActorHandle::from_raw(RawActor::new(id, false, true))),
        Err(GetError::Task(TaskError::ActorNameTaken { .. })) => {
            Err(ActorError::NameTaken(name.clone()))
        }
        Err(e) => Err(ActorError::Create(e)),
    }
}

fn submit_create<A: Actor>(
    ctx: &context::Context,
    options: &ActorOptions,
    args: Vec<ArgBuf>,
) -> (ActorHandle<A>, ObjectRef<ActorId>) {
    let task_id = TaskId::new(ctx.client, ctx.next_task_seq());
    let actor_id = ActorId(task_id.0);
    let create = ActorCreate {
        actor_id,
        name: options.name.clone(),
        get_if_exists: options.get_if_exists,
        max_restarts: options.max_restarts,
        max_concurrency: options
            .max_concurrency
            .unwrap_or(A::DEFAULT_MAX_CONCURRENCY)
            .max(1),
        detached: options.detached,
    };
    let ret = submit_spec(
        ctx,
        task_id,
        A::CLASS,
        TaskOptions {
            resources: options.resources.clone(),
            max_retries: 0,
            wait_for_resources: false,
        },
        TaskKind::CreateActor(create),
        args,
    );
    // A named or detached actor may be reached by others: dropping our handles does not end it.
    let escaped = options.name.is_some() || options.detached;
    (
        ActorHandle::from_raw(RawActor::new(actor_id, true, escaped)),
        ret,
    )
}

fn submit_spec<R>(
    ctx: &context::Context,
    task_id: TaskId,
    name: &'static str,
    options: TaskOptions,
    kind: TaskKind,
    args: Vec<ArgBuf>,
) -> ObjectRef<R> {
    let TaskOptions {
        resources,
        max_retries,
        wait_for_resources,
    } = options;
    let ret = ObjectId::for_return(task_id, 0);
    let mut wire = Vec::with_capacity(args.len());
    // Handles to the arguments stay alive until the submit is queued.
    let mut keep = Vec::new();
    // Refs inside inline arguments: the node keeps them alive for the task.
    let mut nested = Vec::new();
    for (index, arg) in args.into_iter().enumerate() {
        match arg {
            ArgBuf::Value(Ok((bytes, refs))) if bytes.len() <= ctx.inline_threshold => {
                wire.push(shoal_protocol::Arg::Value(bytes));
                nested.extend(refs);
            }
            ArgBuf::Value(Ok((bytes, refs))) => {
                // Too large to travel inline: stored first, passed by reference.
                let raw = crate::put_encoded(ctx, bytes, refs).map_err(|e| e.to_string());
                match raw {
                    Ok(raw) => {
                        wire.push(shoal_protocol::Arg::Ref(raw.id));
                        keep.push(raw);
                    }
                    Err(message) => return failed(ctx, ret, index, message),
                }
            }
            ArgBuf::Value(Err(e)) => return failed(ctx, ret, index, e.to_string()),
            ArgBuf::Ref(raw) => {
                wire.push(shoal_protocol::Arg::Ref(raw.id));
                keep.push(raw);
            }
        }
    }
    ctx.add_owned_result(ret);
    ctx.push(ToNode::Submit(TaskSpec {
        task_id,
        function: name.to_string(),
        binary: ctx.binary,
        args: wire,
        resources,
        max_retries,
        owner: ctx.client,
        kind,
        nested: crate::object_ref::ids_of(&nested),
        wait_for_resources,
    }));
    drop(nested);
    drop(keep);
    ObjectRef::from_raw(RawRef::counted(ret, ctx.client))
}

/// A reference to a call that failed before it was sent (an argument could not be encoded or
/// stored): its `get` returns the error.
fn failed<R>(
    ctx: &crate::context::Context,
    ret: ObjectId,
    index: usize,
    message: String,
) -> ObjectRef<R> {
    ctx.add_failed(ret, GetError::Task(TaskError::ArgDecode { index, message }));
    ObjectRef::from_raw(RawRef::counted(ret, ctx.client))
}

/// How a method touches the actor's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `&self`: may run alongside other `&self` calls (up to the actor's concurrency).
    Shared,
    /// `&mut self`: runs alone.
    Exclusive,
}

/// The state of an actor, locked for one call.
#[derive(Debug)]
pub enum Guard<T> {
    /// For a `&self` method.
    Shared(tokio::sync::OwnedRwLockReadGuard<T>),
    /// For a `&mut self` method.
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<T>),
}

impl<T> Guard<T> {
    /// The state, shared.
    pub fn shared(&self) -> &T {
        match self {
            Guard::Shared(g) => g,
            Guard::Exclusive(g) => g,
        }
    }

    /// The state, exclusively. Only a `&mut self` method's guard is exclusive.
    pub fn exclusive(&mut self) -> &mut T {
        match self {
            Guard::Exclusive(g) => &mut *g,
            Guard::Shared(_) => unreachable!("a `&self` method asked for exclusive access"),
        }
    }
}

/// One call of an actor method: runs on the actor's thread.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TaskError>>>>;

/// How the worker side reaches the methods struct's handle.
pub trait ActorMethods: Clone {
    /// Wraps a handle.
    fn from_raw(raw: RawActor) -> Self;
    /// The handle.
    fn raw(&self) -> &RawActor;
}

/// An actor class linked into this binary.
#[derive(Debug)]
pub struct ActorClass {
    /// `module_path!()::Type`.
    pub name: &'static str,
    /// Hosts an actor of the class in this worker until the node goes away.
    pub host: fn(shoal_protocol::HostActor) -> i32,
}

/// Every `#[shoal::actor]` class linked into this binary.
#[linkme::distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

/// Hosts an actor of class `A` in this worker process (see `worker::host_actor`).
pub fn host_actor<A: Actor>(host: shoal_protocol::HostActor) -> i32 {
    crate::worker::host_actor::<A>(host)
}
