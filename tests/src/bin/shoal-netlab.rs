//! `shoal-netlab`: a network lab on one machine, behind `scripts/netlab` (needs root).
//!
//! ```text
//! shoal-netlab up N [--mesh NAME] [--cpus N] [--failure-timeout SECS] [-- NODE ARGS...]
//! shoal-netlab status [--json]
//! shoal-netlab cut A B [--one-way]      shoal-netlab heal A B [--one-way]
//! shoal-netlab isolate A                shoal-netlab rejoin A
//! shoal-netlab partition A [B ...]      shoal-netlab heal-all
//! shoal-netlab kill A                   shoal-netlab restart A
//! shoal-netlab freeze A                 shoal-netlab thaw A
//! shoal-netlab exec A -- COMMAND...
//! shoal-netlab down
//! ```
//!
//! `up` makes the lab of [`shoal_tests::netlab`] (namespaces `shoal-netlab-<uid>-…`, node `i`
//! at `10.77.0.<i+1>`), starts a node in each, bootstrapped from node 0, waits until every
//! node sees every other, records everything in `$TMPDIR/shoal-netlab-$UID/state.json`, and
//! prints how to attach a program to each node and where it serves its Prometheus metrics
//! (every address of its namespace, port 9464, unless the node arguments give `--metrics`).
//! The nodes outlive this command; `down` stops
//! exactly the recorded pids (each only while `/proc` still shows that `shoal node`), then
//! removes the namespaces and directories it made.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use shoal_tests::netlab::{unavailable, Direction, Lab, Network};
use shoal_tests::{
    pid_alive, shoal_bin, signal_node, stop_nodes, view, wait_for, DetachedNode, NodeOptions,
    NodeProcess, StateFile,
};

/// `$TMPDIR/shoal-netlab-$UID`: the state file and the node directories.
const STATE: StateFile = StateFile::new("shoal-netlab");

#[derive(Parser, Debug)]
#[command(
    name = "shoal-netlab",
    about = "A network lab: shoal nodes in network namespaces, with links to cut and heal"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start N nodes, each in a network namespace of its own, joined by a bridge.
    Up {
        /// How many nodes.
        n: usize,
        /// The mesh name.
        #[arg(long, default_value = "netlab")]
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
    /// Show the nodes, the cuts and the isolated nodes.
    Status {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Cut the traffic between nodes A and B (both ways, or A to B only).
    Cut {
        a: usize,
        b: usize,
        #[arg(long)]
        one_way: bool,
    },
    /// Restore the traffic between A and B (both ways, or A to B only).
    Heal {
        a: usize,
        b: usize,
        #[arg(long)]
        one_way: bool,
    },
    /// Cut node A from every other node.
    Isolate { a: usize },
    /// End the isolation of node A.
    Rejoin { a: usize },
    /// Cut the given nodes from all the others, both ways.
    Partition {
        #[arg(required = true)]
        side: Vec<usize>,
    },
    /// End every cut and isolation.
    HealAll,
    /// Kill node A with SIGKILL.
    Kill { a: usize },
    /// Start node A again: same directory (so same identity) and address.
    Restart { a: usize },
    /// Stop node A with SIGSTOP (alive but silent).
    Freeze { a: usize },
    /// Let a frozen node A run on (SIGCONT).
    Thaw { a: usize },
    /// Run a command in node A's network namespace.
    Exec {
        a: usize,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop the nodes, remove the namespaces and the directories.
    Down,
}

/// What every node of a lab is started with.
#[derive(Serialize, Deserialize, Debug)]
struct Settings {
    mesh: String,
    /// The join token of the lab's mesh (its authority is gone once the token is made).
    token: String,
    cpus: f64,
    failure_timeout: Option<f64>,
    node_args: Vec<String>,
}

/// What `up` records.
#[derive(Serialize, Deserialize, Debug)]
struct State {
    settings: Settings,
    network: Network,
    nodes: Vec<DetachedNode>,
    frozen: BTreeSet<usize>,
}

fn state() -> Result<State> {
    STATE
        .read::<State>()?
        .context("no lab is up (start one with `scripts/netlab up N`)")
}

fn main() -> std::process::ExitCode {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("shoal-netlab: {e:#}");
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
        Cmd::Exec { a, command } => {
            let state = state()?;
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..]);
            let _netns = state.network.exec_in(a, &mut cmd)?;
            // Only returns on an error.
            Err(cmd.exec()).with_context(|| format!("running {command:?}"))
        }
        cmd => change(cmd),
    }
}

