//! `shoal`: run a node, or ask one how it is.
//!
//! ```text
//! shoal node [--socket PATH] [--cpus N] [--resource NAME=N]... [--store-bytes N]
//!            [--worker-user USER] [--allow-root-workers] [--worker-memory BYTES]
//!            [--no-worker-cgroups] [--memory-threshold SHARE]
//! shoal status [--json] [--socket PATH]
//! shoal objects [--json] [--socket PATH]
//! shoal peers [--json] [--socket PATH]
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shoal_node::config::{default_socket_path, NodeConfig};
use shoal_protocol::{
    frame, ClientId, Hello, NodeStatus, ObjectInfo, ResourceSet, Role, ToClient, ToNode, MAGIC,
    PROTOCOL_VERSION,
};

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a peer-to-peer compute mesh for Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (the daemon) in the foreground.
    Node(Box<NodeArgs>),
    /// Show a node's id, resources, workers, tasks, objects and actors.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The node's socket [default: $SHOAL_SOCKET or the per-user default].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// List the other peers of the mesh as this node sees them.
    Peers {
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
        /// The node's socket [default: $SHOAL_SOCKET or the per-user default].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// List the node's objects (as `ray memory`): size, owner, what keeps each alive, and
    /// where it is (inline, memory, disk).
    Objects {
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
        /// The node's socket [default: $SHOAL_SOCKET or the per-user default].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Local API socket [default: $SHOAL_SOCKET, else $XDG_RUNTIME_DIR/shoal/node.sock, else
    /// /tmp/shoal-$UID/node.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// CPU slots [default: the number of cores].
    #[arg(long)]
    cpus: Option<f64>,
    /// A custom resource, NAME=AMOUNT (repeatable).
    #[arg(long = "resource", value_parser = parse_resource)]
    resources: Vec<(String, f64)>,
    /// Object store capacity in bytes [default: 30% of memory, at most the free space of the
    /// store directory].
    #[arg(long, env = "SHOAL_STORE_BYTES")]
    store_bytes: Option<u64>,
    /// Where the store directory is made [default: /dev/shm].
    #[arg(long, env = "SHOAL_STORE_DIR")]
    store_dir: Option<PathBuf>,
    /// Where objects are spilled when the store is full: a directory on disk [default:
    /// shoal-spill-<uid> in the temporary directory].
    #[arg(long, env = "SHOAL_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
    /// A mesh address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/0].
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// A peer to bootstrap from (repeatable), e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3Koo...
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<String>,
    /// The mesh's name: peers of other meshes are never admitted.
    #[arg(long, env = "SHOAL_MESH", default_value = "default")]
    mesh: String,
    /// Where the node keeps its identity key [default: $XDG_DATA_HOME/shoal or
    /// ~/.local/share/shoal].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Find peers on the LAN with mDNS (the default).
    #[arg(long, overrides_with = "no_mdns")]
    mdns: bool,
    /// Do not use mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Seconds after which a silent peer leaves this node's view.
    #[arg(long, default_value_t = 3.0)]
    failure_timeout: f64,
    /// Do not join a mesh at all: a node for this machine only.
    #[arg(long)]
    no_mesh: bool,
    /// Never serve this machine's binaries to peers, nor take theirs.
    #[arg(long)]
    no_code_shipping: bool,
    /// Values above this many bytes go through the shared-memory store.
    #[arg(long, env = "SHOAL_INLINE_THRESHOLD")]
    inline_threshold: Option<u64>,
    /// The user that code shipped by peers runs as [default: nobody when the node runs as
    /// root, else the node's own user].
    #[arg(long, env = "SHOAL_WORKER_USER")]
    worker_user: Option<String>,
    /// Let a node running as root run code shipped by peers as root.
    #[arg(long)]
    allow_root_workers: bool,
    /// Memory limit of each worker of shipped code, in bytes (suffixes K, M, G: powers of
    /// 1024) [default: none].
    #[arg(long, env = "SHOAL_WORKER_MEMORY", value_parser = parse_bytes)]
    worker_memory: Option<u64>,
    /// Limit worker memory with RLIMIT_DATA only: never make cgroups.
    #[arg(long)]
    no_worker_cgroups: bool,
    /// Share of the machine's memory in use above which the node kills the worker using the
    /// most (1 turns this off).
    #[arg(long, env = "SHOAL_MEMORY_THRESHOLD", default_value_t = 0.95)]
    memory_threshold: f64,
}

/// `N`, `NK`, `NM` or `NG` (powers of 1024) bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_resource(s: &str) -> Result<(String, f64), String> {
    let (name, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=AMOUNT, got {s:?}"))?;
    let amount: f64 = amount
        .parse()
        .map_err(|e| format!("bad amount in {s:?}: {e}"))?;
    Ok((name.to_string(), amount))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => run_node(*args),
        Command::Status { json, socket } => {
            let socket = socket.unwrap_or_else(default_socket_path);
            let ToClient::Status { status, .. } = ask(&socket, ToNode::Status { request: 1 })?
            else {
                bail!("unexpected answer");
            };
            if json {
                println!("{}", serde_json::to_string(&status_json(&status))?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Peers { json, socket } => {
            let socket = socket.unwrap_or_else(default_socket_path);
            let ToClient::Status { status, .. } = ask(&socket, ToNode::Status { request: 1 })?
            else {
                bail!("unexpected answer");
            };
            let Some(mesh) = &status.mesh else {
                bail!("this node is not a peer of a mesh");
            };
            if json {
                let list: Vec<_> = mesh.peers.iter().map(peer_json).collect();
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print_peers(mesh);
            }
            Ok(())
        }
        Command::Objects { json, socket } => {
            let socket = socket.unwrap_or_else(default_socket_path);
            let ToClient::Objects { objects, .. } = ask(&socket, ToNode::Objects { request: 1 })?
            else {
                bail!("unexpected answer");
            };
            if json {
                let list: Vec<_> = objects.iter().map(object_json).collect();
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print_objects(&objects);
            }
            Ok(())
        }
    }
}

fn peer_json(p: &shoal_protocol::PeerStatus) -> serde_json::Value {
    serde_json::json!({
        "peer_id": p.peer_id,
        "addrs": p.addrs,
        "resources": { "total": resources_json(&p.total), "free": resources_json(&p.free) },
        "queued": p.queued,
        "running": p.running,
        "store": { "capacity": p.store_capacity, "used": p.store_used },
        "target": p.target,
        "last_heard_ms": p.last_heard_ms,
        "rtt_us": p.rtt_us,
        "connected": p.connected,
    })
}

fn print_peers(mesh: &shoal_protocol::MeshStatus) {
    println!("mesh      {} as {}", mesh.mesh, mesh.peer_id);
    for a in &mesh.listen_addrs {
        println!("listening {a}");
    }
    println!("peers     {}", mesh.peers.len());
    for p in &mesh.peers {
        println!(
            "  {}  {} free of {}, {} queued, {} running, heard {} ms ago{}{}",
            p.peer_id,
            p.free,
            p.total,
            p.queued,
            p.running,
            p.last_heard_ms,
            p.rtt_us
                .map(|r| format!(", rtt {r} us"))
                .unwrap_or_default(),
            if p.connected { "" } else { " (via gossip)" }
        );
    }
}

fn object_json(o: &ObjectInfo) -> serde_json::Value {
    serde_json::json!({
        "id": o.id.to_hex(),
        "size": o.size,
        "owner": o.owner.map(|c| c.to_string()),
        "holders": o.holders,
        "pinned_by": o.pinned_by,
        "location": o.location,
    })
}

fn print_objects(objects: &[ObjectInfo]) {
    println!(
        "{:<16} {:>12} {:<16} {:>7} {:<12} pinned by",
        "object", "bytes", "owner", "holders", "location"
    );
    for o in objects {
        println!(
            "{:<16} {:>12} {:<16} {:>7} {:<12} {}",
            &o.id.to_hex()[..16],
            o.size,
            o.owner.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            o.holders,
            o.location,
            o.pinned_by.join(",")
        );
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    println!("{} objects, {total} bytes", objects.len());
}

fn run_node(args: NodeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut config = NodeConfig::default();
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(c) = args.cpus {
        config.cpus = c;
        config.max_workers = ((c.ceil() as usize) * 4).max(8);
    }
    config.resources = args.resources;
    if let Some(dir) = args.store_dir {
        config.store_bytes = shoal_node::config::default_store_bytes(&dir);
        config.store_parent = dir;
    }
    if let Some(b) = args.store_bytes {
        config.store_bytes = b;
    }
    if let Some(dir) = args.spill_dir {
        config.spill_parent = dir;
    }
    if !args.no_mesh {
        let parse = |s: &String| -> Result<libp2p::Multiaddr> {
            s.parse().with_context(|| format!("not a multiaddr: {s}"))
        };
        let mut net = shoal_node::net::NetConfig::new(&args.mesh);
        net.listen = if args.listen.is_empty() {
            vec![parse(&"/ip4/0.0.0.0/tcp/0".to_string())?]
        } else {
            args.listen.iter().map(parse).collect::<Result<_>>()?
        };
        net.peers = args.peers.iter().map(parse).collect::<Result<_>>()?;
        net.mdns = !args.no_mdns;
        net.code_shipping = !args.no_code_shipping;
        if !(args.failure_timeout > 0.0 && args.failure_timeout.is_finite()) {
            bail!("--failure-timeout must be a positive number of seconds");
        }
        let expiry = Duration::from_secs_f64(args.failure_timeout);
        net.membership = shoal_node::net::membership::MembershipConfig {
            expiry,
            grace: (expiry / 3).min(Duration::from_secs(1)),
        };
        let data_dir = args
            .data_dir
            .unwrap_or_else(shoal_node::config::default_data_dir);
        // Binaries shipped from peers are kept with the node's identity.
        net.code_cache = Some(data_dir.join("code"));
        config.mesh = Some(shoal_node::config::MeshConfig { data_dir, net });
    }
    if let Some(t) = args.inline_threshold {
        config.inline_threshold = t;
    }
    config.sandbox = shoal_node::config::SandboxConfig {
        worker_user: args.worker_user,
        allow_root_workers: args.allow_root_workers,
        worker_memory: args.worker_memory,
        cgroups: !args.no_worker_cgroups,
        memory_threshold: args.memory_threshold,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("shoal-node")
        .build()?;
    rt.block_on(async move {
        // Handlers first, so a signal during start-up still shuts down cleanly.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let node = shoal_node::start(config).await?;
        tokio::select! {
            _ = int.recv() => tracing::info!("interrupted"),
            _ = term.recv() => tracing::info!("terminated"),
        }
        node.shutdown().await;
        Ok(())
    })
}

/// Sends one request to the node on `socket`, over the same protocol drivers use, and returns
/// its answer.
fn ask(socket: &std::path::Path, request: ToNode) -> Result<ToClient> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("no node is listening on {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let max = frame::DEFAULT_MAX_FRAME;
    let mut out = Vec::new();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Cli,
        pid: std::process::id(),
        client: ClientId(u64::from(std::process::id()) << 32 | 0xc11),
        binary: None,
    };
    frame::encode_frame(&mut out, &ToNode::Hello(hello), max)?;
    frame::encode_frame(&mut out, &request, max)?;
    stream.write_all(&out)?;
    let mut frames = frame::FrameDecoder::new(max);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        while let Some(msg) = frames.next_message::<ToClient>()? {
            match msg {
                ToClient::Status { .. } | ToClient::Objects { .. } => return Ok(msg),
                ToClient::Rejected { reason } => bail!("the node refused us: {reason}"),
                _ => {}
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("the node closed the connection");
        }
        frames.extend(&chunk[..n]);
    }
}

fn resources_json(r: &ResourceSet) -> serde_json::Value {
    r.0.iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(*v as f64 / 1000.0)))
        .collect()
}

fn status_json(s: &NodeStatus) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id.to_hex(),
        "pid": s.pid,
        "socket": s.socket,
        "store_dir": s.store_dir,
        "embedded": s.embedded,
        "uptime_ms": s.uptime_ms,
        "resources": { "total": resources_json(&s.resources_total), "free": resources_json(&s.resources_free) },
        "workers": s.workers.iter().map(|w| serde_json::json!({
            "id": w.id, "pid": w.pid, "binary": w.binary.to_hex(), "state": w.state, "tasks_done": w.tasks_done,
        })).collect::<Vec<_>>(),
        "tasks": { "queued": s.tasks_queued, "running": s.tasks_running, "finished": s.tasks_finished },
        "clients": s.clients,
        "objects": {
            "count": s.objects.count,
            "inline_count": s.objects.inline_count,
            "inline_bytes": s.objects.inline_bytes,
            "shared_count": s.objects.shared_count,
            "shared_bytes": s.objects.shared_bytes,
            "store_capacity": s.objects.store_capacity,
            "store_used": s.objects.store_used,
            "spilled_count": s.objects.spilled_count,
            "spilled_bytes": s.objects.spilled_bytes,
        },
        "peer_id": s.mesh.as_ref().map(|m| m.peer_id.clone()),
        "mesh": s.mesh.as_ref().map(|m| m.mesh.clone()),
        "listen_addrs": s.mesh.as_ref().map(|m| m.listen_addrs.clone()).unwrap_or_default(),
        "gossip": s.mesh.as_ref().map(|m| serde_json::json!({"bytes_out": m.gossip_bytes_out, "bytes_in": m.gossip_bytes_in})),
        "peers": s.mesh.as_ref().map(|m| m.peers.iter().map(peer_json).collect::<Vec<_>>()).unwrap_or_default(),
        "actors": s.actors.iter().map(|a| serde_json::json!({
            "actor_id": a.actor_id.to_hex(), "class": a.class, "name": a.name, "state": a.state,
            "incarnation": a.incarnation, "pid": a.pid, "calls_pending": a.calls_pending,
            "calls_done": a.calls_done,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(s: &NodeStatus) {
    println!(
        "node      {}{}",
        s.node_id,
        if s.embedded { " (embedded)" } else { "" }
    );
    println!(
        "pid       {}   up {:.1}s",
        s.pid,
        s.uptime_ms as f64 / 1000.0
    );
    println!("socket    {}", s.socket);
    println!(
        "resources {} free of {}",
        s.resources_free, s.resources_total
    );
    println!(
        "tasks     {} queued, {} running, {} finished",
        s.tasks_queued, s.tasks_running, s.tasks_finished
    );
    println!(
        "objects   {} ({} inline, {} B; {} in store, {} B)",
        s.objects.count,
        s.objects.inline_count,
        s.objects.inline_bytes,
        s.objects.shared_count,
        s.objects.shared_bytes,
    );
    println!(
        "store     {} B of {} B in memory, {} objects ({} B) spilled to disk; {}",
        s.objects.store_used,
        s.objects.store_capacity,
        s.objects.spilled_count,
        s.objects.spilled_bytes,
        s.store_dir
    );
    println!("clients   {}", s.clients);
    println!("workers   {}", s.workers.len());
    for w in &s.workers {
        println!(
            "  #{:<4} pid {:<8} {:<8} {:>8} tasks  binary {}",
            w.id,
            w.pid,
            w.state,
            w.tasks_done,
            &w.binary.to_hex()[..12]
        );
    }
    if let Some(mesh) = &s.mesh {
        print_peers(mesh);
    }
    println!("actors    {}", s.actors.len());
    for a in &s.actors {
        println!(
            "  {} {:<10} pid {:<8} restarts {:<3} {:>8} calls done, {} pending  {}{}",
            &a.actor_id.to_hex()[..12],
            a.state,
            a.pid,
            a.incarnation,
            a.calls_done,
            a.calls_pending,
            a.class,
            a.name
                .as_ref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default()
        );
    }
}
