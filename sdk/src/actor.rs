//! Actors: stateful services made from ordinary types.
//!
//! `#[shoal::actor]` on a type's `impl` block makes the type an [`Actor`]. `Type::remote(..)`
//! runs its `new` constructor in a worker process of its own and returns an
//! [`ActorHandle<Type>`] at once; every `&self` / `&mut self` method of the block is callable
//! through the handle and returns an [`ObjectRef`](crate::ObjectRef) of its result at once.
//!
//! Also here, for the macro's expansion and the worker that hosts an actor: the registry of
//! actor classes linked into the binary ([`ACTOR_CLASSES`]), and how a method call locks the
//! state ([`Access`], [`Guard`]).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_protocol::{ActorId, ActorToken, ResourceSet, TaskError, ToNode};

use crate::error::GetError;
use crate::function::Args;
use crate::object_ref::RawRef;
use crate::runtime;
use crate::ObjectRef;

/// A type made into an actor by `#[shoal::actor]`. Implemented by the macro; the hidden
/// items are how a worker builds and calls it.
///
/// Code generic over actors takes an `A: Actor`:
///
/// ```no_run
/// use shoal::{Actor, ActorHandle};
///
/// fn describe<A: Actor>(handle: &ActorHandle<A>) -> String {
///     format!("{} {}", A::CLASS, ActorHandle::id(handle))
/// }
///
/// pub struct Counter;
/// #[shoal::actor]
/// impl Counter {
///     pub fn new() -> Self { Counter }
/// }
///
/// println!("{}", describe(&Counter::remote()));
/// ```
pub trait Actor: Sized + 'static {
    /// The name the class is registered under in the binary (`module::Type`).
    ///
    /// ```
    /// use shoal::Actor;
    ///
    /// pub struct Counter;
    /// #[shoal::actor]
    /// impl Counter {
    ///     pub fn new() -> Self { Counter }
    /// }
    ///
    /// assert!(Counter::CLASS.ends_with("::Counter"));
    /// ```
    const CLASS: &'static str;
    /// Calls that may run at once unless [`ActorOptions::max_concurrency`] says otherwise:
    /// 1, or 1000 for an actor with `async` methods (as Ray's async actors).
    ///
    /// ```
    /// use shoal::Actor;
    ///
    /// pub struct Store;
    /// #[shoal::actor]
    /// impl Store {
    ///     pub fn new() -> Self { Store }
    ///     pub fn get(&self, key: String) -> usize { key.len() }
    /// }
    ///
    /// pub struct Fetcher;
    /// #[shoal::actor]
    /// impl Fetcher {
    ///     pub fn new() -> Self { Fetcher }
    ///     pub async fn fetch(&self, url: String) -> usize { url.len() }
    /// }
    ///
    /// assert_eq!(Store::DEFAULT_MAX_CONCURRENCY, 1);
    /// assert_eq!(Fetcher::DEFAULT_MAX_CONCURRENCY, 1000);
    /// ```
    const DEFAULT_MAX_CONCURRENCY: u32;
    /// The generated struct whose methods submit calls (reached through
    /// [`ActorHandle`]'s `Deref`).
    ///
    /// ```no_run
    /// use shoal::{Actor, ObjectRef};
    ///
    /// pub struct Counter { n: i64 }
    /// #[shoal::actor]
    /// impl Counter {
    ///     pub fn new() -> Self { Counter { n: 0 } }
    ///     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
    /// }
    ///
    /// fn incr_twice(counter: &<Counter as Actor>::Methods) -> ObjectRef<i64> {
    ///     counter.incr(1);
    ///     counter.incr(1)
    /// }
    ///
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let counter = Counter::remote();
    /// assert_eq!(incr_twice(&counter).get_blocking()?, 2);
    /// # Ok(()) }
    /// ```
    type Methods: ActorMethods;
    #[doc(hidden)]
    fn __construct(args: Args) -> Result<Self, TaskError>;
    #[doc(hidden)]
    fn __access(method: &str) -> Option<Access>;
    #[doc(hidden)]
    fn __call(guard: Guard<Self>, method: &str, args: Args) -> CallFuture;
    /// Whether its blocking methods run on a thread pool (`#[shoal::actor(threaded)]`), so
    /// that up to its max concurrency of them overlap, as Ray's threaded actors.
    ///
    /// ```
    /// use shoal::Actor;
    ///
    /// pub struct Hasher;
    /// #[shoal::actor(threaded)]
    /// impl Hasher {
    ///     pub fn new() -> Self { Hasher }
    ///     pub fn hash(&self, data: Vec<u8>) -> u64 { data.iter().map(|b| u64::from(*b)).sum() }
    /// }
    ///
    /// assert!(Hasher::THREADED);
    /// ```
    const THREADED: bool = false;
    #[doc(hidden)]
    fn __is_blocking(_method: &str) -> bool {
        false
    }
    #[doc(hidden)]
    fn __group(_method: &str) -> Option<&'static str> {
        None
    }
    #[doc(hidden)]
    fn __blocking(_guard: Guard<Self>, _method: &str, _args: Args) -> Option<BlockingCall> {
        None
    }
}

