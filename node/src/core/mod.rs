//! The node's core: every table of the node and every decision it makes, as a state machine
//! with no I/O.
//!
//! [`NodeCore`] owns the attached processes, the task table, the object table, the actors
//! (local and remote), the scheduler and the spilling state. It performs no I/O: no socket,
//! no file, no process, no timer, no clock. Everything it learns arrives as an [`Input`] with
//! the current time; everything it wants done leaves as an [`Output`] for the shell to carry
//! out. The shell (`crate::runtime`) owns every socket, process, file and spawned future;
//! the simulator drives many cores on a virtual clock the same way.
//!
//! # Methods
//!
//! - **Inputs** (change state, queue outputs): [`NodeCore::handle`] for everything that
//!   happened (a process attached, messages, a worker exit, a peer's report or messages, a
//!   job's completion), [`NodeCore::handle_timeout`] when the deadline of
//!   [`NodeCore::poll_timeout`] has passed, [`NodeCore::shutdown`] to stop, and
//!   [`NodeCore::object_served`] when a transfer to a peer ended.
//! - **Outputs**: [`NodeCore::poll_output`] yields what to do, in order.
//! - **Queries** (no change): [`NodeCore::poll_timeout`], [`NodeCore::status`].
//!
//! # Order
//!
//! A shell calls an input method, then drains [`NodeCore::poll_output`] until it returns
//! `None`, carrying out each output in the order given (messages to one party must leave in
//! that order), then asks [`NodeCore::poll_timeout`] again. An output the shell cannot carry
//! out comes back as an input: a process whose queue is full is [`Input::Detached`], a peer
//! whose link cannot take a message is [`Input::PeerLost`], a worker that cannot start is
//! [`Input::WorkerExited`] with [`WorkerEnd::FailedToStart`].
//!
//! # Files
//!
//! The core keeps the store's index and decides; the store's files are the shell's. Each
//! [`Output::Store`] op must be carried out after every one given before it (on a blocking
//! thread: a spill or a restore may take seconds), and the completions of numbered ops come
//! back as [`Input::Store`]. Whatever needs a file waits for that: see `store.rs`.
//!
//! # Parties
//!
//! A [`Party`] is whoever a message is from or for: a local process attached to the node, or
//! another peer of the mesh. Tasks, refs and waits are recorded against parties, so a peer's
//! work and a driver's are kept the same way, and a peer that leaves ends them the way a
//! process that exits does.
//!
//! The same core is compiled with and without the `mesh` feature; without it, the shell never
//! gives it a peer, and the spilling side stays idle.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use shoal_protocol::mesh::{LoadReport, PeerKey, PeerMsg};
use shoal_protocol::{
    BinaryId, ClientId, Digest, ExitInfo, Hello, IdMap, NodeId, ObjectId, Role, SharedObject,
    ToClient, ToNode,
};

use crate::config::NodeConfig;
use crate::store::{StoreDone, StoreOp};

pub mod actors;
mod cancel;
mod envs;
mod groups;
#[cfg(test)]
mod harness;
mod lineage;
mod local;
mod logs;
pub mod metrics;
mod objects;
mod peers;
mod reconstruct;
mod returns;
pub mod rights;
pub mod sched;
mod spill;
mod state;
mod store;
mod strategy;
mod streams;
pub mod swim;
mod tasks;

use actors::directory::Directory;
use actors::ActorTable;
use objects::ObjectTable;
use rights::Rights;
use sched::{Scheduler, WorkerId};
use spill::Spill;
pub use spill::{indexed_resource, LoadAsk, LoadView};
use store::CoreStore;
use tasks::TaskTable;

/// A node-local connection number.
pub type ConnId = u64;

/// Whoever a message is from or for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// A process attached to this node (driver, worker or CLI), by its connection.
    Proc(ConnId),
    /// Another peer of the mesh.
    Peer(PeerKey),
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::Proc(c) => write!(f, "conn {c}"),
            Party::Peer(p) => write!(f, "peer {p}"),
        }
    }
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerEnd {
    /// It could not be started (no executable, or the spawn failed).
    FailedToStart,
    /// It ran and exited.
    Exited {
        /// Its pid.
        pid: u32,
        /// How.
        exit: ExitInfo,
    },
    /// It was killed for memory: it went past its own limit, or the machine was nearly
    /// full and it used the most.
    OutOfMemory {
        /// Its pid.
        pid: u32,
        /// The limit it hit, in bytes.
        limit: u64,
        /// The most it used, in bytes.
        used: u64,
    },
}

