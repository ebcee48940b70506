//! The actor directory of a node: which actors exist, their names, their state, and the calls
//! waiting for them.
//!
//! Pure bookkeeping, no I/O: the core asks it what to do (which calls may go to an actor's
//! worker now, which calls fail when an actor dies, whether it restarts) and carries it out.
//!
//! Ordering (as Ray's): calls from one caller run in the order they were sent. Each actor
//! keeps one queue per caller; a call leaves its queue only when it is at the head and its
//! arguments are ready, so a call waiting for an argument holds back the later calls of its
//! own caller and no one else's.

use std::collections::{HashMap, VecDeque};

use shoal_protocol::{
    ActorCreate, ActorId, ActorInfo, ActorStatus, ActorToken, ClientId, IdMap, TaskError, TaskId,
};

use crate::core::sched::WorkerId;

pub(crate) mod directory;
#[cfg(test)]
mod tests;

/// Calls handed to an actor's worker and not finished, at most, unless the actor's
/// `max_concurrency` is larger (then that many: calls that wait for one another must all be
/// at the worker, as Ray's async actors have them). Bounds the worker's queue.
pub const MAX_INFLIGHT: usize = 1024;

/// Where an actor is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum ActorState {
    /// Waiting for its constructor's arguments, for resources or for a worker.
    Pending,
    /// Its worker has the actor (the constructor may still be running); calls flow to it.
    Alive {
        /// The worker process hosting it.
        worker: WorkerId,
        /// Whether the constructor has finished.
        started: bool,
    },
    /// Gone for good; every call fails with this error.
    Dead(TaskError),
}

/// One actor.
#[derive(Debug)]
pub struct Actor {
    /// The task that created it: its spec holds the class, the constructor's arguments and
    /// the resources.
    pub create_task: TaskId,
    /// The registered class name.
    pub class: String,
    /// How it was made.
    pub spec: ActorCreate,
    /// The process that created it.
    pub owner: ClientId,
    /// Where it is.
    pub state: ActorState,
    /// Restarts so far.
    pub incarnation: u32,
    /// Its placement epoch, for an actor a peer placed here (0 for one created here): see
    /// [`shoal_protocol::mesh::RemoteTask::actor_epoch`].
    pub epoch: u32,
    /// Its worker's pid, once known.
    pub pid: u32,
    /// Calls not yet sent, per caller, in the order sent.
    queues: IdMap<ClientId, VecDeque<TaskId>>,
    /// Callers with queued calls, in the order they first queued one (a fair scan).
    callers: Vec<ClientId>,
    /// Calls sent to the worker and not finished, in the order sent, with their callers.
    inflight: VecDeque<(TaskId, ClientId)>,
    /// Calls in flight when its worker was lost that had not begun, put back in their
    /// queues: they are no longer at a worker ([`ActorTable::take_requeued`]).
    requeued: Vec<TaskId>,
    /// Calls finished.
    pub calls_done: u64,
    /// Its last counted handle is gone: it ends once its calls are done.
    pub draining: bool,
    /// A handle to it exists that is not counted (found by name, or by a get-or-create, at
    /// a node where its handles are counted nowhere; or one whose lend from the counting
    /// node did not come in time): it no longer ends when its counted handles are gone,
    /// only when it is killed or its creator ends.
    pub escaped: bool,
    /// Its span (`actor = %id`): entered while the core works on it.
    pub span: tracing::Span,
}

impl Actor {
    /// `caller`'s queue, the caller listed for the fair scan if it was not.
    fn queue_of(&mut self, caller: ClientId) -> &mut VecDeque<TaskId> {
        if !self.callers.contains(&caller) {
            self.callers.push(caller);
        }
        self.queues.entry(caller).or_default()
    }

    /// Puts calls back at the front of their callers' queues, in the order given.
    fn push_front(&mut self, calls: &[(TaskId, ClientId)]) {
        for &(t, caller) in calls.iter().rev() {
            self.queue_of(caller).push_front(t);
        }
    }
    /// Its queued calls, each caller's in the order sent; the queues are left empty.
    fn take_queued(&mut self) -> Vec<TaskId> {
        let mut queued = Vec::new();
        for caller in std::mem::take(&mut self.callers) {
            if let Some(q) = self.queues.remove(&caller) {
                queued.extend(q);
            }
        }
        self.queues.clear();
        queued
    }

