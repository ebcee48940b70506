//! The core's side of the shared-memory store: the index it decides with, and the file
//! operations it asks the shell for.
//!
//! The core keeps the [`StoreIndex`] and changes it at once, as if every file operation
//! issued so far were done; each operation leaves as [`Output::Store`] and the shell carries
//! them out in order, off the event loop. What must wait for the files waits for the op's
//! completion ([`Input::Store`]):
//!
//! - a writer is told `Created` once its partial file exists; a pull starts then too;
//! - a put, a task's result or a pulled copy becomes the object's value once its file is
//!   renamed into place;
//! - a reader of a spilled object (a `get`, a task's or an actor call's arguments, a peer's
//!   transfer) waits until it is read back ([`Resume`]).
//!
//! Failures come back as completions too: a spill that failed keeps the object in memory, a
//! restore that failed makes the object's value an error for good (its disk copy is
//! unreadable or corrupted), a seal that failed makes it `ObjectUnavailable`.
//!
//! [`Input::Store`]: super::Input::Store

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use shoal_protocol::{
    ActorId, CreateOutcome, ObjectId, ObjectValue, SharedObject, StoreError, TaskError, TaskId,
    ToClient,
};

use super::sched::WorkerId;
use super::{ConnId, NodeCore, Output, Party};
use crate::store::{
    Holder, Location, OpId, OpKind, Sealed, StoreDone, StoreFault, StoreIndex, StoreOp,
};

/// What the core does when a store op ends.
#[derive(Debug)]
pub(super) enum After {
    /// A writer's partial file exists (or not): answer its `Create`.
    Created {
        conn: ConnId,
        request: u64,
        id: ObjectId,
    },
    /// The partial file of a copy to pull exists: pull.
    PullReady {
        id: ObjectId,
        object: SharedObject,
        holders: Vec<shoal_protocol::mesh::PeerKey>,
    },
    /// A put is sealed: the object exists.
    Put {
        id: ObjectId,
        object: SharedObject,
        nested: Vec<ObjectId>,
        new: bool,
    },
    /// A task's result is sealed.
    Result {
        task: TaskId,
        object: SharedObject,
        nested: Vec<ObjectId>,
        new: bool,
    },
    /// A pulled copy is sealed.
    Pulled {
        id: ObjectId,
        object: SharedObject,
        new: bool,
    },
    /// A spill ended.
    Spilled { id: ObjectId },
    /// A spilled object is back in memory (or not).
    Restored { id: ObjectId },
}

/// Work that waits for a spilled object to be read back, run again once it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resume {
    /// Send `party` the object.
    Get(Party, ObjectId),
    /// Send `task` to `worker`, which holds it.
    Dispatch(WorkerId, TaskId),
    /// Hand `worker` the actor created by `task`.
    Host(WorkerId, TaskId),
    /// Send an actor its ready calls.
    Pump(ActorId),
    /// Open the object for a peer's transfer.
    Serve(u64, ObjectId),
}

/// The store as the core keeps it.
#[derive(Debug)]
pub(super) struct CoreStore {
    pub(super) index: StoreIndex,
    /// The store directory (told to clients; no file is touched through it here).
    pub(super) dir: PathBuf,
    next_op: OpId,
    pending: HashMap<OpId, After>,
    /// Restores under way, by object.
    restoring: HashMap<ObjectId, OpId>,
    /// What waits for each restore.
    parked: HashMap<OpId, Vec<Resume>>,
    /// Pulls under way, by object: the number of the op that made their file. A pull that
    /// ends after its reservation was dropped (and perhaps made again) is not this one.
    pub(super) pulls: HashMap<ObjectId, OpId>,
}

impl CoreStore {
    pub(super) fn new(dir: PathBuf, capacity: u64) -> Self {
        Self {
            index: StoreIndex::new(capacity),
            dir,
            next_op: 1,
            pending: HashMap::new(),
            restoring: HashMap::new(),
            parked: HashMap::new(),
            pulls: HashMap::new(),
        }
    }

    /// Whether shared object `id`'s file is in memory (or will be once the ops issued so
    /// far have run, without waiting for a restore).
    pub(super) fn in_memory(&self, id: &ObjectId) -> bool {
        !self.restoring.contains_key(id) && self.index.location(id) != Some(Location::Disk)
    }

    /// Ops issued whose completion has not come back.
    pub(super) fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// Whether a shared object is readable now.
pub(super) enum Ready {
    /// In memory.
    Now,
    /// Being read back by op `OpId`.
    After(OpId),
}

impl NodeCore {
    fn store_op(&mut self, kind: OpKind, after: Option<After>) -> Option<OpId> {
        let op = after.map(|after| {
            let op = self.store.next_op;
            self.store.next_op += 1;
            self.store.pending.insert(op, after);
            op
        });
        let used = self.store.index.used();
        self.out
            .push_back(Output::Store(StoreOp { op, used, kind }));
        op
    }

