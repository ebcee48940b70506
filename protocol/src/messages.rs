//! The messages between a node and the processes attached to it (drivers, workers, the CLI).
//!
//! A connection opens with [`ToNode::Hello`], answered by [`ToClient::Welcome`] or
//! [`ToClient::Rejected`]. After that both sides stream frames; replies that answer a request
//! carry the request's number.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, ActorToken, BinaryId, ClientId, Digest, NodeId, ObjectId, TaskId};

/// Resource quantities in thousandths ("milli" units), keyed by name. `CPU` is the CPU count;
/// other names are custom resources (`--resource gpu=1`).
///
/// ```
/// # use shoal_protocol as shoal;
/// use shoal::ResourceSet;
/// // What a training task asks: 2 CPUs and half a GPU.
/// let demand = ResourceSet::cpus(2.0).with("GPU", 0.5);
/// assert_eq!(demand.get_milli("GPU"), 500);
/// assert_eq!(demand.to_string(), "CPU=2, GPU=0.5");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceSet(pub BTreeMap<String, u64>);

/// The name of the CPU resource.
pub const CPU: &str = "CPU";

impl ResourceSet {
    /// Nothing at all.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// let none = shoal::ResourceSet::new();
    /// assert_eq!(none.get_milli("CPU"), 0);
    /// assert_eq!(none.to_string(), "nothing");
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// `n` whole CPUs (fractions through [`ResourceSet::with_milli`]).
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// assert_eq!(ResourceSet::cpus(4.0).get_milli("CPU"), 4000);
    /// // One bundle of one CPU for each of 3 workers.
    /// let bundles = vec![ResourceSet::cpus(1.0); 3];
    /// # assert_eq!(bundles.len(), 3);
    /// ```
    pub fn cpus(n: f64) -> Self {
        Self::new().with(CPU, n)
    }
    /// Adds `amount` (in whole units, fractions allowed) of `name`.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// let bundle = shoal::ResourceSet::cpus(2.0).with("GPU", 1.0).with("memory_gb", 16.0);
    /// assert_eq!(bundle.get_milli("memory_gb"), 16_000);
    /// ```
    pub fn with(self, name: &str, amount: f64) -> Self {
        self.with_milli(name, (amount * 1000.0).round().max(0.0) as u64)
    }
    /// Sets `name` to `milli` thousandths; zero removes it.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// let quarter = ResourceSet::new().with_milli("CPU", 250);
    /// assert_eq!(quarter, ResourceSet::cpus(0.25));
    /// assert_eq!(quarter.with_milli("CPU", 0), ResourceSet::new());
    /// ```
    pub fn with_milli(mut self, name: &str, milli: u64) -> Self {
        if milli == 0 {
            self.0.remove(name);
        } else {
            self.0.insert(name.to_string(), milli);
        }
        self
    }
    /// Thousandths of `name` held.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// let set = shoal::ResourceSet::cpus(1.5);
    /// assert_eq!(set.get_milli("CPU"), 1500);
    /// assert_eq!(set.get_milli("GPU"), 0); // a resource not in the set
    /// ```
    pub fn get_milli(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
    /// Whether this is a task's default demand: one CPU and nothing else.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// assert!(ResourceSet::cpus(1.0).is_default_task_demand());
    /// assert!(!ResourceSet::cpus(1.0).with("GPU", 1.0).is_default_task_demand());
    /// ```
    pub fn is_default_task_demand(&self) -> bool {
        self.0.len() == 1 && self.get_milli(CPU) == 1000
    }

    /// Whether this is a demand a task or an actor may make: as Ray's, a quantity above one
    /// must be a whole number (a task takes part of one CPU, or whole CPUs). The reason if
    /// not.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// assert!(ResourceSet::cpus(0.5).check_demand().is_ok()); // part of one CPU
    /// assert!(ResourceSet::cpus(2.0).check_demand().is_ok()); // whole CPUs
    /// let err = ResourceSet::cpus(1.5).check_demand().unwrap_err();
    /// assert_eq!(err, "CPU=1.5: a quantity above 1 must be a whole number");
    /// ```
    pub fn check_demand(&self) -> Result<(), String> {
        match self.0.iter().find(|(_, v)| **v > 1000 && **v % 1000 != 0) {
            Some((k, v)) => Err(format!(
                "{k}={}: a quantity above 1 must be a whole number",
                *v as f64 / 1000.0
            )),
            None => Ok(()),
        }
    }
    /// Whether every quantity of `demand` is available here.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// let free = ResourceSet::cpus(4.0).with("GPU", 1.0);
    /// assert!(free.contains(&ResourceSet::cpus(2.0).with("GPU", 1.0)));
    /// assert!(!free.contains(&ResourceSet::cpus(8.0)));
    /// ```
    pub fn contains(&self, demand: &ResourceSet) -> bool {
        demand.0.iter().all(|(k, v)| self.get_milli(k) >= *v)
    }
    /// Takes `demand` away (saturating at zero).
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// let mut free = ResourceSet::cpus(4.0);
    /// free.subtract(&ResourceSet::cpus(1.0));
    /// assert_eq!(free.get_milli("CPU"), 3000);
    /// free.subtract(&ResourceSet::cpus(8.0));
    /// assert_eq!(free.get_milli("CPU"), 0);
    /// ```
    pub fn subtract(&mut self, demand: &ResourceSet) {
        for (k, v) in &demand.0 {
            if let Some(have) = self.0.get_mut(k) {
                *have = have.saturating_sub(*v);
            }
        }
    }
    /// Adds `more`, with no cap.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// let mut total = ResourceSet::new();
    /// for bundle in [ResourceSet::cpus(1.0), ResourceSet::cpus(2.0).with("GPU", 1.0)] {
    ///     total.add(&bundle);
    /// }
    /// assert_eq!(total, ResourceSet::cpus(3.0).with("GPU", 1.0));
    /// ```
    pub fn add(&mut self, more: &ResourceSet) {
        for (k, v) in &more.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }
    /// Takes away every resource whose name `drop` says, and returns them.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// let mut set = ResourceSet::cpus(2.0).with("GPU", 1.0);
    /// let gpus = set.remove_where(|name| name == "GPU");
    /// assert_eq!(gpus, ResourceSet::new().with("GPU", 1.0));
    /// assert_eq!(set, ResourceSet::cpus(2.0));
    /// ```
    pub fn remove_where(&mut self, mut drop: impl FnMut(&str) -> bool) -> ResourceSet {
        let mut gone = BTreeMap::new();
        self.0.retain(|k, v| {
            let d = drop(k);
            if d {
                gone.insert(k.clone(), *v);
            }
            !d
        });
        ResourceSet(gone)
    }
    /// Whether `demand` names a resource `pred` says.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// let demand = shoal::ResourceSet::cpus(1.0).with("GPU", 1.0);
    /// assert!(demand.names_any(|name| name == "GPU"));
    /// assert!(!demand.names_any(|name| name.starts_with("TPU")));
    /// ```
    pub fn names_any(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.0.keys().any(|k| pred(k))
    }
    /// Gives `demand` back, never above `cap`.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::ResourceSet;
    /// let total = ResourceSet::cpus(4.0);
    /// let mut free = ResourceSet::cpus(3.0);
    /// free.add_capped(&ResourceSet::cpus(2.0), &total);
    /// assert_eq!(free, total); // 5 CPUs would be more than the node has
    /// ```
    pub fn add_capped(&mut self, demand: &ResourceSet, cap: &ResourceSet) {
        for (k, v) in &demand.0 {
            let limit = cap.get_milli(k);
            let e = self.0.entry(k.clone()).or_insert(0);
            *e = (*e + v).min(limit);
        }
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(f, "{k}={}", *v as f64 / 1000.0)?;
        }
        if first {
            write!(f, "nothing")?;
        }
        Ok(())
    }
}