/// A blocking method's call of a `threaded` actor, run on a thread of its pool.
pub type BlockingCall = Box<dyn FnOnce() -> Result<Vec<u8>, TaskError> + Send>;

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

/// How an actor is created: what it holds, whether it restarts, how many calls run at once,
/// its name.
///
/// ```no_run
/// # pub struct Cache;
/// # #[shoal::actor] impl Cache { pub fn new(_mb: u64) -> Self { Cache } }
/// use shoal::ActorOptions;
/// let options = ActorOptions::new()
///     .num_cpus(1.0)
///     .max_restarts(3)
///     .name("cache")
///     .get_if_exists(true);
/// let cache = Cache::options(options).remote(512);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ActorOptions {
    pub(crate) resources: ResourceSet,
    pub(crate) max_restarts: u32,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) name: Option<String>,
    pub(crate) namespace: String,
    pub(crate) get_if_exists: bool,
    pub(crate) detached: bool,
    pub(crate) concurrency_groups: Vec<(String, u32)>,
    pub(crate) max_task_retries: u32,
    pub(crate) max_pending_calls: u32,
    pub(crate) placement: crate::options::Placement,
    pub(crate) env: Vec<(String, String)>,
}

impl Default for ActorOptions {
    /// No resources held (as Ray's actors once placed), no restarts, the class's default
    /// concurrency, no name.
    ///
    /// ```
    /// use shoal::ActorOptions;
    /// assert_eq!(ActorOptions::default(), ActorOptions::new().num_cpus(0.0).max_restarts(0));
    /// ```
    fn default() -> Self {
        Self {
            resources: ResourceSet::new(),
            max_restarts: 0,
            max_concurrency: None,
            name: None,
            namespace: String::new(),
            get_if_exists: false,
            detached: false,
            concurrency_groups: Vec::new(),
            max_task_retries: 0,
            max_pending_calls: 0,
            placement: Default::default(),
            env: Vec::new(),
        }
    }
}

