//! The state API: what `shoal list`, `shoal summary` and `shoal get` ask of a node, and
//! what the node asks of every other peer of its mesh to answer them (there is no head).
//!
//! A [`StateQuery`] names a kind of row (tasks, actors, objects, peers, workers), filters
//! and a limit. Each peer answers with the rows of what it holds first-hand (a task is told
//! by the peer where it waits, runs or ran; an actor by the peer that hosts it; an object by
//! every peer with a copy or a ref), as a [`StateAnswer`]; the asking node merges the
//! answers it got in time with [`merge`] into a [`StateReply`], which names the peers that
//! did not answer, so a partial answer is never taken for a whole one.
//!
//! Times travel as "microseconds before the answer was made" (`*_ago_us`), never as clock
//! readings: peers' clocks need not agree, and the asker re-bases them on receipt
//! ([`StateAnswer::age`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, BinaryId, ClientId, GroupId, ObjectId, TaskId};
use crate::messages::ResourceSet;

/// The most rows one query may ask for (from each peer, and in all).
pub const MAX_STATE_LIMIT: u32 = 10_000;
/// Rows a query returns unless it says otherwise (as `ray list`).
pub const DEFAULT_STATE_LIMIT: u32 = 100;
/// Filters one query may carry.
pub const MAX_FILTERS: usize = 16;

/// What a query lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// Tasks waiting, running, and recently ended.
    Tasks,
    /// Actors.
    Actors,
    /// Objects, one row per peer that holds a copy or a ref.
    Objects,
    /// The peers themselves.
    Peers,
    /// Worker processes.
    Workers,
    /// Lines that tasks and actors wrote to stdout and stderr.
    Logs,
    /// Placement groups, each at the node that placed it.
    Groups,
}

impl StateKind {
    /// Every kind.
    pub const ALL: [StateKind; 7] = [
        StateKind::Tasks,
        StateKind::Actors,
        StateKind::Objects,
        StateKind::Peers,
        StateKind::Workers,
        StateKind::Logs,
        StateKind::Groups,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Tasks => "tasks",
            StateKind::Actors => "actors",
            StateKind::Objects => "objects",
            StateKind::Peers => "peers",
            StateKind::Workers => "workers",
            StateKind::Logs => "logs",
            StateKind::Groups => "placement-groups",
        }
    }

    /// The fields of its rows, in column order (what filters may name).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            StateKind::Tasks => TaskRow::FIELDS,
            StateKind::Actors => ActorRow::FIELDS,
            StateKind::Objects => ObjectRow::FIELDS,
            StateKind::Peers => PeerRow::FIELDS,
            StateKind::Workers => WorkerRow::FIELDS,
            StateKind::Logs => LogRow::FIELDS,
            StateKind::Groups => GroupRow::FIELDS,
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StateKind {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, StateError> {
        let s = s.to_ascii_lowercase();
        StateKind::ALL
            .into_iter()
            .find(|k| k.name() == s || k.name().trim_end_matches('s') == s)
            .ok_or_else(|| {
                StateError::BadQuery(format!(
                    "unknown kind {s:?}: expected tasks, actors, objects, peers, workers, logs or \
                     placement-groups"
                ))
            })
    }
}

/// One condition on a field: `KEY=VALUE` or `KEY!=VALUE`. States and other words compare
/// without regard to case; ids match by prefix (so a short id from a table finds its row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The field.
    pub key: String,
    /// `!=` rather than `=`.
    pub negate: bool,
    /// The value.
    pub value: String,
}

impl FromStr for Filter {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, StateError> {
        let (key, negate, value) = if let Some((k, v)) = s.split_once("!=") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once('=') {
            (k, false, v)
        } else {
            return Err(StateError::BadQuery(format!(
                "filter {s:?}: expected KEY=VALUE or KEY!=VALUE"
            )));
        };
        Ok(Filter {
            key: key.trim().to_ascii_lowercase(),
            negate,
            value: value.trim().to_string(),
        })
    }
}

impl Filter {
    /// Whether a cell passes.
    fn passes(&self, key: &str, cell: &Cell) -> bool {
        let text = cell.to_string();
        let equal = if key.ends_with("_id") || key == "node" || key == "owner" {
            !self.value.is_empty() && text.starts_with(&self.value)
        } else {
            text.eq_ignore_ascii_case(&self.value)
        };
        equal != self.negate
    }
}

/// A question about the state of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    /// What to list.
    pub kind: StateKind,
    /// Conditions every row must meet.
    pub filters: Vec<Filter>,
    /// Rows to return at most (the newest or largest first).
    pub limit: u32,
    /// Counts by group and state rather than rows ([`SummaryRow`]).
    pub summary: bool,
}

impl StateQuery {
    /// A query of `kind` with no filter and the default limit.
    pub fn new(kind: StateKind) -> Self {
        Self {
            kind,
            filters: Vec::new(),
            limit: DEFAULT_STATE_LIMIT,
            summary: false,
        }
    }

