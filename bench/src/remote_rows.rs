//! The mesh rows of BENCH.md that run work on another node, between two real `shoal node`
//! processes on loopback:
//!
//! - `remote_tasks_sync`: submit one no-op task that runs on the other node, get its result;
//!   one at a time.
//! - `remote_tasks_async`: submit 1,000 no-op tasks (100 under `--quick`) that run on the
//!   other node, then get all; counted per task.
//! - `remote_actor_calls_sync`: one small call to an actor on the other node, get its result.
//! - `remote_actor_calls_async`: 1,000 small calls (100 under `--quick`) to that actor, then
//!   get all; per call.
//! - `remote_actor_call_latency_us_p50`, `_p99`: the calls of `remote_actor_calls_sync`, each
//!   timed; a round's figure is the percentile of its calls' times (the driver reports it).
//! - `object_transfer_gigabytes`: a 1 GiB object (256 MiB under `--quick`) pulled from the
//!   other node into this node's store. Each operation has a task on the other node make a
//!   fresh object (zeros but for a nonce), waits (untimed) until that node's `shoal status`
//!   counts the task finished, then times the driver's get: its request to the local node, the
//!   pull over one libp2p stream (the remote node reading its store file, Noise + Yamux over
//!   TCP, the local node writing its store file and hashing the bytes with blake3 as they
//!   arrive), the seal, the answer, and the driver mapping the object (no copy). It also
//!   includes the one message that tells the local node the task is done, if that arrives
//!   after the driver asked. The operation fails if the local node started pulling before the
//!   driver asked (its store already in use): then the time would miss part of the pull.
//!
//! - `mesh_join_seconds`: a new `shoal node` process started with a join token (and a custom
//!   resource no other node has), from its start until it has run a task that a driver
//!   attached to another node submitted for that resource: admission, convergence, the task's
//!   spill and the shipping of the driver's executable to the new node included.
//!
//! Each row starts its own pair of nodes ([`NodePair`]): the *remote* node with
//! [`REMOTE_CPUS`] CPUs, and the *local* node with none (`--cpus 0`), bootstrapped from the
//! remote one, each with a [`STORE_BYTES`] store in a directory under `/dev/shm`. The local
//! node can run no task, so every task its driver submits is spilled to the remote node, which
//! fetches the driver's executable by its hash the first time (code shipping).
//!
//! A driver attaches to a node once per process (`shoal::init`), and this process may already
//! be attached to another node by earlier rows; so the work runs in a *driver* process, this
//! executable again (`shoal-bench __remote_driver <row>`, with `SHOAL_SOCKET` set to the
//! local node's socket). The runner keeps the method (warm-up and rounds, [`Bench::run_tallied`])
//! and asks the driver for one round at a time over its stdin and stdout:
//!
//! ```text
//! runner -> driver: round <nanoseconds>
//! driver -> runner: shoal-bench-driver: done <amount> <timed ns> <batches> <wall ns> <p50 ns> <p99 ns>
//! ```
//!
//! (the last two: percentiles of its batches' times)
//!
//! after the driver said `shoal-bench-driver: ready` (its set-up done), or
//! `shoal-bench-driver: error <message>`. The driver ends when its stdin closes. The actor of
//! the actor rows is created by a third program attached to the remote node
//! (`shoal-bench __remote_actor_host <name>`): a named, detached actor that the driver looks up
//! by name and calls across the mesh.
//!
//! Set-up checks, before anything is timed, that the work really runs on the other node: a
//! task (or an actor method) returns `shoal::peer_id()` of the node it ran on, and the row
//! fails unless that is the remote node's. Every child process (nodes, driver, actor host) is
//! owned by a guard that kills it on drop, and the driver and host also die with the runner.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use shoal::{ActorError, ActorOptions, Bytes, ObjectRef};
use shoal_tests::{KillOnDrop, Mesh, NodeOptions, NodeProcess, TestDir};

use crate::harness::{percentile, Bench, Registry, Tally, Unit};
use crate::limits::{die_with_parent, FINISH_TIMEOUT};
use crate::mesh_rows::{check_shoal_bin, unique_mesh};
use crate::shoal_rows::noop;

