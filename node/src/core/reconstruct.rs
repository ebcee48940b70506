//! Making lost objects again from their lineage (issue 12), at their owner: the node whose
//! local process submitted the task that made them (see [`super::lineage`]).
//!
//! An object is lost when every peer that held a copy is gone (or answers that it has none)
//! and the directory knows no other. Its owner then runs its task again, within the task's
//! retry budget, after making again any of the task's arguments that is lost too
//! (recursively). Readers wait meanwhile, as for any pending object. A `put` object, or one
//! whose lineage was evicted or whose task has no retries left, is not made again: its
//! readers get `ObjectLost` (a put) or `ObjectReconstructionFailed`. A spilled object is
//! present (it is read back from disk), never made again.
//!
//! A task sent to a peer that fails there because one of its arguments is lost comes back
//! here: the argument is made again if it is lost here too (else the task is placed again,
//! within its budget), and the task waits for it.

use std::time::Instant;

use shoal_protocol::mesh::PeerMsg;
use shoal_protocol::{ObjectId, ObjectValue, PeerKey, TaskError, TaskId, TaskKind};

use super::tasks::TaskEntry;
use super::{NodeCore, Party};
use crate::store::Holder;

/// Lineage deeper than this is not followed (a bound on the recursion).
const MAX_DEPTH: u32 = 512;

/// How [`NodeCore::reconstruct`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Remake {
    /// Its task was submitted again now.
    Started,
    /// Its task is in the task table already (running, or being made again).
    UnderWay,
}

/// Why an object cannot be made again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CannotRemake {
    /// This node has no lineage for it (a put, or a result of another owner's task).
    NoLineage,
    /// It has, and it failed.
    Failed(String),
}

/// An argument of a task about to run again.
enum ArgState {
    /// Its value is here, or at a peer this node sees.
    Ready,
    /// Being made.
    Pending,
    /// Failed: the task fails with its error.
    Failed(TaskError),
    /// Lost: made again first.
    Lost,
}

impl CannotRemake {
    /// The error its readers get.
    pub(super) fn error(self, id: ObjectId) -> TaskError {
        match self {
            CannotRemake::NoLineage => TaskError::ObjectLost { id },
            CannotRemake::Failed(reason) => TaskError::ObjectReconstructionFailed { id, reason },
        }
    }
}

impl NodeCore {
    /// Keeps the lineage of `task`'s result, a value of a task of a local process: a large
    /// one left at a peer may be lost with it, and any one may be the argument of another
    /// that must be made again (the lineage of an object whose entry is gone lives on while
    /// another's names it).
    pub(super) fn keep_lineage(&mut self, task: TaskId) {
        let Some(e) = self.tasks.get(&task) else {
            return;
        };
        // Without peers nothing is lost that lineage could make again.
        if self.me.is_none()
            || !matches!(e.spec.kind, TaskKind::Function)
            || !matches!(e.owner, Party::Proc(_))
            || !self.objects.contains(&e.ret)
        {
            return;
        }
        let evicted = self.lineage.record(e.ret, &e.spec, e.owner, e.retries_left);
        for id in evicted {
            tracing::debug!(object = %id, "lineage evicted (--lineage-bytes)");
            if let Some(x) = self.objects.get_mut(&id) {
                x.lineage_evicted = true;
            }
        }
    }

    /// Whether a peer this node sees holds a copy of `id` (as far as it knows).
    fn has_live_holder(&self, id: &ObjectId) -> bool {
        self.objects
            .get(id)
            .and_then(|e| e.remote.as_ref())
            .is_some_and(|r| r.holders.iter().any(|p| self.spill.in_view(p)))
    }

    /// Whether `id` is lost here: gone from the table, or known to exist only at peers none
    /// of which is left.
    fn lost_here(&self, id: &ObjectId) -> bool {
        match self.objects.get(id) {
            None => true,
            Some(e) => e.value.is_none() && e.ready_remotely() && !self.has_live_holder(id),
        }
    }

    /// What an argument of a task to run again is.
    fn arg_state(&self, id: &ObjectId) -> ArgState {
        if self.lost_here(id) {
            return ArgState::Lost;
        }
        match self.objects.get(id).and_then(|e| e.value.as_ref()) {
            Some(ObjectValue::Error(err)) => ArgState::Failed(err.clone()),
            Some(_) => ArgState::Ready,
            // At a live holder: ready where the task runs. Else still being made.
            None if self.objects.get(id).is_some_and(|e| e.ready_remotely()) => ArgState::Ready,
            None => ArgState::Pending,
        }
    }