    /// Checks what a peer or a process sent: known fields, bounded limit and filters.
    pub fn check(&self) -> Result<(), StateError> {
        if self.limit == 0 || self.limit > MAX_STATE_LIMIT {
            return Err(StateError::BadQuery(format!(
                "limit {} is out of 1..={MAX_STATE_LIMIT}",
                self.limit
            )));
        }
        if self.filters.len() > MAX_FILTERS {
            return Err(StateError::BadQuery(format!(
                "{} filters, at most {MAX_FILTERS}",
                self.filters.len()
            )));
        }
        let fields = self.kind.fields();
        for f in &self.filters {
            if !fields.contains(&f.key.as_str()) {
                return Err(StateError::BadQuery(format!(
                    "{} have no field {:?}; fields: {}",
                    self.kind,
                    f.key,
                    fields.join(", ")
                )));
            }
        }
        if self.summary
            && matches!(
                self.kind,
                StateKind::Peers | StateKind::Workers | StateKind::Logs | StateKind::Groups
            )
        {
            return Err(StateError::BadQuery(format!(
                "no summary of {}: summaries are of tasks, actors and objects",
                self.kind
            )));
        }
        Ok(())
    }

    /// Whether a row passes every filter.
    pub fn matches<R: Row>(&self, row: &R) -> bool {
        if self.filters.is_empty() {
            return true;
        }
        let cells = row.cells();
        self.filters.iter().all(|f| {
            cells
                .iter()
                .find(|(k, _)| *k == f.key)
                .is_some_and(|(k, c)| f.passes(k, c))
        })
    }
}

/// Why a query was not answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    /// The query names an unknown field, or its limit is out of range.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// The asking process may not ask (a worker).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The node has too many questions in flight.
    #[error("busy: {0}")]
    Busy(String),
}

/// One value of a row, as tables, JSON and filters see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Text (ids in hex or base58, names, states).
    Text(String),
    /// A count, a size or a duration.
    Num(u64),
    /// No value.
    None,
    /// Several texts.
    List(Vec<String>),
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Text(s) => f.write_str(s),
            Cell::Num(n) => write!(f, "{n}"),
            Cell::None => f.write_str("-"),
            Cell::List(v) => f.write_str(&v.join(",")),
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Text(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Text(s.to_string())
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Cell::Num(n)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::None, Into::into)
    }
}

/// A row of a state answer: its fields by name, in column order.
pub trait Row {
    /// The names of [`Row::cells`], in order.
    const FIELDS: &'static [&'static str];
    /// Its fields.
    fn cells(&self) -> Vec<(&'static str, Cell)>;
}

/// Where a task is in its life (Ray's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for arguments to be made or fetched.
    PendingArgsAvail,
    /// Waiting for resources, a worker, or a peer with room.
    PendingNodeAssignment,
    /// A call waiting behind its actor's other calls.
    PendingActor,
    /// Sent to a worker that is still busy with the tasks sent before it.
    SubmittedToWorker,
    /// Running in a worker.
    Running,
    /// Ended with a value.
    Finished,
    /// Ended with an error.
    Failed,
}

impl TaskState {
    /// Its name, as Ray writes it.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::PendingArgsAvail => "PENDING_ARGS_AVAIL",
            TaskState::PendingNodeAssignment => "PENDING_NODE_ASSIGNMENT",
            TaskState::PendingActor => "PENDING_ACTOR",
            TaskState::SubmittedToWorker => "SUBMITTED_TO_WORKER",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
        }
    }

    /// Whether it has ended.
    pub fn ended(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed)
    }
}

/// What a task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskRowKind {
    /// A remote function.
    Function,
    /// An actor's creation.
    ActorCreation,
    /// A call of an actor's method.
    ActorCall,
}

impl TaskRowKind {
    /// Its name, as Ray writes it.
    pub fn name(self) -> &'static str {
        match self {
            TaskRowKind::Function => "NORMAL_TASK",
            TaskRowKind::ActorCreation => "ACTOR_CREATION_TASK",
            TaskRowKind::ActorCall => "ACTOR_TASK",
        }
    }
}

/// When a task reached each step, in microseconds before the answer was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTimes {
    /// It arrived at the node that tells it (submitted there, or sent by a peer).
    pub arrived_ago_us: u64,
    /// Its arguments were all there (the end of fetching them).
    pub ready_ago_us: Option<u64>,
    /// It was handed to a worker.
    pub started_ago_us: Option<u64>,
    /// It ended.
    pub ended_ago_us: Option<u64>,
}

impl TaskTimes {
    fn age(&mut self, by: u64) {
        self.arrived_ago_us = self.arrived_ago_us.saturating_add(by);
        for t in [
            &mut self.ready_ago_us,
            &mut self.started_ago_us,
            &mut self.ended_ago_us,
        ]
        .into_iter()
        .flatten()
        {
            *t = t.saturating_add(by);
        }
    }

    /// The most recent step's age: how long ago anything happened to it.
    pub fn latest_ago_us(&self) -> u64 {
        [self.ready_ago_us, self.started_ago_us, self.ended_ago_us]
            .into_iter()
            .flatten()
            .fold(self.arrived_ago_us, u64::min)
    }
}