/// CPUs of the remote node (the local one has none).
const REMOTE_CPUS: f64 = 2.0;
/// `--store-bytes` of both nodes: room for the transferred object on both sides (and for a
/// second copy at the remote node while the previous one is being released).
const STORE_BYTES: u64 = 3 << 30;
/// The object of `object_transfer_gigabytes`.
const TRANSFER_BYTES: u64 = 1 << 30;
/// The same under `--quick`.
const TRANSFER_BYTES_QUICK: u64 = 256 << 20;
/// Tasks (calls) per batch of the `_async` rows (Ray's figure).
const ASYNC_BATCH: u64 = 1_000;
/// The same under `--quick` (a smoke run: a slow mesh must not make it take minutes).
const ASYNC_BATCH_QUICK: u64 = 100;
/// How long the two nodes may take to see each other.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the first remote task (code shipping, a worker's start) or the actor lookup may
/// take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long any later get may wait.
const OP_TIMEOUT: Duration = Duration::from_secs(120);
/// How much longer than the round's time the runner waits for a round's result before it
/// fails the row (a round ends after the batch in progress at its end).
const ROUND_SLACK: Duration = Duration::from_secs(300);
/// How often `object_transfer_gigabytes` asks the remote node whether the task that makes the
/// object has finished.
const TASK_POLL: Duration = Duration::from_millis(5);
/// How many lines of each node's log a failure quotes.
const LOG_LINES: usize = 30;

/// The prefix of the driver's protocol lines on its stdout (other lines are passed on to
/// stderr).
const LINE_PREFIX: &str = "shoal-bench-driver: ";
/// The hidden subcommand of the driver process.
const DRIVER_CMD: &str = "__remote_driver";
/// The hidden subcommand of the program that creates the remote actor.
const ACTOR_HOST_CMD: &str = "__remote_actor_host";
/// The remote node's peer id, for the driver.
const ENV_REMOTE_PEER: &str = "SHOAL_BENCH_REMOTE_PEER";
/// The remote node's socket, for the driver of `object_transfer_gigabytes`.
const ENV_REMOTE_SOCKET: &str = "SHOAL_BENCH_REMOTE_SOCKET";
/// The actor's name, for the driver of the actor rows.
const ENV_ACTOR: &str = "SHOAL_BENCH_REMOTE_ACTOR";
/// The object's size, for the driver of `object_transfer_gigabytes`.
const ENV_TRANSFER_BYTES: &str = "SHOAL_BENCH_TRANSFER_BYTES";
/// Tasks (calls) per batch, for the driver of the `_async` rows.
const ENV_BATCH: &str = "SHOAL_BENCH_BATCH";

/// Registers the rows.
pub fn register(reg: &mut Registry) {
    reg.add(
        "remote_tasks_sync",
        Unit::OpsPerSec,
        "submit one no-op task that runs on another node (a real `shoal node` process on \
         loopback; the driver's node has --cpus 0) and get its result",
        remote_tasks_sync,
    );
    reg.add(
        "remote_tasks_async",
        Unit::OpsPerSec,
        "submit 1,000 no-op tasks that run on another node, then get all; counted per task",
        remote_tasks_async,
    );
    reg.add(
        "remote_actor_calls_sync",
        Unit::OpsPerSec,
        "one small call to a named actor on another node (created there by another program), \
         get its result",
        remote_actor_calls_sync,
    );
    reg.add(
        "remote_actor_call_latency_us_p50",
        Unit::Micros,
        "median time of one small call to a named actor on another node, from the call to its \
         result in hand",
        remote_latency_p50,
    );
    reg.add(
        "remote_actor_call_latency_us_p99",
        Unit::Micros,
        "99th percentile of the time of one small call to a named actor on another node",
        remote_latency_p99,
    );
    reg.add(
        "remote_actor_calls_async",
        Unit::OpsPerSec,
        "1,000 small calls to a named actor on another node, then get all; per call",
        remote_actor_calls_async,
    );
    reg.add(
        "mesh_join_seconds",
        Unit::Seconds,
        "a new node with a join token, from its process's start until it has run a task from \
         a peer (admission, convergence, the spill and code shipping included)",
        mesh_join_seconds,
    );
    reg.add(
        "object_transfer_gigabytes",
        Unit::GbPerSec,
        "a 1 GiB object (a task's result, made on another node) pulled into this node's store: \
         from the driver's get to a mapped view of it, after the task has finished there",
        object_transfer_gigabytes,
    );
}

// ---------------------------------------------------------------------------------------------
// What runs on the remote node

/// Where a task runs: the peer id of its node.
#[shoal::remote]
fn remote_where() -> String {
    shoal::peer_id().unwrap_or_default()
}

/// A `len`-byte buffer of zeros but for `nonce` in its first 8 bytes (so no two are equal).
#[shoal::remote]
fn remote_zeros(len: u64, nonce: u64) -> Bytes {
    let mut v = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let n = v.len().min(8);
    v[..n].copy_from_slice(&nonce.to_le_bytes()[..n]);
    Bytes(v)
}

