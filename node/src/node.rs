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
    Arg, ArgValue, BinaryId, ExecTask, ExitInfo, Hello, NodeId, NodeStatus, ObjectId, ObjectStats,
    ObjectValue, Role, TaskError, TaskId, TaskOutcome, TaskSpec, ToClient, ToNode,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::NodeConfig;
use crate::sched::{Action, Scheduler, WorkerId};
use crate::store::Store;
use crate::workers::{self, WorkerProcess};

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
}

struct Conn {
    tx: mpsc::Sender<ToClient>,
    role: Role,
    binary: Option<BinaryId>,
    worker: Option<WorkerId>,
}

struct TaskEntry {
    spec: TaskSpec,
    owner: ConnId,
    /// Arguments not yet ready.
    missing: usize,
    retries_left: u32,
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
    pins: u32,
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
    tasks: HashMap<TaskId, TaskEntry>,
    objects: HashMap<ObjectId, ObjEntry>,
    events: mpsc::Sender<Event>,
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
            tasks: HashMap::new(),
            objects: HashMap::new(),
            events,
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
        }
        self.apply_actions();
    }

    fn send(&self, conn: ConnId, msg: ToClient) {
        if let Some(c) = self.conns.get(&conn) {
            if let Err(e) = c.tx.try_send(msg) {
                tracing::warn!(conn, error = %e, "client queue full or closed; message dropped");
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
        });
        self.conns.insert(
            conn,
            Conn {
                tx,
                role: hello.role,
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
            .filter(|(_, e)| e.owner == conn && e.missing > 0)
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            self.finish_task(t);
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
            ToNode::Submit(spec) => self.submit(now, conn, spec),
            ToNode::Put { id, value } => {
                if ObjectId::for_content(&value) != id {
                    tracing::warn!(conn, object = %id, "put whose id is not its content hash; ignored");
                    return;
                }
                let e = self.objects.entry(id).or_default();
                e.holders.push(conn);
                if e.value.is_none() {
                    self.object_ready(id, ObjectValue::Inline(value));
                }
            }
            ToNode::Create { request, id, size } => {
                let result = self.store.reserve(id, size, conn);
                match &result {
                    Err(e) => {
                        tracing::warn!(conn, object = %id, error = %e, "store refused an object")
                    }
                    // Equal bytes are already there: the asker holds them too.
                    Ok(shoal_protocol::CreateOutcome::Exists) => {
                        self.objects.entry(id).or_default().holders.push(conn)
                    }
                    Ok(_) => {}
                }
                self.send(conn, ToClient::Created { request, result });
            }
            ToNode::Seal { id, object } => match self.store.seal(id, object) {
                Ok(()) => {
                    // A large put: the sealer holds it. (Task results are sealed by `Done`.)
                    let e = self.objects.entry(id).or_default();
                    e.holders.push(conn);
                    if e.value.is_none() {
                        self.object_ready(id, ObjectValue::Shared(object));
                    }
                }
                Err(e) => {
                    tracing::warn!(conn, object = %id, error = %e, "bad seal");
                    self.store.remove(&id);
                }
            },
            ToNode::Abort { id } => self.store.remove(&id),
            ToNode::Get { ids } => {
                for id in ids {
                    let Some(e) = self.objects.get_mut(&id) else {
                        // Freed (or never made): say so rather than let the asker wait.
                        let value = ObjectValue::Error(TaskError::ObjectLost { id });
                        self.send(conn, ToClient::Object { id, value });
                        continue;
                    };
                    match &e.value {
                        Some(v) => {
                            let v = v.clone();
                            self.send(conn, ToClient::Object { id, value: v });
                        }
                        None => e.waiters.push(conn),
                    }
                }
            }
            ToNode::Release { ids } => {
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
            ToNode::Done { task_id, outcome } => {
                if self.conns.get(&conn).is_some_and(|c| c.worker.is_some()) {
                    self.task_done(now, conn, task_id, outcome);
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
        }
    }

    fn submit(&mut self, now: Instant, conn: ConnId, spec: TaskSpec) {
        let ret = spec.return_id();
        let task_id = spec.task_id;
        {
            let e = self.objects.entry(ret).or_default();
            e.holders.push(conn);
            e.push_to = Some(conn);
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
                    None => missing += 1,
                    Some(ObjectValue::Error(err)) => failed_dep = Some(err.clone()),
                    Some(_) => {}
                }
            }
        }
        let binary = spec.binary;
        let demand = spec.resources.clone();
        let retries_left = spec.max_retries;
        self.tasks.insert(
            task_id,
            TaskEntry {
                spec,
                owner: conn,
                missing,
                retries_left,
            },
        );
        if let Some(err) = failed_dep {
            self.fail_task(task_id, err);
        } else if missing == 0 {
            self.sched.submit(now, task_id, binary, demand);
        }
    }

    fn task_done(&mut self, now: Instant, conn: ConnId, task: TaskId, outcome: TaskOutcome) {
        if let Some(w) = self.conns.get(&conn).and_then(|c| c.worker) {
            self.sched.task_done(now, w, task);
        }
        let ret = ObjectId::for_return(task, 0);
        let value = match outcome {
            TaskOutcome::Ok(ObjectValue::Shared(object)) => match self.store.seal(ret, object) {
                Ok(()) => ObjectValue::Shared(object),
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
            self.object_ready(ret, value);
        } else if let ObjectValue::Shared(_) = value {
            // Nobody wants it any more: drop the stored result.
            self.store.remove(&ret);
        }
    }

    /// Forgets a task and unpins its arguments.
    fn finish_task(&mut self, task: TaskId) {
        let Some(entry) = self.tasks.remove(&task) else {
            return;
        };
        for arg in &entry.spec.args {
            if let Arg::Ref(id) = arg {
                if let Some(e) = self.objects.get_mut(id) {
                    e.pins = e.pins.saturating_sub(1);
                    e.dependents.retain(|t| *t != task);
                }
                self.maybe_free(*id);
            }
        }
        // An abandoned task's result may now be unheld.
        self.maybe_free(entry.spec.return_id());
    }

    fn fail_task(&mut self, task: TaskId, error: TaskError) {
        if let Some(entry) = self.tasks.get(&task) {
            let ret = entry.spec.return_id();
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
                let (binary, demand) = (entry.spec.binary, entry.spec.resources.clone());
                self.sched.submit(now, t, binary, demand);
            }
        }
        self.maybe_free(id);
    }

    fn maybe_free(&mut self, id: ObjectId) {
        let Some(e) = self.objects.get(&id) else {
            return;
        };
        if !e.holders.is_empty() || e.pins > 0 || !e.waiters.is_empty() {
            return;
        }
        // A pending task result with no holder is dropped; a late result is discarded.
        let shared = matches!(e.value, Some(ObjectValue::Shared(_)));
        self.objects.remove(&id);
        if shared {
            self.store.remove(&id);
        }
    }

    fn worker_exited(&mut self, now: Instant, worker: WorkerId, pid: u32, exit: ExitInfo) {
        self.workers.remove(&worker);
        let lost = self.sched.worker_exited(now, worker);
        if !lost.is_empty() {
            tracing::warn!(worker, pid, %exit, tasks = lost.len(), "worker died with tasks in flight");
        }
        for (i, task) in lost.into_iter().enumerate() {
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
        let Some(entry) = self.tasks.get(&task) else {
            // Dropped meanwhile: tell the scheduler it is done so the slot frees.
            self.sched.task_done(Instant::now(), worker, task);
            return;
        };
        let mut args = Vec::with_capacity(entry.spec.args.len());
        for arg in &entry.spec.args {
            match arg {
                Arg::Value(v) => args.push(ArgValue::Inline(v.clone())),
                Arg::Ref(id) => match self.objects.get(id).and_then(|e| e.value.as_ref()) {
                    Some(ObjectValue::Inline(v)) => args.push(ArgValue::Inline(v.clone())),
                    Some(ObjectValue::Shared(o)) => args.push(ArgValue::Shared(*id, *o)),
                    _ => {
                        let err = TaskError::ObjectLost { id: *id };
                        self.sched.task_done(Instant::now(), worker, task);
                        self.fail_task(task, err);
                        return;
                    }
                },
            }
        }
        let exec = ExecTask {
            task_id: task,
            function: entry.spec.function.clone(),
            args,
            return_id: entry.spec.return_id(),
        };
        match self.worker_conns.get(&worker) {
            Some(conn) => self.send(*conn, ToClient::Execute(exec)),
            None => {
                tracing::warn!(worker, task = %task, "worker gone before dispatch; it will be retried")
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let mut objects = ObjectStats {
            store_capacity: self.store.index().capacity(),
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
        }
    }
}