/// A task, told by the peer where it waits, runs or ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The task.
    pub task_id: TaskId,
    /// Its function, class or method name.
    pub function: String,
    /// What it does.
    pub kind: TaskRowKind,
    /// The actor it creates or calls.
    pub actor_id: Option<ActorId>,
    /// Where it is in its life.
    pub state: TaskState,
    /// The peer (or, outside a mesh, the node) where it is or was.
    pub node: String,
    /// The process that submitted it.
    pub owner: ClientId,
    /// The worker process that runs or ran it.
    pub worker_pid: Option<u32>,
    /// What it holds while it runs.
    pub resources: ResourceSet,
    /// Why it waits, while it does.
    pub reason: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it reached each step.
    pub times: TaskTimes,
}

impl Row for TaskRow {
    const FIELDS: &'static [&'static str] = &[
        "task_id",
        "function",
        "kind",
        "state",
        "node",
        "actor_id",
        "owner",
        "worker_pid",
        "resources",
        "reason",
        "error",
        "arrived_ago_us",
        "ready_ago_us",
        "started_ago_us",
        "ended_ago_us",
    ];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        vec![
            ("task_id", self.task_id.to_hex().into()),
            ("function", self.function.clone().into()),
            ("kind", self.kind.name().into()),
            ("state", self.state.name().into()),
            ("node", self.node.clone().into()),
            ("actor_id", self.actor_id.map(|a| a.to_hex()).into()),
            ("owner", self.owner.to_string().into()),
            ("worker_pid", self.worker_pid.map(u64::from).into()),
            ("resources", self.resources.to_string().into()),
            ("reason", self.reason.clone().into()),
            ("error", self.error.clone().into()),
            ("arrived_ago_us", self.times.arrived_ago_us.into()),
            ("ready_ago_us", self.times.ready_ago_us.into()),
            ("started_ago_us", self.times.started_ago_us.into()),
            ("ended_ago_us", self.times.ended_ago_us.into()),
        ]
    }
}

/// An actor, told by the peer that hosts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRow {
    /// The actor.
    pub actor_id: ActorId,
    /// Its class.
    pub class: String,
    /// Its name, if any.
    pub name: Option<String>,
    /// `PENDING_CREATION`, `STARTING`, `ALIVE`, `RESTARTING` or `DEAD`.
    pub state: String,
    /// The peer (or node) that hosts it.
    pub node: String,
    /// The process that created it.
    pub owner: ClientId,
    /// Its process (none while it has none).
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// Calls queued or in flight.
    pub calls_pending: u64,
    /// Calls finished.
    pub calls_done: u64,
    /// What it holds.
    pub resources: ResourceSet,
    /// Why it waits or why it died.
    pub reason: Option<String>,
}

impl Row for ActorRow {
    const FIELDS: &'static [&'static str] = &[
        "actor_id",
        "class",
        "name",
        "state",
        "node",
        "owner",
        "pid",
        "restarts",
        "calls_pending",
        "calls_done",
        "resources",
        "reason",
    ];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        vec![
            ("actor_id", self.actor_id.to_hex().into()),
            ("class", self.class.clone().into()),
            ("name", self.name.clone().into()),
            ("state", self.state.clone().into()),
            ("node", self.node.clone().into()),
            ("owner", self.owner.to_string().into()),
            ("pid", self.pid.map(u64::from).into()),
            ("restarts", u64::from(self.restarts).into()),
            ("calls_pending", self.calls_pending.into()),
            ("calls_done", self.calls_done.into()),
            ("resources", self.resources.to_string().into()),
            ("reason", self.reason.clone().into()),
        ]
    }
}

/// An object at one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRow {
    /// The object.
    pub object_id: ObjectId,
    /// The peer (or node) this row is about.
    pub node: String,
    /// Its size in bytes (0 while pending).
    pub size: u64,
    /// The process that made it.
    pub owner: Option<ClientId>,
    /// Processes and peers holding refs to it there.
    pub holders: u32,
    /// Why it is kept there (`ref`, `task-arg`, `nested`, `pending`).
    pub pinned_by: Vec<String>,
    /// `inline`, `memory`, `disk`, `memory+disk`, `remote`, `pending` or `error`.
    pub location: String,
}

impl Row for ObjectRow {
    const FIELDS: &'static [&'static str] = &[
        "object_id",
        "node",
        "size",
        "location",
        "owner",
        "holders",
        "pinned_by",
    ];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        vec![
            ("object_id", self.object_id.to_hex().into()),
            ("node", self.node.clone().into()),
            ("size", self.size.into()),
            ("location", self.location.clone().into()),
            ("owner", self.owner.map(|c| c.to_string()).into()),
            ("holders", u64::from(self.holders).into()),
            ("pinned_by", Cell::List(self.pinned_by.clone())),
        ]
    }
}

