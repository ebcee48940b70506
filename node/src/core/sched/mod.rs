//! The local scheduler: a state machine over CPU slots, custom resources and worker processes.
//!
//! No I/O and no `.await`: the node feeds it events (`submit`, `worker_connected`,
//! `task_done`, `worker_exited`, …) with the current time, and drains the decisions it made
//! with [`Scheduler::poll_action`]: start a worker, hand a task to a worker, kill a worker,
//! fail a task. Tests drive it with plain values and made-up instants.
//!
//! Model (as Ray's): a task of a given *shape* (binary, resource demand) leases a worker of
//! that binary together with the demanded resources; when the worker finishes and nothing of
//! its shape is queued, the lease ends and the worker goes back to the idle pool. Tasks of a
//! shape known to be short (the moving average of their run time is under
//! [`SchedConfig::short_task`]) are pipelined: up to [`SchedConfig::pipeline_depth`] of them
//! are queued at a leased worker, so the worker never idles between them waiting for the
//! node. Long tasks are never pipelined, so none waits behind another while a slot is free.
//!
//! Actors: an actor's creation (a task id and a shape) waits in a queue of its own until its
//! demand fits; it then leases a worker (an idle one of its binary, or a new process) for the
//! actor's whole life. Actor workers do not count against [`SchedConfig::max_workers`] (their
//! number is bounded by what they hold, as in Ray) and never go back to the pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use shoal_protocol::{BinaryId, IdMap, ResourceSet, TaskError, TaskId, WorkerStatus};

mod devices;
pub mod placement;
#[cfg(test)]
mod tests;

/// A node-local worker number.
pub type WorkerId = u64;

/// The resource whose units are devices that tasks are given by id (Ray's `num_gpus`).
pub const GPU: &str = "GPU";

/// Tuning knobs of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedConfig {
    /// Everything the node has.
    pub total: ResourceSet,
    /// Worker processes at most, over all binaries.
    pub max_workers: usize,
    /// Short tasks queued at one worker at most.
    pub pipeline_depth: usize,
    /// A shape whose tasks take less than this on average is pipelined.
    pub short_task: Duration,
    /// A binary whose workers die this many times in a row before connecting is broken:
    /// its queued tasks fail.
    pub max_start_failures: u32,
    /// The ids of the node's GPU devices (its own `CUDA_VISIBLE_DEVICES`); empty: `0..n`
    /// for the `GPU` of [`total`](Self::total).
    pub gpu_devices: Vec<u32>,
}

/// What [`Scheduler::withdraw`] ended.
#[derive(Debug, Default, PartialEq)]
pub struct Withdrawn {
    /// Tasks that ran on, or were queued for, the resources taken away.
    pub tasks: Vec<TaskId>,
    /// The creation tasks of actors that held, or waited for, them.
    pub actors: Vec<TaskId>,
}