/// What a connecting process is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A user program.
    Driver,
    /// A worker the node started; `worker_id` is the id the node gave it in its environment.
    Worker {
        /// Node-local worker id.
        worker_id: u64,
    },
    /// The `shoal` command line (status queries).
    Cli,
}

/// The executable a driver runs, from which the node starts its workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryInfo {
    /// blake3 of the executable's bytes.
    pub id: BinaryId,
    /// Where the executable is on this machine.
    pub path: String,
    /// Its encoded signed manifest (`shoal_node::auth::code::Manifest`), if the program is
    /// signed: peers run shipped code only with a manifest by a publisher they trust.
    pub manifest: Option<Vec<u8>>,
}

/// The first message on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`crate::MAGIC`].
    pub magic: [u8; 4],
    /// Must be [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// What the process is.
    pub role: Role,
    /// Its process id.
    pub pid: u32,
    /// Its random id, the owner of what it creates.
    pub client: ClientId,
    /// Its executable, for drivers and workers.
    pub binary: Option<BinaryInfo>,
}

impl Hello {
    /// The handshake of a command-line client of this process (`shoal status`, the
    /// dashboard asking its own node, a test's raw client): its client id is the pid and
    /// `tag`, so that clients of one process are told apart.
    pub fn cli(tag: u32) -> Hello {
        Hello {
            magic: crate::MAGIC,
            version: crate::PROTOCOL_VERSION,
            role: Role::Cli,
            pid: std::process::id(),
            client: ClientId(u64::from(std::process::id()) << 32 | u64::from(tag)),
            binary: None,
        }
    }
}

/// An argument of a task as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arg {
    /// The encoded value itself.
    Value(Vec<u8>),
    /// An object that must be ready before the task runs; its value is passed.
    Ref(ObjectId),
}

/// A task as its owner submits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique id; the return object id derives from it.
    pub task_id: TaskId,
    /// The registered name of the function in the binary.
    pub function: String,
    /// The binary that holds the function.
    pub binary: BinaryId,
    /// The arguments, in order.
    pub args: Vec<Arg>,
    /// What the task holds while it runs.
    pub resources: ResourceSet,
    /// How many times a task whose worker died is tried again.
    pub max_retries: u32,
    /// The process that submitted it.
    pub owner: ClientId,
    /// A function call, an actor's creation or a call of an actor's method.
    pub kind: TaskKind,
    /// Objects whose refs are serialized inside the inline arguments: kept alive while the
    /// task may still read them.
    pub nested: Vec<ObjectId>,
    /// When no peer of the mesh can meet the demand: wait (for one that can to join)
    /// instead of failing as infeasible.
    pub wait_for_resources: bool,
    /// A task whose function panicked is tried again too, within `max_retries` (Ray's
    /// `retry_exceptions`).
    pub retry_exceptions: bool,
    /// How many objects it returns (Ray's `num_returns`): 1 for most; a function whose
    /// result is a tuple may give each element its own object, return `i` being
    /// [`ObjectId::for_return`]`(task_id, i)`. At most [`MAX_RETURNS`]; only for functions.
    pub num_returns: u32,
    /// Where it may run (Ray's scheduling strategies).
    pub strategy: Strategy,
    /// Conditions on the labels of the peer it runs on, all of which must hold (Ray's label
    /// selectors).
    pub label_selector: Vec<LabelMatch>,
    /// For a streaming generator (Ray's `num_returns="streaming"`): the function yields a
    /// sequence of values, item `i` (from 1) being [`ObjectId::for_return`]`(task_id, i)`,
    /// each its owner's as soon as it is yielded; its first return ends the stream with the
    /// number of items (a `u64`) or the failure. Functions only, with `num_returns` 1.
    pub stream: Option<StreamSpec>,
    /// Environment variables of the worker process it runs in (the part of Ray's
    /// `runtime_env` that applies to native code), sorted by name: such tasks run in workers
    /// started with them, kept apart from others. See [`check_env`].
    pub env: Vec<(String, String)>,
}

/// The most bytes of names and values a task's [`TaskSpec::env`] may hold.
pub const MAX_ENV_BYTES: usize = 64 * 1024;

/// Why a task's environment variables cannot be given to a worker, if they cannot: a name
/// that is empty or holds `=` or NUL, a value that holds NUL, a name given twice, more than
/// [`MAX_ENV_BYTES`] in all, or a name the node keeps for itself or that changes how a
/// process loads its code (`SHOAL_*`, `LD_*`, `DYLD_*`): a peer's task must not run other
/// code than its signed binary.
pub fn check_env(env: &[(String, String)]) -> Result<(), String> {
    let mut bytes = 0;
    for (i, (name, value)) in env.iter().enumerate() {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!("environment variable {name:?}: a name is not empty and holds no `=` or NUL, a value no NUL"));
        }
        let upper = name.to_ascii_uppercase();
        if ["SHOAL_", "LD_", "DYLD_"]
            .iter()
            .any(|p| upper.starts_with(p))
        {
            return Err(format!(
                "environment variable {name}: SHOAL_*, LD_* and DYLD_* cannot be set for a task"
            ));
        }
        if env[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("environment variable {name} given twice"));
        }
        bytes += name.len() + value.len();
    }
    if bytes > MAX_ENV_BYTES {
        return Err(format!(
            "environment variables of {bytes} bytes (at most {MAX_ENV_BYTES})"
        ));
    }
    Ok(())
}

/// How a streaming generator is paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// Back-pressure: the generator pauses while this many items it yielded were not yet
    /// taken by its consumer (Ray's `_generator_backpressure_num_objects`). At least 1.
    pub window: u32,
}

/// The most items a streaming generator may yield.
pub const MAX_STREAM_ITEMS: u32 = u32::MAX - 1;

/// Where a task or actor may run, as Ray's scheduling strategies say.
///
/// ```
/// # use shoal_protocol as shoal;
/// use shoal::Strategy;
/// fn describe(strategy: &Strategy) -> String {
///     match strategy {
///         Strategy::Default => "where submitted, while it fits".to_string(),
///         Strategy::Spread => "spread over the mesh".to_string(),
///         Strategy::Peer { peer, soft: false } => format!("only on {peer}"),
///         Strategy::Peer { peer, soft: true } => format!("on {peer} if it can"),
///         Strategy::PlacementGroup { group, .. } => format!("in group {group}"),
///     }
/// }
/// assert_eq!(describe(&Strategy::default()), "where submitted, while it fits");
/// assert_eq!(describe(&Strategy::prefer_peer("12D3KooW")), "on 12D3KooW if it can");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// On the node it was submitted to while it fits there, else on the peer with room
    /// that suits it best (Ray's `"DEFAULT"`).
    #[default]
    Default,
    /// On the least loaded node with room, the one it was submitted to counted as any
    /// other, so that many such tasks spread over the mesh (Ray's `"SPREAD"`).
    Spread,
    /// On one peer, named by its peer id (Ray's `NodeAffinitySchedulingStrategy`): only
    /// there, failing as infeasible if that peer is not in the mesh; or, `soft`, there
    /// while it is in the mesh and has room, elsewhere otherwise.
    Peer {
        /// The peer id, as `shoal::peer_id()` gives it.
        peer: String,
        /// Elsewhere when that peer cannot take it.
        soft: bool,
    },
    /// Inside a placement group (Ray's `PlacementGroupSchedulingStrategy`): on the resources
    /// reserved for bundle `bundle` of `group`, or of any of its bundles with `None`. Its
    /// demand is taken from what the bundle reserved, and it waits while the group is being
    /// placed.
    PlacementGroup {
        /// The group.
        group: crate::GroupId,
        /// The bundle's index, or any bundle.
        bundle: Option<u32>,
    },
}