impl ActorOptions {
    /// The defaults.
    ///
    /// ```
    /// use shoal::ActorOptions;
    /// assert_eq!(ActorOptions::new(), ActorOptions::default());
    /// assert_ne!(ActorOptions::new(), ActorOptions::new().num_cpus(1.0));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs the actor holds for its whole life (default 0; a part of one CPU, or whole
    /// CPUs: a fraction above one is refused with [`TaskError::InvalidOptions`]).
    ///
    /// **Unlike Ray** by default: Ray places a default actor only where a CPU is free (it
    /// asks 1 CPU for placement) and then holds none while it runs; Shoal's default actor
    /// asks none, for placement too, so it is placed at once even on a mesh whose CPUs are
    /// all busy. The Ray rule would make an actor wait for a CPU it then does not use, and
    /// its placement depend on a moment's load rather than on what it holds; ask for CPUs
    /// (`num_cpus(1.0)`) for an actor that computes, and it holds them.
    ///
    /// ```no_run
    /// # pub struct Trainer;
    /// # #[shoal::actor] impl Trainer { pub fn new() -> Self { Trainer } }
    /// // Placed where 2 CPUs are free, and holds them until it ends.
    /// let trainer = Trainer::options(shoal::ActorOptions::new().num_cpus(2.0)).remote();
    /// ```
    ///
    /// [`TaskError::InvalidOptions`]: shoal_protocol::TaskError::InvalidOptions
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources = self.resources.with(shoal_protocol::CPU, n);
        self
    }

    /// GPUs the actor holds for its life (Ray's `num_gpus`): whole devices, or a fraction
    /// of one. Its process is given particular devices, which
    /// [`gpu_ids`](crate::gpu_ids) names and `CUDA_VISIBLE_DEVICES` lists, set before its
    /// constructor runs.
    ///
    /// ```no_run
    /// # struct Model;
    /// # #[shoal::actor] impl Model { pub fn new() -> Self { Model } }
    /// let model = Model::options(shoal::ActorOptions::new().num_gpus(1.0)).remote();
    /// ```
    pub fn num_gpus(self, n: f64) -> Self {
        self.resource(crate::options::GPU, n)
    }

    /// An environment variable of the actor's process, set before its constructor runs (the
    /// `env_vars` of Ray's `runtime_env`); see [`TaskOptions::env`](crate::TaskOptions::env)
    /// for the names refused.
    ///
    /// ```no_run
    /// # struct Model;
    /// # #[shoal::actor] impl Model { pub fn new() -> Self { Model } }
    /// let options = shoal::ActorOptions::new().env("MODEL_DIR", "/srv/models");
    /// let model = Model::options(options).remote();
    /// ```
    pub fn env(mut self, name: &str, value: &str) -> Self {
        crate::options::set_env(&mut self.env, name, value);
        self
    }

    /// Where the actor may be placed (Ray's scheduling strategies); see
    /// [`TaskOptions::strategy`](crate::TaskOptions::strategy).
    ///
    /// ```no_run
    /// # struct Counter;
    /// # #[shoal::actor] impl Counter { pub fn new() -> Self { Counter } }
    /// use shoal::{ActorOptions, Strategy};
    /// let peer = shoal::peer_id().unwrap_or_default();
    /// let counter = Counter::options(ActorOptions::new().strategy(Strategy::prefer_peer(peer)))
    ///     .remote();
    /// ```
    pub fn strategy(mut self, strategy: shoal_protocol::Strategy) -> Self {
        self.placement.strategy = strategy;
        self
    }

    /// Places the actor only on a peer whose label `key` matches `expr`; see
    /// [`TaskOptions::label`](crate::TaskOptions::label).
    ///
    /// ```no_run
    /// # pub struct Gateway;
    /// # #[shoal::actor] impl Gateway { pub fn new() -> Self { Gateway } }
    /// // On a peer started with `shoal node --label zone=eu-1` (or eu-2).
    /// let options = shoal::ActorOptions::new().label("zone", "in(eu-1,eu-2)");
    /// let gateway = Gateway::options(options).remote();
    /// ```
    pub fn label(mut self, key: &str, expr: &str) -> Self {
        self.placement.label(key, expr);
        self
    }

    /// An amount of a custom resource the actor holds.
    ///
    /// ```no_run
    /// # pub struct Model;
    /// # #[shoal::actor] impl Model { pub fn new() -> Self { Model } }
    /// // On a peer started with `shoal node --resource GPU=1`, holding its GPU.
    /// let model = Model::options(shoal::ActorOptions::new().resource("GPU", 1.0)).remote();
    /// ```
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources = self.resources.with(name, amount);
        self
    }

    /// How many times the actor is restarted (its constructor run again with the same
    /// arguments) when its process dies. `u32::MAX`: always. Default 0.
    ///
    /// ```no_run
    /// # pub struct Counter { n: i64 }
    /// # #[shoal::actor] impl Counter {
    /// #     pub fn new(n: i64) -> Self { Counter { n } }
    /// #     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
    /// # }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let counter = Counter::options(shoal::ActorOptions::new().max_restarts(2)).remote(10);
    /// assert_eq!(counter.incr(5).get_blocking()?, 15);
    /// shoal::kill_and_restart(&counter); // as if its process crashed
    /// // A new process ran `new(10)` again: the state is the constructor's.
    /// assert_eq!(counter.incr(0).get_blocking()?, 10);
    /// # Ok(()) }
    /// ```
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// How many calls may run at once. With more than one, `async` methods taking `&self`
    /// interleave at their `.await`s; a `&mut self` method always runs alone.
    ///
    /// ```no_run
    /// pub struct Fetcher;
    ///
    /// #[shoal::actor]
    /// impl Fetcher {
    ///     pub fn new() -> Self { Fetcher }
    ///     pub async fn fetch(&self, url: String) -> usize { url.len() }
    /// }
    ///
    /// // At most 8 fetches in flight at once (the default for async actors is 1000).
    /// let fetcher = Fetcher::options(shoal::ActorOptions::new().max_concurrency(8)).remote();
    /// ```
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// A name unique in the mesh, by which [`get_actor`] finds the actor from any program
    /// on any peer. As in Ray, a named actor that is not [detached](Self::detached) still
    /// ends when its last handle is dropped, and its name is then free.
    ///
    /// There is no head to keep the names: the node that creates the actor first asks the
    /// mesh's directory and the peer it names whether the name is taken (a creation made
    /// while that peer is out of reach for 3 s goes ahead, and two creations racing on two
    /// peers may both succeed; a lookup then finds one of them). A taken name fails the
    /// creation with [`ActorError::NameTaken`], or gives the actor that has it when
    /// [`get_if_exists`](Self::get_if_exists) is set.
    ///
    /// ```no_run
    /// # pub struct Counter;
    /// # #[shoal::actor]
    /// # impl Counter { pub fn new() -> Self { Counter } pub fn get(&self) -> u64 { 0 } }
    /// # fn main() -> Result<(), shoal::ActorError> {
    /// let hits = Counter::options(shoal::ActorOptions::new().name("hits")).remote();
    /// // Elsewhere: in a task, an actor, or another program, on any peer of the mesh.
    /// let same = shoal::get_actor::<Counter>("hits")?;
    /// assert_eq!(shoal::ActorHandle::id(&same), shoal::ActorHandle::id(&hits));
    /// # Ok(()) }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The namespace of the actor's [name](Self::name), as Ray's: one name may be taken once
    /// in each namespace, and [`get_actor_in`] finds it there. The default namespace (`""`)
    /// is shared by every program on the node ([`get_actor`] looks there); unlike Ray,
    /// a program has no namespace of its own unless its actors say so. A namespace cannot
    /// hold a NUL character (the creation fails with [`TaskError::InvalidOptions`]).
    ///
    /// ```no_run
    /// # pub struct Counter;
    /// # #[shoal::actor]
    /// # impl Counter { pub fn new() -> Self { Counter } pub fn get(&self) -> u64 { 0 } }
    /// # fn main() -> Result<(), shoal::ActorError> {
    /// let options = shoal::ActorOptions::new().name("hits").namespace("shop");
    /// let hits = Counter::options(options).remote();
    /// let found = shoal::get_actor_in::<Counter>("shop", "hits")?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`TaskError::InvalidOptions`]: shoal_protocol::TaskError::InvalidOptions
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// With a name: if a live actor of that name and class exists, return it instead of
    /// failing (get-or-create).
    ///
    /// ```no_run
    /// # pub struct Registry;
    /// # #[shoal::actor] impl Registry { pub fn new() -> Self { Registry } }
    /// // Every worker that runs this shares one registry: the first one creates it.
    /// let options = shoal::ActorOptions::new().name("registry").get_if_exists(true);
    /// let registry = Registry::options(options).remote();
    /// ```
    pub fn get_if_exists(mut self, yes: bool) -> Self {
        self.get_if_exists = yes;
        self
    }

    /// Keep the actor alive after its creator exits and its handles are dropped, until it
    /// is killed (Ray's `lifetime="detached"`).
    ///
    /// ```no_run
    /// # pub struct Service;
    /// # #[shoal::actor] impl Service { pub fn new() -> Self { Service } }
    /// # fn main() -> Result<(), shoal::ActorError> {
    /// // Outlives this program; a later one finds it with shoal::get_actor("service").
    /// let options = shoal::ActorOptions::new().name("service").detached(true);
    /// Service::options(options).try_remote()?; // fails at once if the name is taken
    /// # Ok(()) }
    /// ```
    pub fn detached(mut self, yes: bool) -> Self {
        self.detached = yes;
        self
    }

    /// How many times a call runs again when the actor's process dies while it may have
    /// been running, on the restarted actor (`u32::MAX`: always), as Ray's
    /// `max_task_retries`. The default, 0, runs a call at most once: such a call fails with
    /// `ActorDied`. With retries a call runs at least once, so it should be safe to repeat.
    /// Needs [`ActorOptions::max_restarts`] to matter.
    ///
    /// ```no_run
    /// # pub struct Kv;
    /// # #[shoal::actor] impl Kv { pub fn new() -> Self { Kv } }
    /// // Restarted up to 5 times, and its calls (safe to repeat) run again after a crash.
    /// let options = shoal::ActorOptions::new().max_restarts(5).max_task_retries(5);
    /// let kv = Kv::options(options).remote();
    /// ```
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = n;
        self
    }

    /// At most `n` calls made through a handle and not yet done (0, the default: no limit),
    /// as Ray's `max_pending_calls`: a call past it is not sent, and its ref fails at once
    /// with [`GetError::PendingCallsLimitExceeded`]. Counted per handle, in each process that
    /// has a copy of it (a handle found by name has no limit). A call is done once its
    /// result has reached the process (a large result made at another peer reaches it when
    /// read); the handle keeps the refs of its pending calls until then.
    ///
    /// ```no_run
    /// # pub struct Sink;
    /// # #[shoal::actor]
    /// # impl Sink { pub fn new() -> Self { Sink } pub fn take(&self, _x: u64) {} }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sink = Sink::options(shoal::ActorOptions::new().max_pending_calls(100)).remote();
    /// let mut sent: std::collections::VecDeque<shoal::ObjectRef<()>> = Default::default();
    /// for x in 0..1_000u64 {
    ///     loop {
    ///         let call = sink.take(x);
    ///         match call.get_blocking_timeout(std::time::Duration::ZERO) {
    ///             // 100 calls behind: wait for the oldest, then send again.
    ///             Err(shoal::GetError::PendingCallsLimitExceeded { .. }) => {
    ///                 if let Some(oldest) = sent.pop_front() {
    ///                     oldest.get_blocking()?;
    ///                 }
    ///             }
    ///             _ => {
    ///                 sent.push_back(call);
    ///                 break;
    ///             }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn max_pending_calls(mut self, n: u32) -> Self {
        self.max_pending_calls = n;
        self
    }

    /// A concurrency group, as Ray's: the methods marked `#[concurrency_group("io")]` run
    /// beside the actor's other calls, at most `max` of them at once, and wait only for each
    /// other (calls of different groups start in no fixed order). A call of a group the
    /// options do not give fails with [`TaskError::InvalidOptions`]. For `async` methods, and
    /// for the blocking methods of a `threaded` actor (others run one at a time anyway).
    ///
    /// ```no_run
    /// pub struct Service;
    ///
    /// #[shoal::actor]
    /// impl Service {
    ///     pub fn new() -> Self { Service }
    ///     #[concurrency_group("io")]
    ///     pub async fn fetch(&self, url: String) -> usize { url.len() }
    ///     pub async fn compute(&self, x: u64) -> u64 { x * x }
    /// }
    ///
    /// # fn main() -> Result<(), shoal::ActorError> {
    /// let s = Service::options(shoal::ActorOptions::new().concurrency_group("io", 2)).remote();
    /// # Ok(()) }
    /// ```
    pub fn concurrency_group(mut self, name: impl Into<String>, max: u32) -> Self {
        let name = name.into();
        self.concurrency_groups.retain(|(n, _)| *n != name);
        self.concurrency_groups.push((name, max));
        self
    }
}

