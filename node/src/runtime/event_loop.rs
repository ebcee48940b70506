//! The event loop: one task that owns the [`NodeCore`] and everything the core may not
//! touch.
//!
//! It selects over a [`CancellationToken`] that stops the node, the bounded inbox (local
//! connections, the network, in-process callers), the core's timer
//! ([`NodeCore::poll_timeout`]), a [`JoinSet`] holding every job the core asked for (worker
//! processes, object pulls, binary fetches, directory lookups), and the store's file work:
//! the core's store ops run in order, in batches, on a blocking thread (a spill or a restore
//! of gigabytes never stalls the loop), their completions coming back as inputs. After every
//! input it drains [`NodeCore::poll_output`] and carries
//! each output out in order; an output that cannot be carried out comes back to the core as
//! an input (a full client queue detaches the client, a peer link that cannot take a message
//! loses the peer, a worker that cannot start is reported ended).
//!
//! # Shutdown
//!
//! Staged, as iroh's router does it:
//! 1. stop accepting local connections;
//! 2. the core fails whatever is in flight with `NodeStopping` and kills its workers; those
//!    messages are sent;
//! 3. the workers' exits are awaited (a bounded grace);
//! 4. local connections are closed;
//! 5. the network is shut down;
//! 6. the store's file work under way ends, and the store's files are removed;
//! 7. whatever job is left is aborted and awaited.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_protocol::{IdMap, Role, ToClient, ToNode};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sandbox::{MemoryMonitor, Sandbox};
use super::workers::{self, WorkerProcess};
use super::Event;
use crate::core::sched::WorkerId;
use crate::core::{ConnId, Input, NodeCore, Output, WorkerEnd};
use crate::store::{StoreDone, StoreFault, StoreFiles, StoreOp};

/// How long stopped workers get to exit before the rest of a shutdown goes on.
const WORKER_GRACE: Duration = Duration::from_secs(2);

/// The shell of one node. See the [module documentation](self).
pub(crate) struct Shell {
    core: NodeCore,
    socket: PathBuf,
    /// Each process's queue, looked up for every message to it (the ids' fast hasher).
    conns: IdMap<ConnId, super::queue::ClientTx>,
    workers: HashMap<WorkerId, WorkerProcess>,
    /// The outputs of connected workers whose output the node reads, by connection.
    outputs: IdMap<ConnId, Arc<super::output::Output>>,
    /// Where those outputs are read into.
    scratch: Vec<u8>,
    jobs: JoinSet<Option<Input>>,
    /// The store's files; away on the blocking thread while a batch of ops runs there.
    files: Option<StoreFiles>,
    store_dir: PathBuf,
    /// Store ops waiting for the batch under way.
    store_ops: VecDeque<StoreOp>,
    /// The batch under way (at most one: ops run in order).
    store_batch: JoinSet<Batch>,
    /// Store ops given to the shell, and those carried out.
    store_issued: u64,
    store_ran: u64,
    /// Status requests waiting for the store ops issued before them: a status tells the
    /// state of the files too (an object freed before is gone from the directory).
    held_status: VecDeque<(u64, StatusTo)>,
    /// Peers' object requests the core has not answered yet.
    #[cfg(feature = "mesh")]
    serving: HashMap<u64, ServeReply>,
    #[cfg(feature = "mesh")]
    next_serve: u64,
    /// Inputs that come from outputs the shell could not carry out.
    feedback: Vec<Input>,
    /// Stops the accept loop of the local socket.
    accept: CancellationToken,
    /// Closes the local connections still open.
    close: CancellationToken,
    #[cfg(feature = "mesh")]
    net: Option<super::mesh::NetSide>,
    /// Workers of code shipped by peers run in it; `None` on a node that takes no code.
    sandbox: Option<Sandbox>,
    /// Kills the largest worker when the machine is nearly out of memory.
    monitor: Option<MemoryMonitor>,
    /// The inbox, for the connections of sandboxed workers (weak: the loop still ends when
    /// every other sender is gone).
    conn_events: Option<mpsc::WeakSender<Event>>,
    max_frame: usize,
    /// Where the metrics are served, if they are.
    metrics_addr: Option<std::net::SocketAddr>,
    /// Where the dashboard is served, if it is.
    dashboard_addr: Option<std::net::SocketAddr>,
}