impl Strategy {
    /// Only on this peer (`soft: false`).
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::Strategy;
    /// let pinned = Strategy::on_peer("12D3KooW");
    /// assert_eq!(pinned, Strategy::Peer { peer: "12D3KooW".to_string(), soft: false });
    /// ```
    pub fn on_peer(peer: impl Into<String>) -> Self {
        Strategy::Peer {
            peer: peer.into(),
            soft: false,
        }
    }

    /// On this peer while it is in the mesh and has room, elsewhere otherwise.
    ///
    /// ```
    /// # use shoal_protocol as shoal;
    /// use shoal::Strategy;
    /// // Near the data if that peer has room, else anywhere.
    /// let near_data = Strategy::prefer_peer("12D3KooW");
    /// assert_eq!(near_data, Strategy::Peer { peer: "12D3KooW".to_string(), soft: true });
    /// ```
    pub fn prefer_peer(peer: impl Into<String>) -> Self {
        Strategy::Peer {
            peer: peer.into(),
            soft: true,
        }
    }
}

/// One condition of a label selector: the peer's label `key` has one of `values` (or, with
/// `negate`, has none of them, or no such label at all). Written as Ray writes them:
/// `value`, `!value`, `in(a,b)`, `!in(a,b)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMatch {
    /// The label.
    pub key: String,
    /// The values it is compared with.
    pub values: Vec<String>,
    /// Whether the label must have none of them.
    pub negate: bool,
}

impl LabelMatch {
    /// The condition `expr` on label `key`: `value`, `!value`, `in(a,b)` or `!in(a,b)`.
    pub fn parse(key: &str, expr: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "bad label selector {key:?}: {expr:?} (want value, !value, in(a,b) or !in(a,b))"
            )
        };
        if key.is_empty() || key.contains(['=', ',']) {
            return Err(bad());
        }
        let (negate, rest) = match expr.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, expr),
        };
        let values: Vec<String> = match rest.strip_prefix("in(").and_then(|r| r.strip_suffix(')')) {
            Some(list) => list.split(',').map(|v| v.trim().to_string()).collect(),
            None => vec![rest.to_string()],
        };
        if values
            .iter()
            .any(|v| v.is_empty() || v.contains(['(', ')', ',', '!']))
        {
            return Err(bad());
        }
        Ok(Self {
            key: key.to_string(),
            values,
            negate,
        })
    }

    /// Whether a peer with these labels meets it.
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        let value = labels.iter().find(|(k, _)| *k == self.key).map(|(_, v)| v);
        let listed = value.is_some_and(|v| self.values.contains(v));
        listed != self.negate
    }
}

impl fmt::Display for LabelMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = if self.negate { "!" } else { "" };
        match self.values.as_slice() {
            [one] => write!(f, "{}={not}{one}", self.key),
            many => write!(f, "{}={not}in({})", self.key, many.join(",")),
        }
    }
}

/// The most objects one task may return ([`TaskSpec::num_returns`]).
pub const MAX_RETURNS: u32 = 64;

/// What a [`TaskSpec`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Run the remote function `function`.
    Function,
    /// Create an actor of class `function` with the arguments as its constructor's. The
    /// task's return object holds the encoded [`ActorId`] and [`ActorToken`] of the actor
    /// (the existing one's for a get-or-create that found one) as soon as it is registered,
    /// or the error.
    CreateActor(ActorCreate),
    /// Call the method `function` of this actor. Calls from one owner run in the order sent.
    ActorMethod {
        /// The actor.
        actor: ActorId,
        /// Its handles' secret: without it the call is refused.
        token: ActorToken,
    },
}

/// How an actor is made and kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorCreate {
    /// Its id, chosen by the creator.
    pub actor_id: ActorId,
    /// Its handles' secret, chosen at random by the creator.
    pub token: ActorToken,
    /// A name other programs can look it up by, unique on the node: its
    /// [qualified](qualified_name) form, which holds its namespace.
    pub name: Option<String>,
    /// With a name: return the actor of that name if there is one, rather than fail.
    pub get_if_exists: bool,
    /// How many times it is restarted after its process dies (`u32::MAX`: always).
    pub max_restarts: u32,
    /// Calls that may run at once (async methods interleave; `&mut self` ones run alone).
    pub max_concurrency: u32,
    /// Whether it outlives its creator (otherwise it ends when the creator disconnects).
    pub detached: bool,
    /// Its concurrency groups and the calls each may run at once (as Ray's): a method of a
    /// group runs beside the calls of the others, up to its group's number.
    pub concurrency_groups: Vec<(String, u32)>,
    /// How many times a call that its process may have begun when it died runs again on the
    /// restarted actor (`u32::MAX`: always), as Ray's `max_task_retries`: at least once,
    /// rather than at most once.
    pub max_task_retries: u32,
}

/// What separates an actor's namespace from its name in the qualified form; neither may
/// hold it.
pub const NAMESPACE_SEPARATOR: char = '\0';

/// An actor's name as messages, the node's table of names and the mesh's directory carry it:
/// the name alone in the default namespace (`""`), else the namespace, a NUL and the name.
/// Two actors may have one name in two namespaces.
pub fn qualified_name(namespace: &str, name: &str) -> String {
    let nul = |s: &str| s.contains(NAMESPACE_SEPARATOR);
    // (A NUL inside either is kept where `check_name` finds it.)
    if namespace.is_empty() && !nul(name) {
        name.to_string()
    } else {
        format!("{namespace}{NAMESPACE_SEPARATOR}{name}")
    }
}

/// A qualified name as people read it: `namespace/name`, or the name alone.
pub fn display_name(qualified: &str) -> String {
    qualified.replacen(NAMESPACE_SEPARATOR, "/", 1)
}

/// Why a qualified actor name is not valid (an empty name or namespace, or a NUL inside
/// either), if it is not.
pub fn check_name(qualified: &str) -> Result<(), String> {
    let (namespace, name) = match qualified.split_once(NAMESPACE_SEPARATOR) {
        Some((ns, name)) => (Some(ns), name),
        None => (None, qualified),
    };
    if name.contains(NAMESPACE_SEPARATOR) {
        return Err("an actor name or namespace cannot hold a NUL character".into());
    }
    if name.is_empty() {
        return Err("an actor name cannot be empty".into());
    }
    if namespace == Some("") {
        return Err("a namespace cannot be empty".into());
    }
    Ok(())
}

impl TaskSpec {
    /// The id of the task's (first) return object.
    pub fn return_id(&self) -> ObjectId {
        ObjectId::for_return(self.task_id, 0)
    }

    /// The ids of its other return objects (returns 1 and on), none for most tasks.
    pub fn more_return_ids(&self) -> Vec<ObjectId> {
        (1..self.num_returns.min(MAX_RETURNS))
            .map(|i| ObjectId::for_return(self.task_id, i))
            .collect()
    }
}

/// The value of one more return of a task with several ([`TaskSpec::num_returns`]), as its
/// worker reports it in [`ToNode::Done`]: inline, or written to the store under its id
/// (reserved with [`ToNode::Create`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnValue {
    /// Its value: [`ObjectValue::Inline`] or [`ObjectValue::Shared`].
    pub value: ObjectValue,
    /// Objects whose refs are inside it: alive while it is.
    pub nested: Vec<ObjectId>,
}