/// A peer, told by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Its peer id (or, outside a mesh, its node id).
    pub node: String,
    /// Its platform.
    pub target: String,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// All its resources.
    pub total: ResourceSet,
    /// Its free resources.
    pub free: ResourceSet,
    /// Tasks waiting there.
    pub queued: u64,
    /// Tasks running there.
    pub running: u64,
    /// Tasks ended there since it started.
    pub finished: u64,
    /// Tasks ended there in the last ten seconds, per second.
    pub tasks_per_s: u64,
    /// Worker processes.
    pub workers: u64,
    /// Actors it hosts (alive or starting).
    pub actors: u64,
    /// Its store's capacity.
    pub store_capacity: u64,
    /// Bytes in use in its store.
    pub store_used: u64,
    /// Bytes spilled to its disk.
    pub spilled_bytes: u64,
}

impl Row for PeerRow {
    const FIELDS: &'static [&'static str] = &[
        "node",
        "target",
        "uptime_ms",
        "total",
        "free",
        "queued",
        "running",
        "finished",
        "tasks_per_s",
        "workers",
        "actors",
        "store_capacity",
        "store_used",
        "spilled_bytes",
    ];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        vec![
            ("node", self.node.clone().into()),
            ("target", self.target.clone().into()),
            ("uptime_ms", self.uptime_ms.into()),
            ("total", self.total.to_string().into()),
            ("free", self.free.to_string().into()),
            ("queued", self.queued.into()),
            ("running", self.running.into()),
            ("finished", self.finished.into()),
            ("tasks_per_s", self.tasks_per_s.into()),
            ("workers", self.workers.into()),
            ("actors", self.actors.into()),
            ("store_capacity", self.store_capacity.into()),
            ("store_used", self.store_used.into()),
            ("spilled_bytes", self.spilled_bytes.into()),
        ]
    }
}

/// A worker process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Its node-local number.
    pub worker_id: u64,
    /// The peer (or node) that runs it.
    pub node: String,
    /// Its process id (none until it connects).
    pub pid: Option<u32>,
    /// The binary it runs.
    pub binary: BinaryId,
    /// `starting`, `idle`, `busy`, `blocked` or `actor`.
    pub state: String,
    /// Tasks it finished.
    pub tasks_done: u64,
}

impl Row for WorkerRow {
    const FIELDS: &'static [&'static str] =
        &["worker_id", "node", "pid", "state", "tasks_done", "binary"];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        vec![
            ("worker_id", self.worker_id.into()),
            ("node", self.node.clone().into()),
            ("pid", self.pid.map(u64::from).into()),
            ("state", self.state.clone().into()),
            ("tasks_done", self.tasks_done.into()),
            ("binary", self.binary.to_hex().into()),
        ]
    }
}

/// Which output of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The longest line kept of a process's output, in bytes (longer ones are cut).
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// A line a task or an actor wrote, as it travels to the program that submitted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The peer (or node) where it was written.
    pub node: String,
    /// The function or the actor's class (empty for a worker between tasks).
    pub function: String,
    /// The worker process.
    pub pid: u32,
    /// The task it ran then, if any.
    pub task_id: Option<TaskId>,
    /// The actor it hosts, if any.
    pub actor_id: Option<ActorId>,
    /// Which output.
    pub stream: Stream,
    /// The line, without its newline.
    pub text: String,
}

impl LogLine {
    /// What a program prints before the line, as Ray does: `(function pid=… peer=…)`, the
    /// function without its module path, the peer id cut to 16 characters.
    pub fn prefix(&self) -> String {
        let what = if self.function.is_empty() {
            "worker"
        } else {
            self.function.rsplit("::").next().unwrap_or(&self.function)
        };
        let peer: String = self.node.chars().take(16).collect();
        format!("({what} pid={} peer={peer})", self.pid)
    }
}

/// A line kept at a peer (`shoal logs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRow {
    /// The line.
    pub line: LogLine,
    /// Its number at that peer (increasing: `--follow` prints only newer ones).
    pub seq: u64,
    /// When it was written, in microseconds before the answer was made.
    pub at_ago_us: u64,
}

impl Row for LogRow {
    const FIELDS: &'static [&'static str] = &[
        "node",
        "seq",
        "function",
        "pid",
        "task_id",
        "actor_id",
        "stream",
        "text",
        "at_ago_us",
    ];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        let l = &self.line;
        vec![
            ("node", l.node.clone().into()),
            ("seq", self.seq.into()),
            ("function", l.function.clone().into()),
            ("pid", u64::from(l.pid).into()),
            ("task_id", l.task_id.map(|t| t.to_hex()).into()),
            ("actor_id", l.actor_id.map(|a| a.to_hex()).into()),
            ("stream", l.stream.name().into()),
            ("text", l.text.clone().into()),
            ("at_ago_us", self.at_ago_us.into()),
        ]
    }
}

/// A placement group, at the node that placed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    /// The group.
    pub group_id: GroupId,
    /// The peer (or node) that placed it and answers for it.
    pub node: String,
    /// `PENDING` (not every bundle is placed yet) or `CREATED`.
    pub state: String,
    /// `PACK`, `SPREAD`, `STRICT_PACK` or `STRICT_SPREAD`.
    pub strategy: String,
    /// Each bundle's resources, in bundle order.
    pub bundles: Vec<ResourceSet>,
    /// The peer each bundle is on, in bundle order (`-`: not placed).
    pub sites: Vec<String>,
    /// It outlives its creator.
    pub detached: bool,
    /// How long ago it was asked for, in microseconds.
    pub created_ago_us: u64,
}

