//! The actor rows of BENCH.md, and `multi_client_tasks_async` (whose clients are actors): the
//! same work as `ray microbenchmark`'s tests of the same names.
//!
//! A target actor ([`Target`], or [`AsyncTarget`] for the `async_actor` rows) answers a
//! "small actor call" with the 2-byte value `b"ok"`. Callers other than the driver are
//! [`Client`] actors or the `*_task` remote functions below; they check every result and
//! report how many calls they made, so that the driver can check the count.
//!
//! A row attaches to the node, creates its actors (untimed), checks with one call under
//! [`FIRST_OP_TIMEOUT`] that each answers, measures, then kills its actors ([`RowActors`])
//! and waits for the node to catch up ([`drain`]). Every later get waits at most
//! [`OP_TIMEOUT`], so that a lost reply fails the row instead of hanging the run.

use std::ops::Deref;
use std::time::Duration;

use anyhow::{ensure, Context as _, Error, Result};
use shoal::{Actor, ActorHandle, ActorOptions, ObjectRef};

use crate::harness::{Bench, Registry, Unit};
use crate::shoal_rows::{connect, drain, noop, FIRST_OP_TIMEOUT};

/// Round trips per batch of the `_sync` rows (the harness reads the clock once per batch).
const SYNC_CALLS_PER_BATCH: u64 = 100;
/// Calls per batch of the 1:1 `_async` rows (Ray's figure).
const CALLS_PER_BATCH: u32 = 1_000;
/// Max concurrency of the actor of `1_1_actor_calls_concurrent`.
const CONCURRENT_MAX: u32 = 16;
/// Calls to each target actor per batch of the 1:n rows.
const CALLS_PER_TARGET: u32 = 5_000;
/// Caller tasks per batch of the n:n rows.
const NN_CALLERS: usize = 4;
/// Calls each caller task makes per batch of the n:n rows.
const CALLS_PER_CALLER: u32 = 5_000;
/// Calls each client makes per batch of `n_n_actor_calls_with_arg_async`.
const ARG_CALLS_PER_CLIENT: u32 = 1_000;
/// Client actors of `multi_client_tasks_async`.
const TASK_CLIENTS: usize = 4;
/// No-op tasks each client submits per batch of `multi_client_tasks_async`.
const TASKS_PER_CLIENT: u32 = 10_000;
/// How long any get after the first may wait before the row fails. Far above a batch's time
/// (the longest, `multi_client_tasks_async`'s 40,000 tasks, takes seconds).
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// Registers the actor rows, in BENCH.md's order.
pub fn register(reg: &mut Registry) {
    reg.add(
        "multi_client_tasks_async",
        Unit::OpsPerSec,
        "4 actors, each submitting 10,000 no-op tasks and getting them; counted per task",
        multi_client_tasks_async,
    );
    reg.add(
        "1_1_actor_calls_sync",
        Unit::OpsPerSec,
        "one small actor call, get its result",
        one_to_one::<Target, SyncCalls>,
    );
    reg.add(
        "actor_call_latency_us_p50",
        Unit::Micros,
        "median time of one small call to an actor in another process on this node, from the \
         call to its result in hand (Monarch's measure)",
        call_latency::<50>,
    );
    reg.add(
        "actor_call_latency_us_p99",
        Unit::Micros,
        "99th percentile of the time of one small call to an actor in another process on this \
         node, from the call to its result in hand",
        call_latency::<99>,
    );
    reg.add(
        "1_1_actor_calls_async",
        Unit::OpsPerSec,
        "1,000 small calls to one actor, then get all; per call",
        one_to_one::<Target, AsyncCalls>,
    );
    reg.add(
        "1_1_actor_calls_concurrent",
        Unit::OpsPerSec,
        "1,000 small calls to one actor with max concurrency 16, then get all; per call",
        one_to_one::<Target, ConcurrentCalls>,
    );
    reg.add(
        "1_n_actor_calls_async",
        Unit::OpsPerSec,
        "one client actor making 5,000 calls to each of cores/2 actors, then getting all; \
         per call",
        one_to_n::<Target>,
    );
    reg.add(
        "n_n_actor_calls_async",
        Unit::OpsPerSec,
        "4 tasks, each making 5,000 calls spread over cores/2 actors; per call",
        n_to_n::<Target>,
    );
    reg.add(
        "n_n_actor_calls_with_arg_async",
        Unit::OpsPerSec,
        "cores/2 client actors, each making 1,000 calls with a put object as argument to its \
         own actor; per call",
        n_to_n_with_arg,
    );
    reg.add(
        "1_1_async_actor_calls_sync",
        Unit::OpsPerSec,
        "one small call to an actor with async methods, get its result",
        one_to_one::<AsyncTarget, SyncCalls>,
    );
    reg.add(
        "1_1_async_actor_calls_async",
        Unit::OpsPerSec,
        "1,000 small calls to one actor with async methods, then get all; per call",
        one_to_one::<AsyncTarget, AsyncCalls>,
    );
    reg.add(
        "1_1_async_actor_calls_with_args_async",
        Unit::OpsPerSec,
        "1,000 small calls with an integer argument to one actor with async methods, then \
         get all; per call",
        one_to_one::<AsyncTarget, CallsWithArgs>,
    );
    reg.add(
        "1_n_async_actor_calls_async",
        Unit::OpsPerSec,
        "one client actor making 5,000 calls to each of cores/2 actors with async methods, \
         then getting all; per call",
        one_to_n::<AsyncTarget>,
    );
    reg.add(
        "n_n_async_actor_calls_async",
        Unit::OpsPerSec,
        "4 tasks, each making 5,000 calls spread over cores/2 actors with async methods; per \
         call",
        n_to_n::<AsyncTarget>,
    );
}

