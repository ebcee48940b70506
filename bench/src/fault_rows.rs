//! Rows that measure recovery from faults (issue 12), on real `shoal node` processes on
//! loopback:
//!
//! - `reconstruct_seconds_1gib`: a 1 GiB task result (256 MiB under `--quick`) whose only
//!   copy is lost with its peer, read again: from the driver's get, once the driver's node has
//!   written the peer off, until the driver holds the value. That is the lineage
//!   reconstruction of `node/src/core/reconstruct.rs`: the owner (the driver's node) finds no
//!   holder (its directory lookup included), runs the task again on the surviving peer, and
//!   pulls its result.
//!
//! - `partition_recover_seconds`: a cut during a workload of 1,000 short tasks (200 under
//!   `--quick`): from the cut until every result is in. Three nodes in the network lab
//!   (`shoal_tests::Lab`: network namespaces on a bridge; needs root, `ip` and `nft`): the
//!   driver's with one CPU and two more. Once a quarter of the tasks are done, node 2 is cut
//!   off from the others (nftables); the others write it off after the failure timeout and
//!   run its tasks again. The cut is healed after the operation (untimed), and the lab
//!   converges before the next.
//!
//! For `reconstruct_seconds_1gib`, three nodes: the driver's (`--cpus 0`, so every task runs elsewhere) and two with one CPU
//! each. Each operation (untimed set-up first): the driver submits a task making a fresh
//! object (zeros but for a nonce) and keeps its ref without reading it, so the result stays
//! where it was made; the runner finds that node by its `shoal objects --json`, kills it with
//! SIGKILL and waits until no node lists it; then the driver's get is timed, and its bytes
//! checked (untimed). The killed node is restarted (same identity) and the mesh converges
//! again before the next operation.
//!
//! The driver is this executable again (`shoal-bench __fault_driver`, attached to the
//! driver's node), speaking the line protocol of [`crate::remote_rows`]:
//!
//! ```text
//! runner -> driver: make <nonce>
//! driver -> runner: shoal-bench-driver: made <object id>
//! runner -> driver: get <nonce>
//! driver -> runner: shoal-bench-driver: got <nanoseconds>
//! runner -> driver: tasks <n>
//! driver -> runner: shoal-bench-driver: quarter
//! driver -> runner: shoal-bench-driver: all
//! ```

use std::ffi::{OsStr, OsString};
use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use shoal::{Bytes, ObjectRef};
use shoal_tests::{Mesh, NodeOptions, NodeProcess};

use crate::harness::{Bench, Registry, Unit};
use crate::limits::die_with_parent;
use crate::mesh_rows::{check_shoal_bin, unique_mesh};
use crate::remote_rows::{attach, nodes_dir, say, Program};

/// The object of `reconstruct_seconds_1gib`.
const OBJECT_BYTES: u64 = 1 << 30;
/// The same under `--quick`.
const OBJECT_BYTES_QUICK: u64 = 256 << 20;
/// `--store-bytes` of each node: the object, and a second copy while the first is released.
const STORE_BYTES: u64 = 3 << 30;
/// `--failure-timeout` of the nodes.
const FAILURE_TIMEOUT_SECS: f64 = 3.0;
/// The hidden subcommand of the driver.
const DRIVER_CMD: &str = "__fault_driver";
/// The object's size, for the driver.
const ENV_BYTES: &str = "SHOAL_BENCH_FAULT_BYTES";
/// How long set-up steps (convergence, the first task with its code shipping) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a reconstruction may take.
const OP_TIMEOUT: Duration = Duration::from_secs(120);
/// Tasks of `partition_recover_seconds`.
const PARTITION_TASKS: u64 = 1_000;
/// The same under `--quick`.
const PARTITION_TASKS_QUICK: u64 = 200;
/// How long each of its tasks works, in milliseconds.
const PARTITION_TASK_MS: u64 = 5;

pub fn register(reg: &mut Registry) {
    reg.add(
        "reconstruct_seconds_1gib",
        Unit::Seconds,
        "a 1 GiB task result whose only copy was lost with its peer (SIGKILL, written off by \
         the others), read again: from the get until the driver has the value, made again \
         from lineage on another peer and pulled (3 `shoal node` processes on loopback)",
        reconstruct_seconds_1gib,
    );
    reg.add(
        "partition_recover_seconds",
        Unit::Seconds,
        "1,000 tasks of 5 ms on 3 nodes of the network lab (root, ip, nft), one node cut off \
         from the others once a quarter are done: from the cut until every result is in",
        partition_recover_seconds,
    );
}