impl Row for GroupRow {
    const FIELDS: &'static [&'static str] = &[
        "group_id",
        "node",
        "state",
        "strategy",
        "bundles",
        "sites",
        "detached",
        "created_ago_us",
    ];
    fn cells(&self) -> Vec<(&'static str, Cell)> {
        let bundles = self.bundles.iter().map(ResourceSet::to_string).collect();
        vec![
            ("group_id", self.group_id.to_hex().into()),
            ("node", self.node.clone().into()),
            ("state", self.state.clone().into()),
            ("strategy", self.strategy.clone().into()),
            ("bundles", Cell::List(bundles)),
            ("sites", Cell::List(self.sites.clone())),
            (
                "detached",
                (if self.detached { "yes" } else { "no" }).into(),
            ),
            ("created_ago_us", self.created_ago_us.into()),
        ]
    }
}

/// Rows of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateRows {
    /// Tasks.
    Tasks(Vec<TaskRow>),
    /// Actors.
    Actors(Vec<ActorRow>),
    /// Objects.
    Objects(Vec<ObjectRow>),
    /// Peers.
    Peers(Vec<PeerRow>),
    /// Workers.
    Workers(Vec<WorkerRow>),
    /// Lines of output.
    Logs(Vec<LogRow>),
    /// Placement groups.
    Groups(Vec<GroupRow>),
}

macro_rules! rows_from {
    ($($row:ty => $variant:ident),*) => {$(
        impl From<Vec<$row>> for StateRows {
            fn from(v: Vec<$row>) -> Self {
                StateRows::$variant(v)
            }
        }
    )*};
}

rows_from!(
    TaskRow => Tasks,
    ActorRow => Actors,
    ObjectRow => Objects,
    PeerRow => Peers,
    WorkerRow => Workers,
    LogRow => Logs,
    GroupRow => Groups
);

impl StateRows {
    /// No rows of `kind`.
    pub fn empty(kind: StateKind) -> Self {
        match kind {
            StateKind::Tasks => StateRows::Tasks(Vec::new()),
            StateKind::Actors => StateRows::Actors(Vec::new()),
            StateKind::Objects => StateRows::Objects(Vec::new()),
            StateKind::Peers => StateRows::Peers(Vec::new()),
            StateKind::Workers => StateRows::Workers(Vec::new()),
            StateKind::Logs => StateRows::Logs(Vec::new()),
            StateKind::Groups => StateRows::Groups(Vec::new()),
        }
    }