// ---- The actors and the callers' code (runs in worker processes too) ----

/// The target of the plain actor rows: synchronous small calls.
#[derive(Default)]
pub struct Target;

#[shoal::actor]
impl Target {
    pub fn new() -> Self {
        Target
    }

    /// A small actor call: returns `b"ok"`.
    pub fn small(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// A small actor call with an argument (a put object), which it ignores.
    pub fn small_arg(&self, _x: Vec<u8>) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// The target of the `async_actor` rows: the same calls as `async fn`s (so its max
/// concurrency defaults to 1000, as Ray's async actors).
#[derive(Default)]
pub struct AsyncTarget;

#[shoal::actor]
impl AsyncTarget {
    pub fn new() -> Self {
        AsyncTarget
    }

    /// A small actor call: returns `b"ok"`.
    pub async fn small(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// A small actor call with an integer argument, which it ignores (Ray's
    /// `small_value_with_arg(i)`).
    pub async fn small_with_arg(&self, _x: u64) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// A caller actor: makes calls (or submits tasks) when asked, gets and checks every result,
/// and returns how many it made. Errors come back as a message.
#[derive(Default)]
pub struct Client;

#[shoal::actor]
impl Client {
    pub fn new() -> Self {
        Client
    }

    /// `n` small calls to each target in turn, then gets them all (Ray's
    /// `Client.small_value_batch`).
    pub fn run(&self, targets: Vec<ActorHandle<Target>>, n: u32) -> Result<u64, String> {
        calls_to_each(&targets, n)
    }

    /// [`run`](Client::run) on targets with async methods.
    pub fn run_async_targets(
        &self,
        targets: Vec<ActorHandle<AsyncTarget>>,
        n: u32,
    ) -> Result<u64, String> {
        calls_to_each(&targets, n)
    }

    /// Puts a small object, then makes `n` calls to `target` with it as the argument, then
    /// gets them all (Ray's `Client.small_value_batch_arg`).
    pub fn run_with_arg(&self, target: ActorHandle<Target>, n: u32) -> Result<u64, String> {
        let x = shoal::put(&b"x".to_vec()).map_err(|e| format!("put failed: {e}"))?;
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..n).map(|_| target.small_arg(&x)).collect();
        check_all(&refs)
    }

    /// Submits `n` no-op tasks, then gets them all.
    pub fn submit_tasks(&self, n: u32) -> Result<u64, String> {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..n).map(|_| noop.remote()).collect();
        check_all(&refs)
    }
}

/// A caller task of `n_n_actor_calls_async`: `n` calls spread over the targets, then gets
/// them all.
#[shoal::remote]
fn spread_calls_task(targets: Vec<ActorHandle<Target>>, n: u32) -> Result<u64, String> {
    calls_spread(&targets, n)
}

/// A caller task of `n_n_async_actor_calls_async`.
#[shoal::remote]
fn spread_async_calls_task(targets: Vec<ActorHandle<AsyncTarget>>, n: u32) -> Result<u64, String> {
    calls_spread(&targets, n)
}

/// What the rows need of a target class, so that one row function serves both.
trait TargetClass: Actor {
    /// The class's small call.
    fn small_call(target: &ActorHandle<Self>) -> ObjectRef<Vec<u8>>;
    /// A new actor of the class, with `options` if any.
    fn start(options: Option<ActorOptions>) -> Result<ActorHandle<Self>>;
    /// Asks `client` to make `n` calls to each target ([`Client::run`]).
    fn client_run(
        client: &ActorHandle<Client>,
        targets: Vec<ActorHandle<Self>>,
        n: u32,
    ) -> ObjectRef<Result<u64, String>>;
    /// Submits a caller task making `n` calls spread over the targets.
    fn spread_task(targets: Vec<ActorHandle<Self>>, n: u32) -> ObjectRef<Result<u64, String>>;
}

impl TargetClass for Target {
    fn small_call(target: &ActorHandle<Self>) -> ObjectRef<Vec<u8>> {
        target.small()
    }

    fn start(options: Option<ActorOptions>) -> Result<ActorHandle<Self>> {
        Ok(match options {
            None => Target::remote(),
            Some(o) => Target::options(o)
                .try_remote()
                .context("creating a target actor")?,
        })
    }

    fn client_run(
        client: &ActorHandle<Client>,
        targets: Vec<ActorHandle<Self>>,
        n: u32,
    ) -> ObjectRef<Result<u64, String>> {
        client.run(targets, n)
    }

    fn spread_task(targets: Vec<ActorHandle<Self>>, n: u32) -> ObjectRef<Result<u64, String>> {
        spread_calls_task.remote(targets, n)
    }
}

impl TargetClass for AsyncTarget {
    fn small_call(target: &ActorHandle<Self>) -> ObjectRef<Vec<u8>> {
        target.small()
    }

    fn start(options: Option<ActorOptions>) -> Result<ActorHandle<Self>> {
        Ok(match options {
            None => AsyncTarget::remote(),
            Some(o) => AsyncTarget::options(o)
                .try_remote()
                .context("creating a target actor")?,
        })
    }

    fn client_run(
        client: &ActorHandle<Client>,
        targets: Vec<ActorHandle<Self>>,
        n: u32,
    ) -> ObjectRef<Result<u64, String>> {
        client.run_async_targets(targets, n)
    }

    fn spread_task(targets: Vec<ActorHandle<Self>>, n: u32) -> ObjectRef<Result<u64, String>> {
        spread_async_calls_task.remote(targets, n)
    }
}

/// Gets one small call's (or no-op task's) result, at most [`OP_TIMEOUT`], and checks it.
fn check(r: &ObjectRef<Vec<u8>>) -> Result<(), String> {
    match r.get_blocking_timeout(OP_TIMEOUT) {
        Ok(v) if v == b"ok" => Ok(()),
        Ok(v) => Err(format!("a call returned {v:?}, not b\"ok\"")),
        Err(e) => Err(format!("a call failed: {e}")),
    }
}

/// Gets and checks every result, in order; how many there were.
fn check_all(refs: &[ObjectRef<Vec<u8>>]) -> Result<u64, String> {
    for r in refs {
        check(r)?;
    }
    Ok(refs.len() as u64)
}

/// `n` calls to each target in turn, then gets them all.
fn calls_to_each<T: TargetClass>(targets: &[ActorHandle<T>], n: u32) -> Result<u64, String> {
    let refs: Vec<ObjectRef<Vec<u8>>> = targets
        .iter()
        .flat_map(|t| (0..n).map(move |_| T::small_call(t)))
        .collect();
    check_all(&refs)
}

/// `n` calls, call `i` to target `i % targets.len()`, then gets them all (Ray's `work`).
fn calls_spread<T: TargetClass>(targets: &[ActorHandle<T>], n: u32) -> Result<u64, String> {
    if targets.is_empty() {
        return Err("no target actors".to_owned());
    }
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n as usize)
        .map(|i| T::small_call(&targets[i % targets.len()]))
        .collect();
    check_all(&refs)
}

// ---- The driver's side ----

/// The actors of a row: killed when dropped, at the end of the row or when it fails.
struct RowActors<A: Actor>(Vec<ActorHandle<A>>);

impl<A: Actor> Deref for RowActors<A> {
    type Target = [ActorHandle<A>];
    fn deref(&self) -> &[ActorHandle<A>] {
        &self.0
    }
}

impl<A: Actor> Drop for RowActors<A> {
    fn drop(&mut self) {
        for a in &self.0 {
            shoal::kill(a);
        }
    }
}

/// The target actors of the 1:n and n:n rows: one per two cores, at least one.
fn half_cores() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

/// `n` target actors, each checked with one call under [`FIRST_OP_TIMEOUT`].
fn start_targets<T: TargetClass>(n: usize, options: Option<ActorOptions>) -> Result<RowActors<T>> {
    let mut targets = RowActors(Vec::with_capacity(n));
    for _ in 0..n {
        targets.0.push(T::start(options.clone())?);
    }
    for t in targets.iter() {
        let v = T::small_call(t)
            .get_blocking_timeout(FIRST_OP_TIMEOUT)
            .context("the first call to a target actor")?;
        ensure!(
            v == b"ok",
            "the first call to a target actor returned {v:?}, not b\"ok\""
        );
    }
    Ok(targets)
}

/// `n` client actors.
fn start_clients(n: usize) -> RowActors<Client> {
    RowActors((0..n).map(|_| Client::remote()).collect())
}

/// Gets a caller's count (at most `timeout`) and checks it is `expected`.
fn caller_count(
    r: &ObjectRef<Result<u64, String>>,
    timeout: Duration,
    expected: u64,
) -> Result<u64> {
    let n = r
        .get_blocking_timeout(timeout)?
        .map_err(Error::msg)
        .context("a caller failed")?;
    ensure!(n == expected, "a caller made {n} calls, not {expected}");
    Ok(n)
}

/// One batch of a 1:1 row, on a target of class `T`.
trait OneToOne<T: TargetClass> {
    /// Options of the target actor, if not the defaults.
    fn options() -> Option<ActorOptions> {
        None
    }
    /// One batch; how many calls it made.
    fn batch(target: &ActorHandle<T>) -> Result<u64>;
}

/// `_sync`: one call and get, [`SYNC_CALLS_PER_BATCH`] times.
struct SyncCalls;
/// `_async`: [`CALLS_PER_BATCH`] calls, then get all.
struct AsyncCalls;
/// `_concurrent`: [`AsyncCalls`] on an actor with max concurrency [`CONCURRENT_MAX`].
struct ConcurrentCalls;
/// `_with_args_async`: [`AsyncCalls`] with an integer argument.
struct CallsWithArgs;

impl<T: TargetClass> OneToOne<T> for SyncCalls {
    fn batch(target: &ActorHandle<T>) -> Result<u64> {
        for _ in 0..SYNC_CALLS_PER_BATCH {
            check(&T::small_call(target)).map_err(Error::msg)?;
        }
        Ok(SYNC_CALLS_PER_BATCH)
    }
}

impl<T: TargetClass> OneToOne<T> for AsyncCalls {
    fn batch(target: &ActorHandle<T>) -> Result<u64> {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..CALLS_PER_BATCH)
            .map(|_| T::small_call(target))
            .collect();
        check_all(&refs).map_err(Error::msg)
    }
}

