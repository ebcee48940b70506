//! A deterministic simulator of a whole mesh: many [`NodeCore`]s on one virtual clock.
//!
//! Every node is a real [`NodeCore`], driven exactly as the shell drives it; everything
//! around it is simulated: links between peers (latency, drops, partitions and heals, each
//! link delivering in order), load reports, the failure detector, the mesh's directory,
//! worker processes (scripted durations, results, panics and crashes), and drivers that
//! submit tasks, create actors and call them, and release their refs. One seed fixes every
//! choice, so a run that breaks an invariant prints its seed and replays exactly.
//!
//! Invariants checked ([`Sim::check_progress`], [`Sim::check_empty`], [`Sim::finish`]):
//! - every result a live driver owns ends in its value or a typed error within a bounded
//!   virtual time, and a value is the right one;
//! - the calls of each caller run at their actor in the order they were made;
//! - no task runs more often than its retry budget allows;
//! - once every driver has gone, every node's object table, task table, actors, queues
//!   and store are empty.
//!
//! The store of each simulated node is a real [`Store`] in a temporary directory (it only
//! ever holds directories: simulated values are small and travel inline).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_protocol::mesh::{actor_key, name_key, ActorLocation, LoadReport, PeerKey, PeerMsg};
use shoal_protocol::{
    codec, ActorCreate, ActorId, Arg, ArgValue, BinaryId, BinaryInfo, ClientId, ExecTask, ExitInfo,
    Hello, HostActor, NodeId, ObjectId, ObjectValue, ResourceSet, Role, TaskError, TaskId,
    TaskKind, TaskOutcome, TaskSpec, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};

use crate::config::NodeConfig;
use crate::core::sched::{SchedConfig, Scheduler, WorkerId};
use crate::core::{ConnId, DhtOp, Input, Job, JobDone, NodeCore, Output, PeerConfig, WorkerEnd};
use crate::store::Store;

mod rng;
pub mod scenario;

pub use rng::Rng;

/// The binary every simulated driver runs.
const BINARY: BinaryId = BinaryId([7; 32]);
/// How often peers gossip their load.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// How long after its links go silent a peer is declared lost.
const FAILURE_DETECTION: Duration = Duration::from_secs(1);
/// How long a worker process takes to start.
const WORKER_START: Duration = Duration::from_millis(20);

/// How a simulated mesh behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Peers.
    pub nodes: usize,
    /// CPUs of each peer.
    pub cpus: Vec<f64>,
    /// One-way latency of a link: between these bounds.
    pub latency: (Duration, Duration),
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            cpus: vec![1.0; 3],
            latency: (Duration::from_micros(100), Duration::from_millis(2)),
        }
    }
}

/// A function a simulated worker knows: what it returns, and how long it takes.
///
/// The function's name says what it does: `echo` returns its arguments joined; `panic`
/// fails with a panic; `crash` kills its worker process; `sleep:<ms>` is `echo` that takes
/// that long. Anything else is `echo` taking 1 ms.
fn behaviour(function: &str) -> (Duration, Behaviour) {
    if let Some(ms) = function.strip_prefix("sleep:") {
        let ms = ms.parse().unwrap_or(1);
        return (Duration::from_millis(ms), Behaviour::Echo);
    }
    match function {
        "panic" => (Duration::from_millis(1), Behaviour::Panic),
        "crash" => (Duration::from_millis(5), Behaviour::Crash),
        _ => (Duration::from_millis(1), Behaviour::Echo),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Echo,
    Panic,
    Crash,
}

/// What a simulated task returns for these arguments (`echo`).
pub fn echo(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a);
        out.push(b'|');
    }
    out
}

/// An event due at a time.
#[derive(Debug)]
enum Event {
    /// An input for a node.
    Input { node: usize, input: Input },
    /// A message over a link; dropped if the link is down when it arrives.
    Link {
        from: usize,
        to: usize,
        epoch: u64,
        msg: Box<PeerMsg>,
    },
    /// A worker finishes the task at the head of its queue.
    WorkerStep {
        node: usize,
        worker: WorkerId,
        incarnation: u64,
    },
    /// Peers gossip their loads.
    Reports,
    /// One load report over a link; dropped if the link broke since it was sent.
    Report {
        from: usize,
        to: usize,
        epoch: u64,
        report: Box<LoadReport>,
    },
    /// The failure detector notices that `lost` is gone, as seen by `node`.
    Detect { node: usize, lost: usize },
}