/// Where a large object lives: a sealed file in the node's shared-memory store directory
/// (named by the object id in hex), `size` bytes long, with this digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedObject {
    /// Length in bytes.
    pub size: u64,
    /// blake3 of the bytes; `None` while not taken yet. A `put` is sealed without it (hashing
    /// is off the put's path): its node takes it when the object first leaves the node, is
    /// spilled or is verified, and every copy made from then on is checked against it. A
    /// value sent between peers always carries it.
    pub digest: Option<Digest>,
}

/// The value of a ready object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectValue {
    /// Small: the encoded bytes travel in the message.
    Inline(Vec<u8>),
    /// Large: in the shared-memory store; map it.
    Shared(SharedObject),
    /// The task that should have produced it failed.
    Error(TaskError),
}

/// An argument as handed to a worker: already resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArgValue {
    /// Encoded bytes.
    Inline(Vec<u8>),
    /// A shared-memory object of this id.
    Shared(ObjectId, SharedObject),
}

/// A task handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecTask {
    /// The task.
    pub task_id: TaskId,
    /// Its function's registered name.
    pub function: Box<str>,
    /// Resolved arguments.
    pub args: Vec<ArgValue>,
    /// The id the result will have (a large result is written under this id).
    pub return_id: ObjectId,
    /// What a function task holds while it runs (its demand, and its GPU devices), unless
    /// it is the default ([`ResourceSet::is_default_task_demand`]: `None`, so that the
    /// common task costs nothing more to send); `None` for an actor's call too, which runs
    /// on what its actor holds. (Boxed: the message stays small in the queues.)
    pub holds: Option<Box<Holds>>,
    /// For a streaming generator: how many items it may yield before it waits for a
    /// [`ToClient::StreamAck`] (items it yields again, in a run after a failure, count).
    pub stream: Option<std::num::NonZeroU32>,
}

/// What a function task holds while it runs ([`ExecTask::holds`]), or an actor for its life
/// ([`HostActor::holds`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// Its demand.
    pub resources: ResourceSet,
    /// The GPU devices it is given, when it holds `GPU` (Ray's GPU ids; the worker sets
    /// `CUDA_VISIBLE_DEVICES` to them while it runs).
    pub gpu_ids: Vec<u32>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(9)) => write!(f, "killed by signal 9 (SIGKILL)"),
            (_, Some(s)) => write!(f, "killed by signal {s}"),
            (Some(c), None) => write!(f, "exited with status {c}"),
            (None, None) => write!(f, "ended for an unknown reason"),
        }
    }
}

/// Why a task produced no value. Travels to whoever `get`s its result.
///
/// ```
/// # use shoal_protocol as shoal;
/// use shoal::TaskError;
/// /// Whether running the task again may help (the SDK's `GetError::Task` holds the error).
/// fn worth_retrying(e: &TaskError) -> bool {
///     matches!(
///         e,
///         TaskError::WorkerDied { .. }
///             | TaskError::PeerLost { .. }
///             | TaskError::OutOfMemory { .. }
///     )
/// }
/// let lost = TaskError::PeerLost { peer: "12D3KooW".to_string() };
/// assert!(worth_retrying(&lost));
/// assert_eq!(lost.to_string(), "peer 12D3KooW was lost while running the task");
/// assert!(!worth_retrying(&TaskError::NoSuchFunction { name: "app::train".to_string() }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TaskError {
    /// The function panicked.
    #[error("task panicked: {message}{}", origin.as_ref().map(|o| o.to_string()).unwrap_or_default())]
    Panicked {
        /// The panic message.
        message: String,
        /// Where: the function, the panic's place in the source, the process and its peer,
        /// and a backtrace when `RUST_BACKTRACE` asks for one (as Ray's `RayTaskError`
        /// names the function, the pid and the ip). `None` when not known.
        origin: Option<Box<PanicOrigin>>,
    },
    /// The worker process running it died (and no retries were left).
    #[error("worker process {pid} died while running the task: {exit}")]
    WorkerDied {
        /// The worker's pid.
        pid: u32,
        /// How it ended.
        exit: ExitInfo,
    },
    /// An argument could not be decoded as the function's parameter type.
    #[error("argument {index} could not be decoded: {message}")]
    ArgDecode {
        /// Position of the argument.
        index: usize,
        /// The decoder's message.
        message: String,
    },
    /// The binary has no remote function of this name.
    #[error("no remote function named `{name}` in the worker's binary")]
    NoSuchFunction {
        /// The name asked for.
        name: String,
    },
    /// The result could not be encoded or stored.
    #[error("the result could not be stored: {message}")]
    ResultStore {
        /// What went wrong.
        message: String,
    },
    /// No node can ever satisfy the demand.
    #[error("infeasible resource demand {demand}: this node has {total}")]
    Infeasible {
        /// What the task asked for.
        demand: String,
        /// What the node has in total.
        total: String,
    },
    /// The task's or the actor's options are not valid (a fractional quantity above one, an
    /// empty actor name): it was never run.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// A worker for the binary could not be started.
    #[error("cannot start a worker: {message}")]
    WorkerStart {
        /// The cause.
        message: String,
    },
    /// The only peers that could run it refused its code (unsigned, or by a publisher they
    /// do not trust).
    #[error("code rejected: {reason}")]
    CodeRejected {
        /// The peer's reason, with the peer.
        reason: String,
    },
    /// The object was freed before it could be read.
    #[error("object {id} was freed or never existed")]
    ObjectLost {
        /// The object.
        id: ObjectId,
    },
    /// A holder of the object freed it (`shoal::free`, as Ray's `free`): its value is gone
    /// while refs to it live on.
    #[error("object {id} was freed with shoal::free")]
    ObjectFreed {
        /// The object.
        id: ObjectId,
    },
    /// The object exists but cannot be read now (no room to read it back from disk).
    #[error("object {id} cannot be read: {message}")]
    ObjectUnavailable {
        /// The object.
        id: ObjectId,
        /// Why.
        message: String,
    },
    /// The object's bytes no longer match the digest recorded when it was sealed.
    #[error("object {id} is corrupted: {message}")]
    ObjectCorrupted {
        /// The object.
        id: ObjectId,
        /// What was found.
        message: String,
    },
    /// The actor's process died while the call ran there (or may have: one of the first
    /// `max_concurrency` calls in flight), or the actor died for good (no restarts left)
    /// before the call could run.
    #[error("actor {actor} died: its process {pid} {exit}")]
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// Its last process.
        pid: u32,
        /// How that process ended.
        exit: ExitInfo,
    },
    /// The actor was killed (`shoal::kill`), or its creator went away.
    #[error("actor {actor} was killed: {reason}")]
    ActorKilled {
        /// The actor.
        actor: ActorId,
        /// Who or what ended it.
        reason: String,
    },
    /// The actor's constructor failed (panicked, or its arguments did not decode).
    #[error("actor {actor} could not be created: {message}")]
    ActorCreationFailed {
        /// The actor.
        actor: ActorId,
        /// Why.
        message: String,
    },
    /// No actor of this id is known to the node.
    #[error("no actor {actor} on this node")]
    NoSuchActor {
        /// The actor.
        actor: ActorId,
    },
    /// Another live actor already has this name.
    #[error("an actor named `{name}` already exists")]
    ActorNameTaken {
        /// The name.
        name: String,
    },
    /// The peer running the task (or hosting the actor) left the mesh, and no retries were
    /// left.
    #[error("peer {peer} was lost while running the task")]
    PeerLost {
        /// The peer's id.
        peer: String,
    },
    /// The node stopped (it was shut down) before the task or the object was done.
    #[error("the node is stopping")]
    NodeStopping,
    /// The worker running the task was killed for memory (and no retries were left): it
    /// went past its own limit, or the machine was nearly full and it used the most.
    #[error("the worker ran out of memory: {used} bytes used, limit {limit} bytes")]
    OutOfMemory {
        /// The limit it hit, in bytes: the worker's own, or the node's memory threshold.
        limit: u64,
        /// The most it used, in bytes, as far as the node could tell.
        used: u64,
    },
    /// The peer that holds the object refused to give it: the asking node was never given
    /// its ref (by its owner, or by a node that holds it).
    #[error("object {id} may not be read from here")]
    NotAllowed {
        /// The object.
        id: ObjectId,
    },
    /// A call or a kill of an actor without its handles' secret: the caller holds no
    /// handle to it.
    #[error("actor {actor} may not be called or killed without a handle to it")]
    ActorNotAllowed {
        /// The actor.
        actor: ActorId,
    },
    /// Every copy of the object was lost, and it could not be made again from its lineage
    /// (the task that made it has no retries left, its lineage was evicted, or an argument
    /// of that task is lost for good).
    #[error("object {id} was lost and cannot be made again: {reason}")]
    ObjectReconstructionFailed {
        /// The object.
        id: ObjectId,
        /// Why not.
        reason: String,
    },
    /// The owner of the ref died (the process that made it, or its whole peer), and no live
    /// peer holds its value: nothing can make or find it any more (Ray's fate-sharing of an
    /// object with its owner).
    #[error("the owner of the object (a process of peer {peer}, or that peer) died")]
    OwnerDied {
        /// The owner's peer id.
        peer: String,
    },
    /// The call reached a copy of the actor that a newer incarnation superseded: its
    /// creator placed it again elsewhere while this copy's peer was out of reach. The call
    /// did not run. A caller's node follows the move itself; a program sees this only if it
    /// could not.
    #[error("actor {actor} moved: incarnation {epoch} serves it{}", peer.as_deref().map(|p| format!(" at peer {p}")).unwrap_or_default())]
    ActorMoved {
        /// The actor.
        actor: ActorId,
        /// The placement epoch of the incarnation that serves it (the newest known).
        epoch: u32,
        /// Where that incarnation lives, if known.
        peer: Option<String>,
    },
    /// The task was cancelled (`shoal::cancel`) before it finished: it was taken out of its
    /// queue, its run was interrupted, or its result is no longer awaited from it.
    #[error("task {task} was cancelled")]
    Cancelled {
        /// The task.
        task: TaskId,
    },
    /// The placement group it was scheduled into was removed (or could never be placed)
    /// before it ended.
    #[error("placement group {group} was removed{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    GroupRemoved {
        /// The group.
        group: crate::GroupId,
        /// Why, when not at its creator's request.
        reason: String,
    },
}