impl<T: TargetClass> OneToOne<T> for ConcurrentCalls {
    fn options() -> Option<ActorOptions> {
        Some(ActorOptions::new().max_concurrency(CONCURRENT_MAX))
    }
    fn batch(target: &ActorHandle<T>) -> Result<u64> {
        <AsyncCalls as OneToOne<T>>::batch(target)
    }
}

impl OneToOne<AsyncTarget> for CallsWithArgs {
    fn batch(target: &ActorHandle<AsyncTarget>) -> Result<u64> {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..u64::from(CALLS_PER_BATCH))
            .map(|i| target.small_with_arg(i))
            .collect();
        check_all(&refs).map_err(Error::msg)
    }
}

/// The 1:1 rows: the driver calls one target actor.
fn one_to_one<T: TargetClass, W: OneToOne<T>>(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let target = start_targets::<T>(1, W::options())?;
    b.run_batches(|| W::batch(&target[0]))?;
    drop(target);
    drain(&shoal)
}

/// `actor_call_latency_us_p<P>`: small calls to one actor, one at a time, each timed.
fn call_latency<const P: u32>(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let target = start_targets::<Target>(1, None)?;
    b.run_percentile(f64::from(P), |d| {
        let start = std::time::Instant::now();
        let mut times = Vec::new();
        while start.elapsed() < d {
            let t = std::time::Instant::now();
            check(&target[0].small()).map_err(Error::msg)?;
            times.push(t.elapsed());
        }
        Ok(times)
    })?;
    drop(target);
    drain(&shoal)
}