struct Queued {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A max-heap: the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A simulated worker process.
#[derive(Debug)]
struct SimWorker {
    conn: ConnId,
    pid: u32,
    /// Tasks handed to it, in order.
    queue: VecDeque<ExecTask>,
    /// The actor it hosts.
    actor: Option<(ActorId, u32)>,
    /// Whether its head task is running (a step is scheduled).
    busy: bool,
    /// Bumped when it dies: steps of an earlier life are ignored.
    incarnation: u64,
}

/// A simulated driver program.
#[derive(Debug)]
pub struct Driver {
    node: usize,
    conn: ConnId,
    client: ClientId,
    seq: u64,
    alive: bool,
    /// Results it owns and still holds, with their expected value and the time they were
    /// asked for.
    pub(crate) pending: BTreeMap<ObjectId, Expect>,
    /// Results it received.
    pub(crate) done: BTreeMap<ObjectId, ObjectValue>,
}

/// What a driver expects of a result.
#[derive(Clone, Debug)]
pub(crate) struct Expect {
    since: Instant,
    /// The value an `echo` returns, when known.
    value: Option<Vec<u8>>,
}

/// One simulated peer.
struct SimNode {
    core: Option<NodeCore>,
    key: PeerKey,
    workers: BTreeMap<WorkerId, SimWorker>,
    /// Process connections of this node: drivers' and workers'.
    procs: HashMap<ConnId, Proc>,
    load: Option<crate::core::Load>,
    seq: u64,
    started_ms: u64,
    store_parent: PathBuf,
    /// Tasks and calls that started running here.
    ran: u64,
}

#[derive(Clone, Copy, Debug)]
enum Proc {
    Driver(usize),
    Worker(WorkerId),
}

/// A broken rule, with when it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Virtual milliseconds since the start.
    pub at_ms: u64,
    /// What broke.
    pub what: String,
}

/// The simulator. See the [module documentation](self).
pub struct Sim {
    seed: u64,
    rng: Rng,
    start: Instant,
    now: Instant,
    config: SimConfig,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    next_conn: ConnId,
    /// Links that are down, as (from, to).
    cut: BTreeSet<(usize, usize)>,
    /// Bumped on every cut and heal of a link and crash of a node: what was in flight
    /// before is dropped.
    epochs: HashMap<(usize, usize), u64>,
    /// When each link last delivered (links deliver in order).
    link_clock: HashMap<(usize, usize), Instant>,
    /// The mesh's directory: records and providers.
    records: HashMap<Vec<u8>, Vec<u8>>,
    providers: HashMap<ObjectId, BTreeSet<usize>>,
    /// Drivers, by id.
    pub(crate) drivers: Vec<Driver>,
    /// How many times each task started running, and its budget.
    runs: HashMap<TaskId, (u32, u32)>,
    /// Per actor incarnation, per caller: the last call sequence seen.
    call_order: HashMap<(ActorId, u32, ClientId), u64>,
    violations: Vec<Violation>,
    /// Which peers each node counts as up, as (node, peer): from a report it received
    /// until it declares the peer lost.
    knows: BTreeSet<(usize, usize)>,
    /// Failure detections under way, as (node, lost).
    detecting: BTreeSet<(usize, usize)>,
    /// The start time of each peer as each other peer last saw it (a change is a restart).
    seen_start: HashMap<(usize, usize), u64>,
    /// Whether `SHOAL_SIM_TRACE` asks for a trace (read once, not per event).
    trace: bool,
    /// Inputs handled, for the simulator's own speed.
    pub inputs: u64,
    scratch: PathBuf,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A mesh of `config.nodes` peers, all connected, with no driver yet.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        // Maps iterate the same way in every run of every process.
        shoal_protocol::ids::fix_hash_seed_for_tests(0x5eed_5eed);
        let start = Instant::now();
        let scratch = std::env::temp_dir().join(format!(
            "shoal-sim-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut sim = Self {
            seed,
            rng: Rng::new(seed),
            start,
            now: start,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            next_conn: 1,
            cut: BTreeSet::new(),
            epochs: HashMap::new(),
            link_clock: HashMap::new(),
            records: HashMap::new(),
            providers: HashMap::new(),
            drivers: Vec::new(),
            runs: HashMap::new(),
            call_order: HashMap::new(),
            violations: Vec::new(),
            seen_start: HashMap::new(),
            detecting: BTreeSet::new(),
            knows: BTreeSet::new(),
            trace: std::env::var_os("SHOAL_SIM_TRACE").is_some(),
            inputs: 0,
            scratch,
            config,
        };
        for i in 0..sim.config.nodes {
            let mut key = [0u8; 38];
            key[0] = 0xaa;
            key[1..9].copy_from_slice(&(i as u64).to_be_bytes());
            let store_parent = sim.scratch.join(format!("node-{i}"));
            sim.nodes.push(SimNode {
                core: None,
                key: PeerKey::from_bytes(&key).unwrap_or_else(|| unreachable!()),
                workers: BTreeMap::new(),
                procs: HashMap::new(),
                load: None,
                seq: 0,
                started_ms: 0,
                store_parent,
                ran: 0,
            });
            sim.boot(i);
        }
        sim.schedule(sim.now + REPORT_INTERVAL, Event::Reports);
        sim
    }

    /// The seed this run was made from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The random numbers of this run.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The peers.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `i` runs.
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// The core of node `i`, if it runs.
    pub fn core(&self, i: usize) -> Option<&NodeCore> {
        self.nodes[i].core.as_ref()
    }

