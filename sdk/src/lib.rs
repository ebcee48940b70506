//! # Shoal
//!
//! Remote functions and shared objects for Rust programs, on a mesh of identical peers with
//! no head node — in the spirit of Ray.
//!
//! ```no_run
//! #[shoal::remote]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     shoal::init()?;                          // a local node, or an embedded one
//!     let x = add.remote(1, 2);                // runs in a worker process; returns at once
//!     let y = add.remote(&x, 10);              // an ObjectRef is an argument like a value
//!     let big = shoal::put(&vec![0u8; 1 << 20])?;  // large values live in shared memory
//!     let (ready, _pending) = shoal::wait_blocking(&[y.clone()], 1, None)?;
//!     assert_eq!(ready[0].get_blocking()?, 13);
//!     assert_eq!(big.get_blocking()?.len(), 1 << 20);
//!     Ok(())
//! }
//! ```
//!
//! ## Actors
//!
//! `#[shoal::actor]` on a type's `impl` block makes the type an actor: a stateful service in
//! a worker process of its own. `Type::remote(args…)` runs its `new` constructor there and
//! returns an [`ActorHandle`] at once; every `&self` / `&mut self` method is called through
//! the handle and returns an [`ObjectRef`] of its result at once, as Ray's
//! `counter.incr.remote(1)`:
//!
//! ```no_run
//! pub struct Counter { n: i64 }
//!
//! #[shoal::actor]
//! impl Counter {
//!     pub fn new(start: i64) -> Self { Counter { n: start } }
//!     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
//!     pub fn get(&self) -> i64 { self.n }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let counter = Counter::remote(0);               // an actor in its own process
//! let one = counter.incr(1);                      // ObjectRef<i64>, at once
//! let two = counter.incr(1);                      // calls from one caller run in order
//! assert_eq!(two.get_blocking()?, 2);
//! let named = Counter::options(shoal::ActorOptions::new().name("hits").max_restarts(3))
//!     .try_remote(0)?;                            // findable with shoal::get_actor("hits")
//! shoal::kill(&named);
//! # let _ = one; Ok(()) }
//! ```
//!
//! - A `&mut self` method runs alone; `&self` methods also run one at a time unless the actor
//!   has a [max concurrency](ActorOptions::max_concurrency) above one, and then `async` ones
//!   interleave at their `.await`s (actors with `async` methods default to 1000, as Ray's
//!   async actors), and blocking ones overlap on a pool of that many threads if the actor is
//!   `#[shoal::actor(threaded)]` (Ray's threaded actors; its state must be `Send + Sync`).
//!   Methods marked `#[concurrency_group("io")]` run beside the others, up to the group's
//!   size ([`ActorOptions::concurrency_group`]). A method that panics fails its call only;
//!   the state stays. A method marked `#[streaming]` that returns an iterator is a
//!   streaming generator, as a `#[shoal::remote(streaming)]` function is (below): its call
//!   gives an [`ObjectRefStream`] of its items (an `async` one awaits its consumer, so the
//!   actor's other calls go on meanwhile). A method marked `#[num_returns = n]` returns a
//!   tuple of `n`, and its call gives a tuple of `n` refs, each element its own object.
//! - Handles are `Clone` and serializable: pass them to tasks and other actors, which call
//!   the actor directly. They are counted wherever they go, as Ray counts them: when the
//!   last is dropped, the actor ends (see [`ActorHandle`]).
//! - [`ActorOptions`]: resources held (`num_cpus`, default 0, as Ray's actors once placed),
//!   `max_restarts` (the constructor re-runs with its original arguments after the process
//!   dies), `max_task_retries`, `max_concurrency`, `max_pending_calls` (back-pressure per
//!   handle), `name` with `namespace` and `get_if_exists` ([`get_actor`], [`get_actor_in`]),
//!   `detached`. `Type::options(options).remote(..)` gives a handle, as `Type::remote(..)`
//!   does; `try_remote` instead says at once if the creation is refused (its name is taken,
//!   its options are invalid), where `remote`'s handle fails each call with the reason.
//! - [`kill`] ends an actor (and [`exit_actor`], called in one of its methods, ends it from
//!   inside); its later calls fail with [`TaskError::ActorKilled`]. When its
//!   process dies, the calls it may have begun fail with [`TaskError::ActorDied`] (a call
//!   runs at most once); the calls behind them, and those made while it is down, wait for its
//!   restart if it has restarts left and run there, in order, as Ray's do.
//!
//! ## Many refs, cancelling, pools of actors
//!
//! ```no_run
//! # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
//! # #[shoal::remote] async fn slow() -> u64 { 0 }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let refs: Vec<_> = (0..4).map(|i| square.remote(i)).collect();
//! let all = shoal::get_all(&refs, None).await?;   // in order; fails fast on a failure
//! let (ready, pending) = shoal::wait(&refs, 2, None).await?;
//! let nine = square.remote(3).await?;              // a ref is a future of its value
//! let r = slow.remote();
//! shoal::cancel(&r)?;                              // its get fails with TaskError::Cancelled
//! # let _ = (all, ready, pending, nine); Ok(()) }
//! ```
//!
//! - [`free`] drops the values of refs that live on (Ray's `free`): their reads fail with
//!   [`TaskError::ObjectFreed`].
//! - [`get_all`] returns every value in order and fails as soon as one ref fails (Ray's
//!   `get` of a list); [`wait`] returns the ready refs and the others; both have blocking
//!   forms. An [`ObjectRef`] (or `&ObjectRef`) can be `.await`ed.
//! - [`cancel`] (and [`cancel_with`] for `force` and `recursive`) is Ray's `ray.cancel`: a
//!   queued task never runs, an `async` one is dropped at its next `.await`, a blocking one's
//!   result fails at once while it may stop early by checking [`is_cancelled`] (or `force`
//!   ends its worker), wherever the task is in the mesh. Only its submitter may cancel it.
//! - [`ActorPool`] spreads calls over a fixed set of actors, one call per actor at a time,
//!   and gives their results in order or as they end (Ray's `ActorPool`). [`Queue`] is a
//!   typed first-in first-out queue, held by an actor, that tasks, actors and programs
//!   share (Ray's `Queue`).
//!
//! ## In short
//!
//! - [`remote`] turns a free function (sync or `async`) into a remote function:
//!   `f.remote(args…)` submits a task and returns an [`ObjectRef`] at once;
//!   `f.options(TaskOptions::new().num_cpus(2.0).max_retries(0)).remote(args…)` sets options
//!   per call; `f::call(args…)` runs it here.
//! - `#[shoal::remote(max_calls = n)]` has a worker run the function `n` times, then a
//!   fresh process takes its place (Ray's `max_calls`).
//! - `TaskOptions::env("K", "v")` (and `ActorOptions::env`) runs a task or actor in a worker
//!   started with that environment variable (Ray's `runtime_env` `env_vars`).
//! - `TaskOptions::retry_exceptions(true)` runs a task again when its function panics or
//!   returns an `Err` (Ray's `retry_exceptions`); `#[shoal::remote(retry_if = f)]` narrows
//!   the errors retried to those `f(&err)` accepts.
//! - `#[shoal::remote(num_returns = n)]` on a function returning a tuple of `n` gives each
//!   element its own object (Ray's `num_returns`): `remote` returns a tuple of refs, each
//!   read, passed on and freed on its own; a failure fails each of them.
//!
//!   ```no_run
//!   #[shoal::remote(num_returns = 2)]
//!   fn split(v: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
//!       let (a, b) = v.split_at(v.len() / 2);
//!       (a.to_vec(), b.to_vec())
//!   }
//!   # fn main() -> Result<(), shoal::GetError> {
//!   let (left, right) = split.remote(vec![1, 2, 3, 4]);
//!   drop(left); // freed alone
//!   assert_eq!(right.get_blocking()?, vec![3, 4]);
//!   # Ok(()) }
//!   ```
//! - `#[shoal::remote(streaming)]` on a function returning an iterator makes it a streaming
//!   generator (Ray's `num_returns="streaming"`): `remote` returns an [`ObjectRefStream`] of
//!   one ref per item, each its own object as soon as the function yields it, wherever it
//!   runs; the function pauses while its consumer is [`TaskOptions::backpressure`] items
//!   behind, and a failure ends the stream with a ref that gives the error.
//!
//!   ```no_run
//!   #[shoal::remote(streaming)]
//!   fn lines(n: u32) -> impl Iterator<Item = String> {
//!       (1..=n).map(|i| format!("line {i}"))
//!   }
//!   # fn main() -> Result<(), shoal::GetError> {
//!   for line in lines.remote(3) {
//!       println!("{}", line.get_blocking()?); // each as soon as it is made
//!   }
//!   # Ok(()) }
//!   ```
//! - [`ObjectRef::get`] (async) and [`ObjectRef::get_blocking`] wait for a value; [`wait`]
//!   waits for some of many; [`put`] stores a value. Failures come back as typed
//!   [`GetError`]s: a panic with its message and where it happened (function, source place,
//!   pid, peer, and the backtrace when `RUST_BACKTRACE` is set), a dead worker with its exit
//!   status, arguments that do not decode, a missing function, a timeout.
//! - Values travel in a binary encoding; a type it cannot read back (`serde_json::Value`,
//!   untagged enums, …) fails where it is sent, naming the type: send it as `Json<T>` (the
//!   `json` feature).
//! - Where work runs (Ray's scheduling strategies): by default where it was submitted while
//!   it fits, else at the peer with room that suits it best; [`Strategy::Spread`] spreads
//!   it over the mesh, [`Strategy::on_peer`] and [`Strategy::prefer_peer`] pin it to a peer
//!   or prefer one, and [`TaskOptions::label`] keeps it to peers whose labels
//!   (`shoal node --label zone=eu`) match.
//! - [`placement_group`] reserves bundles of resources together across the mesh, as Ray's
//!   placement groups (`PACK`, `SPREAD`, `STRICT_PACK`, `STRICT_SPREAD`), with no head: the
//!   peers chosen set the bundles aside and then offer them, in two phases, so a group is
//!   reserved whole or not at all. Tasks and actors run in a bundle with the strategy
//!   [`PlacementGroup::bundle`]; [`PlacementGroup::ready`] is a ref that becomes `()` once
//!   it is placed; [`remove_placement_group`] frees it, and what ran in it ends with
//!   [`TaskError::GroupRemoved`].
//!
//!   ```no_run
//!   # #[shoal::remote] fn shard(i: u32) -> u32 { i }
//!   use shoal::{GroupStrategy, ResourceSet, TaskOptions};
//!   # fn main() -> Result<(), shoal::GetError> {
//!   let pg = shoal::placement_group(vec![ResourceSet::cpus(1.0); 2], GroupStrategy::StrictSpread);
//!   pg.ready().get_blocking()?;                   // one CPU on each of two peers
//!   let parts: Vec<_> = (0..2)
//!       .map(|i| shard.options(TaskOptions::new().strategy(pg.bundle(i))).remote(i))
//!       .collect();
//!   let all = shoal::get_all_blocking(&parts, None)?;
//!   shoal::remove_placement_group(&pg);
//!   # let _ = all; Ok(()) }
//!   ```
//! - [`runtime_context`] says where the calling code runs: the node and peer, the task or
//!   actor, and what it holds (Ray's `get_runtime_context()`, `get_assigned_resources()`);
//!   [`gpu_ids`] names the GPU devices it was given (Ray's `get_gpu_ids()`), for a task or
//!   actor holding `GPU` ([`TaskOptions::num_gpus`], [`ActorOptions::num_gpus`]).
//! - Workers are processes of your own executable, started by the node. Worker mode is
//!   entered before `main` (or libtest's `main`) runs, so a worker never repeats the
//!   program's side effects.
//! - [`init`] attaches to the node on `$SHOAL_SOCKET` (or the per-user default socket) and,
//!   if there is none, starts an embedded node inside the program. [`shutdown`] ends the
//!   attachment (and stops an embedded node); later calls fail with a typed error.
//! - A driver ships its executable to peers signed, so that they run it: with the sidecar
//!   `<exe>.shoal-manifest` from `shoal sign` if it matches, else with the publisher key file
//!   `$SHOAL_PUBLISHER_KEY` names (`none`: unsigned), else with the per-user default key
//!   (`$XDG_CONFIG_HOME/shoal/publisher.key`, else `~/.config/shoal/publisher.key`), made on
//!   first use. Peers run it only if they trust that publisher (`shoal node
//!   --trust-publisher`); a task no trusting peer can take fails with
//!   [`TaskError::CodeRejected`].
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