/// Something that happened, for the core to handle.
#[derive(Debug)]
pub enum Input {
    /// A process finished its handshake.
    Attached {
        /// Its connection.
        conn: ConnId,
        /// Its handshake.
        hello: Hello,
    },
    /// Messages from a process, in order.
    FromProc {
        /// Its connection.
        conn: ConnId,
        /// The messages.
        msgs: Vec<ToNode>,
    },
    /// A process's connection ended (or the shell gave up on it).
    Detached {
        /// Its connection.
        conn: ConnId,
    },
    /// A worker process ended.
    WorkerExited {
        /// The worker.
        worker: WorkerId,
        /// How.
        end: WorkerEnd,
    },
    /// A worker process wrote lines (without their newlines).
    WorkerOutput {
        /// The worker.
        worker: WorkerId,
        /// Which output.
        stream: shoal_protocol::state::Stream,
        /// The lines.
        lines: Vec<String>,
    },
    /// A peer's load report.
    PeerReport {
        /// The peer.
        peer: PeerKey,
        /// Its report (already checked against its signer and mesh).
        report: Box<LoadReport>,
    },
    /// Messages from a peer's link, in order.
    FromPeer {
        /// The peer.
        peer: PeerKey,
        /// The messages.
        msgs: Vec<PeerMsg>,
    },
    /// A peer left the mesh, restarted, or its link broke or could not take a message.
    PeerLost {
        /// The peer.
        peer: PeerKey,
    },
    /// A job of [`Output::Job`] ended.
    Job(JobDone),
    /// A store op of [`Output::Store`] that had a number ended.
    Store(StoreDone),
    /// A peer asks for an object's bytes; answered by [`Output::Serve`] with the same
    /// request number, at once or once the object is back in memory (or the peer's right
    /// to read it arrived), or with nothing.
    Serve {
        /// The shell's number for the request.
        request: u64,
        /// The peer asking.
        peer: PeerKey,
        /// The object.
        id: ObjectId,
    },
}

/// Work that takes time, run by the shell, whose end comes back as [`Input::Job`].
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Pull an object's bytes from peers into its partial file in the store (made already),
    /// checking its digest; ends in [`JobDone::Pulled`].
    Pull {
        /// The object.
        id: ObjectId,
        /// Its size and digest.
        object: SharedObject,
        /// Peers holding it, best first.
        holders: Vec<PeerKey>,
        /// This pull (a newer pull of the same object supersedes it).
        pull: u64,
    },
    /// Fetch a binary from a peer; ends in [`JobDone::BinaryFetched`].
    FetchBinary {
        /// The peer that has it.
        from: PeerKey,
        /// The binary.
        binary: BinaryId,
    },
    /// Ask the mesh's directory who holds an object; ends in [`JobDone::ProvidersFound`].
    FindProviders {
        /// The object.
        id: ObjectId,
    },
    /// Ask the mesh's directory where an actor lives; ends in [`JobDone::ActorLocated`].
    LocateActor {
        /// The actor.
        actor: shoal_protocol::ActorId,
    },
    /// Ask the mesh's directory for a named actor; ends in [`JobDone::NameResolved`].
    ResolveName {
        /// What the answer is for.
        asker: NameAsker,
        /// The name.
        name: String,
    },
    /// Store records in the mesh's directory (no completion).
    PutRecords {
        /// Keys and values.
        records: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// Why a binary could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// This node's code policy rejects it (unsigned, a bad manifest, an untrusted
    /// publisher): the submitter is told so ([`PeerMsg::CodeRejected`]).
    Rejected(String),
    /// It could not be had (the peer, the network, the cache).
    Failed(String),
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailure::Rejected(r) => write!(f, "code rejected: {r}"),
            FetchFailure::Failed(r) => f.write_str(r),
        }
    }
}