/// Why an actor could not be created or found.
///
/// ```no_run
/// # pub struct Counter;
/// # #[shoal::actor] impl Counter { pub fn new() -> Self { Counter } }
/// use shoal::{ActorError, ActorOptions};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let counter = match Counter::options(ActorOptions::new().name("hits")).try_remote() {
///     Ok(counter) => counter,
///     // Another program made it first: use that one.
///     Err(ActorError::NameTaken(name)) => shoal::get_actor::<Counter>(&name)?,
///     Err(e) => return Err(e.into()),
/// };
/// # let _ = counter; Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ActorError {
    /// A live actor already has this name.
    #[error("an actor named `{0}` already exists")]
    NameTaken(String),
    /// No live actor has this name.
    #[error("no live actor named `{0}`")]
    NotFound(String),
    /// The actor of that name is of another class.
    #[error("actor `{name}` is a `{found}`, not a `{expected}`")]
    WrongClass {
        /// The name looked up.
        name: String,
        /// Its class.
        found: String,
        /// The class asked for.
        expected: String,
    },
    /// The creation was refused (a constructor argument could not be encoded or stored, an
    /// infeasible demand, …) or the node could not be reached.
    #[error("cannot create the actor: {0}")]
    Create(GetError),
}

/// An actor handle in this process; its clones share one.
#[derive(Debug)]
struct Inner {
    id: ActorId,
    /// The secret of its handles: the actor's node takes calls and kills only with it.
    token: ActorToken,
    /// The actor's handle object (the return object of its creation), which every counted
    /// handle holds, in every process it was passed to: when the last is dropped, the actor
    /// ends (as Ray counts actor handles). For a handle a get-or-create gave, the object of
    /// that creation, which holds the actor's. `None`: a handle that is not counted (of a
    /// detached actor).
    handle: Option<ObjectRef<(ActorId, ActorToken)>>,
    /// [`ActorOptions::max_pending_calls`] (0: none).
    max_pending: u32,
    /// With a limit: the results of the calls made through this handle that are not done.
    pending: std::sync::Mutex<std::collections::VecDeque<RawRef>>,
}