// The macros' expansions name the SDK `::shoal`, as in every program; so does the SDK's own
// actor (`queue::QueueActor`).
extern crate self as shoal;

// Layers, bottom up: `runtime` (the connection to the node), `shm` (the store's files),
// `object_ref` (handles), `put`, `bytes`, `function` and `actor` (what a worker runs),
// `submit` (calls), `worker` (worker mode). `__private` re-exports what the macros call.
mod actor;
mod bytes;
mod cancel;
mod error;
mod function;
mod group;
#[cfg(feature = "json")]
mod json;
mod many;
mod object_ref;
mod options;
mod pool;
mod put;
mod queue;
mod runtime;
mod shm;
mod stream;
mod submit;
mod worker;

#[doc(hidden)]
pub mod __private;

use std::sync::Arc;

pub use actor::{
    exit_actor, get_actor, get_actor_in, kill, kill_and_restart, Actor, ActorError, ActorHandle,
    ActorOptions,
};
pub use bytes::{put_bytes, ByteSequence, ByteView, Bytes};
pub use group::{
    placement_group, placement_group_detached, remove_placement_group, PlacementGroup,
};
#[cfg(feature = "json")]
pub use json::Json;
pub use shoal_macros::{actor, remote};
pub use shoal_protocol::{
    ActorId, GroupId, GroupStrategy, NodeId, NodeStatus, ObjectId, ObjectInfo, ResourceSet,
    Strategy, TaskError, TaskId,
};

