//! The node's core: one task that owns all node state and moves messages between the
//! attached processes, the scheduler, the object table and the store.
//!
//! Everything reaches it as an [`Event`] on one bounded channel; it never waits on a client
//! (replies go out with `try_send` to per-connection queues), so a slow or stuck client can
//! only hurt itself.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use shoal_protocol::{
    codec, ActorId, Arg, ArgValue, BinaryId, ClientId, ExecTask, ExitInfo, Hello, HostActor,
    NodeId, NodeStatus, ObjectId, ObjectInfo, ObjectStats, ObjectValue, Role, TaskError, TaskId,
    TaskKind, TaskOutcome, TaskSpec, ToClient, ToNode,
};
use tokio::sync::{mpsc, oneshot};

use crate::actors::{ActorTable, AfterDeath, Registered};
use crate::config::NodeConfig;
use crate::sched::{Action, Scheduler, WorkerId};
use crate::store::Store;
use crate::store::{Location, RestoreError};
use crate::workers::{self, WorkerProcess};

#[cfg(feature = "mesh")]
mod mesh;

/// A node-local connection number.
pub type ConnId = u64;

/// Capacity of the core's inbox.
pub const EVENT_QUEUE: usize = 8192;

/// Something that happened, for the core to handle.
#[derive(Debug)]
pub enum Event {
    /// A process finished its handshake; replies go to `tx`.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its handshake.
        hello: Hello,
        /// Its outbound queue.
        tx: mpsc::Sender<ToClient>,
    },
    /// Messages from a connection, in order.
    Messages {
        /// The connection.
        conn: ConnId,
        /// The messages.
        msgs: Vec<ToNode>,
    },
    /// A connection ended.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// A worker process ended.
    WorkerExited {
        /// The worker.
        worker: WorkerId,
        /// Its pid.
        pid: u32,
        /// How.
        exit: ExitInfo,
    },
    /// Status for an in-process caller.
    Status(oneshot::Sender<NodeStatus>),
    /// Stop: kill workers, remove the store.
    Shutdown(oneshot::Sender<()>),
    /// Something from or about the mesh.
    #[cfg(feature = "mesh")]
    Mesh(mesh::MeshEvent),
}

struct Conn {
    tx: mpsc::Sender<ToClient>,
    role: Role,
    client: ClientId,
    binary: Option<BinaryId>,
    worker: Option<WorkerId>,
}

struct TaskEntry {
    spec: TaskSpec,
    /// `spec.return_id()`, hashed once.
    ret: ObjectId,
    owner: ConnId,
    /// Arguments not yet ready.
    missing: usize,
    retries_left: u32,
    /// Shared-memory arguments kept in memory for the worker that reads them.
    store_pins: Vec<ObjectId>,
    /// How many times it was spilled from peer to peer before arriving here.
    #[cfg_attr(not(feature = "mesh"), allow(dead_code))]
    hops: u32,
}

#[derive(Default)]
struct ObjEntry {
    value: Option<ObjectValue>,
    /// Connections holding the object (owners, and every process that `put` equal bytes).
    holders: Vec<ConnId>,
    /// The connection owed the value without asking (the owner of the task that makes it).
    push_to: Option<ConnId>,
    /// Connections that asked for it while it was pending.
    waiters: Vec<ConnId>,
    /// Queued or running tasks that take it as an argument.
    dependents: Vec<TaskId>,
    /// Tasks and objects that keep it alive (as an argument, or a ref inside them).
    pins: u32,
    /// Objects whose refs are inside this one: pinned while it lives.
    nested: Vec<ObjectId>,
    /// The process that made it (submitted its task, or put it first).
    owner: Option<ClientId>,
    /// Announced to the mesh as held here.
    #[cfg_attr(not(feature = "mesh"), allow(dead_code))]
    provided: bool,
    /// Copies held by other peers.
    #[cfg(feature = "mesh")]
    remote: Option<Box<mesh::RemoteCopy>>,
}

/// The core's state.
pub(crate) struct Core {
    node_id: NodeId,
    config: NodeConfig,
    started: Instant,
    sched: Scheduler,
    store: Store,
    conns: HashMap<ConnId, Conn>,
    workers: HashMap<WorkerId, WorkerProcess>,
    worker_conns: HashMap<WorkerId, ConnId>,
    binaries: HashMap<BinaryId, PathBuf>,
    tasks: shoal_protocol::IdMap<TaskId, TaskEntry>,
    objects: shoal_protocol::IdMap<ObjectId, ObjEntry>,
    actors: ActorTable,
    events: mpsc::Sender<Event>,
    /// Connections whose queue overflowed, disconnected after the current event.
    overflowed: std::cell::RefCell<Vec<ConnId>>,
    /// The mesh, when this node is a peer of one.
    #[cfg(feature = "mesh")]
    net: Option<crate::net::NetHandle>,
    /// The load last reported to the mesh.
    #[cfg(feature = "mesh")]
    last_load: Option<crate::net::Load>,
    /// Work shared with the other peers.
    #[cfg(feature = "mesh")]
    mesh: Option<Box<mesh::MeshState>>,
}

impl ObjEntry {
    /// Whether its value exists at a peer (a large result left where it was made).
    fn ready_remotely(&self) -> bool {
        #[cfg(feature = "mesh")]
        return self.remote.as_ref().is_some_and(|r| r.ready);
        #[cfg(not(feature = "mesh"))]
        false
    }
}