/// An untyped actor handle (what the generated methods hold).
#[derive(Clone, Debug)]
pub struct RawActor {
    inner: Arc<Inner>,
}

impl RawActor {
    pub(crate) fn new(
        id: ActorId,
        token: ActorToken,
        handle: Option<ObjectRef<(ActorId, ActorToken)>>,
        max_pending: u32,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                id,
                token,
                handle,
                max_pending,
                pending: Default::default(),
            }),
        }
    }

    /// Makes a call with `submit` if the handle's limit of pending calls allows, and
    /// counts it; `Err(limit)` if it does not.
    pub(crate) fn within_limit<R>(
        &self,
        ctx: &runtime::Context,
        submit: impl FnOnce() -> ObjectRef<R>,
    ) -> Result<ObjectRef<R>, u32> {
        let limit = self.inner.max_pending;
        if limit == 0 {
            return Ok(submit());
        }
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        let done = ctx.are_done(pending.iter().map(|r| r.id));
        let mut done = done.into_iter();
        pending.retain(|_| !done.next().unwrap_or(false));
        if pending.len() >= limit as usize {
            return Err(limit);
        }
        let r = submit();
        pending.push_back(r.raw.clone());
        Ok(r)
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.inner.id
    }

    /// The secret of its handles.
    pub(crate) fn token(&self) -> ActorToken {
        self.inner.token
    }
}

