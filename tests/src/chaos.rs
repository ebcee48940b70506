//! The chaos soak (issue 12 item 7): a [`Lab`] of N nodes, three workload drivers (the
//! `chaos_driver` example) attached to nodes 0, 1 and 2, and faults injected at random from a
//! seeded generator while they run; then everything healed, the drivers' counts collected, the
//! nodes stopped, and leaks looked for. [`run`] does it all and returns a [`Summary`];
//! `scripts/chaos` (the `shoal-chaos` binary) and `tests/tests/chaos.rs` call it.
//!
//! # Faults
//!
//! One at a time, each followed by its undoing: a fault is injected, held for
//! [`ChaosOptions::hold`] (a random time in that range), undone, and then the runner waits
//! (bounded, polling) until every node sees every other again before a random pause
//! ([`ChaosOptions::gap`]) and the next fault. The kinds:
//!
//! - `kill`: SIGKILL, held, then started again (same directory, so the same identity);
//! - `restart`: SIGKILL and started again at once;
//! - `freeze`: SIGSTOP, held (longer than the failure timeout, so peers take it for lost),
//!   then SIGCONT;
//! - `isolate`: every packet of the node dropped, then passed again;
//! - `partition`: the nodes split in two random sides, then healed.
//!
//! **Policy for the drivers' nodes.** The nodes the drivers attach to (0, 1, 2) get every
//! fault but `kill` and `restart`: they are frozen, isolated and partitioned away. A driver
//! does not outlive its node (the SDK does not attach again: every one of its references
//! would fail with `Disconnected` and its work would be gone), so killing its node would
//! measure nothing but that; what matters in a driver's node dying, its objects and tasks
//! held elsewhere losing their owner, is `OwnerDied`'s test, not this soak's. The other nodes
//! (3 and up) get every kind. With fewer than four nodes no node is killed.
//!
//! # Invariants
//!
//! - No wrong result: every value a driver reads is checked against the one it computed.
//! - No hang: no reference unresolved past [`ChaosOptions::bound`] after its submission, and
//!   no driver still running a bound after its time is up.
//! - Every failure of an allowed kind ([`ALLOWED_ERRORS`]).
//! - No leak after the end: the nodes are stopped as an operator would (SIGTERM) and then no
//!   process the lab started (nodes, the workers they started, drivers; recorded from `/proc`
//!   while they ran) is alive, the nodes' store directories (in `/dev/shm`) and spill
//!   directories are empty, no `/dev/shm/shoal-<pid>-…` of a recorded pid is left, and no
//!   node socket file is left.
//!
//! Also counted: tasks retried and objects made again from their lineage (the nodes' log
//! lines), faults that failed to inject or undo, and times the mesh did not converge again in
//! time after a fault (reported, not an invariant: the soak is about results).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::netlab::Lab;
use crate::node::NodeOptions;
use crate::process::{KillOnDrop, TestDir};

/// The failure kinds these semantics allow under the soak's faults (a driver counts a failure
/// by the name of its error's variant):
///
/// - `PeerLost`: a task's executor was lost (killed, frozen or cut off) past its retries;
/// - `ActorDied`: a call in flight when the actor's process or host died;
/// - `NoSuchActor`: a call that reached a node that no longer hosts the actor (its host
///   restarted);
/// - `ObjectLost`, `ObjectUnavailable`: an object whose holders were all lost (a `put`
///   whose only copy was on a killed node, one unreachable across a partition);
/// - `ObjectReconstructionFailed`: a lost result that its lineage could not make again;
/// - `OwnerDied`: a reference whose owner died;
/// - `ActorMoved`: a call that reached a copy of an actor superseded by a newer incarnation
///   and could not follow it;
/// - `NodeStopping`: work that reached a node while it stopped;
/// - `Lookup:NotFound`: another driver's named actor not found by name within 10 s (its name
///   is in the mesh's directory, which a partition cuts off).
pub const ALLOWED_ERRORS: &[&str] = &[
    "PeerLost",
    "ActorDied",
    "NoSuchActor",
    "ObjectLost",
    "ObjectUnavailable",
    "ObjectReconstructionFailed",
    "OwnerDied",
    "ActorMoved",
    "NodeStopping",
    "Lookup:NotFound",
];

