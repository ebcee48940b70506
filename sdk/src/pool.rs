//! [`ActorPool`]: work spread over a fixed set of actors, one call per actor at a time (Ray's
//! `ray.util.ActorPool`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::task::Poll;

use serde::de::DeserializeOwned;
use shoal_protocol::ObjectId;

use crate::actor::{Actor, ActorHandle};
use crate::error::GetError;
use crate::object_ref::ObjectRef;
use crate::runtime;

/// A call waiting for an actor of the pool: what it does with the actor it is given.
type Job<A, R> = Box<dyn FnOnce(&ActorHandle<A>) -> ObjectRef<R> + Send>;

/// Where a submitted call is.
enum Call<A: Actor, R> {
    /// Waiting for a free actor.
    Waiting(Job<A, R>),
    /// Made on `actor`, which is busy until it ends.
    Running(ObjectRef<R>, ActorHandle<A>),
    /// Ended (its actor is free again); its result not yet taken.
    Ended(ObjectRef<R>),
}

/// Work spread over a fixed set of actors, each running one call of the pool's at a time
/// (Ray's `ActorPool`).
///
/// Calls are [`submit`](Self::submit)ted as closures that call one method of the actor they
/// are given; a call waits in the pool until an actor is free. Results are taken in the
/// order submitted ([`get_next`](Self::get_next)) or as they end
/// ([`get_next_unordered`](Self::get_next_unordered)); [`map`](Self::map_blocking) does
/// both for many values at once. Unlike Ray's, an actor whose call ended is given the next
/// waiting call as soon as the pool sees it end, not only once its result is taken.
///
/// A call that fails (its method panicked, its actor died) gives its error in its place;
/// the actor stays in the pool (drop it with [`pop_idle`](Self::pop_idle) if it is dead).
///
/// # Panics
///
/// Taking a result panics when that call waits for an actor and the pool has none (they
/// were all popped).
///
/// ```no_run
/// # pub struct Doubler;
/// # #[shoal::actor] impl Doubler { pub fn new() -> Self { Doubler } pub fn double(&self, x: u64) -> u64 { 2 * x } }
/// # fn main() -> Result<(), shoal::GetError> {
/// let actors = (0..4).map(|_| Doubler::remote());
/// let mut pool = shoal::ActorPool::new(actors);
/// let doubled: Vec<u64> = pool
///     .map_blocking(|a, x| a.double(x), 0..100u64)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(doubled[99], 198);
/// # Ok(()) }
/// ```
pub struct ActorPool<A: Actor, R> {
    idle: VecDeque<ActorHandle<A>>,
    /// Every call whose result is not yet taken, by the order it was submitted in.
    calls: BTreeMap<u64, Call<A, R>>,
    /// The calls waiting for an actor, in order.
    waiting: VecDeque<u64>,
    next: u64,
}