impl Serialize for RawActor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A handle is the actor's id, the secret its node checks calls and kills with, and
        // the ref to its handle object: a ref like any other, so the value that carries the
        // handle holds the actor while it lives, and so does the process that reads it.
        let i = &self.inner;
        (i.id, i.token, &i.handle, i.max_pending).serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawActor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (id, token, handle, max_pending) = Deserialize::deserialize(d)?;
        Ok(Self::new(id, token, handle, max_pending))
    }
}

/// A handle to an actor. Cheap to clone; serializable, so it can be passed to tasks and to
/// other actors, which then call the actor directly. Its methods are the actor type's
/// methods (through `Deref`), each returning an [`ObjectRef`](crate::ObjectRef) at once:
///
/// ```no_run
/// # pub struct Counter { n: i64 }
/// # #[shoal::actor] impl Counter {
/// #     pub fn new(n: i64) -> Self { Counter { n } }
/// #     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
/// # }
/// let counter = Counter::remote(0);
/// let n: shoal::ObjectRef<i64> = counter.incr(1);
/// ```
///
/// The actor ends when it is [`kill`]ed, when its creator exits, or when its last handle is
/// dropped, as Ray counts actor handles: copies passed to tasks and actors, returned in
/// results, put, kept in an actor's state, found by name or got by a get-or-create count
/// too, in every process of every peer, and the calls already made still finish. A
/// [detached](ActorOptions::detached) actor lives until killed.
pub struct ActorHandle<A: Actor> {
    methods: A::Methods,
    _a: PhantomData<fn() -> A>,
}