/// A decision for the node to carry out.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a worker process of `binary` with this id.
    Spawn {
        /// The new worker's id.
        worker: WorkerId,
        /// Its executable.
        binary: BinaryId,
    },
    /// Send `task` to `worker`.
    Dispatch {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
    },
    /// Stop `worker` (idle, of a binary no longer needed, or to make room).
    Kill {
        /// The worker.
        worker: WorkerId,
    },
    /// `worker` is connected and reserved for the actor created by `task`: hand it the actor.
    HostActor {
        /// The worker.
        worker: WorkerId,
        /// The actor's creation task.
        task: TaskId,
    },
    /// `task` cannot run here.
    Fail {
        /// The task.
        task: TaskId,
        /// Why.
        error: TaskError,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shape {
    binary: BinaryId,
    demand: ResourceSet,
}

#[derive(Debug)]
enum State {
    /// Spawned, not yet connected; holds a reservation for a queued task of `shape`, if any.
    Starting {
        shape: Option<Shape>,
    },
    /// Spawned for the actor created by `task`, holding `shape.demand`.
    StartingActor {
        task: TaskId,
        shape: Shape,
    },
    /// Hosts the actor created by `task`, holding `shape.demand` until it ends.
    Actor {
        task: TaskId,
        shape: Shape,
    },
    Idle,
    /// Holds `shape.demand` (unless blocked) and runs the tasks in `inflight` in order.
    Leased {
        shape: Shape,
        inflight: VecDeque<(TaskId, Instant)>,
        last_done: Instant,
    },
}

#[derive(Debug)]
struct Worker {
    binary: BinaryId,
    pid: u32,
    state: State,
    /// Waiting inside a task for objects: its lease is lent back to the pool.
    blocked: bool,
    tasks_done: u64,
    /// It ran a function its `max_calls` times: it takes no more tasks, and is stopped once
    /// it holds none.
    retiring: bool,
}

/// The scheduler. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedConfig,
    free: ResourceSet,
    /// Looked up several times per task: the ids' fast hasher (SipHash of a shape, a binary
    /// id and a resource set, cost ~540 instructions).
    queues: IdMap<Shape, VecDeque<TaskId>>,
    /// Shapes in first-seen order, for a stable, fair scan.
    shape_order: Vec<Shape>,
    queued: usize,
    /// In id order, so that choices among workers are the same on every run.
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: WorkerId,
    /// Moving average of task run time per shape, in seconds.
    run_time: IdMap<Shape, f64>,
    start_failures: HashMap<BinaryId, u32>,
    /// Binaries with a live driver; workers of others are not kept.
    live: HashMap<BinaryId, usize>,
    actions: VecDeque<Action>,
    finished: u64,
    /// Actor creations waiting for their demand to fit, in order.
    actor_queue: VecDeque<(TaskId, Shape)>,
    /// Workers dedicated to actors (not counted against `max_workers`).
    actor_workers: usize,
    /// Which GPU devices the workers whose lease holds `GPU` were given.
    devices: devices::Devices,
}

impl Scheduler {
    /// A scheduler with nothing queued and no workers.
    pub fn new(config: SchedConfig) -> Self {
        let gpus = (config.total.get_milli(GPU) / 1000) as usize;
        Self {
            devices: devices::Devices::new(gpus, &config.gpu_devices),
            free: config.total.clone(),
            config,
            queues: IdMap::default(),
            shape_order: Vec::new(),
            queued: 0,
            workers: BTreeMap::new(),
            next_worker: 1,
            run_time: IdMap::default(),
            start_failures: HashMap::new(),
            live: HashMap::new(),
            actions: VecDeque::new(),
            finished: 0,
            actor_queue: VecDeque::new(),
            actor_workers: 0,
        }
    }

    /// The GPU devices `worker` holds for its lease (Ray's GPU ids), and whether some had
    /// to be shared past their capacity: given when first asked for, kept while its lease
    /// holds `GPU`. Devices of workers whose lease no longer holds it go back first.
    pub fn gpu_ids(&mut self, worker: WorkerId) -> (Vec<u32>, bool) {
        let stale: Vec<WorkerId> = self
            .devices
            .holders()
            .filter(|w| self.lease_gpu(*w) == 0)
            .collect();
        for w in stale {
            self.devices.release(w);
        }
        let milli = self.lease_gpu(worker);
        if milli == 0 {
            return (Vec::new(), false);
        }
        // Kept while its lease holds as much (a new lease of another amount is given anew).
        if let Some(ids) = self.devices.held_by(worker, milli) {
            return (ids, false);
        }
        let given = self.devices.assign(worker, milli);
        (given.ids, given.oversubscribed)
    }

    /// The milli-units of `GPU` that `worker`'s lease holds.
    fn lease_gpu(&self, worker: WorkerId) -> u64 {
        let shape = match self.workers.get(&worker).map(|w| &w.state) {
            Some(State::Starting { shape: Some(shape) })
            | Some(State::StartingActor { shape, .. })
            | Some(State::Actor { shape, .. })
            | Some(State::Leased { shape, .. }) => shape,
            _ => return 0,
        };
        shape.demand.get_milli(GPU)
    }

    /// The next decision, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether a driver of `binary` is attached.
    pub fn is_live(&self, binary: BinaryId) -> bool {
        self.live.contains_key(&binary)
    }

    /// A driver of `binary` attached: its workers are worth keeping.
    pub fn binary_attached(&mut self, binary: BinaryId) {
        *self.live.entry(binary).or_insert(0) += 1;
        self.start_failures.remove(&binary);
    }