/// The actor of the actor rows.
#[derive(Default)]
pub struct RemoteTarget;

#[shoal::actor]
impl RemoteTarget {
    pub fn new() -> Self {
        RemoteTarget
    }

    /// A small actor call: returns `b"ok"`.
    pub fn small(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// The peer id of the node the actor lives on.
    pub fn peer(&self) -> String {
        shoal::peer_id().unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The rows (in the runner)

/// What a row's driver does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    TasksSync,
    TasksAsync,
    ActorSync,
    ActorAsync,
    /// Small calls one at a time, as `ActorSync`, for a percentile of their times (50 or 99).
    ActorLatency(u32),
    Transfer,
    Join,
}

impl Work {
    const ALL: [Work; 8] = [
        Work::TasksSync,
        Work::TasksAsync,
        Work::ActorSync,
        Work::ActorAsync,
        Work::ActorLatency(50),
        Work::ActorLatency(99),
        Work::Transfer,
        Work::Join,
    ];

    fn name(self) -> &'static str {
        match self {
            Work::TasksSync => "remote_tasks_sync",
            Work::TasksAsync => "remote_tasks_async",
            Work::ActorSync => "remote_actor_calls_sync",
            Work::ActorAsync => "remote_actor_calls_async",
            Work::ActorLatency(50) => "remote_actor_call_latency_us_p50",
            Work::ActorLatency(_) => "remote_actor_call_latency_us_p99",
            Work::Transfer => "object_transfer_gigabytes",
            Work::Join => "mesh_join_seconds",
        }
    }

    fn from_name(name: &str) -> Option<Work> {
        Work::ALL.into_iter().find(|w| w.name() == name)
    }

    fn uses_actor(self) -> bool {
        matches!(
            self,
            Work::ActorSync | Work::ActorAsync | Work::ActorLatency(_)
        )
    }
}

fn remote_tasks_sync(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::TasksSync)
}

fn remote_tasks_async(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::TasksAsync)
}

fn remote_actor_calls_sync(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::ActorSync)
}

fn remote_actor_calls_async(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::ActorAsync)
}

fn remote_latency_p50(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::ActorLatency(50))
}

fn remote_latency_p99(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::ActorLatency(99))
}

fn object_transfer_gigabytes(b: &mut Bench) -> Result<()> {
    remote_row(b, Work::Transfer)
}

/// Each operation: a new node (its own directory, a fresh identity, the mesh's join token, a
/// resource `join<k>` only it has) is started, and the driver (attached to the first node)
/// submits a task needing `join<k>` that waits for such a node; timed from the new node's
/// spawn until the driver has the task's result. Set-up checks that it ran on the new node.
fn mesh_join_seconds(b: &mut Bench) -> Result<()> {
    check_shoal_bin(b)?;
    let dir = nodes_dir()?;
    let options = NodeOptions::new().mesh(unique_mesh("join"));
    let first = NodeProcess::start(options.clone().cpus(1.0).dir(dir.join("first")))
        .context("starting the first node")?;
    let envs: Vec<(&str, OsString)> = vec![(ENV_REMOTE_PEER, first.peer_id().into())];
    let mut driver = Program::start(
        "driver",
        DRIVER_CMD,
        OsStr::new(Work::Join.name()),
        &first.socket(),
        &envs,
    )?;
    driver.expect("ready", SETUP_TIMEOUT)?;
    let mut k = 0u32;
    let (mut fastest, mut slowest) = (Duration::MAX, Duration::ZERO);
    b.run_timed(|| {
        k += 1;
        let start = Instant::now();
        let mut joiner = NodeProcess::spawn(
            options
                .clone()
                .cpus(1.0)
                .dir(dir.join(format!("joiner-{k}")))
                .peer(first.listen_addr())
                .args(["--resource".to_string(), format!("join{k}=1")]),
        )
        .context("starting a new node")?;
        driver.send(&format!("join {k}"))?;
        let ran_on = driver.expect("joined", OP_TIMEOUT)?;
        let took = start.elapsed();
        joiner.wait_ready()?;
        ensure!(
            ran_on == joiner.peer_id(),
            "the task ran on {ran_on}, not on the new node {}",
            joiner.peer_id()
        );
        fastest = fastest.min(took);
        slowest = slowest.max(took);
        Ok(took)
    })?;
    eprintln!(
        "{}: {k} new nodes, fastest {:.3} s, slowest {:.3} s",
        b.name(),
        fastest.as_secs_f64(),
        slowest.as_secs_f64()
    );
    driver.finish()
}