pub use cancel::{cancel, cancel_with, is_cancelled, CancelOptions};
pub use error::{CancelError, GetError, InitError, PutError, StoreError, WaitError};
pub use many::{free, get_all, get_all_blocking, wait, wait_blocking, Split};
pub use object_ref::ObjectRef;
pub use options::{TaskOptions, DEFAULT_BACKPRESSURE};
pub use pool::ActorPool;
pub use put::{put, put_content};
pub use queue::{Queue, QueueError};
use runtime::Context;
pub use runtime::InitOptions;
pub use stream::ObjectRefStream;
pub use submit::IntoArg;

/// A handle to the node this process is attached to.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let node = shoal::init()?;
/// println!("node {} (embedded: {})", node.node_id(), node.is_embedded());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Shoal {
    ctx: Arc<Context>,
}

impl Shoal {
    /// The node's id.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::InitError> {
    /// let node = shoal::init()?;
    /// assert_eq!(node.node_id(), shoal::runtime_context().node_id);
    /// # Ok(()) }
    /// ```
    pub fn node_id(&self) -> NodeId {
        self.ctx.node_id()
    }

    /// The node's peer id in its mesh (`None` when the node is not a peer of one).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::InitError> {
    /// match shoal::init()?.peer_id() {
    ///     Some(peer) => println!("a peer of a mesh: {peer}"),
    ///     None => println!("a node on its own"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn peer_id(&self) -> Option<&str> {
        self.ctx.peer_id()
    }

    /// Whether the node runs inside this process.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::InitError> {
    /// let node = shoal::init()?;
    /// if node.is_embedded() {
    ///     eprintln!("no node answered on the socket: this program runs its own");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_embedded(&self) -> bool {
        self.ctx.is_embedded()
    }

    /// The node's socket (for an embedded node, a private one its workers use).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), shoal::InitError> {
    /// let node = shoal::init()?;
    /// println!("SHOAL_SOCKET={}", node.socket().display());
    /// # Ok(()) }
    /// ```
    pub fn socket(&self) -> &std::path::Path {
        self.ctx.socket()
    }

    /// A snapshot of the node: resources, workers, tasks, objects, actors. The node answers
    /// after everything this process sent before.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let status = shoal::init()?.status()?;
    /// println!(
    ///     "{} workers, {} tasks running, {} free",
    ///     status.workers.len(),
    ///     status.tasks_running,
    ///     status.resources_free,
    /// );
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> Result<NodeStatus, GetError> {
        self.ctx.status()
    }

    /// Every object the node knows, largest first (as `shoal objects`, Ray's `ray memory`):
    /// size, owner, what keeps it alive, where it is.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let node = shoal::init()?;
    /// for object in node.objects()?.iter().take(5) {
    ///     println!("{} {} bytes, in {}", object.id, object.size, object.location);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn objects(&self) -> Result<Vec<ObjectInfo>, GetError> {
        self.ctx.objects()
    }

    /// [`shutdown`] for async code: the same stop, awaited without blocking the executor
    /// (any executor).
    ///
    /// ```no_run
    /// # #[shoal::remote] async fn fetch() -> u64 { 1 }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let node = shoal::init()?;
    /// let n = fetch.remote().await?;
    /// node.shutdown().await;
    /// assert!(fetch.remote().await.is_err()); // fails at once with GetError::Shutdown
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.ctx.shutdown_async().await;
    }
}

