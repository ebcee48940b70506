//! Submitting work: a call of a remote function, of an actor's method, or an actor's
//! creation becomes a `Submit` to the node, and the caller gets the [`ObjectRef`] of its
//! result at once.
//!
//! Arguments are values or refs ([`IntoArg`]). A value small enough travels inside the
//! message; a larger one is stored first and passed by reference. A call whose argument
//! cannot be encoded or stored is not sent: its ref fails with the reason.

use serde::Serialize;
use shoal_protocol::{
    ActorCreate, ActorId, ActorToken, EncodeError, ObjectId, TaskError, TaskId, TaskKind, TaskSpec,
    ToNode,
};

use crate::actor::{Actor, ActorError, ActorHandle, ActorOptions, RawActor};
use crate::error::GetError;
use crate::object_ref::{self, ObjectRef, RawRef};
use crate::options::TaskOptions;
use crate::put;
use crate::runtime::{self, Context};

/// One argument of a call, before it is sent.
#[derive(Debug)]
pub enum ArgBuf {
    /// An encoded value and the refs inside it (or why it could not be encoded).
    Value(Result<(Vec<u8>, Vec<RawRef>), EncodeError>),
    /// A reference whose value the task receives.
    Ref(RawRef),
}

/// A value usable as an argument of type `T`: a `T` itself, or an [`ObjectRef<T>`] (whose
/// value the task receives once it is ready).
///
/// ```no_run
/// # #[shoal::remote] fn add(a: i64, b: i64) -> i64 { a + b }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let x = shoal::put(&1i64)?;
/// let by_value = add.remote(1, 2);        // `i64`: sent with the call
/// let by_ref = add.remote(&x, by_value);  // `&ObjectRef<i64>`, `ObjectRef<i64>`: the values
/// assert_eq!(by_ref.get_blocking()?, 4);
/// # Ok(()) }
/// ```
pub trait IntoArg<T> {
    /// Converts to the wire form. The code that `#[shoal::remote]` and `#[shoal::actor]`
    /// generate calls it on each argument; a program passes its arguments on instead:
    ///
    /// ```no_run
    /// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
    /// use shoal::{IntoArg, ObjectRef};
    ///
    /// // Takes a `u64` or a ref to one, as `square.remote` does.
    /// fn square_logged(x: impl IntoArg<u64>) -> ObjectRef<u64> {
    ///     let r = square.remote(x);
    ///     println!("submitted {}", r.id());
    ///     r
    /// }
    ///
    /// let four = square_logged(2u64);
    /// let sixteen = square_logged(&four);
    /// ```
    fn into_arg(self) -> ArgBuf;
}