    /// Whether it is draining and has nothing left to do.
    pub fn drained(&self) -> bool {
        self.draining && self.inflight.is_empty() && self.queues.is_empty()
    }

    /// Calls queued here.
    pub fn queued(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Calls in flight at the worker.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether `task` waits in one of its queues (not yet sent to the worker).
    pub fn is_queued(&self, task: TaskId) -> bool {
        self.queues.values().any(|q| q.contains(&task))
    }

    /// Calls that may run at once at its worker: its max concurrency, and its concurrency
    /// groups'.
    fn concurrency(&self) -> usize {
        let groups: usize = self
            .spec
            .concurrency_groups
            .iter()
            .map(|(_, n)| *n as usize)
            .sum();
        self.spec.max_concurrency.max(1) as usize + groups
    }

    /// Whether it is dead.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, ActorState::Dead(_))
    }
}

/// What registering an actor found.
#[derive(Debug, PartialEq)]
pub enum Registered {
    /// A new actor.
    New,
    /// A get-or-create found a live actor of that name.
    Existing(ActorId),
}

/// A creation of an actor named `name` finds a live actor of that name, `existing`: a
/// get-or-create of the same class gets it; anything else is refused.
pub fn name_taken(
    spec: &ActorCreate,
    name: &str,
    existing: ActorId,
    same_class: bool,
) -> Result<Registered, TaskError> {
    match (spec.get_if_exists, same_class) {
        (true, true) => Ok(Registered::Existing(existing)),
        _ => Err(TaskError::ActorNameTaken {
            name: name.to_string(),
        }),
    }
}

/// What happens to an actor whose worker process died.
#[derive(Debug, PartialEq)]
pub enum AfterDeath {
    /// It restarts: a new worker is needed; its queued calls wait for it.
    Restart,
    /// It is dead for good; these queued calls fail.
    Dead(Vec<TaskId>),
}

/// Every actor this node knows.
#[derive(Debug, Default)]
pub struct ActorTable {
    actors: IdMap<ActorId, Actor>,
    names: HashMap<String, ActorId>,
    by_task: IdMap<TaskId, ActorId>,
    by_worker: IdMap<WorkerId, ActorId>,
}