/// The end of a [`Job`].
#[derive(Debug, Clone, PartialEq)]
pub enum JobDone {
    /// An object pull ended.
    Pulled {
        /// The pull ([`Job::Pull::pull`]).
        pull: u64,
        /// The object.
        id: ObjectId,
        /// Its size and digest.
        object: SharedObject,
        /// How it went.
        result: Result<(), String>,
    },
    /// A binary fetch ended.
    BinaryFetched {
        /// The binary.
        binary: BinaryId,
        /// Its executable, or why not.
        result: Result<PathBuf, FetchFailure>,
    },
    /// Holders of an object, from the directory.
    ProvidersFound {
        /// The object.
        id: ObjectId,
        /// Peers announcing a copy.
        peers: Vec<PeerKey>,
    },
    /// Where an actor lives, from the directory.
    ActorLocated {
        /// The actor.
        actor: shoal_protocol::ActorId,
        /// Its peer, and the placement epoch of the incarnation there.
        found: Option<(PeerKey, u32)>,
    },
    /// A named actor, from the directory (its peer is then asked for it: only the peer
    /// gives the secret of its handles).
    NameResolved {
        /// What the answer is for.
        asker: NameAsker,
        /// The name.
        name: String,
        /// The actor and its peer.
        found: Option<(shoal_protocol::ActorId, PeerKey)>,
    },
}

/// What a [`Job::ResolveName`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameAsker {
    /// A process's lookup of a name (its request `request`).
    Proc {
        /// The process.
        conn: ConnId,
        /// Its request number.
        request: u64,
    },
    /// The check that a name is free in the mesh before an actor of that name is created
    /// here (the core's question number).
    Claim(u64),
}

/// An operation on the mesh's directory (the DHT), with no completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtOp {
    /// Announce this node as a holder of the object.
    StartProviding(ObjectId),
    /// Withdraw that announcement.
    StopProviding(ObjectId),
    /// Remove a record this node stored.
    RemoveRecord(Vec<u8>),
}

/// This node's load, as peers are told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// All resources.
    pub total: shoal_protocol::ResourceSet,
    /// Free resources.
    pub free: shoal_protocol::ResourceSet,
    /// Tasks waiting.
    pub queued: u64,
    /// Tasks running.
    pub running: u64,
    /// Store capacity.
    pub store_capacity: u64,
    /// Store bytes in use.
    pub store_used: u64,
    /// Binaries held.
    pub binaries: Vec<BinaryId>,
}

/// An object opened for a transfer to a peer: its file is in memory and pinned there until
/// [`NodeCore::object_served`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedObject {
    /// The object.
    pub id: ObjectId,
    /// Its length.
    pub size: u64,
    /// The digest of its bytes.
    pub digest: Digest,
}

/// Something for the shell to do.
#[derive(Debug)]
pub enum Output {
    /// Queue a message for a process.
    ToProc {
        /// Its connection.
        conn: ConnId,
        /// The message.
        msg: ToClient,
    },
    /// A process asks for the node's status: the shell sends it as `ToClient::Status`, from
    /// [`NodeCore::status`] and what only the shell knows (the mesh view), once the store
    /// ops given before have run (a status tells where the files are too).
    Status {
        /// The process.
        conn: ConnId,
        /// Its request number.
        request: u64,
    },
    /// Close a process's connection once what was queued for it is sent.
    Close {
        /// Its connection.
        conn: ConnId,
    },
    /// Queue a message on a peer's link.
    ToPeer {
        /// The peer.
        peer: PeerKey,
        /// The message.
        msg: PeerMsg,
    },
    /// Close the connections to a peer this node considers lost, so that it learns it too.
    Disconnect {
        /// The peer.
        peer: PeerKey,
    },
    /// Start a worker process; its end comes back as [`Input::WorkerExited`].
    SpawnWorker {
        /// Its id (it announces it in its handshake).
        worker: WorkerId,
        /// Its binary.
        binary: BinaryId,
        /// The executable.
        exe: PathBuf,
        /// Whether the binary was shipped by a peer (it then runs sandboxed: another user,
        /// a memory limit), rather than a local program's own (run as today).
        shipped: bool,
        /// Environment variables it is started with (its tasks' `TaskSpec::env`).
        env: Vec<(String, String)>,
    },
    /// Kill a worker process (its end is reported as usual).
    KillWorker {
        /// The worker.
        worker: WorkerId,
    },
    /// Tell the peers this node's load (it changed).
    Load(Load),
    /// Ask peers for their loads now (the view is a sample, and tasks wait for room it does
    /// not show): their answers come back as [`Input::PeerReport`]s.
    AskLoads(LoadAsk),
    /// Let peers fetch this binary from here (those this node sends a task of it).
    ServeBinary {
        /// The binary.
        binary: BinaryId,
        /// Its executable.
        exe: PathBuf,
        /// Its encoded signed manifest, as its driver gave it.
        manifest: Option<Vec<u8>>,
    },
    /// An operation on the mesh's directory.
    Dht(DhtOp),
    /// Start a job.
    Job(Job),
    /// Carry out an operation on the store's files, after every one given before (the
    /// order matters: see [`crate::store::StoreOp`]); its completion, when it has a number,
    /// comes back as [`Input::Store`].
    Store(StoreOp),
    /// The answer to [`Input::Serve`]: the object, pinned in memory, or `None` if this node
    /// has no copy to give.
    Serve {
        /// The request.
        request: u64,
        /// The object.
        object: Option<ServedObject>,
    },
}