impl Shell {
    pub(crate) fn new(
        core: NodeCore,
        files: StoreFiles,
        socket: PathBuf,
        accept: CancellationToken,
        close: CancellationToken,
    ) -> Self {
        Self {
            core,
            socket,
            conns: IdMap::default(),
            workers: HashMap::new(),
            outputs: IdMap::default(),
            scratch: Vec::new(),
            jobs: JoinSet::new(),
            store_dir: files.dir().to_path_buf(),
            files: Some(files),
            store_ops: VecDeque::new(),
            store_batch: JoinSet::new(),
            store_issued: 0,
            store_ran: 0,
            held_status: VecDeque::new(),
            #[cfg(feature = "mesh")]
            serving: HashMap::new(),
            #[cfg(feature = "mesh")]
            next_serve: 0,
            feedback: Vec::new(),
            accept,
            close,
            #[cfg(feature = "mesh")]
            net: None,
            sandbox: None,
            monitor: None,
            conn_events: None,
            max_frame: shoal_protocol::frame::DEFAULT_MAX_FRAME,
            metrics_addr: None,
            dashboard_addr: None,
        }
    }

    /// Records where the metrics endpoint listens (for status).
    pub(crate) fn set_metrics_addr(&mut self, addr: std::net::SocketAddr) {
        self.metrics_addr = Some(addr);
    }

    /// Records where the dashboard listens (for status).
    #[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
    pub(crate) fn set_dashboard_addr(&mut self, addr: std::net::SocketAddr) {
        self.dashboard_addr = Some(addr);
    }

    /// Sets how workers are confined: `sandbox` for code shipped by peers (whose
    /// connections go to `events`, framed up to `max_frame`), and the memory monitor.
    pub(crate) fn set_workers(
        &mut self,
        sandbox: Option<Sandbox>,
        monitor: Option<MemoryMonitor>,
        events: &mpsc::Sender<Event>,
        max_frame: usize,
    ) {
        self.sandbox = sandbox;
        self.monitor = monitor;
        self.conn_events = Some(events.downgrade());
        self.max_frame = max_frame;
    }

    /// Makes this node a peer of a mesh through `net`.
    #[cfg(feature = "mesh")]
    pub(crate) fn set_net(&mut self, net: crate::net::NetHandle, events: mpsc::Sender<Event>) {
        self.net = Some(super::mesh::NetSide::new(
            net,
            events,
            self.store_dir.clone(),
        ));
    }