impl<A: Actor, R> fmt::Debug for ActorPool<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorPool")
            .field("idle", &self.idle.len())
            .field("calls", &self.calls.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl<A: Actor, R> ActorPool<A, R> {
    /// A pool of `actors`, all free.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// use shoal::ActorPool;
    /// let pool: ActorPool<Doubler, u64> = ActorPool::new((0..4).map(|_| Doubler::remote()));
    /// assert!(pool.has_free());
    /// ```
    pub fn new(actors: impl IntoIterator<Item = ActorHandle<A>>) -> Self {
        Self {
            idle: actors.into_iter().collect(),
            calls: BTreeMap::new(),
            waiting: VecDeque::new(),
            next: 0,
        }
    }

    /// Calls `call` with a free actor of the pool: now if one is free, else once one is
    /// (as the pool's results are taken). `call` should make one call of the actor and
    /// return its ref.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new([Doubler::remote(), Doubler::remote()]);
    /// for x in [1, 2, 3] {
    ///     pool.submit(move |a| a.double(x)); // the third waits for a free actor
    /// }
    /// assert_eq!(pool.get_next_blocking().transpose()?, Some(2));
    /// # Ok(()) }
    /// ```
    pub fn submit(&mut self, call: impl FnOnce(&ActorHandle<A>) -> ObjectRef<R> + Send + 'static) {
        let seq = self.next;
        self.next += 1;
        self.calls.insert(seq, Call::Waiting(Box::new(call)));
        self.waiting.push_back(seq);
        self.dispatch();
    }

    /// Whether a submitted call's result is still to be taken.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new([Doubler::remote()]);
    /// pool.submit(|a| a.double(21));
    /// while pool.has_next() {
    ///     if let Some(result) = pool.get_next_blocking() {
    ///         println!("{}", result?);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn has_next(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Whether an actor is free (no call waits for one).
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// let mut pool = shoal::ActorPool::new([Doubler::remote()]);
    /// pool.submit(|a| a.double(1));
    /// if !pool.has_free() {
    ///     println!("every actor is busy: a new call would wait");
    /// }
    /// ```
    pub fn has_free(&self) -> bool {
        !self.idle.is_empty()
    }

    /// Takes a free actor out of the pool, if one is.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// let mut pool: shoal::ActorPool<Doubler, u64> =
    ///     shoal::ActorPool::new((0..4).map(|_| Doubler::remote()));
    /// // Use one actor alone for a while.
    /// if let Some(actor) = pool.pop_idle() {
    ///     let r = actor.double(5);
    ///     # let _ = r;
    ///     pool.push(actor); // and give it back
    /// }
    /// ```
    pub fn pop_idle(&mut self) -> Option<ActorHandle<A>> {
        self.idle.pop_front()
    }

    /// Adds an actor to the pool (it takes a waiting call at once, if one waits).
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// let mut pool = shoal::ActorPool::new([Doubler::remote()]);
    /// for x in 0..100 {
    ///     pool.submit(move |a| a.double(x));
    /// }
    /// pool.push(Doubler::remote()); // one more actor: takes a waiting call at once
    /// ```
    pub fn push(&mut self, actor: ActorHandle<A>) {
        self.idle.push_back(actor);
        self.dispatch();
    }

    /// Gives waiting calls the free actors.
    fn dispatch(&mut self) {
        while !self.idle.is_empty() {
            let Some(seq) = self.waiting.pop_front() else {
                return;
            };
            let Some(Call::Waiting(job)) = self.calls.remove(&seq) else {
                continue;
            };
            let Some(actor) = self.idle.pop_front() else {
                return;
            };
            let r = job(&actor);
            self.calls.insert(seq, Call::Running(r, actor));
        }
    }

    /// The ids of the running calls' results.
    fn running(&self) -> Vec<ObjectId> {
        self.calls
            .values()
            .filter_map(|c| match c {
                Call::Running(r, _) => Some(r.id()),
                _ => None,
            })
            .collect()
    }

    /// Frees the actors of the calls that ended, and gives them waiting calls.
    fn reap(&mut self) {
        let ctx = runtime::get();
        let ended: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c, Call::Running(r, _) if ctx.is_done(&r.id())))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in ended {
            if let Some(Call::Running(r, actor)) = self.calls.remove(&seq) {
                self.calls.insert(seq, Call::Ended(r));
                self.idle.push_back(actor);
            }
        }
        self.dispatch();
    }

    /// The oldest call not yet taken, once it ended: `None` if there is none, else whether
    /// it ended (freeing the actors of every call that ended).
    fn next_ended(&mut self, ordered: bool) -> Option<Option<u64>> {
        self.reap();
        let ended = |c: &Call<A, R>| matches!(c, Call::Ended(_));
        if ordered {
            let (seq, call) = self.calls.iter().next()?;
            Some(ended(call).then_some(*seq))
        } else if self.calls.is_empty() {
            None
        } else {
            Some(self.calls.iter().find(|(_, c)| ended(c)).map(|(s, _)| *s))
        }
    }

    /// Takes the ended call `seq`'s ref.
    fn take(&mut self, seq: u64) -> ObjectRef<R> {
        match self.calls.remove(&seq) {
            Some(Call::Ended(r)) => r,
            _ => unreachable!("only ended calls are taken"),
        }
    }

    /// The ref of the call `next_ended` names if it has ended, else the running calls to
    /// wait for; `None` if no call is left.
    fn step(&mut self, ordered: bool) -> Option<Result<ObjectRef<R>, Vec<ObjectId>>> {
        match self.next_ended(ordered)? {
            Some(seq) => Some(Ok(self.take(seq))),
            None => {
                let running = self.running();
                assert!(
                    !running.is_empty(),
                    "an ActorPool with no actors cannot run the calls submitted to it"
                );
                Some(Err(running))
            }
        }
    }

    /// Blocks until the call `next_ended` names has ended; its ref.
    fn next_blocking(&mut self, ordered: bool) -> Option<ObjectRef<R>> {
        loop {
            match self.step(ordered)? {
                Ok(r) => return Some(r),
                Err(running) => runtime::get().wait_many(&running, 1, None),
            }
        }
    }

    /// Waits until the call `next_ended` names has ended; its ref. Works under any async
    /// executor.
    async fn next_async(&mut self, ordered: bool) -> Option<ObjectRef<R>> {
        loop {
            let running = match self.step(ordered)? {
                Ok(r) => return Some(r),
                Err(running) => running,
            };
            let ctx = runtime::get();
            std::future::poll_fn(|cx| {
                let mut any = false;
                for id in &running {
                    any |= ctx.poll_cell(*id, Some(cx.waker()), false).is_ready();
                }
                if any {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

impl<A: Actor, R: DeserializeOwned> ActorPool<A, R> {
    /// The result of the oldest call whose result is not yet taken (`None` if there is
    /// none), blocking until it has ended.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new([Doubler::remote(), Doubler::remote()]);
    /// pool.submit(|a| a.double(1));
    /// pool.submit(|a| a.double(2));
    /// assert_eq!(pool.get_next_blocking().transpose()?, Some(2)); // in the order submitted
    /// assert_eq!(pool.get_next_blocking().transpose()?, Some(4));
    /// assert!(pool.get_next_blocking().is_none());
    /// # Ok(()) }
    /// ```
    pub fn get_next_blocking(&mut self) -> Option<Result<R, GetError>> {
        Some(self.next_blocking(true)?.get_blocking())
    }

    /// The result of a call that ended (the oldest of those), blocking until one has;
    /// `None` if no call's result is still to be taken.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new([Doubler::remote(), Doubler::remote()]);
    /// pool.submit(|a| a.double(1));
    /// pool.submit(|a| a.double(2));
    /// let mut sum = 0;
    /// while let Some(result) = pool.get_next_unordered_blocking() {
    ///     sum += result?; // whichever ended first
    /// }
    /// assert_eq!(sum, 6);
    /// # Ok(()) }
    /// ```
    pub fn get_next_unordered_blocking(&mut self) -> Option<Result<R, GetError>> {
        Some(self.next_blocking(false)?.get_blocking())
    }

    /// [`get_next_blocking`](Self::get_next_blocking), awaited.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # async fn run() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new([Doubler::remote()]);
    /// pool.submit(|a| a.double(21));
    /// assert_eq!(pool.get_next().await.transpose()?, Some(42));
    /// # Ok(()) }
    /// ```
    pub async fn get_next(&mut self) -> Option<Result<R, GetError>> {
        let r = self.next_async(true).await?;
        Some(r.get().await)
    }

    /// [`get_next_unordered_blocking`](Self::get_next_unordered_blocking), awaited.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # async fn run() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new([Doubler::remote(), Doubler::remote()]);
    /// for x in 0..10 {
    ///     pool.submit(move |a| a.double(x));
    /// }
    /// while let Some(result) = pool.get_next_unordered().await {
    ///     println!("{}", result?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_next_unordered(&mut self) -> Option<Result<R, GetError>> {
        let r = self.next_async(false).await?;
        Some(r.get().await)
    }

    /// Submits `call` for each of `values` and returns their results in the order of
    /// `values`, each as soon as it (and those before it) have ended. Results of calls
    /// submitted before are taken first.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new((0..4).map(|_| Doubler::remote()));
    /// let doubled = pool
    ///     .map_blocking(|a, x| a.double(x), [1, 2, 3])
    ///     .collect::<Result<Vec<u64>, _>>()?;
    /// assert_eq!(doubled, vec![2, 4, 6]);
    /// # Ok(()) }
    /// ```
    pub fn map_blocking<T: Send + 'static>(
        &mut self,
        call: impl Fn(&ActorHandle<A>, T) -> ObjectRef<R> + Clone + Send + 'static,
        values: impl IntoIterator<Item = T>,
    ) -> impl Iterator<Item = Result<R, GetError>> + '_ {
        self.submit_all(call, values);
        std::iter::from_fn(move || self.get_next_blocking())
    }

    /// [`map_blocking`](Self::map_blocking), with the results in the order they end.
    ///
    /// ```no_run
    /// # pub struct Doubler;
    /// # #[shoal::actor] impl Doubler {
    /// #     pub fn new() -> Self { Doubler }
    /// #     pub fn double(&self, x: u64) -> u64 { 2 * x }
    /// # }
    /// # fn main() -> Result<(), shoal::GetError> {
    /// let mut pool = shoal::ActorPool::new((0..4).map(|_| Doubler::remote()));
    /// let mut doubled = pool
    ///     .map_unordered_blocking(|a, x| a.double(x), [1, 2, 3])
    ///     .collect::<Result<Vec<u64>, _>>()?;
    /// doubled.sort();
    /// assert_eq!(doubled, vec![2, 4, 6]);
    /// # Ok(()) }
    /// ```
    pub fn map_unordered_blocking<T: Send + 'static>(
        &mut self,
        call: impl Fn(&ActorHandle<A>, T) -> ObjectRef<R> + Clone + Send + 'static,
        values: impl IntoIterator<Item = T>,
    ) -> impl Iterator<Item = Result<R, GetError>> + '_ {
        self.submit_all(call, values);
        std::iter::from_fn(move || self.get_next_unordered_blocking())
    }

    fn submit_all<T: Send + 'static>(
        &mut self,
        call: impl Fn(&ActorHandle<A>, T) -> ObjectRef<R> + Clone + Send + 'static,
        values: impl IntoIterator<Item = T>,
    ) {
        for v in values {
            let call = call.clone();
            self.submit(move |a| call(a, v));
        }
    }
}