/// An actor to host, handed to the worker dedicated to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostActor {
    /// The actor.
    pub actor_id: ActorId,
    /// Its registered class name.
    pub class: String,
    /// The constructor's resolved arguments.
    pub args: Vec<ArgValue>,
    /// Calls that may run at once (outside its concurrency groups).
    pub max_concurrency: u32,
    /// Its concurrency groups, each with the calls it may run at once.
    pub concurrency_groups: Vec<(String, u32)>,
    /// 0 for the first process, then one more per restart.
    pub incarnation: u32,
    /// What it holds for its whole life: its demand, and the GPU devices it is given when
    /// it holds `GPU` (the worker sets `CUDA_VISIBLE_DEVICES` to them before the
    /// constructor runs). (Boxed: [`ToClient`] stays small in the queues.)
    pub holds: Box<Holds>,
}

/// Where a task panicked (see [`TaskError::Panicked`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicOrigin {
    /// The remote function, or `Class::method` for an actor's call.
    pub function: String,
    /// `file:line:column` of the panic, when the panic hook saw it.
    pub location: Option<String>,
    /// The worker process.
    pub pid: u32,
    /// The peer it ran on, when its node is a peer of a mesh.
    pub peer: Option<String>,
    /// The panicking thread's backtrace, when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`)
    /// asked for one in the worker.
    pub backtrace: Option<String>,
}

impl std::fmt::Display for PanicOrigin {
    /// ` (in f at src/lib.rs:3:5, pid 12, peer 12D3…)`, then the backtrace on lines of
    /// its own.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, " (in {}", self.function)?;
        if let Some(at) = &self.location {
            write!(f, " at {at}")?;
        }
        write!(f, ", pid {}", self.pid)?;
        if let Some(peer) = &self.peer {
            write!(f, ", peer {peer}")?;
        }
        write!(f, ")")?;
        if let Some(bt) = &self.backtrace {
            write!(f, "\nstack backtrace:\n{bt}")?;
        }
        Ok(())
    }
}

/// A named actor, as a lookup finds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInfo {
    /// The actor.
    pub actor_id: ActorId,
    /// Its handles' secret (a lookup by name gives a handle).
    pub token: ActorToken,
    /// Its registered class name.
    pub class: String,
    /// The process that created it.
    pub owner: ClientId,
}

/// An actor as `shoal status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorStatus {
    /// The actor.
    pub actor_id: ActorId,
    /// Its class.
    pub class: String,
    /// Its name, if any.
    pub name: Option<String>,
    /// `pending`, `starting`, `alive`, `restarting` or `dead`.
    pub state: String,
    /// Restarts so far.
    pub incarnation: u32,
    /// Its process (0 when it has none).
    pub pid: u32,
    /// Calls queued or in flight.
    pub calls_pending: u64,
    /// Calls finished.
    pub calls_done: u64,
}

/// What a worker reports when a task ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// The function returned; here is its encoded result.
    Ok(ObjectValue),
    /// It failed.
    Err(TaskError),
}

/// How the store answered a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateOutcome {
    /// Room is reserved: write the object's partial file, rename it into place, then seal.
    Write,
    /// An object with this (content-derived) id exists or is being written: do not write.
    Exists,
}

/// Why the store refused an object.
///
/// ```
/// # use shoal_protocol as shoal;
/// use shoal::StoreError;
/// fn advice(e: &StoreError) -> String {
///     match e {
///         StoreError::Full { requested, capacity, .. } if requested > capacity => {
///             format!("{requested} bytes never fit: give the node a larger store")
///         }
///         StoreError::Full { .. } => "free or drop some refs, then try again".to_string(),
///         other => other.to_string(),
///     }
/// }
/// let e = StoreError::Full { requested: 8 << 30, used: 0, capacity: 4 << 30 };
/// assert!(advice(&e).contains("never fit"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// Not enough room.
    #[error("object store full: {requested} bytes requested, {used} of {capacity} bytes in use")]
    Full {
        /// Bytes asked for.
        requested: u64,
        /// Bytes in use.
        used: u64,
        /// The capacity.
        capacity: u64,
    },
    /// A file-system error in the store directory.
    #[error("object store I/O error: {0}")]
    Io(String),
    /// The sealed object does not match what was reserved.
    #[error("sealed object does not match its reservation: {0}")]
    Mismatch(String),
}

/// A worker's state, as `shoal status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Node-local id.
    pub id: u64,
    /// Process id (0 until it connects).
    pub pid: u32,
    /// The binary it runs.
    pub binary: BinaryId,
    /// `starting`, `idle`, `busy` or `blocked`.
    pub state: String,
    /// Tasks it has finished.
    pub tasks_done: u64,
}