impl<A: Actor> ActorHandle<A> {
    pub(crate) fn from_raw(raw: RawActor) -> Self {
        Self {
            methods: A::Methods::from_raw(raw),
            _a: PhantomData,
        }
    }

    /// The actor's id (an associated function, so it never hides a method of the actor).
    ///
    /// ```no_run
    /// # pub struct Counter;
    /// # #[shoal::actor] impl Counter { pub fn new() -> Self { Counter } }
    /// let counter = Counter::remote();
    /// println!("actor {}", shoal::ActorHandle::id(&counter));
    /// ```
    pub fn id(this: &Self) -> ActorId {
        this.methods.raw().id()
    }
}

impl<A: Actor> Deref for ActorHandle<A> {
    type Target = A::Methods;
    fn deref(&self) -> &A::Methods {
        &self.methods
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self::from_raw(self.methods.raw().clone())
    }
}

impl<A: Actor> fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle<{}>({})", A::CLASS, Self::id(self))
    }
}

impl<A: Actor> PartialEq for ActorHandle<A> {
    fn eq(&self, other: &Self) -> bool {
        Self::id(self) == Self::id(other)
    }
}
impl<A: Actor> Eq for ActorHandle<A> {}

impl<A: Actor> std::hash::Hash for ActorHandle<A> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Self::id(self).hash(state)
    }
}

impl<A: Actor> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.methods.raw().serialize(s)
    }
}

impl<'de, A: Actor> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawActor::deserialize(d).map(Self::from_raw)
    }
}

/// Ends an actor at once: calls queued or running fail with
/// [`TaskError::ActorKilled`], later calls too, and it is not restarted (Ray's
/// `ray.kill(actor)`).
///
/// ```no_run
/// # pub struct Counter;
/// # #[shoal::actor]
/// # impl Counter { pub fn new() -> Self { Counter } pub fn get(&self) -> u64 { 0 } }
/// use shoal::{GetError, TaskError};
/// let counter = Counter::remote();
/// shoal::kill(&counter);
/// assert!(matches!(
///     counter.get().get_blocking(),
///     Err(GetError::Task(TaskError::ActorKilled { .. }))
/// ));
/// ```
pub fn kill<A: Actor>(actor: &ActorHandle<A>) {
    kill_raw(actor.methods.raw(), true);
}

/// Kills the actor's process as if it crashed: calls in flight fail, and it is restarted if
/// it has restarts left (Ray's `ray.kill(actor, no_restart=False)`).
///
/// ```no_run
/// # pub struct Service;
/// # #[shoal::actor] impl Service { pub fn new() -> Self { Service } pub fn ping(&self) {} }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let service = Service::options(shoal::ActorOptions::new().max_restarts(1)).remote();
/// shoal::kill_and_restart(&service); // a fresh process, its state made anew by `new`
/// service.ping().get_blocking()?;    // runs on the restarted actor
/// # Ok(()) }
/// ```
pub fn kill_and_restart<A: Actor>(actor: &ActorHandle<A>) {
    kill_raw(actor.methods.raw(), false);
}

