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
//! A writer's request for room that does not fit waits, in the order asked, while memory
//! that no plan can free now is held (reservations being written, pinned objects): each
//! input may free some, and the first waiting request is tried again after every input. It
//! is refused ([`StoreError::Full`]) only when nothing held could make room (it is larger
//! than the store, or nothing is held), or after [`ROOM_WAIT`] (a task whose own pinned
//! arguments fill the store would otherwise wait for ever). This is Ray's rule: creation
//! under pressure waits for room, and fails only when nothing can make it.
//!
//! Failures come back as completions too: a spill that failed keeps the object in memory, a
//! restore that failed makes the object's value an error for good (its disk copy is
//! unreadable or corrupted), a seal that failed makes it `ObjectUnavailable`.
//!
//! [`Input::Store`]: super::Input::Store

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_protocol::{
    ActorId, CreateOutcome, ObjectId, ObjectValue, SharedObject, StoreError, TaskError, TaskId,
    ToClient,
};

use super::sched::WorkerId;
use super::{ConnId, NodeCore, Output, Party};
use crate::store::{
    Holder, Location, OpId, OpKind, Sealed, StoreDone, StoreFault, StoreIndex, StoreOp,
};

/// How long a writer's request for room waits at most.
pub(crate) const ROOM_WAIT: Duration = Duration::from_secs(30);
/// Requests waiting for room at most; more are refused at once.
pub(crate) const MAX_ROOM_WAITS: usize = 4096;

/// A request for room, waiting for memory to be freed.
#[derive(Debug)]
pub(super) struct RoomWait {
    /// Whose.
    by: Waiter,
    id: ObjectId,
    size: u64,
    /// When it is refused if it still does not fit.
    deadline: Instant,
}

/// Who waits for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    /// A process's `Create`.
    Proc { conn: ConnId, request: u64 },
    /// This node, to pull a copy of the object from a peer.
    Pull,
    /// Readers of a spilled object, parked on `op` (a number no store op has): they try
    /// again once the room to read it back is there.
    Restore { op: OpId },
}

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
        new: bool,
    },
    /// A task's result is sealed.
    Result {
        task: TaskId,
        object: SharedObject,
        new: bool,
    },
    /// Another return of a task with several is sealed.
    Return {
        task: TaskId,
        id: ObjectId,
        object: SharedObject,
        new: bool,
    },
    /// An item of a streaming generator is sealed.
    Item {
        task: TaskId,
        index: u32,
        object: SharedObject,
        new: bool,
    },
    /// A pulled copy is sealed.
    Pulled {
        id: ObjectId,
        object: SharedObject,
        new: bool,
    },
    /// A spill ended (with the object's digest, when it took one).
    Spilled { id: ObjectId, size: u64 },
    /// An object's digest was taken (or not).
    Digested { id: ObjectId },
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
    /// Send a peer the object's value (which must carry its digest).
    TellPeer(shoal_protocol::mesh::PeerKey, ObjectId),
    /// Tell a stream's owner at a peer of its item (`task`, `owner`, `index`).
    Item(TaskId, Party, u32),
    /// Answer a process's `ToNode::Digest` (`conn`, `request`, object).
    Digest(ConnId, u64, ObjectId),
}

/// A digest being taken: by a `Digest` op, or by the spill of an object that had none.
#[derive(Debug)]
struct Digesting {
    /// The op that takes it.
    op: OpId,
    /// What waits for it.
    waiters: Vec<Resume>,
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
    /// Writers' requests waiting for room, in the order asked.
    room_waits: VecDeque<RoomWait>,
    /// Objects whose readers gave up waiting for room: their next read fails rather than
    /// waiting again.
    room_refused: Vec<ObjectId>,
    /// Digests being taken, by object (see [`NodeCore::when_digested`]).
    digesting: HashMap<ObjectId, Digesting>,
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
            room_waits: VecDeque::new(),
            room_refused: Vec::new(),
            digesting: HashMap::new(),
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

    /// Writers' requests waiting for room.
    pub(super) fn room_waiting(&self) -> usize {
        self.room_waits.len()
    }

