//! `shoal-mesh`: a mesh of local `shoal node` processes for trying things out, behind
//! `scripts/mesh`.
//!
//! ```text
//! shoal-mesh up N [--mesh NAME] [--cpus N] [--failure-timeout SECS] [-- NODE ARGS...]
//! shoal-mesh status [--json]
//! shoal-mesh down
//! ```
//!
//! `up` starts N nodes on loopback (ephemeral ports, mDNS off), each with its own directory
//! (socket, store, spill directory, data directory with its identity key, log) under
//! `$TMPDIR/shoal-mesh-$UID/`, all bootstrapped from the first; waits until every node sees
//! every other; records them in `$TMPDIR/shoal-mesh-$UID/state.json`; and prints the
//! `SHOAL_SOCKET=…` that points a program at each, and where each serves its Prometheus
//! metrics (`--metrics 127.0.0.1:0` unless the node arguments say otherwise). The nodes run in sessions of their own and
//! outlive this command. `status` reports on the recorded nodes; `down` stops exactly the
//! recorded pids (SIGTERM, then SIGKILL after 5 s), each only while `/proc/<pid>/cmdline`
//! still shows that `shoal node`, and removes their directories and the state file.
//!
//! The nodes are started by the same [`shoal_tests::NodeProcess`] the tests use; `shoal` is
//! looked up next to this executable (or taken from `$SHOAL_BIN`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use shoal_tests::{
    is_shoal_node, pid_alive, shoal_bin, stop_nodes, view, DetachedNode, Mesh, NodeOptions,
    StateFile,
};

/// `$TMPDIR/shoal-mesh-$UID`: the state file and the node directories.
const STATE: StateFile = StateFile::new("shoal-mesh");

#[derive(Parser, Debug)]
#[command(
    name = "shoal-mesh",
    about = "Start, inspect and stop a mesh of local shoal node processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start N nodes on loopback, bootstrapped from the first, and wait until they see each
    /// other.
    Up {
        /// How many nodes.
        n: usize,
        /// The mesh name.
        #[arg(long, default_value = "default")]
        mesh: String,
        /// CPU slots of each node.
        #[arg(long, default_value_t = 1.0)]
        cpus: f64,
        /// Seconds after which a silent peer leaves the view [default: the node's].
        #[arg(long)]
        failure_timeout: Option<f64>,
        /// Seconds to wait for the nodes to start and find each other.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// More arguments for every `shoal node`, after `--`.
        #[arg(last = true)]
        node_args: Vec<String>,
    },
    /// Show the nodes: pid, whether alive, socket, peer id, addresses, peers seen.
    Status {
        /// A JSON list with one object per node (`pid`, `alive`, `socket`, `peer_id`, `addrs`,
        /// `peers`, …).
        #[arg(long)]
        json: bool,
    },
    /// Stop the nodes `up` started (by pid) and remove their directories.
    Down,
}

/// What `up` records, in `state.json`.
#[derive(Serialize, Deserialize, Debug)]
struct State {
    /// The mesh name.
    mesh: String,
    /// The nodes, node 0 first.
    nodes: Vec<DetachedNode>,
}

/// Stops the nodes serving sockets in `node-*` directories of the state directory, and removes
/// those directories: called when no state file records them, they are what an `up` that
/// was interrupted before it wrote the state file leaves behind. A
/// node is stopped only if it answers on that socket and `/proc` shows the `shoal node` of
/// that socket under the pid it answers with.
fn sweep_unrecorded() -> Result<()> {
    let dir = STATE.dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let path = path.canonicalize().unwrap_or(path);
        let is_node_dir = path
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("node-"));
        if !is_node_dir {
            continue;
        }
        let socket = path.join("node.sock");
        if let Ok(status) = shoal_tests::status_json(&socket) {
            if let Some(pid) = status["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                eprintln!("stopping node {pid}, not recorded in the state file");
                stop_nodes(&[(pid, &socket)], Duration::from_secs(5))?;
            }
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            bail!(
                "a node not recorded in {} still serves {}: stop it first",
                STATE.path().display(),
                socket.display()
            );
        }
        STATE.remove_node_dir(&path)?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // The error alone (with its causes), no backtrace: this is a tool, not a test.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("shoal-mesh: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Up {
            n,
            mesh,
            cpus,
            failure_timeout,
            timeout,
            node_args,
        } => up(n, mesh, cpus, failure_timeout, timeout, node_args),
        Cmd::Status { json } => status(json),
        Cmd::Down => down(),
    }
}