/// Attaches this process to a node: the one on `$SHOAL_SOCKET` (or the per-user default
/// socket) if it answers, otherwise a new node embedded in this process. Idempotent; the
/// first remote call does it implicitly with the defaults.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let node = shoal::init()?;
/// println!("attached to {}", node.socket().display());
/// # Ok(()) }
/// ```
pub fn init() -> Result<Shoal, InitError> {
    init_with(InitOptions::default())
}

/// [`init`] with options (socket, embedded node resources, …).
///
/// ```no_run
/// # fn main() -> Result<(), shoal::InitError> {
/// // A node of this program's own, with 2 CPUs and one GPU to hand out.
/// let node = shoal::init_with(shoal::InitOptions {
///     force_embedded: true,
///     cpus: Some(2.0),
///     resources: vec![("GPU".to_string(), 1.0)],
///     ..Default::default()
/// })?;
/// assert!(node.is_embedded());
/// # Ok(()) }
/// ```
pub fn init_with(options: InitOptions) -> Result<Shoal, InitError> {
    let ctx = runtime::init(options)?;
    Ok(Shoal { ctx: ctx.clone() })
}

/// Ends this process's attachment to its node, for good: sends what was queued and closes
/// the connection, stops the embedded node if this process runs one (its workers are killed,
/// its store, spill directory and socket removed), and ends the SDK's runtime thread. Blocks
/// until that is done (at most about 20 s).
///
/// Afterwards no SDK thread, socket or store file is left, and SDK calls fail at once with a
/// typed error instead of reattaching: every get with [`GetError::Shutdown`] (of refs made
/// before too, values already read included), [`put`] with [`PutError::Shutdown`], [`init`]
/// with [`InitError::Shutdown`]; [`wait`] finds every ref done. Idempotent; does nothing if
/// this process never attached, and nothing in a worker (its node owns its life). A program
/// with an embedded node does this at exit anyway. From async code, use
/// [`Shoal::shutdown`].
///
/// ```no_run
/// # #[shoal::remote] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), shoal::GetError> {
/// let r = square.remote(3);
/// assert_eq!(r.get_blocking()?, 9);
/// shoal::shutdown();
/// assert_eq!(r.get_blocking(), Err(shoal::GetError::Shutdown));
/// # Ok(()) }
/// ```
pub fn shutdown() {
    runtime::shutdown(runtime::SHUTDOWN_WAIT);
}