/// How much a core holds (see [`NodeCore::census`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Attached processes.
    pub procs: usize,
    /// Objects known.
    pub objects: usize,
    /// Tasks known (queued, running, waiting, or sent to peers).
    pub tasks: usize,
    /// Actors known (alive or dead but not yet forgotten).
    pub actors: usize,
    /// Tasks queued at the scheduler.
    pub queued: usize,
    /// Tasks running here.
    pub running: usize,
    /// Store bytes in use.
    pub store_used: u64,
    /// Tasks of this node at peers.
    pub spilled_tasks: usize,
    /// Tasks waiting for a peer with room.
    pub waiting_remote: usize,
    /// Store ops whose completion has not come back.
    pub store_ops: usize,
    /// Objects whose lineage is kept (to make them again).
    pub lineage: usize,
    /// Placement groups placed here, and groups whose bundles are held here.
    pub groups: (usize, usize),
}

/// A process attached to the node.
#[derive(Debug)]
struct Proc {
    role: Role,
    client: ClientId,
    pid: u32,
    binary: Option<BinaryId>,
    worker: Option<WorkerId>,
}

/// How long a peer may take to answer a lookup of a name: then the asker is told nothing was
/// found (the peer may have gone without being written off yet, or the message was lost on a
/// link being torn down).
const NAME_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the creation of a named actor waits to learn whether the name is taken elsewhere
/// in the mesh: then the name is taken as free (the mesh has no head to ask; a directory or
/// a peer that does not answer must not stop a program).
const NAME_CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A question about a named actor sent to a peer, answered within
/// [`NAME_LOOKUP_TIMEOUT`].
#[derive(Debug, Clone)]
struct NameLookup {
    /// What the answer is for.
    asked: Asked,
    /// The peer asked.
    peer: PeerKey,
    /// When the question is given up, if the peer has not answered.
    deadline: Instant,
}

/// Where an actor's handles are counted ([`NodeCore::handles_counted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Here: every counted handle holds this object.
    Here(ObjectId),
    /// At this peer, its creator's node, which placed the actor here.
    At(PeerKey),
    /// Nowhere: it is detached (or its handles escaped counting).
    Nowhere,
}

/// What a [`NameLookup`] waits for, and for whom.
#[derive(Debug, Clone)]
enum Asked {
    /// Process `conn`'s lookup (its request `request`) of a name, sent to the peer whose
    /// actor has it ([`PeerMsg::LookupActor`]).
    Name { conn: ConnId, request: u64 },
    /// The actor that lookup found, whose handles `peer` counts: a counted handle for the
    /// process ([`PeerMsg::LendHandle`]).
    Handle {
        conn: ConnId,
        request: u64,
        actor: shoal_protocol::ActorInfo,
    },
    /// A counted handle of `actor`, which a get-or-create here found (hosted here, its
    /// handles counted at `peer`), for the get-or-create's return object `ret` to hold.
    Nest {
        ret: ObjectId,
        actor: shoal_protocol::ActorId,
    },
    /// Whether the name of the actor that `task` creates here is free in the mesh: first
    /// the directory is asked (`peer` is then this node), then the peer it names.
    Claim { task: shoal_protocol::TaskId },
}