    /// Plans room for `size` more bytes and issues the evictions and spills it takes.
    fn make_room(&mut self, size: u64) -> Result<(), StoreError> {
        let plan = self.store.index.plan_room(size)?;
        for id in plan.evict {
            let size = self.store.index.sealed(&id).map_or(0, |o| o.size);
            self.store.index.evicted(&id);
            self.store_op(OpKind::DropMemory { id, size }, None);
        }
        for id in plan.spill {
            let size = self.store.index.sealed(&id).map_or(0, |o| o.size);
            self.store.index.spilled(&id);
            self.store_op(OpKind::Spill { id, size }, Some(After::Spilled { id }));
        }
        Ok(())
    }

    /// Reserves room for `id` and has its partial file made; `after` runs once it is.
    pub(super) fn store_reserve(
        &mut self,
        id: ObjectId,
        size: u64,
        holder: Holder,
        after: After,
    ) -> Result<CreateOutcome, StoreError> {
        if self.store.index.contains(&id) {
            return Ok(CreateOutcome::Exists);
        }
        self.make_room(size)?;
        self.store.index.reserve(id, size, holder)?;
        self.store_op(OpKind::Create { id, size }, Some(after));
        Ok(CreateOutcome::Write)
    }

    /// Seals reservation `ticket` as `id`; `after` runs once its file is in place. Returns
    /// whether the object is new here (not equal bytes stored before); a new one is pinned
    /// in memory until then, so that whoever its value is sent to at once finds its file.
    pub(super) fn store_seal(
        &mut self,
        ticket: ObjectId,
        id: ObjectId,
        object: SharedObject,
        after: impl FnOnce(bool) -> After,
    ) -> Result<bool, StoreError> {
        let new = self.store.index.seal(ticket, id, object)? == Sealed::New;
        if new {
            self.store.index.pin(&id);
        }
        let kind = OpKind::Seal {
            ticket,
            id,
            size: object.size,
            keep: new,
        };
        self.store_op(kind, Some(after(new)));
        Ok(new)
    }

    /// Drops a reservation or an object, and its files.
    pub(super) fn store_remove(&mut self, id: &ObjectId) {
        let size = self.store.index.sealed(id).map_or(0, |o| o.size);
        let Some((mem, disk)) = self.store.index.remove(id) else {
            return;
        };
        self.store.pulls.remove(id);
        match mem {
            Some(Location::Writing) => {
                self.store_op(OpKind::DropPartial { id: *id }, None);
            }
            Some(_) => {
                self.store_op(OpKind::DropMemory { id: *id, size }, None);
            }
            None => {}
        }
        if disk {
            self.store_op(OpKind::DropDisk { id: *id }, None);
        }
    }

    /// Drops the unsealed reservations of a writer that went away.
    pub(super) fn store_abort_holder(&mut self, holder: Holder) {
        let mut ids = self.store.index.reservations_of(holder);
        ids.sort();
        for id in ids {
            self.store_remove(&id);
        }
    }

    /// Whether shared object `id` is in memory, or when it will be: a spilled one is read
    /// back (pinned meanwhile). Marks it used.
    pub(super) fn store_ensure(&mut self, id: ObjectId) -> Result<Ready, TaskError> {
        self.store.index.touch(&id);
        // (The index counts a restore under way as in memory already.)
        if let Some(op) = self.store.restoring.get(&id) {
            return Ok(Ready::After(*op));
        }
        if self.store.index.location(&id) != Some(Location::Disk) {
            return Ok(Ready::Now);
        }
        let unavailable = |message: String| TaskError::ObjectUnavailable { id, message };
        let Some(object) = self.store.index.sealed(&id) else {
            return Err(unavailable(format!("object {id} is not sealed")));
        };
        if let Err(e) = self
            .make_room(object.size)
            .and_then(|()| self.store.index.restoring(&id))
        {
            // Memory is held by restores under way: try again once they have ended (what
            // they read back may then make room), rather than fail the reader.
            return match self.store.restoring.values().max() {
                Some(op) => Ok(Ready::After(*op)),
                None => Err(unavailable(e.to_string())),
            };
        }
        self.store.index.pin(&id);
        let kind = OpKind::Restore {
            id,
            digest: object.digest,
        };
        let Some(op) = self.store_op(kind, Some(After::Restored { id })) else {
            return Err(unavailable("no restore was issued".into()));
        };
        self.store.restoring.insert(id, op);
        Ok(Ready::After(op))
    }