/// How the soak runs.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// How many nodes (at least 3: the drivers attach to nodes 0, 1 and 2).
    pub nodes: usize,
    /// How long the drivers submit work and faults are injected.
    pub duration: Duration,
    /// The seed of the fault schedule and of the drivers' workloads.
    pub seed: u64,
    /// How long a reference may stay unresolved after its submission before it is a hang.
    pub bound: Duration,
    /// How long a fault is held: a random time in this range.
    pub hold: (Duration, Duration),
    /// The pause after a fault is undone and the mesh has converged again: a random time in
    /// this range.
    pub gap: (Duration, Duration),
    /// How many drivers (attached to nodes 0, 1, …).
    pub drivers: usize,
    /// The workload driver program (the `chaos_driver` example).
    pub driver_bin: PathBuf,
    /// Each node's store, in bytes.
    pub store_bytes: u64,
    /// The nodes' failure timeout, in seconds.
    pub failure_timeout: f64,
    /// Whether the nodes run membership by SWIM (`--membership swim`) rather than by their
    /// load reports.
    pub swim: bool,
    /// Work in flight per driver.
    pub window: usize,
    /// The fault kinds to draw from (a subset of [`FAULT_KINDS`]).
    pub kinds: Vec<&'static str>,
    /// Failure kinds tolerated beside [`ALLOWED_ERRORS`]: known product bugs, so that a soak
    /// stays meaningful about everything else until they are fixed (reported apart, in
    /// [`Summary::tolerated_errors`]). Empty by default.
    pub tolerated: Vec<String>,
    /// Whether lookups of named actors unanswered past their bound are tolerated (a known
    /// product bug, reported in [`Summary::lookup_hangs`]) rather than violations. `false`
    /// by default.
    pub tolerate_lookup_hangs: bool,
}

/// Every fault kind, in the order of the weights they are drawn with.
pub const FAULT_KINDS: &[&str] = &["kill", "restart", "freeze", "isolate", "partition"];

impl ChaosOptions {
    /// `nodes` nodes for `duration` with `seed`, the driver program `driver_bin`, and the
    /// defaults: a 120 s bound, faults held 2 to 6 s, 1 to 3 s between them, three drivers,
    /// 256 MiB stores, a failure timeout of 3 s, 12 pieces of work in flight per driver,
    /// every fault kind.
    pub fn new(nodes: usize, duration: Duration, seed: u64, driver_bin: PathBuf) -> Self {
        Self {
            nodes,
            duration,
            seed,
            bound: Duration::from_secs(120),
            hold: (Duration::from_secs(2), Duration::from_secs(6)),
            gap: (Duration::from_secs(1), Duration::from_secs(3)),
            drivers: 3,
            driver_bin,
            store_bytes: 256 << 20,
            failure_timeout: 3.0,
            swim: false,
            window: 12,
            kinds: FAULT_KINDS.to_vec(),
            tolerated: Vec::new(),
            tolerate_lookup_hangs: false,
        }
    }
}

/// A seed from the clock, for runs not given one.
pub fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// A small xorshift generator: the same seed, the same schedule of faults (their timing
/// varies with the machine).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// What was left behind after the end.
#[derive(Debug, Default, Serialize)]
pub struct Leaks {
    /// Processes the lab started still alive (`pid: command line`).
    pub processes: Vec<String>,
    /// Files and directories left in the nodes' store directories, and `/dev/shm` entries
    /// of recorded pids.
    pub shared_memory: Vec<String>,
    /// Files left in the nodes' spill directories.
    pub files: Vec<String>,
    /// Node sockets left.
    pub sockets: Vec<String>,
}

impl Leaks {
    /// How many leaks of every kind.
    pub fn count(&self) -> usize {
        self.processes.len() + self.shared_memory.len() + self.files.len() + self.sockets.len()
    }
}