fn up(
    n: usize,
    mesh: String,
    cpus: f64,
    failure_timeout: Option<f64>,
    timeout: f64,
    node_args: Vec<String>,
) -> Result<()> {
    if n == 0 {
        bail!("a mesh needs at least one node");
    }
    let dir = STATE.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(state) = STATE.read::<State>()? {
        let alive = state.nodes.iter().filter(|n| n.is_alive()).count();
        if alive > 0 {
            bail!(
                "a mesh is already up: {alive} of its {} nodes run (state in {}). \
                 Stop it first with `scripts/mesh down`.",
                state.nodes.len(),
                STATE.path().display()
            );
        }
        eprintln!(
            "the mesh recorded in {} is gone; cleaning up",
            STATE.path().display()
        );
        for node in &state.nodes {
            STATE.remove_node_dir(&node.dir)?;
        }
        std::fs::remove_file(STATE.path())?;
    }
    sweep_unrecorded()?;

    let timeout = Duration::from_secs_f64(timeout);
    let begin = Instant::now();
    let mut options = NodeOptions::new().mesh(mesh.clone()).cpus(cpus);
    options.failure_timeout = failure_timeout;
    let metrics = !node_args.iter().any(|a| a.starts_with("--metrics"));
    options.extra_args = node_args.into_iter().map(Into::into).collect();
    if metrics {
        // A free port each; `up` and `status` print which.
        options.extra_args.push("--metrics".into());
        options.extra_args.push("127.0.0.1:0".into());
    }
    options.new_session = true;
    options.startup_timeout = timeout;
    eprintln!("starting {n} nodes of mesh {mesh:?} in {}", dir.display());
    // On any error the `Mesh` guard kills the nodes it started and removes their directories.
    let started = Mesh::start_with(n, &options, Some(&dir))?;
    // Recorded at once, so that `down` finds them even if this is interrupted.
    let mut state = State {
        mesh: mesh.clone(),
        nodes: started.nodes().iter().map(|n| n.describe()).collect(),
    };
    STATE.write(&state)?;
    if let Err(e) = started.wait_converged(timeout.saturating_sub(begin.elapsed())) {
        if let Err(rm) = std::fs::remove_file(STATE.path()) {
            eprintln!("cannot remove {}: {rm}", STATE.path().display());
        }
        return Err(e);
    }
    let took = begin.elapsed();
    state.nodes = started.detach();

    println!(
        "mesh {mesh:?}: {n} node{} up, all seeing each other, in {:.2} s",
        if n == 1 { "" } else { "s" },
        took.as_secs_f64()
    );
    println!();
    for (i, node) in state.nodes.iter().enumerate() {
        println!("node {i}  pid {}  peer {}", node.pid, node.peer_id);
        println!("  SHOAL_SOCKET={}", node.socket.display());
        for addr in &node.addrs {
            println!("  listen {addr}");
        }
        if let Ok(status) = shoal_tests::status_json(&node.socket) {
            if let Some(m) = status["metrics"].as_str() {
                println!("  metrics http://{m}/metrics");
            }
        }
        println!("  log    {}", node.log.display());
    }
    println!();
    println!("Point a program at a node with its socket, e.g.");
    println!(
        "  SHOAL_SOCKET={} cargo run --example <name>",
        state.nodes[0].socket.display()
    );
    println!(
        "  {} status --socket {}",
        shoal_bin()?.display(),
        state.nodes[0].socket.display()
    );
    if let Some(addr) = state.nodes[0].addrs.first() {
        // The mesh is a real one, with an authority made for it (gone once the token is
        // made: this is a mesh for trying things out).
        let token = shoal_tests::authority::token(&mesh)?;
        println!("Another node joins with: shoal node --no-mdns --join {token} --peer {addr}");
    }
    println!(
        "State: {}. Stop with: scripts/mesh down",
        STATE.path().display()
    );
    Ok(())
}