/// The 1:n rows: one client actor calls cores/2 target actors.
fn one_to_n<T: TargetClass>(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let targets = start_targets::<T>(half_cores(), None)?;
    let client = start_clients(1);
    let handles: Vec<ActorHandle<T>> = targets.to_vec();
    eprintln!(
        "{}: 1 client actor, {} target actor(s)",
        b.name(),
        handles.len()
    );
    caller_count(
        &T::client_run(&client[0], handles.clone(), 1),
        FIRST_OP_TIMEOUT,
        handles.len() as u64,
    )
    .context("the client's first batch")?;
    let per_batch = u64::from(CALLS_PER_TARGET) * handles.len() as u64;
    b.run_batches(|| {
        caller_count(
            &T::client_run(&client[0], handles.clone(), CALLS_PER_TARGET),
            OP_TIMEOUT,
            per_batch,
        )
    })?;
    drop((client, targets));
    drain(&shoal)
}

/// The n:n rows: [`NN_CALLERS`] tasks call cores/2 target actors.
fn n_to_n<T: TargetClass>(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let targets = start_targets::<T>(half_cores(), None)?;
    let handles: Vec<ActorHandle<T>> = targets.to_vec();
    eprintln!(
        "{}: {NN_CALLERS} caller tasks, {} target actor(s)",
        b.name(),
        handles.len()
    );
    caller_count(&T::spread_task(handles.clone(), 1), FIRST_OP_TIMEOUT, 1)
        .context("the first caller task")?;
    b.run_batches(|| {
        let refs: Vec<ObjectRef<Result<u64, String>>> = (0..NN_CALLERS)
            .map(|_| T::spread_task(handles.clone(), CALLS_PER_CALLER))
            .collect();
        let mut total = 0;
        for r in &refs {
            total += caller_count(r, OP_TIMEOUT, u64::from(CALLS_PER_CALLER))?;
        }
        Ok(total)
    })?;
    drop(targets);
    drain(&shoal)
}