    /// Runs until `stop` is cancelled (or every sender of the inbox is gone), then shuts the
    /// node down in stages and cancels `stopped`.
    pub(crate) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Event>,
        stop: CancellationToken,
        stopped: CancellationToken,
    ) {
        // Whoever waits for the end learns of it however this future ends.
        let _stopped = stopped.drop_guard();
        // The load this core starts with.
        self.flush();
        // Made once: a new one per turn would register with the token every time.
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        let mut memory_tick = tokio::time::interval(super::sandbox::MONITOR_INTERVAL);
        memory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.core.poll_timeout();
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                ev = inbox.recv() => match ev {
                    Some(ev) => {
                        self.event(ev);
                        // Whatever else is ready, before looking at timers again.
                        while !stop.is_cancelled() {
                            let Ok(ev) = inbox.try_recv() else { break };
                            self.event(ev);
                        }
                    }
                    None => break,
                },
                Some(batch) = self.store_batch.join_next(), if !self.store_batch.is_empty() => {
                    self.batch_done(batch);
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    match done {
                        Ok(Some(input)) => self.input(input),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "a job of the node failed"),
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.core.handle_timeout(Instant::now());
                    self.flush();
                }
                _ = memory_tick.tick(), if self.monitor.is_some() && !self.workers.is_empty() => {
                    self.watch_memory();
                }
            }
        }
        self.shutdown().await;
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Connected { conn, hello, tx } => {
                self.conns.insert(conn, tx);
                if let Role::Worker { worker_id } = hello.role {
                    if let Some(output) =
                        self.workers.get(&worker_id).and_then(|w| w.output.clone())
                    {
                        self.outputs.insert(conn, output);
                    }
                }
                self.input(Input::Attached { conn, hello });
            }
            Event::Messages { conn, msgs } => {
                // What a worker printed before it sent a result reaches the program first.
                let results = msgs
                    .iter()
                    .any(|m| matches!(m, ToNode::Done { .. } | ToNode::ActorStarted { .. }));
                if results {
                    if let Some(output) = self.outputs.get(&conn) {
                        let worker = output.worker;
                        for out in output.drain(&mut self.scratch) {
                            self.worker_output(worker, out);
                        }
                    }
                }
                self.input(Input::FromProc { conn, msgs })
            }
            Event::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.outputs.remove(&conn);
                self.input(Input::Detached { conn });
            }
            Event::WorkerOutput(output) => {
                for out in output.take() {
                    self.worker_output(output.worker, out);
                }
            }
            Event::Status(reply) => self.status_to(StatusTo::Caller(reply)),
            Event::Metrics(reply) => {
                let now = Instant::now();
                #[cfg(feature = "mesh")]
                let (served, lane) = self
                    .net
                    .as_ref()
                    .map_or(((0, 0), (0, 0)), |n| (n.served_count(), n.lane_counts()));
                #[cfg(not(feature = "mesh"))]
                let (served, lane) = ((0, 0), (0, 0));
                let scrape = super::metrics::Scrape {
                    status: self.status(self.core.status(now)),
                    core: self.core.metrics(),
                    served,
                    lane,
                };
                if reply.send(Box::new(scrape)).is_err() {
                    tracing::debug!("metrics asked for and not awaited");
                }
            }
            #[cfg(feature = "mesh")]
            Event::Net(ev) => {
                if let Some(input) = super::mesh::net_input(ev) {
                    self.input(input);
                }
            }
            #[cfg(feature = "mesh")]
            Event::Serve { peer, id, reply } => {
                let request = self.next_serve;
                self.next_serve += 1;
                self.serving.insert(request, reply);
                self.input(Input::Serve { request, peer, id });
            }
            #[cfg(feature = "mesh")]
            Event::Served { id } => self.core.object_served(id),
        }
    }

    fn worker_output(&mut self, worker: WorkerId, out: super::output::Lines) {
        self.input(Input::WorkerOutput {
            worker,
            stream: out.stream,
            lines: out.lines,
        });
    }

    /// Hands the core an input and carries out what it asks for.
    fn input(&mut self, input: Input) {
        if let Input::WorkerExited { worker, .. } = &input {
            self.workers.remove(worker);
        }
        self.core.handle(Instant::now(), input);
        self.flush();
    }

    /// Carries out every output, and feeds back what could not be carried out, until the
    /// core has nothing more to say.
    fn flush(&mut self) {
        loop {
            while let Some(output) = self.core.poll_output() {
                self.execute(output);
            }
            if self.feedback.is_empty() {
                self.run_store_ops();
                return;
            }
            for input in std::mem::take(&mut self.feedback) {
                if let Input::WorkerExited { worker, .. } = &input {
                    self.workers.remove(worker);
                }
                self.core.handle(Instant::now(), input);
            }
        }
    }

    /// Sends the waiting store ops to the blocking thread as one batch, unless a batch is
    /// under way there (the next one goes when it ends: ops run in order).
    fn run_store_ops(&mut self) {
        if self.store_ops.is_empty() || !self.store_batch.is_empty() {
            return;
        }
        let Some(mut files) = self.files.take() else {
            // The file thread failed: nothing will carry these out.
            let failed: Vec<StoreDone> = std::mem::take(&mut self.store_ops)
                .into_iter()
                .filter_map(|op| {
                    Some(StoreDone {
                        op: op.op?,
                        result: Err(StoreFault::Io("the store's file thread failed".into())),
                        digest: None,
                    })
                })
                .collect();
            self.store_ran = self.store_issued;
            for done in failed {
                self.core.handle(Instant::now(), Input::Store(done));
            }
            return;
        };
        let ops = std::mem::take(&mut self.store_ops);
        let span = tracing::Span::current();
        self.store_batch.spawn_blocking(move || {
            let _entered = span.enter();
            let ran = ops.len() as u64;
            let done = ops.into_iter().filter_map(|op| files.run(op)).collect();
            Batch { files, done, ran }
        });
    }

    /// Answers a status request once the store ops issued before it have run.
    fn status_to(&mut self, to: StatusTo) {
        if self.store_ran < self.store_issued {
            self.held_status.push_back((self.store_issued, to));
            return;
        }
        let status = self.status(self.core.status(Instant::now()));
        match to {
            StatusTo::Proc { conn, request } => {
                let status = Box::new(status);
                self.queue_for(conn, ToClient::Status { request, status });
            }
            StatusTo::Caller(reply) => {
                if reply.send(status).is_err() {
                    tracing::debug!("status asked for and not awaited");
                }
            }
        }
    }

    /// A batch of store ops ended: the core learns how each numbered op went.
    fn batch_done(&mut self, batch: Result<Batch, tokio::task::JoinError>) {
        match batch {
            Ok(Batch { files, done, ran }) => {
                self.files = Some(files);
                self.store_ran += ran;
                for done in done {
                    self.core.handle(Instant::now(), Input::Store(done));
                }
            }
            Err(e) => tracing::error!(error = %e, "the store's file thread failed"),
        }
        self.flush();
        while self
            .held_status
            .front()
            .is_some_and(|(barrier, _)| *barrier <= self.store_ran)
        {
            if let Some((_, to)) = self.held_status.pop_front() {
                self.status_to(to);
            }
        }
    }

    fn execute(&mut self, output: Output) {
        match output {
            Output::Store(op) => {
                self.store_issued += 1;
                self.store_ops.push_back(op);
            }
            #[cfg(feature = "mesh")]
            Output::Serve { request, object } => {
                let Some(reply) = self.serving.remove(&request) else {
                    tracing::error!(request, "an answer to an object request nobody asked");
                    return;
                };
                let served = object.map(|s| match &self.net {
                    Some(net) => Ok(net.served(s)),
                    None => Err(s.id),
                });
                let served = match served {
                    Some(Ok(s)) => Some(s),
                    Some(Err(id)) => {
                        self.core.object_served(id);
                        None
                    }
                    None => None,
                };
                if let Err(served) = reply.send(served) {
                    // The peer went away: the guard inside unpins the object.
                    drop(served);
                    tracing::debug!(request, "object transfer abandoned");
                }
            }
            Output::ToProc { conn, msg } => self.queue_for(conn, msg),
            Output::Status { conn, request } => self.status_to(StatusTo::Proc { conn, request }),
            Output::Close { conn } => {
                // Its writer sends what is queued, then closes the socket.
                self.conns.remove(&conn);
            }
            Output::SpawnWorker {
                worker,
                binary,
                exe,
                shipped,
                env,
            } => self.spawn_worker(worker, binary, &exe, shipped, &env),
            Output::KillWorker { worker } => match self.workers.get_mut(&worker) {
                Some(w) => w.kill(),
                None => tracing::debug!(worker, "kill of a worker that is not running"),
            },
            #[cfg(feature = "mesh")]
            Output::ToPeer { peer, msg } => {
                let sent = self.net.as_mut().is_some_and(|n| n.send(peer, &msg));
                if !sent {
                    // The link cannot take it: what this node has with the peer ends as if
                    // the peer left, and its waiters learn so.
                    self.feedback.push(Input::PeerLost { peer });
                }
            }
            #[cfg(feature = "mesh")]
            Output::Disconnect { peer } => {
                if let Some(n) = &mut self.net {
                    n.disconnect(peer);
                }
            }
            #[cfg(feature = "mesh")]
            Output::Load(load) => {
                if let Some(n) = &self.net {
                    n.load(load);
                }
            }
            #[cfg(feature = "mesh")]
            Output::AskLoads(ask) => {
                if let Some(n) = &self.net {
                    n.ask_loads(ask);
                }
            }
            #[cfg(feature = "mesh")]
            Output::ServeBinary {
                binary,
                exe,
                manifest,
            } => {
                if let Some(n) = &self.net {
                    n.serve_binary(binary, exe, manifest);
                }
            }
            #[cfg(feature = "mesh")]
            Output::Dht(op) => {
                if let Some(n) = &self.net {
                    n.dht(op);
                }
            }
            #[cfg(feature = "mesh")]
            Output::Job(job) => match &mut self.net {
                Some(n) => {
                    let job = n.job(job);
                    self.jobs.spawn(job);
                }
                None => tracing::error!(?job, "a mesh job on a node outside any mesh; dropped"),
            },
            #[cfg(not(feature = "mesh"))]
            other @ (Output::ToPeer { .. }
            | Output::Serve { .. }
            | Output::Disconnect { .. }
            | Output::Load(_)
            | Output::AskLoads(_)
            | Output::ServeBinary { .. }
            | Output::Dht(_)
            | Output::Job(_)) => {
                tracing::error!(output = ?other, "a mesh output on a node built without the mesh; dropped")
            }
        }
    }

    /// Starts a worker: sandboxed if its binary was shipped by a peer (never otherwise: a
    /// node without a sandbox runs no shipped code).
    fn spawn_worker(
        &mut self,
        worker: WorkerId,
        binary: shoal_protocol::BinaryId,
        exe: &std::path::Path,
        shipped: bool,
        env: &[(String, String)],
    ) {
        let failed = |shell: &mut Self, error: &dyn std::fmt::Display| {
            tracing::error!(exe = %exe.display(), shipped, %error, "cannot start worker");
            shell.feedback.push(Input::WorkerExited {
                worker,
                end: WorkerEnd::FailedToStart,
            });
        };
        let sandbox = match (shipped, &self.sandbox) {
            (false, _) => None,
            (true, Some(s)) => Some(s),
            (true, None) => return failed(self, &"shipped code but no sandbox on this node"),
        };
        let events = match (sandbox, self.conn_events.as_ref().and_then(|e| e.upgrade())) {
            (None, events) => events,
            (Some(_), Some(events)) => Some(events),
            (Some(_), None) => return failed(self, &"the node is stopping"),
        };
        // Its stdout and stderr come here, line by line, for its tasks' programs.
        let output = self.conn_events.as_ref().and_then(|e| e.upgrade());
        match workers::spawn(worker, binary, exe, env, &self.socket, sandbox, output) {
            Ok((process, watcher, conn)) => {
                if let (Some(conn), Some(events)) = (conn, events) {
                    let close = self.close.clone();
                    let served = super::api::serve_inherited(
                        conn,
                        worker,
                        process.pid,
                        events,
                        self.max_frame,
                        close,
                    );
                    if let Err(e) = served {
                        // Its end of the pair is closed with ours: it exits, and is reported.
                        tracing::error!(worker, error = %e, "cannot serve a sandboxed worker's connection");
                    }
                }
                self.workers.insert(worker, process);
                self.jobs.spawn(async move {
                    let end = watcher.await;
                    Some(Input::WorkerExited { worker, end })
                });
            }
            Err(e) => failed(self, &e),
        }
    }

    /// One look at the machine's memory: above the threshold, the worker with the largest
    /// resident set is killed (one at a time: none while a kill is under way).
    fn watch_memory(&mut self) {
        let Some(monitor) = &self.monitor else {
            return;
        };
        if self.workers.values().any(|w| w.dying()) {
            return;
        }
        let pids = self.workers.iter().map(|(id, w)| (*id, w.pid));
        if let Some(victim) = monitor.check(pids) {
            if let Some(w) = self.workers.get_mut(&victim.worker) {
                w.kill_for_memory(victim.limit, victim.used);
            }
        }
    }

    /// Queues a message for a process. A process whose queue is full is not keeping up (or
    /// is stuck): it is detached rather than silently missing a message.
    fn queue_for(&mut self, conn: ConnId, msg: ToClient) {
        let Some(tx) = self.conns.get(&conn) else {
            tracing::debug!(conn, "message to a closed connection dropped");
            return;
        };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::error!(conn, "client queue full: disconnecting the client");
                self.conns.remove(&conn);
                self.feedback.push(Input::Detached { conn });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(conn, "message to a closing connection dropped")
            }
        }
    }

    /// A status with what only the shell knows.
    fn status(&self, mut status: shoal_protocol::NodeStatus) -> shoal_protocol::NodeStatus {
        status.metrics = self.metrics_addr.map(|a| a.to_string());
        status.dashboard = self.dashboard_addr.map(|a| a.to_string());
        #[cfg(feature = "mesh")]
        {
            status.mesh = self.net.as_ref().map(|n| n.status());
            // Binaries asked for by peers that were never sent a task of them.
            let binaries = self.net.as_ref().map_or(0, |n| n.binaries_not_allowed());
            if binaries > 0 {
                status.refused.push(("binary".to_string(), binaries));
            }
            status
        }
        #[cfg(not(feature = "mesh"))]
        status
    }

    /// The staged shutdown of the module documentation.
    async fn shutdown(&mut self) {
        // 1. No new local connections.
        self.accept.cancel();
        // 2. What is in flight fails; the workers are told to stop.
        self.core.shutdown(Instant::now());
        self.flush();
        // 3. The workers' exits.
        let deadline = tokio::time::Instant::now() + WORKER_GRACE;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.jobs.join_next()).await {
                Ok(Some(Ok(Some(Input::WorkerExited { worker, .. })))) => {
                    self.workers.remove(&worker);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(workers = self.workers.len(), "workers did not exit in time");
                    break;
                }
            }
        }
        // 4. Local connections: their writers send what is queued and close.
        self.conns.clear();
        self.close.cancel();
        // 5. The network.
        #[cfg(feature = "mesh")]
        if let Some(net) = self.net.take() {
            net.shutdown().await;
        }
        // 6. The store's file work under way, then its files, and the socket.
        while let Some(batch) = self.store_batch.join_next().await {
            match batch {
                Ok(batch) => self.files = Some(batch.files),
                Err(e) => tracing::error!(error = %e, "the store's file thread failed"),
            }
        }
        match &self.files {
            Some(files) => files.destroy(),
            None => {
                tracing::error!(dir = %self.store_dir.display(), "the store's files are lost; not removed")
            }
        }
        if let Err(e) = std::fs::remove_file(&self.socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove the socket");
            }
        }
        // 7. Whatever is left, then what the sandbox still holds (cgroups, directories).
        self.jobs.abort_all();
        while self.jobs.join_next().await.is_some() {}
        if let Some(sandbox) = self.sandbox.take() {
            match tokio::task::spawn_blocking(move || sandbox.destroy()).await {
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "removing the workers' sandbox failed"),
            }
        }
        tracing::info!("node stopped");
    }
}

/// A batch of store ops that ran: the files back, the completions, how many ran.
struct Batch {
    files: StoreFiles,
    done: Vec<StoreDone>,
    ran: u64,
}

/// Who a status goes to.
enum StatusTo {
    Proc { conn: ConnId, request: u64 },
    Caller(tokio::sync::oneshot::Sender<shoal_protocol::NodeStatus>),
}

/// Where the answer to a peer's object request goes.
#[cfg(feature = "mesh")]
type ServeReply = tokio::sync::oneshot::Sender<Option<crate::net::objects::Served>>;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