    /// A driver of `binary` detached. When none is left, idle workers of it are stopped and
    /// busy ones are stopped when they finish.
    pub fn binary_detached(&mut self, binary: BinaryId) {
        if let Some(n) = self.live.get_mut(&binary) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&binary);
                let idle: Vec<WorkerId> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| w.binary == binary && matches!(w.state, State::Idle))
                    .map(|(id, _)| *id)
                    .collect();
                for id in idle {
                    self.kill(id);
                }
            }
        }
    }

    /// Queues a task whose arguments are all ready.
    pub fn submit(&mut self, now: Instant, task: TaskId, binary: BinaryId, demand: ResourceSet) {
        if self.refuse_infeasible(task, &demand) {
            return;
        }
        let shape = Shape { binary, demand };
        let queue = match self.queues.get_mut(&shape) {
            Some(q) => q,
            None => {
                self.shape_order.push(shape.clone());
                self.queues.entry(shape.clone()).or_default()
            }
        };
        queue.push_back(task);
        self.queued += 1;
        self.schedule_shape(now, &shape);
    }

    /// Fails `task` if this node can never meet `demand`; says whether it did.
    fn refuse_infeasible(&mut self, task: TaskId, demand: &ResourceSet) -> bool {
        if self.config.total.contains(demand) {
            return false;
        }
        self.actions.push_back(Action::Fail {
            task,
            error: TaskError::Infeasible {
                demand: demand.to_string(),
                total: self.config.total.to_string(),
            },
        });
        true
    }

    /// Queues the creation of an actor whose constructor arguments are all ready: it gets a
    /// dedicated worker once `demand` fits, announced by [`Action::HostActor`].
    pub fn submit_actor(
        &mut self,
        now: Instant,
        task: TaskId,
        binary: BinaryId,
        demand: ResourceSet,
    ) {
        if self.refuse_infeasible(task, &demand) {
            return;
        }
        self.actor_queue.push_back((task, Shape { binary, demand }));
        self.schedule(now);
    }

    /// The actor created by `task` ends (killed, or its constructor failed): its worker is
    /// stopped and what it held is freed. A creation still queued is dropped.
    pub fn end_actor(&mut self, now: Instant, task: TaskId) {
        self.actor_queue.retain(|(t, _)| *t != task);
        let worker = self.workers.iter().find_map(|(id, w)| match &w.state {
            State::StartingActor { task: t, .. } | State::Actor { task: t, .. } if *t == task => {
                Some(*id)
            }
            _ => None,
        });
        if let Some(w) = worker {
            self.kill(w);
        }
        self.schedule(now);
    }

    /// Actor creations waiting for resources.
    pub fn actors_queued(&self) -> usize {
        self.actor_queue.len()
    }

    /// The tasks of actor creations waiting for resources, in order.
    pub fn queued_actors(&self) -> Vec<TaskId> {
        self.actor_queue.iter().map(|(t, _)| *t).collect()
    }

    /// Drops queued tasks for which `keep` is false (their owner went away). Returns them.
    pub fn remove_queued(&mut self, mut keep: impl FnMut(TaskId) -> bool) -> Vec<TaskId> {
        let mut removed = Vec::new();
        for shape in &self.shape_order {
            let Some(q) = self.queues.get_mut(shape) else {
                continue;
            };
            q.retain(|t| {
                let k = keep(*t);
                if !k {
                    removed.push(*t);
                }
                k
            });
        }
        self.queued -= removed.len();
        removed
    }

    /// Takes `task` (of `binary`, asking `demand`) out of its queue, if it waits there.
    /// Returns whether it did.
    pub fn remove_task(&mut self, task: TaskId, binary: BinaryId, demand: &ResourceSet) -> bool {
        let shape = Shape {
            binary,
            demand: demand.clone(),
        };
        let Some(q) = self.queues.get_mut(&shape) else {
            return false;
        };
        let Some(pos) = q.iter().position(|t| *t == task) else {
            return false;
        };
        q.remove(pos);
        self.queued -= 1;
        true
    }

    /// The leased worker `task` was sent to (it runs it, or will next), if any.
    pub fn worker_of_task(&self, task: TaskId) -> Option<WorkerId> {
        self.workers.iter().find_map(|(id, w)| match &w.state {
            State::Leased { inflight, .. } if inflight.iter().any(|(t, _)| *t == task) => Some(*id),
            _ => None,
        })
    }

    /// The task `worker` runs (the first of those sent to it), if it is a leased worker.
    pub fn running_on(&self, worker: WorkerId) -> Option<TaskId> {
        match &self.workers.get(&worker)?.state {
            State::Leased { inflight, .. } => inflight.front().map(|(t, _)| *t),
            _ => None,
        }
    }

    /// Queued tasks with their binary and demand, oldest shape first (candidates for
    /// spilling to peers with room).
    pub fn queued_tasks(&self) -> Vec<(TaskId, BinaryId, ResourceSet)> {
        let mut out = Vec::with_capacity(self.queued);
        for shape in &self.shape_order {
            if let Some(q) = self.queues.get(shape) {
                out.extend(q.iter().map(|t| (*t, shape.binary, shape.demand.clone())));
            }
        }
        out
    }

    /// Worker `worker` connected from process `pid`.
    pub fn worker_connected(&mut self, now: Instant, worker: WorkerId, pid: u32) -> bool {
        let Some(w) = self.workers.get_mut(&worker) else {
            return false;
        };
        if let State::StartingActor { task, shape } = &w.state {
            w.pid = pid;
            let task = *task;
            w.state = State::Actor {
                task,
                shape: shape.clone(),
            };
            self.start_failures.remove(&w.binary);
            self.actions.push_back(Action::HostActor { worker, task });
            return true;
        }
        let State::Starting { shape } = &mut w.state else {
            return false;
        };
        w.pid = pid;
        self.start_failures.remove(&w.binary);
        match shape.take() {
            Some(shape) => {
                w.state = State::Leased {
                    shape: shape.clone(),
                    inflight: VecDeque::new(),
                    last_done: now,
                };
                self.schedule_shape(now, &shape);
                self.release_if_empty(worker);
            }
            None => {
                w.state = State::Idle;
                // A replacement whose binary has no driver left is not kept.
                let binary = w.binary;
                if !self.live.contains_key(&binary) {
                    self.kill(worker);
                }
            }
        }
        self.schedule(now);
        true
    }

    /// `worker` finished `task` (its first in-flight task).
    pub fn task_done(&mut self, now: Instant, worker: WorkerId, task: TaskId) {
        self.finished += 1;
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.tasks_done += 1;
        let State::Leased {
            shape,
            inflight,
            last_done,
        } = &mut w.state
        else {
            return;
        };
        if let Some(pos) = inflight.iter().position(|(t, _)| *t == task) {
            let (_, dispatched) = inflight.remove(pos).unwrap_or((task, now));
            let started = dispatched.max(*last_done);
            let secs = now.saturating_duration_since(started).as_secs_f64();
            let avg = self.run_time.entry(shape.clone()).or_insert(secs);
            *avg = 0.8 * *avg + 0.2 * secs;
        }
        *last_done = now;
        let shape = shape.clone();
        self.schedule_shape(now, &shape);
        self.release_if_empty(worker);
        self.schedule(now);
    }

    /// Each leased worker and the task it runs (the first of those sent to it).
    pub fn running_tasks(&self) -> Vec<(WorkerId, TaskId)> {
        let mut v: Vec<(WorkerId, TaskId)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| match &w.state {
                State::Leased { inflight, .. } => inflight.front().map(|(t, _)| (*id, *t)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// Whether `worker` (still) holds `task`: runs it, or hosts the actor it creates.
    pub fn holds(&self, worker: WorkerId, task: TaskId) -> bool {
        self.workers.get(&worker).is_some_and(|w| match &w.state {
            State::Leased { inflight, .. } => inflight.iter().any(|(t, _)| *t == task),
            State::Actor { task: t, .. } => *t == task,
            _ => false,
        })
    }

    /// `worker`'s process ended. Returns the tasks it held, the one it was running first.
    /// The caller retries or fails them.
    pub fn worker_exited(&mut self, now: Instant, worker: WorkerId) -> Vec<TaskId> {
        let Some(w) = self.workers.remove(&worker) else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        match w.state {
            State::Starting { shape } => {
                if let Some(shape) = shape {
                    self.free.add_capped(&shape.demand, &self.config.total);
                }
                let n = self.start_failures.entry(w.binary).or_insert(0);
                *n += 1;
                let n = *n;
                if n >= self.config.max_start_failures {
                    self.fail_binary(w.binary, n);
                }
            }
            State::Idle => {}
            State::Leased {
                shape, inflight, ..
            } => {
                if !w.blocked {
                    self.free.add_capped(&shape.demand, &self.config.total);
                }
                lost.extend(inflight.into_iter().map(|(t, _)| t));
            }
            State::StartingActor { task, shape } | State::Actor { task, shape } => {
                self.actor_workers -= 1;
                self.free.add_capped(&shape.demand, &self.config.total);
                if w.pid == 0 {
                    let n = self.start_failures.entry(w.binary).or_insert(0);
                    *n += 1;
                    let n = *n;
                    if n >= self.config.max_start_failures {
                        self.fail_binary(w.binary, n);
                    }
                }
                // The caller decides whether the actor restarts.
                self.schedule(now);
                return vec![task];
            }
        }
        // Replace a worker of a live binary that was doing work or pooled, so the pool keeps
        // its size; a worker that never started is not replaced here (the queue decides).
        if self.live.contains_key(&w.binary)
            && w.pid != 0
            && self.pool_size() < self.config.max_workers
        {
            let id = self.new_worker(w.binary, None);
            tracing::debug!(worker, replacement = id, "replacing dead worker");
        }
        self.schedule(now);
        lost
    }

    /// `worker` handed back `tasks` it had not started: they go back to the front of their
    /// queue, in order.
    pub fn tasks_returned(&mut self, now: Instant, worker: WorkerId, tasks: &[TaskId]) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let State::Leased {
            shape, inflight, ..
        } = &mut w.state
        else {
            return;
        };
        let shape = shape.clone();
        let mut back = Vec::new();
        for t in tasks {
            if let Some(pos) = inflight.iter().position(|(x, _)| x == t) {
                inflight.remove(pos);
                back.push(*t);
            }
        }
        if back.is_empty() {
            return;
        }
        if !self.queues.contains_key(&shape) {
            self.shape_order.push(shape.clone());
        }
        let q = self.queues.entry(shape).or_default();
        for t in back.iter().rev() {
            q.push_front(*t);
        }
        self.queued += back.len();
        self.release_if_empty(worker);
        self.schedule(now);
    }

    /// `worker` ran a function as many times as the function allows (`max_calls`): it takes
    /// no more tasks, and is stopped once the tasks it holds are done or handed back (an
    /// actor's worker, or one not started, is left as it is).
    pub fn retire(&mut self, now: Instant, worker: WorkerId) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        match w.state {
            State::Idle => self.kill(worker),
            State::Leased { .. } => {
                w.retiring = true;
                self.release_if_empty(worker);
            }
            _ => return,
        }
        self.schedule(now);
    }

    /// `worker` waits for objects inside a task: lend its resources out.
    pub fn worker_blocked(&mut self, now: Instant, worker: WorkerId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if let (false, State::Leased { shape, .. }) = (w.blocked, &w.state) {
                w.blocked = true;
                self.free.add_capped(&shape.demand, &self.config.total);
                self.schedule(now);
            }
        }
    }

    /// `worker` runs again: take its resources back (possibly oversubscribing for a while).
    pub fn worker_unblocked(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if let (true, State::Leased { shape, .. }) = (w.blocked, &w.state) {
                w.blocked = false;
                self.free.subtract(&shape.demand);
            }
        }
    }

    /// Tasks waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Tasks handed to workers and not finished.
    pub fn running(&self) -> usize {
        self.workers
            .values()
            .map(|w| match &w.state {
                State::Leased { inflight, .. } => inflight.len(),
                _ => 0,
            })
            .sum()
    }

    /// Tasks finished since start.
    pub fn finished(&self) -> u64 {
        self.finished
    }

    /// Resources not leased.
    pub fn free(&self) -> &ResourceSet {
        &self.free
    }

    /// All resources.
    pub fn total(&self) -> &ResourceSet {
        &self.config.total
    }

    /// Sets `set` aside (for a placement group's bundles) if it is free now: it is no longer
    /// free for anything else until [`Scheduler::unreserve`]. Says whether it was.
    pub fn reserve(&mut self, set: &ResourceSet) -> bool {
        if !self.free.contains(set) {
            return false;
        }
        self.free.subtract(set);
        true
    }

    /// Gives back what [`Scheduler::reserve`] set aside.
    pub fn unreserve(&mut self, now: Instant, set: &ResourceSet) {
        self.free.add_capped(set, &self.config.total);
        self.schedule(now);
    }

    /// Adds resources (a reserved bundle's, under its own names) to what this node has.
    pub fn offer(&mut self, now: Instant, set: &ResourceSet) {
        self.config.total.add(set);
        self.free.add(set);
        self.schedule(now);
    }

    /// Takes away every resource whose name `gone` says (a bundle released), ending what
    /// holds or waits for them: workers holding them are stopped, and the tasks they ran or
    /// that were queued for them, and the actors created with them, are returned for the
    /// caller to fail (they cannot run anywhere now).
    pub fn withdraw(&mut self, now: Instant, gone: impl Fn(&str) -> bool) -> Withdrawn {
        let mut out = Withdrawn::default();
        let removed = self.config.total.remove_where(&gone);
        if removed.0.is_empty() {
            return out;
        }
        self.free.remove_where(&gone);
        let uses = |d: &ResourceSet| d.names_any(&gone);
        let mut stop = Vec::new();
        for (id, w) in self.workers.iter_mut() {
            match &mut w.state {
                State::Leased {
                    shape, inflight, ..
                } if uses(&shape.demand) => {
                    out.tasks.extend(inflight.iter().map(|(t, _)| *t));
                    stop.push(*id);
                }
                State::StartingActor { task, shape } | State::Actor { task, shape }
                    if uses(&shape.demand) =>
                {
                    out.actors.push(*task);
                    stop.push(*id);
                }
                State::Starting { shape } if shape.as_ref().is_some_and(|s| uses(&s.demand)) => {
                    *shape = None;
                }
                _ => {}
            }
        }
        for id in stop {
            self.kill(id);
        }
        for shape in &self.shape_order {
            if uses(&shape.demand) {
                if let Some(q) = self.queues.get_mut(shape) {
                    self.queued -= q.len();
                    out.tasks.extend(q.drain(..));
                }
            }
        }
        self.actor_queue.retain(|(t, shape)| {
            let keep = !uses(&shape.demand);
            if !keep {
                out.actors.push(*t);
            }
            keep
        });
        self.schedule(now);
        out
    }

    /// The binary a worker runs.
    pub fn worker_binary(&self, worker: WorkerId) -> Option<BinaryId> {
        self.workers.get(&worker).map(|w| w.binary)
    }

    /// Every worker the scheduler knows (starting or running), in id order.
    pub fn worker_ids(&self) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The queued tasks that wait for a worker starting with room held for them (the first
    /// of their shape's queue, one per such worker), not for resources.
    pub fn waiting_for_start(&self) -> Vec<TaskId> {
        let mut starting: HashMap<&Shape, usize> = HashMap::new();
        for w in self.workers.values() {
            if let State::Starting { shape: Some(s) } = &w.state {
                *starting.entry(s).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for (shape, n) in starting {
            if let Some(q) = self.queues.get(shape) {
                out.extend(q.iter().take(n).copied());
            }
        }
        out
    }

    /// One line per worker, for status.
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        let mut out: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                id: *id,
                pid: w.pid,
                binary: w.binary,
                state: match (&w.state, w.blocked) {
                    (State::Starting { .. } | State::StartingActor { .. }, _) => "starting",
                    (State::Actor { .. }, _) => "actor",
                    (State::Idle, _) => "idle",
                    (State::Leased { .. }, true) => "blocked",
                    (State::Leased { .. }, false) => "busy",
                }
                .to_string(),
                tasks_done: w.tasks_done,
            })
            .collect();
        out.sort_by_key(|w| w.id);
        out
    }

    fn new_worker(&mut self, binary: BinaryId, shape: Option<Shape>) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        if let Some(s) = &shape {
            self.free.subtract(&s.demand);
        }
        self.workers.insert(
            id,
            Worker {
                binary,
                pid: 0,
                state: State::Starting { shape },
                blocked: false,
                tasks_done: 0,
                retiring: false,
            },
        );
        self.actions.push_back(Action::Spawn { worker: id, binary });
        id
    }

    fn kill(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.remove(&worker) {
            match &w.state {
                State::Leased { shape, .. } if !w.blocked => {
                    self.free.add_capped(&shape.demand, &self.config.total);
                }
                State::StartingActor { shape, .. } | State::Actor { shape, .. } => {
                    self.actor_workers -= 1;
                    self.free.add_capped(&shape.demand, &self.config.total);
                }
                _ => {}
            }
            self.actions.push_back(Action::Kill { worker });
        }
    }

    /// Task workers that count against [`SchedConfig::max_workers`]: all but the actors' and
    /// those whose task is blocked in a `get`. As in Ray, a blocked task lends its worker's
    /// place in the pool as it lends its CPU: otherwise `max_workers` nested tasks blocked on
    /// their children would hold every place, and the children would wait for a worker
    /// forever. The pool is bounded by the tasks that block (each waits for others) and by
    /// the memory monitor; [`trim_pool`](Self::trim_pool) brings it back to the cap.
    fn pool_size(&self) -> usize {
        let blocked = self.workers.values().filter(|w| w.blocked).count();
        self.workers.len() - self.actor_workers - blocked
    }

    /// Stops idle workers while the pool is over its cap (it grew past it while tasks were
    /// blocked), highest id first.
    fn trim_pool(&mut self) {
        if self.workers.len() - self.actor_workers <= self.config.max_workers {
            // Within the cap even counting the blocked ones (the common case, checked first
            // since this runs after every scheduling pass).
            return;
        }
        while self.pool_size() > self.config.max_workers {
            let idle = self
                .workers
                .iter()
                .filter(|(_, w)| matches!(w.state, State::Idle))
                .map(|(id, _)| *id)
                .max();
            let Some(worker) = idle else {
                return;
            };
            tracing::debug!(worker, "stopping an idle worker over the pool's cap");
            self.kill(worker);
        }
    }

    /// Gives queued actor creations whose demand fits a worker, in order. A creation that
    /// does not fit does not hold back smaller ones behind it.
    fn schedule_actors(&mut self) {
        let mut i = 0;
        while i < self.actor_queue.len() {
            if !self.free.contains(&self.actor_queue[i].1.demand) {
                i += 1;
                continue;
            }
            let Some((task, shape)) = self.actor_queue.remove(i) else {
                break;
            };
            self.free.subtract(&shape.demand);
            self.actor_workers += 1;
            let idle = self.workers.iter().find_map(|(id, w)| {
                (matches!(w.state, State::Idle) && w.binary == shape.binary && !w.retiring)
                    .then_some(*id)
            });
            match idle {
                Some(worker) => {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.state = State::Actor { task, shape };
                    }
                    self.actions.push_back(Action::HostActor { worker, task });
                }
                None => {
                    let id = self.next_worker;
                    self.next_worker += 1;
                    self.workers.insert(
                        id,
                        Worker {
                            binary: shape.binary,
                            pid: 0,
                            state: State::StartingActor { task, shape },
                            blocked: false,
                            tasks_done: 0,
                            retiring: false,
                        },
                    );
                    self.actions.push_back(Action::Spawn {
                        worker: id,
                        binary: self.workers[&id].binary,
                    });
                }
            }
        }
    }

    fn fail_binary(&mut self, binary: BinaryId, failures: u32) {
        let message =
            format!("{failures} worker processes of binary {binary} exited before connecting");
        let mut kept = VecDeque::new();
        for (task, shape) in self.actor_queue.drain(..) {
            if shape.binary == binary {
                self.actions.push_back(Action::Fail {
                    task,
                    error: TaskError::WorkerStart {
                        message: message.clone(),
                    },
                });
            } else {
                kept.push_back((task, shape));
            }
        }
        self.actor_queue = kept;
        for (shape, q) in &mut self.queues {
            if shape.binary != binary {
                continue;
            }
            for task in q.drain(..) {
                self.queued -= 1;
                self.actions.push_back(Action::Fail {
                    task,
                    error: TaskError::WorkerStart {
                        message: format!(
                            "{failures} worker processes of binary {binary} exited before connecting"
                        ),
                    },
                });
            }
        }
    }

    /// Ends the lease of a leased worker with nothing in flight; stops it if its binary is
    /// no longer live.
    fn release_if_empty(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let State::Leased {
            shape, inflight, ..
        } = &w.state
        else {
            return;
        };
        if !inflight.is_empty() {
            return;
        }
        if !w.blocked {
            self.free.add_capped(&shape.demand, &self.config.total);
        }
        w.blocked = false;
        w.state = State::Idle;
        if !self.live.contains_key(&w.binary) || w.retiring {
            self.kill(worker);
        }
    }

    fn schedule(&mut self, now: Instant) {
        if !self.actor_queue.is_empty() {
            self.schedule_actors();
        }
        if self.queued > 0 {
            for i in 0..self.shape_order.len() {
                let shape = self.shape_order[i].clone();
                self.schedule_shape(now, &shape);
            }
            self.shape_order
                .retain(|s| self.queues.get(s).is_some_and(|q| !q.is_empty()));
            self.queues.retain(|_, q| !q.is_empty());
        }
        // After the queues had their pick of the idle workers.
        self.trim_pool();
    }

    fn schedule_shape(&mut self, now: Instant, shape: &Shape) {
        let short = self
            .run_time
            .get(shape)
            .is_some_and(|secs| *secs < self.config.short_task.as_secs_f64());
        loop {
            let Some(&task) = self.queues.get(shape).and_then(|q| q.front()) else {
                return;
            };
            let worker = self.pick_worker(shape, short);
            let worker = match worker {
                Pick::Leased(w) => w,
                Pick::Idle(w) => {
                    self.free.subtract(&shape.demand);
                    if let Some(wk) = self.workers.get_mut(&w) {
                        wk.state = State::Leased {
                            shape: shape.clone(),
                            inflight: VecDeque::new(),
                            last_done: now,
                        };
                    }
                    w
                }
                Pick::Spawn => {
                    self.new_worker(shape.binary, Some(shape.clone()));
                    continue;
                }
                Pick::Adopt(w) => {
                    self.free.subtract(&shape.demand);
                    if let Some(wk) = self.workers.get_mut(&w) {
                        wk.state = State::Starting {
                            shape: Some(shape.clone()),
                        };
                    }
                    continue;
                }
                Pick::MakeRoom(victim) => {
                    self.kill(victim);
                    continue;
                }
                Pick::None => return,
            };
            if let Some(q) = self.queues.get_mut(shape) {
                q.pop_front();
            }
            self.queued -= 1;
            if let Some(State::Leased { inflight, .. }) =
                self.workers.get_mut(&worker).map(|w| &mut w.state)
            {
                inflight.push_back((task, now));
            }
            self.actions.push_back(Action::Dispatch { worker, task });
        }
    }

    fn pick_worker(&self, shape: &Shape, short: bool) -> Pick {
        let mut starting_for_shape = 0usize;
        let mut idle = None;
        let mut idle_other = None;
        let mut spare = None;
        let mut best_pipeline: Option<(usize, WorkerId)> = None;
        for (id, w) in &self.workers {
            match &w.state {
                _ if w.retiring => {}
                State::Leased {
                    shape: s, inflight, ..
                } if s == shape && !w.blocked => {
                    if inflight.is_empty() {
                        return Pick::Leased(*id);
                    }
                    if short
                        && inflight.len() < self.config.pipeline_depth
                        && best_pipeline.is_none_or(|(n, _)| inflight.len() < n)
                    {
                        best_pipeline = Some((inflight.len(), *id));
                    }
                }
                State::Starting { shape: Some(s) } if s == shape => starting_for_shape += 1,
                State::Starting { shape: None } if w.binary == shape.binary => spare = Some(*id),
                State::Idle if w.binary == shape.binary => idle = Some(*id),
                State::Idle => idle_other = Some(*id),
                _ => {}
            }
        }
        let fits = self.free.contains(&shape.demand);
        if fits {
            if let Some(w) = idle {
                return Pick::Idle(w);
            }
            let waiting = self.queues.get(shape).map_or(0, |q| q.len());
            if starting_for_shape < waiting {
                if let Some(w) = spare {
                    return Pick::Adopt(w);
                }
                if self.pool_size() < self.config.max_workers {
                    return Pick::Spawn;
                }
                if let Some(victim) = idle_other {
                    return Pick::MakeRoom(victim);
                }
            }
        }
        match best_pipeline {
            Some((_, w)) => Pick::Leased(w),
            None => Pick::None,
        }
    }
}

enum Pick {
    Leased(WorkerId),
    Idle(WorkerId),
    Spawn,
    /// A starting replacement worker takes a reservation for this shape.
    Adopt(WorkerId),
    MakeRoom(WorkerId),
    None,
}