impl ActorTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an actor made by `create_task`. A name already held by a live actor is
    /// an error, unless `spec.get_if_exists` asks for that actor instead.
    pub fn register(
        &mut self,
        create_task: TaskId,
        class: &str,
        spec: &ActorCreate,
        owner: ClientId,
    ) -> Result<Registered, TaskError> {
        if let Some(name) = &spec.name {
            if let Some(existing) = self.names.get(name) {
                let same_class = self.actors.get(existing).is_some_and(|a| a.class == class);
                return name_taken(spec, name, *existing, same_class);
            }
        }
        if self.actors.contains_key(&spec.actor_id) {
            return Err(TaskError::ActorCreationFailed {
                actor: spec.actor_id,
                message: "an actor with this id exists".into(),
            });
        }
        if let Some(name) = &spec.name {
            self.names.insert(name.clone(), spec.actor_id);
        }
        self.by_task.insert(create_task, spec.actor_id);
        self.actors.insert(
            spec.actor_id,
            Actor {
                create_task,
                class: class.to_string(),
                spec: spec.clone(),
                owner,
                state: ActorState::Pending,
                incarnation: 0,
                epoch: 0,
                pid: 0,
                queues: IdMap::default(),
                callers: Vec::new(),
                inflight: VecDeque::new(),
                requeued: Vec::new(),
                calls_done: 0,
                draining: false,
                escaped: false,
                span: tracing::debug_span!("actor", actor = %spec.actor_id, class),
            },
        );
        Ok(Registered::New)
    }

    /// Raises the placement epoch of `actor` (if hosted here) to `epoch`.
    pub fn raise_epoch(&mut self, actor: ActorId, epoch: u32) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.epoch = a.epoch.max(epoch);
        }
    }

    /// Every actor known, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&ActorId, &Actor)> {
        self.actors.iter()
    }

    /// The actor.
    pub fn get(&self, actor: &ActorId) -> Option<&Actor> {
        self.actors.get(actor)
    }

    /// The actor a creation task made.
    pub fn by_task(&self, task: &TaskId) -> Option<ActorId> {
        self.by_task.get(task).copied()
    }

    /// The actor a worker hosts.
    pub fn by_worker(&self, worker: WorkerId) -> Option<ActorId> {
        self.by_worker.get(&worker).copied()
    }

    /// A live actor by name.
    pub fn lookup(&self, name: &str) -> Option<ActorInfo> {
        let id = self.names.get(name)?;
        let a = self.actors.get(id)?;
        (!a.is_dead()).then(|| ActorInfo {
            actor_id: *id,
            token: a.spec.token,
            class: a.class.clone(),
            owner: a.owner,
        })
    }

    /// Actors that end with `owner` (not detached, not dead).
    pub fn owned_by(&self, owner: ClientId) -> Vec<ActorId> {
        let mut v: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.owner == owner && !a.spec.detached && !a.is_dead())
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }

    /// Whether `token` is the secret of `actor`'s handles (an actor unknown here has none to
    /// check: the caller learns that it is unknown).
    pub fn check_token(&self, actor: ActorId, token: &ActorToken) -> Result<(), TaskError> {
        match self.actors.get(&actor) {
            Some(a) if a.spec.token != *token => Err(TaskError::ActorNotAllowed { actor }),
            _ => Ok(()),
        }
    }

    /// Queues a call from `caller`. A dead or unknown actor refuses it with the error the
    /// call fails with.
    pub fn enqueue(
        &mut self,
        actor: ActorId,
        caller: ClientId,
        task: TaskId,
    ) -> Result<(), TaskError> {
        let Some(a) = self.actors.get_mut(&actor) else {
            return Err(TaskError::NoSuchActor { actor });
        };
        if let ActorState::Dead(e) = &a.state {
            return Err(e.clone());
        }
        a.queue_of(caller).push_back(task);
        Ok(())
    }

    /// Removes a queued call (its caller went away, or an argument failed). Returns whether
    /// it was queued.
    pub fn remove_queued(&mut self, actor: ActorId, caller: ClientId, task: TaskId) -> bool {
        let Some(a) = self.actors.get_mut(&actor) else {
            return false;
        };
        let Some(q) = a.queues.get_mut(&caller) else {
            return false;
        };
        let Some(pos) = q.iter().position(|t| *t == task) else {
            return false;
        };
        q.remove(pos);
        if q.is_empty() {
            a.queues.remove(&caller);
            a.callers.retain(|c| *c != caller);
        }
        true
    }

    /// Every counted handle is gone: the actor ends when its calls are done (unless a
    /// handle that is not counted was given out). Returns whether that is now.
    pub fn out_of_scope(&mut self, actor: ActorId) -> bool {
        match self.actors.get_mut(&actor) {
            Some(a) if a.escaped => {
                tracing::debug!(actor = %actor, "its counted handles are gone, but not every handle is counted: it lives on");
                false
            }
            Some(a) if !a.is_dead() => {
                a.draining = true;
                a.drained()
            }
            _ => false,
        }
    }

    /// A handle to `actor` that is not counted was given out: it lives until killed or
    /// until its creator ends (and no longer drains if it was).
    pub fn escape(&mut self, actor: ActorId) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.escaped = true;
            a.draining = false;
        }
    }

    /// The actor's worker now hosts it.
    pub fn hosted(&mut self, actor: ActorId, worker: WorkerId) {
        if let Some(a) = self.actors.get_mut(&actor) {
            if !a.is_dead() {
                a.state = ActorState::Alive {
                    worker,
                    started: false,
                };
                self.by_worker.insert(worker, actor);
            }
        }
    }

    /// The constructor finished in process `pid`.
    pub fn started(&mut self, actor: ActorId, pid: u32) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.pid = pid;
            if let ActorState::Alive { started, .. } = &mut a.state {
                *started = true;
            }
        }
    }

    /// Calls that may go to the actor's worker now, moved to in flight: from each caller,
    /// the leading calls whose arguments are `ready`, while fewer than [`MAX_INFLIGHT`] (or
    /// the actor's `max_concurrency`, if larger) are in flight. Empty unless the actor is
    /// alive.
    pub fn take_ready(
        &mut self,
        actor: ActorId,
        mut ready: impl FnMut(TaskId) -> bool,
    ) -> (Option<WorkerId>, Vec<TaskId>) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return (None, Vec::new());
        };
        let ActorState::Alive { worker, .. } = a.state else {
            return (None, Vec::new());
        };
        let cap = MAX_INFLIGHT.max(a.concurrency());
        let mut out = Vec::new();
        let mut emptied = Vec::new();
        'callers: for caller in &a.callers {
            let Some(q) = a.queues.get_mut(caller) else {
                continue;
            };
            while let Some(&t) = q.front() {
                if a.inflight.len() >= cap {
                    break 'callers;
                }
                if !ready(t) {
                    break;
                }
                q.pop_front();
                a.inflight.push_back((t, *caller));
                out.push(t);
            }
            if q.is_empty() {
                emptied.push(*caller);
            }
        }
        for c in emptied {
            a.queues.remove(&c);
            a.callers.retain(|x| *x != c);
        }
        (Some(worker), out)
    }

    /// A call the worker finished. Returns whether it was in flight there.
    pub fn call_done(&mut self, actor: ActorId, task: TaskId) -> bool {
        let Some(a) = self.actors.get_mut(&actor) else {
            return false;
        };
        // Usually the oldest: calls of a serial actor finish in order.
        let Some(pos) = a.inflight.iter().position(|(t, _)| *t == task) else {
            return false;
        };
        a.inflight.remove(pos);
        a.calls_done += 1;
        true
    }

    /// The actor's worker is gone (its process died, or it never started). Returns the calls
    /// that may have begun there (they fail: a call is never run twice) and what happens to
    /// the actor. An actor already dead stays so, and its queued calls were failed then.
    ///
    /// A worker begins calls in the order sent, at most `max_concurrency` at once, so of the
    /// calls in flight only the first `max_concurrency` may have begun, and none if the
    /// constructor had not finished: the others go back to the front of their callers'
    /// queues, for the restarted actor (or fail with the queued ones if it does not restart).
    /// An actor with concurrency groups begins calls of different groups in no fixed order:
    /// all its calls in flight may have begun.
    pub fn worker_lost(&mut self, actor: ActorId, error: TaskError) -> (Vec<TaskId>, AfterDeath) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return (Vec::new(), AfterDeath::Dead(Vec::new()));
        };
        let began = match a.state {
            ActorState::Alive { worker, started } => {
                self.by_worker.remove(&worker);
                if !started {
                    0
                } else if a.spec.concurrency_groups.is_empty() {
                    a.spec.max_concurrency.max(1) as usize
                } else {
                    // Calls of different groups begin in no fixed order: any may have.
                    a.inflight.len()
                }
            }
            _ => a.inflight.len(),
        };
        let mut inflight: Vec<(TaskId, ClientId)> = a.inflight.drain(..).collect();
        let not_begun = inflight.split_off(began.min(inflight.len()));
        let inflight: Vec<TaskId> = inflight.into_iter().map(|(t, _)| t).collect();
        a.requeued.extend(not_begun.iter().rev().map(|(t, _)| *t));
        a.push_front(&not_begun);
        if a.is_dead() {
            let queued = a.take_queued();
            let mut failed = inflight;
            failed.extend(queued);
            return (failed, AfterDeath::Dead(Vec::new()));
        }
        let restarts_used = a.incarnation;
        let may_restart = a.spec.max_restarts == u32::MAX || restarts_used < a.spec.max_restarts;
        if may_restart && !matches!(error, TaskError::ActorCreationFailed { .. }) {
            a.incarnation += 1;
            a.state = ActorState::Pending;
            a.pid = 0;
            return (inflight, AfterDeath::Restart);
        }
        let queued = self.kill(actor, error);
        (inflight, AfterDeath::Dead(queued))
    }

    /// Puts calls back at the front of their callers' queues, in the order given (before
    /// any queued already): calls that may have begun on a process that died and run again
    /// (`max_task_retries`).
    pub fn requeue_front(&mut self, actor: ActorId, calls: &[(TaskId, ClientId)]) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.push_front(calls);
        }
    }

    /// The calls [`ActorTable::worker_lost`] put back in their queues (once).
    pub fn take_requeued(&mut self, actor: ActorId) -> Vec<TaskId> {
        self.actors
            .get_mut(&actor)
            .map(|a| std::mem::take(&mut a.requeued))
            .unwrap_or_default()
    }

    /// Marks the actor dead with `error` (killed, or its constructor failed). Returns its
    /// queued calls, which fail with the error; calls in flight fail when its worker exits.
    /// Its name is free again.
    pub fn kill(&mut self, actor: ActorId, error: TaskError) -> Vec<TaskId> {
        let Some(a) = self.actors.get_mut(&actor) else {
            return Vec::new();
        };
        if let ActorState::Alive { worker, .. } = a.state {
            self.by_worker.remove(&worker);
        }
        a.state = ActorState::Dead(error);
        let queued = a.take_queued();
        self.unname(actor);
        queued
    }

    /// Frees the actor's name, if it holds one.
    fn unname(&mut self, actor: ActorId) {
        if let Some(name) = self.actors.get(&actor).and_then(|a| a.spec.name.clone()) {
            if self.names.get(&name) == Some(&actor) {
                self.names.remove(&name);
            }
        }
    }

    /// Forgets an actor that has not started here (it was placed on another peer): returns
    /// its queued calls, each caller's in the order sent, for the peer that hosts it now.
    pub fn forget(&mut self, actor: ActorId) -> Vec<TaskId> {
        self.unname(actor);
        let Some(mut a) = self.actors.remove(&actor) else {
            return Vec::new();
        };
        self.by_task.remove(&a.create_task);
        if let ActorState::Alive { worker, .. } = a.state {
            self.by_worker.remove(&worker);
        }
        let mut queued = a.inflight.drain(..).map(|(t, _)| t).collect::<Vec<_>>();
        queued.extend(a.take_queued());
        queued
    }

    /// Forgets the dead actors of `owner` (it went away: no call of its can come any more).
    /// Dead actors are otherwise kept, so that late calls learn why the actor died.
    pub fn forget_dead_of(&mut self, owner: ClientId) {
        let mut dead: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.owner == owner && a.is_dead())
            .map(|(id, _)| *id)
            .collect();
        dead.sort();
        for actor in dead {
            self.forget(actor);
        }
    }

    /// Forgets `actor` if it is dead.
    pub fn forget_if_dead(&mut self, actor: ActorId) {
        if self.actors.get(&actor).is_some_and(|a| a.is_dead()) {
            self.forget(actor);
        }
    }

    /// Calls in flight at a dead actor's worker, which fail now (the worker is being
    /// killed).
    pub fn drain_inflight(&mut self, actor: ActorId) -> Vec<TaskId> {
        self.actors
            .get_mut(&actor)
            .map(|a| a.inflight.drain(..).map(|(t, _)| t).collect())
            .unwrap_or_default()
    }

    /// Actors known.
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    /// Whether no actor is known.
    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    /// One line per actor, for status.
    pub fn status(&self) -> Vec<ActorStatus> {
        let mut out: Vec<ActorStatus> = self
            .actors
            .iter()
            .map(|(id, a)| ActorStatus {
                actor_id: *id,
                class: a.class.clone(),
                name: a.spec.name.as_deref().map(shoal_protocol::display_name),
                state: match &a.state {
                    ActorState::Pending if a.incarnation > 0 => "restarting",
                    ActorState::Pending => "pending",
                    ActorState::Alive { started: false, .. } => "starting",
                    ActorState::Alive { started: true, .. } => "alive",
                    ActorState::Dead(_) => "dead",
                }
                .to_string(),
                incarnation: a.incarnation,
                pid: if a.is_dead() { 0 } else { a.pid },
                calls_pending: (a.queued() + a.inflight()) as u64,
                calls_done: a.calls_done,
            })
            .collect();
        out.sort_by_key(|a| a.actor_id);
        out
    }
}