    /// Every copy of `id` is lost: runs its task again (making lost arguments again first).
    pub(super) fn reconstruct(
        &mut self,
        now: Instant,
        id: ObjectId,
    ) -> Result<Remake, CannotRemake> {
        self.reconstruct_at(now, id, 0)
    }

    fn reconstruct_at(
        &mut self,
        now: Instant,
        id: ObjectId,
        depth: u32,
    ) -> Result<Remake, CannotRemake> {
        let Some(l) = self.lineage.get(&id) else {
            let evicted = self.objects.get(&id).is_some_and(|e| e.lineage_evicted);
            return Err(if evicted {
                CannotRemake::Failed("its lineage was evicted (see --lineage-bytes)".into())
            } else {
                CannotRemake::NoLineage
            });
        };
        let task = l.spec.task_id;
        if self.tasks.contains_key(&task) {
            return Ok(Remake::UnderWay);
        }
        if depth >= MAX_DEPTH {
            return Err(CannotRemake::Failed(format!(
                "its lineage is deeper than {MAX_DEPTH} tasks"
            )));
        }
        let Some((spec, owner)) = self.lineage.take_run(&id) else {
            return Err(CannotRemake::Failed(
                "the task that made it has no retries left".into(),
            ));
        };
        let retries_left = self.lineage.get(&id).map_or(0, |l| l.retries_left);
        tracing::info!(object = %id, task = %task, function = %spec.function, retries_left, "every copy of an object is lost; making it again from its lineage");
        self.metrics.reconstructions += 1;
        self.lineage.object_back(&id);

        // A pull of a lost copy still under way is given up (its end is ignored): the new
        // run's result takes its place in the store, and its failure must not start a second
        // run.
        if self.store.index.reserved_by(&id, Holder::Node) {
            tracing::debug!(object = %id, "giving up a pull of a lost copy");
            self.store_remove(&id);
        }
        // Its entry: pending again, its lost copies forgotten.
        let e = self.objects.entry(id);
        e.owner.get_or_insert(spec.owner);
        e.value = None;
        let (release, localizing) = match e.take_copies() {
            Some(r) => (r.release_to, r.localizing),
            None => (Vec::new(), Vec::new()),
        };
        let dependents = e.dependents.clone();
        for p in release {
            // A holder still in view that could not give it (a pull failed) may drop its
            // copy; the others are gone, with their copies and this node's refs there.
            if self.spill.in_view(&p) {
                self.tell_peer(p, PeerMsg::Release { ids: vec![id] });
            }
        }
        // Tasks here that counted it ready count it missing again (those waiting for a copy
        // here counted it already); tasks sent to peers come back if they cannot get it.
        for t in dependents {
            if self.spill.spilled_to(&t).is_some() || localizing.contains(&t) {
                continue;
            }
            // Waiting for a peer with room: it waits for this first.
            self.spill.remote_wait.retain(|w| *w != t);
            if let Some(te) = self.tasks.get_mut(&t) {
                te.missing += 1;
            }
        }

        // The task again: its arguments pinned for it first (what each is, looked at before:
        // pinning makes an entry for one that was freed), then made again where lost.
        let entry = TaskEntry::new(now, spec, id, owner, 0, 0);
        let args: Vec<(ObjectId, ArgState)> =
            entry.arg_refs().map(|a| (a, self.arg_state(&a))).collect();
        for n in &entry.spec.nested {
            self.objects.pin(n);
        }
        self.tasks.insert(task, entry);
        if let Some(te) = self.tasks.get_mut(&task) {
            te.retries_left = retries_left;
        }
        for (a, _) in &args {
            let e = self.objects.entry(*a);
            e.pins += 1;
            e.dependents.push(task);
        }
        let mut failed = None;
        for (a, state) in args {
            let missing = match state {
                ArgState::Ready => false,
                ArgState::Pending => true,
                ArgState::Failed(err) => {
                    failed = Some(err);
                    break;
                }
                ArgState::Lost => match self.reconstruct_at(now, a, depth + 1) {
                    // Its dependents, this task among them, count it missing now.
                    Ok(Remake::Started) => false,
                    Ok(Remake::UnderWay) => true,
                    Err(why) => {
                        let reason = match why.error(a) {
                            TaskError::ObjectLost { .. } => {
                                format!(
                                    "its argument {a} is lost and cannot be made again (a put, \
                                     another owner's object, or its lineage was evicted)"
                                )
                            }
                            other => format!("its argument: {other}"),
                        };
                        failed = Some(TaskError::ObjectReconstructionFailed { id, reason });
                        break;
                    }
                },
            };
            if missing {
                if let Some(te) = self.tasks.get_mut(&task) {
                    te.missing += 1;
                }
            }
        }
        if let Some(err) = failed {
            self.fail_task(now, task, err);
        } else if self.tasks.get(&task).is_some_and(|te| te.missing == 0) {
            self.deps_ready(now, task);
        }
        Ok(Remake::Started)
    }