fn status(json: bool) -> Result<()> {
    let Some(state) = STATE.read::<State>()? else {
        if json {
            println!("[]");
        } else {
            println!("no mesh is up (no {})", STATE.path().display());
        }
        return Ok(());
    };
    let mut rows = Vec::new();
    for (i, node) in state.nodes.iter().enumerate() {
        let alive = node.is_alive();
        let seen = if alive {
            node.status().ok().map(|s| view(&s).len())
        } else {
            None
        };
        rows.push(serde_json::json!({
            "index": i,
            "pid": node.pid,
            "alive": alive,
            "socket": node.socket,
            "dir": node.dir,
            "log": node.log,
            "mesh": node.mesh,
            "peer_id": node.peer_id,
            "addrs": node.addrs,
            "peers": seen,
        }));
    }
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!("mesh {:?}, state in {}", state.mesh, STATE.path().display());
    println!(
        "{:<5} {:>8} {:<6} {:>5}  {:<52} socket",
        "node", "pid", "alive", "peers", "peer id"
    );
    for (i, (node, row)) in state.nodes.iter().zip(&rows).enumerate() {
        let peers = row["peers"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "{i:<5} {:>8} {:<6} {peers:>5}  {:<52} {}",
            node.pid,
            if row["alive"] == true { "yes" } else { "no" },
            node.peer_id,
            node.socket.display()
        );
        for addr in &node.addrs {
            println!("{:29}{addr}", "");
        }
    }
    Ok(())
}

fn down() -> Result<()> {
    let Some(state) = STATE.read::<State>()? else {
        sweep_unrecorded()?;
        println!("no mesh is up (no {})", STATE.path().display());
        return Ok(());
    };
    let grace = Duration::from_secs(5);
    let recycled: Vec<bool> = state
        .nodes
        .iter()
        .map(|n| pid_alive(n.pid) && !is_shoal_node(n.pid, &n.socket))
        .collect();
    let list: Vec<(u32, &Path)> = state
        .nodes
        .iter()
        .map(|n| (n.pid, n.socket.as_path()))
        .collect();
    // On an error (say, no permission to signal) the state file stays, to try again.
    let outcome = stop_nodes(&list, grace)?;
    for (i, (node, how)) in state.nodes.iter().zip(outcome).enumerate() {
        let what = match how {
            shoal_tests::Stopped::Terminated => "stopped".to_owned(),
            shoal_tests::Stopped::Killed => {
                format!("killed: still running {grace:?} after SIGTERM")
            }
            shoal_tests::Stopped::NotRunning if recycled[i] => {
                "was not running (its pid is another program's now, left alone)".to_owned()
            }
            shoal_tests::Stopped::NotRunning => "was not running".to_owned(),
        };
        println!("node {i} (pid {}): {what}", node.pid);
    }
    let mut errors = Vec::new();
    for node in &state.nodes {
        if let Err(e) = STATE.remove_node_dir(&node.dir) {
            errors.push(format!("{e:#}"));
        }
    }
    std::fs::remove_file(STATE.path())
        .with_context(|| format!("removing {}", STATE.path().display()))?;
    sweep_unrecorded()?;
    // Removes the state directory only if nothing else is in it (another mesh's state, say:
    // then it stays, as it should).
    if let Err(e) = std::fs::remove_dir(STATE.dir()) {
        if e.kind() != std::io::ErrorKind::DirectoryNotEmpty {
            eprintln!("cannot remove {}: {e}", STATE.dir().display());
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    println!("mesh {:?} is down", state.mesh);
    Ok(())
}