/// What a soak did and found: printed as one JSON object.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// The seed (to run the same schedule again).
    pub seed: u64,
    /// How many nodes.
    pub nodes: usize,
    /// How long work was submitted and faults injected, in seconds.
    pub seconds: f64,
    /// How long the whole run took, in seconds.
    pub wall_seconds: f64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Faults that could not be injected or undone (each described).
    pub fault_errors: Vec<String>,
    /// Times the mesh had not converged again 60 s after a fault was undone.
    pub reconverge_timeouts: u64,
    /// Tasks the drivers submitted (not counting those of nested tasks).
    pub tasks_submitted: u64,
    /// Tasks retried by the nodes (their `retrying` log lines).
    pub tasks_retried: u64,
    /// Objects made again from their lineage (the nodes' log lines).
    pub objects_reconstructed: u64,
    /// Calls to actors.
    pub actor_calls: u64,
    /// Objects put by the drivers.
    pub puts: u64,
    /// References waited on by the drivers.
    pub gets: u64,
    /// Results checked against their expected value.
    pub results_checked: u64,
    /// Results that were right.
    pub results_ok: u64,
    /// Wrong results (must be 0).
    pub wrong_results: u64,
    /// Hangs: references unresolved past the bound, drivers that did not end (must be 0).
    pub hangs: u64,
    /// Failures by kind, allowed or not.
    pub errors: BTreeMap<String, u64>,
    /// Failures of kinds not in [`ALLOWED_ERRORS`] (must be empty).
    pub disallowed_errors: BTreeMap<String, u64>,
    /// Failures of kinds tolerated as known bugs ([`ChaosOptions::tolerated`]).
    pub tolerated_errors: BTreeMap<String, u64>,
    /// Lookups of named actors unanswered past their bound (a hang of `shoal::get_actor`).
    pub lookup_hangs: u64,
    /// What was left behind (must be empty).
    pub leaks: Leaks,
    /// Processes recorded while the lab ran (nodes, workers, drivers).
    pub processes_recorded: usize,
    /// Each driver's own JSON line (or why there is none).
    pub drivers: Vec<Value>,
    /// Every invariant that failed, described; empty if the soak passed.
    pub violations: Vec<String>,
}

impl Summary {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A process seen while the lab ran: its start time (to tell a recycled pid) and command.
#[derive(Clone, Debug)]
struct Seen {
    start: u64,
    cmd: String,
}

/// The parent and start time of `pid`, from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(u32, u64, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state (3), ppid (4), …, starttime (22).
    let state = fields.first()?.to_string();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start, state))
}

/// Records every descendant of `roots` (and the roots) now running into `seen`.
fn record_descendants(roots: &[u32], seen: &mut BTreeMap<u32, Seen>) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut starts: BTreeMap<u32, u64> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, start, _)) = stat_of(pid) {
            children.entry(ppid).or_default().push(pid);
            starts.insert(pid, start);
        }
    }
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        let Some(&start) = starts.get(&pid) else {
            continue;
        };
        if seen.get(&pid).is_none_or(|s| s.start != start) {
            let cmd = crate::process::cmdline(pid)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            seen.insert(pid, Seen { start, cmd });
        }
        stack.extend(children.get(&pid).into_iter().flatten().copied());
    }
}

/// Whether the process recorded as `seen` still runs (same pid, same start time, not a
/// zombie).
fn still_running(pid: u32, seen: &Seen) -> bool {
    stat_of(pid)
        .is_some_and(|(_, start, state)| start == seen.start && state != "Z" && state != "X")
}

/// A running driver.
struct DriverProcess {
    index: usize,
    process: KillOnDrop,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The soak's state while it runs.
struct Soak<'a> {
    options: &'a ChaosOptions,
    lab: Lab,
    rng: Rng,
    summary: Summary,
    seen: BTreeMap<u32, Seen>,
    drivers: Vec<DriverProcess>,
    /// Nodes killed and not started again yet.
    dead: BTreeSet<usize>,
}

