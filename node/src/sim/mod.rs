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
//!   and store are empty, and no store file is left;
//! - the store's files are where the core's index says: a writer told `Created` finds its
//!   partial file, a task finds its shared arguments in memory, a peer serving an object
//!   has its file, a spill or restore finds the file it moves (a reader told a value whose
//!   file moved since asks again, as the SDK does, a bounded number of times).
//!
//! Large objects are simulated without bytes: each node's store files are a model
//! ([`SimFiles`]) that the core's store ops change in the order they were issued, taking
//! virtual time in proportion to their size; drivers put large objects and tasks return
//! them, and peers pull them from each other through the same serve / pull exchange as the
//! real mesh.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_protocol::mesh::{actor_key, name_key, ActorLocation, LoadReport, PeerKey, PeerMsg};
use shoal_protocol::{
    codec, ActorCreate, ActorId, ActorToken, Arg, ArgValue, BinaryId, BinaryInfo, ClientId,
    CreateOutcome, Digest, ExecTask, ExitInfo, Hello, HostActor, NodeId, ObjectId, ObjectValue,
    ResourceSet, ReturnValue, Role, SharedObject, TaskError, TaskId, TaskKind, TaskOutcome,
    TaskSpec, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};

use crate::config::NodeConfig;
use crate::core::sched::{SchedConfig, Scheduler, WorkerId};
use crate::core::{
    ConnId, DhtOp, Input, Job, JobDone, NodeCore, Output, PeerConfig, ServedObject, WorkerEnd,
};
use crate::store::{OpKind, StoreDone, StoreFault, StoreOp};

mod files;

mod rng;
pub mod scenario;
pub mod swim;

pub use files::SimFiles;
pub use rng::Rng;

/// The binary every simulated driver runs.
const BINARY: BinaryId = BinaryId([7; 32]);
/// How often peers gossip their load.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// How long a worker's report of a finished task takes to reach its node (less than the
/// millisecond its death takes to be seen, so the two keep their order).
const WORKER_REPORT_LATENCY: Duration = Duration::from_micros(100);
/// How long after its links go silent a peer is declared lost.
const FAILURE_DETECTION: Duration = Duration::from_secs(1);
/// How long a worker process takes to start.
const WORKER_START: Duration = Duration::from_millis(20);
/// Each simulated node's store.
const STORE_BYTES: u64 = 64 << 20;
/// How often a reader may find a value's file moved before that is a violation (the SDK's
/// bound).
const MAX_MOVES: u32 = 8;

/// How a simulated mesh behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Peers.
    pub nodes: usize,
    /// CPUs of each peer.
    pub cpus: Vec<f64>,
    /// One-way latency of a link: between these bounds.
    pub latency: (Duration, Duration),
    /// The chance that a spill or a restore fails (a disk error).
    pub store_faults: f64,
    /// Peers whose code policy rejects the drivers' binary (as unsigned): their fetches of
    /// it end rejected.
    pub rejects_code: Vec<usize>,
    /// Each node's `--lineage-bytes`.
    pub lineage_bytes: u64,
    /// Each node's labels (`--label`); none for nodes past the end.
    pub labels: Vec<Vec<(String, String)>>,
    /// Each node's resources besides CPUs (`--resource`); none for nodes past the end.
    pub resources: Vec<Vec<(String, f64)>>,
    /// `None`: every node hears every report (a full view of loads). `Some(k)`: nodes
    /// sample loads, as under SWIM: each report interval a node's report reaches `k` peers
    /// at random (membership's probes carry it), and a node asking for loads gets the
    /// current reports of the members it asks (at random, and the providers of the
    /// resources it names) one round trip later.
    pub sample_loads: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            cpus: vec![1.0; 3],
            latency: (Duration::from_micros(100), Duration::from_millis(2)),
            store_faults: 0.0,
            rejects_code: Vec::new(),
            lineage_bytes: crate::config::DEFAULT_LINEAGE_BYTES,
            labels: Vec::new(),
            resources: Vec::new(),
            sample_loads: None,
        }
    }
}