    /// Their kind.
    pub fn kind(&self) -> StateKind {
        match self {
            StateRows::Tasks(_) => StateKind::Tasks,
            StateRows::Actors(_) => StateKind::Actors,
            StateRows::Objects(_) => StateKind::Objects,
            StateRows::Peers(_) => StateKind::Peers,
            StateRows::Workers(_) => StateKind::Workers,
            StateRows::Logs(_) => StateKind::Logs,
            StateRows::Groups(_) => StateKind::Groups,
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            StateRows::Tasks(v) => v.len(),
            StateRows::Actors(v) => v.len(),
            StateRows::Objects(v) => v.len(),
            StateRows::Peers(v) => v.len(),
            StateRows::Workers(v) => v.len(),
            StateRows::Logs(v) => v.len(),
            StateRows::Groups(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row's cells, in order.
    pub fn cells(&self) -> Vec<Vec<(&'static str, Cell)>> {
        fn all<R: Row>(v: &[R]) -> Vec<Vec<(&'static str, Cell)>> {
            v.iter().map(Row::cells).collect()
        }
        match self {
            StateRows::Tasks(v) => all(v),
            StateRows::Actors(v) => all(v),
            StateRows::Objects(v) => all(v),
            StateRows::Peers(v) => all(v),
            StateRows::Workers(v) => all(v),
            StateRows::Logs(v) => all(v),
            StateRows::Groups(v) => all(v),
        }
    }

    /// Adds `by` microseconds to every time (the answer is that much older).
    pub fn age(&mut self, by: u64) {
        match self {
            StateRows::Tasks(v) => {
                for r in v {
                    r.times.age(by);
                }
            }
            StateRows::Logs(v) => {
                for r in v {
                    r.at_ago_us = r.at_ago_us.saturating_add(by);
                }
            }
            StateRows::Groups(v) => {
                for r in v {
                    r.created_ago_us = r.created_ago_us.saturating_add(by);
                }
            }
            _ => {}
        }
    }

    /// Appends `other` (rows of another kind are dropped: a peer that answered the wrong
    /// kind is not believed).
    fn extend(&mut self, other: StateRows) {
        match (self, other) {
            (StateRows::Tasks(a), StateRows::Tasks(b)) => a.extend(b),
            (StateRows::Actors(a), StateRows::Actors(b)) => a.extend(b),
            (StateRows::Objects(a), StateRows::Objects(b)) => a.extend(b),
            (StateRows::Peers(a), StateRows::Peers(b)) => a.extend(b),
            (StateRows::Workers(a), StateRows::Workers(b)) => a.extend(b),
            (StateRows::Logs(a), StateRows::Logs(b)) => a.extend(b),
            (StateRows::Groups(a), StateRows::Groups(b)) => a.extend(b),
            _ => {}
        }
    }

    /// Puts them in the order a listing shows (newest tasks first, largest objects first,
    /// log lines oldest first, others by id) and keeps `limit` (the newest tasks and lines).
    pub fn order_and_cut(&mut self, limit: usize) {
        match self {
            StateRows::Tasks(v) => {
                v.sort_by(|a, b| {
                    a.times
                        .arrived_ago_us
                        .cmp(&b.times.arrived_ago_us)
                        .then(a.task_id.cmp(&b.task_id))
                });
                v.truncate(limit);
            }
            StateRows::Actors(v) => {
                v.sort_by(|a, b| a.class.cmp(&b.class).then(a.actor_id.cmp(&b.actor_id)));
                v.truncate(limit);
            }
            StateRows::Objects(v) => {
                v.sort_by(|a, b| {
                    b.size
                        .cmp(&a.size)
                        .then(a.object_id.cmp(&b.object_id))
                        .then(a.node.cmp(&b.node))
                });
                v.truncate(limit);
            }
            StateRows::Peers(v) => {
                v.sort_by(|a, b| a.node.cmp(&b.node));
                v.truncate(limit);
            }
            StateRows::Workers(v) => {
                v.sort_by(|a, b| a.node.cmp(&b.node).then(a.worker_id.cmp(&b.worker_id)));
                v.truncate(limit);
            }
            StateRows::Groups(v) => {
                v.sort_by(|a, b| a.node.cmp(&b.node).then(a.group_id.cmp(&b.group_id)));
                v.truncate(limit);
            }
            StateRows::Logs(v) => {
                // The newest `limit`, oldest first (as a log reads).
                v.sort_by(|a, b| {
                    b.at_ago_us
                        .cmp(&a.at_ago_us)
                        .then(a.line.node.cmp(&b.line.node))
                        .then(a.seq.cmp(&b.seq))
                });
                let extra = v.len().saturating_sub(limit);
                v.drain(..extra);
            }
        }
    }

    /// Keeps one row per task: the one told by the peer where something happened last (a
    /// task given back by a peer, or retried elsewhere, may be told by two).
    fn dedup_tasks(&mut self) -> u64 {
        let StateRows::Tasks(v) = self else {
            return 0;
        };
        let before = v.len();
        let mut best: HashMap<TaskId, usize> = HashMap::with_capacity(v.len());
        for (i, r) in v.iter().enumerate() {
            match best.get(&r.task_id) {
                Some(&j) if !newer(r, &v[j]) => {}
                _ => {
                    best.insert(r.task_id, i);
                }
            }
        }
        let mut keep: Vec<bool> = vec![false; v.len()];
        for i in best.into_values() {
            keep[i] = true;
        }
        let mut i = 0;
        v.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        (before - v.len()) as u64
    }
}

/// Whether `a` tells a later stage of its task than `b`: a live row beats an ended one (the
/// task was given back or retried), and otherwise the most recent activity wins.
fn newer(a: &TaskRow, b: &TaskRow) -> bool {
    match (a.state.ended(), b.state.ended()) {
        (false, true) => true,
        (true, false) => false,
        _ => a.times.latest_ago_us() < b.times.latest_ago_us(),
    }
}

/// A count of rows of one group in one state (`shoal summary`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The function (tasks), class (actors) or location (objects).
    pub group: String,
    /// The state (tasks, actors) or the empty string (objects).
    pub state: String,
    /// How many.
    pub count: u64,
    /// Their bytes (objects).
    pub bytes: u64,
}

/// Sums summary rows by group and state, in order.
pub fn summarize<'a>(rows: impl IntoIterator<Item = &'a SummaryRow>) -> Vec<SummaryRow> {
    let mut by: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for r in rows {
        let e = by.entry((r.group.clone(), r.state.clone())).or_default();
        e.0 += r.count;
        e.1 += r.bytes;
    }
    by.into_iter()
        .map(|((group, state), (count, bytes))| SummaryRow {
            group,
            state,
            count,
            bytes,
        })
        .collect()
}

/// One peer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAnswer {
    /// The answering peer (or node).
    pub node: String,
    /// Its rows that pass the filters, at most the query's limit.
    pub rows: StateRows,
    /// How many of its rows passed the filters (more than `rows` when the limit cut them).
    pub matched: u64,
    /// With [`StateQuery::summary`]: its counts.
    pub summary: Vec<SummaryRow>,
}

impl StateAnswer {
    /// Adds `by` microseconds to every time in it (it is that much older).
    pub fn age(&mut self, by: u64) {
        self.rows.age(by);
    }
}