impl Soak<'_> {
    /// The pids to follow: the nodes' and the drivers'.
    fn roots(&self) -> Vec<u32> {
        let mut roots: Vec<u32> = (0..self.options.nodes)
            .filter(|i| !self.dead.contains(i))
            .map(|i| self.lab.node(i).pid())
            .collect();
        roots.extend(self.drivers.iter().map(|d| d.process.pid()));
        roots
    }

    /// Waits `d`, recording the lab's processes every 200 ms meanwhile (a fault's hold time:
    /// nothing waits for a state here).
    fn pause(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let roots = self.roots();
            record_descendants(&roots, &mut self.seen);
            let now = Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(200)));
        }
    }

    /// Records a failed fault operation.
    fn fault_error(&mut self, what: String, e: anyhow::Error) {
        let message = format!("{what}: {e:#}");
        eprintln!("chaos: {message}");
        self.summary.fault_errors.push(message);
    }

    /// Starts node `i` again, once more if the first attempt fails.
    fn revive(&mut self, i: usize) {
        for attempt in 0..2 {
            match self.lab.restart(i) {
                Ok(()) => {
                    self.dead.remove(&i);
                    return;
                }
                Err(e) => self.fault_error(format!("restarting node {i} (attempt {attempt})"), e),
            }
        }
    }

    /// Injects one fault, holds it, undoes it.
    fn one_fault(&mut self) {
        let n = self.options.nodes;
        // Nodes that may be killed: those no driver is attached to.
        let killable: Vec<usize> = (self.options.drivers..n).collect();
        let kinds: Vec<&str> = self
            .options
            .kinds
            .iter()
            .copied()
            .filter(|k| !matches!(*k, "kill" | "restart") || !killable.is_empty())
            .collect();
        if kinds.is_empty() {
            return;
        }
        let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
        let hold = self.rng.between(self.options.hold);
        let any = self.rng.below(n as u64) as usize;
        let victim = if killable.is_empty() {
            any
        } else {
            killable[self.rng.below(killable.len() as u64) as usize]
        };
        *self.summary.faults.entry(kind.to_string()).or_default() += 1;
        match kind {
            "kill" => {
                eprintln!("chaos: kill node {victim} for {hold:?}");
                match self.lab.kill(victim) {
                    Ok(()) => {
                        self.dead.insert(victim);
                        self.pause(hold);
                    }
                    Err(e) => self.fault_error(format!("killing node {victim}"), e),
                }
                self.revive(victim);
            }
            "restart" => {
                eprintln!("chaos: restart node {victim}");
                self.dead.insert(victim);
                self.revive(victim);
            }
            "freeze" => {
                eprintln!("chaos: freeze node {any} for {hold:?}");
                match self.lab.freeze(any) {
                    Ok(()) => {
                        self.pause(hold);
                        if let Err(e) = self.lab.thaw(any) {
                            self.fault_error(format!("thawing node {any}"), e);
                        }
                    }
                    Err(e) => self.fault_error(format!("freezing node {any}"), e),
                }
            }
            "isolate" => {
                eprintln!("chaos: isolate node {any} for {hold:?}");
                match self.lab.isolate(any) {
                    Ok(()) => {
                        self.pause(hold);
                        if let Err(e) = self.lab.rejoin(any) {
                            self.fault_error(format!("rejoining node {any}"), e);
                        }
                    }
                    Err(e) => self.fault_error(format!("isolating node {any}"), e),
                }
            }
            _ => {
                // A side of 1 to n-1 nodes, drawn at random.
                let mut side: Vec<usize> = (0..n).collect();
                for i in (1..side.len()).rev() {
                    let j = self.rng.below(i as u64 + 1) as usize;
                    side.swap(i, j);
                }
                side.truncate(1 + self.rng.below(n as u64 - 1) as usize);
                side.sort_unstable();
                eprintln!("chaos: partition {side:?} from the rest for {hold:?}");
                match self.lab.partition(&side) {
                    Ok(()) => {
                        self.pause(hold);
                        if let Err(e) = self.lab.heal_all() {
                            self.fault_error("healing a partition".into(), e);
                        }
                    }
                    Err(e) => self.fault_error(format!("partitioning {side:?}"), e),
                }
            }
        }
        self.wait_converged();
    }

    /// Waits (polling, at most 60 s) until every node sees every other again.
    fn wait_converged(&mut self) {
        if let Err(e) = self.lab.mesh().wait_converged(Duration::from_secs(60)) {
            eprintln!("chaos: the mesh did not converge again: {e:#}");
            self.summary.reconverge_timeouts += 1;
        }
    }

    /// Undoes everything: heals the network, thaws and starts every node.
    fn heal_everything(&mut self) {
        if let Err(e) = self.lab.heal_all() {
            self.fault_error("healing everything".into(), e);
        }
        for i in 0..self.options.nodes {
            // Only frozen nodes are thawed; the others' "not frozen" is expected.
            if self.lab.thaw(i).is_ok() {
                eprintln!("chaos: thawed node {i} at the end");
            }
        }
        let dead: Vec<usize> = self.dead.iter().copied().collect();
        for i in dead {
            self.revive(i);
        }
        self.wait_converged();
    }
}