/// The node's core. See the [module documentation](self).
pub struct NodeCore {
    node_id: NodeId,
    config: NodeConfig,
    started: Instant,
    /// The time of the input being handled.
    now: Instant,
    /// This node's peer id, when it is a peer of a mesh.
    me: Option<PeerKey>,
    sched: Scheduler,
    store: CoreStore,
    /// Attached processes; this map and the next are looked up for every message from or to
    /// a process, hence the ids' fast hasher.
    procs: IdMap<ConnId, Proc>,
    worker_conns: IdMap<WorkerId, ConnId>,
    /// Workers told to stop a task they run ([`ToClient::Cancel`]): one that exits with
    /// [`shoal_protocol::CANCELLED_EXIT`] had begun nothing after it.
    cancelling: HashSet<WorkerId>,
    /// Tasks that running tasks submitted, by the task that submitted them (for a recursive
    /// cancel); dropped when that task ends here.
    children: IdMap<shoal_protocol::TaskId, Vec<shoal_protocol::TaskId>>,
    binaries: HashMap<BinaryId, PathBuf>,
    /// The binaries of `binaries` that were fetched from peers, not attached by a local
    /// program: their workers run sandboxed.
    shipped: HashSet<BinaryId>,
    /// Worker pools of tasks with environment variables.
    envs: envs::EnvPools,
    tasks: TaskTable,
    objects: ObjectTable,
    actors: ActorTable,
    directory: Directory,
    spill: Spill,
    /// Requests of peers waiting for the right to be made, and refusals.
    rights: Rights,
    /// Lookups of names sent to the peers whose actors have them, by number.
    name_lookups: HashMap<u64, NameLookup>,
    /// Creations of actors waiting for the check of their name that another creation here
    /// (the key) is making in the mesh.
    claim_waiters: HashMap<shoal_protocol::TaskId, Vec<shoal_protocol::TaskId>>,
    next_lookup: u64,
    last_load: Option<Load>,
    /// Placement groups this node placed, and bundles it holds.
    groups: groups::Groups,
    stopping: bool,
    out: VecDeque<Output>,
    /// Entries [`ObjectTable::collect_into`] removed, for `maybe_free`: one buffer reused.
    freed: Vec<(ObjectId, objects::ObjEntry)>,
    /// The handle objects of the (not detached) actors this node's processes created: the
    /// return object of each creation, which every counted handle holds, wherever it went.
    /// When one is freed, its actor has no handle left ([`NodeCore::handles_gone`]).
    handles: IdMap<ObjectId, shoal_protocol::ActorId>,
    /// Actors whose handle object was freed while an input was handled: ended after it.
    unreferenced: Vec<shoal_protocol::ActorId>,
    /// The other return objects of each task with several (`num_returns`) whose first
    /// return has no value yet, by that first return: when it fails, they all fail with it.
    more_returns: IdMap<ObjectId, Box<[ObjectId]>>,
    /// How to make again the large results this node owns.
    lineage: lineage::Lineage,
    /// What it counts for the node's metrics.
    metrics: metrics::CoreMetrics,
    /// Tasks that ended here, for the state API.
    history: state::History,
    /// Questions to the mesh asked for local processes.
    questions: state::Questions,
    /// Warnings of work waiting long for resources.
    waits: state::Waits,
    /// What workers wrote.
    logs: logs::Logs,
}

impl std::fmt::Debug for NodeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCore")
            .field("node_id", &self.node_id)
            .field("me", &self.me)
            .field("procs", &self.procs.len())
            .field("tasks", &self.tasks.len())
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

/// What a mesh peer needs besides the node's configuration.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Its own peer id.
    pub me: PeerKey,
    /// Its target triple (which binaries it can run).
    pub target: String,
    /// Whether it takes binaries it does not hold (code shipping).
    pub accepts_code: bool,
    /// Its labels, which label selectors match.
    pub labels: Vec<(String, String)>,
    /// Whether it sees every peer's load or a sample.
    pub loads: LoadView,
}