    /// When the first request waiting for room is refused, if it still does not fit.
    pub(super) fn room_deadline(&self) -> Option<Instant> {
        self.room_waits.front().map(|w| w.deadline)
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
            let sealed = self.store.index.sealed(&id);
            let size = sealed.map_or(0, |o| o.size);
            // A put not hashed yet: its spill takes the digest its restore is checked with
            // (unless a digest op ahead of it does).
            let digest = sealed.is_some_and(|o| o.digest.is_none())
                && !self.store.digesting.contains_key(&id);
            self.store.index.spilled(&id);
            self.metrics.spills += 1;
            self.metrics.spilled_bytes += size;
            let op = self.store_op(
                OpKind::Spill { id, size, digest },
                Some(After::Spilled { id, size }),
            );
            if let (true, Some(op)) = (digest, op) {
                let waiting = Digesting {
                    op,
                    waiters: Vec::new(),
                };
                self.store.digesting.insert(id, waiting);
            }
        }
        Ok(())
    }

    /// A process asks for room to write `id` (`ToNode::Create`): reserved now (answered
    /// once its file exists), or once memory is freed (see the module documentation), or
    /// refused.
    pub(super) fn create_asked(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: u64,
        id: ObjectId,
        size: u64,
    ) {
        // Earlier requests waiting for room go first.
        if self.store.room_waits.is_empty() || self.store.index.contains(&id) {
            match self.reserve_for(conn, request, id, size) {
                Ok(()) => return,
                Err(e) if !self.room_may_come(size) => {
                    return self.refuse_room(conn, request, id, e);
                }
                Err(_) => {}
            }
        }
        if self.store.room_waits.len() >= MAX_ROOM_WAITS {
            let e = self.full(size);
            return self.refuse_room(conn, request, id, e);
        }
        tracing::debug!(conn, object = %id, size, used = self.store.index.used(),
            "waiting for room in the store");
        self.store.room_waits.push_back(RoomWait {
            by: Waiter::Proc { conn, request },
            id,
            size,
            deadline: now + ROOM_WAIT,
        });
    }

    /// A pull of `id` (`size` bytes) found no room: whether it waits for some (see the
    /// module documentation); `false` if nothing held could make room.
    pub(super) fn pull_waits(&mut self, now: Instant, id: ObjectId, size: u64) -> bool {
        if !self.room_may_come(size) || self.store.room_waits.len() >= MAX_ROOM_WAITS {
            return false;
        }
        tracing::debug!(object = %id, size, used = self.store.index.used(),
            "a pull waits for room in the store");
        self.store.room_waits.push_back(RoomWait {
            by: Waiter::Pull,
            id,
            size,
            deadline: now + ROOM_WAIT,
        });
        true
    }

    /// Reserves room for a process's object; `Created` goes to it once its file exists (at
    /// once if the object exists already).
    fn reserve_for(
        &mut self,
        conn: ConnId,
        request: u64,
        id: ObjectId,
        size: u64,
    ) -> Result<(), StoreError> {
        let after = After::Created { conn, request, id };
        match self.store_reserve(id, size, Holder::Proc(conn), after)? {
            CreateOutcome::Write => {}
            outcome => self.tell_proc(
                conn,
                ToClient::Created {
                    request,
                    result: Ok(outcome),
                },
            ),
        }
        Ok(())
    }

    /// Whether memory held now could make room for `size` bytes once freed.
    fn room_may_come(&self, size: u64) -> bool {
        size <= self.store.index.capacity() && self.store.index.held() > 0
    }

    fn full(&self, size: u64) -> StoreError {
        StoreError::Full {
            requested: size,
            used: self.store.index.used(),
            capacity: self.store.index.capacity(),
        }
    }

    fn refuse_room(&mut self, conn: ConnId, request: u64, id: ObjectId, e: StoreError) {
        tracing::warn!(conn, object = %id, error = %e, "store refused an object");
        self.tell_proc(
            conn,
            ToClient::Created {
                request,
                result: Err(e),
            },
        );
    }

    /// Requests waiting for room that fit now are reserved, in order; the first that does
    /// not fit stops the others, unless its deadline has passed or nothing held could make
    /// room for it any more (it is refused then).
    pub(super) fn retry_room(&mut self, now: Instant) {
        while let Some(w) = self.store.room_waits.front() {
            let (by, id, size, deadline) = (w.by, w.id, w.size, w.deadline);
            let result = match by {
                Waiter::Proc { conn, request } => self.reserve_for(conn, request, id, size),
                // The pull, or the readers, start over once room is there (the pull's holders
                // may have changed; the object may be gone).
                Waiter::Pull | Waiter::Restore { .. } => {
                    self.store.index.plan_room(size).map(|_| ())
                }
            };
            let refused = match result {
                Ok(()) => None,
                Err(e) if deadline <= now || !self.room_may_come(size) => Some(e),
                Err(_) => return,
            };
            self.store.room_waits.pop_front();
            match (by, refused) {
                (Waiter::Proc { .. }, None) => {}
                (Waiter::Proc { conn, request }, Some(e)) => self.refuse_room(conn, request, id, e),
                (Waiter::Pull, None) => {
                    if let Some(r) = self.objects.remote_mut(&id) {
                        r.fetching = false;
                    }
                    self.start_fetch(id);
                }
                (Waiter::Pull, Some(e)) => {
                    tracing::warn!(object = %id, error = %e, "no room to pull an object");
                    if let Some(r) = self.objects.remote_mut(&id) {
                        r.fetching = false;
                    }
                    let message = e.to_string();
                    let value = ObjectValue::Error(TaskError::ObjectUnavailable { id, message });
                    self.pulled_sealed(now, id, value);
                }
                (Waiter::Restore { op }, refused) => {
                    // Given up: their reads fail (once) rather than wait again.
                    if refused.is_some() {
                        self.store.room_refused.push(id);
                    }
                    for resume in self.store.parked.remove(&op).unwrap_or_default() {
                        self.resume(now, resume);
                    }
                    self.store.room_refused.retain(|r| *r != id);
                }
            }
        }
    }

    /// A process went away: its requests for room are dropped.
    pub(super) fn room_detached(&mut self, conn: ConnId) {
        self.store
            .room_waits
            .retain(|w| !matches!(w.by, Waiter::Proc { conn: c, .. } if c == conn));
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
        let Some(digest) = object.digest else {
            // Its spill is taking the digest to check the read back with: after it.
            return match self.store.digesting.get(&id) {
                Some(d) => Ok(Ready::After(d.op)),
                None => Err(unavailable(format!(
                    "object {id} was spilled without a digest to check it with"
                ))),
            };
        };
        if let Err(e) = self
            .make_room(object.size)
            .and_then(|()| self.store.index.restoring(&id))
        {
            // Memory is held by restores under way: try again once they have ended (what
            // they read back may then make room), rather than fail the reader.
            if let Some(op) = self.store.restoring.values().max() {
                return Ok(Ready::After(*op));
            }
            // Or by writers and pinned objects: wait for room as a writer does.
            let waiting = self.store.room_waits.iter().find_map(|w| match w.by {
                Waiter::Restore { op } if w.id == id => Some(op),
                _ => None,
            });
            if let Some(op) = waiting {
                return Ok(Ready::After(op));
            }
            let refused = self.store.room_refused.contains(&id);
            if refused
                || !self.room_may_come(object.size)
                || self.store.room_waits.len() >= MAX_ROOM_WAITS
            {
                return Err(unavailable(e.to_string()));
            }
            let op = self.store.next_op;
            self.store.next_op += 1;
            tracing::debug!(object = %id, size = object.size, "a read back waits for room");
            self.store.room_waits.push_back(RoomWait {
                by: Waiter::Restore { op },
                id,
                size: object.size,
                deadline: self.now + ROOM_WAIT,
            });
            return Ok(Ready::After(op));
        }
        self.store.index.pin(&id);
        self.metrics.restores += 1;
        self.metrics.restored_bytes += object.size;
        let kind = OpKind::Restore { id, digest };
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

    /// Runs `resume` once shared object `id` has a digest (a value leaving the node must
    /// carry one; a `put` is sealed without). The digest is taken from its memory file by a
    /// [`OpKind::Digest`] op, or comes with the spill under way that takes it. If it cannot
    /// be taken, the object's value is an error when `resume` runs.
    pub(super) fn when_digested(&mut self, id: ObjectId, resume: Resume) {
        if let Some(d) = self.store.digesting.get_mut(&id) {
            d.waiters.push(resume);
            return;
        }
        let in_memory = matches!(
            self.store.index.location(&id),
            Some(Location::Memory | Location::Both)
        );
        let sealed = self.store.index.sealed(&id);
        if let Some(digest) = sealed.and_then(|o| o.digest) {
            // (Taken meanwhile: the value is told it.)
            self.digest_known(id, digest);
        } else if in_memory && sealed.is_some() {
            // (Ops run in order: the file is there until an op issued after this one.)
            if let Some(op) = self.store_op(OpKind::Digest { id }, Some(After::Digested { id })) {
                self.store.digesting.insert(
                    id,
                    Digesting {
                        op,
                        waiters: vec![resume],
                    },
                );
                return;
            }
        } else {
            tracing::error!(object = %id, "no copy to take a digest of");
            self.digest_failed(id, "its node holds no copy to take its digest of".into());
        }
        let now = self.now;
        self.resume(now, resume);
    }

    /// A process asks for the digest of object `id`: the recorded one, or one taken now.
    pub(super) fn digest_asked(&mut self, conn: ConnId, request: u64, id: ObjectId) {
        let result = match self.objects.get(&id).and_then(|e| e.value.as_ref()) {
            Some(ObjectValue::Shared(o)) => match o.digest {
                Some(d) => Ok(d),
                None => return self.when_digested(id, Resume::Digest(conn, request, id)),
            },
            Some(ObjectValue::Error(e)) => Err(e.clone()),
            Some(ObjectValue::Inline(_)) | None => Err(TaskError::ObjectUnavailable {
                id,
                message: "not a large object this node holds".into(),
            }),
        };
        self.tell_proc(conn, ToClient::Digest { request, result });
    }

    /// Object `id`'s digest is `digest`: recorded in the index and in its value.
    fn digest_known(&mut self, id: ObjectId, digest: shoal_protocol::Digest) {
        self.store.index.set_digest(&id, digest);
        if let Some(ObjectValue::Shared(o)) =
            self.objects.get_mut(&id).and_then(|e| e.value.as_mut())
        {
            o.digest.get_or_insert(digest);
        }
    }

    /// Object `id`'s digest cannot be taken: its copy here is unreadable, so it is
    /// unavailable from now on.
    fn digest_failed(&mut self, id: ObjectId, message: String) {
        if let Some(e) = self.objects.get_mut(&id) {
            if matches!(e.value, Some(ObjectValue::Shared(_))) {
                e.value = Some(ObjectValue::Error(TaskError::ObjectUnavailable {
                    id,
                    message,
                }));
            }
        }
    }

    /// Op `op`, which was to take object `id`'s digest, ended: with it, or with `fault`.
    fn digest_done(
        &mut self,
        now: Instant,
        id: ObjectId,
        op: OpId,
        digest: Option<shoal_protocol::Digest>,
        fault: Option<&StoreFault>,
    ) {
        let waiters = match self.store.digesting.get(&id) {
            Some(d) if d.op == op => self.store.digesting.remove(&id).map(|d| d.waiters),
            _ => None,
        }
        .unwrap_or_default();
        match digest {
            Some(digest) => self.digest_known(id, digest),
            None if !self.store.index.contains(&id) => {}
            None => {
                let message = fault.map_or_else(|| "no digest was taken".into(), |f| f.to_string());
                if self
                    .store
                    .index
                    .sealed(&id)
                    .is_some_and(|o| o.digest.is_none())
                    && !self.store.in_memory(&id)
                {
                    tracing::error!(object = %id, error = %message, "cannot take an object's digest");
                    self.digest_failed(id, message);
                } else if !waiters.is_empty() {
                    // A spill that failed before it took it: the object is in memory still.
                    for resume in waiters {
                        self.when_digested(id, resume);
                    }
                    self.resume_parked(now, op);
                    return;
                }
            }
        }
        for resume in waiters {
            self.resume(now, resume);
        }
        self.resume_parked(now, op);
    }

    /// Runs what was parked on op `op`.
    fn resume_parked(&mut self, now: Instant, op: OpId) {
        for resume in self.store.parked.remove(&op).unwrap_or_default() {
            self.resume(now, resume);
        }
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
            // (The refs inside a put or a result were pinned when it was sealed.)
            After::Put { id, object, new } => {
                let value = self.sealed_value(id, object, new, done.result);
                self.put_sealed(now, id, value);
            }
            After::Result { task, object, new } => {
                let ret = ObjectId::for_return(task, 0);
                let value = match self.sealed_value(ret, object, new, done.result) {
                    ObjectValue::Error(TaskError::ObjectUnavailable { message, .. }) => {
                        ObjectValue::Error(TaskError::ResultStore { message })
                    }
                    v => v,
                };
                self.result_sealed(now, task, ret, value);
            }
            After::Return {
                task,
                id,
                object,
                new,
            } => {
                let value = match self.sealed_value(id, object, new, done.result) {
                    ObjectValue::Error(TaskError::ObjectUnavailable { message, .. }) => {
                        ObjectValue::Error(TaskError::ResultStore { message })
                    }
                    v => v,
                };
                self.return_sealed(now, task, id, value);
            }
            After::Item {
                task,
                index,
                object,
                new,
            } => {
                let id = ObjectId::for_return(task, index);
                let value = match self.sealed_value(id, object, new, done.result) {
                    ObjectValue::Error(TaskError::ObjectUnavailable { message, .. }) => {
                        ObjectValue::Error(TaskError::ResultStore { message })
                    }
                    v => v,
                };
                self.item_made(now, task, index, value);
            }
            After::Pulled { id, object, new } => {
                let value = self.sealed_value(id, object, new, done.result);
                self.pulled_sealed(now, id, value);
            }
            After::Spilled { id, size } => {
                if let Err(fault) = &done.result {
                    tracing::error!(object = %id, error = %fault, "cannot spill; it stays in memory");
                    if self.store.index.contains(&id) {
                        self.store.index.spill_failed(&id);
                    } else {
                        // Freed while it was being spilled: its removal dropped the disk
                        // copy the spill was to make; the memory copy that stayed goes too.
                        self.store_op(OpKind::DropMemory { id, size }, None);
                    }
                }
                if self
                    .store
                    .digesting
                    .get(&id)
                    .is_some_and(|d| d.op == done.op)
                {
                    let fault = done.result.as_ref().err();
                    self.digest_done(now, id, done.op, done.digest, fault);
                }
            }
            After::Restored { id } => self.restored(now, id, done.op, done.result),
            After::Digested { id } => {
                if let Err(fault) = &done.result {
                    tracing::error!(object = %id, error = %fault, "cannot take an object's digest");
                }
                let fault = done.result.as_ref().err();
                self.digest_done(now, id, done.op, done.digest, fault);
            }
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
        self.resume_parked(now, op);
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
            Resume::TellPeer(peer, id) => {
                let value = self.objects.get(&id).and_then(|e| e.value.clone());
                let value = value.unwrap_or_else(|| {
                    ObjectValue::Error(TaskError::ObjectUnavailable {
                        id,
                        message: "freed before its digest was taken".into(),
                    })
                });
                self.tell_peer_as_client(peer, ToClient::Object { id, value });
            }
            Resume::Item(task, owner, index) => self.announce_item(task, owner, index),
            Resume::Digest(conn, request, id) => self.digest_asked(conn, request, id),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_protocol::{
        Digest, ObjectId, ObjectValue, SharedObject, StoreError, TaskError, ToClient, ToNode,
    };

    use crate::core::harness::{done, drain, ops, replies, send};
    use crate::core::{NodeCore, Output};
    use crate::store::{OpKind, StoreFault, StoreOp};

    const MB: u64 = 1 << 20;

    fn node(capacity: u64) -> (NodeCore, Instant) {
        let now = Instant::now();
        (crate::core::harness::node(now, 1.0, capacity), now)
    }

    /// A writer asks for room for `id`.
    fn create(
        core: &mut NodeCore,
        now: Instant,
        request: u64,
        id: ObjectId,
        size: u64,
    ) -> Vec<Output> {
        send(core, now, ToNode::Create { request, id, size })
    }

    /// A writer seals `ticket` as `id`.
    fn seal(
        core: &mut NodeCore,
        now: Instant,
        ticket: ObjectId,
        id: ObjectId,
        object: SharedObject,
    ) -> Vec<Output> {
        seal_holding(core, now, ticket, id, object, Vec::new())
    }

    /// A writer seals `ticket` as `id`, an object that holds the refs `nested`.
    fn seal_holding(
        core: &mut NodeCore,
        now: Instant,
        ticket: ObjectId,
        id: ObjectId,
        object: SharedObject,
        nested: Vec<ObjectId>,
    ) -> Vec<Output> {
        send(
            core,
            now,
            ToNode::Seal {
                ticket,
                id,
                object,
                nested,
            },
        )
    }

    /// Puts `size` bytes through the store, completing every op; returns the object.
    fn put(core: &mut NodeCore, now: Instant, seed: u8, size: u64) -> (ObjectId, SharedObject) {
        let ticket = ObjectId([seed; 32]);
        let object = SharedObject {
            size,
            digest: Some(Digest([seed; 32])),
        };
        let id = ObjectId::from_digest(object.digest.expect("a content-addressed put"));
        let out = send(
            core,
            now,
            ToNode::Create {
                request: u64::from(seed),
                id: ticket,
                size,
            },
        );
        for op in ops(&out) {
            if op.op.is_some() {
                done(core, now, op, Ok(()));
            }
        }
        drain(core);
        let out = seal(core, now, ticket, id, object);
        for op in ops(&out) {
            done(core, now, op, Ok(()));
        }
        drain(core);
        (id, object)
    }

    #[test]
    fn refs_inside_a_put_are_pinned_when_it_is_sealed_not_when_its_file_is_in_place() {
        let (mut core, now) = node(64 * MB);
        let value = vec![7u8; 8];
        let inner = ObjectId::for_content(&value);
        let nested = Vec::new();
        send(
            &mut core,
            now,
            ToNode::Put {
                id: inner,
                value: value.clone(),
                nested,
            },
        );
        let ticket = ObjectId([4; 32]);
        for op in ops(&create(&mut core, now, 1, ticket, MB)) {
            done(&mut core, now, op, Ok(()));
        }
        drain(&mut core);
        let object = SharedObject {
            size: MB,
            digest: Some(Digest([4; 32])),
        };
        let outer = ObjectId::from_digest(object.digest.expect("a content-addressed put"));
        let sealing = ops(&seal_holding(
            &mut core,
            now,
            ticket,
            outer,
            object,
            vec![inner],
        ));
        // The writer lets its own ref go before the file is in place: the put holds it.
        send(&mut core, now, ToNode::Release { ids: vec![inner] });
        for op in sealing {
            done(&mut core, now, op, Ok(()));
        }
        drain(&mut core);
        let out = send(&mut core, now, ToNode::Get { ids: vec![inner] });
        assert_eq!(
            replies(&out),
            vec![ToClient::Object {
                id: inner,
                value: ObjectValue::Inline(value)
            }]
        );
        // Once the outer object goes, the inner one goes with it.
        send(&mut core, now, ToNode::Release { ids: vec![outer] });
        assert_eq!(core.census().objects, 0);
    }

    #[test]
    fn a_writer_is_told_created_once_its_file_exists_and_a_put_is_read_once_sealed() {
        let (mut core, now) = node(64 * MB);
        let ticket = ObjectId([3; 32]);
        let out = create(&mut core, now, 9, ticket, 4 * MB);
        let create = ops(&out);
        assert!(matches!(
            create[..],
            [StoreOp {
                kind: OpKind::Create { size, .. },
                used,
                op: Some(_)
            }] if size == 4 * MB && used == 4 * MB
        ));
        assert!(replies(&out).is_empty(), "no answer before the file exists");
        done(&mut core, now, create[0].clone(), Ok(()));
        let out = drain(&mut core);
        assert!(matches!(
            replies(&out)[..],
            [ToClient::Created {
                request: 9,
                result: Ok(_)
            }]
        ));

        let object = SharedObject {
            size: 4 * MB,
            digest: Some(Digest([3; 32])),
        };
        let id = ObjectId::from_digest(object.digest.expect("a content-addressed put"));
        let seal = ops(&seal(&mut core, now, ticket, id, object));
        assert!(matches!(
            seal[..],
            [StoreOp {
                kind: OpKind::Seal { keep: true, .. },
                ..
            }]
        ));
        // The writer's next message may read it: it waits for the file.
        let out = send(&mut core, now, ToNode::Get { ids: vec![id] });
        assert!(replies(&out).is_empty());
        done(&mut core, now, seal[0].clone(), Ok(()));
        let out = drain(&mut core);
        assert_eq!(
            replies(&out),
            vec![ToClient::Object {
                id,
                value: ObjectValue::Shared(object)
            }]
        );
    }

    /// The `Created` answers among `out`, by request number.
    fn created(out: &[Output]) -> Vec<(u64, Result<shoal_protocol::CreateOutcome, StoreError>)> {
        replies(out)
            .into_iter()
            .filter_map(|m| match m {
                ToClient::Created { request, result } => Some((request, result)),
                _ => None,
            })
            .collect()
    }

    /// Completes every op in `out` the core waits for; what that gave.
    fn complete(core: &mut NodeCore, now: Instant, out: &[Output]) -> Vec<Output> {
        for op in ops(out) {
            if op.op.is_some() {
                done(core, now, op, Ok(()));
            }
        }
        drain(core)
    }

    #[test]
    fn a_create_that_does_not_fit_waits_for_the_writer_before_it_and_then_spills_it() {
        // Two 20 MB results at once in a 25 MB store (Ray's case): the second waits for the
        // first to be sealed, then the first is spilled to make room.
        let (mut core, now) = node(25 * MB);
        let (a, b) = (ObjectId([1; 32]), ObjectId([2; 32]));
        let out = create(&mut core, now, 1, a, 20 * MB);
        let out = complete(&mut core, now, &out);
        assert!(matches!(created(&out)[..], [(1, Ok(_))]), "{out:?}");
        let out = create(&mut core, now, 2, b, 20 * MB);
        assert!(created(&out).is_empty(), "b waits: {out:?}");
        assert!(ops(&out).is_empty());
        let object = SharedObject {
            size: 20 * MB,
            digest: Some(Digest([1; 32])),
        };
        let sealed = ObjectId::from_digest(object.digest.expect("a content-addressed put"));
        let out = seal(&mut core, now, a, sealed, object);
        // Sealed, but pinned until its file is in place: still no room.
        assert!(created(&out).is_empty());
        let out = complete(&mut core, now, &out);
        let kinds: Vec<_> = ops(&out).into_iter().map(|o| o.kind).collect();
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, OpKind::Spill { id, .. } if *id == sealed)),
            "{kinds:?}"
        );
        let out = complete(&mut core, now, &out);
        assert!(matches!(created(&out)[..], [(2, Ok(_))]), "{out:?}");
    }

    #[test]
    fn a_read_back_waits_for_room_held_by_a_writer() {
        let (mut core, now) = node(25 * MB);
        // B is stored, then spilled to make room for A, which is being written.
        let (b, _) = put(&mut core, now, 9, 20 * MB);
        let a = ObjectId([1; 32]);
        let out = create(&mut core, now, 1, a, 20 * MB);
        let out = complete(&mut core, now, &out);
        assert!(matches!(created(&out)[..], [(1, Ok(_))]), "{out:?}");
        assert_eq!(
            core.store.index.location(&b),
            Some(crate::store::Location::Disk)
        );
        // A get of B waits: no error, no restore yet.
        let out = send(&mut core, now, ToNode::Get { ids: vec![b] });
        assert!(replies(&out).is_empty(), "{out:?}");
        assert!(ops(&out).is_empty());
        assert_eq!(core.store.room_waiting(), 1);
        // A is sealed and in place: B is read back (A spilled), then sent.
        let object = SharedObject {
            size: 20 * MB,
            digest: Some(Digest([1; 32])),
        };
        let out = seal(
            &mut core,
            now,
            a,
            ObjectId::from_digest(object.digest.expect("a content-addressed put")),
            object,
        );
        let mut got = replies(&out);
        let mut out = complete(&mut core, now, &out);
        for _ in 0..3 {
            got.extend(replies(&out));
            out = complete(&mut core, now, &out);
        }
        assert!(
            got.iter().any(
                |m| matches!(m, ToClient::Object { id, value: ObjectValue::Shared(_) } if *id == b)
            ),
            "{got:?}"
        );
        assert_eq!(core.store.room_waiting(), 0);
    }

    /// Completes every op in `out` the core waits for, as the files would: a `Digest` op,
    /// or a spill asked to take one, finds `digest`.
    fn complete_taking(
        core: &mut NodeCore,
        now: Instant,
        out: &[Output],
        digest: Digest,
    ) -> Vec<Output> {
        for op in ops(out) {
            let Some(n) = op.op else { continue };
            let taken = matches!(
                op.kind,
                OpKind::Digest { .. } | OpKind::Spill { digest: true, .. }
            )
            .then_some(digest);
            let done = crate::store::StoreDone {
                op: n,
                result: Ok(()),
                digest: taken,
            };
            core.handle(now, crate::core::Input::Store(done));
        }
        drain(core)
    }

    /// A `put` as the SDK makes one: sealed under its ticket, without a digest.
    fn put_unhashed(core: &mut NodeCore, now: Instant, seed: u8, size: u64) -> ObjectId {
        let id = ObjectId([seed; 32]);
        let out = create(core, now, u64::from(seed), id, size);
        complete(core, now, &out);
        let object = SharedObject { size, digest: None };
        let out = seal(core, now, id, id, object);
        complete(core, now, &out);
        id
    }

    fn digests(out: &[Output]) -> Vec<(u64, Result<Digest, TaskError>)> {
        replies(out)
            .into_iter()
            .filter_map(|m| match m {
                ToClient::Digest { request, result } => Some((request, result)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_put_sealed_without_its_digest_has_it_taken_once_when_first_asked() {
        let (mut core, now) = node(25 * MB);
        let a = put_unhashed(&mut core, now, 1, 10 * MB);
        assert_eq!(core.store.index.sealed(&a).map(|o| o.digest), Some(None));
        // A reader asks for its digest: taken from its memory file, once.
        let out = send(&mut core, now, ToNode::Digest { request: 7, id: a });
        let kinds: Vec<_> = ops(&out).into_iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [OpKind::Digest { id: a }]);
        assert!(digests(&out).is_empty(), "answered once taken: {out:?}");
        // Asked again meanwhile: waits for the same op.
        let again = send(&mut core, now, ToNode::Digest { request: 8, id: a });
        assert!(ops(&again).is_empty() && digests(&again).is_empty());
        let d = Digest([9; 32]);
        let out = complete_taking(&mut core, now, &out, d);
        assert_eq!(digests(&out), [(7, Ok(d)), (8, Ok(d))]);
        // Recorded: in the index, in the value every reader is told, and answered at once.
        assert_eq!(core.store.index.sealed(&a).and_then(|o| o.digest), Some(d));
        let out = send(&mut core, now, ToNode::Get { ids: vec![a] });
        assert!(replies(&out).iter().any(|m| matches!(
            m,
            ToClient::Object { id, value: ObjectValue::Shared(o) } if *id == a && o.digest == Some(d)
        )));
        let out = send(&mut core, now, ToNode::Digest { request: 9, id: a });
        assert!(ops(&out).is_empty());
        assert_eq!(digests(&out), [(9, Ok(d))]);
        // A small or unknown object has none.
        let out = send(
            &mut core,
            now,
            ToNode::Digest {
                request: 10,
                id: ObjectId([5; 32]),
            },
        );
        assert!(matches!(
            digests(&out)[..],
            [(10, Err(TaskError::ObjectUnavailable { .. }))]
        ));
    }

    #[test]
    fn the_spill_of_a_put_without_its_digest_takes_it_and_its_read_back_is_checked_with_it() {
        let (mut core, now) = node(25 * MB);
        let b = put_unhashed(&mut core, now, 2, 20 * MB);
        // C needs B's room: B is spilled, and its spill takes the digest.
        let c = ObjectId([3; 32]);
        let out = create(&mut core, now, 3, c, 20 * MB);
        let kinds: Vec<_> = ops(&out).into_iter().map(|o| o.kind).collect();
        assert!(
            matches!(kinds[0], OpKind::Spill { id, digest: true, .. } if id == b),
            "{kinds:?}"
        );
        // A read of B before the spill ended waits for it (no restore without a digest).
        let get = send(&mut core, now, ToNode::Get { ids: vec![b] });
        let restores = |out: &[Output]| {
            ops(out)
                .into_iter()
                .filter_map(|o| match o.kind {
                    OpKind::Restore { id, digest } if id == b => Some(digest),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(restores(&get).is_empty(), "{get:?}");
        let d = Digest([8; 32]);
        let mut out = complete_taking(&mut core, now, &out, d);
        assert_eq!(core.store.index.sealed(&b).and_then(|o| o.digest), Some(d));
        // C is written and sealed; B is read back for the reader, checked against the
        // digest its spill took.
        let object = SharedObject {
            size: 20 * MB,
            digest: Some(Digest([3; 32])),
        };
        out.extend(seal(
            &mut core,
            now,
            c,
            ObjectId::from_digest(Digest([3; 32])),
            object,
        ));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(restores(&out));
            out = complete_taking(&mut core, now, &out, Digest([0; 32]));
        }
        assert_eq!(seen, [d]);
    }

    #[test]
    fn a_put_may_not_take_the_id_of_an_object_the_node_knows() {
        // A task's result, still to come: a process that knows its id may not put it.
        let (mut core, now) = node(25 * MB);
        let task = crate::core::harness::spec(1, Vec::new(), 0);
        let ret = ObjectId::for_return(task.task_id, 0);
        send(&mut core, now, ToNode::Submit(Box::new(task)));
        let forged = ToNode::Put {
            id: ret,
            value: b"forged".to_vec(),
            nested: Vec::new(),
        };
        send(&mut core, now, forged);
        let out = send(&mut core, now, ToNode::Get { ids: vec![ret] });
        assert!(replies(&out).is_empty(), "{out:?}");
        // Nor seal a large one under it.
        let out = create(&mut core, now, 1, ret, MB);
        complete(&mut core, now, &out);
        let object = SharedObject {
            size: MB,
            digest: None,
        };
        let out = seal(&mut core, now, ret, ret, object);
        let out = complete(&mut core, now, &out);
        assert!(replies(&out).is_empty(), "{out:?}");
        assert!(!core.store.index.contains(&ret));
        // A new id is taken.
        let id = ObjectId([6; 32]);
        send(
            &mut core,
            now,
            ToNode::Put {
                id,
                value: b"mine".to_vec(),
                nested: Vec::new(),
            },
        );
        let out = send(&mut core, now, ToNode::Get { ids: vec![id] });
        assert!(replies(&out).iter().any(|m| matches!(
            m,
            ToClient::Object { value: ObjectValue::Inline(v), .. } if v == b"mine"
        )));
    }

    #[test]
    fn a_create_nothing_can_make_room_for_is_refused_at_once() {
        let (mut core, now) = node(25 * MB);
        // Larger than the store.
        let out = create(&mut core, now, 1, ObjectId([1; 32]), 26 * MB);
        assert!(matches!(
            created(&out)[..],
            [(1, Err(StoreError::Full { requested, .. }))] if requested == 26 * MB
        ));
        assert_eq!(core.store.room_waiting(), 0);
    }

    #[test]
    fn a_create_waits_in_order_and_at_most_room_wait() {
        let (mut core, now) = node(25 * MB);
        let out = create(&mut core, now, 1, ObjectId([1; 32]), 20 * MB);
        complete(&mut core, now, &out);
        // Both wait, the small one too (it would fit), behind the first.
        let out = create(&mut core, now, 2, ObjectId([2; 32]), 20 * MB);
        assert!(created(&out).is_empty());
        let out = create(&mut core, now, 3, ObjectId([3; 32]), MB);
        assert!(created(&out).is_empty());
        assert_eq!(core.store.room_waiting(), 2);
        let deadline = now + super::ROOM_WAIT;
        assert_eq!(core.poll_timeout(), Some(deadline));
        // The writer never seals: the first waiting is refused at its deadline, and the
        // small one fits then.
        core.handle_timeout(deadline);
        let out = drain(&mut core);
        let mut answers = created(&out);
        answers.extend(created(&complete(&mut core, deadline, &out)));
        assert!(
            matches!(answers[..], [(2, Err(StoreError::Full { .. })), (3, Ok(_))]),
            "{answers:?}"
        );
        assert_eq!(core.store.room_waiting(), 0);
    }

    #[test]
    fn a_waiting_create_goes_with_its_process() {
        let (mut core, now) = node(25 * MB);
        let out = create(&mut core, now, 1, ObjectId([1; 32]), 20 * MB);
        complete(&mut core, now, &out);
        create(&mut core, now, 2, ObjectId([2; 32]), 20 * MB);
        assert_eq!(core.store.room_waiting(), 1);
        core.handle(
            now,
            crate::core::Input::Detached {
                conn: crate::core::harness::DRIVER,
            },
        );
        assert_eq!(core.store.room_waiting(), 0);
        // Its reservation went too.
        assert_eq!(core.store.index.used(), 0);
    }

    #[test]
    fn a_spill_runs_before_the_file_it_makes_room_for_and_a_reader_waits_for_room_and_its_restore()
    {
        let (mut core, now) = node(10 * MB);
        let (a, object) = put(&mut core, now, 1, 6 * MB);
        // Room for b: a goes to disk first, in that order.
        let out = create(&mut core, now, 2, ObjectId([2; 32]), 6 * MB);
        let kinds: Vec<OpKind> = ops(&out).into_iter().map(|o| o.kind).collect();
        assert!(
            matches!(
                kinds[..],
                [OpKind::Spill { id, .. }, OpKind::Create { .. }] if id == a
            ),
            "{kinds:?}"
        );
        for op in ops(&out) {
            done(&mut core, now, op, Ok(()));
        }
        drain(&mut core);
        // Reading a waits: b is being written (not sealed, so it cannot be spilled), and
        // nothing else can make room yet.
        let out = send(&mut core, now, ToNode::Get { ids: vec![a] });
        assert!(replies(&out).is_empty(), "{out:?}");
        assert!(ops(&out).is_empty(), "{out:?}");
        // Once b is dropped, a restore makes room and the reader waits for it.
        let out = send(
            &mut core,
            now,
            ToNode::Abort {
                id: ObjectId([2; 32]),
            },
        );
        let restore: Vec<StoreOp> = ops(&out)
            .into_iter()
            .filter(|o| matches!(o.kind, OpKind::Restore { .. }))
            .collect();
        assert!(matches!(
            restore[..],
            [StoreOp {
                kind: OpKind::Restore { id, .. },
                ..
            }] if id == a
        ));
        assert!(replies(&out).is_empty(), "{out:?}");
        // A second reader waits for the same restore.
        assert!(ops(&send(&mut core, now, ToNode::Get { ids: vec![a] })).is_empty());
        done(&mut core, now, restore[0].clone(), Ok(()));
        let out = drain(&mut core);
        let value = ObjectValue::Shared(object);
        assert_eq!(
            replies(&out),
            vec![
                ToClient::Object {
                    id: a,
                    value: value.clone()
                },
                ToClient::Object { id: a, value }
            ]
        );
    }

    #[test]
    fn a_disk_copy_that_cannot_be_read_back_makes_the_object_an_error_for_good() {
        let (mut core, now) = node(10 * MB);
        let (a, _) = put(&mut core, now, 1, 6 * MB);
        let (b, _) = put(&mut core, now, 2, 6 * MB);
        assert_ne!(a, b);
        let restore = ops(&send(&mut core, now, ToNode::Get { ids: vec![a] }));
        let restore: Vec<StoreOp> = restore
            .into_iter()
            .filter(|o| matches!(o.kind, OpKind::Restore { .. }))
            .collect();
        done(
            &mut core,
            now,
            restore[0].clone(),
            Err(StoreFault::Corrupted("bad bytes".into())),
        );
        let out = drain(&mut core);
        let corrupted = |out: &[Output]| {
            matches!(
                replies(out)[..],
                [ToClient::Object {
                    value: ObjectValue::Error(TaskError::ObjectCorrupted { .. }),
                    ..
                }]
            )
        };
        assert!(corrupted(&out), "{out:?}");
        // Not tried again.
        let out = send(&mut core, now, ToNode::Get { ids: vec![a] });
        assert!(ops(&out).is_empty() && corrupted(&out), "{out:?}");
    }

    #[test]
    fn failed_file_work_is_a_typed_answer_and_leaves_nothing_counted() {
        let (mut core, now) = node(10 * MB);
        // A file that cannot be made: the writer is told why; its room is given back.
        let out = create(&mut core, now, 4, ObjectId([4; 32]), 6 * MB);
        done(
            &mut core,
            now,
            ops(&out)[0].clone(),
            Err(StoreFault::Io("disk on fire".into())),
        );
        let out = drain(&mut core);
        assert!(matches!(
            replies(&out)[..],
            [ToClient::Created {
                request: 4,
                result: Err(_)
            }]
        ));
        assert_eq!(core.census().store_used, 0);
        // A seal whose file does not match: the put is unavailable, not half there.
        let ticket = ObjectId([5; 32]);
        let out = create(&mut core, now, 5, ticket, MB);
        done(&mut core, now, ops(&out)[0].clone(), Ok(()));
        drain(&mut core);
        let object = SharedObject {
            size: MB,
            digest: Some(Digest([5; 32])),
        };
        let id = ObjectId::from_digest(object.digest.expect("a content-addressed put"));
        let out = seal(&mut core, now, ticket, id, object);
        send(&mut core, now, ToNode::Get { ids: vec![id] });
        done(
            &mut core,
            now,
            ops(&out)[0].clone(),
            Err(StoreFault::Mismatch("short file".into())),
        );
        let out = drain(&mut core);
        assert!(matches!(
            replies(&out)[..],
            [ToClient::Object {
                value: ObjectValue::Error(TaskError::ObjectUnavailable { .. }),
                ..
            }]
        ));
        assert_eq!(core.census().store_used, 0);
        assert_eq!(core.census().store_ops, 0);
    }
}