    /// Tasks and actor calls that started running on node `i`.
    pub fn runs_on(&self, i: usize) -> u64 {
        self.nodes[i].ran
    }

    /// A digest of everything every driver received, for replay checks.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for d in &self.drivers {
            for (id, v) in &d.done {
                h.update(&id.0);
                h.update(format!("{v:?}").as_bytes());
            }
        }
        for n in &self.nodes {
            h.update(&n.ran.to_le_bytes());
        }
        h.update(&self.inputs.to_le_bytes());
        h.finalize()
    }

    /// Rules broken so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    fn violation(&mut self, what: String) {
        let at_ms = self.elapsed().as_millis() as u64;
        tracing::debug!(at_ms, %what, "invariant broken");
        self.violations.push(Violation { at_ms, what });
    }

    fn boot(&mut self, i: usize) {
        let cpus = self.config.cpus.get(i).copied().unwrap_or(1.0);
        let node = &mut self.nodes[i];
        let config = NodeConfig {
            socket: node.store_parent.join("node.sock"),
            cpus,
            store_parent: node.store_parent.clone(),
            spill_parent: node.store_parent.join("spill"),
            store_bytes: 64 << 20,
            embedded: false,
            #[cfg(feature = "mesh")]
            mesh: None,
            ..NodeConfig::default()
        };
        let node_id = NodeId([i as u8; 16]);
        let store = match Store::open(
            &config.store_parent,
            &config.spill_parent,
            node_id,
            64 << 20,
        ) {
            Ok(s) => s,
            Err(e) => panic!("the simulator cannot make a store directory: {e}"),
        };
        let sched = Scheduler::new(SchedConfig {
            total: config.total_resources(),
            max_workers: config.max_workers,
            pipeline_depth: config.pipeline_depth,
            short_task: Duration::from_millis(2),
            max_start_failures: 3,
        });
        let peer = PeerConfig {
            me: node.key,
            target: "sim".into(),
            accepts_code: true,
        };
        node.started_ms = self.now.duration_since(self.start).as_millis() as u64 + 1;
        node.seq = 0;
        node.core = Some(NodeCore::new(
            self.now,
            node_id,
            config,
            sched,
            store,
            Some(peer),
        ));
        self.drain(i);
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    /// Handles one input at node `i` now, and carries out its outputs.
    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        self.inputs += 1;
        core.handle(now, input);
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) else {
                return;
            };
            self.output(i, out);
        }
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.config.latency;
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.rng.below(span.max(1)))
    }

    fn output(&mut self, i: usize, out: Output) {
        match out {
            Output::ToProc { conn, msg } => self.deliver_to_proc(i, conn, msg),
            Output::Status { .. } => {}
            Output::Close { conn } => {
                self.nodes[i].procs.remove(&conn);
            }
            Output::ToPeer { peer, msg } => {
                let Some(to) = self.nodes.iter().position(|n| n.key == peer) else {
                    return;
                };
                self.trace(format_args!("{i} -> {to}: {}", brief(&msg)));
                if self.cut.contains(&(i, to)) || !self.alive(to) {
                    // The link cannot be opened (or broke): the sender learns it after the
                    // failure detector's delay, as a real link reports it unreachable.
                    self.detect(i, to);
                    return;
                }
                let epoch = self.epochs.get(&(i, to)).copied().unwrap_or(0);
                let at = (self.now + self.latency())
                    .max(self.link_clock.get(&(i, to)).copied().unwrap_or(self.now));
                self.link_clock.insert((i, to), at);
                self.schedule(
                    at,
                    Event::Link {
                        from: i,
                        to,
                        epoch,
                        msg: Box::new(msg),
                    },
                );
            }
            Output::Disconnect { peer } => {
                // The connection closes: the other side, if it still counts this node as
                // a peer, notices at once.
                if let Some(to) = self.nodes.iter().position(|n| n.key == peer) {
                    if self.alive(to) && self.knows.remove(&(to, i)) {
                        for (x, y) in [(i, to), (to, i)] {
                            self.bump(x, y);
                        }
                        self.trace(format_args!("{i} disconnects {to}"));
                        let peer = self.nodes[i].key;
                        let at = self.now + self.latency();
                        self.schedule(
                            at,
                            Event::Input {
                                node: to,
                                input: Input::PeerLost { peer },
                            },
                        );
                    }
                }
            }
            Output::SpawnWorker { worker, .. } => {
                let conn = self.conn();
                let pid = 10_000 + conn as u32;
                self.nodes[i].workers.insert(
                    worker,
                    SimWorker {
                        conn,
                        pid,
                        queue: VecDeque::new(),
                        actor: None,
                        busy: false,
                        incarnation: 0,
                    },
                );
                self.nodes[i].procs.insert(conn, Proc::Worker(worker));
                let hello = Hello {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    role: Role::Worker { worker_id: worker },
                    pid,
                    client: ClientId(pid as u64),
                    binary: None,
                };
                let at = self.now + WORKER_START;
                self.schedule(
                    at,
                    Event::Input {
                        node: i,
                        input: Input::Attached { conn, hello },
                    },
                );
            }
            Output::KillWorker { worker } => self.kill_worker(i, worker, 9),
            Output::Load(load) => self.nodes[i].load = Some(load),
            Output::ServeBinary { .. } => {}
            Output::Dht(op) => match op {
                DhtOp::StartProviding(id) => {
                    self.providers.entry(id).or_default().insert(i);
                }
                DhtOp::StopProviding(id) => {
                    if let Some(p) = self.providers.get_mut(&id) {
                        p.remove(&i);
                    }
                }
                DhtOp::RemoveRecord(key) => {
                    self.records.remove(&key);
                }
            },
            Output::Job(job) => self.job(i, job),
        }
    }

    fn job(&mut self, i: usize, job: Job) {
        let done = match job {
            Job::PutRecords { records } => {
                self.records.extend(records);
                return;
            }
            Job::Pull { id, object, .. } => JobDone::Pulled {
                id,
                object,
                result: Err("the simulator moves no bytes".into()),
            },
            Job::FetchBinary { binary, .. } => JobDone::BinaryFetched {
                binary,
                result: Ok(PathBuf::from("/sim/binary")),
            },
            Job::FindProviders { id } => {
                let peers = self
                    .providers
                    .get(&id)
                    .map(|s| s.iter().map(|n| self.nodes[*n].key).collect())
                    .unwrap_or_default();
                JobDone::ProvidersFound { id, peers }
            }
            Job::LocateActor { actor } => JobDone::ActorLocated {
                actor,
                found: self.locate(actor),
            },
            Job::ResolveName {
                conn,
                request,
                name,
            } => {
                let found = self
                    .records
                    .get(&name_key(&name))
                    .and_then(|b| codec::decode::<ActorId>(b, 64).ok())
                    .and_then(|actor| {
                        let peer = self.locate(actor)?;
                        Some((
                            shoal_protocol::ActorInfo {
                                actor_id: actor,
                                class: String::new(),
                                owner: ClientId(0),
                            },
                            peer,
                        ))
                    });
                JobDone::NameResolved {
                    conn,
                    request,
                    found,
                }
            }
        };
        let at = self.now + self.latency() * 4;
        self.schedule(
            at,
            Event::Input {
                node: i,
                input: Input::Job(done),
            },
        );
    }

    fn locate(&self, actor: ActorId) -> Option<PeerKey> {
        let bytes = self.records.get(&actor_key(&actor))?;
        let loc: ActorLocation = codec::decode(bytes, 4096).ok()?;
        PeerKey::from_bytes(&loc.peer)
    }

    fn deliver_to_proc(&mut self, i: usize, conn: ConnId, msg: ToClient) {
        match self.nodes[i].procs.get(&conn).copied() {
            Some(Proc::Driver(d)) => self.deliver_to_driver(d, msg),
            Some(Proc::Worker(w)) => self.deliver_to_worker(i, w, msg),
            None => {}
        }
    }

    fn deliver_to_driver(&mut self, d: usize, msg: ToClient) {
        let ToClient::Object { id, value } = msg else {
            return;
        };
        let driver = &mut self.drivers[d];
        let Some(expect) = driver.pending.remove(&id) else {
            return;
        };
        if let (ObjectValue::Inline(got), Some(want)) = (&value, &expect.value) {
            if got != want {
                let what = format!("driver {d}: object {id} has the wrong value");
                self.violation(what);
            }
        }
        self.drivers[d].done.insert(id, value);
    }

    fn deliver_to_worker(&mut self, i: usize, w: WorkerId, msg: ToClient) {
        let Some(worker) = self.nodes[i].workers.get_mut(&w) else {
            return;
        };
        match msg {
            ToClient::Execute(exec) => {
                worker.queue.push_back(exec);
                self.start_next(i, w);
            }
            ToClient::HostActor(HostActor {
                actor_id,
                incarnation,
                ..
            }) => {
                worker.actor = Some((actor_id, incarnation));
                let conn = worker.conn;
                let at = self.now + Duration::from_millis(1);
                self.schedule(
                    at,
                    Event::Input {
                        node: i,
                        input: Input::FromProc {
                            conn,
                            msgs: vec![ToNode::ActorStarted {
                                actor: actor_id,
                                result: Ok(()),
                            }],
                        },
                    },
                );
            }
            _ => {}
        }
    }

    /// Starts the worker's next task if it is idle.
    fn start_next(&mut self, i: usize, w: WorkerId) {
        let Some(worker) = self.nodes[i].workers.get_mut(&w) else {
            return;
        };
        if worker.busy {
            return;
        }
        let Some(exec) = worker.queue.front() else {
            return;
        };
        worker.busy = true;
        let (task, incarnation) = (exec.task_id, worker.incarnation);
        let (took, _) = behaviour(&exec.function);
        let actor = worker.actor;
        self.nodes[i].ran += 1;
        // It runs now: count it against its budget, and check the order of actor calls.
        if let Some(r) = self.runs.get_mut(&task) {
            if self.trace {
                eprintln!(
                    "{:?} run {task} on node {i} worker {w}",
                    self.now - self.start
                );
            }
            r.0 += 1;
            if r.0 > r.1 + 1 {
                let what = format!("task {task} ran {} times, {} retries allowed", r.0, r.1);
                self.violation(what);
            }
        }
        if let Some((actor, inc)) = actor {
            if let Some(Some(ArgValue::Inline(b))) = self.nodes[i]
                .workers
                .get(&w)
                .and_then(|w| w.queue.front())
                .map(|e| e.args.first().cloned())
            {
                if let Some((caller, seq)) = call_tag(&b) {
                    let last = self.call_order.insert((actor, inc, caller), seq);
                    if last.is_some_and(|l| l >= seq) {
                        let what = format!(
                            "actor {actor}: call {seq} of {caller} ran after call {}",
                            last.unwrap_or(0)
                        );
                        self.violation(what);
                    }
                }
            }
        }
        let at = self.now + took;
        self.schedule(
            at,
            Event::WorkerStep {
                node: i,
                worker: w,
                incarnation,
            },
        );
    }

    fn worker_step(&mut self, i: usize, w: WorkerId, incarnation: u64) {
        let Some(worker) = self.nodes[i].workers.get_mut(&w) else {
            return;
        };
        if worker.incarnation != incarnation {
            return;
        }
        worker.busy = false;
        let Some(exec) = worker.queue.pop_front() else {
            return;
        };
        let conn = worker.conn;
        let (_, what) = behaviour(&exec.function);
        let outcome = match what {
            Behaviour::Crash => {
                self.kill_worker(i, w, 11);
                return;
            }
            Behaviour::Panic => TaskOutcome::Err(TaskError::Panicked {
                message: "simulated panic".into(),
            }),
            Behaviour::Echo => {
                let args: Vec<Vec<u8>> = exec
                    .args
                    .iter()
                    .map(|a| match a {
                        ArgValue::Inline(b) => b.clone(),
                        ArgValue::Shared(id, _) => id.0.to_vec(),
                    })
                    .collect();
                TaskOutcome::Ok(ObjectValue::Inline(echo(&args)))
            }
        };
        self.input(
            i,
            Input::FromProc {
                conn,
                msgs: vec![ToNode::Done {
                    task_id: exec.task_id,
                    outcome,
                    nested: Vec::new(),
                }],
            },
        );
        self.start_next(i, w);
    }

    /// Worker `w` of node `i` dies (killed by `signal`).
    fn kill_worker(&mut self, i: usize, w: WorkerId, signal: i32) {
        let Some(worker) = self.nodes[i].workers.remove(&w) else {
            return;
        };
        self.nodes[i].procs.remove(&worker.conn);
        let at = self.now + Duration::from_millis(1);
        self.schedule(
            at,
            Event::Input {
                node: i,
                input: Input::Detached { conn: worker.conn },
            },
        );
        self.schedule(
            at,
            Event::Input {
                node: i,
                input: Input::WorkerExited {
                    worker: w,
                    end: WorkerEnd::Exited {
                        pid: worker.pid,
                        exit: ExitInfo {
                            code: None,
                            signal: Some(signal),
                        },
                    },
                },
            },
        );
    }

    /// Kills a random worker of node `i` (a crash of its process), if it has one.
    pub fn crash_a_worker(&mut self, i: usize) {
        let ids: Vec<WorkerId> = self.nodes[i].workers.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let w = ids[self.rng.below(ids.len() as u64) as usize];
        self.kill_worker(i, w, 9);
    }

    fn reports(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(load) = self.nodes[i].load.clone() else {
                continue;
            };
            if !self.alive(i) {
                continue;
            }
            self.nodes[i].seq += 1;
            let report = LoadReport {
                peer: self.nodes[i].key.to_vec(),
                mesh: "sim".into(),
                seq: self.nodes[i].seq,
                started_ms: self.nodes[i].started_ms,
                total: load.total,
                free: load.free,
                queued: load.queued,
                running: load.running,
                store_capacity: load.store_capacity,
                store_used: load.store_used,
                target: "sim".into(),
                binaries: load.binaries,
                addrs: Vec::new(),
                accepts_code: true,
            };
            for to in 0..self.nodes.len() {
                if to == i || self.cut.contains(&(i, to)) || !self.alive(to) {
                    continue;
                }
                let peer = self.nodes[i].key;
                let at = self.now + self.latency();
                let started = self.nodes[i].started_ms;
                if let Some(before) = self.seen_start.insert((to, i), started) {
                    if before != started {
                        // Membership sees a restart: the old peer is gone.
                        self.schedule(
                            at,
                            Event::Input {
                                node: to,
                                input: Input::PeerLost { peer },
                            },
                        );
                    }
                }
                let epoch = self.epochs.get(&(i, to)).copied().unwrap_or(0);
                self.schedule(
                    at,
                    Event::Report {
                        from: i,
                        to,
                        epoch,
                        report: Box::new(report.clone()),
                    },
                );
            }
        }
        let at = self.now + REPORT_INTERVAL;
        self.schedule(at, Event::Reports);
    }

    /// Handles the next event (or timer). Says whether there was one.
    pub fn step(&mut self) -> bool {
        let next_event = self.queue.peek().map(|q| q.at);
        let next_timer = (0..self.nodes.len())
            .filter_map(|i| Some((self.nodes[i].core.as_ref()?.poll_timeout()?, i)))
            .min();
        match (next_event, next_timer) {
            (_, Some((t, i))) if next_event.is_none_or(|e| t < e) => {
                self.now = self.now.max(t);
                let now = self.now;
                if let Some(c) = self.nodes[i].core.as_mut() {
                    self.inputs += 1;
                    c.handle_timeout(now);
                }
                self.drain(i);
                true
            }
            (Some(_), _) => {
                let Some(q) = self.queue.pop() else {
                    return false;
                };
                self.now = self.now.max(q.at);
                self.event(q.event);
                true
            }
            (None, _) => false,
        }
    }

    /// Whether what `from` sent to `to` in link epoch `epoch` still arrives: the link has not
    /// broken since, and the sender still runs.
    fn link_up(&self, from: usize, to: usize, epoch: u64) -> bool {
        self.epochs.get(&(from, to)).copied().unwrap_or(0) == epoch
            && !self.cut.contains(&(from, to))
            && self.alive(from)
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Input { node, input } => self.input(node, input),
            Event::Link {
                from,
                to,
                epoch,
                msg,
            } => {
                if !self.link_up(from, to, epoch) {
                    return;
                }
                let peer = self.nodes[from].key;
                self.input(
                    to,
                    Input::FromPeer {
                        peer,
                        msgs: vec![*msg],
                    },
                );
            }
            Event::WorkerStep {
                node,
                worker,
                incarnation,
            } => self.worker_step(node, worker, incarnation),
            Event::Reports => self.reports(),
            Event::Report {
                from,
                to,
                epoch,
                report,
            } => {
                if !self.link_up(from, to, epoch) {
                    return;
                }
                let peer = self.nodes[from].key;
                self.knows.insert((to, from));
                self.input(to, Input::PeerReport { peer, report });
            }
            Event::Detect { node, lost, .. } => {
                self.detecting.remove(&(node, lost));
                self.trace(format_args!("{node} declares {lost} lost"));
                self.knows.remove(&(node, lost));
                // The connection broke: even if the link healed meanwhile, what was in
                // flight on it is gone, and the peer is lost until it reports again.
                let peer = self.nodes[lost].key;
                self.input(node, Input::PeerLost { peer });
            }
        }
    }

    /// Runs for `d` of virtual time (or until nothing is left to do).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.next_time().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    fn next_time(&self) -> Option<Instant> {
        let e = self.queue.peek().map(|q| q.at);
        let t = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref()?.poll_timeout())
            .min();
        match (e, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- faults ----

    fn bump(&mut self, a: usize, b: usize) -> u64 {
        let e = self.epochs.entry((a, b)).or_default();
        *e += 1;
        *e
    }

    /// `node` declares `lost` lost after the failure detector's delay (once, however many
    /// times it is asked meanwhile).
    fn detect(&mut self, node: usize, lost: usize) {
        if self.detecting.insert((node, lost)) {
            let at = self.now + FAILURE_DETECTION;
            self.schedule(at, Event::Detect { node, lost });
        }
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("{:?} {what}", self.now - self.start);
        }
    }

    /// Cuts the links between `a` and `b` both ways; each side declares the other lost
    /// after the failure detector's delay.
    pub fn partition(&mut self, a: usize, b: usize) {
        if a == b || self.cut.contains(&(a, b)) {
            return;
        }
        self.trace(format_args!("partition {a} {b}"));
        for (x, y) in [(a, b), (b, a)] {
            self.cut.insert((x, y));
            self.bump(x, y);
            self.detect(y, x);
        }
    }

    /// Restores the links between `a` and `b`; reports flow again.
    pub fn heal(&mut self, a: usize, b: usize) {
        if self.cut.contains(&(a, b)) {
            self.trace(format_args!("heal {a} {b}"));
        }
        for (x, y) in [(a, b), (b, a)] {
            if self.cut.remove(&(x, y)) {
                self.bump(x, y);
            }
        }
    }

    /// Node `i` crashes: its core, its workers and its drivers are gone; the others
    /// declare it lost after the failure detector's delay.
    pub fn crash(&mut self, i: usize) {
        let Some(mut core) = self.nodes[i].core.take() else {
            return;
        };
        self.trace(format_args!("crash {i}"));
        core.store_mut().destroy();
        self.nodes[i].workers.clear();
        self.nodes[i].procs.clear();
        self.nodes[i].load = None;
        for d in self.drivers.iter_mut().filter(|d| d.node == i) {
            d.alive = false;
        }
        for other in 0..self.nodes.len() {
            if other == i {
                continue;
            }
            for (x, y) in [(i, other), (other, i)] {
                self.bump(x, y);
            }
            self.detect(other, i);
        }
    }

    /// Node `i` starts again (empty), with the same peer id.
    pub fn restart(&mut self, i: usize) {
        if self.alive(i) {
            return;
        }
        self.boot(i);
    }

    // ---- drivers ----

    /// A driver program attached to node `node`.
    pub fn driver(&mut self, node: usize) -> usize {
        let conn = self.conn();
        let d = self.drivers.len();
        let client = ClientId(1_000 + d as u64);
        self.drivers.push(Driver {
            node,
            conn,
            client,
            seq: 0,
            alive: self.alive(node),
            pending: BTreeMap::new(),
            done: BTreeMap::new(),
        });
        self.nodes[node].procs.insert(conn, Proc::Driver(d));
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Driver,
            pid: 1,
            client,
            binary: Some(BinaryInfo {
                id: BINARY,
                path: "/sim/binary".into(),
            }),
        };
        self.input(node, Input::Attached { conn, hello });
        d
    }

    fn send(&mut self, d: usize, msg: ToNode) {
        let (node, conn, alive) = (
            self.drivers[d].node,
            self.drivers[d].conn,
            self.drivers[d].alive,
        );
        if !alive {
            return;
        }
        self.input(
            node,
            Input::FromProc {
                conn,
                msgs: vec![msg],
            },
        );
    }

    fn next_task(&mut self, d: usize) -> TaskId {
        let driver = &mut self.drivers[d];
        driver.seq += 1;
        TaskId::new(driver.client, driver.seq)
    }

    /// Driver `d` submits `function(args)` and owns its result.
    pub fn submit(
        &mut self,
        d: usize,
        function: &str,
        args: Vec<SimArg>,
        opts: TaskOpts,
    ) -> ObjectId {
        let task = self.next_task(d);
        let mut known = true;
        let mut wire = Vec::new();
        let mut values = Vec::new();
        for a in args {
            match a {
                SimArg::Value(v) => {
                    values.push(v.clone());
                    wire.push(Arg::Value(v));
                }
                SimArg::Ref(id) => {
                    match self.drivers[d].done.get(&id) {
                        Some(ObjectValue::Inline(v)) => values.push(v.clone()),
                        _ => known = false,
                    }
                    wire.push(Arg::Ref(id));
                }
            }
        }
        if behaviour(function).1 != Behaviour::Echo {
            known = false;
        }
        let spec = TaskSpec {
            task_id: task,
            function: function.to_string(),
            binary: BINARY,
            args: wire,
            resources: ResourceSet::cpus(opts.cpus),
            max_retries: opts.retries,
            owner: self.drivers[d].client,
            kind: TaskKind::Function,
            nested: Vec::new(),
            wait_for_resources: false,
        };
        let ret = spec.return_id();
        self.runs.insert(task, (0, opts.retries));
        self.own(d, ret, known.then(|| echo(&values)));
        self.send(d, ToNode::Submit(spec));
        ret
    }

    fn own(&mut self, d: usize, id: ObjectId, value: Option<Vec<u8>>) {
        let since = self.now;
        if self.drivers[d].alive {
            self.drivers[d].pending.insert(id, Expect { since, value });
        }
    }

    /// Driver `d` creates an actor (with `restarts` restarts) and gets its id.
    pub fn create_actor(&mut self, d: usize, restarts: u32, cpus: f64) -> ActorId {
        let task = self.next_task(d);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.drivers[d].client.0.to_le_bytes());
        id[8..].copy_from_slice(&self.drivers[d].seq.to_le_bytes());
        let actor = ActorId(id);
        let spec = TaskSpec {
            task_id: task,
            function: "Actor".into(),
            binary: BINARY,
            args: Vec::new(),
            resources: ResourceSet::cpus(cpus),
            max_retries: 0,
            owner: self.drivers[d].client,
            kind: TaskKind::CreateActor(ActorCreate {
                actor_id: actor,
                name: None,
                get_if_exists: false,
                max_restarts: restarts,
                max_concurrency: 1,
                detached: false,
            }),
            nested: Vec::new(),
            wait_for_resources: false,
        };
        let ret = spec.return_id();
        self.own(d, ret, None);
        self.send(d, ToNode::Submit(spec));
        actor
    }

    /// Driver `d` calls `actor`; the call carries the driver's sequence number, which the
    /// actor checks is increasing.
    pub fn call(&mut self, d: usize, actor: ActorId, function: &str) -> ObjectId {
        let task = self.next_task(d);
        let tag = tag(self.drivers[d].client, self.drivers[d].seq);
        let spec = TaskSpec {
            task_id: task,
            function: function.to_string(),
            binary: BINARY,
            args: vec![Arg::Value(tag.clone())],
            resources: ResourceSet::new(),
            max_retries: 0,
            owner: self.drivers[d].client,
            kind: TaskKind::ActorMethod { actor },
            nested: Vec::new(),
            wait_for_resources: false,
        };
        let ret = spec.return_id();
        let expect = (behaviour(function).1 == Behaviour::Echo).then(|| echo(&[tag]));
        self.own(d, ret, expect);
        self.send(d, ToNode::Submit(spec));
        ret
    }

    /// Driver `d` drops its ref to `id`.
    pub fn release(&mut self, d: usize, id: ObjectId) {
        self.drivers[d].pending.remove(&id);
        self.drivers[d].done.remove(&id);
        self.send(d, ToNode::Release { ids: vec![id] });
    }

    /// Driver `d` exits.
    pub fn exit(&mut self, d: usize) {
        let (node, conn) = (self.drivers[d].node, self.drivers[d].conn);
        if !self.drivers[d].alive {
            return;
        }
        self.drivers[d].alive = false;
        self.drivers[d].pending.clear();
        self.nodes[node].procs.remove(&conn);
        self.input(node, Input::Detached { conn });
    }

    /// Results driver `d` has received.
    pub fn results(&self, d: usize) -> &BTreeMap<ObjectId, ObjectValue> {
        &self.drivers[d].done
    }

    /// Results driver `d` still waits for.
    pub fn waiting(&self, d: usize) -> usize {
        self.drivers[d].pending.len()
    }

    // ---- invariants ----

    /// Checks that no live driver has waited longer than `bound` for a result.
    pub fn check_progress(&mut self, bound: Duration) {
        let now = self.now;
        let mut late = Vec::new();
        for (d, driver) in self.drivers.iter().enumerate() {
            if !driver.alive {
                continue;
            }
            for (id, e) in &driver.pending {
                if now.duration_since(e.since) > bound {
                    late.push(format!(
                        "driver {d}: object {id} not done after {:?}",
                        now.duration_since(e.since)
                    ));
                }
            }
        }
        for what in late {
            self.violation(what);
        }
    }

    /// Checks that every live node holds nothing (call once every driver has exited and
    /// the mesh had time to settle).
    pub fn check_empty(&mut self) {
        let mut leaks = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(core) = &n.core else { continue };
            let c = core.census();
            let empty = crate::core::Census {
                procs: c.procs,
                ..Default::default()
            };
            if c != empty {
                let objects: Vec<String> = core
                    .objects()
                    .iter()
                    .take(4)
                    .map(|o| format!("{} {:?} holders={}", o.id, o.pinned_by, o.holders))
                    .collect();
                let mut tasks: Vec<String> = core.task_lines().into_iter().take(4).collect();
                tasks.extend(
                    core.status(self.now)
                        .actors
                        .iter()
                        .map(|a| format!("actor {} {} inc {}", a.actor_id, a.state, a.incarnation)),
                );
                leaks.push(format!("node {i} still holds {c:?}: {objects:?} {tasks:?}"));
            }
        }
        for what in leaks {
            self.violation(what);
        }
    }

    /// Every rule, at the end of a run: all drivers exit, the mesh settles, and nothing is
    /// left anywhere.
    pub fn finish(&mut self, settle: Duration) -> Vec<Violation> {
        self.check_progress(settle * 4);
        for d in 0..self.drivers.len() {
            self.exit(d);
        }
        self.run_for(settle);
        self.check_empty();
        self.violations.clone()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.core.as_mut() {
                c.store_mut().destroy();
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.scratch.display(), error = %e, "cannot remove the simulator's directory");
            }
        }
    }
}