/// A function a simulated worker knows: what it returns, and how long it takes.
///
/// The function's name says what it does: `echo` returns its arguments joined; `panic`
/// fails with a panic; `crash` kills its worker process; `sleep:<ms>` is `echo` that takes
/// that long; `big:<MiB>` returns a shared object of that size (its digest made from the
/// task's id). Anything else is `echo` taking 1 ms.
fn behaviour(function: &str) -> (Duration, Behaviour) {
    if let Some(ms) = function.strip_prefix("sleep:") {
        let ms = ms.parse().unwrap_or(1);
        return (Duration::from_millis(ms), Behaviour::Echo);
    }
    if let Some(mib) = function.strip_prefix("big:") {
        let mib: u64 = mib.parse().unwrap_or(1);
        return (Duration::from_millis(2), Behaviour::Big(mib << 20));
    }
    match function {
        "keep" => (Duration::from_millis(1), Behaviour::Keep),
        "pass" => (Duration::from_millis(1), Behaviour::Pass),
        "panic" => (Duration::from_millis(1), Behaviour::Panic),
        "crash" => (Duration::from_millis(5), Behaviour::Crash),
        _ => (Duration::from_millis(1), Behaviour::Echo),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Echo,
    /// Holds the refs its arguments name (each argument an object id) past its end, as a
    /// process that keeps refs it received in a state does, until [`Sim::drop_kept`].
    Keep,
    /// Returns the refs its arguments name inside its result (echo, with them `nested`).
    Pass,
    Panic,
    Crash,
    Big(u64),
}

/// The value task `task` returns when it is `big:<size>`.
pub fn big_result(task: TaskId, size: u64) -> SharedObject {
    SharedObject {
        size,
        digest: Some(Digest::of(&ObjectId::for_return(task, 0).0)),
    }
}

/// Whether value `got` is what `want` says: a large value's digest may not be taken yet
/// (a put's, a result's, before it leaves its node) on either side, but two digests given
/// agree.
fn same_value(got: &ObjectValue, want: &ObjectValue) -> bool {
    match (got, want) {
        (ObjectValue::Shared(g), ObjectValue::Shared(w)) => {
            g.size == w.size && (g.digest.is_none() || w.digest.is_none() || g.digest == w.digest)
        }
        _ => got == want,
    }
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
    /// A store op of `node` (in its life `boot`) is carried out.
    Store { node: usize, boot: u64, op: StoreOp },
    /// A transfer of an object from `from` to `to` for a pull ends.
    Transfer { request: u64 },
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
    /// A large result whose file it asked for: (request, task, object).
    creating: Option<(u64, TaskId, SharedObject)>,
    /// The streaming generator it runs: (task, its next item, how far it may run).
    stream: Option<(TaskId, u32, u32)>,
    /// How far the node said each generator handed to it may run.
    paces: HashMap<TaskId, u32>,
    /// Generators it was told to stop (not forced) while it ran them: each stops before
    /// its next item, as the SDK's does.
    interrupted: HashSet<TaskId>,
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
    /// Large puts whose file it asked for, by request: (ticket, object).
    creating: BTreeMap<u64, (ObjectId, SharedObject)>,
    /// Large objects it put and holds.
    puts: BTreeMap<ObjectId, SharedObject>,
    /// Results it holds and has not asked for yet ([`Sim::submit_held`]), with their
    /// expected value when known.
    held: BTreeMap<ObjectId, Option<ObjectValue>>,
    /// Answers to its state queries ([`Sim::ask_state`]), by request.
    states: BTreeMap<u64, StateResult>,
    /// Answers to its lookups by name ([`Sim::lookup`]), by request: the actor found and
    /// the handle object it holds for it.
    found: BTreeMap<u64, (Option<ActorId>, Option<ObjectId>)>,
    /// Its next request number.
    request: u64,
    /// Warnings its node sent it.
    warnings: Vec<String>,
    /// Lines of its tasks' output its node sent it.
    log_lines: Vec<shoal_protocol::state::LogLine>,
}

/// What a state query of a driver got.
pub type StateResult =
    Result<Box<shoal_protocol::state::StateReply>, shoal_protocol::state::StateError>;

/// What a driver expects of a result.
#[derive(Clone, Debug)]
pub(crate) struct Expect {
    since: Instant,
    /// The value it must be, when known.
    value: Option<ObjectValue>,
    /// How often its file had moved when it arrived.
    moves: u32,
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
    /// Its store's files.
    files: SimFiles,
    /// Bumped at every boot: store ops of an earlier life are dropped.
    boot: u64,
    /// When its store's last op issued will have run (ops run one after another).
    store_clock: Instant,
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
    /// Links that carry messages but not load reports, as (from, to).
    muted: BTreeSet<(usize, usize)>,
    /// Bumped on every cut and heal of a link and crash of a node: what was in flight
    /// before is dropped.
    epochs: HashMap<(usize, usize), u64>,
    /// When each link last delivered (links deliver in order).
    link_clock: HashMap<(usize, usize), Instant>,
    /// The mesh's directory: records (with the node that last put each) and providers.
    records: HashMap<Vec<u8>, Vec<u8>>,
    record_owners: HashMap<Vec<u8>, usize>,
    providers: HashMap<ObjectId, BTreeSet<usize>>,
    /// Drivers, by id.
    pub(crate) drivers: Vec<Driver>,
    /// How many times each task started running, and its budget.
    runs: HashMap<TaskId, (u32, u32)>,
    /// The tasks with several returns, and how many.
    returns: HashMap<TaskId, u32>,
    /// The streaming generators, and how many items each yields.
    streams: HashMap<TaskId, u32>,
    /// The end (first return) of each streaming generator, and its task.
    stream_ends: HashMap<ObjectId, TaskId>,
    /// The items each driver was told of, by generator: the highest, in order.
    stream_seen: HashMap<TaskId, u32>,
    /// Actor calls submitted, by result.
    calls: HashMap<ObjectId, TaskId>,
    /// The handle object of each actor a driver created.
    handles: HashMap<ActorId, ObjectId>,
    /// Refs `keep` tasks hold, as (node, worker's connection, ids).
    kept: Vec<(usize, ConnId, Vec<ObjectId>)>,
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
    /// Rounds of asking for loads the nodes made (sampled loads).
    pub load_asks: u64,
    /// What the next task submitted holds, when not only CPUs ([`Sim::submit_needing`]).
    next_resources: Option<ResourceSet>,
    /// Object requests of pulls, by request number.
    pulls: HashMap<u64, Pull>,
    next_request: u64,
    /// Transfers a test forged ([`Sim::forge_pull`]), by request number: whether the
    /// holder served the bytes, once it answered.
    forged_pulls: HashMap<u64, Option<bool>>,
    /// Whether a test forged messages (then refusals are expected).
    forged: bool,
    /// Grants lost to faults, by the node they were for: ids they covered.
    lost_grants: HashMap<usize, u64>,
}

/// A pull under way: `to` asked `from` for object `id`.
#[derive(Debug)]
struct Pull {
    to: usize,
    to_boot: u64,
    from: usize,
    from_boot: u64,
    id: ObjectId,
    object: SharedObject,
    /// The core's number for it.
    pull: u64,
    /// Holders left to try.
    holders: Vec<PeerKey>,
    /// The link epoch when the transfer started.
    epoch: u64,
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
            muted: BTreeSet::new(),
            epochs: HashMap::new(),
            link_clock: HashMap::new(),
            records: HashMap::new(),
            record_owners: HashMap::new(),
            providers: HashMap::new(),
            drivers: Vec::new(),
            runs: HashMap::new(),
            returns: HashMap::new(),
            streams: HashMap::new(),
            stream_ends: HashMap::new(),
            stream_seen: HashMap::new(),
            calls: HashMap::new(),
            handles: HashMap::new(),
            kept: Vec::new(),
            call_order: HashMap::new(),
            violations: Vec::new(),
            seen_start: HashMap::new(),
            detecting: BTreeSet::new(),
            knows: BTreeSet::new(),
            trace: std::env::var_os("SHOAL_SIM_TRACE").is_some(),
            inputs: 0,
            load_asks: 0,
            next_resources: None,
            pulls: HashMap::new(),
            next_request: 1,
            forged_pulls: HashMap::new(),
            forged: false,
            lost_grants: HashMap::new(),
            config,
        };
        for i in 0..sim.config.nodes {
            let mut key = [0u8; 38];
            key[0] = 0xaa;
            key[1..9].copy_from_slice(&(i as u64).to_be_bytes());
            // A name only: the simulator touches no file.
            let store_parent = PathBuf::from(format!("/shoal-sim/node-{i}"));
            sim.nodes.push(SimNode {
                core: None,
                key: PeerKey::from_bytes(&key).unwrap_or_else(|| unreachable!()),
                workers: BTreeMap::new(),
                procs: HashMap::new(),
                load: None,
                seq: 0,
                started_ms: 0,
                store_parent,
                files: SimFiles::default(),
                boot: 0,
                store_clock: start,
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

    /// The CPUs of each peer.
    pub fn cpus(&self) -> Vec<f64> {
        (0..self.nodes.len())
            .map(|i| self.config.cpus.get(i).copied().unwrap_or(1.0))
            .collect()
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
        let labels = self.config.labels.get(i).cloned().unwrap_or_default();
        let node = &mut self.nodes[i];
        let config = NodeConfig {
            socket: node.store_parent.join("node.sock"),
            cpus,
            store_parent: node.store_parent.clone(),
            spill_parent: node.store_parent.join("spill"),
            store_bytes: STORE_BYTES,
            embedded: false,
            lineage_bytes: self.config.lineage_bytes,
            resources: self.config.resources.get(i).cloned().unwrap_or_default(),
            #[cfg(feature = "mesh")]
            mesh: None,
            gpu_devices: Vec::new(),
            ..NodeConfig::default()
        };
        let node_id = NodeId([i as u8; 16]);
        let store_dir = config.store_parent.join("store");
        node.files = SimFiles::default();
        node.boot += 1;
        node.store_clock = self.now;
        let sched = Scheduler::new(SchedConfig {
            total: config.total_resources(),
            max_workers: config.max_workers,
            pipeline_depth: config.pipeline_depth,
            short_task: Duration::from_millis(2),
            max_start_failures: 3,
            gpu_devices: Vec::new(),
        });
        let peer = PeerConfig {
            me: node.key,
            target: "sim".into(),
            accepts_code: true,
            labels,
            loads: match self.config.sample_loads {
                Some(_) => crate::core::LoadView::sampled(),
                None => crate::core::LoadView::Full,
            },
        };
        node.started_ms = self.now.duration_since(self.start).as_millis() as u64 + 1;
        node.seq = 0;
        node.core = Some(NodeCore::new(
            self.now,
            node_id,
            config,
            sched,
            store_dir,
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
        // With a trace, the core's logs say which node they come from.
        let span = self
            .trace
            .then(|| tracing::debug_span!("sim", node = i).entered());
        core.handle(now, input);
        self.drain(i);
        drop(span);
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
                    self.lost(to, &msg);
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
                        creating: None,
                        stream: None,
                        paces: HashMap::new(),
                        interrupted: HashSet::new(),
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
            Output::AskLoads(ask) => self.ask_loads(i, ask),
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
                    // A node withdraws what it published, not another's newer record of the
                    // same key (as a DHT node removes only its own copy).
                    if self.record_owners.get(&key) == Some(&i) {
                        self.record_owners.remove(&key);
                        self.records.remove(&key);
                    }
                }
            },
            Output::Job(job) => self.job(i, job),
            Output::Store(op) => {
                // One after another, each taking time in proportion to what it moves.
                let took = match &op.kind {
                    OpKind::Spill { size, .. } => Duration::from_micros(size >> 11),
                    OpKind::Restore { id, .. } => {
                        let size = self.nodes[i].files.disk_size(id).unwrap_or(0);
                        Duration::from_micros(size >> 11)
                    }
                    _ => Duration::from_micros(20),
                };
                let node = &mut self.nodes[i];
                let at = node.store_clock.max(self.now) + took;
                node.store_clock = at;
                let boot = node.boot;
                self.schedule(at, Event::Store { node: i, boot, op });
            }
            Output::Serve { request, object } => self.served(i, request, object),
        }
    }

    /// A store op of node `i` runs: the files change as the op says, or it fails.
    fn store_op(&mut self, i: usize, op: StoreOp) {
        let fault = match op.kind {
            OpKind::Spill { .. } | OpKind::Restore { .. } => {
                let p = self.config.store_faults;
                p > 0.0 && self.rng.chance(p)
            }
            _ => false,
        };
        let result = if fault {
            Err(StoreFault::Io("a simulated disk error".into()))
        } else {
            self.nodes[i].files.run(&op.kind)
        };
        if let (Err(e @ StoreFault::Mismatch(_)), OpKind::Seal { .. }) = (&result, &op.kind) {
            // Every simulated writer fills its file before it seals it.
            self.violation(format!("node {i}: {e}"));
        }
        if let (Err(e), None) = (&result, op.op) {
            self.violation(format!("node {i}: store op {:?} failed: {e}", op.kind));
        }
        if let Err(e @ StoreFault::Corrupted(_)) = &result {
            // Nothing here damages a file: the digest recorded is wrong.
            self.violation(format!("node {i}: {e}"));
        }
        if let Some(op) = op.op {
            let (result, digest) = match result {
                Ok(digest) => (Ok(()), digest),
                Err(e) => (Err(e), None),
            };
            self.input(i, Input::Store(StoreDone { op, result, digest }));
        }
    }

    /// Node `i` answers object request `request` of a pull.
    fn served(&mut self, i: usize, request: u64, object: Option<ServedObject>) {
        if let Some(answer) = self.forged_pulls.get_mut(&request) {
            *answer = Some(object.is_some());
            if let (Some(o), Some(core)) = (&object, self.nodes[i].core.as_mut()) {
                core.object_served(o.id);
            }
            return;
        }
        let current = self
            .pulls
            .get(&request)
            .is_some_and(|p| p.from == i && p.from_boot == self.nodes[i].boot);
        if !current {
            // The pull gave up on this holder: the transfer never starts.
            if let (Some(o), Some(core)) = (&object, self.nodes[i].core.as_mut()) {
                core.object_served(o.id);
            }
            return;
        }
        let Some(object) = object else {
            self.trace(format_args!("{i} has no copy to serve"));
            self.pull_next(request);
            return;
        };
        let Some((from, to)) = self.pulls.get(&request).map(|p| (p.from, p.to)) else {
            return;
        };
        if !self.nodes[i].files.in_memory(&object.id) {
            let what = format!("node {i} serves object {} without its file", object.id);
            self.violation(what);
        }
        let content = self.nodes[i].files.content(&object.id);
        let wanted = self.pulls.get(&request).and_then(|p| p.object.digest);
        if content.is_some_and(|c| c != object.digest) || wanted != Some(object.digest) {
            let what = format!(
                "node {i} serves object {} as digest {}, its bytes have {content:?}, the puller wants {wanted:?}",
                object.id, object.digest
            );
            self.violation(what);
        }
        let epoch = self.epochs.get(&(from, to)).copied().unwrap_or(0);
        if let Some(p) = self.pulls.get_mut(&request) {
            p.epoch = epoch;
        }
        let at = self.now + self.latency() + Duration::from_micros(object.size >> 10);
        self.schedule(at, Event::Transfer { request });
    }

    /// Asks the next holder of a pull for the object, or fails the pull.
    fn pull_next(&mut self, request: u64) {
        let Some(pull) = self.pulls.get_mut(&request) else {
            return;
        };
        let to = pull.to;
        let holders = std::mem::take(&mut pull.holders);
        let mut rest = holders.into_iter();
        let from = rest.by_ref().find_map(|key| {
            let n = self.nodes.iter().position(|n| n.key == key)?;
            (n != to && self.alive(n) && !self.cut.contains(&(to, n))).then_some(n)
        });
        let Some(from) = from else {
            self.pull_failed(request, "no holder can be reached".into());
            return;
        };
        let from_boot = self.nodes[from].boot;
        let id = match self.pulls.get_mut(&request) {
            Some(p) => {
                p.holders = rest.collect();
                p.from = from;
                p.from_boot = from_boot;
                p.id
            }
            None => return,
        };
        let at = self.now + self.latency();
        let peer = self.nodes[to].key;
        self.schedule(
            at,
            Event::Input {
                node: from,
                input: Input::Serve { request, peer, id },
            },
        );
    }

    fn pull_failed(&mut self, request: u64, message: String) {
        let Some(pull) = self.pulls.remove(&request) else {
            return;
        };
        if self.nodes[pull.to].boot != pull.to_boot {
            return;
        }
        let done = JobDone::Pulled {
            pull: pull.pull,
            id: pull.id,
            object: pull.object,
            result: Err(message),
        };
        self.input(pull.to, Input::Job(done));
    }

    /// The bytes of a pull have crossed the link (or the link broke meanwhile).
    fn transfer(&mut self, request: u64) {
        let Some(pull) = self.pulls.get(&request) else {
            return;
        };
        let (from, to, id, object, number) = (pull.from, pull.to, pull.id, pull.object, pull.pull);
        // The serving side's transfer ends: the object may move again.
        if self.nodes[from].boot == pull.from_boot {
            if let Some(core) = self.nodes[from].core.as_mut() {
                core.object_served(id);
                self.drain(from);
            }
        }
        let Some(pull) = self.pulls.get(&request) else {
            return;
        };
        let broke = !self.link_up(from, to, pull.epoch) || self.nodes[to].boot != pull.to_boot;
        if broke {
            self.pull_next(request);
            return;
        }
        self.pulls.remove(&request);
        // (A pull the core gave up on writes into a file that is gone, harmlessly; or, in
        // this model, into a newer pull's file, which that pull writes again.)
        match object.digest {
            Some(content) => {
                self.nodes[to]
                    .files
                    .write_partial(&id, object.size, content);
            }
            None => self.violation(format!("node {to} pulls object {id} without its digest")),
        }
        let done = JobDone::Pulled {
            pull: number,
            id,
            object,
            result: Ok(()),
        };
        self.input(to, Input::Job(done));
    }

    fn job(&mut self, i: usize, job: Job) {
        let done = match job {
            Job::PutRecords { records } => {
                for (key, value) in records {
                    self.record_owners.insert(key.clone(), i);
                    self.records.insert(key, value);
                }
                return;
            }
            Job::Pull {
                id,
                object,
                holders,
                pull,
            } => {
                let request = self.next_request;
                self.next_request += 1;
                let to_boot = self.nodes[i].boot;
                self.pulls.insert(
                    request,
                    Pull {
                        to: i,
                        to_boot,
                        from: i,
                        from_boot: 0,
                        id,
                        object,
                        pull,
                        holders,
                        epoch: 0,
                    },
                );
                self.pull_next(request);
                return;
            }
            Job::FetchBinary { binary, .. } => JobDone::BinaryFetched {
                binary,
                result: if self.config.rejects_code.contains(&i) {
                    Err(crate::core::FetchFailure::Rejected(
                        "the binary is not signed".into(),
                    ))
                } else {
                    Ok(PathBuf::from("/sim/binary"))
                },
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
            Job::ResolveName { asker, name } => {
                let found = self
                    .records
                    .get(&name_key(&name))
                    .and_then(|b| codec::decode::<ActorId>(b, 64).ok())
                    .and_then(|actor| Some((actor, self.locate_record(actor)?.0)));
                JobDone::NameResolved { asker, name, found }
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

    fn locate(&self, actor: ActorId) -> Option<(PeerKey, u32)> {
        self.locate_record(actor)
            .map(|(peer, loc)| (peer, loc.epoch))
    }

    fn locate_record(&self, actor: ActorId) -> Option<(PeerKey, ActorLocation)> {
        let bytes = self.records.get(&actor_key(&actor))?;
        let loc: ActorLocation = codec::decode(bytes, 4096).ok()?;
        Some((PeerKey::from_bytes(&loc.peer)?, loc))
    }

    fn deliver_to_proc(&mut self, i: usize, conn: ConnId, msg: ToClient) {
        match self.nodes[i].procs.get(&conn).copied() {
            Some(Proc::Driver(d)) => self.deliver_to_driver(d, msg),
            Some(Proc::Worker(w)) => self.deliver_to_worker(i, w, msg),
            None => {}
        }
    }

    fn deliver_to_driver(&mut self, d: usize, msg: ToClient) {
        let node = self.drivers[d].node;
        let (id, value) = match msg {
            ToClient::Object { id, value } => (id, value),
            ToClient::State { request, reply } => {
                self.drivers[d].states.insert(request, reply);
                return;
            }
            ToClient::ActorFound {
                request,
                actor,
                held,
            } => {
                let found = (actor.map(|a| a.actor_id), held);
                self.drivers[d].found.insert(request, found);
                return;
            }
            ToClient::Warning { message } => {
                self.drivers[d].warnings.push(message);
                return;
            }
            ToClient::Log { lines } => {
                self.drivers[d].log_lines.extend(lines);
                return;
            }
            ToClient::StreamItem { task, index, value } => {
                // Each item once, in order, as its worker made it; taken and dropped at once.
                let seen = self.stream_seen.entry(task).or_insert(0);
                let expected = *seen + 1;
                *seen = (*seen).max(index);
                if index != expected {
                    let what = format!(
                        "driver {d}: item {index} of {task} after item {}",
                        expected - 1
                    );
                    self.violation(what);
                }
                if let Some(v) = value {
                    if *v != other_return(task, index) {
                        let what = format!("driver {d}: item {index} of {task} is {v:?}");
                        self.violation(what);
                    }
                }
                let id = ObjectId::for_return(task, index);
                self.send(d, ToNode::StreamTaken { task, taken: index });
                self.send(d, ToNode::Release { ids: vec![id] });
                return;
            }
            ToClient::Created { request, result } => {
                let Some((ticket, object)) = self.drivers[d].creating.remove(&request) else {
                    return;
                };
                if let Ok(CreateOutcome::Write) = result {
                    let content = object.digest.unwrap_or(Digest::of(&ticket.0));
                    if !self.nodes[node]
                        .files
                        .write_partial(&ticket, object.size, content)
                    {
                        self.violation(format!("driver {d}: no partial file for {ticket}"));
                    }
                }
                if result.is_ok() {
                    // A `put` (not hashed: its ticket is its id) or a content-addressed one.
                    let (id, sealed) = match object.digest {
                        Some(d) if ticket.0[31].is_multiple_of(2) => {
                            (ObjectId::from_digest(d), object)
                        }
                        _ => (
                            ticket,
                            SharedObject {
                                digest: None,
                                ..object
                            },
                        ),
                    };
                    self.drivers[d].puts.insert(id, object);
                    self.send(
                        d,
                        ToNode::Seal {
                            ticket,
                            id,
                            object: sealed,
                            nested: Vec::new(),
                        },
                    );
                }
                return;
            }
            _ => return,
        };
        let Some(expect) = self.drivers[d].pending.get(&id).cloned() else {
            return;
        };
        if let ObjectValue::Shared(_) = &value {
            if !self.nodes[node].files.in_memory(&id) {
                // It moved (spilled) since: asked for again, as the SDK does.
                if expect.moves >= MAX_MOVES {
                    let what = format!("driver {d}: object {id} moved {MAX_MOVES} times");
                    self.violation(what);
                } else if let Some(e) = self.drivers[d].pending.get_mut(&id) {
                    e.moves += 1;
                    self.send(d, ToNode::Get { ids: vec![id] });
                    return;
                }
            }
        }
        self.drivers[d].pending.remove(&id);
        let wrong = match (&value, &expect.value) {
            (ObjectValue::Error(_), _) | (_, None) => false,
            (got, Some(want)) => !same_value(got, want),
        };
        if wrong {
            let what = format!(
                "driver {d}: object {id} is {value:?}, not {:?}",
                expect.value
            );
            self.violation(what);
        }
        if let (Some(task), false) = (
            self.stream_ends.get(&id),
            matches!(value, ObjectValue::Error(_)),
        ) {
            // A stream ends after all its items.
            let (items, seen) = (
                self.streams.get(task).copied(),
                self.stream_seen.get(task).copied(),
            );
            if items != Some(seen.unwrap_or(0)) {
                let what =
                    format!("driver {d}: stream {task} ended after {seen:?} of {items:?} items");
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
            ToClient::StreamAck { task, allowed } => {
                let pace = worker.paces.entry(task).or_insert(0);
                *pace = (*pace).max(allowed);
                if worker.stream.is_some_and(|(t, _, _)| t == task) {
                    // The generator it runs, maybe waiting for this.
                    self.stream_step(i, w);
                }
            }
            ToClient::Cancel { task, force: false }
                if worker.busy
                    && self.streams.contains_key(&task)
                    && worker.queue.front().is_some_and(|e| e.task_id == task) =>
            {
                // A generator it runs stops before its next item, as the SDK's does: now,
                // if it waits for its consumer.
                worker.interrupted.insert(task);
                if worker.stream.is_some_and(|(t, _, _)| t == task) {
                    self.stream_step(i, w);
                }
            }
            // As the SDK's worker does: forced, it exits if it runs that task, before it
            // begins another; a task it has not begun it never begins, and reports so; one it
            // runs runs on (a blocking task, which a cancel does not interrupt).
            ToClient::Cancel { task, force }
                if force
                    && worker.busy
                    && worker.queue.front().is_some_and(|e| e.task_id == task) =>
            {
                self.trace(format_args!("node {i} worker {w} cancels {task}"));
                let exit = ExitInfo {
                    code: Some(shoal_protocol::CANCELLED_EXIT),
                    signal: None,
                };
                self.end_worker(i, w, exit);
            }
            ToClient::Cancel { task, .. } => {
                let skip = if worker.busy { 1 } else { 0 };
                let Some(pos) = worker
                    .queue
                    .iter()
                    .skip(skip)
                    .position(|e| e.task_id == task)
                else {
                    return;
                };
                worker.queue.remove(pos + skip);
                let conn = worker.conn;
                self.trace(format_args!("node {i} worker {w} skips cancelled {task}"));
                let done = ToNode::Done {
                    task_id: task,
                    outcome: TaskOutcome::Err(TaskError::Cancelled { task }),
                    nested: Vec::new(),
                    more: Vec::new(),
                    returned_error: false,
                };
                self.input(
                    i,
                    Input::FromProc {
                        conn,
                        msgs: vec![done],
                    },
                );
            }
            ToClient::HostActor(HostActor {
                actor_id,
                incarnation,
                ..
            }) => {
                worker.actor = Some((actor_id, incarnation));
                let conn = worker.conn;
                let started = ToNode::ActorStarted {
                    actor: actor_id,
                    result: Ok(()),
                };
                self.report_after(i, conn, Duration::from_millis(1), started);
            }
            ToClient::Created { request, result } => {
                let Some((asked, task, object)) = worker.creating else {
                    return;
                };
                if asked != request {
                    return;
                }
                worker.creating = None;
                worker.busy = false;
                let conn = worker.conn;
                let ret = ObjectId::for_return(task, 0);
                let outcome = match result {
                    Ok(_) => {
                        let content = object.digest.unwrap_or(Digest::of(&ret.0));
                        if !self.nodes[i]
                            .files
                            .write_partial(&ret, object.size, content)
                        {
                            self.violation(format!("node {i}: no partial file for result {ret}"));
                        }
                        // As the SDK's: a result is not hashed by its worker.
                        TaskOutcome::Ok(ObjectValue::Shared(SharedObject {
                            digest: None,
                            ..object
                        }))
                    }
                    Err(e) => TaskOutcome::Err(TaskError::ResultStore {
                        message: e.to_string(),
                    }),
                };
                let more = self.more_returns(task, &outcome);
                self.input(
                    i,
                    Input::FromProc {
                        conn,
                        msgs: vec![ToNode::Done {
                            task_id: task,
                            outcome,
                            nested: Vec::new(),
                            more,
                            returned_error: false,
                        }],
                    },
                );
                self.start_next(i, w);
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
        let shared: Vec<ObjectId> = exec
            .args
            .iter()
            .filter_map(|a| match a {
                ArgValue::Shared(id, _) => Some(*id),
                ArgValue::Inline(_) => None,
            })
            .collect();
        for id in shared {
            if !self.nodes[i].files.in_memory(&id) {
                let what = format!("node {i}: task {task} runs without argument {id} in memory");
                self.violation(what);
            }
        }
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
        let streaming = worker.queue.front().is_some_and(|e| {
            self.streams.contains_key(&e.task_id)
                && matches!(behaviour(&e.function).1, Behaviour::Echo)
        });
        if streaming {
            self.stream_step(i, w);
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
                origin: None,
            }),
            Behaviour::Big(size) => {
                // Its result goes to the store: a file first, then `Done`.
                let request = self.next_request;
                self.next_request += 1;
                let object = big_result(exec.task_id, size);
                if let Some(worker) = self.nodes[i].workers.get_mut(&w) {
                    worker.busy = true;
                    worker.creating = Some((request, exec.task_id, object));
                }
                let id = ObjectId::for_return(exec.task_id, 0);
                self.input(
                    i,
                    Input::FromProc {
                        conn,
                        msgs: vec![ToNode::Create { request, id, size }],
                    },
                );
                return;
            }
            Behaviour::Echo | Behaviour::Keep | Behaviour::Pass => {
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
        // The refs its arguments name, which it reads (and so holds) as a program does.
        let refs: Vec<ObjectId> = match what {
            Behaviour::Keep | Behaviour::Pass => exec
                .args
                .iter()
                .filter_map(|a| match a {
                    ArgValue::Inline(b) => <[u8; 32]>::try_from(b.as_slice()).ok(),
                    ArgValue::Shared(..) => None,
                })
                .map(ObjectId)
                .collect(),
            _ => Vec::new(),
        };
        if !refs.is_empty() {
            let hold = ToNode::Hold { ids: refs.clone() };
            self.report_after(i, conn, WORKER_REPORT_LATENCY, hold);
        }
        let nested = match what {
            Behaviour::Keep => {
                self.kept.push((i, conn, refs));
                Vec::new()
            }
            Behaviour::Pass => {
                // Its refs go into the result; its own holds go once it is sent.
                let release = ToNode::Release { ids: refs.clone() };
                self.report_after(i, conn, WORKER_REPORT_LATENCY * 2, release);
                refs
            }
            _ => Vec::new(),
        };
        // Its report travels through the socket while the worker begins its next task: the
        // node may still take this one for running (and, say, stop it) meanwhile.
        let more = self.more_returns(exec.task_id, &outcome);
        let done = ToNode::Done {
            task_id: exec.task_id,
            outcome,
            nested,
            more,
            returned_error: false,
        };
        self.report_after(i, conn, WORKER_REPORT_LATENCY, done);
        self.start_next(i, w);
    }

    /// Worker `w` runs the streaming generator at the head of its queue on: it yields the
    /// items it may (each its own report), and ends once it yielded them all.
    fn stream_step(&mut self, i: usize, w: WorkerId) {
        let Some(worker) = self.nodes[i].workers.get_mut(&w) else {
            return;
        };
        let Some(exec) = worker.queue.front() else {
            return;
        };
        let task = exec.task_id;
        let Some(&total) = self.streams.get(&task) else {
            return;
        };
        if worker.interrupted.remove(&task) {
            worker.stream = None;
            worker.busy = false;
            worker.paces.remove(&task);
            worker.queue.pop_front();
            let conn = worker.conn;
            self.trace(format_args!("node {i} worker {w} stops generator {task}"));
            let done = ToNode::Done {
                task_id: task,
                outcome: TaskOutcome::Err(TaskError::Cancelled { task }),
                nested: Vec::new(),
                more: Vec::new(),
                returned_error: false,
            };
            self.report_after(i, conn, WORKER_REPORT_LATENCY, done);
            self.start_next(i, w);
            return;
        }
        let first = exec.stream.map_or(0, |a| a.get());
        let pace = worker.paces.entry(task).or_insert(0);
        *pace = (*pace).max(first);
        let allowed = *pace;
        let mut next = match worker.stream {
            Some((t, next, _)) if t == task => next,
            _ => 1,
        };
        let conn = worker.conn;
        let mut reports = Vec::new();
        while next <= total && next <= allowed {
            reports.push(ToNode::Yield {
                task,
                index: next,
                item: ReturnValue {
                    value: other_return(task, next),
                    nested: Vec::new(),
                },
            });
            next += 1;
        }
        let ended = next > total;
        if ended {
            worker.stream = None;
            worker.busy = false;
            worker.paces.remove(&task);
            worker.queue.pop_front();
            let count = u64::from(total);
            let value = shoal_protocol::codec::encode(&count).unwrap_or_default();
            reports.push(ToNode::Done {
                task_id: task,
                outcome: TaskOutcome::Ok(ObjectValue::Inline(value)),
                nested: Vec::new(),
                more: Vec::new(),
                returned_error: false,
            });
        } else {
            worker.stream = Some((task, next, allowed));
            worker.busy = true;
        }
        for r in reports {
            self.report_after(i, conn, WORKER_REPORT_LATENCY, r);
        }
        if ended {
            self.start_next(i, w);
        }
    }

    /// A worker's message on connection `conn` reaches node `i` after `delay`.
    fn report_after(&mut self, i: usize, conn: ConnId, delay: Duration, msg: ToNode) {
        let at = self.now + delay;
        let input = Input::FromProc {
            conn,
            msgs: vec![msg],
        };
        self.schedule(at, Event::Input { node: i, input });
    }

    /// Worker `w` of node `i` dies (killed by `signal`).
    fn kill_worker(&mut self, i: usize, w: WorkerId, signal: i32) {
        let exit = ExitInfo {
            code: None,
            signal: Some(signal),
        };
        self.end_worker(i, w, exit);
    }

    /// Worker `w` of node `i` ends with `exit`: what it ran or held is gone with it.
    fn end_worker(&mut self, i: usize, w: WorkerId, exit: ExitInfo) {
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
                        exit,
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

    /// Node `i`'s report now (a new one), if it runs and has a load.
    fn report_of(&mut self, i: usize) -> Option<LoadReport> {
        let load = self.nodes[i].load.clone()?;
        if !self.alive(i) {
            return None;
        }
        self.nodes[i].seq += 1;
        Some(LoadReport {
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
            labels: self.config.labels.get(i).cloned().unwrap_or_default(),
        })
    }

    /// Node `i` asks peers for their loads: their reports arrive one round trip later.
    fn ask_loads(&mut self, i: usize, ask: crate::core::LoadAsk) {
        self.load_asks += 1;
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.alive(j))
            .collect();
        // At random, each once, not those whose loads the asker has.
        let mut pool: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&j| ask.skip.binary_search(&self.nodes[j].key).is_err())
            .collect();
        let mut asked: Vec<usize> = Vec::new();
        while asked.len() < ask.count && !pool.is_empty() {
            let k = self.rng.below(pool.len() as u64) as usize;
            asked.push(pool.swap_remove(k));
        }
        for name in &ask.having {
            let providers = alive.iter().copied().filter(|&j| {
                self.config
                    .resources
                    .get(j)
                    .is_some_and(|r| r.iter().any(|(n, _)| n == name))
            });
            for j in providers.take(16).collect::<Vec<_>>() {
                if !asked.contains(&j) {
                    asked.push(j);
                }
            }
        }
        for j in asked {
            if self.cut.contains(&(i, j)) || self.cut.contains(&(j, i)) {
                continue;
            }
            let Some(report) = self.report_of(j) else {
                continue;
            };
            let at = self.now + self.latency() + self.latency();
            let epoch = self.epochs.get(&(j, i)).copied().unwrap_or(0);
            self.schedule(
                at,
                Event::Report {
                    from: j,
                    to: i,
                    epoch,
                    report: Box::new(report),
                },
            );
        }
    }

    fn reports(&mut self) {
        let sample = self.config.sample_loads;
        for i in 0..self.nodes.len() {
            let Some(report) = self.report_of(i) else {
                continue;
            };
            // Sampled: the report reaches a few peers at random, as membership's probes
            // carry it; full: every peer.
            let targets: Vec<usize> = match sample {
                None => (0..self.nodes.len()).collect(),
                Some(k) => (0..k)
                    .map(|_| self.rng.below(self.nodes.len() as u64) as usize)
                    .collect(),
            };
            for to in targets {
                if to == i
                    || self.cut.contains(&(i, to))
                    || self.muted.contains(&(i, to))
                    || !self.alive(to)
                {
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
                    self.lost(to, &msg);
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
            Event::Store { node, boot, op } => {
                if self.nodes[node].boot == boot && self.alive(node) {
                    self.store_op(node, op);
                }
            }
            Event::Transfer { request } => self.transfer(request),
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

    /// Load reports from `from` stop reaching `to` (`muted`) or flow again; messages flow
    /// either way. (Gossip is slower than a direct link: a peer back from a partition can
    /// send work before its first report arrives.)
    pub fn mute_reports(&mut self, from: usize, to: usize, muted: bool) {
        self.trace(format_args!("reports {from} -> {to} muted: {muted}"));
        if muted {
            self.muted.insert((from, to));
        } else {
            self.muted.remove(&(from, to));
        }
    }

    /// Node `i` crashes: its core, its workers and its drivers are gone; the others
    /// declare it lost after the failure detector's delay.
    pub fn crash(&mut self, i: usize) {
        if self.nodes[i].core.take().is_none() {
            return;
        }
        self.trace(format_args!("crash {i}"));
        // Its store's files go with it (a new life starts with an empty store).
        self.nodes[i].files = SimFiles::default();
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
            creating: BTreeMap::new(),
            puts: BTreeMap::new(),
            held: BTreeMap::new(),
            states: BTreeMap::new(),
            found: BTreeMap::new(),
            request: 0,
            warnings: Vec::new(),
            log_lines: Vec::new(),
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
                manifest: None,
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

    /// Driver `d` asks its node the state of the mesh (`shoal list`), waiting `timeout` at
    /// most for the other peers; the answer is [`Sim::state_reply`] of the number returned.
    pub fn ask_state(
        &mut self,
        d: usize,
        query: shoal_protocol::state::StateQuery,
        timeout: Duration,
    ) -> u64 {
        self.drivers[d].request += 1;
        let request = self.drivers[d].request;
        let timeout_ms = timeout.as_millis() as u32;
        self.send(
            d,
            ToNode::State {
                request,
                query,
                timeout_ms,
                local: false,
            },
        );
        request
    }

    /// The lines of output driver `d`'s node sent it.
    pub fn log_lines(&self, d: usize) -> &[shoal_protocol::state::LogLine] {
        &self.drivers[d].log_lines
    }

    /// Driver `d`'s program id.
    pub fn client(&self, d: usize) -> shoal_protocol::ClientId {
        self.drivers[d].client
    }

    /// The warnings driver `d`'s node sent it.
    pub fn warnings(&self, d: usize) -> &[String] {
        &self.drivers[d].warnings
    }

    /// The answer to driver `d`'s state query `request`, once it came.
    pub fn state_reply(&self, d: usize, request: u64) -> Option<&StateResult> {
        self.drivers[d].states.get(&request)
    }

    /// Driver `d` submits `function(args)` and owns its result, and waits for it.
    pub fn submit(
        &mut self,
        d: usize,
        function: &str,
        args: Vec<SimArg>,
        opts: TaskOpts,
    ) -> ObjectId {
        self.submit_with(d, function, args, opts, true, Default::default())
    }

    /// [`Sim::submit`] with a scheduling strategy and a label selector.
    pub fn submit_placed(
        &mut self,
        d: usize,
        function: &str,
        opts: TaskOpts,
        strategy: shoal_protocol::Strategy,
        label_selector: Vec<shoal_protocol::LabelMatch>,
    ) -> ObjectId {
        let placed = (strategy, label_selector);
        self.submit_with(d, function, Vec::new(), opts, true, placed)
    }

    /// [`Sim::submit`] (or, `held`, [`Sim::submit_held`]) with a scheduling strategy.
    pub fn submit_with_strategy(
        &mut self,
        d: usize,
        function: &str,
        args: Vec<SimArg>,
        opts: TaskOpts,
        held: bool,
        strategy: shoal_protocol::Strategy,
    ) -> ObjectId {
        self.submit_with(d, function, args, opts, !held, (strategy, Vec::new()))
    }

    /// Node `i`'s peer id, as a program names it.
    pub fn peer_id(&self, i: usize) -> String {
        self.nodes[i].key.to_string()
    }

    /// Driver `d` submits `function(args)` and holds its result without asking for it (a
    /// large result stays at the peer that made it) until [`Sim::get`].
    pub fn submit_held(
        &mut self,
        d: usize,
        function: &str,
        args: Vec<SimArg>,
        opts: TaskOpts,
    ) -> ObjectId {
        self.submit_with(d, function, args, opts, false, Default::default())
    }

    /// Driver `d` submits `function()` holding `resources` (any, not only CPUs).
    pub fn submit_needing(
        &mut self,
        d: usize,
        function: &str,
        resources: ResourceSet,
        retries: u32,
    ) -> ObjectId {
        let opts = TaskOpts {
            retries,
            ..TaskOpts::default()
        };
        self.next_resources = Some(resources);
        self.submit_with(d, function, Vec::new(), opts, true, Default::default())
    }

    fn submit_with(
        &mut self,
        d: usize,
        function: &str,
        args: Vec<SimArg>,
        opts: TaskOpts,
        wait: bool,
        placed: (shoal_protocol::Strategy, Vec<shoal_protocol::LabelMatch>),
    ) -> ObjectId {
        let task = self.next_task(d);
        let mut known = true;
        let mut wire = Vec::new();
        let mut values = Vec::new();
        let mut nested = Vec::new();
        for a in args {
            match a {
                SimArg::Nested(id) => nested.push(id),
                SimArg::Value(v) => {
                    values.push(v.clone());
                    wire.push(Arg::Value(v));
                }
                SimArg::Ref(id) => {
                    match self.drivers[d].done.get(&id) {
                        Some(ObjectValue::Inline(v)) => values.push(v.clone()),
                        // A worker's `echo` reads a shared argument as its id.
                        Some(ObjectValue::Shared(_)) => values.push(id.0.to_vec()),
                        _ if self.drivers[d].puts.contains_key(&id) => values.push(id.0.to_vec()),
                        _ => known = false,
                    }
                    wire.push(Arg::Ref(id));
                }
            }
        }
        let stream = opts
            .stream
            .filter(|_| matches!(behaviour(function).1, Behaviour::Echo) && opts.returns == 1);
        let expect = match behaviour(function).1 {
            Behaviour::Echo if stream.is_some() => {
                let (items, _) = stream.unwrap_or_default();
                let count = shoal_protocol::codec::encode(&u64::from(items)).unwrap_or_default();
                Some(ObjectValue::Inline(count))
            }
            Behaviour::Echo if known => Some(ObjectValue::Inline(echo(&values))),
            Behaviour::Big(size) => Some(ObjectValue::Shared(big_result(task, size))),
            _ => None,
        };
        let spec = TaskSpec {
            task_id: task,
            function: function.to_string(),
            binary: BINARY,
            args: wire,
            resources: self
                .next_resources
                .take()
                .unwrap_or_else(|| ResourceSet::cpus(opts.cpus)),
            max_retries: opts.retries,
            owner: self.drivers[d].client,
            kind: TaskKind::Function,
            nested,
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: opts.returns,
            stream: stream.map(|(_, window)| shoal_protocol::StreamSpec { window }),
            strategy: placed.0,
            label_selector: placed.1,
            env: Vec::new(),
        };
        let ret = spec.return_id();
        let more = spec.more_return_ids();
        self.runs.insert(task, (0, opts.retries));
        if opts.returns > 1 {
            self.returns.insert(task, opts.returns);
        }
        if let Some((items, _)) = stream {
            self.streams.insert(task, items);
            self.stream_ends.insert(ret, task);
        }
        self.send(d, ToNode::Submit(Box::new(spec)));
        let others = (1..)
            .zip(more.iter())
            .map(|(i, id)| (*id, other_return(task, i)));
        if !wait {
            self.drivers[d].held.insert(ret, expect);
            for (id, value) in others {
                self.drivers[d].held.insert(id, Some(value));
            }
            return ret;
        }
        self.own(d, ret, expect);
        for (id, value) in others {
            self.own(d, id, Some(value));
        }
        // It waits for the results, as a program's `get` does (a large result stays at the
        // peer that made it until it is asked for).
        let mut ids = vec![ret];
        ids.extend(more);
        self.send(d, ToNode::Get { ids });
        ret
    }

    /// What a simulated worker reports as the other returns of `task`, which ended with
    /// `outcome`.
    fn more_returns(&self, task: TaskId, outcome: &TaskOutcome) -> Vec<ReturnValue> {
        match (self.returns.get(&task), outcome) {
            (Some(n), TaskOutcome::Ok(_)) => (1..*n)
                .map(|i| ReturnValue {
                    value: other_return(task, i),
                    nested: Vec::new(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn own(&mut self, d: usize, id: ObjectId, value: Option<ObjectValue>) {
        let since = self.now;
        if self.drivers[d].alive {
            let expect = Expect {
                since,
                value,
                moves: 0,
            };
            self.drivers[d].pending.insert(id, expect);
        }
    }

    /// Driver `d` puts a large object of `size` bytes (through the store: a file, then a
    /// seal) and holds it. Its id is known at once: half the puts are `put`s (its ticket is
    /// its id, and it is sealed without a digest), half content-addressed (`put_content`).
    pub fn put_large(&mut self, d: usize, size: u64) -> ObjectId {
        let task = self.next_task(d);
        let ticket = ObjectId::for_return(task, 1);
        let object = SharedObject {
            size,
            digest: Some(Digest::of(&ticket.0)),
        };
        let request = self.drivers[d].seq;
        if self.drivers[d].alive {
            self.drivers[d].creating.insert(request, (ticket, object));
        }
        self.send(
            d,
            ToNode::Create {
                request,
                id: ticket,
                size,
            },
        );
        match object.digest {
            Some(d) if ticket.0[31].is_multiple_of(2) => ObjectId::from_digest(d),
            _ => ticket,
        }
    }

    /// Driver `d` asks for object `id` (a put or a result it holds) and waits for it.
    pub fn get(&mut self, d: usize, id: ObjectId) {
        if self.drivers[d].pending.contains_key(&id) {
            return;
        }
        let held = self.drivers[d].held.remove(&id).flatten();
        let value = match (self.drivers[d].puts.get(&id), self.drivers[d].done.get(&id)) {
            (Some(o), _) => Some(ObjectValue::Shared(*o)),
            (None, Some(v @ (ObjectValue::Inline(_) | ObjectValue::Shared(_)))) => Some(v.clone()),
            _ => held,
        };
        self.own(d, id, value);
        self.send(d, ToNode::Get { ids: vec![id] });
    }

    /// Driver `d` creates a placement group and holds its ready object
    /// ([`ObjectId::for_group`]), which it waits for.
    pub fn create_group(
        &mut self,
        d: usize,
        bundles: Vec<ResourceSet>,
        strategy: shoal_protocol::GroupStrategy,
    ) -> shoal_protocol::GroupId {
        let mut id = [0u8; 16];
        for b in id.iter_mut() {
            *b = self.rng.below(256) as u8;
        }
        let group = shoal_protocol::GroupId(id);
        self.own(
            d,
            ObjectId::for_group(group),
            Some(ObjectValue::Inline(Vec::new())),
        );
        let msg = ToNode::CreateGroup {
            group,
            bundles,
            strategy,
            detached: false,
            token: group_token(group),
        };
        self.send(d, msg);
        group
    }

    /// Driver `d` removes a placement group (its node placed it).
    pub fn remove_group(&mut self, d: usize, group: shoal_protocol::GroupId) {
        let token = group_token(group);
        let placer = None;
        self.send(
            d,
            ToNode::RemoveGroup {
                group,
                token,
                placer,
            },
        );
    }

    /// Driver `d` removes a placement group that node `placer` placed, with `token` (the
    /// right one is [`group_token`]).
    pub fn remove_group_placed_at(
        &mut self,
        d: usize,
        group: shoal_protocol::GroupId,
        token: [u8; 16],
        placer: usize,
    ) {
        let placer = Some(self.peer_id(placer));
        self.send(
            d,
            ToNode::RemoveGroup {
                group,
                token,
                placer,
            },
        );
    }

    /// Driver `d` creates an actor (with `restarts` restarts) and gets its id.
    pub fn create_actor(&mut self, d: usize, restarts: u32, cpus: f64) -> ActorId {
        self.create_actor_with(d, restarts, cpus, false, None)
    }

    /// [`Sim::create_actor`], detached: it outlives its creator.
    pub fn create_detached_actor(&mut self, d: usize, restarts: u32, cpus: f64) -> ActorId {
        self.create_actor_with(d, restarts, cpus, true, None)
    }

    /// [`Sim::create_actor`] under `name`; with `get_if_exists`, the creation's return
    /// object ([`Sim::handle_of`]) may name another actor of that name.
    pub fn create_named_actor(
        &mut self,
        d: usize,
        restarts: u32,
        cpus: f64,
        name: &str,
        get_if_exists: bool,
    ) -> ActorId {
        self.create_actor_with(d, restarts, cpus, false, Some((name, get_if_exists)))
    }

    /// Driver `d` looks up the actor named `name`; the answer is [`Sim::found`]`(d, request)`.
    pub fn lookup(&mut self, d: usize, name: &str) -> u64 {
        self.drivers[d].request += 1;
        let request = self.drivers[d].request;
        let name = name.to_string();
        self.send(d, ToNode::LookupActor { request, name });
        request
    }

    /// What driver `d`'s lookup `request` found: the actor, and the handle object the driver
    /// now holds for it (released with [`Sim::release`]).
    pub fn found(&self, d: usize, request: u64) -> Option<(Option<ActorId>, Option<ObjectId>)> {
        self.drivers[d].found.get(&request).copied()
    }

    fn create_actor_with(
        &mut self,
        d: usize,
        restarts: u32,
        cpus: f64,
        detached: bool,
        name: Option<(&str, bool)>,
    ) -> ActorId {
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
                token: token_of(actor),
                name: name.map(|(n, _)| n.to_string()),
                get_if_exists: name.is_some_and(|(_, g)| g),
                max_restarts: restarts,
                max_concurrency: 1,
                detached,
                concurrency_groups: Vec::new(),
                max_task_retries: 0,
            }),
            nested: Vec::new(),
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            stream: None,
            strategy: Default::default(),
            label_selector: Vec::new(),
            env: Vec::new(),
        };
        let ret = spec.return_id();
        self.own(d, ret, None);
        self.handles.insert(actor, ret);
        self.send(d, ToNode::Submit(Box::new(spec)));
        actor
    }

    /// The handle object of `actor`, which a driver created: every counted handle holds it.
    pub fn handle_of(&self, actor: ActorId) -> Option<ObjectId> {
        self.handles.get(&actor).copied()
    }

    /// The `keep` tasks' processes drop the refs they kept (those still alive).
    pub fn drop_kept(&mut self) {
        for (i, conn, ids) in std::mem::take(&mut self.kept) {
            let live = self.nodes[i].core.is_some()
                && self.nodes[i].workers.values().any(|w| w.conn == conn);
            if live {
                self.input(
                    i,
                    Input::FromProc {
                        conn,
                        msgs: vec![ToNode::Release { ids }],
                    },
                );
            }
        }
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
            kind: TaskKind::ActorMethod {
                actor,
                token: token_of(actor),
            },
            nested: Vec::new(),
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            stream: None,
            strategy: Default::default(),
            label_selector: Vec::new(),
            env: Vec::new(),
        };
        let ret = spec.return_id();
        self.calls.insert(ret, task);
        // A call runs once at most: it is never retried.
        self.runs.insert(task, (0, 0));
        let expect =
            (behaviour(function).1 == Behaviour::Echo).then(|| ObjectValue::Inline(echo(&[tag])));
        self.own(d, ret, expect);
        self.send(d, ToNode::Submit(Box::new(spec)));
        // It waits for the result, as a program's `get` does (a large result stays at the
        // peer that made it until it is asked for).
        self.send(d, ToNode::Get { ids: vec![ret] });
        ret
    }

    /// The task or actor call whose result is `ret`, if a driver submitted it.
    pub fn task_of(&self, ret: ObjectId) -> Option<TaskId> {
        if let Some(call) = self.calls.get(&ret) {
            return Some(*call);
        }
        self.runs
            .keys()
            .copied()
            .find(|t| ObjectId::for_return(*t, 0) == ret)
    }

    /// Driver `d` cancels the task whose result is `ret` (`shoal::cancel`); `force` is
    /// dropped for an actor call, as the SDK refuses it.
    pub fn cancel(&mut self, d: usize, ret: ObjectId, force: bool, recursive: bool) {
        let Some(task) = self.task_of(ret) else {
            self.violation(format!(
                "driver {d}: cancel of {ret}, which it did not submit"
            ));
            return;
        };
        let force = force && !self.calls.contains_key(&ret);
        self.send(
            d,
            ToNode::Cancel {
                task,
                force,
                recursive,
            },
        );
    }

    /// Driver `d` ends `actor` for good (its calls in flight fail).
    pub fn kill_actor(&mut self, d: usize, actor: ActorId) {
        let no_restart = true;
        let token = token_of(actor);
        self.send(
            d,
            ToNode::KillActor {
                actor,
                no_restart,
                token,
            },
        );
    }

    /// Driver `d` drops its ref to `id`.
    pub fn release(&mut self, d: usize, id: ObjectId) {
        self.drivers[d].pending.remove(&id);
        self.drivers[d].done.remove(&id);
        self.drivers[d].puts.remove(&id);
        self.drivers[d].held.remove(&id);
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
        self.drivers[d].creating.clear();
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
                    // Where it stands on the driver's node, to start from.
                    let info = self.nodes[driver.node].core.as_ref().and_then(|c| {
                        let o = c.objects().into_iter().find(|o| o.id == *id)?;
                        Some(format!(
                            "{} {:?} holders {}",
                            o.location, o.pinned_by, o.holders
                        ))
                    });
                    late.push(format!(
                        "driver {d}: object {id} not done after {:?} (node {}: {})",
                        now.duration_since(e.since),
                        driver.node,
                        info.as_deref().unwrap_or("unknown"),
                    ));
                }
            }
        }
        if !late.is_empty() {
            // What the nodes still hold, to start from.
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(core) = &n.core {
                    let tasks: Vec<String> = core.task_lines().into_iter().take(20).collect();
                    let actors: Vec<String> = core
                        .status(now)
                        .actors
                        .iter()
                        .map(|a| format!("{} {} inc {}", a.actor_id, a.state, a.incarnation))
                        .collect();
                    late.push(format!(
                        "node {i}: {:?} {tasks:?} {actors:?}",
                        core.census()
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
            if !n.files.is_empty() {
                let (partial, memory, disk) = n.files.counts();
                leaks.push(format!(
                    "node {i} still has store files: {partial} partial, {memory} in memory, {disk} on disk"
                ));
            }
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

    /// Delivers `msg` to node `to` as if node `from` sent it, whatever `from`'s core would
    /// say: what an admitted peer that misbehaves can do.
    pub fn forge(&mut self, from: usize, to: usize, msg: PeerMsg) {
        self.forged = true;
        let peer = self.nodes[from].key;
        let at = self.now + self.latency();
        let input = Input::FromPeer {
            peer,
            msgs: vec![msg],
        };
        self.schedule(at, Event::Input { node: to, input });
    }

    /// Node `from` asks node `to` for the bytes of object `id` on its own (no pull of its
    /// core asked for them). Returns the request, for [`Sim::forged_pull`].
    pub fn forge_pull(&mut self, from: usize, to: usize, id: ObjectId) -> u64 {
        self.forged = true;
        let request = self.next_request;
        self.next_request += 1;
        self.forged_pulls.insert(request, None);
        let peer = self.nodes[from].key;
        let at = self.now + self.latency();
        let input = Input::Serve { request, peer, id };
        self.schedule(at, Event::Input { node: to, input });
        request
    }

    /// How the holder answered a forged pull: `None` while it has not, then whether it
    /// served the bytes.
    pub fn forged_pull(&self, request: u64) -> Option<bool> {
        self.forged_pulls.get(&request).copied().flatten()
    }

    /// Node `i`'s peer id.
    pub fn key(&self, i: usize) -> PeerKey {
        self.nodes[i].key
    }

    /// A message to node `to` was lost to a fault. A grant lost so leaves the reads it
    /// covered to be refused there (the reader then reads elsewhere): those are excused.
    fn lost(&mut self, to: usize, msg: &PeerMsg) {
        if let PeerMsg::Grant { ids, .. } = msg {
            *self.lost_grants.entry(to).or_default() += ids.len() as u64;
        }
    }

    /// Checks that no node refused a request of another (every simulated peer is honest:
    /// the rights a peer needs reach the node before, or soon after, its request, unless a
    /// fault lost them on the way). Skipped once a test forged messages.
    pub fn check_no_refusals(&mut self) {
        if self.forged {
            return;
        }
        let mut refused = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(core) = &n.core else { continue };
            let excused = self.lost_grants.get(&i).copied().unwrap_or(0);
            let mut r = core.status(self.now).refused;
            for (kind, count) in &mut r {
                if kind == "read" {
                    *count = count.saturating_sub(excused);
                }
            }
            r.retain(|(_, count)| *count > 0);
            if !r.is_empty() {
                refused.push(format!("node {i} refused requests of honest peers: {r:?}"));
            }
        }
        for what in refused {
            self.violation(what);
        }
    }

    /// Every rule, at the end of a run: all drivers exit, the mesh settles, and nothing is
    /// left anywhere.
    pub fn finish(&mut self, settle: Duration) -> Vec<Violation> {
        // Every wait ends: the work left may take a while, but not forever.
        let until = self.now + settle * 8;
        while self.now < until
            && self
                .drivers
                .iter()
                .any(|d| d.alive && !d.pending.is_empty())
        {
            self.run_for(Duration::from_millis(100));
        }
        self.check_progress(Duration::ZERO);
        self.drop_kept();
        for d in 0..self.drivers.len() {
            self.exit(d);
        }
        self.run_for(settle);
        self.check_empty();
        self.check_no_refusals();
        self.violations.clone()
    }
}

/// An argument of a simulated task.
#[derive(Clone, Debug)]
pub enum SimArg {
    /// Bytes.
    Value(Vec<u8>),
    /// The result of an earlier task the driver holds.
    Ref(ObjectId),
    /// A ref the task carries inside it (its `nested`), not an argument: the task neither
    /// waits for it nor reads it, but the peer it runs on learns of the ref (and its owner).
    Nested(ObjectId),
}

/// Options of a simulated task.
#[derive(Clone, Copy, Debug)]
pub struct TaskOpts {
    /// CPUs it holds.
    pub cpus: f64,
    /// Retries.
    pub retries: u32,
    /// Its returns (`num_returns`): the first is the function's result, return `i > 0`
    /// is [`other_return`]`(task, i)`.
    pub returns: u32,
    /// A streaming generator (for an `echo` or `sleep:` function with one return): how many
    /// items it yields, item `i` being [`other_return`]`(task, i)`, and its window. Its
    /// result is the number of items.
    pub stream: Option<(u32, u32)>,
}

impl Default for TaskOpts {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            retries: 3,
            returns: 1,
            stream: None,
        }
    }
}

/// The value of return `i > 0` of a task with several, as a simulated worker makes it
/// (inline; distinct for every task and return).
pub fn other_return(task: TaskId, i: u32) -> ObjectValue {
    ObjectValue::Inline(ObjectId::for_return(task, i).0[..8].to_vec())
}

fn brief(msg: &PeerMsg) -> String {
    match msg {
        PeerMsg::Submit(rt) => format!("Submit {}", rt.spec.task_id),
        PeerMsg::Refuse { task, reason } => format!("Refuse {task} {reason}"),
        PeerMsg::Object { id, .. } => format!("Object {id}"),
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

/// The secret of the handles of a placement group the simulator made.
pub fn group_token(group: shoal_protocol::GroupId) -> [u8; 16] {
    group.0.map(|b| b ^ 0x5a)
}

/// The secret of a simulated actor's handles: every driver of the simulator holds a handle
/// to every actor (a test forges messages without it).
pub fn token_of(actor: ActorId) -> ActorToken {
    let h = blake3::hash(&actor.0);
    let mut t = [0u8; 16];
    t.copy_from_slice(&h.as_bytes()[..16]);
    ActorToken(t)
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