/// A row: two nodes, the actor host if any, the driver; the rounds; then everything stopped.
/// A failure quotes the tails of both nodes' logs.
fn remote_row(b: &mut Bench, work: Work) -> Result<()> {
    let pair = NodePair::start(b)?;
    measure(b, &pair, work).map_err(|e| pair.with_logs(e))
}

fn measure(b: &mut Bench, pair: &NodePair, work: Work) -> Result<()> {
    let mut envs: Vec<(&str, OsString)> = vec![
        (ENV_REMOTE_PEER, pair.remote().peer_id().into()),
        (ENV_REMOTE_SOCKET, pair.remote().socket().into()),
    ];
    let host = if work.uses_actor() {
        let name = format!("bench-remote-target-{}", std::process::id());
        let mut host = Program::start(
            "actor host",
            ACTOR_HOST_CMD,
            OsStr::new(&name),
            &pair.remote().socket(),
            &[],
        )?;
        let peer = host
            .expect("ready", SETUP_TIMEOUT)
            .context("creating the actor on the remote node")?;
        ensure!(
            peer == pair.remote().peer_id(),
            "the actor was created on {peer}, not on the remote node {}",
            pair.remote().peer_id()
        );
        eprintln!(
            "{}: actor {name} created on the remote node by a program attached to it",
            b.name()
        );
        envs.push((ENV_ACTOR, name.into()));
        Some(host)
    } else {
        None
    };
    if matches!(work, Work::TasksAsync | Work::ActorAsync) {
        let batch = if b.is_quick() {
            eprintln!(
                "{}: --quick: batches of {ASYNC_BATCH_QUICK} instead of {ASYNC_BATCH}",
                b.name()
            );
            ASYNC_BATCH_QUICK
        } else {
            ASYNC_BATCH
        };
        envs.push((ENV_BATCH, batch.to_string().into()));
    }
    if work == Work::Transfer {
        let bytes = if b.is_quick() {
            eprintln!(
                "{}: --quick: objects of {TRANSFER_BYTES_QUICK} bytes instead of \
                 {TRANSFER_BYTES}",
                b.name()
            );
            TRANSFER_BYTES_QUICK
        } else {
            TRANSFER_BYTES
        };
        envs.push((ENV_TRANSFER_BYTES, bytes.to_string().into()));
    }
    let mut driver = Program::start(
        "driver",
        DRIVER_CMD,
        OsStr::new(work.name()),
        &pair.local().socket(),
        &envs,
    )?;
    let ready = driver
        .expect("ready", SETUP_TIMEOUT + OP_TIMEOUT)
        .context("the driver's set-up")?;
    eprintln!("{}: driver ready: {ready}", b.name());
    if let Work::ActorLatency(p) = work {
        b.run_sampled(|d| {
            let (_, [p50, p99]) = driver.round(d)?;
            let at = if p == 50 { p50 } else { p99 };
            Ok(at.as_secs_f64() * 1e6)
        })?;
    } else {
        b.run_tallied(|d| driver.round(d).map(|(t, _)| t))?;
    }
    driver.finish()?;
    if let Some(host) = host {
        host.finish()?;
    }
    Ok(())
}

/// The two nodes of a row: node 0 of the mesh is the remote node ([`REMOTE_CPUS`] CPUs),
/// node 1 the local one (no CPUs), where the driver attaches.
struct NodePair {
    /// Dropped first: kills both nodes and removes their directories.
    mesh: Mesh,
    /// Then their parent directory.
    _dir: TestDir,
}

impl NodePair {
    fn start(b: &Bench) -> Result<NodePair> {
        check_shoal_bin(b)?;
        let dir = nodes_dir()?;
        let mut options = NodeOptions::new().mesh(unique_mesh("remote"));
        options.store_bytes = STORE_BYTES;
        let remote = NodeProcess::start(options.clone().cpus(REMOTE_CPUS).dir(dir.join("remote")))
            .context("starting the remote node")?;
        let local = NodeProcess::start(
            options
                .cpus(0.0)
                .dir(dir.join("local"))
                .peer(remote.listen_addr()),
        )
        .context("starting the local node")?;
        let mesh = Mesh::from_nodes(vec![remote, local]);
        let took = mesh
            .wait_converged(CONVERGE_TIMEOUT)
            .context("the two nodes finding each other")?;
        let pair = NodePair { mesh, _dir: dir };
        for node in pair.mesh.nodes() {
            crate::scrape::watch(node.status()["metrics"].as_str());
        }
        eprintln!(
            "{}: two `shoal node` processes on loopback, converged after {:.3} s: remote {} \
             (--cpus {REMOTE_CPUS}, pid {}), local {} (--cpus 0, pid {}, the driver's); \
             stores of {STORE_BYTES} bytes in {}",
            b.name(),
            took.as_secs_f64(),
            pair.remote().peer_id(),
            pair.remote().pid(),
            pair.local().peer_id(),
            pair.local().pid(),
            pair._dir.path().display(),
        );
        Ok(pair)
    }

