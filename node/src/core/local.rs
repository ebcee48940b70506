//! The core's side of local processes: handshakes, their messages, tasks and their results,
//! object lifetimes, actors hosted here, and worker processes.

use std::path::PathBuf;
use std::time::Instant;

use shoal_protocol::mesh::PeerKey;
use shoal_protocol::{
    codec, ActorId, ActorToken, Arg, ArgValue, ExecTask, Hello, HostActor, ObjectId, ObjectInfo,
    ObjectStats, ObjectValue, ReturnValue, Role, TaskError, TaskId, TaskKind, TaskOutcome,
    TaskSpec, ToClient, ToNode,
};

use super::actors::{ActorState, AfterDeath, Registered};
use super::rights::Refused;
use super::sched::{Action, WorkerId};
use super::store::{After, Ready, Resume};
use super::tasks::{FirstReturn, TaskEntry};
use super::{ConnId, Counted, NodeCore, Output, Party, Proc, WorkerEnd};
use crate::store::{Holder, Location, OpId};

/// What registering an actor's creation came to ([`NodeCore::create_actor`]).
enum Creation {
    /// Registered: it goes on to be placed once its arguments are here.
    Go,
    /// It waits for a check of its name in the mesh (its own, or another creation's).
    Waiting,
    /// Nothing more to do: it failed, or a get-or-create found its actor.
    Done,
}

impl NodeCore {
    pub(super) fn attached(&mut self, now: Instant, conn: ConnId, hello: Hello) {
        let mut worker = None;
        match &hello.role {
            Role::Worker { worker_id } => {
                if !self.sched.worker_connected(now, *worker_id, hello.pid) {
                    tracing::warn!(conn, worker = worker_id, "unknown worker id; rejected");
                    self.tell_proc(
                        conn,
                        ToClient::Rejected {
                            reason: format!("unknown worker id {worker_id}"),
                        },
                    );
                    self.out.push_back(Output::Close { conn });
                    return;
                }
                worker = Some(*worker_id);
                self.worker_conns.insert(*worker_id, conn);
            }
            Role::Driver => {
                if let Some(b) = &hello.binary {
                    let exe = PathBuf::from(&b.path);
                    self.binaries.insert(b.id, exe.clone());
                    // A local program's own binary runs as today, even if a peer shipped
                    // the same bytes before.
                    self.shipped.remove(&b.id);
                    self.sched.binary_attached(b.id);
                    // It may come signed otherwise: peers that rejected it may take it now.
                    self.spill.forget_code_rejections(&b.id);
                    // Peers asked to run its tasks fetch it from here.
                    if self.me.is_some() {
                        self.out.push_back(Output::ServeBinary {
                            binary: b.id,
                            exe,
                            manifest: b.manifest.clone(),
                        });
                    }
                }
            }
            Role::Cli => {}
        }
        tracing::debug!(conn, role = ?hello.role, pid = hello.pid, client = %hello.client, "attached");
        let binary = match &hello.role {
            Role::Driver => hello.binary.as_ref().map(|b| b.id),
            _ => None,
        };
        self.tell_proc(
            conn,
            ToClient::Welcome {
                node_id: self.node_id,
                store_dir: self.store.dir.display().to_string(),
                inline_threshold: self.config.inline_threshold,
                peer_id: self.me.map(|p| p.to_string()),
            },
        );
        self.procs.insert(
            conn,
            Proc {
                role: hello.role,
                client: hello.client,
                pid: hello.pid,
                binary,
                worker,
            },
        );
    }

    pub(super) fn detached(&mut self, now: Instant, conn: ConnId) {
        let Some(p) = self.procs.remove(&conn) else {
            return;
        };
        tracing::debug!(conn, role = ?p.role, "detached");
        self.state_detached(conn);
        self.room_detached(conn);
        self.store_abort_holder(Holder::Proc(conn));
        if let Some(w) = p.worker {
            self.worker_conns.remove(&w);
        }
        if let Some(b) = p.binary {
            self.sched.binary_detached(b);
            self.envs.binary_detached(b, &mut self.sched);
        }
        // The actors it made end with it, unless detached, and are forgotten.
        for actor in self.actors.owned_by(p.client) {
            self.kill_actor(
                now,
                actor,
                TaskError::ActorKilled {
                    actor,
                    reason: "its creator exited".into(),
                },
            );
        }
        self.actors.forget_dead_of(p.client);
        self.party_gone(now, Party::Proc(conn));
    }