/// The peer id of the node this process is attached to, when that node is a peer of a
/// mesh: inside a task, where it ran. Call after [`init`] (a worker is always initialised).
///
/// ```no_run
/// #[shoal::remote]
/// fn ran_at() -> Option<String> {
///     shoal::peer_id()
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// shoal::init()?;
/// println!("here: {:?}, the task: {:?}", shoal::peer_id(), ran_at.remote().get_blocking()?);
/// # Ok(()) }
/// ```
pub fn peer_id() -> Option<String> {
    runtime::get().peer_id().map(str::to_string)
}

/// Where the calling code runs, as Ray's `ray.get_runtime_context()`: the node and its peer
/// id, this process, and inside a task or an actor call, which.
///
/// ```no_run
/// pub struct Trainer;
///
/// #[shoal::actor]
/// impl Trainer {
///     pub fn new() -> Self { Trainer }
///     /// The CPUs this actor holds, in thousandths.
///     pub fn cpus(&self) -> u64 {
///         shoal::runtime_context().resources.get_milli("CPU")
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let trainer = Trainer::options(shoal::ActorOptions::new().num_cpus(1.0)).remote();
/// assert_eq!(trainer.cpus().get_blocking()?, 1000);
/// let here = shoal::runtime_context(); // in this program: no task, no actor
/// assert_eq!((here.task_id, here.actor_id), (None, None));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeContext {
    /// The node this process is attached to.
    pub node_id: NodeId,
    /// That node's peer id, when it is a peer of a mesh.
    pub peer_id: Option<String>,
    /// This process.
    pub pid: u32,
    /// The task or actor call running on this thread, in a worker. Its result is
    /// `ObjectId::for_return(task_id, 0)`.
    pub task_id: Option<TaskId>,
    /// The actor this process hosts, in an actor's worker.
    pub actor_id: Option<ActorId>,
    /// What the running task holds, or in an actor's worker what the actor holds (its
    /// demand, as Ray's `get_assigned_resources()`); empty in a program.
    pub resources: ResourceSet,
    /// The GPU devices the running task, or this process's actor, was given (Ray's
    /// `get_gpu_ids()`; see [`gpu_ids`]).
    pub gpu_ids: Vec<u32>,
}