/// One object, as `shoal objects` lists it.
///
/// ```
/// # use shoal_protocol as shoal;
/// /// Bytes of the objects spilled to disk, in a list from `shoal::init()?.objects()?`.
/// fn spilled_bytes(objects: &[shoal::ObjectInfo]) -> u64 {
///     objects.iter().filter(|o| o.location.contains("disk")).map(|o| o.size).sum()
/// }
/// # assert_eq!(spilled_bytes(&[]), 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The object.
    pub id: ObjectId,
    /// Its size in bytes (0 while pending).
    pub size: u64,
    /// The process that made it (the submitter of the task, or the first to put it).
    pub owner: Option<ClientId>,
    /// Processes holding refs to it.
    pub holders: u32,
    /// Why it is kept: `ref` (held by a process), `task-arg` (a task will read it),
    /// `nested` (inside another object), `pending` (not made yet).
    pub pinned_by: Vec<String>,
    /// `inline` (in node memory), `memory` (shared-memory store), `disk` (spilled),
    /// `memory+disk` (restored, the disk copy kept), `pending` or `error`.
    pub location: String,
}

/// Counters of the object table and store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStats {
    /// Objects known (ready, pending or failed).
    pub count: u64,
    /// Ready objects held inline in the node.
    pub inline_count: u64,
    /// Their bytes.
    pub inline_bytes: u64,
    /// Objects in the shared-memory store.
    pub shared_count: u64,
    /// Their bytes.
    pub shared_bytes: u64,
    /// The store's capacity in bytes.
    pub store_capacity: u64,
    /// Bytes of the store in use (objects in memory and reservations).
    pub store_used: u64,
    /// Objects whose only copy is on disk, or that have one there.
    pub spilled_count: u64,
    /// Their bytes on disk.
    pub spilled_bytes: u64,
    /// Copies pulled from peers, in memory (part of `store_used`).
    pub pulled_count: u64,
    /// Their bytes.
    pub pulled_bytes: u64,
}

/// A snapshot of a node, for `shoal status`.
///
/// ```
/// # use shoal_protocol as shoal;
/// /// Whether tasks wait for CPUs, in a snapshot from `shoal::init()?.status()?`.
/// fn short_of_cpus(status: &shoal::NodeStatus) -> bool {
///     status.tasks_queued > 0 && status.resources_free.get_milli("CPU") == 0
/// }
/// # let _ = short_of_cpus;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node_id: NodeId,
    /// Its process id.
    pub pid: u32,
    /// Its local socket.
    pub socket: String,
    /// Its shared-memory store directory.
    pub store_dir: String,
    /// Whether it runs inside a driver.
    pub embedded: bool,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// All resources.
    pub resources_total: ResourceSet,
    /// Resources not held by running tasks.
    pub resources_free: ResourceSet,
    /// Worker processes.
    pub workers: Vec<WorkerStatus>,
    /// Tasks waiting for arguments, resources or a worker.
    pub tasks_queued: u64,
    /// Tasks handed to workers and not finished.
    pub tasks_running: u64,
    /// Tasks finished since start.
    pub tasks_finished: u64,
    /// Attached processes (drivers, workers, CLI).
    pub clients: u64,
    /// Objects.
    pub objects: ObjectStats,
    /// Actors (live ones, and dead ones whose handles may still be in use).
    pub actors: Vec<ActorStatus>,
    /// The mesh as this node sees it, when it is a peer of one.
    pub mesh: Option<MeshStatus>,
    /// Requests from peers refused since start (they may not make them), by kind.
    pub refused: Vec<(String, u64)>,
    /// Where the node serves its Prometheus metrics (`--metrics`), if it does.
    pub metrics: Option<String>,
    /// Where the node serves its web dashboard (`--dashboard`), if it does.
    pub dashboard: Option<String>,
}

/// The mesh as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// The mesh's name.
    pub mesh: String,
    /// Addresses this node listens on, each ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// The other peers in this node's view.
    pub peers: Vec<PeerStatus>,
    /// Bytes of load reports this node published.
    pub gossip_bytes_out: u64,
    /// Bytes of load reports delivered to this node.
    pub gossip_bytes_in: u64,
    /// Objects and binaries this node is pulling from peers now.
    pub transfers: Vec<TransferStatus>,
    /// This node's labels (`shoal node --label`).
    pub labels: Vec<(String, String)>,
    /// Membership's figures, when SWIM runs it (`shoal node --membership swim`).
    pub membership: Option<MembershipStatus>,
}

/// Membership (SWIM with Lifeguard) as one node runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipStatus {
    /// Members up (alive or suspected), this node included.
    pub members_up: u64,
    /// Members known, the dead ones still remembered included.
    pub entries: u64,
    /// Members this node suspects now.
    pub suspected: u64,
    /// This node's incarnation.
    pub incarnation: u64,
    /// Lifeguard's local health multiplier (0 is healthy; it grows while this node misses
    /// acks, as an overloaded node does).
    pub local_health: u32,
    /// Updates waiting to be gossiped.
    pub queued: u64,
    /// Probes sent.
    pub probes: u64,
    /// Probes that got no ack.
    pub probes_failed: u64,
    /// Membership messages sent.
    pub sent: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Membership messages received.
    pub received: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Messages lost on the way (sends that failed or were dropped, receipts dropped).
    pub lost: u64,
}

/// What a transfer brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transfer {
    /// An object's bytes.
    Object(ObjectId),
    /// A program's binary.
    Binary(BinaryId),
}

/// A transfer under way to this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// What it brings.
    pub what: Transfer,
    /// Bytes in so far (a piece that fails and is pulled again counts again).
    pub done: u64,
    /// Bytes in all (0 while a binary's size is not known yet).
    pub total: u64,
    /// The peers asked.
    pub peers: Vec<String>,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// Another peer, as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its peer id.
    pub peer_id: String,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// Its resources.
    pub total: ResourceSet,
    /// Its free resources.
    pub free: ResourceSet,
    /// Tasks waiting there.
    pub queued: u64,
    /// Tasks running there.
    pub running: u64,
    /// Its store's capacity.
    pub store_capacity: u64,
    /// Bytes in use in its store.
    pub store_used: u64,
    /// Its platform.
    pub target: String,
    /// Milliseconds since it was last heard from.
    pub last_heard_ms: u64,
    /// Last ping round trip in microseconds.
    pub rtt_us: Option<u64>,
    /// Whether this node has a connection to it.
    pub connected: bool,
    /// Its labels (`shoal node --label`), which label selectors match.
    pub labels: Vec<(String, String)>,
}