static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An argument of a simulated task.
#[derive(Clone, Debug)]
pub enum SimArg {
    /// Bytes.
    Value(Vec<u8>),
    /// The result of an earlier task the driver holds.
    Ref(ObjectId),
}

/// Options of a simulated task.
#[derive(Clone, Copy, Debug)]
pub struct TaskOpts {
    /// CPUs it holds.
    pub cpus: f64,
    /// Retries.
    pub retries: u32,
}

impl Default for TaskOpts {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            retries: 3,
        }
    }
}

fn brief(msg: &PeerMsg) -> String {
    match msg {
        PeerMsg::Submit(rt) => format!("Submit {}", rt.spec.task_id),
        PeerMsg::Refuse { task, reason } => format!("Refuse {task} {reason}"),
        PeerMsg::Object { id, .. } => format!("Object {id}"),
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

fn tag(client: ClientId, seq: u64) -> Vec<u8> {
    let mut v = b"call".to_vec();
    v.extend_from_slice(&client.0.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v
}

fn call_tag(b: &[u8]) -> Option<(ClientId, u64)> {
    let rest = b.strip_prefix(b"call")?;
    if rest.len() != 16 {
        return None;
    }
    let mut c = [0u8; 8];
    let mut s = [0u8; 8];
    c.copy_from_slice(&rest[..8]);
    s.copy_from_slice(&rest[8..]);
    Some((ClientId(u64::from_le_bytes(c)), u64::from_le_bytes(s)))
}