/// Works `ms` milliseconds, then says where it ran.
#[shoal::remote]
fn fault_work(ms: u64, i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    i
}

fn partition_recover_seconds(b: &mut Bench) -> Result<()> {
    check_shoal_bin(b)?;
    if let Some(why) = shoal_tests::netlab::unavailable() {
        bail!("needs the network lab: {why}");
    }
    let tasks = if b.is_quick() {
        eprintln!(
            "{}: --quick: {PARTITION_TASKS_QUICK} tasks instead of {PARTITION_TASKS}",
            b.name()
        );
        PARTITION_TASKS_QUICK
    } else {
        PARTITION_TASKS
    };
    let options = NodeOptions::new()
        .mesh(unique_mesh("partition"))
        .failure_timeout(FAILURE_TIMEOUT_SECS)
        .cpus(1.0);
    let mut lab = shoal_tests::Lab::start(3, &options).context("starting the lab")?;
    lab.mesh()
        .wait_converged(SETUP_TIMEOUT)
        .context("the lab's nodes finding each other")?;
    let mut driver = Program::start(
        "driver",
        DRIVER_CMD,
        OsStr::new(""),
        &lab.node(0).socket(),
        &[(ENV_BYTES, OsString::from("0"))],
    )?;
    driver.expect("ready", SETUP_TIMEOUT)?;
    eprintln!(
        "{}: 3 nodes in network namespaces (1 CPU each, --failure-timeout \
         {FAILURE_TIMEOUT_SECS}); each operation: {tasks} tasks of {PARTITION_TASK_MS} ms from \
         a driver on node 0, node 2 cut off once a quarter are done, timed until all are in",
        b.name()
    );
    b.run_timed(|| {
        driver.send(&format!("tasks {tasks}"))?;
        driver.expect("quarter", SETUP_TIMEOUT)?;
        let start = Instant::now();
        lab.isolate(2)?;
        driver.expect("all", OP_TIMEOUT)?;
        let took = start.elapsed();
        lab.rejoin(2)?;
        lab.mesh()
            .wait_converged(SETUP_TIMEOUT)
            .context("the lab converging after the heal")?;
        Ok(took)
    })?;
    driver.finish()
}

/// `len` zero bytes but for `nonce` in the first eight.
#[shoal::remote]
fn fault_zeros(len: u64, nonce: u64) -> Bytes {
    let mut v = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    v[..8].copy_from_slice(&nonce.to_le_bytes());
    Bytes(v)
}

fn reconstruct_seconds_1gib(b: &mut Bench) -> Result<()> {
    check_shoal_bin(b)?;
    let bytes = if b.is_quick() {
        eprintln!(
            "{}: --quick: objects of {OBJECT_BYTES_QUICK} bytes instead of {OBJECT_BYTES}",
            b.name()
        );
        OBJECT_BYTES_QUICK
    } else {
        OBJECT_BYTES
    };
    let dir = nodes_dir()?;
    let mut options = NodeOptions::new()
        .mesh(unique_mesh("reconstruct"))
        .failure_timeout(FAILURE_TIMEOUT_SECS);
    options.store_bytes = STORE_BYTES;
    let local = NodeProcess::start(options.clone().cpus(0.0).dir(dir.join("local")))
        .context("starting the driver's node")?;
    let mut nodes = vec![local];
    for i in 1..3 {
        let o = options
            .clone()
            .cpus(1.0)
            .dir(dir.join(format!("holder-{i}")))
            .peer(nodes[0].listen_addr());
        nodes.push(NodeProcess::start(o).with_context(|| format!("starting node {i}"))?);
    }
    let mut mesh = Mesh::from_nodes(nodes);
    mesh.wait_converged(SETUP_TIMEOUT)
        .context("the three nodes finding each other")?;
    let envs = [(ENV_BYTES, OsString::from(bytes.to_string()))];
    let mut driver = Program::start(
        "driver",
        DRIVER_CMD,
        OsStr::new(""),
        &mesh.node(0).socket(),
        &envs,
    )?;
    driver.expect("ready", SETUP_TIMEOUT)?;
    eprintln!(
        "{}: 3 nodes converged (the driver's with --cpus 0, two with 1 CPU; \
         --failure-timeout {FAILURE_TIMEOUT_SECS}); each operation kills the node holding a \
         fresh {bytes}-byte result and times the driver's get of it",
        b.name()
    );
    let mut nonce = 0u64;
    b.run_timed(|| {
        nonce += 1;
        driver.send(&format!("make {nonce}"))?;
        let id = driver.expect("made", SETUP_TIMEOUT)?;
        let (holder, _) = shoal_tests::wait_for(SETUP_TIMEOUT, "the result to be made", || {
            Ok((1..3).find(|&i| holds(mesh.node(i), &id)))
        })?;
        let peer = mesh.node(holder).peer_id().to_owned();
        mesh.node_mut(holder).kill_9()?;
        mesh.wait_gone(&peer, SETUP_TIMEOUT)
            .with_context(|| format!("node {holder} ({peer}) was not written off"))?;
        driver.send(&format!("get {nonce}"))?;
        let nanos: u64 = driver
            .expect("got", OP_TIMEOUT + SETUP_TIMEOUT)?
            .parse()
            .context("the driver's time")?;
        mesh.node_mut(holder)
            .restart()
            .with_context(|| format!("restarting node {holder}"))?;
        mesh.wait_converged(SETUP_TIMEOUT)
            .with_context(|| format!("node {holder} rejoining"))?;
        Ok(Duration::from_nanos(nanos))
    })?;
    driver.finish()
}