/// Starts the drivers.
fn start_drivers(options: &ChaosOptions, lab: &Lab, dir: &Path) -> Result<Vec<DriverProcess>> {
    let run = format!("chaos{}", options.seed % 1_000_000);
    (0..options.drivers)
        .map(|d| {
            let stdout = dir.join(format!("driver{d}.json"));
            let stderr = dir.join(format!("driver{d}.log"));
            let mut command = Command::new(&options.driver_bin);
            command
                .args(["--seconds", &options.duration.as_secs().to_string()])
                .args(["--bound", &options.bound.as_secs().to_string()])
                .args(["--seed", &options.seed.to_string()])
                .args(["--driver", &d.to_string()])
                .args(["--drivers", &options.drivers.to_string()])
                .args(["--run", &run])
                .args(["--window", &options.window.to_string()])
                .env("SHOAL_SOCKET", lab.node(d).socket())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(File::create(&stdout)?)
                .stderr(File::create(&stderr)?);
            let process = KillOnDrop::spawn(format!("chaos driver {d}"), &mut command)?;
            Ok(DriverProcess {
                index: d,
                process,
                stdout,
                stderr,
            })
        })
        .collect()
}

/// Adds a driver's JSON counts to the summary.
fn add_driver(summary: &mut Summary, stats: &Value) {
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    summary.tasks_submitted += n("tasks_submitted");
    summary.actor_calls += n("actor_calls");
    summary.puts += n("puts");
    summary.gets += n("gets");
    summary.results_checked += n("checked");
    summary.results_ok += n("ok");
    summary.wrong_results += n("wrong");
    summary.hangs += n("hangs");
    summary.lookup_hangs += n("lookup_hangs");
    if let Some(errors) = stats["errors"].as_object() {
        for (k, v) in errors {
            *summary.errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
}

/// The last `n` lines of a file, for a driver that printed no JSON.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every entry under `dir` (recursively), as paths.
fn entries_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(entries_under(&p));
        }
    }
    out
}