    fn remote(&self) -> &NodeProcess {
        self.mesh.node(0)
    }

    fn local(&self) -> &NodeProcess {
        self.mesh.node(1)
    }

    /// `e` with the tails of both nodes' logs.
    fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = |what: &str, node: &NodeProcess| {
            format!(
                "\n--- {what} node's log ({}), last {LOG_LINES} lines:\n{}",
                node.log_path().display(),
                shoal_tests::log_tail(&node.log_path(), LOG_LINES)
            )
        };
        anyhow!(
            "{e:#}{}{}",
            tail("remote", self.remote()),
            tail("local", self.local())
        )
    }
}

/// The parent directory of a pair's node directories: under `/dev/shm` (so that the stores
/// are in memory) when it exists, else in the temporary directory. Removed on drop, unless
/// `$SHOAL_TESTS_KEEP` is set (as the nodes' own directories).
pub(crate) fn nodes_dir() -> Result<TestDir> {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    TestDir::create_in(&base, "shoal-bench")
}

/// A child program (the driver or the actor host): this executable with a hidden
/// subcommand, attached to a node's socket, speaking the line protocol of the module docs.
/// Killed on drop.
pub(crate) struct Program {
    child: KillOnDrop,
    what: &'static str,
    stdin: Option<ChildStdin>,
    /// Its protocol lines (without the prefix), read by a thread of their own.
    lines: mpsc::Receiver<String>,
}

impl Program {
    pub(crate) fn start(
        what: &'static str,
        sub: &str,
        arg: &OsStr,
        socket: &Path,
        envs: &[(&str, OsString)],
    ) -> Result<Program> {
        let exe = std::env::current_exe().context("finding the shoal-bench executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg(sub)
            .arg(arg)
            .env("SHOAL_SOCKET", socket)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = KillOnDrop::spawn(what, &mut cmd)?;
        let stdin = child.child_mut().stdin.take();
        let stdout = child
            .child_mut()
            .stdout
            .take()
            .context("the child's stdout")?;
        // The programs say one line per request: a few lines of room are plenty.
        let (tx, lines) = mpsc::sync_channel(16);
        std::thread::Builder::new()
            .name(format!("bench-{what}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    match line.strip_prefix(LINE_PREFIX) {
                        Some(msg) => {
                            if tx.send(msg.to_owned()).is_err() {
                                return;
                            }
                        }
                        None => eprintln!("{what}: {line}"),
                    }
                }
            })
            .context("starting a thread")?;
        Ok(Program {
            child,
            what,
            stdin,
            lines,
        })
    }

    /// The next protocol line, which must be `<word> <rest>` (or just `<word>`): returns
    /// the rest. Fails on `error …`, on any other word, when the program exits, and after
    /// `timeout`.
    pub(crate) fn expect(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                bail!("the {} said nothing for {timeout:?}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Its stdout is closed: it has exited, or is about to.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && self.child.ensure_running().is_ok() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.child.ensure_running()?;
                bail!("the {} closed its stdout", self.what)
            }
        };
        let (first, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        if first == "error" {
            bail!("the {} failed: {rest}", self.what);
        }
        ensure!(
            first == word,
            "the {} said {line:?}, not {word:?}",
            self.what
        );
        Ok(rest.to_owned())
    }

    /// Writes one line to the program.
    pub(crate) fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the program's stdin is closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .context("writing to the program")
    }

    /// Has the driver work for at least `d`, and returns what it did.
    /// One round of the driver's work: its tally, and the median and 99th percentile of the
    /// times of its batches (of its operations, for rows of one operation per batch).
    fn round(&mut self, d: Duration) -> Result<(Tally, [Duration; 2])> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the driver's stdin is closed")?;
        writeln!(stdin, "round {}", d.as_nanos())
            .and_then(|()| stdin.flush())
            .context("asking the driver for a round")?;
        let done = self.expect("done", d + ROUND_SLACK)?;
        let fields: Vec<u64> = done
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("the driver's round result {done:?}"))?;
        let [amount, timed, batches, wall, p50, p99] = fields[..] else {
            bail!("the driver's round result {done:?} is not 6 numbers");
        };
        let tally = Tally {
            amount,
            timed: Duration::from_nanos(timed),
            batches,
            wall: Duration::from_nanos(wall),
        };
        Ok((
            tally,
            [Duration::from_nanos(p50), Duration::from_nanos(p99)],
        ))
    }

    /// Closes its stdin (its signal to clean up and exit) and checks that it exits
    /// successfully.
    pub(crate) fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        self.child.finish(FINISH_TIMEOUT)
    }
}