    /// A task about to run again whose result is in this node's store already (a copy of an
    /// earlier run's, pulled here for another task): it ends with that copy rather than
    /// run (its result could not be stored beside it anyway). Says whether it did.
    pub(super) fn result_here(&mut self, now: Instant, task: TaskId) -> bool {
        let Some(ret) = self.tasks.get(&task).map(|e| e.ret) else {
            return false;
        };
        let Some(object) = self.store.index.sealed(&ret) else {
            return false;
        };
        tracing::info!(task = %task, object = %ret, "a task's result is here already; not running it again");
        self.end_with_copy(now, task, ret, object);
        true
    }

    /// Ends `task` with the copy of its result `ret` this node's store holds.
    pub(super) fn end_with_copy(
        &mut self,
        now: Instant,
        task: TaskId,
        ret: ObjectId,
        object: shoal_protocol::SharedObject,
    ) {
        let value = ObjectValue::Shared(object);
        let (known, push_to) = self
            .objects
            .get(&ret)
            .map_or((false, None), |e| (e.value.is_some(), e.push_to));
        self.finish_task(now, task);
        if !known {
            self.object_ready(now, ret, value);
        } else if let Some(owner) = push_to {
            // Its owner asked for this run: it gets the value as from any other.
            self.send(owner, shoal_protocol::ToClient::Object { id: ret, value });
        }
    }

    /// Places again a task that came back from a peer: once its arguments are ready (one
    /// may be being made again meanwhile; its arrival places the task then).
    pub(super) fn requeue(&mut self, now: Instant, task: TaskId) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let missing = entry
            .arg_refs()
            .filter(|id| {
                self.objects
                    .get(id)
                    .is_some_and(|e| e.value.is_none() && !e.ready_remotely())
            })
            .count();
        if let Some(e) = self.tasks.get_mut(&task) {
            e.missing = missing;
        }
        if missing == 0 {
            self.place_task(now, task);
        }
    }

    /// A task this node sent to `peer` failed there because its argument `arg` could not be
    /// had. If this node can still give it, or make it again, the task comes back and runs
    /// again once it is here (a lost argument does not count against the task's budget;
    /// one that was there does). Says whether it did; if not, the error stands.
    pub(super) fn arg_lost(
        &mut self,
        now: Instant,
        peer: PeerKey,
        task: TaskId,
        arg: ObjectId,
    ) -> bool {
        let Some(entry) = self.tasks.get(&task) else {
            return false;
        };
        if entry.is_call() || !entry.arg_refs().any(|a| a == arg) {
            return false;
        }
        if self.lineage.get(&arg).is_some() && !self.lost_here(&arg) {
            // This node can make it again: the copies it knew of could not be had where the
            // task ran (a cut between those peers, or copies gone with a loss not yet
            // noticed here). They are given up, and it is made again (at least once).
            if let Some(r) = self
                .objects
                .get_mut(&arg)
                .and_then(|e| e.remote.as_deref_mut())
            {
                r.holders.clear();
            }
        }
        let lost = self.lost_here(&arg);
        if lost && self.lineage.get(&arg).is_none() {
            return false;
        }
        if !lost && entry.retries_left == 0 {
            return false;
        }
        let demand = entry.spec.resources.clone();
        self.spill.unspill(&task);
        if let Some(l) = self.spill.peers.get_mut(&peer) {
            l.task_returned(demand);
        }
        if !lost {
            if let Some(te) = self.tasks.get_mut(&task) {
                te.retries_left -= 1;
            }
            self.metrics.tasks_retried += 1;
            tracing::info!(task = %task, %peer, object = %arg, "a peer could not get a task's argument; placing the task again");
            self.requeue(now, task);
            return true;
        }
        tracing::info!(task = %task, %peer, object = %arg, "a task's argument is lost; making it again");
        match self.reconstruct(now, arg) {
            Ok(Remake::Started) => {}
            Ok(Remake::UnderWay) => {
                if let Some(te) = self.tasks.get_mut(&task) {
                    te.missing += 1;
                }
            }
            Err(why) => {
                self.fail_task(now, task, why.error(arg));
                return true;
            }
        }
        if self.tasks.get(&task).is_some_and(|te| te.missing == 0) {
            self.place_task(now, task);
        }
        true
    }
}