fn n_to_n_with_arg(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let n = half_cores();
    let targets = start_targets::<Target>(n, None)?;
    let clients = start_clients(n);
    eprintln!(
        "{}: {n} client actor(s), each with its own target",
        b.name()
    );
    for (c, t) in clients.iter().zip(targets.iter()) {
        caller_count(&c.run_with_arg(t.clone(), 1), FIRST_OP_TIMEOUT, 1)
            .context("a client's first batch")?;
    }
    b.run_batches(|| {
        let refs: Vec<ObjectRef<Result<u64, String>>> = clients
            .iter()
            .zip(targets.iter())
            .map(|(c, t)| c.run_with_arg(t.clone(), ARG_CALLS_PER_CLIENT))
            .collect();
        let mut total = 0;
        for r in &refs {
            total += caller_count(r, OP_TIMEOUT, u64::from(ARG_CALLS_PER_CLIENT))?;
        }
        Ok(total)
    })?;
    drop((clients, targets));
    drain(&shoal)
}

fn multi_client_tasks_async(b: &mut Bench) -> Result<()> {
    let shoal = connect()?;
    let clients = start_clients(TASK_CLIENTS);
    for c in clients.iter() {
        caller_count(&c.submit_tasks(1), FIRST_OP_TIMEOUT, 1)
            .context("a client's first no-op task")?;
    }
    b.run_batches(|| {
        let refs: Vec<ObjectRef<Result<u64, String>>> = clients
            .iter()
            .map(|c| c.submit_tasks(TASKS_PER_CLIENT))
            .collect();
        let mut total = 0;
        for r in &refs {
            total += caller_count(r, OP_TIMEOUT, u64::from(TASKS_PER_CLIENT))?;
        }
        Ok(total)
    })?;
    drop(clients);
    drain(&shoal)
}