fn kill_raw(actor: &RawActor, no_restart: bool) {
    runtime::get().push(ToNode::KillActor {
        actor: actor.id(),
        no_restart,
        token: actor.token(),
    });
}

/// Ends the actor whose method calls it, for good (Ray's `ray.actor.exit_actor`): the
/// method does not return, its call and every call queued or made later fail with
/// [`TaskError::ActorKilled`], the actor is not restarted whatever its `max_restarts`, and
/// its process ends (its node stops it). Other threads of the actor stop with it.
///
/// ```no_run
/// # pub struct Job;
/// #[shoal::actor]
/// impl Job {
///     pub fn new() -> Self { Job }
///     pub fn finish(&self) {
///         shoal::exit_actor();
///     }
/// }
/// ```
///
/// # Panics
///
/// Outside an actor's process (in a program, or in a task).
pub fn exit_actor() -> ! {
    assert!(
        crate::worker::host::hosted().is_some(),
        "shoal::exit_actor is called outside an actor"
    );
    runtime::get().push(ToNode::ExitActor);
    // The node stops this process; nothing of the actor runs on this thread meanwhile.
    loop {
        std::thread::park();
    }
}

/// The live actor named `name` in the default namespace, as a handle of class `A` (Ray's
/// `ray.get_actor(name)`). See [`get_actor_in`] for a namespace.
///
/// ```no_run
/// # pub struct Counter;
/// # #[shoal::actor] impl Counter { pub fn new() -> Self { Counter } pub fn incr(&self) {} }
/// #[shoal::remote]
/// fn record_hit() {
///     // Any task, actor or program, on any peer of the mesh, finds the actor by its name.
///     if let Ok(hits) = shoal::get_actor::<Counter>("hits") {
///         hits.incr();
///     }
/// }
/// ```
pub fn get_actor<A: Actor>(name: &str) -> Result<ActorHandle<A>, ActorError> {
    get_actor_in("", name)
}

/// The live actor named `name` in `namespace` (see [`ActorOptions::namespace`]), as a handle
/// of class `A` (Ray's `ray.get_actor(name, namespace=…)`).
///
/// ```no_run
/// # pub struct Cart;
/// # #[shoal::actor] impl Cart { pub fn new() -> Self { Cart } }
/// use shoal::ActorError;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// match shoal::get_actor_in::<Cart>("shop", "cart-17") {
///     Ok(cart) => println!("found {}", shoal::ActorHandle::id(&cart)),
///     Err(ActorError::NotFound(name)) => println!("no cart {name} in the shop"),
///     Err(e) => return Err(e.into()),
/// }
/// # Ok(()) }
/// ```
pub fn get_actor_in<A: Actor>(namespace: &str, name: &str) -> Result<ActorHandle<A>, ActorError> {
    let ctx = runtime::get();
    let qualified = shoal_protocol::qualified_name(namespace, name);
    let (info, held) = ctx.lookup_actor(&qualified).map_err(ActorError::Create)?;
    let name = shoal_protocol::display_name(&qualified);
    let name = name.as_str();
    // The node made this process one more holder of the handle object: counted from here.
    let owner = info.as_ref().map_or(ctx.client, |i| i.owner);
    let handle = held.map(|id| {
        if !ctx.add_ref(id, None) {
            // This process held it already: its one hold stands for all its handles.
            ctx.push(ToNode::Release { ids: vec![id] });
        }
        ObjectRef::<(ActorId, ActorToken)>::from_raw(RawRef::counted(id, owner))
    });
    let Some(info) = info else {
        return Err(ActorError::NotFound(name.to_string()));
    };
    if info.class != A::CLASS {
        return Err(ActorError::WrongClass {
            name: name.to_string(),
            found: info.class,
            expected: A::CLASS.to_string(),
        });
    }
    Ok(ActorHandle::from_raw(RawActor::new(
        info.actor_id,
        info.token,
        handle,
        0,
    )))
}