/// A command that changes the lab: applied, then recorded.
fn change(cmd: Cmd) -> Result<()> {
    let mut state = state()?;
    let one_way = |o: bool| {
        if o {
            Direction::OneWay
        } else {
            Direction::Both
        }
    };
    let result = match cmd {
        Cmd::Cut { a, b, one_way: o } => state.network.cut(a, b, one_way(o)),
        Cmd::Heal { a, b, one_way: o } => state.network.heal(a, b, one_way(o)),
        Cmd::Isolate { a } => state.network.isolate(a),
        Cmd::Rejoin { a } => state.network.rejoin(a),
        Cmd::Partition { side } => state.network.partition(&side),
        Cmd::HealAll => state.network.heal_all(),
        Cmd::Kill { a } => kill(&mut state, a),
        Cmd::Restart { a } => restart(&mut state, a),
        Cmd::Freeze { a } => signal(&mut state, a, libc::SIGSTOP),
        Cmd::Thaw { a } => signal(&mut state, a, libc::SIGCONT),
        Cmd::Up { .. } | Cmd::Status { .. } | Cmd::Down | Cmd::Exec { .. } => {
            unreachable!("handled by run")
        }
    };
    // Recorded even after an error: part of a change may have been made.
    STATE.write(&state)?;
    result?;
    println!(
        "cuts {:?}, isolated {:?}, frozen {:?}",
        state.network.cuts(),
        state.network.isolated(),
        state.frozen
    );
    Ok(())
}

fn kill(state: &mut State, a: usize) -> Result<()> {
    state.network.check(a)?;
    let node = &state.nodes[a];
    if !signal_node(node.pid, &node.socket, libc::SIGKILL)? {
        bail!("node {a} (pid {}) is not running", node.pid);
    }
    state.frozen.remove(&a);
    let pid = node.pid;
    wait_for(Duration::from_secs(10), "the killed node to exit", || {
        Ok((!pid_alive(pid)).then_some(()))
    })?;
    println!("node {a} (pid {pid}) killed");
    Ok(())
}

fn restart(state: &mut State, a: usize) -> Result<()> {
    state.network.check(a)?;
    let node = &state.nodes[a];
    if node.is_alive() {
        kill(state, a)?;
    }
    let node = &state.nodes[a];
    let mut options = node_options(&state.settings);
    options.dir = Some(node.dir.clone());
    options.reuse_dir = true;
    options = options
        .listen_on(state.network.listen_addr(a))
        .netns(state.network.namespace_path(a));
    if a != 0 {
        if let Some(bootstrap) = state.nodes[0].addrs.first() {
            options = options.peer(bootstrap.clone());
        }
    }
    let started = NodeProcess::start(options)?;
    state.nodes[a] = started.detach();
    state.frozen.remove(&a);
    println!("node {a} restarted: pid {}", state.nodes[a].pid);
    Ok(())
}

fn signal(state: &mut State, a: usize, signal: libc::c_int) -> Result<()> {
    state.network.check(a)?;
    let node = &state.nodes[a];
    if !signal_node(node.pid, &node.socket, signal)? {
        bail!("node {a} (pid {}) is not running", node.pid);
    }
    if signal == libc::SIGSTOP {
        state.frozen.insert(a);
    } else {
        state.frozen.remove(&a);
    }
    Ok(())
}