impl NodeCore {
    /// A core for node `node_id`, started at `now`, whose store is the directory
    /// `store_dir` of `config.store_bytes` bytes. `peer` makes it a peer of a mesh.
    pub fn new(
        now: Instant,
        node_id: NodeId,
        config: NodeConfig,
        sched: Scheduler,
        store_dir: PathBuf,
        peer: Option<PeerConfig>,
    ) -> Self {
        let store = CoreStore::new(store_dir, config.store_bytes);
        let lineage = lineage::Lineage::new(config.lineage_bytes);
        let (me, spill) = match peer {
            Some(p) => {
                let mut spill = Spill::new(p.target, p.accepts_code);
                spill.labels = p.labels;
                spill.view = p.loads;
                (Some(p.me), spill)
            }
            None => (None, Spill::new(String::new(), false)),
        };
        let mut core = Self {
            node_id,
            config,
            started: now,
            now,
            me,
            sched,
            store,
            procs: IdMap::default(),
            worker_conns: IdMap::default(),
            cancelling: HashSet::new(),
            children: IdMap::default(),
            binaries: HashMap::new(),
            shipped: HashSet::new(),
            envs: Default::default(),
            tasks: Default::default(),
            objects: Default::default(),
            actors: ActorTable::new(),
            directory: Directory::default(),
            spill,
            rights: Rights::default(),
            name_lookups: HashMap::new(),
            claim_waiters: HashMap::new(),
            next_lookup: 1,
            last_load: None,
            groups: groups::Groups::default(),
            stopping: false,
            out: VecDeque::new(),
            freed: Vec::new(),
            handles: IdMap::default(),
            unreferenced: Vec::new(),
            more_returns: IdMap::default(),
            lineage,
            metrics: metrics::CoreMetrics::default(),
            history: state::History::default(),
            questions: state::Questions::default(),
            waits: state::Waits::default(),
            logs: logs::Logs::default(),
        };
        core.report_load();
        core
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = now;
        if self.stopping {
            tracing::debug!(?input, "input after shutdown ignored");
            return;
        }
        match input {
            Input::Attached { conn, hello } => self.attached(now, conn, hello),
            Input::FromProc { conn, msgs } => {
                for msg in msgs {
                    self.message(now, conn, msg);
                }
            }
            Input::Detached { conn } => self.detached(now, conn),
            Input::WorkerExited { worker, end } => self.worker_exited(now, worker, end),
            Input::WorkerOutput {
                worker,
                stream,
                lines,
            } => self.worker_output(now, worker, stream, lines),
            Input::PeerReport { peer, report } => {
                if Some(peer) == self.me {
                    return;
                }
                let back = !self.spill.peers.contains_key(&peer);
                self.spill.report(peer, *report, now);
                if back {
                    self.peer_back(peer);
                }
                self.spill_pass(now);
            }
            Input::FromPeer { peer, msgs } => {
                self.spill.heard_from(peer);
                for msg in msgs {
                    self.peer_msg(now, peer, msg);
                }
            }
            Input::PeerLost { peer } => self.peer_lost(now, peer),
            Input::Job(done) => self.job_done(now, done),
            Input::Store(done) => self.store_done(now, done),
            Input::Serve { request, peer, id } => self.serve_peer(now, request, peer, id),
        }
        self.after(now);
    }