/// Whether `node` lists object `id` (hex) in its store.
fn holds(node: &NodeProcess, id: &str) -> bool {
    let socket = node.socket();
    let Ok(out) = node.run_cli([
        OsStr::new("objects"),
        OsStr::new("--json"),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ]) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|o| o["id"].as_str() == Some(id)))
    })
}

/// Runs the hidden driver subcommand if `args` names it; `None` otherwise.
pub fn run_hidden(args: &[OsString]) -> Option<Result<()>> {
    if args.first()?.to_str()? != DRIVER_CMD {
        return None;
    }
    let result = die_with_parent().and_then(|()| driver_main());
    if let Err(e) = &result {
        say(&format!("error {}", format!("{e:#}").replace('\n', " / ")));
    }
    Some(result)
}

/// `__fault_driver`: makes objects and reads them back when told (see the module docs).
fn driver_main() -> Result<()> {
    let len: u64 = std::env::var(ENV_BYTES)
        .context("the object's size")?
        .parse()
        .context("the object's size")?;
    let _shoal = attach()?;
    say("ready");
    let mut made: Option<(u64, ObjectRef<Bytes>)> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let (word, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let nonce: u64 = arg.parse().with_context(|| format!("{line:?}"))?;
        match word {
            "make" => {
                let r = fault_zeros.remote(len, nonce);
                say(&format!("made {}", r.id().to_hex()));
                made = Some((nonce, r));
            }
            "get" => {
                let Some((n, r)) = made.take() else {
                    bail!("get before make");
                };
                ensure!(n == nonce, "asked for {nonce}, made {n}");
                let start = Instant::now();
                let (ready, _) =
                    shoal::wait_blocking(std::slice::from_ref(&r), 1, Some(OP_TIMEOUT))?;
                ensure!(!ready.is_empty(), "not back within {OP_TIMEOUT:?}");
                let view = r.get_view_blocking().context("reading it back")?;
                let took = start.elapsed();
                ensure!(view.len() as u64 == len, "{} bytes, not {len}", view.len());
                ensure!(view[..8] == nonce.to_le_bytes(), "not its nonce");
                ensure!(view[8..].iter().all(|&b| b == 0), "not its bytes");
                say(&format!("got {}", took.as_nanos()));
            }
            "tasks" => {
                // `nonce` is the number of tasks here.
                let refs: Vec<ObjectRef<u64>> = (0..nonce)
                    .map(|i| fault_work.remote(PARTITION_TASK_MS, i))
                    .collect();
                let mut pending = refs.clone();
                let mut said = false;
                while !pending.is_empty() {
                    let (ready, rest) = shoal::wait_blocking(&pending, 1, Some(OP_TIMEOUT))?;
                    ensure!(!ready.is_empty(), "no task ended within {OP_TIMEOUT:?}");
                    pending = rest;
                    if !said && (pending.len() as u64) * 4 <= nonce * 3 {
                        say("quarter");
                        said = true;
                    }
                }
                for (i, r) in refs.iter().enumerate() {
                    let v = r
                        .get_blocking_timeout(OP_TIMEOUT)
                        .context("a task's result")?;
                    ensure!(v == i as u64, "task {i} returned {v}");
                }
                say("all");
            }
            _ => bail!("not a request: {line:?}"),
        }
    }
    Ok(())
}