/// The merged answer of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    /// The rows, merged, ordered, at most the query's limit.
    pub rows: StateRows,
    /// How many rows passed the filters in all (more than `rows` when the limit cut them).
    pub matched: u64,
    /// With [`StateQuery::summary`]: the counts, summed over the peers that answered.
    pub summary: Vec<SummaryRow>,
    /// The peers (or node) that answered, the asker first.
    pub answered: Vec<String>,
    /// The peers asked that did not answer in time: the answer is partial when any did not.
    pub missing: Vec<String>,
}

impl StateReply {
    /// Whether some peer did not answer.
    pub fn partial(&self) -> bool {
        !self.missing.is_empty()
    }
}

/// Merges the answers of the peers (the asker's own first) to `query`, `missing` naming the
/// peers that did not answer in time.
pub fn merge(query: &StateQuery, answers: Vec<StateAnswer>, missing: Vec<String>) -> StateReply {
    let mut rows = StateRows::empty(query.kind);
    let mut matched = 0;
    let mut answered = Vec::with_capacity(answers.len());
    let mut summary = Vec::new();
    for a in answers {
        answered.push(a.node);
        matched += a.matched;
        rows.extend(a.rows);
        summary.extend(a.summary);
    }
    matched = matched.saturating_sub(rows.dedup_tasks());
    rows.order_and_cut(query.limit as usize);
    StateReply {
        rows,
        matched,
        summary: summarize(&summary),
        answered,
        missing,
    }
}