// ---------------------------------------------------------------------------------------------
// The child programs

/// Runs a hidden subcommand of this module if `args` (without the program name) names one;
/// `None` otherwise.
pub fn run_hidden(args: &[OsString]) -> Option<Result<()>> {
    let cmd = args.first()?.to_str()?;
    let arg = args.get(1).and_then(|a| a.to_str());
    let result = match cmd {
        DRIVER_CMD => die_with_parent().and_then(|()| {
            let work = arg.and_then(Work::from_name).with_context(|| {
                format!("usage: shoal-bench {DRIVER_CMD} <row>; not a row: {arg:?}")
            })?;
            driver_main(work)
        }),
        ACTOR_HOST_CMD => die_with_parent().and_then(|()| {
            let name =
                arg.with_context(|| format!("usage: shoal-bench {ACTOR_HOST_CMD} <name>"))?;
            actor_host_main(name)
        }),
        _ => return None,
    };
    if let Err(e) = &result {
        say(&format!("error {}", format!("{e:#}").replace('\n', " / ")));
    }
    Some(result)
}

/// Writes a protocol line on stdout.
pub(crate) fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{LINE_PREFIX}{msg}").and_then(|()| out.flush());
}

fn env(key: &str) -> Result<String> {
    std::env::var(key).with_context(|| format!("${key} is not set"))
}

/// Attaches to the node on `$SHOAL_SOCKET`, never to an embedded one.
pub(crate) fn attach() -> Result<shoal::Shoal> {
    let socket = env("SHOAL_SOCKET")?;
    shoal::init_with(shoal::InitOptions {
        socket: Some(socket.clone().into()),
        require_daemon: true,
        ..Default::default()
    })
    .with_context(|| format!("attaching to the node on {socket}"))
}

/// Blocks until stdin reaches end-of-file (the runner's signal that the row is over).
fn wait_for_eof() -> Result<()> {
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink).context("reading stdin")?;
    Ok(())
}

/// `__remote_actor_host <name>`: creates the named, detached actor on the node it is
/// attached to, says `ready <peer id of the actor's node>`, and kills the actor when its
/// stdin closes.
fn actor_host_main(name: &str) -> Result<()> {
    let _shoal = attach()?;
    let actor = RemoteTarget::options(ActorOptions::new().name(name).detached(true))
        .try_remote()
        .with_context(|| format!("creating the actor {name}"))?;
    let peer = actor
        .peer()
        .get_blocking_timeout(SETUP_TIMEOUT)
        .context("the actor's first call")?;
    say(&format!("ready {peer}"));
    wait_for_eof()?;
    shoal::kill(&actor);
    Ok(())
}

/// One batch of a driver's work: how many operations (bytes) it did, and the time they took.
type Batch = Box<dyn FnMut() -> Result<(u64, Duration)>>;

/// `__remote_driver <row>`: attaches to the local node, sets the row's work up, says
/// `ready …`, then runs one round per `round <nanoseconds>` line on stdin until end-of-file.
fn driver_main(work: Work) -> Result<()> {
    let remote = env(ENV_REMOTE_PEER)?;
    let shoal = attach()?;
    if work == Work::Join {
        return join_driver(&shoal);
    }
    let here = shoal
        .peer_id()
        .context("the driver's node is not a peer of a mesh")?
        .to_owned();
    ensure!(
        here != remote,
        "the driver is attached to the remote node {remote}"
    );
    let (mut batch, ready) = match work {
        Work::TasksSync | Work::TasksAsync => set_up_tasks(work, &remote)?,
        Work::ActorSync | Work::ActorAsync | Work::ActorLatency(_) => set_up_actor(work, &remote)?,
        Work::Transfer => set_up_transfer(&shoal, &remote)?,
        Work::Join => unreachable!("the join driver returned above"),
    };
    say(&format!("ready {ready}"));
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let nanos: u64 = line
            .strip_prefix("round ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("not a round request: {line:?}"))?;
        let d = Duration::from_nanos(nanos);
        let start = Instant::now();
        let mut t = Tally::default();
        let mut times = Vec::new();
        loop {
            let (amount, took) = batch()?;
            t.amount += amount;
            t.timed += took;
            t.batches += 1;
            times.push(took);
            if start.elapsed() >= d {
                break;
            }
        }
        t.wall = start.elapsed();
        let mut at = |p| percentile(&mut times, p).unwrap_or_default().as_nanos();
        let (p50, p99) = (at(50.0), at(99.0));
        say(&format!(
            "done {} {} {} {} {p50} {p99}",
            t.amount,
            t.timed.as_nanos(),
            t.batches,
            t.wall.as_nanos()
        ));
    }
    drop(batch);
    // Everything this driver sent has been handled before it goes.
    shoal.status().context("waiting for the node to catch up")?;
    Ok(())
}