/// A process → its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToNode {
    /// The handshake; must be first.
    Hello(Hello),
    /// Run a task. (Boxed: the other messages stay small in the queues.)
    Submit(Box<TaskSpec>),
    /// A small object the sender made (`put`); the node keeps a copy for other readers.
    Put {
        /// Content id.
        id: ObjectId,
        /// Encoded bytes.
        value: Vec<u8>,
        /// Objects whose refs are inside the value: alive while it is.
        nested: Vec<ObjectId>,
    },
    /// Reserve room for a large object the sender will write into the store directory.
    /// Answered by [`ToClient::Created`].
    Create {
        /// Request number.
        request: u64,
        /// The object.
        id: ObjectId,
        /// Its size.
        size: u64,
    },
    /// The sender wrote the reservation `ticket`'s partial file: the node makes it object
    /// `id` (renaming the file into place; if an object `id` exists already, equal bytes are
    /// kept once) and the sender holds it.
    Seal {
        /// The reservation made with [`ToNode::Create`].
        ticket: ObjectId,
        /// The object's id: `ticket` itself for a `put` (its digest may be left out, for the
        /// node to take later), or the content hash for a content-addressed put
        /// (`put_content`, whose digest must be given and match it).
        id: ObjectId,
        /// Its size and digest.
        object: SharedObject,
        /// Objects whose refs are inside it: alive while it is.
        nested: Vec<ObjectId>,
    },
    /// The sender gives up a reservation made with `Create`.
    Abort {
        /// The object.
        id: ObjectId,
    },
    /// Send [`ToClient::Object`] for each of these once it is ready.
    Get {
        /// Objects wanted.
        ids: Vec<ObjectId>,
    },
    /// The sender received refs to these objects (inside a value or an argument): it holds
    /// them until it releases them.
    Hold {
        /// Objects held.
        ids: Vec<ObjectId>,
    },
    /// List the objects of the store, for `shoal objects`. Answered by
    /// [`ToClient::Objects`].
    Objects {
        /// Request number.
        request: u64,
    },
    /// The digest of large object `id`, which the sender holds: the one recorded, or taken
    /// now from the node's copy if none was yet. Answered by [`ToClient::Digest`].
    Digest {
        /// Request number.
        request: u64,
        /// The object.
        id: ObjectId,
    },
    /// The sender dropped its last handle to these objects.
    Release {
        /// Objects released.
        ids: Vec<ObjectId>,
    },
    /// The sender frees these objects, which it holds (`shoal::free`, as Ray's `free`): their
    /// values are dropped from the store here and the copies this node keeps at peers are
    /// let go; the refs live on, and a later read of one fails with
    /// [`TaskError::ObjectFreed`], as do the tasks waiting for one. Other processes keep a
    /// value they read already.
    Free {
        /// Objects freed.
        ids: Vec<ObjectId>,
    },
    /// A worker finished a task. A large result was written to the partial file of the
    /// task's return id, reserved with [`ToNode::Create`].
    Done {
        /// The task.
        task_id: TaskId,
        /// Its result (its first, for a task with several).
        outcome: TaskOutcome,
        /// Objects whose refs are inside the result: alive while it is.
        nested: Vec<ObjectId>,
        /// For a task with several returns that succeeded: returns 1 and on, in order (each
        /// of them is ready before the first is).
        more: Vec<ReturnValue>,
        /// The function returned an `Err` (inline in `outcome`) that its retry rule accepts:
        /// with `TaskSpec::retry_exceptions` and retries left, the task runs again.
        returned_error: bool,
    },
    /// A streaming generator yielded item `index` (from 1): inline, or written to the store
    /// under its id ([`ObjectId::for_return`]`(task, index)`, reserved with
    /// [`ToNode::Create`]). Items come in order; one yielded again (by a run after a failure)
    /// is dropped.
    Yield {
        /// The task.
        task: TaskId,
        /// The item's number, from 1.
        index: u32,
        /// Its value.
        item: ReturnValue,
    },
    /// The owner of a streaming generator took its items up to `taken` from the stream
    /// (Ray's back-pressure counts those): the generator may run `window` items further.
    /// (A stream dropped before its end cancels its task.)
    StreamTaken {
        /// The task.
        task: TaskId,
        /// Items taken, from the first.
        taken: u32,
    },
    /// A worker waits inside a task for objects; its resources may be lent out meanwhile.
    Blocked,
    /// A blocked worker hands back tasks it was given but has not started, so they do not
    /// wait behind the task that waits (which may be waiting for them).
    Returned {
        /// The tasks, in the order they were given.
        tasks: Vec<TaskId>,
    },
    /// The worker runs again.
    Unblocked,
    /// The worker ran a function as many times as the function allows (its `max_calls`):
    /// give it no more tasks; it hands back those it is given, and is stopped once it holds
    /// none (a fresh worker takes its place when work needs one).
    Retire,
    /// Ask for a [`NodeStatus`].
    Status {
        /// Request number.
        request: u64,
    },
    /// An actor worker ran (or failed to run) its actor's constructor.
    ActorStarted {
        /// The actor.
        actor: ActorId,
        /// The constructor's outcome.
        result: Result<(), TaskError>,
    },
    /// End an actor. Its calls in flight fail with [`TaskError::ActorKilled`]; with
    /// `no_restart` false it is restarted (if it has restarts left) as after a crash.
    KillActor {
        /// The actor.
        actor: ActorId,
        /// Whether it stays dead.
        no_restart: bool,
        /// Its handles' secret: without it the kill is refused.
        token: ActorToken,
    },
    /// The actor this worker hosts ends itself for good (`shoal::exit_actor`): its calls in
    /// flight and queued fail with [`TaskError::ActorKilled`], and it is not restarted.
    ExitActor,
    /// Find a live actor by name. Answered by [`ToClient::ActorFound`].
    LookupActor {
        /// Request number.
        request: u64,
        /// The name, [qualified](qualified_name) with its namespace.
        name: String,
    },
    /// Ask the state of the mesh (`shoal list|summary|get`): the node answers what it holds
    /// and asks every other peer it knows, waiting `timeout_ms` at most for them. Answered
    /// by [`ToClient::State`].
    State {
        /// Request number.
        request: u64,
        /// The question.
        query: crate::state::StateQuery,
        /// How long to wait for the other peers, in milliseconds.
        timeout_ms: u32,
        /// Answer for this node alone, asking no peer.
        local: bool,
    },
    /// Reserve a placement group (`shoal::placement_group`). The sender holds the object
    /// [`ObjectId::for_group`] from now on: it becomes `()` once every bundle is reserved,
    /// or fails (the group is infeasible, its options are invalid, or it was removed first).
    CreateGroup {
        /// Its id, new.
        group: crate::GroupId,
        /// What each bundle reserves.
        bundles: Vec<ResourceSet>,
        /// How they are spread.
        strategy: crate::GroupStrategy,
        /// It outlives its creator (else it is removed when the creating process ends).
        detached: bool,
        /// The secret of its handles: a removal must carry it (the group's id is not
        /// secret: its resources' names carry it).
        token: [u8; 16],
    },
    /// Remove a placement group: its reservations are freed everywhere, and the tasks and
    /// actors inside it end with [`TaskError::GroupRemoved`]. Sent on to its placer when
    /// that is another node.
    RemoveGroup {
        /// The group.
        group: crate::GroupId,
        /// The secret of its handles.
        token: [u8; 16],
        /// The peer id of the node that placed it (the creator's node), if in a mesh.
        placer: Option<String>,
    },
    /// Cancel a task the sender submitted (`shoal::cancel`): a queued task is dropped, a
    /// running one interrupted (see [`ToClient::Cancel`]); its result fails with
    /// [`TaskError::Cancelled`]. A finished task is left alone.
    Cancel {
        /// The task.
        task: TaskId,
        /// End the worker process running it (tasks only, not actor calls).
        force: bool,
        /// Also cancel the tasks it submitted, and theirs.
        recursive: bool,
    },
}