/// The options every node of the recorded lab starts with.
fn node_options(settings: &Settings) -> NodeOptions {
    let mut options = NodeOptions::new()
        .join(settings.mesh.clone(), settings.token.clone())
        .cpus(settings.cpus);
    options.failure_timeout = settings.failure_timeout;
    options.extra_args = settings.node_args.iter().map(Into::into).collect();
    if !settings
        .node_args
        .iter()
        .any(|a| a.starts_with("--metrics"))
    {
        // Every address of the node's namespace: its lab address, for whatever scrapes from
        // another namespace, and its loopback, for `scripts/netlab exec`.
        options.extra_args.push("--metrics".into());
        options
            .extra_args
            .push(format!("0.0.0.0:{METRICS_PORT}").into());
    }
    options.new_session = true;
    options
}

/// The port every lab node serves its metrics on (each has an address of its own).
const METRICS_PORT: u16 = 9464;

/// Removes what a recorded lab left: its namespaces and directories (its nodes are stopped
/// first by the caller).
fn remove_lab(state: State) -> Result<()> {
    let mut network = state.network.adopt();
    network.remove()?;
    for node in &state.nodes {
        STATE.remove_node_dir(&node.dir)?;
    }
    std::fs::remove_file(STATE.path())
        .with_context(|| format!("removing {}", STATE.path().display()))
}

fn up(
    n: usize,
    mesh: String,
    cpus: f64,
    failure_timeout: Option<f64>,
    timeout: f64,
    node_args: Vec<String>,
) -> Result<()> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    let dir = STATE.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(state) = STATE.read::<State>()? {
        let alive = state.nodes.iter().filter(|n| n.is_alive()).count();
        if alive > 0 {
            bail!(
                "a lab is already up: {alive} of its {} nodes run (state in {}). Stop it \
                 first with `scripts/netlab down`.",
                state.nodes.len(),
                STATE.path().display()
            );
        }
        eprintln!(
            "the lab recorded in {} is gone; cleaning up",
            STATE.path().display()
        );
        remove_lab(state)?;
    }
    let timeout = Duration::from_secs_f64(timeout);
    let begin = Instant::now();
    let token = shoal_tests::authority::token(&mesh)?;
    let settings = Settings {
        mesh,
        token,
        cpus,
        failure_timeout,
        node_args,
    };
    let mut options = node_options(&settings);
    options.startup_timeout = timeout;
    eprintln!(
        "starting {n} nodes of mesh {:?} in network namespaces, directories in {}",
        settings.mesh,
        dir.display()
    );
    // On any error the lab's guards kill the nodes it started and remove the namespaces.
    let lab = Lab::start_named(&STATE.name(), n, &options, Some(&dir))?;
    lab.mesh()
        .wait_converged(timeout.saturating_sub(begin.elapsed()))?;
    let took = begin.elapsed();
    let (network, nodes) = lab.detach();
    let state = State {
        settings,
        network,
        nodes,
        frozen: BTreeSet::new(),
    };
    STATE.write(&state)?;

    println!(
        "lab of {n} node{}, all seeing each other, in {:.2} s",
        if n == 1 { "" } else { "s" },
        took.as_secs_f64()
    );
    println!();
    for (i, node) in state.nodes.iter().enumerate() {
        println!(
            "node {i}  {}  pid {}  peer {}",
            state.network.addr(i),
            node.pid,
            node.peer_id
        );
        println!("  SHOAL_SOCKET={}", node.socket.display());
        println!("  namespace {}", state.network.namespace(i));
        if let Ok(status) = shoal_tests::status_json(&node.socket) {
            if let Some(m) = status["metrics"].as_str() {
                let port = m.rsplit(':').next().unwrap_or_default();
                println!(
                    "  metrics   http://{}:{port}/metrics (in the lab: scripts/netlab exec {i} -- curl -s http://127.0.0.1:{port}/metrics)",
                    state.network.addr(i)
                );
            }
        }
        println!("  log       {}", node.log.display());
    }
    println!();
    println!("Attach a program to a node with its socket (from any namespace), e.g.");
    println!(
        "  SHOAL_SOCKET={} cargo run --release --example hello",
        state.nodes[0].socket.display()
    );
    println!(
        "  {} status --socket {}",
        shoal_bin()?.display(),
        state.nodes[0].socket.display()
    );
    println!("Run a command inside node 1's network: scripts/netlab exec 1 -- ip addr");
    println!("Faults: scripts/netlab cut 0 1 | heal 0 1 | isolate 2 | kill 1 | restart 1 | …");
    println!(
        "State: {}. Stop with: scripts/netlab down",
        STATE.path().display()
    );
    Ok(())
}