    /// The deadline of [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.stopping {
            return;
        }
        if self.spill.next_age.is_some_and(|t| t <= now) {
            self.spill.age(now);
        }
        if self.spill.next_pass.is_some_and(|t| t <= now) {
            self.spill.next_pass = None;
            self.spill_pass(now);
        }
        if self.rights.deadline().is_some_and(|t| t <= now) {
            self.rights_expired(now);
        }
        if self.groups.next_pass.is_some_and(|t| t <= now) {
            self.groups.next_pass = None;
            self.groups_pass(now);
        }
        if self.lookup_deadline().is_some_and(|t| t <= now) {
            self.end_lookups(now, |l| l.deadline <= now);
        }
        if self.questions.deadline().is_some_and(|t| t <= now) {
            self.state_deadline(now);
        }
        if self.waits.next_check.is_some_and(|t| t <= now) {
            self.waits.next_check = None;
            self.check_waits(now);
        }
        if self.store.room_deadline().is_some_and(|t| t <= now) {
            self.retry_room(now);
        }
        self.after(now);
    }

    /// The earliest deadline of a name lookup sent to a peer.
    fn lookup_deadline(&self) -> Option<Instant> {
        self.name_lookups.values().map(|l| l.deadline).min()
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        [
            self.spill.next_pass,
            self.spill.next_age,
            self.spill.next_ask(),
            self.groups.next_pass,
            self.rights.deadline(),
            self.lookup_deadline(),
            self.questions.deadline(),
            self.waits.next_check,
            self.store.room_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the scheduler's decisions, then tells peers the load if it changed, and sets
    /// the next look at waiting tasks.
    fn after(&mut self, now: Instant) {
        // (Ending one may free the handles of others it held.)
        while let Some(actor) = self.unreferenced.pop() {
            self.handles_gone(now, actor);
        }
        // What this input freed may make room for writers waiting for it.
        if self.store.room_waiting() > 0 {
            self.retry_room(now);
        }
        self.groups_after(now);
        self.apply_actions(now);
        self.report_load();
        if let Some(ask) = self.spill.wants_loads(now) {
            self.out.push_back(Output::AskLoads(ask));
        }
        let queued = self.sched.queued() > 0 || self.sched.actors_queued() > 0;
        let waiting = self.spill.has_waiting() || (queued && self.me.is_some());
        if (queued || self.spill.has_waiting()) && self.waits.next_check.is_none() {
            self.waits.next_check = Some(now + state::WAIT_CHECK);
        }
        if !waiting {
            self.spill.next_pass = None;
        } else if self.spill.next_pass.is_none() {
            self.spill.next_pass = Some(now + spill::SPILL_INTERVAL);
        }
    }

    /// Stops the node: every party waiting for a value gets [`TaskError::NodeStopping`],
    /// every worker is killed, and no input is taken any more.
    ///
    /// [`TaskError::NodeStopping`]: shoal_protocol::TaskError::NodeStopping
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        if self.stopping {
            return;
        }
        self.fail_all_waiters();
        for request in self.rights.drain(None) {
            self.refuse_waiting(request);
        }
        for worker in self.worker_conns.keys().copied().collect::<Vec<_>>() {
            self.out.push_back(Output::KillWorker { worker });
        }
        for worker in self.sched.worker_ids() {
            if !self.worker_conns.contains_key(&worker) {
                self.out.push_back(Output::KillWorker { worker });
            }
        }
        self.stopping = true;
        tracing::info!("node stopping");
    }

    /// How much the core holds: what must drop to zero once every process is gone.
    pub fn census(&self) -> Census {
        Census {
            procs: self.procs.len(),
            objects: self.objects.len(),
            tasks: self.tasks.len(),
            actors: self.actors.len(),
            queued: self.sched.queued(),
            running: self.sched.running(),
            store_used: self.store.index.used(),
            spilled_tasks: self.spill.spilled_count(),
            waiting_remote: self.spill.remote_wait.len(),
            store_ops: self.store.in_flight(),
            lineage: self.lineage.size().0,
            groups: self.groups.counts(),
        }
    }

    /// One line per task the core knows of (for diagnostics).
    pub fn task_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tasks
            .iter()
            .map(|(id, e)| {
                format!(
                    "task {id} {} of {} missing {} retries {} at {:?}",
                    e.spec.function,
                    e.owner,
                    e.missing,
                    e.retries_left,
                    self.spill.spilled_to(id).map(|p| p.to_string())
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Every object the core knows of, with what keeps it (for `shoal objects`).
    pub fn objects(&self) -> Vec<shoal_protocol::ObjectInfo> {
        self.object_list()
    }

    /// The counters and histograms for the node's metrics, with the tasks it knows by state
    /// and function (the other gauges are in [`NodeCore::status`]).
    pub fn metrics(&self) -> metrics::MetricsSnapshot {
        let running: HashSet<shoal_protocol::TaskId> = self
            .sched
            .running_tasks()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let mut tasks: BTreeMap<&'static str, metrics::Labelled<u64>> = BTreeMap::new();
        for (id, e) in self.tasks.iter() {
            let state = if self.spill.spilled_to(id).is_some() {
                "at_peer"
            } else if e.missing > 0 {
                "waiting_args"
            } else if running.contains(id) {
                "running"
            } else {
                "queued"
            };
            *tasks.entry(state).or_default().entry(&e.spec.function) += 1;
        }
        metrics::MetricsSnapshot {
            counters: self.metrics.clone(),
            tasks: tasks
                .iter()
                .flat_map(|(state, by)| by.iter().map(|(f, n)| (*state, f.to_string(), *n)))
                .collect(),
        }
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn send(&mut self, party: Party, msg: ToClient) {
        match party {
            Party::Proc(conn) => self.out.push_back(Output::ToProc { conn, msg }),
            Party::Peer(peer) => self.tell_peer_as_client(peer, msg),
        }
    }

    fn tell_proc(&mut self, conn: ConnId, msg: ToClient) {
        self.out.push_back(Output::ToProc { conn, msg });
    }

    /// Every message to a peer goes here: the refs it carries become the peer's rights.
    fn tell_peer(&mut self, peer: PeerKey, mut msg: PeerMsg) {
        self.lend(peer, &mut msg);
        self.confer_rights(peer, &msg);
        if let PeerMsg::Submit(rt) = &msg {
            self.work_sent(peer, rt.spec.owner);
        }
        self.out.push_back(Output::ToPeer { peer, msg });
    }
}