impl<T: Serialize + serde::de::DeserializeOwned> IntoArg<T> for T {
    fn into_arg(self) -> ArgBuf {
        ArgBuf::Value(object_ref::encode_checked(&self))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> ArgBuf {
        ArgBuf::Ref(self.raw)
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> ArgBuf {
        ArgBuf::Ref(self.raw.clone())
    }
}

impl IntoArg<String> for &str {
    fn into_arg(self) -> ArgBuf {
        ArgBuf::Value(object_ref::encode_collecting(self))
    }
}

/// Submits a call of `name` and returns the reference to its result.
pub fn submit<R>(name: &'static str, options: &TaskOptions, args: Vec<ArgBuf>) -> ObjectRef<R> {
    ObjectRef::from_raw(submit_function(name, options, args, 1).1)
}

/// Submits a call of `name` with `num_returns` returns: its task and the ref to its first.
fn submit_function(
    name: &'static str,
    options: &TaskOptions,
    args: Vec<ArgBuf>,
    num_returns: u32,
) -> (TaskId, RawRef) {
    let ctx = runtime::get();
    let task_id = ctx.next_task_id();
    let kind = TaskKind::Function;
    let first = submit_spec(
        ctx,
        task_id,
        name,
        options.clone(),
        kind,
        args,
        num_returns,
        false,
    );
    (task_id, first)
}

/// Submits a call of `name`, a function with `num_returns` returns, and returns the
/// references to them, taken in order with [`Returns::take`].
pub fn submit_several(
    name: &'static str,
    options: &TaskOptions,
    args: Vec<ArgBuf>,
    num_returns: u32,
) -> Returns {
    let (task_id, first) = submit_function(name, options, args, num_returns);
    Returns {
        first: Some(first),
        task: task_id,
        next: 1,
        count: num_returns,
    }
}

/// The references to the returns of a task with several, each counted once, taken in order.
#[derive(Debug)]
pub struct Returns {
    first: Option<RawRef>,
    task: TaskId,
    next: u32,
    count: u32,
}

impl Returns {
    /// The reference to the next return, as a `T`.
    ///
    /// # Panics
    /// When all were taken.
    pub fn take<T>(&mut self) -> ObjectRef<T> {
        if let Some(first) = self.first.take() {
            return ObjectRef::from_raw(first);
        }
        assert!(self.next < self.count, "every return was taken");
        let id = ObjectId::for_return(self.task, self.next);
        self.next += 1;
        ObjectRef::from_raw(RawRef::counted(id, runtime::get().client))
    }
}

impl Drop for Returns {
    fn drop(&mut self) {
        // Those not taken are released.
        while self.next < self.count {
            drop(self.take::<()>());
        }
    }
}

/// Submits a call of `name`, a streaming generator, and returns the stream of its items.
pub fn submit_stream<T>(
    name: &'static str,
    options: &TaskOptions,
    args: Vec<ArgBuf>,
) -> crate::stream::ObjectRefStream<T> {
    let ctx = runtime::get();
    let task_id = ctx.next_task_id();
    let kind = TaskKind::Function;
    let ret = submit_spec(ctx, task_id, name, options.clone(), kind, args, 1, true);
    crate::stream::ObjectRefStream::new(task_id, ret)
}

/// Calls `method` of an actor and returns the reference to its result. Calls are never
/// retried (as Ray's default `max_task_retries`).
pub fn call_actor<R>(actor: &RawActor, method: &'static str, args: Vec<ArgBuf>) -> ObjectRef<R> {
    ObjectRef::from_raw(submit_call(actor, method, args, 1, false).1)
}

/// Calls `method` of an actor, one with `num_returns` returns (`#[num_returns = n]`), and
/// returns the references to them.
pub fn call_actor_several(
    actor: &RawActor,
    method: &'static str,
    args: Vec<ArgBuf>,
    num_returns: u32,
) -> Returns {
    let (task, first) = submit_call(actor, method, args, num_returns, false);
    Returns {
        first: Some(first),
        task,
        next: 1,
        count: num_returns,
    }
}

/// Calls `method` of an actor, a streaming generator, and returns the stream of its items.
pub fn call_actor_stream<T>(
    actor: &RawActor,
    method: &'static str,
    args: Vec<ArgBuf>,
) -> crate::stream::ObjectRefStream<T> {
    let (task, end) = submit_call(actor, method, args, 1, true);
    crate::stream::ObjectRefStream::new(task, end)
}

/// Submits a call of `method` (a `stream`ing one or not), within its handle's limit of
/// pending calls: its task and the ref to its (first) result (failed if over the limit; the
/// others, with `num_returns > 1`, are counted once each, for [`Returns`] to take).
fn submit_call(
    actor: &RawActor,
    method: &'static str,
    args: Vec<ArgBuf>,
    num_returns: u32,
    stream: bool,
) -> (TaskId, RawRef) {
    let ctx = runtime::get();
    let task_id = ctx.next_task_id();
    let call = || {
        ObjectRef::<()>::from_raw(submit_spec(
            ctx,
            task_id,
            method,
            TaskOptions::new().num_cpus(0.0).max_retries(0),
            TaskKind::ActorMethod {
                actor: actor.id(),
                token: actor.token(),
            },
            args,
            num_returns,
            stream,
        ))
    };
    let end = actor.within_limit(ctx, call).unwrap_or_else(|limit| {
        let error = GetError::PendingCallsLimitExceeded {
            actor: actor.id(),
            limit,
        };
        ObjectRef::from_raw(failed(ctx, task_id, num_returns, error))
    });
    (task_id, end.raw)
}

/// Creates an actor with the default options; see [`create_actor_with`]. Unnamed creation
/// cannot be refused up front: a failure shows in the actor's calls.
pub fn create_actor<A: Actor>(options: &ActorOptions, args: Vec<ArgBuf>) -> ActorHandle<A> {
    let ctx = runtime::get();
    let (handle, _ret) = submit_create::<A>(ctx, options, args);
    handle
}

/// Creates an actor with options. With a name, waits for the node's answer (a
/// get-or-create may find an existing actor); a refused creation gives the handle anyway,
/// whose calls fail with the reason (the node remembers it).
pub fn create_actor_with<A: Actor>(options: &ActorOptions, args: Vec<ArgBuf>) -> ActorHandle<A> {
    let ctx = runtime::get();
    let (handle, ret) = submit_create::<A>(ctx, options, args);
    if options.name.is_none() {
        return handle;
    }
    match named(options, handle, &ret) {
        Ok(handle) => handle,
        Err((handle, e)) => {
            tracing::debug!(class = A::CLASS, error = %e, "actor creation refused; its calls fail");
            handle
        }
    }
}

/// Creates an actor with options, failing at once if the creation is refused. With a name,
/// waits for the node's answer (the name may be taken, or a get-or-create may find an
/// existing actor).
pub fn try_create_actor_with<A: Actor>(
    options: &ActorOptions,
    args: Vec<ArgBuf>,
) -> Result<ActorHandle<A>, ActorError> {
    let ctx = runtime::get();
    let (handle, ret) = submit_create::<A>(ctx, options, args);
    if options.name.is_none() {
        // What can refuse an unnamed creation up front (a shut down runtime, invalid
        // options) has failed its return already.
        return match ctx.failed_already(ret.id()) {
            Some(e) => Err(ActorError::Create(e)),
            None => Ok(handle),
        };
    }
    named(options, handle, &ret).map_err(|(_, e)| e)
}

/// The node's answer to a named creation: the handle to use, or why it was refused (with
/// the handle made for it).
#[allow(clippy::result_large_err)]
fn named<A: Actor>(
    options: &ActorOptions,
    handle: ActorHandle<A>,
    ret: &ObjectRef<(ActorId, ActorToken)>,
) -> Result<ActorHandle<A>, (ActorHandle<A>, ActorError)> {
    let e = match ret.get_blocking() {
        Ok((id, _)) if id == ActorHandle::id(&handle) => return Ok(handle),
        // Get-or-create found another: a handle to it, whose object is this creation's
        // return, which the node made hold that actor's own handle object (where the node
        // counts that actor's handles; elsewhere the actor is kept until killed).
        Ok((id, token)) => {
            return Ok(ActorHandle::from_raw(RawActor::new(
                id,
                token,
                Some(ret.clone()),
                options.max_pending_calls,
            )))
        }
        Err(GetError::Task(TaskError::ActorNameTaken { name })) => {
            ActorError::NameTaken(shoal_protocol::display_name(&name))
        }
        Err(e) => ActorError::Create(e),
    };
    Err((handle, e))
}

fn submit_create<A: Actor>(
    ctx: &Context,
    options: &ActorOptions,
    args: Vec<ArgBuf>,
) -> (ActorHandle<A>, ObjectRef<(ActorId, ActorToken)>) {
    let task_id = ctx.next_task_id();
    let actor_id = ActorId(task_id.0);
    // A handle's secret: only handles carry it, so only their holders can call or kill.
    let token = ActorToken(shoal_node::secret_bytes());
    let create = ActorCreate {
        actor_id,
        token,
        name: options
            .name
            .as_deref()
            .map(|n| shoal_protocol::qualified_name(&options.namespace, n)),
        get_if_exists: options.get_if_exists,
        max_restarts: options.max_restarts,
        max_concurrency: options
            .max_concurrency
            .unwrap_or(A::DEFAULT_MAX_CONCURRENCY)
            .max(1),
        detached: options.detached,
        concurrency_groups: options.concurrency_groups.clone(),
        max_task_retries: options.max_task_retries,
    };
    let ret = ObjectRef::from_raw(submit_spec(
        ctx,
        task_id,
        A::CLASS,
        TaskOptions {
            resources: options.resources.clone(),
            max_retries: 0,
            wait_for_resources: false,
            retry_exceptions: false,
            placement: options.placement.clone(),
            backpressure: 0,
            env: options.env.clone(),
        },
        TaskKind::CreateActor(create),
        args,
        1,
        false,
    ));
    // The handle holds the creation's return object: the actor lives while it (or a copy of
    // it, in any process) does. A detached one lives until killed.
    ctx.set_handled(ret.id());
    let handle = (!options.detached).then(|| ret.clone());
    (
        ActorHandle::from_raw(RawActor::new(
            actor_id,
            token,
            handle,
            options.max_pending_calls,
        )),
        ret,
    )
}

/// Submits a task of `num_returns` returns; returns the reference to its first (the
/// others are counted once each, for [`Returns`] to take).
#[allow(clippy::too_many_arguments)]
fn submit_spec(
    ctx: &Context,
    task_id: TaskId,
    name: &'static str,
    options: TaskOptions,
    kind: TaskKind,
    args: Vec<ArgBuf>,
    num_returns: u32,
    stream: bool,
) -> RawRef {
    let TaskOptions {
        resources,
        max_retries,
        wait_for_resources,
        retry_exceptions,
        placement,
        backpressure,
        env,
    } = options;
    let ret = ObjectId::for_return(task_id, 0);
    if ctx.is_shut_down() {
        return failed(ctx, task_id, num_returns, GetError::Shutdown);
    }
    if let Some(reason) = placement.invalid {
        let error = GetError::Task(TaskError::InvalidOptions { reason });
        return failed(ctx, task_id, num_returns, error);
    }
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
                let raw = put::put_encoded(ctx, bytes, refs).map_err(|e| e.to_string());
                match raw {
                    Ok(raw) => {
                        wire.push(shoal_protocol::Arg::Ref(raw.id));
                        keep.push(raw);
                    }
                    Err(message) => return arg_failed(ctx, task_id, num_returns, index, message),
                }
            }
            ArgBuf::Value(Err(e)) => {
                return arg_failed(ctx, task_id, num_returns, index, e.to_string())
            }
            ArgBuf::Ref(raw) => {
                wire.push(shoal_protocol::Arg::Ref(raw.id));
                keep.push(raw);
            }
        }
    }
    let call = matches!(kind, TaskKind::ActorMethod { .. });
    let maker = crate::runtime::Maker {
        task: task_id,
        call,
    };
    if stream {
        ctx.add_stream(ret, maker);
    } else {
        ctx.add_owned_result(ret, maker);
    }
    for i in 1..num_returns {
        ctx.add_owned_result(ObjectId::for_return(task_id, i), maker);
    }
    ctx.push(ToNode::Submit(Box::new(TaskSpec {
        task_id,
        function: name.to_string(),
        binary: ctx.binary,
        args: wire,
        resources,
        max_retries,
        owner: ctx.client,
        kind,
        nested: object_ref::ids_of(&nested),
        wait_for_resources,
        retry_exceptions,
        num_returns,
        strategy: placement.strategy,
        label_selector: placement.label_selector,
        stream: stream.then_some(shoal_protocol::StreamSpec {
            window: backpressure,
        }),
        env,
    })));
    drop(nested);
    drop(keep);
    RawRef::counted(ret, ctx.client)
}

/// A call that failed before it was sent (an argument could not be encoded or stored): the
/// `get` of each of its returns gives the error.
fn arg_failed(
    ctx: &Context,
    task: TaskId,
    num_returns: u32,
    index: usize,
    message: String,
) -> RawRef {
    let error = GetError::Task(TaskError::ArgDecode { index, message });
    failed(ctx, task, num_returns, error)
}

/// A call that was not sent: each of its `num_returns` returns fails with `error`. Returns
/// the reference to the first.
fn failed(ctx: &Context, task: TaskId, num_returns: u32, error: GetError) -> RawRef {
    for i in 1..num_returns {
        ctx.add_failed(ObjectId::for_return(task, i), error.clone());
    }
    let ret = ObjectId::for_return(task, 0);
    ctx.add_failed(ret, error);
    RawRef::counted(ret, ctx.client)
}