/// The driver of `mesh_join_seconds`: for each `join <k>` line, a task that needs resource
/// `join<k>` (waiting for a node that has it); answers `joined <peer id where it ran>`.
fn join_driver(shoal: &shoal::Shoal) -> Result<()> {
    say("ready attached");
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let k = line
            .strip_prefix("join ")
            .with_context(|| format!("not a join request: {line:?}"))?;
        let options = shoal::TaskOptions::new()
            .resource(&format!("join{k}"), 1.0)
            .wait_for_resources(true);
        let peer = remote_where
            .options(options)
            .remote()
            .get_blocking_timeout(OP_TIMEOUT)
            .context("the task for the new node")?;
        say(&format!("joined {peer}"));
    }
    shoal.status().context("waiting for the node to catch up")?;
    Ok(())
}

/// Tasks (calls) per batch of an `_async` row.
fn batch_size() -> Result<u64> {
    let n: u64 = env(ENV_BATCH)?.parse().context("the batch size")?;
    ensure!(n > 0, "batches of no tasks");
    Ok(n)
}

/// Fails unless `peer` (where something ran) is the remote node.
fn ensure_remote(peer: &str, remote: &str, what: &str) -> Result<()> {
    ensure!(
        peer == remote,
        "{what} ran on {peer:?}, not on the remote node {remote}: the row would not measure \
         remote execution"
    );
    Ok(())
}

/// Gets a no-op task's (or small call's) result and checks it.
fn get_ok(r: &ObjectRef<Vec<u8>>) -> Result<()> {
    let v = r.get_blocking_timeout(OP_TIMEOUT)?;
    ensure!(v == b"ok", "got {v:?}, not b\"ok\"");
    Ok(())
}

/// Submits (calls) `n` times with `submit`, then gets every result in order.
fn submit_and_get_all(n: u64, mut submit: impl FnMut() -> ObjectRef<Vec<u8>>) -> Result<()> {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n).map(|_| submit()).collect();
    for r in &refs {
        get_ok(r)?;
    }
    Ok(())
}

fn set_up_tasks(work: Work, remote: &str) -> Result<(Batch, String)> {
    let start = Instant::now();
    let peer = remote_where
        .remote()
        .get_blocking_timeout(SETUP_TIMEOUT)
        .context("the first remote task (code shipping, a worker's start)")?;
    ensure_remote(&peer, remote, "a task")?;
    let first = start.elapsed();
    get_ok(&noop.remote()).context("the first no-op task")?;
    let ready = format!(
        "a task ran on the remote node {remote} (the first took {:.3} s, code shipping \
         included)",
        first.as_secs_f64()
    );
    let batch: Batch = match work {
        Work::TasksSync => Box::new(|| {
            let t = Instant::now();
            get_ok(&noop.remote())?;
            Ok((1, t.elapsed()))
        }),
        _ => {
            let n = batch_size()?;
            Box::new(move || {
                let t = Instant::now();
                submit_and_get_all(n, || noop.remote())?;
                Ok((n, t.elapsed()))
            })
        }
    };
    Ok((batch, ready))
}

fn set_up_actor(work: Work, remote: &str) -> Result<(Batch, String)> {
    let name = env(ENV_ACTOR)?;
    // The name is registered at the remote node; give the lookup a little while.
    let start = Instant::now();
    let actor = loop {
        match shoal::get_actor::<RemoteTarget>(&name) {
            Ok(actor) => break actor,
            Err(ActorError::NotFound(_)) if start.elapsed() < SETUP_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("looking up the actor {name}")),
        }
    };
    let found = start.elapsed();
    let peer = actor
        .peer()
        .get_blocking_timeout(SETUP_TIMEOUT)
        .context("the first call to the remote actor")?;
    ensure_remote(&peer, remote, "the actor")?;
    get_ok(&actor.small()).context("the first small call")?;
    let ready = format!(
        "actor {name} found by name after {:.3} s, lives on the remote node {remote}",
        found.as_secs_f64()
    );
    let batch: Batch = match work {
        Work::ActorSync | Work::ActorLatency(_) => Box::new(move || {
            let t = Instant::now();
            get_ok(&actor.small())?;
            Ok((1, t.elapsed()))
        }),
        _ => {
            let n = batch_size()?;
            Box::new(move || {
                let t = Instant::now();
                submit_and_get_all(n, || actor.small())?;
                Ok((n, t.elapsed()))
            })
        }
    };
    Ok((batch, ready))
}