    /// What `party` asked of this node ends: its queued tasks and calls are dropped, the
    /// actors it placed on peers end, its refs and waits go. Its tasks running here stop
    /// (their workers are killed, as Ray cancels a dead owner's tasks): their CPUs are free
    /// for the next program at once. (A lost peer may be alive, cut off: it is told, and runs
    /// them again itself.) A result of those tasks that someone else still waits for fails
    /// with `OwnerDied`.
    pub(super) fn party_gone(&mut self, now: Instant, party: Party) {
        self.groups_party_gone(now, party);
        self.end_remote_actors_of(now, party);
        let stopped = self.stop_running_tasks_of(now, party);
        let tasks = &self.tasks;
        let mut dropped = self
            .sched
            .remove_queued(|t| tasks.get(&t).is_none_or(|e| e.owner != party));
        let mut waiting: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, e)| e.owner == party && (e.missing > 0 || e.is_call()))
            .map(|(t, _)| *t)
            .collect();
        waiting.sort();
        for t in waiting {
            // A call already at its actor's worker finishes there; the others are dropped.
            if self.call_queued(t) || self.tasks.get(&t).is_some_and(|e| e.missing > 0) {
                dropped.push(t);
            }
        }
        let mut ended = stopped.clone();
        for t in &dropped {
            ended.extend(self.tasks.get(t).map(|e| e.ret));
            self.finish_task(now, *t);
        }
        if let Party::Peer(peer) = party {
            self.tell_lost_peer(peer, dropped, stopped);
        }
        let mut touched = self.objects.party_gone(party);
        touched.sort();
        for id in touched {
            self.maybe_free(id);
        }
        // Nothing will make these now.
        let owner = match party {
            Party::Peer(peer) => peer.to_string(),
            Party::Proc(_) => self.me.map_or_else(|| "local".into(), |p| p.to_string()),
        };
        ended.sort();
        for id in ended {
            let error = TaskError::OwnerDied {
                peer: owner.clone(),
            };
            if self.objects.get(&id).is_some_and(|e| e.value.is_none()) {
                self.object_ready(now, id, ObjectValue::Error(error));
            } else {
                self.first_return_ready(now, id, Some(&error));
            }
        }
    }

    /// Kills the workers running tasks of `party` (not actors: those end by their own
    /// rules), and forgets those tasks; other tasks sent to those workers and not started
    /// run again on others, at no cost to their budget. Returns the stopped tasks' result
    /// ids.
    fn stop_running_tasks_of(&mut self, now: Instant, party: Party) -> Vec<ObjectId> {
        let mut stopped = Vec::new();
        for (worker, task) in self.sched.running_tasks() {
            let Some(e) = self.tasks.get(&task) else {
                continue;
            };
            if e.owner != party || !matches!(e.spec.kind, TaskKind::Function) {
                continue;
            }
            tracing::info!(task = %task, worker, "its submitter is gone: stopping the task");
            stopped.push(e.ret);
            // Forgotten first: the worker's end must not run it again.
            self.finish_task(now, task);
            // The worker exits if it still runs it, having begun nothing after it; if it
            // finished it meanwhile (its report on the way), the next task runs on. (A kill
            // could take that next task, of another owner, with it.)
            match self.worker_conns.get(&worker).copied() {
                Some(conn) => {
                    self.cancelling.insert(worker);
                    self.tell_proc(conn, ToClient::Cancel { task, force: true });
                }
                None => self.out.push_back(Output::KillWorker { worker }),
            }
        }
        stopped
    }

    pub(super) fn message(&mut self, now: Instant, conn: ConnId, msg: ToNode) {
        if !self.procs.contains_key(&conn) {
            // A connection the core refused; its reader is closing.
            return;
        }
        let party = Party::Proc(conn);
        match msg {
            ToNode::Hello(_) => tracing::warn!(conn, "second Hello ignored"),
            ToNode::Submit(spec) => {
                self.metrics.tasks_submitted += 1;
                self.note_child(conn, spec.task_id);
                self.submit(now, party, *spec, 0)
            }
            ToNode::Cancel {
                task,
                force,
                recursive,
            } => self.cancel_request(now, party, task, force, recursive),
            ToNode::CreateGroup {
                group,
                bundles,
                strategy,
                detached,
                token,
            } => {
                let new = super::groups::NewGroup {
                    group,
                    bundles,
                    strategy,
                    detached,
                    token,
                };
                self.create_group(now, party, new)
            }
            ToNode::RemoveGroup {
                group,
                token,
                placer,
            } => self.remove_group_for(now, party, group, token, placer),
            ToNode::Put { id, value, nested } => {
                // A `put_content` is named by its content (equal values share it); a `put`
                // by a random id, which must be new here: no put takes the id of an object
                // this node knows (a result a task is still to give, say).
                if ObjectId::for_content(&value) != id && self.objects.contains(&id) {
                    tracing::warn!(conn, object = %id, "put under the id of an object this node knows; ignored");
                    return;
                }
                self.put_arrived(now, conn, id, ObjectValue::Inline(value), nested);
            }
            ToNode::Hold { ids } => self.objects.hold(party, &ids),
            ToNode::Objects { request } => {
                let objects = self.object_list();
                self.tell_proc(conn, ToClient::Objects { request, objects });
            }
            ToNode::Digest { request, id } => self.digest_asked(conn, request, id),
            ToNode::Create { request, id, size } => {
                self.create_asked(now, conn, request, id, size);
            }
            ToNode::Seal {
                ticket,
                id,
                object,
                nested,
            } => {
                if !self.store.index.reserved_by(&ticket, Holder::Proc(conn)) {
                    tracing::warn!(conn, object = %id, "seal of a reservation this process does not hold; ignored");
                    return;
                }
                // A `put` keeps its (random) ticket as its id, new here as a `Put`'s is; a
                // content-addressed one is named by its digest.
                let content = object.digest.map(ObjectId::from_digest) == Some(id);
                if (ticket != id && !content) || (ticket == id && self.objects.contains(&id)) {
                    tracing::warn!(conn, object = %id, "seal under an id that is neither a new ticket nor its digest; dropped");
                    self.store_remove(&ticket);
                    return;
                }
                let after = move |new| After::Put { id, object, new };
                match self.store_seal(ticket, id, object, after) {
                    // A large put: the sealer holds it from now on, and what the process
                    // sends next may use it (a release of the refs inside it, say: they are
                    // pinned now, not once the file is in place); its value is set once the
                    // file is in place. (Task results are sealed by `Done`.)
                    Ok(_) => {
                        self.put_holder(conn, id);
                        self.set_nested(id, nested);
                    }
                    Err(e) => {
                        tracing::warn!(conn, object = %id, error = %e, "bad seal");
                        self.store_remove(&ticket);
                    }
                }
            }
            ToNode::Abort { id } => {
                if self.store.index.reserved_by(&id, Holder::Proc(conn)) {
                    self.store_remove(&id);
                }
            }
            ToNode::Get { ids } => {
                for id in ids {
                    // Made elsewhere (a ref that came inside a value from a peer): the
                    // mesh-wide directory may know a holder.
                    if !self.objects.contains(&id) && self.fetch_unknown(conn, id) {
                        continue;
                    }
                    self.get(now, party, id);
                }
            }
            ToNode::Release { ids } => self.release(party, ids),
            ToNode::Free { ids } => self.free_objects(now, party, ids),
            ToNode::Done {
                task_id,
                outcome,
                nested,
                more,
                returned_error,
            } => {
                if self.procs.get(&conn).is_some_and(|c| c.worker.is_some()) {
                    let done = Done {
                        outcome,
                        nested,
                        more,
                        returned_error,
                    };
                    self.task_done(now, conn, task_id, done);
                } else {
                    tracing::warn!(conn, task = %task_id, "Done from a process that is not a worker; ignored");
                }
            }
            ToNode::Yield { task, index, item } => {
                self.item_yielded(now, conn, task, index, item);
            }
            ToNode::StreamTaken { task, taken } => self.stream_taken(party, task, taken),
            ToNode::Blocked => {
                if let Some(w) = self.worker_of(conn) {
                    self.sched.worker_blocked(now, w);
                }
            }
            ToNode::Returned { tasks } => {
                if let Some(w) = self.worker_of(conn) {
                    self.sched.tasks_returned(now, w, &tasks);
                }
            }
            ToNode::Retire => match self.worker_of(conn) {
                Some(w) => {
                    tracing::debug!(worker = w, "worker retires (a function's max_calls)");
                    self.sched.retire(now, w);
                }
                None => tracing::warn!(conn, "Retire from a process that is not a worker; ignored"),
            },
            ToNode::Unblocked => {
                if let Some(w) = self.worker_of(conn) {
                    self.sched.worker_unblocked(w);
                }
            }
            ToNode::Status { request } => {
                self.out.push_back(Output::Status { conn, request });
            }
            ToNode::State {
                request,
                query,
                timeout_ms,
                local,
            } => self.state_asked(now, conn, request, query, timeout_ms, local),
            ToNode::ActorStarted { actor, result } => {
                let hosting = self
                    .procs
                    .get(&conn)
                    .and_then(|p| Some((p.worker?, p.pid)))
                    .filter(|(w, _)| self.actors.by_worker(*w) == Some(actor));
                let Some((_, pid)) = hosting else {
                    tracing::warn!(conn, actor = %actor, "ActorStarted from a process not hosting the actor; ignored");
                    return;
                };
                match result {
                    Ok(()) => {
                        tracing::info!(actor = %actor, pid, "actor started");
                        self.actors.started(actor, pid);
                        if let Some(task) = self.actors.get(&actor).map(|a| a.create_task) {
                            self.record_end(now, task, None);
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        tracing::warn!(actor = %actor, %message, "actor constructor failed");
                        self.kill_actor(
                            now,
                            actor,
                            TaskError::ActorCreationFailed { actor, message },
                        );
                    }
                }
            }
            ToNode::KillActor {
                actor,
                no_restart,
                token,
            } => self.kill_request(now, party, actor, no_restart, token),
            ToNode::ExitActor => self.exit_actor(now, conn),
            ToNode::LookupActor { request, name } => {
                let actor = self.actors.lookup(&name);
                let Some(info) = actor else {
                    if self.lookup_remote(conn, request, &name) {
                        return;
                    }
                    let msg = ToClient::ActorFound {
                        request,
                        actor: None,
                        held: None,
                    };
                    return self.tell_proc(conn, msg);
                };
                let (held, counted_at) = self.hold_handle(party, info.actor_id);
                if let Some(at) = counted_at {
                    return self.ask_lend(now, conn, request, info, at);
                }
                let msg = ToClient::ActorFound {
                    request,
                    actor: Some(info),
                    held,
                };
                self.tell_proc(conn, msg);
            }
        }
    }

    /// The span of `actor` (a disabled one if it is not known here).
    fn actor_span(&self, actor: ActorId) -> tracing::Span {
        self.actors
            .get(&actor)
            .map_or_else(tracing::Span::none, |a| a.span.clone())
    }

    pub(super) fn worker_of(&self, conn: ConnId) -> Option<WorkerId> {
        self.procs.get(&conn).and_then(|c| c.worker)
    }

    /// A worker's process id, once it is attached.
    pub(super) fn worker_pid(&self, worker: WorkerId) -> Option<u32> {
        let conn = self.worker_conns.get(&worker)?;
        self.procs.get(conn).map(|p| p.pid)
    }

    /// Sends `party` object `id` now if it is ready, when it is otherwise (getting a copy
    /// here first if only peers hold it).
    pub(super) fn get(&mut self, _now: Instant, party: Party, id: ObjectId) {
        let Some(e) = self.objects.get_mut(&id) else {
            // Freed (or never made): say so rather than let the asker wait.
            let value = ObjectValue::Error(TaskError::ObjectLost { id });
            self.send(party, ToClient::Object { id, value });
            return;
        };
        match &e.value {
            Some(ObjectValue::Shared(_)) => match self.readable(id) {
                Ok(value) => self.send(party, ToClient::Object { id, value }),
                Err(op) => self.park(op, Resume::Get(party, id)),
            },
            Some(v) => {
                let value = v.clone();
                self.send(party, ToClient::Object { id, value });
            }
            None => {
                e.waiters.push(party);
                self.start_fetch(id);
            }
        }
    }

    /// `party` no longer holds these objects.
    pub(super) fn release(&mut self, party: Party, ids: Vec<ObjectId>) {
        for id in ids {
            self.objects.release(party, &id);
            self.maybe_free(id);
        }
    }

    /// `party` frees `ids` (`shoal::free`): each one it holds loses its value here, its
    /// files, the copies this node keeps at peers and its lineage (a freed object is not
    /// made again); it stays while refs to it live, failing with `ObjectFreed`.
    pub(super) fn free_objects(&mut self, now: Instant, party: Party, ids: Vec<ObjectId>) {
        for id in ids {
            let Some(e) = self.objects.get_mut(&id) else {
                continue;
            };
            if !e.holders.contains(&party) {
                tracing::warn!(%party, object = %id, "a free of an object the process does not hold; ignored");
                continue;
            }
            if let Some(ObjectValue::Error(_)) = e.value {
                continue;
            }
            tracing::debug!(%party, object = %id, "object freed");
            let pending = e.value.is_none();
            let freed = ObjectValue::Error(TaskError::ObjectFreed { id });
            let release_to = e.take_copies().map(|r| r.release_to).unwrap_or_default();
            if !pending {
                e.value = Some(freed.clone());
            }
            for p in release_to {
                self.tell_peer(p, shoal_protocol::mesh::PeerMsg::Release { ids: vec![id] });
            }
            self.store_remove(&id);
            self.lineage.object_freed(id);
            if pending {
                // Who waits for it, and the tasks that take it, fail now.
                self.object_ready(now, id, freed);
            }
        }
    }

    /// Whether `task` is an actor call still queued at the node (not yet at the worker).
    fn call_queued(&self, task: TaskId) -> bool {
        let Some(e) = self.tasks.get(&task) else {
            return false;
        };
        let TaskKind::ActorMethod { actor, .. } = e.spec.kind else {
            return false;
        };
        // Queued calls are those not in flight; the table knows which are in flight.
        self.actors.get(&actor).is_some_and(|a| a.is_queued(task))
    }

    pub(super) fn kill_request(
        &mut self,
        now: Instant,
        party: Party,
        actor: ActorId,
        no_restart: bool,
        token: ActorToken,
    ) {
        if self.actor_token(&actor).is_some_and(|t| t != token) {
            match party {
                Party::Peer(peer) => self.rights.refuse(now, peer, Refused::Kill, actor),
                Party::Proc(_) => {
                    tracing::warn!(%party, actor = %actor, "a kill without the actor's handle; refused")
                }
            }
            return;
        }
        let Some(a) = self.actors.get(&actor) else {
            if self.kill_remote(now, actor, no_restart, "killed by shoal::kill", token) {
                return;
            }
            tracing::debug!(%party, actor = %actor, "kill of an unknown actor");
            return;
        };
        if a.is_dead() {
            return;
        }
        tracing::info!(%party, actor = %actor, no_restart, "actor killed on request");
        if no_restart {
            self.kill_actor(
                now,
                actor,
                TaskError::ActorKilled {
                    actor,
                    reason: "killed by shoal::kill".into(),
                },
            );
        } else if let ActorState::Alive { worker, .. } = a.state {
            // As if it crashed: it restarts if it has restarts left.
            self.out.push_back(Output::KillWorker { worker });
        }
    }

    /// The worker on `conn` ends the actor it hosts (`shoal::exit_actor`): for good, as a
    /// kill without restart. A process that hosts no live actor is refused.
    fn exit_actor(&mut self, now: Instant, conn: ConnId) {
        let actor = self
            .procs
            .get(&conn)
            .and_then(|p| p.worker)
            .and_then(|w| self.actors.by_worker(w))
            .filter(|a| self.actors.get(a).is_some_and(|a| !a.is_dead()));
        let Some(actor) = actor else {
            tracing::warn!(
                conn,
                "exit_actor from a process that hosts no live actor; refused"
            );
            return;
        };
        tracing::info!(actor = %actor, "actor ended itself");
        self.kill_actor(
            now,
            actor,
            TaskError::ActorKilled {
                actor,
                reason: "ended itself with shoal::exit_actor".into(),
            },
        );
    }

    /// Ends an actor for good: queued and in-flight calls fail with `error`, its worker is
    /// stopped, its resources and constructor arguments are released.
    pub(super) fn kill_actor(&mut self, now: Instant, actor: ActorId, error: TaskError) {
        let Some(create_task) = self.actors.get(&actor).map(|a| a.create_task) else {
            return;
        };
        let span = self.actor_span(actor);
        let _entered = span.enter();
        self.withdraw_actor(actor);
        let mut failed = self.actors.kill(actor, error.clone());
        failed.extend(self.actors.drain_inflight(actor));
        for t in failed {
            self.fail_task(now, t, error.clone());
        }
        self.sched.end_actor(now, create_task);
        // A creation that never finished fails with the actor (recorded once).
        self.record_end(now, create_task, Some(error.to_string()));
        self.forget_if_peers(actor, create_task, error);
        self.finish_task(now, create_task);
    }

    /// A dead actor that a peer created is not kept here: that peer's node learns of its end
    /// (as an error in its creation's return object) and answers its callers (later calls
    /// from elsewhere learn `NoSuchActor`).
    fn forget_if_peers(&mut self, actor: ActorId, create_task: TaskId, error: TaskError) {
        let Some((Party::Peer(peer), ret)) = self.tasks.get(&create_task).map(|e| (e.owner, e.ret))
        else {
            return;
        };
        self.actors.forget_if_dead(actor);
        let value = shoal_protocol::mesh::RemoteValue::Error(error);
        let msg = shoal_protocol::mesh::PeerMsg::object(ret, value);
        self.tell_peer(peer, msg);
    }

    /// Records the actor's location (and its name) in the mesh's directory. The records are
    /// republished while this node runs and expire after it stops.
    pub(super) fn announce_actor(&mut self, actor: ActorId) {
        use shoal_protocol::mesh::{actor_key, name_key, ActorLocation};
        let (Some(me), Some(a)) = (self.me, self.actors.get(&actor)) else {
            return;
        };
        let location = ActorLocation {
            peer: me.to_vec(),
            incarnation: a.incarnation,
            epoch: a.epoch,
            class: a.class.clone(),
            owner: a.owner,
        };
        let mut records = Vec::new();
        match codec::encode(&location) {
            Ok(v) => records.push((actor_key(&actor), v)),
            Err(e) => {
                tracing::error!(actor = %actor, error = %e, "cannot encode an actor location")
            }
        }
        if let Some(name) = &a.spec.name {
            match codec::encode(&actor) {
                Ok(v) => records.push((name_key(name), v)),
                Err(e) => tracing::error!(actor = %actor, error = %e, "cannot encode an actor id"),
            }
        }
        self.out
            .push_back(Output::Job(super::Job::PutRecords { records }));
    }

    /// Withdraws the actor's records (other peers' copies expire).
    pub(super) fn withdraw_actor(&mut self, actor: ActorId) {
        let (Some(_), Some(a)) = (self.me, self.actors.get(&actor)) else {
            return;
        };
        let name = a.spec.name.clone();
        self.out.push_back(Output::Dht(super::DhtOp::RemoveRecord(
            shoal_protocol::mesh::actor_key(&actor),
        )));
        if let Some(name) = name {
            self.out.push_back(Output::Dht(super::DhtOp::RemoveRecord(
                shoal_protocol::mesh::name_key(&name),
            )));
        }
    }

    /// Where `actor`'s handles are counted: its handle object here, the peer that counts
    /// them (the creator's node of an actor placed here), or nowhere (it is detached).
    pub(super) fn handles_counted(&self, actor: ActorId) -> Counted {
        let counted = |task: TaskId| {
            let id = ObjectId::for_return(task, 0);
            (self.handles.get(&id) == Some(&actor)).then_some(Counted::Here(id))
        };
        if let Some(a) = self.actors.get(&actor) {
            if let Some(here) = counted(a.create_task) {
                return here;
            }
            if a.spec.detached {
                return Counted::Nowhere;
            }
            return match self.tasks.get(&a.create_task).map(|e| e.owner) {
                Some(Party::Peer(p)) if Some(p) != self.me => Counted::At(p),
                _ => Counted::Nowhere,
            };
        }
        // Placed at a peer by this node.
        let placed = self.directory.placement(&actor).map(|p| p.task);
        placed.and_then(counted).unwrap_or(Counted::Nowhere)
    }

    /// Registers the actor that `task` creates (its name checked here, and, when `may_claim`,
    /// in the mesh): it goes on to be placed, waits for a check of its name, or is done (it
    /// failed, or a get-or-create found its actor).
    fn create_actor(&mut self, now: Instant, task: TaskId, may_claim: bool) -> Creation {
        let Some(e) = self.tasks.get(&task) else {
            return Creation::Done;
        };
        let TaskKind::CreateActor(create) = &e.spec.kind else {
            return Creation::Go;
        };
        let create = create.clone();
        let (class, client, owner, ret) = (e.spec.function.clone(), e.spec.owner, e.owner, e.ret);
        // Another creation here is checking that name in the mesh: this one waits for it.
        if let Some(first) = create.name.as_deref().and_then(|n| self.claim_of_name(n)) {
            self.claim_waiters.entry(first).or_default().push(task);
            return Creation::Waiting;
        }
        // A name is this node's as long as the actor it placed at a peer lives (the peer
        // holds the name too, where it hosts the actor).
        let placed = (create.name.as_deref())
            .and_then(|name| Some((name, self.placed_by_name(name, &class)?)));
        let registered = match placed {
            Some((name, (existing, same_class))) => {
                super::actors::name_taken(&create, name, existing, same_class)
            }
            None => self.actors.register(task, &class, &create, client),
        };
        match registered {
            Ok(Registered::New) => {
                tracing::debug!(actor = %create.actor_id, class, name = ?create.name, "actor registered");
                if let (Party::Proc(_), false) = (owner, create.detached) {
                    // Its creator holds this from now on, and so does every copy of its
                    // handle, wherever it goes.
                    self.handles.insert(ret, create.actor_id);
                }
                // A name is asked of the mesh first (a peer's creation was asked at its
                // creator's node): its id goes out, and it is placed, once the mesh has
                // said the name is not taken elsewhere.
                let claiming = may_claim
                    && matches!(owner, Party::Proc(_))
                    && (create.name.as_deref())
                        .is_some_and(|name| self.start_claim(now, task, name));
                if claiming {
                    return Creation::Waiting;
                }
                self.actor_id_ready(now, ret, create.actor_id);
                self.announce_actor(create.actor_id);
                Creation::Go
            }
            Ok(Registered::Existing(existing)) => {
                // The creator gets a handle to it, whose object (this creation's) holds the
                // actor's own handle object where that is counted here.
                match self.handles_counted(existing) {
                    Counted::Here(h) => self.set_nested(ret, vec![h]),
                    Counted::At(peer) => self.ask_lend_to_nest(now, ret, existing, peer),
                    Counted::Nowhere => self.actors.escape(existing),
                }
                self.finish_task(now, task);
                self.actor_id_ready(now, ret, existing);
                Creation::Done
            }
            Err(e) => {
                // The handle its creator holds anyway (the options' `remote`) gives this
                // error to every call made through it.
                self.directory.end(create.actor_id, e.clone());
                self.fail_task(now, task, e);
                Creation::Done
            }
        }
    }

    /// The creation task of the actor here named `name`, while the mesh is asked whether
    /// that name is taken elsewhere.
    fn claim_of_name(&self, name: &str) -> Option<TaskId> {
        let actor = self.actors.lookup(name)?.actor_id;
        let first = self.actors.get(&actor)?.create_task;
        self.claim_pending(first).then_some(first)
    }

    /// Whether the mesh is being asked about the name of the actor `task` creates.
    fn claim_pending(&self, task: TaskId) -> bool {
        (self.name_lookups.values())
            .any(|l| matches!(l.asked, super::Asked::Claim { task: t } if t == task))
    }

    /// Whether the creation `task` waits for a check of its name in the mesh.
    pub(super) fn checking_name(&self, task: &TaskId) -> bool {
        self.claim_pending(*task) || self.claim_waiters.values().any(|w| w.contains(task))
    }

    /// The check of the name `first` creates ended: the creations of that name that waited
    /// for it go on (each finds the actor `first` made, or is refused, or checks in turn).
    fn wake_claim_waiters(&mut self, now: Instant, first: TaskId) {
        let Some(waiting) = self.claim_waiters.remove(&first) else {
            return;
        };
        for task in waiting {
            if let Creation::Go = self.create_actor(now, task, true) {
                if let Some(e) = self.tasks.get_mut(&task) {
                    e.missing = e.missing.saturating_sub(1);
                    if e.missing == 0 {
                        self.deps_ready(now, task);
                    }
                }
            }
        }
    }

    /// Asks the mesh whether `name`, of the actor that `task` creates here, is taken by an
    /// actor elsewhere: ends in [`NodeCore::claim_free`] or [`NodeCore::claim_taken`], by
    /// [`NAME_CLAIM_TIMEOUT`](super::NAME_CLAIM_TIMEOUT) at the latest. Says whether it
    /// asked: only a peer with other peers in view does (a node alone has nobody to ask).
    fn start_claim(&mut self, now: Instant, task: TaskId, name: &str) -> bool {
        let Some(me) = self.me else {
            return false;
        };
        if !self.spill.knows_peers() {
            return false;
        }
        let n = self.next_lookup;
        self.next_lookup += 1;
        let lookup = super::NameLookup {
            asked: super::Asked::Claim { task },
            peer: me,
            deadline: now + super::NAME_CLAIM_TIMEOUT,
        };
        self.name_lookups.insert(n, lookup);
        tracing::debug!(task = %task, name = %shoal_protocol::display_name(name), "asking the mesh whether an actor's name is taken");
        self.out.push_back(Output::Job(super::Job::ResolveName {
            asker: super::NameAsker::Claim(n),
            name: name.to_string(),
        }));
        true
    }

    /// The actor `task` creates here, while it waits for its name's check.
    pub(super) fn claiming(&self, task: TaskId) -> Option<ActorId> {
        let e = self.tasks.get(&task)?;
        let TaskKind::CreateActor(c) = &e.spec.kind else {
            return None;
        };
        (self.actors.by_task(&task) == Some(c.actor_id)).then_some(c.actor_id)
    }

    /// The name of the actor `task` creates is not taken elsewhere (or the mesh did not say
    /// in time): its id goes out, it is announced, and it is placed.
    pub(super) fn claim_free(&mut self, now: Instant, task: TaskId) {
        let found = self.claiming(task).zip(self.tasks.get_mut(&task));
        if let Some((actor, e)) = found {
            e.missing = e.missing.saturating_sub(1);
            let (ret, ready) = (e.ret, e.missing == 0);
            self.actor_id_ready(now, ret, actor);
            self.announce_actor(actor);
            if ready {
                self.deps_ready(now, task);
            }
        }
        self.wake_claim_waiters(now, task);
    }

    /// The name of the actor `task` was to create is taken by `found`, which lives at a
    /// peer: the creation fails with `ActorNameTaken`, or, for a get-or-create of the same
    /// class, gets `found`, its return object holding a counted handle of it (`held`, lent
    /// by the peer asked, or one asked of `counted_at`, its creator's node).
    pub(super) fn claim_taken(
        &mut self,
        now: Instant,
        task: TaskId,
        found: shoal_protocol::ActorInfo,
        held: Option<ObjectId>,
        counted_at: Option<PeerKey>,
    ) {
        let Some(mine) = self.claiming(task) else {
            return self.wake_claim_waiters(now, task);
        };
        let Some(e) = self.tasks.get(&task) else {
            return self.wake_claim_waiters(now, task);
        };
        let TaskKind::CreateActor(c) = &e.spec.kind else {
            return;
        };
        let get = c.get_if_exists && found.class == e.spec.function;
        let (ret, name) = (e.ret, c.name.clone().unwrap_or_default());
        // The actor that was to be made here never is (nothing was announced or placed).
        let calls = self.actors.forget(mine);
        self.handles.remove(&ret);
        if !get {
            tracing::debug!(task = %task, name = %shoal_protocol::display_name(&name), actor = %found.actor_id, "an actor's name is taken at a peer; creation refused");
            let err = TaskError::ActorNameTaken { name };
            for t in calls {
                self.fail_task(now, t, err.clone());
            }
            self.directory.end(mine, err.clone());
            self.fail_task(now, task, err);
            return self.wake_claim_waiters(now, task);
        }
        tracing::debug!(task = %task, actor = %found.actor_id, "a get-or-create found its actor at a peer");
        for t in calls {
            self.fail_task(now, t, TaskError::NoSuchActor { actor: mine });
        }
        match (held, counted_at) {
            (Some(h), _) => self.set_nested(ret, vec![h]),
            (None, Some(at)) if Some(at) == self.me => {
                if let Counted::Here(h) = self.handles_counted(found.actor_id) {
                    self.set_nested(ret, vec![h]);
                }
            }
            (None, Some(at)) => {
                let asked = super::Asked::Nest {
                    ret,
                    actor: found.actor_id,
                };
                self.ask_handle(now, at, found.actor_id, found.token, asked);
            }
            // Counted nowhere (it is detached): it lives until it is killed.
            (None, None) => {}
        }
        self.finish_task(now, task);
        match codec::encode(&(found.actor_id, found.token)) {
            Ok(bytes) => self.object_ready(now, ret, ObjectValue::Inline(bytes)),
            Err(e) => tracing::error!(error = %e, "cannot encode an actor id"),
        }
        self.wake_claim_waiters(now, task);
    }

    /// The live actor named `name` that this node placed at a peer, if any, and whether it
    /// is of class `class`.
    fn placed_by_name(&self, name: &str, class: &str) -> Option<(ActorId, bool)> {
        self.directory
            .placements()
            .into_iter()
            .find_map(|(actor, placed)| {
                let e = self.tasks.get(&placed.task)?;
                match &e.spec.kind {
                    TaskKind::CreateActor(c) if c.name.as_deref() == Some(name) => {
                        Some((actor, e.spec.function == class))
                    }
                    _ => None,
                }
            })
    }

    /// Makes `party` one more holder of `actor`'s handle object, for a handle it found by
    /// name, and returns the object. When that object is at a peer (the actor's creator's
    /// node placed it here), that peer is returned instead, for the finder to ask it to lend
    /// one. When the actor's handles are counted nowhere (it is detached), it lives until it
    /// is killed.
    pub(super) fn hold_handle(
        &mut self,
        party: Party,
        actor: ActorId,
    ) -> (Option<ObjectId>, Option<PeerKey>) {
        match self.handles_counted(actor) {
            Counted::Here(id) => {
                self.objects.hold(party, &[id]);
                (Some(id), None)
            }
            Counted::At(peer) => (None, Some(peer)),
            Counted::Nowhere => {
                self.actors.escape(actor);
                (None, None)
            }
        }
    }

    /// Every counted handle of `actor` is gone (its handle object was freed): it ends once
    /// the calls already made are done, here or at the peer it was placed on.
    pub(super) fn handles_gone(&mut self, now: Instant, actor: ActorId) {
        if self.actors.get(&actor).is_some() {
            if self.actors.out_of_scope(actor) {
                self.end_out_of_scope(now, actor);
            }
        } else {
            self.drain_remote(now, actor);
        }
    }

    pub(super) fn end_out_of_scope(&mut self, now: Instant, actor: ActorId) {
        tracing::debug!(actor = %actor, "actor out of scope; ending it");
        self.kill_actor(
            now,
            actor,
            TaskError::ActorKilled {
                actor,
                reason: "all its handles were dropped".into(),
            },
        );
    }

    /// Sends an actor's ready calls to its worker.
    pub(super) fn pump_actor(&mut self, now: Instant, actor: ActorId) {
        let span = self.actor_span(actor);
        let _entered = span.enter();
        let conn = match self.actors.get(&actor).map(|a| &a.state) {
            Some(ActorState::Alive { worker, .. }) => match self.worker_conns.get(worker) {
                Some(conn) => *conn,
                // Its process is gone (its connection closed) and the node has not seen it
                // exit yet: the calls wait for what comes next (a restart, or the end).
                None => return,
            },
            // Not alive: no call goes now.
            _ => return,
        };
        let (tasks, objects, store) = (&self.tasks, &self.objects, &self.store);
        // A call whose arguments were spilled stays queued (and its caller's later calls
        // behind it) until they are read back.
        let mut spilled = Vec::new();
        let (worker, calls) = self.actors.take_ready(actor, |t| {
            let Some(e) = tasks.get(&t) else {
                return false;
            };
            if e.missing != 0 {
                return false;
            }
            let in_memory = e.arg_refs().all(|id| {
                !matches!(
                    objects.get(&id).and_then(|o| o.value.as_ref()),
                    Some(ObjectValue::Shared(_))
                ) || store.in_memory(&id)
            });
            if !in_memory {
                spilled.push(t);
            }
            in_memory
        });
        if let Some(worker) = worker {
            let pid = self.worker_pid(worker);
            for t in calls {
                if let Some(e) = self.tasks.get_mut(&t) {
                    e.sent = true;
                    e.started = Some(now);
                    e.worker_pid = pid;
                    e.worker = Some(worker);
                }
                match self.exec_for(t) {
                    Ok(Exec::Ready(exec)) => self.tell_proc(conn, ToClient::Execute(exec)),
                    Ok(Exec::Pending(_)) => {
                        // Its arguments were in memory a moment ago and nothing ran since.
                        tracing::error!(actor = %actor, task = %t, "an actor call's arguments left memory while it was sent");
                        self.actors.call_done(actor, t);
                        let id = ObjectId::for_return(t, 0);
                        let message = "its arguments left memory while it was sent".into();
                        self.fail_task(now, t, TaskError::ObjectUnavailable { id, message });
                    }
                    Err(err) => {
                        self.actors.call_done(actor, t);
                        self.fail_task(now, t, err);
                    }
                }
            }
        }
        // After the calls that go now have pinned their arguments.
        for t in spilled {
            self.restore_args(now, t, Resume::Pump(actor));
        }
    }

    /// Reads `task`'s spilled arguments back, pinning all its shared ones, and runs `resume`
    /// once they are in memory. A spilled argument that cannot come back fails the task.
    fn restore_args(&mut self, now: Instant, task: TaskId, resume: Resume) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        let ids: Vec<ObjectId> = entry.arg_refs().collect();
        let mut last = None;
        for id in ids {
            if !matches!(
                self.objects.get(&id).and_then(|o| o.value.as_ref()),
                Some(ObjectValue::Shared(_))
            ) {
                continue;
            }
            match self.store_ensure(id) {
                Ok(ready) => {
                    self.pin_for(task, id);
                    if let Ready::After(op) = ready {
                        last = last.max(Some(op));
                    }
                }
                Err(e) => {
                    self.fail_task(now, task, e);
                    return;
                }
            }
        }
        match last {
            // Restores end in the order they were issued.
            Some(op) => self.park(op, resume),
            None => tracing::debug!(task = %task, "arguments in memory already"),
        }
    }

    /// Pins `id` in memory until `task` ends (once).
    fn pin_for(&mut self, task: TaskId, id: ObjectId) {
        if let Some(e) = self.tasks.get_mut(&task) {
            if !e.store_pins.contains(&id) {
                e.store_pins.push(id);
                self.store.index.pin(&id);
            }
        }
    }

    /// Resolves a task's arguments into what a worker receives. Shared-memory arguments are
    /// pinned in memory (listed in `pinned`, once) until the task ends; spilled ones are read
    /// back first: [`Args::Pending`] names the last restore to wait for.
    fn resolve_args(
        &mut self,
        args: &[Arg],
        pinned: &mut Vec<ObjectId>,
    ) -> Result<Args, TaskError> {
        let mut out = Vec::with_capacity(args.len());
        let mut pending = None;
        for arg in args {
            match arg {
                Arg::Value(v) => out.push(ArgValue::Inline(v.clone())),
                Arg::Ref(id) => {
                    let value = self.readable(*id);
                    if matches!(value, Ok(ObjectValue::Shared(_)) | Err(_)) && !pinned.contains(id)
                    {
                        self.store.index.pin(id);
                        pinned.push(*id);
                    }
                    match value {
                        Ok(ObjectValue::Inline(v)) => out.push(ArgValue::Inline(v)),
                        Ok(ObjectValue::Shared(o)) => out.push(ArgValue::Shared(*id, o)),
                        Ok(ObjectValue::Error(e)) => return Err(e),
                        // Restores end in the order they were issued.
                        Err(op) => pending = pending.max(Some(op)),
                    }
                }
            }
        }
        Ok(match pending {
            Some(op) => Args::Pending(op),
            None => Args::Ready(out),
        })
    }

    /// Resolves `task`'s arguments, pinning its shared-memory ones until the task ends.
    fn resolve_task_args(&mut self, task: TaskId) -> Result<Args, TaskError> {
        // Taken out for the call and put back: the arguments are not copied.
        let (args, mut pinned) = match self.tasks.get_mut(&task) {
            Some(e) => (
                std::mem::take(&mut e.spec.args),
                std::mem::take(&mut e.store_pins),
            ),
            None => return Ok(Args::Ready(Vec::new())),
        };
        let resolved = self.resolve_args(&args, &mut pinned);
        if let Some(e) = self.tasks.get_mut(&task) {
            e.spec.args = args;
            e.store_pins = pinned;
        }
        resolved
    }

    fn exec_for(&mut self, task: TaskId) -> Result<Exec, TaskError> {
        let Some(entry) = self.tasks.get(&task) else {
            return Err(TaskError::ObjectLost {
                id: ObjectId::for_return(task, 0),
            });
        };
        let (function, return_id) = (Box::from(entry.spec.function.as_str()), entry.ret);
        // (A call runs on its actor's: it is told those once, when the actor is hosted.)
        let holds = match (&entry.spec.kind, &entry.spec.resources) {
            (TaskKind::Function, r) if !r.is_default_task_demand() => {
                Some(Box::new(shoal_protocol::Holds {
                    resources: r.clone(),
                    gpu_ids: Vec::new(),
                }))
            }
            _ => None,
        };
        let stream = entry.stream.is_some();
        Ok(match self.resolve_task_args(task)? {
            Args::Ready(args) => Exec::Ready(ExecTask {
                task_id: task,
                function,
                args,
                return_id,
                holds,
                stream: if stream {
                    self.stream_allowed(task)
                } else {
                    None
                },
            }),
            Args::Pending(op) => Exec::Pending(op),
        })
    }

    /// The GPU devices `worker` holds for its lease (none if it holds no `GPU`).
    fn gpu_ids(&mut self, worker: WorkerId) -> Vec<u32> {
        let (ids, shared) = self.sched.gpu_ids(worker);
        if shared {
            tracing::warn!(
                worker,
                ?ids,
                "GPU fractions left no device with room: devices shared past their capacity"
            );
        }
        ids
    }

    /// A worker is ready for the actor created by `task`: hand it the actor, then its calls.
    pub(super) fn host_actor(&mut self, now: Instant, worker: WorkerId, task: TaskId) {
        let Some(actor) = self.actors.by_task(&task) else {
            self.sched.end_actor(now, task);
            return;
        };
        let span = self.actor_span(actor);
        let _entered = span.enter();
        let Some(entry) = self.tasks.get(&task) else {
            self.sched.end_actor(now, task);
            return;
        };
        let TaskKind::CreateActor(create) = &entry.spec.kind else {
            return;
        };
        let max_concurrency = create.max_concurrency.max(1);
        let concurrency_groups = create.concurrency_groups.clone();
        let (class, resources) = (entry.spec.function.clone(), entry.spec.resources.clone());
        // The constructor reads them at once; an actor's arguments stay pinned for its life
        // (a restart reads them again).
        let args = match self.resolve_task_args(task) {
            Ok(Args::Ready(a)) => a,
            Ok(Args::Pending(op)) => {
                self.park(op, Resume::Host(worker, task));
                return;
            }
            Err(e) => {
                let message = e.to_string();
                self.kill_actor(
                    now,
                    actor,
                    TaskError::ActorCreationFailed { actor, message },
                );
                return;
            }
        };
        let Some(&conn) = self.worker_conns.get(&worker) else {
            tracing::warn!(worker, actor = %actor, "actor worker gone before hosting");
            return;
        };
        let incarnation = self.actors.get(&actor).map_or(0, |a| a.incarnation);
        let gpu_ids = self.gpu_ids(worker);
        tracing::debug!(worker, actor = %actor, class, incarnation, ?gpu_ids, "hosting actor");
        self.actors.hosted(actor, worker);
        self.tell_proc(
            conn,
            ToClient::HostActor(HostActor {
                actor_id: actor,
                class,
                args,
                max_concurrency,
                concurrency_groups,
                incarnation,
                holds: Box::new(shoal_protocol::Holds { resources, gpu_ids }),
            }),
        );
        self.pump_actor(now, actor);
    }

    /// Every argument of `task` is ready: run it, create its actor or let its call go.
    pub(super) fn deps_ready(&mut self, now: Instant, task: TaskId) {
        let Some(entry) = self.tasks.get_mut(&task) else {
            return;
        };
        entry.ready.get_or_insert(now);
        let entry = &*entry;
        match &entry.spec.kind {
            // Here or at a peer with room.
            TaskKind::Function | TaskKind::CreateActor(_) => self.place_task(now, task),
            TaskKind::ActorMethod { actor, .. } => {
                let actor = *actor;
                if self.localize_args(task) {
                    return;
                }
                self.pump_actor(now, actor);
            }
        }
    }

    /// A `put` object (small or sealed in the store) from `conn`, which holds it from now
    /// on. Equal bytes put before are kept once; the first put makes the object.
    fn put_arrived(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: ObjectId,
        value: ObjectValue,
        nested: Vec<ObjectId>,
    ) {
        self.put_holder(conn, id);
        if self.objects.get(&id).is_some_and(|e| e.value.is_none()) {
            self.put_value(now, id, value, nested);
        }
    }

    /// `conn` holds the put object `id` (whose value may still be on its way to its file).
    pub(super) fn put_holder(&mut self, conn: ConnId, id: ObjectId) {
        let client = self.procs.get(&conn).map(|c| c.client);
        let e = self.objects.entry(id);
        e.holders.push(Party::Proc(conn));
        if e.value.is_none() && e.owner.is_none() {
            e.owner = client;
        }
    }

    /// A large put's file is in place (or could not be): the object has its value, unless
    /// equal bytes had it already. Freed meanwhile (its writer left): its files go.
    pub(super) fn put_sealed(&mut self, now: Instant, id: ObjectId, value: ObjectValue) {
        match self.objects.get(&id) {
            None => self.store_remove(&id),
            Some(e) if e.value.is_some() => {}
            Some(_) => self.put_value(now, id, value, Vec::new()),
        }
    }

    fn put_value(&mut self, now: Instant, id: ObjectId, value: ObjectValue, nested: Vec<ObjectId>) {
        let shared = matches!(value, ObjectValue::Shared(_));
        if !matches!(value, ObjectValue::Error(_)) {
            self.set_nested(id, nested);
        }
        self.object_ready(now, id, value);
        // A large put is long-lived and often shared: the mesh learns that this node holds it.
        if shared && self.me.is_some() {
            if let Some(e) = self.objects.get_mut(&id) {
                e.provided = true;
                self.out
                    .push_back(Output::Dht(super::DhtOp::StartProviding(id)));
            }
        }
    }

    pub(super) fn submit(&mut self, now: Instant, owner: Party, mut spec: TaskSpec, hops: u32) {
        if let (0, shoal_protocol::Strategy::PlacementGroup { group, bundle }) =
            (hops, &spec.strategy)
        {
            // Inside a group, it asks what its bundle reserved (under the bundle's names).
            spec.resources = shoal_protocol::groups::in_group(&spec.resources, *group, *bundle);
        }
        let task_id = spec.task_id;
        let ret = spec.return_id();
        let lent_by = {
            let e = self.objects.entry(ret);
            e.holders.push(owner);
            e.push_to = Some(owner);
            e.owner = Some(spec.owner);
            e.remote.as_mut().and_then(|r| r.lender.take())
        };
        if let Some(lender) = lent_by {
            self.unlend(ret, lender);
        }
        for id in &spec.nested {
            self.objects.pin(id);
        }
        let mut missing = 0;
        let mut failed_dep = None;
        for arg in &spec.args {
            if let Arg::Ref(id) = arg {
                let Some(e) = self.objects.get_mut(id) else {
                    failed_dep = Some(TaskError::ObjectLost { id: *id });
                    continue;
                };
                e.pins += 1;
                e.dependents.push(task_id);
                match &e.value {
                    None if !e.ready_remotely() => missing += 1,
                    None => {}
                    Some(ObjectValue::Error(err)) => failed_dep = Some(err.clone()),
                    Some(_) => {}
                }
            }
        }
        let invalid = invalid_options(&spec);
        let kind = spec.kind.clone();
        let client = spec.owner;
        let entry = TaskEntry::new(now, spec, ret, owner, missing, hops);
        let span = entry.span.clone();
        let _entered = span.enter();
        if !entry.more.is_empty() {
            // Its other returns: held and owned as its first is.
            for id in entry.more.iter() {
                let e = self.objects.entry(*id);
                e.holders.push(owner);
                e.push_to = Some(owner);
                e.owner = Some(client);
                if let Some(lender) = e.remote.as_mut().and_then(|r| r.lender.take()) {
                    self.unlend(*id, lender);
                }
            }
            self.more_returns.insert(ret, entry.more.clone());
        }
        self.tasks.insert(task_id, entry);
        if let Some(reason) = invalid {
            tracing::debug!(task = %task_id, %reason, "a task with invalid options; failed");
            self.fail_task(now, task_id, TaskError::InvalidOptions { reason });
            return;
        }
        match kind {
            TaskKind::Function => {}
            TaskKind::CreateActor(_) => match self.create_actor(now, task_id, failed_dep.is_none())
            {
                Creation::Go => {}
                Creation::Waiting => {
                    missing += 1;
                    if let Some(e) = self.tasks.get_mut(&task_id) {
                        e.missing += 1;
                    }
                }
                Creation::Done => return,
            },
            TaskKind::ActorMethod { actor, .. } if self.actor_is_remote(&actor) => {
                // Sent at once, in order with the caller's other calls; the actor's peer
                // waits for its arguments.
                if let Some(err) = failed_dep {
                    self.fail_task(now, task_id, err);
                } else {
                    self.forward_call(now, task_id, actor);
                }
                return;
            }
            TaskKind::ActorMethod { actor, token } => {
                // (Only an actor not hosted here may have ended unhosted: the common call
                // skips the lookup.)
                let ended = match self.actors.get(&actor) {
                    None => self.directory.ended_with(&actor),
                    Some(_) => None,
                };
                let queued = match ended {
                    Some(e) => Err(e),
                    None => self
                        .actors
                        .check_token(actor, &token)
                        .and_then(|()| self.actors.enqueue(actor, client, task_id)),
                };
                // The actor's `max_task_retries` are the call's retries.
                let retries = self.actors.get(&actor).map(|a| a.spec.max_task_retries);
                if let (Ok(()), Some(retries), Some(e)) =
                    (&queued, retries, self.tasks.get_mut(&task_id))
                {
                    e.retries_left = retries;
                }
                if let Err(e) = queued {
                    if let (TaskError::ActorNotAllowed { .. }, Party::Peer(peer)) = (&e, owner) {
                        self.rights.refuse(now, peer, Refused::Call, actor);
                    } else if let TaskError::ActorNotAllowed { .. } = &e {
                        tracing::warn!(%owner, actor = %actor, "a call without the actor's handle; refused");
                    }
                    self.fail_task(now, task_id, e);
                    return;
                }
            }
        }
        if let Some(err) = failed_dep {
            self.fail_task(now, task_id, err);
        } else if missing == 0 {
            self.deps_ready(now, task_id);
        }
    }

    /// The secret of `actor`'s handles, if this node knows it: it hosts the actor, or placed
    /// it on a peer.
    pub(super) fn actor_token(&self, actor: &ActorId) -> Option<ActorToken> {
        if let Some(a) = self.actors.get(actor) {
            return Some(a.spec.token);
        }
        let placed = self.directory.placement(actor)?;
        match &self.tasks.get(&placed.task)?.spec.kind {
            TaskKind::CreateActor(c) => Some(c.token),
            _ => None,
        }
    }

    /// The return object of an actor's creation: its id and its handles' secret, known at
    /// once.
    fn actor_id_ready(&mut self, now: Instant, ret: ObjectId, actor: ActorId) {
        let Some(token) = self.actor_token(&actor) else {
            tracing::error!(actor = %actor, "an actor registered here has no entry");
            return;
        };
        match codec::encode(&(actor, token)) {
            Ok(bytes) => self.object_ready(now, ret, ObjectValue::Inline(bytes)),
            Err(e) => tracing::error!(error = %e, "cannot encode an actor id"),
        }
    }

    fn task_done(&mut self, now: Instant, conn: ConnId, task: TaskId, done: Done) {
        let Done {
            outcome,
            nested,
            more,
            returned_error,
        } = done;
        // The return id as the task table hashed it (hashing it again costs a blake3).
        let (span, ret, several, unannounced) = match self.tasks.get(&task) {
            Some(e) => {
                let ended = self.metrics.tasks_ended.entry(&e.spec.function);
                match &outcome {
                    shoal_protocol::TaskOutcome::Ok(_) => ended.ok += 1,
                    shoal_protocol::TaskOutcome::Err(_) => ended.failed += 1,
                }
                if e.is_call() {
                    let took = now.saturating_duration_since(e.arrived);
                    self.metrics.actor_call_seconds.observe(took.as_secs_f64());
                }
                let unannounced = e.stream.as_deref().is_some_and(|s| s.unannounced());
                (Some(e.span.clone()), e.ret, !e.more.is_empty(), unannounced)
            }
            None => (None, ObjectId::for_return(task, 0), false, false),
        };
        let error = match &outcome {
            TaskOutcome::Ok(_) => None,
            TaskOutcome::Err(e) => Some(e.to_string()),
        };
        // A panic of a task that retries them runs it again (`retry_exceptions`), and so
        // does an `Err` its function returned (small, so inline: nothing was stored).
        let error_returned =
            returned_error && matches!(outcome, TaskOutcome::Ok(ObjectValue::Inline(_)));
        let retry = (error_returned
            || matches!(outcome, TaskOutcome::Err(TaskError::Panicked { .. })))
            && self.tasks.get(&task).is_some_and(|e| {
                e.spec.retry_exceptions
                    && e.retries_left > 0
                    && matches!(e.spec.kind, TaskKind::Function)
            });
        // Its result could not be stored because another copy of it is being written here (a
        // pull of an earlier run's result, or another run): it runs again, and by then finds
        // that copy sealed (the arm below), rather than failing.
        let rerun = matches!(outcome, TaskOutcome::Err(TaskError::ResultStore { .. }))
            && self.store.index.contains(&ret)
            && self.store.index.sealed(&ret).is_none()
            && self
                .tasks
                .get(&task)
                .is_some_and(|e| matches!(e.spec.kind, TaskKind::Function));
        if !retry && !rerun {
            self.record_end(now, task, error);
        }
        let _entered = span.as_ref().map(|s| s.enter());
        let mut actor = None;
        if let Some(w) = self.worker_of(conn) {
            actor = self.actors.by_worker(w);
            match actor {
                Some(a) => {
                    if !self.actors.call_done(a, task) {
                        // Failed already (its actor was killed meanwhile): nothing to do.
                        return;
                    }
                }
                None => self.sched.task_done(now, w, task),
            }
        }
        if let (true, Some(e)) = (rerun, self.tasks.get(&task)) {
            tracing::info!(task = %task, object = %ret, "a task's result is being written here by another; running it again");
            let binary = self.envs.key_for(&e.spec, &mut self.sched);
            let demand = e.spec.resources.clone();
            self.sched.submit(now, task, binary, demand);
            return;
        }
        if let (true, Some(e)) = (retry, self.tasks.get_mut(&task)) {
            e.retries_left -= 1;
            self.metrics.tasks_retried += 1;
            let failed = if error_returned {
                "returned an error"
            } else {
                "panicked"
            };
            tracing::info!(task = %task, retries_left = e.retries_left, "the task {failed}; running it again (retry_exceptions)");
            let binary = self.envs.key_for(&e.spec, &mut self.sched);
            let demand = e.spec.resources.clone();
            self.sched.submit(now, task, binary, demand);
            return;
        }
        let (mut outcome, mut nested) = (outcome, nested);
        if let (true, TaskOutcome::Err(_)) = (several || !more.is_empty(), &outcome) {
            // What its worker reserved for the other returns goes.
            self.drop_reserved_returns(conn, task, more.len());
        } else if several || !more.is_empty() {
            match self.store_more(now, conn, task, more) {
                Ok(0) => {}
                Ok(sealing) => {
                    // The first return waits for the others to be in place.
                    if let Some(e) = self.tasks.get_mut(&task) {
                        e.first = Some(Box::new(FirstReturn {
                            conn,
                            outcome,
                            nested,
                            sealing,
                        }));
                    }
                    return;
                }
                Err(message) => {
                    tracing::warn!(conn, task = %task, %message, "bad returns");
                    if self.store.index.reserved_by(&ret, Holder::Proc(conn)) {
                        self.store_remove(&ret);
                    }
                    outcome = TaskOutcome::Err(TaskError::ResultStore { message });
                    nested = Vec::new();
                }
            }
        }
        match self.tasks.get_mut(&task) {
            Some(e) if unannounced => {
                // A stream's end follows its items, some of which are being put in place.
                e.first = Some(Box::new(FirstReturn {
                    conn,
                    outcome,
                    nested,
                    sealing: 0,
                }));
            }
            _ => self.first_return(now, conn, task, ret, outcome, nested),
        }
        if let Some(a) = actor {
            self.pump_actor(now, a);
            if self.actors.get(&a).is_some_and(|x| x.drained()) {
                self.end_out_of_scope(now, a);
            }
        }
    }

    /// `task`'s (first) return as its worker reported it: the task ends with it once it is
    /// in place.
    pub(super) fn first_return(
        &mut self,
        now: Instant,
        conn: ConnId,
        task: TaskId,
        ret: ObjectId,
        outcome: TaskOutcome,
        nested: Vec<ObjectId>,
    ) {
        match outcome {
            TaskOutcome::Ok(ObjectValue::Shared(object))
                if self.store.index.reserved_by(&ret, Holder::Proc(conn)) =>
            {
                // The result is the task's once its file is in place. The refs inside it are
                // pinned now: the worker's release of them may come before the file is.
                self.set_nested(ret, nested);
                let after = move |new| After::Result { task, object, new };
                if let Err(e) = self.store_seal(ret, ret, object, after) {
                    tracing::warn!(conn, task = %task, error = %e, "bad result seal");
                    self.store_remove(&ret);
                    let message = e.to_string();
                    let value = ObjectValue::Error(TaskError::ResultStore { message });
                    self.result_sealed(now, task, ret, value);
                }
            }
            TaskOutcome::Ok(ObjectValue::Shared(_)) => {
                tracing::warn!(conn, task = %task, "a shared result without a reservation");
                let message = "the result was not reserved in the store".into();
                let value = ObjectValue::Error(TaskError::ResultStore { message });
                self.result_sealed(now, task, ret, value);
            }
            TaskOutcome::Ok(v) => self.task_result(now, task, ret, v, nested),
            TaskOutcome::Err(TaskError::ResultStore { .. })
                if self.tasks.contains_key(&task) && self.store.index.sealed(&ret).is_some() =>
            {
                // A copy of this very result came here while it ran (an earlier run's,
                // pulled for another task): its result could not be stored beside it, and
                // is that copy.
                if let Some(object) = self.store.index.sealed(&ret) {
                    tracing::info!(task = %task, object = %ret, "a task's result was here already");
                    self.end_with_copy(now, task, ret, object);
                }
            }
            TaskOutcome::Err(e) => self.task_result(now, task, ret, ObjectValue::Error(e), nested),
        }
    }

    /// `task`'s result is final (a shared one is in its file): the task ends with it.
    /// (The refs inside it were pinned when it was sealed.)
    pub(super) fn result_sealed(
        &mut self,
        now: Instant,
        task: TaskId,
        ret: ObjectId,
        value: ObjectValue,
    ) {
        let span = self.tasks.get(&task).map(|e| e.span.clone());
        let _entered = span.as_ref().map(|s| s.enter());
        self.task_result(now, task, ret, value, Vec::new());
    }

    /// `task`, whose return object is `ret`, ends with `value` (inside its span).
    fn task_result(
        &mut self,
        now: Instant,
        task: TaskId,
        ret: ObjectId,
        value: ObjectValue,
        nested: Vec<ObjectId>,
    ) {
        if self.tasks.contains_key(&task) {
            if !matches!(value, ObjectValue::Error(_)) {
                // Results made from it may be lost at peers and need it made again.
                self.keep_lineage(task);
            }
            self.finish_task(now, task);
            if !matches!(value, ObjectValue::Error(_)) {
                self.set_nested(ret, nested);
            }
            self.object_ready(now, ret, value);
        } else if let ObjectValue::Shared(_) = value {
            // Nobody wants it any more: drop the stored result.
            self.store_remove(&ret);
        }
    }

    /// Forgets a task and unpins its arguments.
    pub(super) fn finish_task(&mut self, now: Instant, task: TaskId) {
        let Some(entry) = self.tasks.remove(&task) else {
            return;
        };
        if !self.children.is_empty() {
            self.children.remove(&task);
        }
        self.spill.forget(&task);
        if let TaskKind::ActorMethod { actor, .. } = entry.spec.kind {
            // A call sent to the worker has left its actor's queue for good: no need to scan
            // its caller's queue for it.
            if !entry.sent && self.actors.remove_queued(actor, entry.spec.owner, task) {
                // The caller's next call may be ready.
                self.pump_actor(now, actor);
            }
        }
        for id in &entry.store_pins {
            self.store.index.unpin(id);
        }
        for id in entry.arg_refs() {
            if let Some(e) = self.objects.get_mut(&id) {
                e.pins = e.pins.saturating_sub(1);
                e.dependents.retain(|t| *t != task);
            }
            self.maybe_free(id);
        }
        for id in &entry.spec.nested {
            self.objects.unpin(id);
            self.maybe_free(*id);
        }
        // A first return kept for the others, which will not be: its file goes.
        if let Some(first) = &entry.first {
            if self
                .store
                .index
                .reserved_by(&entry.ret, Holder::Proc(first.conn))
            {
                self.store_remove(&entry.ret);
            }
        }
        // An abandoned task's results may now be unheld.
        self.maybe_free(entry.ret);
        for id in entry.more.iter() {
            self.maybe_free(*id);
        }
    }

    pub(super) fn fail_task(&mut self, now: Instant, task: TaskId, error: TaskError) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        if let TaskKind::CreateActor(create) = &entry.spec.kind {
            let actor = create.actor_id;
            if self.actors.by_task(&task) == Some(actor) {
                // Its id is out already; the actor dies, and its calls fail with why.
                let message = error.to_string();
                self.kill_actor(
                    now,
                    actor,
                    TaskError::ActorCreationFailed { actor, message },
                );
                return;
            }
        }
        let ret = entry.ret;
        let span = entry.span.clone();
        let _entered = span.enter();
        tracing::debug!(task = %task, %error, "task failed");
        self.record_end(now, task, Some(error.to_string()));
        self.finish_task(now, task);
        self.object_ready(now, ret, ObjectValue::Error(error));
    }

    /// Records a value, delivers it to whoever waits, and wakes dependent tasks.
    pub(super) fn object_ready(&mut self, now: Instant, id: ObjectId, value: ObjectValue) {
        if !self.more_returns.is_empty() {
            let failed = match &value {
                ObjectValue::Error(err) => Some(err),
                _ => None,
            };
            self.first_return_ready(now, id, failed);
        }
        let Some(e) = self.objects.get_mut(&id) else {
            // Released before it was made.
            if let ObjectValue::Shared(_) = value {
                self.store_remove(&id);
            }
            return;
        };
        if e.value.is_some() {
            // Objects are immutable: a second value for the same id is ignored.
            tracing::warn!(object = %id, "duplicate value for an object; ignored");
            return;
        }
        let waiters = std::mem::take(&mut e.waiters);
        let push_to = e.push_to;
        // Tasks that counted it missing: all dependents, unless it was ready at a peer
        // already (then only those waiting for a copy here).
        let dependents = match e.remote.as_mut() {
            Some(r) if r.ready => std::mem::take(&mut r.localizing),
            _ => e.dependents.clone(),
        };
        e.value = Some(value.clone());
        let failed = match &value {
            ObjectValue::Error(err) => Some(err.clone()),
            _ => None,
        };
        if let Some(owner) = push_to {
            self.send(
                owner,
                ToClient::Object {
                    id,
                    value: value.clone(),
                },
            );
            // A peer that gets a value inline keeps its own copy: it holds nothing here any
            // more. (A large value stays here for it until it says `Release`.)
            if let (Party::Peer(_), false) = (owner, matches!(value, ObjectValue::Shared(_))) {
                self.objects.release(owner, &id);
            }
        }
        for w in waiters {
            if Some(w) != push_to {
                self.send(
                    w,
                    ToClient::Object {
                        id,
                        value: value.clone(),
                    },
                );
            }
        }
        for t in dependents {
            // Sent to a peer while a copy was there (before it was made again): has it.
            if self.spill.spilled_to(&t).is_some() {
                continue;
            }
            let Some(entry) = self.tasks.get_mut(&t) else {
                continue;
            };
            if let Some(err) = &failed {
                self.fail_task(now, t, err.clone());
                continue;
            }
            entry.missing = entry.missing.saturating_sub(1);
            if entry.missing == 0 {
                self.deps_ready(now, t);
            }
        }
        self.maybe_free(id);
    }

    /// Frees `id` if nothing references it any more, and whatever that leaves unreferenced:
    /// its store files, the copies peers keep for this node, its announcement.
    pub(super) fn maybe_free(&mut self, id: ObjectId) {
        // The buffer is kept between calls (taken, so that what runs below may free too).
        let mut freed = std::mem::take(&mut self.freed);
        self.objects.collect_into(id, &mut freed);
        for (id, e) in freed.drain(..) {
            self.lineage.object_freed(id);
            if let Some(actor) = self.handles.remove(&id) {
                // Peers lent a handle hold it here until they no longer do.
                self.unreferenced.push(actor);
            }
            if let Some(r) = &e.remote {
                for p in r.release_to.iter().chain(&r.lender) {
                    self.tell_peer(*p, shoal_protocol::mesh::PeerMsg::Release { ids: vec![id] });
                }
            }
            if e.provided {
                self.out
                    .push_back(Output::Dht(super::DhtOp::StopProviding(id)));
            }
            // Its files go too (also those of an object whose copy turned out corrupted,
            // and a result still being written).
            self.store_remove(&id);
        }
        self.freed = freed;
    }

    /// Records the refs inside object `id` and pins them while it lives.
    pub(super) fn set_nested(&mut self, id: ObjectId, nested: Vec<ObjectId>) {
        if nested.is_empty() {
            return;
        }
        for inner in self.objects.set_nested(id, nested) {
            if inner != id {
                tracing::debug!(object = %id, nested = %inner, "a ref inside an object was already freed");
            }
        }
    }

    /// A shared object's value for a reader, or the restore to wait for when it was spilled
    /// (a copy that cannot be read back becomes the object's error for good).
    pub(super) fn readable(&mut self, id: ObjectId) -> Result<ObjectValue, OpId> {
        let Some(value) = self.objects.get(&id).and_then(|e| e.value.clone()) else {
            return Ok(ObjectValue::Error(TaskError::ObjectLost { id }));
        };
        if !matches!(value, ObjectValue::Shared(_)) {
            return Ok(value);
        }
        match self.store_ensure(id) {
            Ok(Ready::Now) => Ok(value),
            Ok(Ready::After(op)) => Err(op),
            Err(e) => Ok(ObjectValue::Error(e)),
        }
    }

    pub(super) fn worker_exited(&mut self, now: Instant, worker: WorkerId, end: WorkerEnd) {
        self.worker_gone(worker);
        let (pid, error) = match end {
            WorkerEnd::Exited { pid, exit } => (pid, TaskError::WorkerDied { pid, exit }),
            WorkerEnd::FailedToStart => (
                0,
                TaskError::WorkerDied {
                    pid: 0,
                    exit: shoal_protocol::ExitInfo {
                        code: None,
                        signal: None,
                    },
                },
            ),
            WorkerEnd::OutOfMemory { pid, limit, used } => {
                (pid, TaskError::OutOfMemory { limit, used })
            }
        };
        let lost = self.sched.worker_exited(now, worker);
        // It stopped the task it was told to stop: nothing after it had begun.
        let cancelled = self.cancelling.remove(&worker)
            && matches!(end, WorkerEnd::Exited { exit, .. } if exit.code == Some(shoal_protocol::CANCELLED_EXIT));
        if cancelled {
            tracing::debug!(
                worker,
                pid,
                tasks = lost.len(),
                "worker stopped a task as told; the tasks queued behind it run again"
            );
        } else if !lost.is_empty() {
            self.metrics.workers_died += 1;
            tracing::warn!(worker, pid, %error, tasks = lost.len(), "worker died with tasks in flight");
        }
        for (i, task) in lost.into_iter().enumerate() {
            if let Some(actor) = self.actors.by_task(&task) {
                self.actor_worker_lost(now, actor, end);
                continue;
            }
            let Some(entry) = self.tasks.get_mut(&task) else {
                continue;
            };
            if entry.worker != Some(worker) {
                // Not the run this worker was given: that one was stopped and forgotten,
                // and its owner sent the task again since (it runs, or waits, elsewhere).
                tracing::debug!(task = %task, worker, "a stopped run's worker ended; the task's later run goes on");
                continue;
            }
            // The first task was running; the others had not started and lose nothing.
            let began = i == 0 && !cancelled;
            if !began || entry.retries_left > 0 {
                if began {
                    entry.retries_left -= 1;
                    self.metrics.tasks_retried += 1;
                }
                tracing::info!(task = %task, retries_left = entry.retries_left, "retrying task");
                let binary = self.envs.key_for(&entry.spec, &mut self.sched);
                let demand = entry.spec.resources.clone();
                self.sched.submit(now, task, binary, demand);
            } else {
                self.fail_task(now, task, error.clone());
            }
        }
    }

    /// An actor's process ended: its calls in flight fail; it restarts if it may.
    fn actor_worker_lost(&mut self, now: Instant, actor: ActorId, end: WorkerEnd) {
        let span = self.actor_span(actor);
        let _entered = span.enter();
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let create_task = a.create_task;
        let (pid, error) = match (&a.state, end) {
            (ActorState::Dead(e), WorkerEnd::Exited { pid, .. }) => (pid, e.clone()),
            (ActorState::Dead(e), WorkerEnd::FailedToStart) => (0, e.clone()),
            (ActorState::Dead(e), WorkerEnd::OutOfMemory { pid, .. }) => (pid, e.clone()),
            (_, WorkerEnd::OutOfMemory { pid, limit, used }) => {
                (pid, TaskError::OutOfMemory { limit, used })
            }
            (_, WorkerEnd::FailedToStart) => (
                0,
                TaskError::ActorCreationFailed {
                    actor,
                    message: "its worker process could not be started".into(),
                },
            ),
            (_, WorkerEnd::Exited { pid, exit }) => {
                (pid, TaskError::ActorDied { actor, pid, exit })
            }
        };
        let (inflight, after) = self.actors.worker_lost(actor, error.clone());
        let requeued = self.actors.take_requeued(actor);
        if !inflight.is_empty() || !requeued.is_empty() {
            tracing::warn!(actor = %actor, pid, calls = inflight.len(), not_begun = requeued.len(), "actor died with calls in flight");
        }
        for t in requeued {
            // Not begun: queued again, for the restarted actor (or failed with the queue).
            if let Some(e) = self.tasks.get_mut(&t) {
                e.sent = false;
            }
        }
        // Those that may have begun run again if their actor restarts and they have retries
        // left (`max_task_retries`); the others fail.
        let mut again = Vec::new();
        for t in inflight {
            match self.tasks.get_mut(&t) {
                Some(e) if after == AfterDeath::Restart && e.retries_left > 0 => {
                    e.retries_left -= 1;
                    e.sent = false;
                    self.metrics.tasks_retried += 1;
                    tracing::info!(task = %t, retries_left = e.retries_left, "running an actor call again on the restarted actor");
                    again.push((t, e.spec.owner));
                }
                _ => self.fail_task(now, t, error.clone()),
            }
        }
        self.actors.requeue_front(actor, &again);
        match after {
            AfterDeath::Restart => {
                tracing::info!(actor = %actor, pid, "restarting actor");
                self.announce_actor(actor);
                if let Some(entry) = self.tasks.get(&create_task) {
                    let binary = self.envs.key_for(&entry.spec, &mut self.sched);
                    let demand = entry.spec.resources.clone();
                    self.sched.submit_actor(now, create_task, binary, demand);
                }
            }
            AfterDeath::Dead(queued) => {
                tracing::warn!(actor = %actor, pid, "actor died");
                self.withdraw_actor(actor);
                for t in queued {
                    self.fail_task(now, t, error.clone());
                }
                self.record_end(now, create_task, Some(error.to_string()));
                self.forget_if_peers(actor, create_task, error.clone());
                self.finish_task(now, create_task);
            }
        }
    }

    /// Carries out the scheduler's decisions.
    pub(super) fn apply_actions(&mut self, now: Instant) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Spawn { worker, binary } => {
                    // A pool with environment variables runs its binary's workers with them.
                    let (binary, env) = match self.envs.get(&binary) {
                        Some(pool) => (pool.binary, pool.env.clone()),
                        None => (binary, Vec::new()),
                    };
                    self.spawn(now, worker, binary, env)
                }
                Action::Dispatch { worker, task } => self.dispatch(now, worker, task),
                Action::Kill { worker } => self.out.push_back(Output::KillWorker { worker }),
                Action::Fail { task, error } => self.fail_task(now, task, error),
                Action::HostActor { worker, task } => self.host_actor(now, worker, task),
            }
        }
    }

    /// Starts worker `worker` of `binary`, with environment variables `env`.
    fn spawn(
        &mut self,
        now: Instant,
        worker: WorkerId,
        binary: shoal_protocol::BinaryId,
        env: Vec<(String, String)>,
    ) {
        match self.binaries.get(&binary) {
            Some(exe) => {
                self.metrics.workers_started += 1;
                let exe = exe.clone();
                let shipped = self.shipped.contains(&binary);
                self.out.push_back(Output::SpawnWorker {
                    worker,
                    binary,
                    exe,
                    shipped,
                    env,
                });
            }
            None => {
                tracing::error!(%binary, "no executable known for binary");
                self.worker_exited(now, worker, WorkerEnd::FailedToStart);
            }
        }
    }

    pub(super) fn dispatch(&mut self, now: Instant, worker: WorkerId, task: TaskId) {
        let Some(entry) = self.tasks.get_mut(&task) else {
            // Dropped meanwhile: tell the scheduler it is done so the slot frees.
            self.sched.task_done(now, worker, task);
            return;
        };
        // The worker's from now (its end retries it), though its arguments may still be
        // being read back.
        entry.worker = Some(worker);
        let span = entry.span.clone();
        let _entered = span.enter();
        let mut exec = match self.exec_for(task) {
            Ok(Exec::Ready(exec)) => exec,
            Ok(Exec::Pending(op)) => {
                // The worker keeps the task's slot meanwhile.
                self.park(op, Resume::Dispatch(worker, task));
                return;
            }
            Err(err) => {
                self.sched.task_done(now, worker, task);
                self.fail_task(now, task, err);
                return;
            }
        };
        let pid = self.worker_pid(worker);
        if let Some(e) = self.tasks.get_mut(&task) {
            let waited = now.saturating_duration_since(e.arrived);
            self.metrics.dispatch_seconds.observe(waited.as_secs_f64());
            e.started = Some(now);
            e.worker_pid = pid;
        }
        self.worker_ran(worker, task);
        if let Some(holds) = exec
            .holds
            .as_deref_mut()
            .filter(|h| h.resources.get_milli(super::sched::GPU) > 0)
        {
            holds.gpu_ids = self.gpu_ids(worker);
        }
        match self.worker_conns.get(&worker) {
            Some(conn) => self.tell_proc(*conn, ToClient::Execute(exec)),
            None => {
                tracing::warn!(worker, task = %task, "worker gone before dispatch; it will be retried")
            }
        }
    }

    /// Tells every party that waits for a value that the node is stopping.
    pub(super) fn fail_all_waiters(&mut self) {
        let mut owed: Vec<(ObjectId, Vec<Party>)> = Vec::new();
        for (id, e) in self.objects.iter() {
            if e.value.is_some() {
                continue;
            }
            let mut parties = e.waiters.clone();
            if let Some(p) = e.push_to {
                if !parties.contains(&p) {
                    parties.push(p);
                }
            }
            if !parties.is_empty() {
                owed.push((*id, parties));
            }
        }
        owed.sort_by_key(|(id, _)| *id);
        for (id, parties) in owed {
            for p in parties {
                self.send(
                    p,
                    ToClient::Object {
                        id,
                        value: ObjectValue::Error(TaskError::NodeStopping),
                    },
                );
            }
        }
    }

    pub(super) fn object_list(&self) -> Vec<ObjectInfo> {
        let index = &self.store.index;
        let mut out: Vec<ObjectInfo> = self
            .objects
            .iter()
            .map(|(id, e)| {
                let mut pinned_by = Vec::new();
                if !e.holders.is_empty() {
                    pinned_by.push("ref".to_string());
                }
                if !e.dependents.is_empty() {
                    pinned_by.push("task-arg".to_string());
                }
                if e.pins as usize > e.dependents.len() {
                    pinned_by.push("nested".to_string());
                }
                let (size, location) = match &e.value {
                    // Made, and left at the peers that made or hold it.
                    None if e.ready_remotely() => (
                        e.remote
                            .as_ref()
                            .and_then(|r| r.object)
                            .map_or(0, |o| o.size),
                        "remote".to_string(),
                    ),
                    None => (0, "pending".to_string()),
                    Some(ObjectValue::Inline(v)) => (v.len() as u64, "inline".to_string()),
                    Some(ObjectValue::Error(_)) => (0, "error".to_string()),
                    Some(ObjectValue::Shared(o)) => (
                        o.size,
                        match index.location(id) {
                            Some(Location::Memory) => "memory",
                            Some(Location::Disk) => "disk",
                            Some(Location::Both) => "memory+disk",
                            Some(Location::Writing) => "writing",
                            None => "missing",
                        }
                        .to_string(),
                    ),
                };
                if e.value.is_none() && !e.ready_remotely() {
                    pinned_by.push("pending".to_string());
                }
                ObjectInfo {
                    id: *id,
                    size,
                    owner: e.owner,
                    holders: e.holders.len() as u32,
                    pinned_by,
                    location,
                }
            })
            .collect();
        out.sort_by_key(|o| std::cmp::Reverse(o.size));
        out
    }

    /// A snapshot of the node at `now` (the mesh view is the shell's to add).
    pub fn status(&self, now: Instant) -> shoal_protocol::NodeStatus {
        let index = &self.store.index;
        let mut objects = ObjectStats {
            store_capacity: index.capacity(),
            store_used: index.used(),
            spilled_count: index.spilled_count(),
            spilled_bytes: index.spilled_bytes(),
            ..Default::default()
        };
        for (id, e) in self.objects.iter() {
            objects.count += 1;
            match &e.value {
                Some(ObjectValue::Inline(v)) => {
                    objects.inline_count += 1;
                    objects.inline_bytes += v.len() as u64;
                }
                Some(ObjectValue::Shared(o)) => {
                    objects.shared_count += 1;
                    objects.shared_bytes += o.size;
                    let in_memory =
                        matches!(index.location(id), Some(Location::Memory | Location::Both));
                    if e.pulled && in_memory {
                        objects.pulled_count += 1;
                        objects.pulled_bytes += o.size;
                    }
                }
                _ => {}
            }
        }
        let waiting = self.tasks.values().filter(|t| t.missing > 0).count() as u64;
        shoal_protocol::NodeStatus {
            node_id: self.node_id,
            pid: std::process::id(),
            socket: self.config.socket.display().to_string(),
            store_dir: self.store.dir.display().to_string(),
            embedded: self.config.embedded,
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            resources_total: self.sched.total().clone(),
            resources_free: self.sched.free().clone(),
            workers: self.sched.worker_status(),
            tasks_queued: self.sched.queued() as u64 + waiting,
            tasks_running: self.sched.running() as u64,
            tasks_finished: self.sched.finished(),
            clients: self.procs.len() as u64,
            objects,
            actors: self.actors.status(),
            mesh: None,
            refused: self
                .rights
                .refused()
                .into_iter()
                .map(|(k, n)| (k.name().to_string(), n))
                .collect(),
            metrics: None,
            dashboard: None,
        }
    }

    /// Tells the mesh about this node's load when it changed.
    pub(super) fn report_load(&mut self) {
        if self.me.is_none() {
            return;
        }
        let index = &self.store.index;
        let mut binaries: Vec<shoal_protocol::BinaryId> = self.binaries.keys().copied().collect();
        binaries.sort();
        let load = super::Load {
            total: self.sched.total().clone(),
            free: self.sched.free().clone(),
            queued: self.sched.queued() as u64,
            running: self.sched.running() as u64,
            store_capacity: index.capacity(),
            store_used: index.used(),
            binaries,
        };
        if self.last_load.as_ref() != Some(&load) {
            self.last_load = Some(load.clone());
            self.out.push_back(Output::Load(load));
        }
    }
}