/// A node → an attached process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToClient {
    /// The handshake succeeded.
    Welcome {
        /// The node.
        node_id: NodeId,
        /// Its shared-memory store directory.
        store_dir: String,
        /// Values at most this long travel inline; longer ones go through the store.
        inline_threshold: u64,
        /// The node's peer id in its mesh, if it is a peer of one.
        peer_id: Option<String>,
    },
    /// The handshake failed; the node closes the connection.
    Rejected {
        /// Why.
        reason: String,
    },
    /// An object the process asked for, or the result of a task it owns.
    Object {
        /// The object.
        id: ObjectId,
        /// Its value or error.
        value: ObjectValue,
    },
    /// Run this task (workers only).
    Execute(ExecTask),
    /// Answer to [`ToNode::Create`].
    Created {
        /// Request number.
        request: u64,
        /// Whether the room is reserved.
        result: Result<CreateOutcome, StoreError>,
    },
    /// Answer to [`ToNode::Status`].
    Status {
        /// Request number.
        request: u64,
        /// The snapshot.
        status: Box<NodeStatus>,
    },
    /// Answer to [`ToNode::Digest`]: the object's digest, or why there is none (not a large
    /// object this node holds, or its copy cannot be read).
    Digest {
        /// Request number.
        request: u64,
        /// The digest.
        result: Result<Digest, TaskError>,
    },
    /// Become this actor (workers only): run its constructor, then its method calls, which
    /// arrive as [`ToClient::Execute`].
    HostActor(HostActor),
    /// Answer to [`ToNode::Objects`].
    Objects {
        /// Request number.
        request: u64,
        /// Every object the node knows.
        objects: Vec<ObjectInfo>,
    },
    /// Answer to [`ToNode::LookupActor`].
    ActorFound {
        /// Request number.
        request: u64,
        /// The actor, if a live one has the name.
        actor: Option<ActorInfo>,
        /// The actor's handle object (the return object of its creation), when the node
        /// made the asker one more holder of it: the handle the asker builds is counted with
        /// the others and releases that hold when its last copy is dropped. `None`: the
        /// handle is not counted, and the actor no longer ends when its counted handles are
        /// all dropped.
        held: Option<ObjectId>,
    },
    /// Item `index` of a streaming generator this process submitted exists (items come in
    /// order, each once): the process holds it from now on. `value` is its value when it
    /// is here, `None` when it stays at the peer that made it until a `Get` asks.
    StreamItem {
        /// The task.
        task: TaskId,
        /// The item's number, from 1.
        index: u32,
        /// Its value, when here. (Boxed: the message stays small in the queues.)
        value: Option<Box<ObjectValue>>,
    },
    /// The streaming generator `task` this worker runs may yield items up to `allowed`.
    StreamAck {
        /// The task.
        task: TaskId,
        /// The highest item number it may yield now.
        allowed: u32,
    },
    /// Lines its tasks and actors wrote, wherever they ran (drivers only).
    Log {
        /// The lines, in the order written (per process).
        lines: Vec<crate::state::LogLine>,
    },
    /// Something the program should know, not tied to a request (say, tasks waiting long
    /// for resources no peer has free): shown to its user.
    Warning {
        /// What, in a sentence or two.
        message: String,
    },
    /// Answer to [`ToNode::State`].
    State {
        /// Request number.
        request: u64,
        /// The merged answer of the peers that answered, or why there is none.
        reply: Result<Box<crate::state::StateReply>, crate::state::StateError>,
    },
    /// Stop `task` (workers only). With `force`, if this worker is running it, the worker
    /// exits at once with [`crate::CANCELLED_EXIT`], having started nothing after it, so the
    /// tasks queued behind it never ran; a task it is not running is left alone. Without,
    /// the process lives on: the task does not start if it has not, an `async` task is
    /// dropped at its next `.await`, and a blocking one sees `shoal::is_cancelled()`; its
    /// end is reported as usual (a task that did not run, or was dropped, as
    /// [`TaskError::Cancelled`]).
    Cancel {
        /// The task.
        task: TaskId,
        /// End the process if it runs the task.
        force: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec, frame};

    #[test]
    fn label_selectors_parse_and_match_as_rays() {
        let labels = vec![("zone".to_string(), "eu-1".to_string())];
        let m = |expr: &str| LabelMatch::parse("zone", expr).unwrap();
        assert!(m("eu-1").matches(&labels));
        assert!(!m("eu-2").matches(&labels));
        assert!(m("!eu-2").matches(&labels));
        assert!(!m("!eu-1").matches(&labels));
        assert!(m("in(eu-2, eu-1)").matches(&labels));
        assert!(!m("!in(eu-1,eu-2)").matches(&labels));
        // No such label: only a negation holds.
        assert!(!m("eu-1").matches(&[]));
        assert!(m("!eu-1").matches(&[]));
        assert_eq!(m("!in(a,b)").to_string(), "zone=!in(a,b)");
        assert_eq!(m("a").to_string(), "zone=a");
        for bad in ["", "!", "in()", "in(a,)", "a(b", "!!a"] {
            assert!(LabelMatch::parse("zone", bad).is_err(), "{bad:?}");
        }
        assert!(LabelMatch::parse("", "a").is_err());
    }
    #[test]
    fn a_namespace_qualifies_a_name_without_ambiguity() {
        assert_eq!(qualified_name("", "hits"), "hits");
        let q = qualified_name("shop", "hits");
        assert_ne!(q, qualified_name("", "shop/hits"));
        assert_eq!(display_name(&q), "shop/hits");
        assert_eq!(check_name(&q), Ok(()));
        assert!(check_name("").is_err());
        assert!(check_name(&qualified_name("shop", "")).is_err());
        assert!(check_name(&qualified_name("a\0b", "hits")).is_err());
        assert!(check_name(&qualified_name("shop", "a\0b")).is_err());
        assert!(check_name(&qualified_name("", "a\0b")).is_err());
        assert!(
            check_name("\0hits").is_err(),
            "an empty namespace spelt out"
        );
    }

    #[test]
    fn resource_arithmetic() {
        let total = ResourceSet::cpus(2.0).with("gpu", 1.0);
        let mut free = total.clone();
        let demand = ResourceSet::cpus(0.5).with("gpu", 1.0);
        assert!(free.contains(&demand));
        free.subtract(&demand);
        assert_eq!(free.get_milli(CPU), 1500);
        assert!(!free.contains(&demand));
        free.add_capped(&demand, &total);
        assert_eq!(free, total);
        assert!(!total.contains(&ResourceSet::cpus(1.0).with("tpu", 1.0)));
        assert_eq!(ResourceSet::cpus(0.0), ResourceSet::new());
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let spec = TaskSpec {
            task_id: TaskId::new(ClientId(3), 9),
            function: "m::f".into(),
            binary: BinaryId([7; 32]),
            args: vec![Arg::Value(vec![1, 2]), Arg::Ref(ObjectId([4; 32]))],
            resources: ResourceSet::cpus(1.0),
            max_retries: 3,
            owner: ClientId(3),
            kind: TaskKind::Function,
            nested: vec![],
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            strategy: Default::default(),
            label_selector: Vec::new(),
            stream: None,
            env: Vec::new(),
        };
        let msgs = vec![
            ToNode::Submit(Box::new(spec)),
            ToNode::Done {
                task_id: TaskId::new(ClientId(1), 1),
                outcome: TaskOutcome::Err(TaskError::WorkerDied {
                    pid: 5,
                    exit: ExitInfo {
                        code: None,
                        signal: Some(9),
                    },
                }),
                nested: vec![],
                more: vec![],
                returned_error: false,
            },
            ToNode::Status { request: 1 },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            frame::encode_frame(&mut buf, m, frame::DEFAULT_MAX_FRAME).unwrap();
        }
        let mut at = 0;
        for m in &msgs {
            let (back, used): (ToNode, usize) =
                frame::decode_frame(&buf[at..], frame::DEFAULT_MAX_FRAME)
                    .unwrap()
                    .unwrap();
            assert_eq!(&back, m);
            at += used;
        }
        assert_eq!(at, buf.len());
        let reply = ToClient::Object {
            id: ObjectId([1; 32]),
            value: ObjectValue::Inline(vec![9]),
        };
        let bytes = codec::encode(&reply).unwrap();
        assert_eq!(codec::decode::<ToClient>(&bytes, 1 << 20).unwrap(), reply);
    }
}