/// The shortest width, at least `min`, at which the prefixes of `ids` are as distinct as the
/// ids themselves: what a table may cut ids to without two rows showing the same one.
pub fn unique_width<'a>(ids: impl IntoIterator<Item = &'a str>, min: usize) -> usize {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut width = min;
    for pair in ids.windows(2) {
        let common = pair[0]
            .chars()
            .zip(pair[1].chars())
            .take_while(|(a, b)| a == b)
            .count();
        width = width.max(common + 1);
    }
    width
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seq: u64, state: TaskState, node: &str, arrived: u64) -> TaskRow {
        TaskRow {
            task_id: TaskId::new(ClientId(1), seq),
            function: "f".into(),
            kind: TaskRowKind::Function,
            actor_id: None,
            state,
            node: node.into(),
            owner: ClientId(1),
            worker_pid: None,
            resources: ResourceSet::cpus(1.0),
            reason: None,
            error: None,
            times: TaskTimes {
                arrived_ago_us: arrived,
                ready_ago_us: None,
                started_ago_us: None,
                ended_ago_us: state.ended().then_some(arrived / 2),
            },
        }
    }

    fn answer(node: &str, rows: Vec<TaskRow>) -> StateAnswer {
        StateAnswer {
            node: node.into(),
            matched: rows.len() as u64,
            rows: StateRows::Tasks(rows),
            summary: Vec::new(),
        }
    }

    #[test]
    fn filters_parse_check_and_match() {
        let f: Filter = "state=running".parse().unwrap();
        assert_eq!(
            (f.key.as_str(), f.negate, f.value.as_str()),
            ("state", false, "running")
        );
        let g: Filter = "Node!=12D3".parse().unwrap();
        assert_eq!((g.key.as_str(), g.negate), ("node", true));
        assert!("state".parse::<Filter>().is_err());

        let mut q = StateQuery::new(StateKind::Tasks);
        q.filters = vec![f];
        q.check().unwrap();
        assert!(q.matches(&task(1, TaskState::Running, "a", 5)));
        assert!(!q.matches(&task(2, TaskState::Finished, "a", 5)));
        // Ids match by prefix.
        let row = task(3, TaskState::Running, "12D3KooWabc", 5);
        let id = row.task_id.to_hex();
        q.filters = vec![format!("task_id={}", &id[..6]).parse().unwrap()];
        assert!(q.matches(&row));
        q.filters = vec!["node!=12D3".parse().unwrap()];
        assert!(!q.matches(&row));

        q.filters = vec!["colour=red".parse().unwrap()];
        let e = q.check().unwrap_err();
        assert!(e.to_string().contains("no field \"colour\""), "{e}");
        q.filters.clear();
        q.limit = MAX_STATE_LIMIT + 1;
        assert!(q.check().is_err());
        let mut s = StateQuery::new(StateKind::Peers);
        s.summary = true;
        assert!(s.check().is_err());
        assert_eq!("actor".parse::<StateKind>().unwrap(), StateKind::Actors);
        assert!("nodes".parse::<StateKind>().is_err());
    }

    #[test]
    fn merge_keeps_the_latest_row_of_a_task_and_marks_silent_peers() {
        let q = StateQuery::new(StateKind::Tasks);
        // Task 1 failed at a (its worker died) and runs again at b.
        let a = answer(
            "a",
            vec![
                task(1, TaskState::Failed, "a", 900),
                task(2, TaskState::Finished, "a", 100),
            ],
        );
        let b = answer(
            "b",
            vec![
                task(1, TaskState::Running, "b", 50),
                task(3, TaskState::PendingArgsAvail, "b", 10),
            ],
        );
        let r = merge(&q, vec![a, b], vec!["c".into()]);
        let StateRows::Tasks(rows) = &r.rows else {
            panic!("tasks")
        };
        let got: Vec<(u64, &str)> = rows
            .iter()
            .map(|t| (t.task_id.seq(), t.node.as_str()))
            .collect();
        // Newest first; task 1 once, where it runs now.
        assert_eq!(got, vec![(3, "b"), (1, "b"), (2, "a")]);
        assert_eq!(r.matched, 3);
        assert_eq!(r.answered, vec!["a".to_string(), "b".to_string()]);
        assert!(r.partial());

        // The limit keeps the newest.
        let mut q2 = q.clone();
        q2.limit = 1;
        let r = merge(
            &q2,
            vec![answer("a", vec![task(5, TaskState::Running, "a", 7)])],
            vec![],
        );
        assert_eq!(r.rows.len(), 1);
        assert!(!r.partial());
    }

    #[test]
    fn answers_age_and_summaries_sum() {
        let mut a = answer("a", vec![task(1, TaskState::Finished, "a", 100)]);
        a.age(1_000);
        let StateRows::Tasks(rows) = &a.rows else {
            panic!("tasks")
        };
        assert_eq!(rows[0].times.arrived_ago_us, 1_100);
        assert_eq!(rows[0].times.ended_ago_us, Some(1_050));
        let s = |g: &str, st: &str, n| SummaryRow {
            group: g.into(),
            state: st.into(),
            count: n,
            bytes: n * 10,
        };
        let sum = summarize(&[
            s("f", "FINISHED", 2),
            s("g", "RUNNING", 1),
            s("f", "FINISHED", 3),
        ]);
        assert_eq!(sum, vec![s("f", "FINISHED", 5), s("g", "RUNNING", 1)]);
    }

    #[test]
    fn unique_width_keeps_ids_apart() {
        let ids = ["12D3KooWAbc", "12D3KooWAbd", "12D3KooWX"];
        assert_eq!(unique_width(ids, 4), 11);
        assert_eq!(unique_width(["abcdef", "abzzzz"], 4), 4);
        assert_eq!(unique_width(["same", "same"], 2), 2);
    }

    #[test]
    fn rows_have_every_field_they_name() {
        let node = "n".to_string();
        for kind in StateKind::ALL {
            let rows = match kind {
                StateKind::Tasks => StateRows::Tasks(vec![task(1, TaskState::Running, "n", 1)]),
                StateKind::Actors => StateRows::Actors(vec![ActorRow {
                    actor_id: ActorId([1; 16]),
                    class: "C".into(),
                    name: None,
                    state: "ALIVE".into(),
                    node: node.clone(),
                    owner: ClientId(1),
                    pid: Some(3),
                    restarts: 0,
                    calls_pending: 0,
                    calls_done: 2,
                    resources: ResourceSet::new(),
                    reason: None,
                }]),
                StateKind::Objects => StateRows::Objects(vec![ObjectRow {
                    object_id: ObjectId([2; 32]),
                    node: node.clone(),
                    size: 9,
                    owner: None,
                    holders: 1,
                    pinned_by: vec!["ref".into()],
                    location: "memory".into(),
                }]),
                StateKind::Peers => StateRows::Peers(vec![PeerRow {
                    node: node.clone(),
                    target: "t".into(),
                    uptime_ms: 1,
                    total: ResourceSet::cpus(2.0),
                    free: ResourceSet::cpus(1.0),
                    queued: 0,
                    running: 1,
                    finished: 4,
                    tasks_per_s: 0,
                    workers: 1,
                    actors: 0,
                    store_capacity: 10,
                    store_used: 1,
                    spilled_bytes: 0,
                }]),
                StateKind::Workers => StateRows::Workers(vec![WorkerRow {
                    worker_id: 1,
                    node: node.clone(),
                    pid: None,
                    binary: BinaryId([3; 32]),
                    state: "idle".into(),
                    tasks_done: 0,
                }]),
                StateKind::Groups => StateRows::Groups(vec![GroupRow {
                    group_id: GroupId([4; 16]),
                    node: node.clone(),
                    state: "CREATED".into(),
                    strategy: "PACK".into(),
                    bundles: vec![ResourceSet::cpus(1.0)],
                    sites: vec![node.clone()],
                    detached: false,
                    created_ago_us: 7,
                }]),
                StateKind::Logs => StateRows::Logs(vec![LogRow {
                    line: LogLine {
                        node: node.clone(),
                        function: "f".into(),
                        pid: 3,
                        task_id: None,
                        actor_id: None,
                        stream: Stream::Stdout,
                        text: "hello".into(),
                    },
                    seq: 1,
                    at_ago_us: 5,
                }]),
            };
            assert_eq!(rows.kind(), kind);
            let cells = &rows.cells()[0];
            let names: Vec<&str> = cells.iter().map(|(k, _)| *k).collect();
            assert_eq!(names, kind.fields(), "{kind}");
            // Every row can be found by its node.
            let mut q = StateQuery::new(kind);
            q.filters = vec!["node=n".parse().unwrap()];
            q.check().unwrap();
        }
    }
}