impl Core {
    pub(crate) fn new(
        node_id: NodeId,
        config: NodeConfig,
        sched: Scheduler,
        store: Store,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            node_id,
            config,
            started: Instant::now(),
            sched,
            store,
            conns: HashMap::new(),
            workers: HashMap::new(),
            worker_conns: HashMap::new(),
            binaries: HashMap::new(),
            tasks: Default::default(),
            objects: Default::default(),
            actors: ActorTable::new(),
            events,
            overflowed: std::cell::RefCell::new(Vec::new()),
            #[cfg(feature = "mesh")]
            net: None,
            #[cfg(feature = "mesh")]
            last_load: None,
            #[cfg(feature = "mesh")]
            mesh: None,
        }
    }

    /// Makes this node a peer of a mesh: its load is reported there, and its status shows
    /// the mesh.
    #[cfg(feature = "mesh")]
    pub(crate) fn set_net(&mut self, net: crate::net::NetHandle) {
        // Network events go straight into this inbox.
        net.deliver_to(std::sync::Arc::new(mesh::CoreSink {
            events: self.events.clone(),
        }));
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if events
                    .send(Event::Mesh(mesh::MeshEvent::Tick))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        net.serve_objects(std::sync::Arc::new(mesh::CoreObjects {
            events: self.events.clone(),
        }));
        self.mesh = Some(Box::new(mesh::MeshState::new(net.clone())));
        self.net = Some(net);
        self.report_load();
    }

    /// Tells the mesh about this node's load when it changed.
    #[cfg(feature = "mesh")]
    fn report_load(&mut self) {
        let Some(net) = &self.net else {
            return;
        };
        let index = self.store.index();
        let mut binaries: Vec<BinaryId> = self.binaries.keys().copied().collect();
        binaries.sort();
        let load = crate::net::Load {
            total: self.sched.total().clone(),
            free: self.sched.free().clone(),
            queued: self.sched.queued() as u64,
            running: self.sched.running() as u64,
            store_capacity: index.capacity(),
            store_used: index.used(),
            binaries,
        };
        if self.last_load.as_ref() != Some(&load) {
            net.update_load(load.clone());
            self.last_load = Some(load);
        }
    }

    /// Handles events until shutdown or until every sender is gone.
    pub(crate) async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        while let Some(ev) = inbox.recv().await {
            if let Event::Shutdown(done) = ev {
                self.shutdown();
                let _ = done.send(());
                return;
            }
            self.handle(ev);
            // Drain whatever else is ready before looking at the scheduler again.
            while let Ok(ev) = inbox.try_recv() {
                if let Event::Shutdown(done) = ev {
                    self.shutdown();
                    let _ = done.send(());
                    return;
                }
                self.handle(ev);
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for w in self.workers.values_mut() {
            w.kill();
        }
        self.store.destroy();
        tracing::info!("node stopped");
    }

    fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Connected { conn, hello, tx } => self.connected(now, conn, hello, tx),
            Event::Messages { conn, msgs } => {
                for msg in msgs {
                    self.message(now, conn, msg);
                }
            }
            Event::Disconnected { conn } => self.disconnected(conn),
            Event::WorkerExited { worker, pid, exit } => self.worker_exited(now, worker, pid, exit),
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Shutdown(_) => {}
            #[cfg(feature = "mesh")]
            Event::Mesh(ev) => self.mesh_event(now, ev),
        }
        self.apply_actions();
        #[cfg(feature = "mesh")]
        self.report_load();
        loop {
            let over = std::mem::take(&mut *self.overflowed.borrow_mut());
            if over.is_empty() {
                break;
            }
            for conn in over {
                self.disconnected(conn);
            }
            self.apply_actions();
        }
    }

    /// Queues a message for a connection. A client whose queue is full is not keeping up
    /// (or is stuck): it is disconnected rather than silently missing a reply.
    fn send(&self, conn: ConnId, msg: ToClient) {
        #[cfg(feature = "mesh")]
        let Some(msg) = self.send_to_peer(conn, msg) else {
            return;
        };
        if let Some(c) = self.conns.get(&conn) {
            match c.tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let mut over = self.overflowed.borrow_mut();
                    if !over.contains(&conn) {
                        tracing::error!(conn, role = ?c.role, "client queue full: disconnecting the client");
                        over.push(conn);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!(conn, "message to a closing connection dropped")
                }
            }
        }
    }

    fn connected(&mut self, now: Instant, conn: ConnId, hello: Hello, tx: mpsc::Sender<ToClient>) {
        let mut worker = None;
        match &hello.role {
            Role::Worker { worker_id } => {
                if !self.sched.worker_connected(now, *worker_id, hello.pid) {
                    tracing::warn!(conn, worker = worker_id, "unknown worker id; rejected");
                    let _ = tx.try_send(ToClient::Rejected {
                        reason: format!("unknown worker id {worker_id}"),
                    });
                    return;
                }
                worker = Some(*worker_id);
                self.worker_conns.insert(*worker_id, conn);
            }
            Role::Driver => {
                if let Some(b) = &hello.binary {
                    self.binaries.insert(b.id, PathBuf::from(&b.path));
                    self.sched.binary_attached(b.id);
                    // Peers asked to run its tasks fetch it from here.
                    #[cfg(feature = "mesh")]
                    if let Some(net) = &self.net {
                        net.servable().insert(b.id, PathBuf::from(&b.path));
                    }
                }
            }
            Role::Cli => {}
        }
        tracing::debug!(conn, role = ?hello.role, pid = hello.pid, client = %hello.client, "attached");
        let binary = match (&hello.role, worker) {
            (Role::Driver, _) => hello.binary.as_ref().map(|b| b.id),
            _ => None,
        };
        let _ = tx.try_send(ToClient::Welcome {
            node_id: self.node_id,
            store_dir: self.store.dir().display().to_string(),
            inline_threshold: self.config.inline_threshold,
            peer_id: self.peer_id(),
        });
        self.conns.insert(
            conn,
            Conn {
                tx,
                role: hello.role,
                client: hello.client,
                binary,
                worker,
            },
        );
    }

    fn disconnected(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        tracing::debug!(conn, role = ?c.role, "detached");
        self.store.abort_holder(conn);
        if let Some(w) = c.worker {
            self.worker_conns.remove(&w);
        }
        if let Some(b) = c.binary {
            self.sched.binary_detached(b);
        }
        // The actors it made end with it, unless detached (also those placed on peers).
        #[cfg(feature = "mesh")]
        self.end_remote_actors_of(conn);
        for actor in self.actors.owned_by(c.client) {
            self.kill_actor(
                actor,
                TaskError::ActorKilled {
                    actor,
                    reason: "its creator exited".into(),
                },
            );
        }
        // Its queued tasks are dropped; running ones finish and their results are discarded.
        let dropped = self
            .sched
            .remove_queued(|t| self.tasks.get(&t).is_none_or(|e| e.owner != conn));
        for t in dropped {
            self.finish_task(t);
        }
        let waiting: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, e)| {
                e.owner == conn
                    && (e.missing > 0 || matches!(e.spec.kind, TaskKind::ActorMethod { .. }))
            })
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            // A call already at its actor's worker finishes there; the others are dropped.
            if self.call_queued(t) || self.tasks.get(&t).is_some_and(|e| e.missing > 0) {
                self.finish_task(t);
            }
        }
        let ids: Vec<ObjectId> = self.objects.keys().copied().collect();
        for id in ids {
            if let Some(e) = self.objects.get_mut(&id) {
                e.holders.retain(|h| *h != conn);
                e.waiters.retain(|h| *h != conn);
                if e.push_to == Some(conn) {
                    e.push_to = None;
                }
            }
            self.maybe_free(id);
        }
    }

    fn message(&mut self, now: Instant, conn: ConnId, msg: ToNode) {
        if !self.conns.contains_key(&conn) {
            // A connection the core refused; its reader is closing.
            return;
        }
        match msg {
            ToNode::Hello(_) => tracing::warn!(conn, "second Hello ignored"),
            ToNode::Submit(spec) => self.submit(now, conn, spec, 0),
            ToNode::Put { id, value, nested } => {
                if ObjectId::for_content(&value) != id {
                    tracing::warn!(conn, object = %id, "put whose id is not its content hash; ignored");
                    return;
                }
                self.put_arrived(conn, id, ObjectValue::Inline(value), nested);
            }
            ToNode::Hold { ids } => {
                for id in ids {
                    if let Some(e) = self.objects.get_mut(&id) {
                        e.holders.push(conn);
                    }
                }
            }
            ToNode::Objects { request } => {
                let objects = self.object_list();
                self.send(conn, ToClient::Objects { request, objects });
            }
            ToNode::Create { request, id, size } => {
                let result = self.store.reserve(id, size, conn);
                if let Err(e) = &result {
                    tracing::warn!(conn, object = %id, error = %e, "store refused an object")
                }
                self.send(conn, ToClient::Created { request, result });
            }
            ToNode::Seal {
                ticket,
                id,
                object,
                nested,
            } => {
                if !self.store.index().reserved_by(&ticket, conn) {
                    tracing::warn!(conn, object = %id, "seal of a reservation this process does not hold; ignored");
                    return;
                }
                if ticket != id && ObjectId::from_digest(object.digest) != id {
                    tracing::warn!(conn, object = %id, "seal whose id is not its digest; dropped");
                    self.store.remove(&ticket);
                    return;
                }
                match self.store.seal(ticket, id, object) {
                    // A large put: the sealer holds it. (Task results are sealed by `Done`.)
                    Ok(_) => self.put_arrived(conn, id, ObjectValue::Shared(object), nested),
                    Err(e) => {
                        tracing::warn!(conn, object = %id, error = %e, "bad seal");
                        self.store.remove(&ticket);
                    }
                }
            }
            ToNode::Abort { id } => self.store.abort(&id, conn),
            ToNode::Get { ids } => {
                for id in ids {
                    // Made elsewhere (a ref that came inside a value from a peer): the
                    // mesh-wide directory may know a holder.
                    #[cfg(feature = "mesh")]
                    if !self.objects.contains_key(&id) && self.fetch_unknown(conn, id) {
                        continue;
                    }
                    self.get(conn, id);
                }
            }
            ToNode::Release { ids } => self.release(conn, ids),
            ToNode::Done {
                task_id,
                outcome,
                nested,
            } => {
                if self.conns.get(&conn).is_some_and(|c| c.worker.is_some()) {
                    self.task_done(now, conn, task_id, outcome, nested);
                } else {
                    tracing::warn!(conn, task = %task_id, "Done from a process that is not a worker; ignored");
                }
            }
            ToNode::Blocked => {
                if let Some(w) = self.conns.get(&conn).and_then(|c| c.worker) {
                    self.sched.worker_blocked(now, w);
                }
            }
            ToNode::Returned { tasks } => {
                if let Some(w) = self.conns.get(&conn).and_then(|c| c.worker) {
                    self.sched.tasks_returned(now, w, &tasks);
                }
            }
            ToNode::Unblocked => {
                if let Some(w) = self.conns.get(&conn).and_then(|c| c.worker) {
                    self.sched.worker_unblocked(w);
                }
            }
            ToNode::Status { request } => {
                let status = Box::new(self.status());
                self.send(conn, ToClient::Status { request, status });
            }
            ToNode::ActorStarted { actor, result } => {
                let w = self.conns.get(&conn).and_then(|c| c.worker);
                if w.is_none() || self.actors.by_worker(w.unwrap_or(0)) != Some(actor) {
                    tracing::warn!(conn, actor = %actor, "ActorStarted from a process not hosting the actor; ignored");
                    return;
                }
                let pid = self.workers.get(&w.unwrap_or(0)).map_or(0, |p| p.pid);
                match result {
                    Ok(()) => {
                        tracing::info!(actor = %actor, pid, "actor started");
                        self.actors.started(actor, pid);
                    }
                    Err(e) => {
                        let message = e.to_string();
                        tracing::warn!(actor = %actor, %message, "actor constructor failed");
                        self.kill_actor(actor, TaskError::ActorCreationFailed { actor, message });
                    }
                }
            }
            ToNode::KillActor { actor, no_restart } => self.kill_request(conn, actor, no_restart),
            ToNode::ActorOutOfScope { actor } => {
                #[cfg(feature = "mesh")]
                if self.actors.get(&actor).is_none() && self.drain_remote(conn, actor) {
                    return;
                }
                let owner = self.conns.get(&conn).map(|c| c.client);
                let owned = self.actors.get(&actor).map(|a| a.owner);
                if owner.is_none() || owner != owned {
                    tracing::warn!(conn, actor = %actor, "ActorOutOfScope from a process that does not own the actor; ignored");
                } else if self.actors.out_of_scope(actor) {
                    self.end_out_of_scope(actor);
                }
            }
            ToNode::LookupActor { request, name } => {
                let actor = self.actors.lookup(&name);
                #[cfg(feature = "mesh")]
                if actor.is_none() && self.lookup_remote(conn, request, name) {
                    return;
                }
                self.send(conn, ToClient::ActorFound { request, actor });
            }
        }
    }

    /// Sends `conn` object `id` now if it is ready, when it is otherwise (getting a copy
    /// here first if only peers hold it).
    fn get(&mut self, conn: ConnId, id: ObjectId) {
        let Some(e) = self.objects.get_mut(&id) else {
            // Freed (or never made): say so rather than let the asker wait.
            let value = ObjectValue::Error(TaskError::ObjectLost { id });
            self.send(conn, ToClient::Object { id, value });
            return;
        };
        match &e.value {
            Some(ObjectValue::Shared(_)) => {
                let value = self.readable(id);
                self.send(conn, ToClient::Object { id, value });
            }
            Some(v) => {
                let value = v.clone();
                self.send(conn, ToClient::Object { id, value });
            }
            None => {
                e.waiters.push(conn);
                #[cfg(feature = "mesh")]
                self.start_fetch(id);
            }
        }
    }

    /// `conn` no longer holds these objects.
    fn release(&mut self, conn: ConnId, ids: Vec<ObjectId>) {
        for id in ids {
            if let Some(e) = self.objects.get_mut(&id) {
                if let Some(pos) = e.holders.iter().position(|h| *h == conn) {
                    e.holders.swap_remove(pos);
                }
                if e.push_to == Some(conn) {
                    e.push_to = None;
                }
            }
            self.maybe_free(id);
        }
    }

    /// Whether `task` is an actor call still queued at the node (not yet at the worker).
    fn call_queued(&self, task: TaskId) -> bool {
        let Some(e) = self.tasks.get(&task) else {
            return false;
        };
        let TaskKind::ActorMethod { actor } = e.spec.kind else {
            return false;
        };
        // Queued calls are those not in flight; the table knows which are in flight.
        self.actors.get(&actor).is_some_and(|a| a.is_queued(task))
    }

    fn kill_request(&mut self, conn: ConnId, actor: ActorId, no_restart: bool) {
        let Some(a) = self.actors.get(&actor) else {
            #[cfg(feature = "mesh")]
            if self.kill_remote(actor, no_restart, "killed by shoal::kill") {
                return;
            }
            tracing::debug!(conn, actor = %actor, "kill of an unknown actor");
            return;
        };
        if a.is_dead() {
            return;
        }
        tracing::info!(conn, actor = %actor, no_restart, "actor killed on request");
        if no_restart {
            self.kill_actor(
                actor,
                TaskError::ActorKilled {
                    actor,
                    reason: "killed by shoal::kill".into(),
                },
            );
        } else if let Some(crate::actors::ActorState::Alive { worker, .. }) =
            self.actors.get(&actor).map(|a| a.state.clone())
        {
            // As if it crashed: it restarts if it has restarts left.
            if let Some(w) = self.workers.get_mut(&worker) {
                w.kill();
            }
        }
    }

    /// Ends an actor for good: queued and in-flight calls fail with `error`, its worker is
    /// stopped, its resources and constructor arguments are released.
    fn kill_actor(&mut self, actor: ActorId, error: TaskError) {
        let Some(create_task) = self.actors.get(&actor).map(|a| a.create_task) else {
            return;
        };
        self.withdraw_actor(actor);
        let mut failed = self.actors.kill(actor, error.clone());
        failed.extend(self.actors.drain_inflight(actor));
        for t in failed {
            self.fail_task(t, error.clone());
        }
        self.sched.end_actor(Instant::now(), create_task);
        self.finish_task(create_task);
    }

    /// Records the actor's location (and its name) in the mesh's DHT. The records are
    /// republished while this node runs and expire after it stops.
    #[cfg(feature = "mesh")]
    fn announce_actor(&self, actor: ActorId) {
        use shoal_protocol::mesh::{actor_key, name_key, ActorLocation};
        let (Some(net), Some(a)) = (&self.net, self.actors.get(&actor)) else {
            return;
        };
        let location = ActorLocation {
            peer: net.peer_id().to_bytes(),
            incarnation: a.incarnation,
            class: a.class.clone(),
        };
        let mut records = Vec::new();
        if let Ok(v) = codec::encode(&location) {
            records.push((actor_key(&actor), v));
        }
        if let (Some(name), Ok(v)) = (&a.spec.name, codec::encode(&actor)) {
            records.push((name_key(name), v));
        }
        let net = net.clone();
        tokio::spawn(async move {
            for (key, value) in records {
                if let Err(e) = net.put_record(key, value).await {
                    tracing::debug!(actor = %actor, error = %e, "actor record not replicated yet");
                }
            }
        });
    }

    #[cfg(not(feature = "mesh"))]
    fn announce_actor(&self, _actor: ActorId) {}

    /// Withdraws the actor's records (other peers' copies expire).
    #[cfg(feature = "mesh")]
    fn withdraw_actor(&self, actor: ActorId) {
        let (Some(net), Some(a)) = (&self.net, self.actors.get(&actor)) else {
            return;
        };
        net.remove_record(shoal_protocol::mesh::actor_key(&actor));
        if let Some(name) = &a.spec.name {
            net.remove_record(shoal_protocol::mesh::name_key(name));
        }
    }

    #[cfg(not(feature = "mesh"))]
    fn withdraw_actor(&self, _actor: ActorId) {}

    fn end_out_of_scope(&mut self, actor: ActorId) {
        tracing::debug!(actor = %actor, "actor out of scope; ending it");
        self.kill_actor(
            actor,
            TaskError::ActorKilled {
                actor,
                reason: "all its handles were dropped".into(),
            },
        );
    }

    /// Sends an actor's ready calls to its worker.
    fn pump_actor(&mut self, actor: ActorId) {
        let tasks = &self.tasks;
        let (worker, calls) = self
            .actors
            .take_ready(actor, |t| tasks.get(&t).is_some_and(|e| e.missing == 0));
        let Some(worker) = worker else {
            return;
        };
        let conn = self.worker_conns.get(&worker).copied();
        for t in calls {
            match self.exec_for(t) {
                Ok(exec) => match conn {
                    Some(conn) => self.send(conn, ToClient::Execute(exec)),
                    None => tracing::warn!(actor = %actor, "actor worker has no connection"),
                },
                Err(err) => {
                    self.actors.call_done(actor, t);
                    self.fail_task(t, err);
                }
            }
        }
    }

    /// Resolves a task's arguments into what a worker receives, reading spilled ones back.
    /// Shared-memory arguments are pinned in memory (listed in `pinned`) until the task ends.
    fn resolve_args(
        &mut self,
        args: &[Arg],
        pinned: &mut Vec<ObjectId>,
    ) -> Result<Vec<ArgValue>, TaskError> {
        let mut out = Vec::with_capacity(args.len());
        for arg in args {
            match arg {
                Arg::Value(v) => out.push(ArgValue::Inline(v.clone())),
                Arg::Ref(id) => match self.readable(*id) {
                    ObjectValue::Inline(v) => out.push(ArgValue::Inline(v)),
                    ObjectValue::Shared(o) => {
                        self.store.pin(id);
                        pinned.push(*id);
                        out.push(ArgValue::Shared(*id, o));
                    }
                    ObjectValue::Error(e) => return Err(e),
                },
            }
        }
        Ok(out)
    }

    /// Resolves `task`'s arguments, pinning its shared-memory ones until the task ends.
    fn resolve_task_args(&mut self, task: TaskId) -> Result<Vec<ArgValue>, TaskError> {
        // Taken out for the call and put back: the arguments are not copied.
        let args = match self.tasks.get_mut(&task) {
            Some(e) => std::mem::take(&mut e.spec.args),
            None => return Ok(Vec::new()),
        };
        let mut pinned = Vec::new();
        let resolved = self.resolve_args(&args, &mut pinned);
        if let Some(e) = self.tasks.get_mut(&task) {
            e.spec.args = args;
            e.store_pins.extend(pinned);
        }
        resolved
    }

    fn exec_for(&mut self, task: TaskId) -> Result<ExecTask, TaskError> {
        let Some(entry) = self.tasks.get(&task) else {
            return Err(TaskError::ObjectLost {
                id: ObjectId::for_return(task, 0),
            });
        };
        let (function, return_id) = (entry.spec.function.clone(), entry.ret);
        let resolved = self.resolve_task_args(task);
        Ok(ExecTask {
            task_id: task,
            function,
            args: resolved?,
            return_id,
        })
    }

    /// A worker is ready for the actor created by `task`: hand it the actor, then its calls.
    fn host_actor(&mut self, worker: WorkerId, task: TaskId) {
        let Some(actor) = self.actors.by_task(&task) else {
            self.sched.end_actor(Instant::now(), task);
            return;
        };
        let Some(entry) = self.tasks.get(&task) else {
            self.sched.end_actor(Instant::now(), task);
            return;
        };
        let TaskKind::CreateActor(create) = &entry.spec.kind else {
            return;
        };
        let max_concurrency = create.max_concurrency.max(1);
        let class = entry.spec.function.clone();
        // The constructor reads them at once; an actor's arguments stay pinned for its life
        // (a restart reads them again).
        let args = match self.resolve_task_args(task) {
            Ok(a) => a,
            Err(e) => {
                let message = e.to_string();
                self.kill_actor(actor, TaskError::ActorCreationFailed { actor, message });
                return;
            }
        };
        let Some(&conn) = self.worker_conns.get(&worker) else {
            tracing::warn!(worker, actor = %actor, "actor worker gone before hosting");
            return;
        };
        let incarnation = self.actors.get(&actor).map_or(0, |a| a.incarnation);
        tracing::debug!(worker, actor = %actor, class, incarnation, "hosting actor");
        self.actors.hosted(actor, worker);
        self.send(
            conn,
            ToClient::HostActor(HostActor {
                actor_id: actor,
                class,
                args,
                max_concurrency,
                incarnation,
            }),
        );
        self.pump_actor(actor);
    }

    /// Every argument of `task` is ready: run it, create its actor or let its call go.
    fn deps_ready(&mut self, now: Instant, task: TaskId) {
        let Some(entry) = self.tasks.get(&task) else {
            return;
        };
        #[cfg(not(feature = "mesh"))]
        let (binary, demand) = (entry.spec.binary, entry.spec.resources.clone());
        match &entry.spec.kind {
            // Here or at a peer with room.
            #[cfg(feature = "mesh")]
            TaskKind::Function | TaskKind::CreateActor(_) => self.place_task(now, task),
            #[cfg(not(feature = "mesh"))]
            TaskKind::Function => self.sched.submit(now, task, binary, demand),
            #[cfg(not(feature = "mesh"))]
            TaskKind::CreateActor(_) => self.sched.submit_actor(now, task, binary, demand),
            TaskKind::ActorMethod { actor } => {
                let actor = *actor;
                #[cfg(feature = "mesh")]
                if self.localize_args(task) {
                    return;
                }
                self.pump_actor(actor);
            }
        }
    }

    /// A `put` object (small or sealed in the store) from `conn`, which holds it from now
    /// on. Equal bytes put before are kept once; the first put makes the object.
    fn put_arrived(
        &mut self,
        conn: ConnId,
        id: ObjectId,
        value: ObjectValue,
        nested: Vec<ObjectId>,
    ) {
        let client = self.conns.get(&conn).map(|c| c.client);
        let e = self.objects.entry(id).or_default();
        e.holders.push(conn);
        if e.value.is_some() {
            return;
        }
        e.owner = client;
        let shared = matches!(value, ObjectValue::Shared(_));
        self.set_nested(id, nested);
        self.object_ready(id, value);
        // A large put is long-lived and often shared: the mesh learns that this node holds it.
        #[cfg(feature = "mesh")]
        if let (true, Some(net), Some(e)) = (shared, &self.net, self.objects.get_mut(&id)) {
            e.provided = true;
            net.start_providing(shoal_protocol::mesh::object_key(&id));
        }
        #[cfg(not(feature = "mesh"))]
        let _ = shared;
    }

    fn submit(&mut self, now: Instant, conn: ConnId, spec: TaskSpec, hops: u32) {
        let ret = spec.return_id();
        let task_id = spec.task_id;
        {
            let e = self.objects.entry(ret).or_default();
            e.holders.push(conn);
            e.push_to = Some(conn);
            e.owner = Some(spec.owner);
        }
        for id in &spec.nested {
            if let Some(e) = self.objects.get_mut(id) {
                e.pins += 1;
            }
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
        let retries_left = spec.max_retries;
        let kind = spec.kind.clone();
        let (owner, class) = (spec.owner, spec.function.clone());
        self.tasks.insert(
            task_id,
            TaskEntry {
                spec,
                ret,
                owner: conn,
                missing,
                retries_left,
                store_pins: Vec::new(),
                hops,
            },
        );
        match kind {
            TaskKind::Function => {}
            TaskKind::CreateActor(create) => {
                match self.actors.register(task_id, &class, &create, owner) {
                    Ok(Registered::New) => {
                        tracing::debug!(actor = %create.actor_id, class, name = ?create.name, "actor registered");
                        self.actor_id_ready(ret, create.actor_id);
                        self.announce_actor(create.actor_id);
                    }
                    Ok(Registered::Existing(existing)) => {
                        self.finish_task(task_id);
                        self.actor_id_ready(ret, existing);
                        return;
                    }
                    Err(e) => {
                        self.fail_task(task_id, e);
                        return;
                    }
                }
            }
            #[cfg(feature = "mesh")]
            TaskKind::ActorMethod { actor } if self.actor_is_remote(&actor) => {
                // Sent at once, in order with the caller's other calls; the actor's peer
                // waits for its arguments.
                if let Some(err) = failed_dep {
                    self.fail_task(task_id, err);
                } else {
                    self.forward_call(task_id, actor);
                }
                return;
            }
            TaskKind::ActorMethod { actor } => {
                if let Err(e) = self.actors.enqueue(actor, owner, task_id) {
                    self.fail_task(task_id, e);
                    return;
                }
            }
        }
        if let Some(err) = failed_dep {
            self.fail_task(task_id, err);
        } else if missing == 0 {
            self.deps_ready(now, task_id);
        }
    }

    /// The return object of an actor's creation: its id, known at once.
    fn actor_id_ready(&mut self, ret: ObjectId, actor: ActorId) {
        match codec::encode(&actor) {
            Ok(bytes) => self.object_ready(ret, ObjectValue::Inline(bytes)),
            Err(e) => tracing::error!(error = %e, "cannot encode an actor id"),
        }
    }

    fn task_done(
        &mut self,
        now: Instant,
        conn: ConnId,
        task: TaskId,
        outcome: TaskOutcome,
        nested: Vec<ObjectId>,
    ) {
        let mut actor = None;
        if let Some(w) = self.conns.get(&conn).and_then(|c| c.worker) {
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
        let ret = ObjectId::for_return(task, 0);
        let value = match outcome {
            TaskOutcome::Ok(ObjectValue::Shared(_))
                if !self.store.index().reserved_by(&ret, conn) =>
            {
                tracing::warn!(conn, task = %task, "a shared result without a reservation");
                ObjectValue::Error(TaskError::ResultStore {
                    message: "the result was not reserved in the store".into(),
                })
            }
            TaskOutcome::Ok(ObjectValue::Shared(object)) => match self.store.seal(ret, ret, object)
            {
                Ok(_) => ObjectValue::Shared(object),
                Err(e) => {
                    tracing::warn!(conn, task = %task, error = %e, "bad result seal");
                    self.store.remove(&ret);
                    ObjectValue::Error(TaskError::ResultStore {
                        message: e.to_string(),
                    })
                }
            },
            TaskOutcome::Ok(v) => v,
            TaskOutcome::Err(e) => ObjectValue::Error(e),
        };
        if self.tasks.contains_key(&task) {
            self.finish_task(task);
            if !matches!(value, ObjectValue::Error(_)) {
                self.set_nested(ret, nested);
            }
            self.object_ready(ret, value);
        } else if let ObjectValue::Shared(_) = value {
            // Nobody wants it any more: drop the stored result.
            self.store.remove(&ret);
        }
        if let Some(a) = actor {
            self.pump_actor(a);
            if self.actors.get(&a).is_some_and(|x| x.drained()) {
                self.end_out_of_scope(a);
            }
        }
    }

    /// Forgets a task and unpins its arguments.
    fn finish_task(&mut self, task: TaskId) {
        let Some(entry) = self.tasks.remove(&task) else {
            return;
        };
        #[cfg(feature = "mesh")]
        self.forget_placement(&task);
        if let TaskKind::ActorMethod { actor } = entry.spec.kind {
            if self.actors.remove_queued(actor, entry.spec.owner, task) {
                // The caller's next call may be ready.
                self.pump_actor(actor);
            }
        }
        for id in &entry.store_pins {
            self.store.unpin(id);
        }
        for arg in &entry.spec.args {
            if let Arg::Ref(id) = arg {
                if let Some(e) = self.objects.get_mut(id) {
                    e.pins = e.pins.saturating_sub(1);
                    e.dependents.retain(|t| *t != task);
                }
                self.maybe_free(*id);
            }
        }
        for id in &entry.spec.nested {
            if let Some(e) = self.objects.get_mut(id) {
                e.pins = e.pins.saturating_sub(1);
            }
            self.maybe_free(*id);
        }
        // An abandoned task's result may now be unheld.
        self.maybe_free(entry.ret);
    }

    fn fail_task(&mut self, task: TaskId, error: TaskError) {
        if let Some(entry) = self.tasks.get(&task) {
            if let TaskKind::CreateActor(create) = &entry.spec.kind {
                let actor = create.actor_id;
                if self.actors.by_task(&task) == Some(actor) {
                    // Its id is out already; the actor dies, and its calls fail with why.
                    let message = error.to_string();
                    self.kill_actor(actor, TaskError::ActorCreationFailed { actor, message });
                    return;
                }
            }
            let ret = entry.ret;
            tracing::debug!(task = %task, %error, "task failed");
            self.finish_task(task);
            self.object_ready(ret, ObjectValue::Error(error));
        }
    }

    /// Records a value, delivers it to whoever waits, and wakes dependent tasks.
    fn object_ready(&mut self, id: ObjectId, value: ObjectValue) {
        let Some(e) = self.objects.get_mut(&id) else {
            // Released before it was made.
            if let ObjectValue::Shared(_) = value {
                self.store.remove(&id);
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
        #[cfg(feature = "mesh")]
        let dependents = match e.remote.as_mut() {
            Some(r) if r.ready => std::mem::take(&mut r.localizing),
            _ => e.dependents.clone(),
        };
        #[cfg(not(feature = "mesh"))]
        let dependents = e.dependents.clone();
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
        let now = Instant::now();
        for t in dependents {
            let Some(entry) = self.tasks.get_mut(&t) else {
                continue;
            };
            if let Some(err) = &failed {
                self.fail_task(t, err.clone());
                continue;
            }
            entry.missing = entry.missing.saturating_sub(1);
            if entry.missing == 0 {
                self.deps_ready(now, t);
            }
        }
        self.maybe_free(id);
    }

    fn maybe_free(&mut self, id: ObjectId) {
        let mut next = vec![id];
        while let Some(id) = next.pop() {
            let Some(e) = self.objects.get(&id) else {
                continue;
            };
            if !e.holders.is_empty() || e.pins > 0 || !e.waiters.is_empty() {
                continue;
            }
            // A pending task result with no holder is dropped; a late result is discarded.
            let Some(e) = self.objects.remove(&id) else {
                continue;
            };
            #[cfg(feature = "mesh")]
            if let Some(r) = &e.remote {
                self.release_remote(id, r);
            }
            // Its files go too (also those of an object whose copy turned out corrupted, and
            // a result still being written).
            #[cfg(feature = "mesh")]
            if let (Some(net), true) = (&self.net, e.provided) {
                net.stop_providing(shoal_protocol::mesh::object_key(&id));
            }
            self.store.remove(&id);
            // What it held inside may now be unreferenced.
            for inner in e.nested {
                if let Some(x) = self.objects.get_mut(&inner) {
                    x.pins = x.pins.saturating_sub(1);
                    next.push(inner);
                }
            }
        }
    }

    /// Records the refs inside object `id` and pins them while it lives.
    fn set_nested(&mut self, id: ObjectId, nested: Vec<ObjectId>) {
        if nested.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(nested.len());
        for inner in nested {
            if inner == id {
                continue;
            }
            if let Some(x) = self.objects.get_mut(&inner) {
                x.pins += 1;
                kept.push(inner);
            } else {
                tracing::debug!(object = %id, nested = %inner, "a ref inside an object was already freed");
            }
        }
        if let Some(e) = self.objects.get_mut(&id) {
            e.nested.extend(kept);
        }
    }

    /// A shared object's value for a reader: read back from disk first if it was spilled.
    /// A copy that fails its digest check becomes the object's error for good.
    fn readable(&mut self, id: ObjectId) -> ObjectValue {
        let Some(value) = self.objects.get(&id).and_then(|e| e.value.clone()) else {
            return ObjectValue::Error(TaskError::ObjectLost { id });
        };
        if !matches!(value, ObjectValue::Shared(_)) {
            return value;
        }
        match self.store.ensure_in_memory(&id) {
            Ok(()) => value,
            Err(RestoreError::Corrupted(message)) => {
                tracing::error!(object = %id, %message, "corrupted object");
                let err = ObjectValue::Error(TaskError::ObjectCorrupted { id, message });
                if let Some(e) = self.objects.get_mut(&id) {
                    e.value = Some(err.clone());
                }
                err
            }
            Err(RestoreError::Store(e)) => ObjectValue::Error(TaskError::ObjectUnavailable {
                id,
                message: e.to_string(),
            }),
        }
    }

    fn worker_exited(&mut self, now: Instant, worker: WorkerId, pid: u32, exit: ExitInfo) {
        self.workers.remove(&worker);
        let lost = self.sched.worker_exited(now, worker);
        if !lost.is_empty() {
            tracing::warn!(worker, pid, %exit, tasks = lost.len(), "worker died with tasks in flight");
        }
        for (i, task) in lost.into_iter().enumerate() {
            if let Some(actor) = self.actors.by_task(&task) {
                self.actor_worker_lost(now, actor, pid, exit);
                continue;
            }
            let Some(entry) = self.tasks.get_mut(&task) else {
                continue;
            };
            // The first task was running; the others had not started and lose nothing.
            if i > 0 || entry.retries_left > 0 {
                if i == 0 {
                    entry.retries_left -= 1;
                }
                tracing::info!(task = %task, retries_left = entry.retries_left, "retrying task");
                let (binary, demand) = (entry.spec.binary, entry.spec.resources.clone());
                self.sched.submit(now, task, binary, demand);
            } else {
                self.fail_task(task, TaskError::WorkerDied { pid, exit });
            }
        }
    }

    /// An actor's process ended: its calls in flight fail; it restarts if it may.
    fn actor_worker_lost(&mut self, now: Instant, actor: ActorId, pid: u32, exit: ExitInfo) {
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let create_task = a.create_task;
        let error = match &a.state {
            crate::actors::ActorState::Dead(e) => e.clone(),
            _ if pid == 0 => TaskError::ActorCreationFailed {
                actor,
                message: "its worker process could not be started".into(),
            },
            _ => TaskError::ActorDied { actor, pid, exit },
        };
        let (inflight, after) = self.actors.worker_lost(actor, error.clone());
        if !inflight.is_empty() {
            tracing::warn!(actor = %actor, pid, %exit, calls = inflight.len(), "actor died with calls in flight");
        }
        for t in inflight {
            self.fail_task(t, error.clone());
        }
        match after {
            AfterDeath::Restart => {
                tracing::info!(actor = %actor, pid, %exit, "restarting actor");
                self.announce_actor(actor);
                if let Some(entry) = self.tasks.get(&create_task) {
                    let (binary, demand) = (entry.spec.binary, entry.spec.resources.clone());
                    self.sched.submit_actor(now, create_task, binary, demand);
                }
            }
            AfterDeath::Dead(queued) => {
                tracing::warn!(actor = %actor, pid, %exit, "actor died");
                self.withdraw_actor(actor);
                for t in queued {
                    self.fail_task(t, error.clone());
                }
                self.finish_task(create_task);
            }
        }
    }

    fn apply_actions(&mut self) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Spawn { worker, binary } => self.spawn_worker(worker, binary),
                Action::Dispatch { worker, task } => self.dispatch(worker, task),
                Action::Kill { worker } => {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.kill();
                    }
                }
                Action::Fail { task, error } => self.fail_task(task, error),
                Action::HostActor { worker, task } => self.host_actor(worker, task),
            }
        }
    }

    fn spawn_worker(&mut self, worker: WorkerId, binary: BinaryId) {
        let Some(exe) = self.binaries.get(&binary) else {
            tracing::error!(%binary, "no executable known for binary");
            let _ = self.events.try_send(Event::WorkerExited {
                worker,
                pid: 0,
                exit: ExitInfo {
                    code: None,
                    signal: None,
                },
            });
            return;
        };
        match workers::spawn(
            worker,
            binary,
            exe,
            &self.config.socket,
            self.events.clone(),
        ) {
            Ok(p) => {
                self.workers.insert(worker, p);
            }
            Err(e) => {
                tracing::error!(exe = %exe.display(), error = %e, "cannot start worker");
                let events = self.events.clone();
                tokio::spawn(async move {
                    let _ = events
                        .send(Event::WorkerExited {
                            worker,
                            pid: 0,
                            exit: ExitInfo {
                                code: None,
                                signal: None,
                            },
                        })
                        .await;
                });
            }
        }
    }

    fn dispatch(&mut self, worker: WorkerId, task: TaskId) {
        if !self.tasks.contains_key(&task) {
            // Dropped meanwhile: tell the scheduler it is done so the slot frees.
            self.sched.task_done(Instant::now(), worker, task);
            return;
        }
        let exec = match self.exec_for(task) {
            Ok(exec) => exec,
            Err(err) => {
                self.sched.task_done(Instant::now(), worker, task);
                self.fail_task(task, err);
                return;
            }
        };
        match self.worker_conns.get(&worker) {
            Some(conn) => self.send(*conn, ToClient::Execute(exec)),
            None => {
                tracing::warn!(worker, task = %task, "worker gone before dispatch; it will be retried")
            }
        }
    }

    fn object_list(&self) -> Vec<ObjectInfo> {
        let index = self.store.index();
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
                if e.value.is_none() {
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

    fn status(&self) -> NodeStatus {
        let index = self.store.index();
        let mut objects = ObjectStats {
            store_capacity: index.capacity(),
            store_used: index.used(),
            spilled_count: index.spilled_count(),
            spilled_bytes: index.spilled_bytes(),
            ..Default::default()
        };
        for e in self.objects.values() {
            objects.count += 1;
            match &e.value {
                Some(ObjectValue::Inline(v)) => {
                    objects.inline_count += 1;
                    objects.inline_bytes += v.len() as u64;
                }
                Some(ObjectValue::Shared(o)) => {
                    objects.shared_count += 1;
                    objects.shared_bytes += o.size;
                }
                _ => {}
            }
        }
        let waiting = self.tasks.values().filter(|t| t.missing > 0).count() as u64;
        NodeStatus {
            node_id: self.node_id,
            pid: std::process::id(),
            socket: self.config.socket.display().to_string(),
            store_dir: self.store.dir().display().to_string(),
            embedded: self.config.embedded,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            resources_total: self.sched.total().clone(),
            resources_free: self.sched.free().clone(),
            workers: self.sched.worker_status(),
            tasks_queued: self.sched.queued() as u64 + waiting,
            tasks_running: self.sched.running() as u64,
            tasks_finished: self.sched.finished(),
            clients: self.conns.len() as u64,
            objects,
            actors: self.actors.status(),
            mesh: self.mesh_status(),
        }
    }

    #[cfg(not(feature = "mesh"))]
    fn mesh_status(&self) -> Option<shoal_protocol::MeshStatus> {
        None
    }

    #[cfg(not(feature = "mesh"))]
    fn peer_id(&self) -> Option<String> {
        None
    }

    #[cfg(feature = "mesh")]
    fn peer_id(&self) -> Option<String> {
        self.net.as_ref().map(|n| n.peer_id().to_string())
    }

    #[cfg(feature = "mesh")]
    fn mesh_status(&self) -> Option<shoal_protocol::MeshStatus> {
        let view = self.net.as_ref()?.view();
        Some(shoal_protocol::MeshStatus {
            peer_id: view.peer_id,
            mesh: view.mesh,
            listen_addrs: view.listen_addrs,
            gossip_bytes_out: view.gossip_bytes_out,
            gossip_bytes_in: view.gossip_bytes_in,
            peers: view
                .peers
                .into_iter()
                .map(|p| {
                    let r = p.report.unwrap_or_default();
                    shoal_protocol::PeerStatus {
                        peer_id: p.peer_id,
                        addrs: p.addrs,
                        total: r.total,
                        free: r.free,
                        queued: r.queued,
                        running: r.running,
                        store_capacity: r.store_capacity,
                        store_used: r.store_used,
                        target: r.target,
                        last_heard_ms: p.last_heard_ms,
                        rtt_us: p.rtt_us,
                        connected: p.connected,
                    }
                })
                .collect(),
        })
    }
}