/// What a worker reported of a task it ran ([`ToNode::Done`]).
struct Done {
    outcome: shoal_protocol::TaskOutcome,
    nested: Vec<ObjectId>,
    more: Vec<ReturnValue>,
    returned_error: bool,
}

/// A task's arguments as a worker receives them, or the restore they wait for.
enum Args {
    Ready(Vec<ArgValue>),
    Pending(OpId),
}

/// A task to send, or the restore it waits for.
enum Exec {
    Ready(ExecTask),
    Pending(OpId),
}

/// Why a task's or an actor's options are not valid, as Ray checks them: a fractional
/// quantity above one, an empty actor name or namespace.
fn invalid_options(spec: &TaskSpec) -> Option<String> {
    if let Err(reason) = spec.resources.check_demand() {
        return Some(reason);
    }
    if spec.num_returns == 0 || spec.num_returns > shoal_protocol::MAX_RETURNS {
        return Some(format!(
            "num_returns={} (a task returns 1 to {} objects)",
            spec.num_returns,
            shoal_protocol::MAX_RETURNS
        ));
    }
    if let Err(reason) = shoal_protocol::check_env(&spec.env) {
        return Some(reason);
    }
    if spec.num_returns > 1
        && !matches!(spec.kind, TaskKind::Function | TaskKind::ActorMethod { .. })
    {
        return Some("only a function or an actor's method may return several objects".into());
    }
    if let Some(stream) = spec.stream {
        let call = matches!(spec.kind, TaskKind::Function | TaskKind::ActorMethod { .. });
        if !call || spec.num_returns != 1 {
            return Some(
                "only a function or an actor's method with one return may be a streaming \
                 generator"
                    .into(),
            );
        }
        if stream.window == 0 {
            return Some("a streaming generator's window is at least 1 item".into());
        }
    }
    if let shoal_protocol::Strategy::Peer { peer, .. } = &spec.strategy {
        if shoal_protocol::mesh::PeerKey::parse(peer).is_none() {
            return Some(format!("{peer:?} is not a peer id"));
        }
    }
    if let Some(m) = spec
        .label_selector
        .iter()
        .find(|m| m.key.is_empty() || m.values.is_empty())
    {
        return Some(format!("bad label selector {m}"));
    }
    match &spec.kind {
        TaskKind::CreateActor(c) => {
            if let Some(Err(reason)) = c.name.as_deref().map(shoal_protocol::check_name) {
                return Some(reason);
            }
            let groups = &c.concurrency_groups;
            groups.iter().enumerate().find_map(|(i, (name, max))| {
                if name.is_empty() {
                    Some("a concurrency group's name cannot be empty".into())
                } else if *max == 0 {
                    Some(format!("concurrency group `{name}` runs no call at once"))
                } else if groups[..i].iter().any(|(n, _)| n == name) {
                    Some(format!("concurrency group `{name}` is given twice"))
                } else {
                    None
                }
            })
        }
        _ => None,
    }
}