    /// Runs `resume` once restore `op` has ended.
    pub(super) fn park(&mut self, op: OpId, resume: Resume) {
        self.store.parked.entry(op).or_default().push(resume);
    }

    /// A store op ended.
    pub(super) fn store_done(&mut self, now: Instant, done: StoreDone) {
        let Some(after) = self.store.pending.remove(&done.op) else {
            tracing::warn!(op = done.op, "completion of an unknown store op; ignored");
            return;
        };
        match after {
            After::Created { conn, request, id } => {
                let result = match done.result {
                    Ok(()) => Ok(CreateOutcome::Write),
                    Err(fault) => {
                        tracing::warn!(conn, object = %id, error = %fault, "cannot make an object's file");
                        if self.store.index.reserved_by(&id, Holder::Proc(conn)) {
                            self.store.index.remove(&id);
                        }
                        Err(fault.to_store_error())
                    }
                };
                self.tell_proc(conn, ToClient::Created { request, result });
            }
            After::PullReady {
                id,
                object,
                holders,
            } => self.pull_ready(now, done.op, id, object, holders, done.result),
            After::Put {
                id,
                object,
                nested,
                new,
            } => {
                let value = self.sealed_value(id, object, new, done.result);
                self.put_sealed(now, id, value, nested);
            }
            After::Result {
                task,
                object,
                nested,
                new,
            } => {
                let ret = ObjectId::for_return(task, 0);
                let value = match self.sealed_value(ret, object, new, done.result) {
                    ObjectValue::Error(TaskError::ObjectUnavailable { message, .. }) => {
                        ObjectValue::Error(TaskError::ResultStore { message })
                    }
                    v => v,
                };
                self.result_sealed(now, task, value, nested);
            }
            After::Pulled { id, object, new } => {
                let value = self.sealed_value(id, object, new, done.result);
                self.pulled_sealed(now, id, value);
            }
            After::Spilled { id } => {
                if let Err(fault) = done.result {
                    tracing::error!(object = %id, error = %fault, "cannot spill; it stays in memory");
                    self.store.index.spill_failed(&id);
                }
            }
            After::Restored { id } => self.restored(now, id, done.op, done.result),
        }
    }

    /// The value a seal gives the object, and the index undone if it failed.
    fn sealed_value(
        &mut self,
        id: ObjectId,
        object: SharedObject,
        new: bool,
        result: Result<(), StoreFault>,
    ) -> ObjectValue {
        if new {
            self.store.index.unpin(&id);
        }
        match result {
            Ok(()) => ObjectValue::Shared(object),
            Err(fault) => {
                tracing::warn!(object = %id, error = %fault, "bad seal");
                if new {
                    // The failed seal left no file.
                    self.store.index.remove(&id);
                }
                ObjectValue::Error(TaskError::ObjectUnavailable {
                    id,
                    message: fault.to_string(),
                })
            }
        }
    }

    fn restored(&mut self, now: Instant, id: ObjectId, op: OpId, result: Result<(), StoreFault>) {
        if self.store.restoring.get(&id) == Some(&op) {
            self.store.restoring.remove(&id);
        }
        self.store.index.unpin(&id);
        if let Err(fault) = result {
            self.store.index.restore_failed(&id);
            let back = matches!(
                self.store.index.location(&id),
                Some(Location::Memory | Location::Both)
            );
            // Back in memory anyway when its spill had failed; otherwise its disk copy cannot
            // be read: the object is an error from now on (a retry could not do better).
            if !back {
                tracing::error!(object = %id, error = %fault, "cannot read a spilled object back");
                let error = match fault {
                    StoreFault::Corrupted(message) => TaskError::ObjectCorrupted { id, message },
                    other => TaskError::ObjectUnavailable {
                        id,
                        message: other.to_string(),
                    },
                };
                if let Some(e) = self.objects.get_mut(&id) {
                    e.value = Some(ObjectValue::Error(error));
                }
            }
        }
        for resume in self.store.parked.remove(&op).unwrap_or_default() {
            self.resume(now, resume);
        }
    }

    fn resume(&mut self, now: Instant, resume: Resume) {
        match resume {
            Resume::Get(party, id) => self.get(now, party, id),
            Resume::Dispatch(worker, task) => {
                if self.sched.holds(worker, task) {
                    self.dispatch(now, worker, task);
                }
            }
            Resume::Host(worker, task) => {
                if self.sched.holds(worker, task) {
                    self.host_actor(now, worker, task);
                }
            }
            Resume::Pump(actor) => self.pump_actor(now, actor),
            Resume::Serve(request, id) => self.serve(request, id),
        }
    }
}