/// `tasks.finished` of the node on `socket` (`shoal status --json`).
fn tasks_finished(socket: &Path) -> Result<u64> {
    let status = shoal_tests::status_json(socket)?;
    status["tasks"]["finished"]
        .as_u64()
        .with_context(|| format!("no tasks.finished in `shoal status --json`: {status}"))
}

/// Bytes of the local node's store in use (objects and reservations).
fn store_used(shoal: &shoal::Shoal) -> Result<u64> {
    Ok(shoal
        .status()
        .context("asking the local node for its status")?
        .objects
        .store_used)
}

/// One operation of `object_transfer_gigabytes`, untimed part first: a task on the remote node
/// makes the object, and the remote node is asked (`shoal status --json`) until the task has
/// finished there; then, timed, the driver's get of a view of the object, which has the local
/// node pull it into its store. Returns the view (unchecked) and the time of the get.
///
/// The time is that of the whole pull only if the local node starts pulling when the driver
/// asks (large results stay where they were made until read): if its store already holds (or
/// has reserved) the object's bytes before the get, the operation fails rather than time part
/// of a pull.
fn transfer_once(
    shoal: &shoal::Shoal,
    remote_socket: &Path,
    len: u64,
    nonce: u64,
) -> Result<(shoal::ByteView, Duration)> {
    let before = tasks_finished(remote_socket)?;
    let r = remote_zeros.remote(len, nonce);
    let deadline = Instant::now() + OP_TIMEOUT;
    while tasks_finished(remote_socket)? <= before {
        ensure!(
            Instant::now() < deadline,
            "the task making the object did not finish on the remote node within {OP_TIMEOUT:?}"
        );
        std::thread::sleep(TASK_POLL);
    }
    let used = store_used(shoal)?;
    ensure!(
        used < len,
        "the local node's store uses {used} bytes before the driver asked for the {len}-byte \
         object: the node pulled it unasked, so the time of the get would miss part of the pull"
    );
    let t = Instant::now();
    // A wait with a deadline first (it has the node pull the object too), so that a pull
    // that never ends fails the row; then the view, at once.
    let (ready, _) = shoal::wait_blocking(std::slice::from_ref(&r), 1, Some(OP_TIMEOUT))?;
    ensure!(
        !ready.is_empty(),
        "the object did not arrive within {OP_TIMEOUT:?} of the get"
    );
    let view = r.get_view_blocking().context("getting the object")?;
    let took = t.elapsed();
    ensure!(
        view.len() as u64 == len,
        "the object has {} bytes, not {len}",
        view.len()
    );
    ensure!(view.is_mapped(), "the object is not in the store");
    ensure!(
        view[..8] == nonce.to_le_bytes(),
        "the object does not start with its nonce"
    );
    Ok((view, took))
}

fn set_up_transfer(shoal: &shoal::Shoal, remote: &str) -> Result<(Batch, String)> {
    let remote_socket = PathBuf::from(env(ENV_REMOTE_SOCKET)?);
    let len: u64 = env(ENV_TRANSFER_BYTES)?
        .parse()
        .context("the object's size")?;
    ensure!(len >= 8, "objects of {len} bytes are too small");
    let peer = remote_where
        .remote()
        .get_blocking_timeout(SETUP_TIMEOUT)
        .context("the first remote task (code shipping, a worker's start)")?;
    ensure_remote(&peer, remote, "a task")?;
    // The first transfer, with every byte checked.
    let (view, took) =
        transfer_once(shoal, &remote_socket, len, 0).context("the first transfer")?;
    ensure!(
        view[8..].iter().all(|&b| b == 0),
        "the object's bytes are not the task's"
    );
    drop(view);
    let ready = format!(
        "tasks run on the remote node {remote}; the first {len}-byte object was pulled in \
         {:.3} s and checked byte by byte",
        took.as_secs_f64()
    );
    let mut nonce = 0;
    let shoal = shoal.clone();
    let batch: Batch = Box::new(move || {
        nonce += 1;
        let (_view, took) = transfer_once(&shoal, &remote_socket, len, nonce)?;
        Ok((len, took))
    });
    Ok((batch, ready))
}