/// Runs a soak and returns what it found (an error only if the lab could not be set up).
/// Prints its progress to stderr.
pub fn run(options: &ChaosOptions) -> Result<Summary> {
    anyhow::ensure!(
        options.nodes >= options.drivers && options.drivers >= 1,
        "{} nodes cannot host {} drivers",
        options.nodes,
        options.drivers
    );
    let started = Instant::now();
    eprintln!(
        "chaos: seed {} ({} nodes, {:?}, drivers on nodes 0..{})",
        options.seed, options.nodes, options.duration, options.drivers
    );
    let work = TestDir::new("shoal-chaos");
    eprintln!(
        "chaos: drivers' output in {} (kept with ${})",
        work.path().display(),
        crate::process::KEEP_ENV
    );
    // The stores in /dev/shm, as a node's are by default: one parent per node, made here,
    // so that what a node leaves there is seen.
    let shm = PathBuf::from(format!("/dev/shm/shoal-chaos-{}", std::process::id()));
    let store_dirs: Vec<PathBuf> = (0..options.nodes)
        .map(|i| shm.join(format!("n{i}")))
        .collect();
    for d in &store_dirs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let shm_guard = ShmDir(shm.clone());
    let shm_before: BTreeSet<String> = shm_names();
    let lab = Lab::start_with(options.nodes, |i| {
        let mut o = NodeOptions::new()
            .mesh("chaos")
            .failure_timeout(options.failure_timeout)
            .store_dir(&store_dirs[i]);
        if options.swim {
            o = o.args(["--membership", "swim"]);
        }
        o.store_bytes = options.store_bytes;
        o
    })?;
    lab.mesh().wait_converged(Duration::from_secs(60))?;
    let drivers = start_drivers(options, &lab, work.path())?;
    let mut soak = Soak {
        options,
        lab,
        rng: Rng::new(options.seed),
        summary: Summary {
            seed: options.seed,
            nodes: options.nodes,
            seconds: options.duration.as_secs_f64(),
            ..Default::default()
        },
        seen: BTreeMap::new(),
        drivers,
        dead: BTreeSet::new(),
    };

    // Faults until the time is up (the drivers submit work for as long).
    let end = Instant::now() + options.duration;
    // A moment for the drivers to get going first.
    soak.pause(Duration::from_secs(3).min(options.duration));
    while Instant::now() < end {
        soak.one_fault();
        let gap = soak.rng.between(options.gap);
        soak.pause(gap.min(end.saturating_duration_since(Instant::now())));
    }
    eprintln!("chaos: time is up; healing everything");
    soak.heal_everything();

    // The drivers finish what they have in flight: each reference has its bound from its
    // submission, so a driver that runs a bound past the end is hung.
    let drain_deadline = end + options.bound + Duration::from_secs(30);
    let mut drivers = std::mem::take(&mut soak.drivers);
    for d in &mut drivers {
        loop {
            let roots = soak.roots();
            record_descendants(&[roots, vec![d.process.pid()]].concat(), &mut soak.seen);
            match d.process.wait_timeout(Duration::from_millis(500)) {
                Ok(Some(status)) => {
                    if !status.success() {
                        soak.summary
                            .violations
                            .push(format!("driver {} exited with {status}", d.index));
                    }
                    break;
                }
                Ok(None) if Instant::now() < drain_deadline => {}
                Ok(None) => {
                    soak.summary.hangs += 1;
                    soak.summary.violations.push(format!(
                        "driver {} still running {:?} after its time was up",
                        d.index,
                        Instant::now() - end
                    ));
                    if let Err(e) = d.process.kill() {
                        eprintln!("chaos: killing driver {}: {e:#}", d.index);
                    }
                    break;
                }
                Err(e) => {
                    soak.summary
                        .violations
                        .push(format!("waiting for driver {}: {e:#}", d.index));
                    break;
                }
            }
        }
        let out = std::fs::read_to_string(&d.stdout).unwrap_or_default();
        match out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            Some(stats) => {
                add_driver(&mut soak.summary, &stats);
                soak.summary.drivers.push(stats);
            }
            None => {
                let why = format!(
                    "driver {} printed no summary; its log ends:\n{}",
                    d.index,
                    tail(&d.stderr, 20)
                );
                soak.summary.violations.push(why.clone());
                soak.summary.drivers.push(Value::String(why));
            }
        }
    }

    // The nodes stop as an operator stops them: SIGTERM, then their exit awaited.
    let Soak {
        mut lab,
        mut summary,
        mut seen,
        ..
    } = soak;
    let node_pids: Vec<u32> = (0..options.nodes).map(|i| lab.node(i).pid()).collect();
    record_descendants(&node_pids, &mut seen);
    for i in 0..options.nodes {
        let node = lab.node_mut(i);
        if let Err(e) = node.signal(libc::SIGTERM) {
            summary.violations.push(format!("stopping node {i}: {e:#}"));
            continue;
        }
        match node.wait_timeout(Duration::from_secs(30)) {
            Ok(Some(_)) => {}
            Ok(None) => summary
                .violations
                .push(format!("node {i} did not stop within 30 s of SIGTERM")),
            Err(e) => summary
                .violations
                .push(format!("waiting for node {i}: {e:#}")),
        }
    }
    // Counted from the logs of every run of every node.
    for i in 0..options.nodes {
        let log = std::fs::read_to_string(lab.node(i).log_path()).unwrap_or_default();
        summary.tasks_retried += log.lines().filter(|l| l.contains("retrying")).count() as u64;
        summary.objects_reconstructed += log
            .lines()
            .filter(|l| l.contains("making it again from its lineage"))
            .count() as u64;
    }

    // Leaks. Processes: what is still running a few seconds on (a worker may take a moment
    // to see its node gone).
    summary.processes_recorded = seen.len();
    let running = |seen: &BTreeMap<u32, Seen>| -> Vec<u32> {
        seen.iter()
            .filter(|(pid, s)| still_running(**pid, s))
            .map(|(pid, _)| *pid)
            .collect()
    };
    let left = crate::wait::wait_for(
        Duration::from_secs(10),
        "the lab's processes to end",
        || Ok(running(&seen).is_empty().then_some(())),
    );
    if left.is_err() {
        for pid in running(&seen) {
            let s = &seen[&pid];
            summary.leaks.processes.push(format!("{pid}: {}", s.cmd));
            // Ours to clean up: killed by its recorded pid, its start time checked just now.
            // SAFETY: kill(2) has no memory preconditions.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
                eprintln!("chaos: cannot kill leaked process {pid}");
            }
        }
    }
    for d in &store_dirs {
        summary.leaks.shared_memory.extend(entries_under(d));
    }
    let pids: BTreeSet<String> = seen.keys().map(|p| format!("shoal-{p}-")).collect();
    for name in shm_names().difference(&shm_before) {
        if pids.iter().any(|p| name.starts_with(p.as_str())) {
            summary.leaks.shared_memory.push(format!("/dev/shm/{name}"));
        }
    }
    for i in 0..options.nodes {
        let node = lab.node(i);
        summary
            .leaks
            .files
            .extend(entries_under(&node.dir().join("spill")));
        if node.socket().exists() {
            summary
                .leaks
                .sockets
                .push(node.socket().display().to_string());
        }
    }
    drop(lab);
    drop(shm_guard);

    // The verdict.
    for (k, v) in &summary.errors {
        if options.tolerated.contains(k) {
            summary.tolerated_errors.insert(k.clone(), *v);
        } else if !ALLOWED_ERRORS.contains(&k.as_str()) {
            summary.disallowed_errors.insert(k.clone(), *v);
        }
    }
    if summary.wrong_results > 0 {
        summary
            .violations
            .push(format!("{} wrong results", summary.wrong_results));
    }
    if summary.hangs > 0 {
        summary.violations.push(format!("{} hangs", summary.hangs));
    }
    if summary.lookup_hangs > 0 && !options.tolerate_lookup_hangs {
        summary.violations.push(format!(
            "{} lookups of named actors unanswered past their bound",
            summary.lookup_hangs
        ));
    }
    if !summary.disallowed_errors.is_empty() {
        summary.violations.push(format!(
            "errors of kinds not allowed: {:?}",
            summary.disallowed_errors
        ));
    }
    if summary.leaks.count() > 0 {
        summary.violations.push(format!(
            "{} leaks: {:?}",
            summary.leaks.count(),
            summary.leaks
        ));
    }
    if summary.results_checked == 0 {
        summary.violations.push("no result was checked".into());
    }
    summary.wall_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The names in `/dev/shm`.
fn shm_names() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The soak's directory in `/dev/shm`, removed on drop (kept with `$SHOAL_TESTS_KEEP`).
struct ShmDir(PathBuf);

impl Drop for ShmDir {
    fn drop(&mut self) {
        if std::env::var_os(crate::process::KEEP_ENV).is_none() {
            // Whatever is left was reported as a leak already.
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}