fn status(json: bool) -> Result<()> {
    let Some(state) = STATE.read::<State>()? else {
        if json {
            println!("null");
        } else {
            println!("no lab is up (no {})", STATE.path().display());
        }
        return Ok(());
    };
    let mut rows = Vec::new();
    for (i, node) in state.nodes.iter().enumerate() {
        let alive = node.is_alive();
        let frozen = state.frozen.contains(&i);
        // A frozen node answers nothing: not asked.
        let seen = if alive && !frozen {
            node.status().ok().map(|s| view(&s).len())
        } else {
            None
        };
        rows.push(serde_json::json!({
            "index": i,
            "addr": state.network.addr(i).to_string(),
            "namespace": state.network.namespace(i),
            "pid": node.pid,
            "alive": alive,
            "frozen": frozen,
            "isolated": state.network.isolated().contains(&i),
            "socket": node.socket,
            "log": node.log,
            "peer_id": node.peer_id,
            "peers": seen,
        }));
    }
    if json {
        let out = serde_json::json!({
            "mesh": state.settings.mesh,
            "nodes": rows,
            "cuts": state.network.cuts().iter().collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "lab of mesh {:?}, state in {}",
        state.settings.mesh,
        STATE.path().display()
    );
    println!(
        "{:<5} {:<12} {:>8} {:<8} {:>5}  {:<52}",
        "node", "addr", "pid", "state", "peers", "peer id"
    );
    for (i, (node, row)) in state.nodes.iter().zip(&rows).enumerate() {
        let peers = row["peers"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let what = if row["alive"] != true {
            "dead"
        } else if row["frozen"] == true {
            "frozen"
        } else if row["isolated"] == true {
            "isolated"
        } else {
            "up"
        };
        println!(
            "{i:<5} {:<12} {:>8} {what:<8} {peers:>5}  {:<52}",
            state.network.addr(i).to_string(),
            node.pid,
            node.peer_id,
        );
    }
    if !state.network.cuts().is_empty() {
        let cuts: Vec<String> = state
            .network
            .cuts()
            .iter()
            .map(|(a, b)| format!("{a}->{b}"))
            .collect();
        println!("cut: {}", cuts.join(" "));
    }
    Ok(())
}

fn down() -> Result<()> {
    let Some(state) = STATE.read::<State>()? else {
        println!("no lab is up (no {})", STATE.path().display());
        return Ok(());
    };
    // A frozen node cannot act on SIGTERM until it runs again.
    for &i in &state.frozen {
        let node = &state.nodes[i];
        if let Err(e) = signal_node(node.pid, &node.socket, libc::SIGCONT) {
            eprintln!("thawing node {i}: {e:#}");
        }
    }
    let list: Vec<(u32, &Path)> = state
        .nodes
        .iter()
        .map(|n| (n.pid, n.socket.as_path()))
        .collect();
    let outcome = stop_nodes(&list, Duration::from_secs(5))?;
    for (i, how) in outcome.iter().enumerate() {
        println!("node {i} (pid {}): {how:?}", state.nodes[i].pid);
    }
    remove_lab(state)?;
    if let Err(e) = std::fs::remove_dir(STATE.dir()) {
        if e.kind() != std::io::ErrorKind::DirectoryNotEmpty {
            eprintln!("cannot remove {}: {e}", STATE.dir().display());
        }
    }
    println!("the lab is down");
    Ok(())
}