/// The [`RuntimeContext`] of the calling code (attaching to a node first, as [`init`] does).
///
/// ```no_run
/// #[shoal::remote]
/// fn where_am_i() -> (Option<String>, bool) {
///     let here = shoal::runtime_context();
///     (here.peer_id, here.task_id.is_some())
/// }
/// ```
pub fn runtime_context() -> RuntimeContext {
    let ctx = runtime::get();
    RuntimeContext {
        node_id: ctx.node_id(),
        peer_id: ctx.peer_id().map(str::to_string),
        pid: std::process::id(),
        task_id: worker::current_task(),
        actor_id: worker::host::hosted(),
        resources: worker::current_resources().unwrap_or_default(),
        gpu_ids: worker::current_gpu_ids(),
    }
}

/// The GPU devices the running task, or this process's actor, was given: the ids of the
/// node's devices, as Ray's `ray.get_gpu_ids()`. A task or actor holding `GPU` (say
/// [`TaskOptions::num_gpus`]) is given that many whole devices, or part of one for a
/// fraction (fractions share a device); the worker's `CUDA_VISIBLE_DEVICES` is set to
/// them while it runs. Empty outside a task or actor, and for one that holds no `GPU`.
///
/// A node has one `GPU` per device it finds: the devices its own `CUDA_VISIBLE_DEVICES`
/// lists, else the NVIDIA devices the kernel driver lists; `shoal node --resource GPU=n`
/// sets the count instead.
///
/// ```no_run
/// #[shoal::remote]
/// fn train(steps: u32) -> Vec<u32> {
///     let devices = shoal::gpu_ids(); // the same as CUDA_VISIBLE_DEVICES, as numbers
///     // … open devices[0] with the CUDA library of your choice …
///     # let _ = steps;
///     devices
/// }
///
/// use shoal::TaskOptions;
/// let used = train.options(TaskOptions::new().num_gpus(1.0)).remote(1000);
/// ```
pub fn gpu_ids() -> Vec<u32> {
    worker::current_gpu_ids()
}
