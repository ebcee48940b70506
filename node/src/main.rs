//! `shoal`: run a node, or ask one how it is.
//!
//! ```text
//! shoal node [--config FILE] [--join TOKEN] [--socket PATH] [--socket-group GROUP] [--cpus N] [--resource NAME=N]... [--label KEY=VALUE]...
//!            [--trust-publisher KEY]...
//!            [--store-bytes N] [--max-clients-per-uid N] [--worker-user USER] [--allow-root-workers]
//!            [--worker-memory BYTES] [--no-worker-cgroups] [--memory-threshold SHARE]
//! shoal mesh init --mesh NAME [--out FILE]
//! shoal mesh invite --authority FILE [--role node|client] [--expires 30d] [--peer ID] [--bootstrap ADDR]...
//! shoal mesh revoke --authority FILE (--peer ID | --invite KEY)
//! shoal mesh trust-publisher --authority FILE KEY [--expires 365d]
//! shoal mesh publish STATEMENT [--data-dir DIR]
//! shoal mesh renew TOKEN [--data-dir DIR]
//! shoal mesh swarm-key --out FILE
//! shoal mesh id [--data-dir DIR]
//! shoal publisher init [--key FILE]
//! shoal publisher show [--key FILE]
//! shoal sign BINARY [--key FILE] [--target TRIPLE]
//! shoal list tasks|actors|objects|peers|workers [--filter KEY=VALUE]... [--limit N] [ASK]
//! shoal summary tasks|actors|objects [--filter KEY=VALUE]... [ASK]
//! shoal get task|actor|object|worker|peer ID [ASK]
//! shoal top [--every SECS] [--timeout SECS] [--socket PATH]
//! shoal logs [--task ID | --actor ID | --peer P] [--follow] [--limit N] [ASK]
//! shoal timeline [--out FILE] [--limit N] [ASK]
//!   (ASK: [--json] [--timeout SECS] [--local] [--socket PATH])
//! shoal config show [--json] [NODE FLAGS]
//! shoal status [--json] [--local] [--socket PATH]
//! shoal objects [--json] [--socket PATH]
//! shoal peers [--json] [--socket PATH]
//! ```

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use shoal_node::auth::{self, keyfile};
use shoal_node::config::{default_socket_path, NodeConfig};
use shoal_protocol::state::{StateKind, StateQuery};
use shoal_protocol::{NodeStatus, ObjectInfo, ResourceSet, ToClient, ToNode};

mod cli;

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
    /// Make a mesh and manage who belongs to it.
    Mesh(MeshArgs),
    /// The node's configuration: `shoal config show` prints what `shoal node` would run
    /// with (the same flags), and where each value comes from.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make or show a publisher key: it signs programs so that peers run them.
    Publisher(PublisherArgs),
    /// Sign a binary: writes BINARY.shoal-manifest, which a program started from that
    /// binary ships with it (instead of signing with its own key).
    Sign {
        /// The binary (an executable built with the Shoal SDK).
        binary: PathBuf,
        /// The publisher key file [default: $XDG_CONFIG_HOME/shoal/publisher.key, else
        /// ~/.config/shoal/publisher.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// The target triple it was built for [default: this machine's].
        #[arg(long)]
        target: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a node's id, resources, workers, tasks, objects and actors.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Show only this node's waiting work, asking no peer (its `waiting` section
        /// otherwise covers the whole mesh).
        #[arg(long)]
        local: bool,
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
    /// List tasks, actors, objects, peers, workers or placement groups of the whole mesh (as
    /// `ray list`): the node asks every peer it knows, and says which did not answer in time.
    List {
        /// tasks, actors, objects, peers, workers, logs or placement-groups.
        kind: StateKind,
        /// Only rows whose field KEY is (or with `!=`, is not) VALUE; ids match by prefix.
        /// Repeat for several. `--filter help` lists the fields.
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Rows to show at most (the newest tasks, the largest objects first).
        #[arg(long, default_value_t = shoal_protocol::state::DEFAULT_STATE_LIMIT)]
        limit: u32,
        #[command(flatten)]
        ask: AskArgs,
    },
    /// Count tasks by function, actors by class, or objects by location, over the mesh, by
    /// state (as `ray summary`).
    Summary {
        /// tasks, actors or objects.
        kind: StateKind,
        /// Only rows whose field KEY is (or with `!=`, is not) VALUE.
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[command(flatten)]
        ask: AskArgs,
    },
    /// Show one task, actor, object, worker or peer of the mesh, every field (an object has
    /// a row per peer that holds it). A unique start of the id is enough. With `--out`, an
    /// object's bytes instead.
    Get {
        /// task, actor, object, worker or peer.
        kind: StateKind,
        /// Its id, or the start of it.
        id: String,
        /// Write the object's bytes (its encoded value) to FILE (`-` for stdout), pulling a
        /// copy to this node first if only peers hold one (this node must be allowed to read
        /// it); a progress bar shows on a terminal.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        ask: AskArgs,
    },
    /// A live view of the mesh in the terminal, refreshed every second: each peer's CPUs,
    /// resources, queue, running tasks, tasks per second, store, spill, workers, actors and
    /// round trip; `s` sorts, `enter` shows a peer's tasks and actors, `q` quits.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        every: f64,
        /// Seconds to wait for the other peers at each refresh.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
        /// The node's socket [default: $SHOAL_SOCKET or the per-user default].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Show what tasks and actors wrote to stdout and stderr, from the peers where they ran
    /// (each peer keeps its last 10,000 lines), oldest first.
    Logs {
        /// One task's lines (its id, or a unique start of it).
        #[arg(long, conflicts_with_all = ["actor", "peer"])]
        task: Option<String>,
        /// One actor's lines.
        #[arg(long, conflicts_with = "peer")]
        actor: Option<String>,
        /// One peer's lines (its peer id, or a unique start of it).
        #[arg(long)]
        peer: Option<String>,
        /// Then print new lines as they come, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Lines to show at most (the newest).
        #[arg(long, default_value_t = 1_000)]
        limit: u32,
        #[command(flatten)]
        ask: AskArgs,
    },
    /// Write the mesh's recent tasks as a Chrome trace (as `ray timeline`): open it in
    /// Perfetto (https://ui.perfetto.dev) or chrome://tracing.
    Timeline {
        /// Where to write it.
        #[arg(long, default_value = "shoal-timeline.json")]
        out: PathBuf,
        /// Tasks to include at most (the newest).
        #[arg(long, default_value_t = shoal_protocol::state::MAX_STATE_LIMIT)]
        limit: u32,
        #[command(flatten)]
        ask: AskArgs,
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

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print every option of `shoal node` given these flags, the environment and the
    /// configuration file, with where each value comes from.
    Show {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The flags `shoal node` would be given.
        #[command(flatten)]
        node: Box<NodeArgs>,
    },
}

/// How a question about the mesh is asked.
#[derive(clap::Args, Debug)]
struct AskArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the other peers; those that did not answer are named.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Ask this node only, not the mesh.
    #[arg(long)]
    local: bool,
    /// The node's socket [default: $SHOAL_SOCKET or the per-user default].
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl AskArgs {
    /// The socket and the wait, checked.
    fn parts(&self) -> Result<(PathBuf, Duration)> {
        if !(self.timeout > 0.0 && self.timeout <= 60.0) {
            bail!("--timeout must be a number of seconds in (0, 60]");
        }
        let socket = self.socket.clone().unwrap_or_else(default_socket_path);
        Ok((socket, Duration::from_secs_f64(self.timeout)))
    }
}

/// Runs a state command with its asking options.
fn with_ask(
    args: &AskArgs,
    f: impl FnOnce(&cli::state::Ask<'_>, bool) -> Result<()>,
) -> Result<()> {
    let (socket, timeout) = args.parts()?;
    let ask = cli::state::Ask {
        socket: &socket,
        timeout,
        local: args.local,
    };
    f(&ask, args.json)
}

#[derive(clap::Args, Debug)]
struct MeshArgs {
    #[command(subcommand)]
    cmd: MeshCommand,
    /// Print one JSON object instead of text (the token, key or statement in a field).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct PublisherArgs {
    #[command(subcommand)]
    cmd: PublisherCommand,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// Make a new mesh: its authority key (keep it offline; it signs every credential).
    Init {
        /// The mesh's name.
        #[arg(long)]
        mesh: String,
        /// Where to write the authority key [default: ./<mesh>.authority].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue a join token (`shoal node --join TOKEN`). Without `--peer` it holds an invite
    /// key that lets any number of nodes join until it expires: keep it secret.
    Invite {
        /// The authority key file.
        #[arg(long)]
        authority: PathBuf,
        /// `node` (computes and submits) or `client` (only submits).
        #[arg(long, default_value = "node")]
        role: String,
        /// How long it is valid: a number with s, m, h or d.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Certify this one peer id (see `shoal mesh id`) instead of making an invite.
        #[arg(long)]
        peer: Option<String>,
        /// A peer to bootstrap from (repeatable), e.g. /ip4/10.0.0.2/tcp/7447/p2p/12D3Koo...
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
    },
    /// Revoke a peer or an invite (prints the revocation to `shoal mesh publish`).
    Revoke {
        /// The authority key file.
        #[arg(long)]
        authority: PathBuf,
        /// The peer id to revoke.
        #[arg(long, conflicts_with = "invite", required_unless_present = "invite")]
        peer: Option<String>,
        /// The invite key to revoke (hex, as `shoal mesh invite` printed it).
        #[arg(long)]
        invite: Option<String>,
    },
    /// Name a publisher whose binaries every member runs (prints the grant to `shoal mesh
    /// publish`); revoking the publisher's key (`shoal mesh revoke --invite KEY`) ends it.
    TrustPublisher {
        /// The authority key file.
        #[arg(long)]
        authority: PathBuf,
        /// The publisher's public key (hex, as `shoal publisher show` prints it).
        key: String,
        /// How long it holds: a number with s, m, h or d.
        #[arg(long, default_value = "365d")]
        expires: String,
    },
    /// Hand a statement of the authority (a revocation or a publisher grant) to the node of
    /// this machine; it spreads it through the mesh.
    Publish {
        /// The statement (`shoal-revoke-1-...` or `shoal-publisher-grant-1-...`).
        revocation: String,
        /// The node's data directory [default: as `shoal node`].
        #[arg(long, env = "SHOAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Give the node of this machine a new join token (a renewed credential), without a
    /// restart.
    Renew {
        /// The new token.
        token: String,
        /// The node's data directory [default: as `shoal node`].
        #[arg(long, env = "SHOAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Make a private-network key (libp2p pnet) for `shoal node --swarm-key`: an optional
    /// outer layer (TCP only) that every peer of the mesh must also have.
    SwarmKey {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print this machine's node peer id (making its identity key if needed), for
    /// `shoal mesh invite --peer`.
    Id {
        /// The node's data directory [default: as `shoal node`].
        #[arg(long, env = "SHOAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum PublisherCommand {
    /// Make a publisher key (file mode 0600) and print its public key, which nodes trust
    /// with `shoal node --trust-publisher KEY`. An existing key is kept and shown.
    Init {
        /// The key file [default: $XDG_CONFIG_HOME/shoal/publisher.key, else
        /// ~/.config/shoal/publisher.key: the key programs sign with by default].
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print a publisher key's public key.
    Show {
        /// The key file [default: as `init`].
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// The configuration file (TOML; its keys are these flags with `_` for `-`) [default:
    /// /etc/shoal/shoal.toml when it exists, else $XDG_CONFIG_HOME/shoal/shoal.toml or
    /// ~/.config/shoal/shoal.toml when it exists]. Flags, then SHOAL_* variables, override it.
    #[arg(long, env = "SHOAL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Join a mesh with this token (from `shoal mesh invite`); it is kept in the data
    /// directory, so later runs need no token. Without one (and none kept) the node serves
    /// this machine only.
    #[arg(long, env = "SHOAL_JOIN", hide_env_values = true)]
    join: Option<String>,
    /// A private-network key file (`shoal mesh swarm-key`): only peers with the same key get
    /// past the first bytes of a connection; QUIC is then off (pnet is TCP only).
    #[arg(long, env = "SHOAL_SWARM_KEY")]
    swarm_key: Option<PathBuf>,
    /// Local API socket [default: $SHOAL_SOCKET, else $XDG_RUNTIME_DIR/shoal/node.sock, else
    /// /tmp/shoal-$UID/node.sock].
    #[arg(long, env = "SHOAL_SOCKET")]
    socket: Option<PathBuf>,
    /// CPU slots [default: the number of cores].
    #[arg(long, env = "SHOAL_CPUS")]
    cpus: Option<f64>,
    /// A custom resource, NAME=AMOUNT (repeatable; in $SHOAL_RESOURCES, comma-separated).
    #[arg(long = "resource", env = "SHOAL_RESOURCES", value_delimiter = ',', value_parser = parse_resource)]
    resources: Vec<(String, f64)>,
    /// A label of this peer, KEY=VALUE (repeatable; in $SHOAL_LABELS, comma-separated): the
    /// label selectors of tasks and actors (`TaskOptions::label`) match them.
    #[arg(long = "label", env = "SHOAL_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Object store capacity in bytes (suffixes K, M, G) [default: 30% of memory, at most the
    /// free space of the store directory].
    #[arg(long, env = "SHOAL_STORE_BYTES", value_parser = parse_bytes)]
    store_bytes: Option<u64>,
    /// Where the store directory is made [default: /dev/shm].
    #[arg(long, env = "SHOAL_STORE_DIR")]
    store_dir: Option<PathBuf>,
    /// Where objects are spilled when the store is full: a directory on disk [default:
    /// shoal-spill-<uid> in the temporary directory].
    #[arg(long, env = "SHOAL_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
    /// A mesh address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/0 with a
    /// credential].
    #[arg(
        long = "listen",
        env = "SHOAL_LISTEN",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    listen: Vec<String>,
    /// A peer to bootstrap from (repeatable), e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3Koo...
    #[arg(
        long = "peer",
        env = "SHOAL_PEERS",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    peers: Vec<String>,
    /// Where the node keeps its identity key [default: $XDG_DATA_HOME/shoal or
    /// ~/.local/share/shoal].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Find peers on the LAN with mDNS (the default).
    #[arg(long, env = "SHOAL_MDNS", overrides_with = "no_mdns")]
    mdns: bool,
    /// Do not use mDNS.
    #[arg(long, env = "SHOAL_NO_MDNS")]
    no_mdns: bool,
    /// Seconds after which a silent peer leaves this node's view.
    #[arg(long, env = "SHOAL_FAILURE_TIMEOUT", default_value_t = 3.0)]
    failure_timeout: f64,
    /// How peers decide who is gone: `reports` (a peer whose load reports stop leaves after
    /// --failure-timeout; every peer hears every other, fine up to a few dozen) or `swim`
    /// (SWIM probing with Lifeguard's suspicion: a killed peer leaves every view in about 3 s
    /// and each peer's cost stays bounded at any size). Every peer of a mesh must use the
    /// same.
    #[arg(long, env = "SHOAL_MEMBERSHIP", default_value = "reports", value_name = "KIND", action = clap::ArgAction::Set, value_parser = parse_membership)]
    membership: bool,
    /// Do not join a mesh at all: a node for this machine only.
    #[arg(long, env = "SHOAL_NO_MESH")]
    no_mesh: bool,
    /// Never serve this machine's binaries to peers, nor take theirs.
    #[arg(long, env = "SHOAL_NO_CODE_SHIPPING")]
    no_code_shipping: bool,
    /// The port of the sealed lane, the TCP listener beside the first TCP --listen address
    /// that sends large objects to peers (AES-256-GCM, keyed on the peer's authenticated
    /// connection) [default: any free port].
    #[arg(long, env = "SHOAL_LANE_PORT", default_value_t = 0)]
    lane_port: u16,
    /// No sealed lane: objects go to peers on their libp2p connections only.
    #[arg(long, env = "SHOAL_NO_LANE")]
    no_lane: bool,
    /// Run code shipped by peers when it is signed by this publisher: its public key, 64
    /// hex digits, as `shoal publisher init` or `show` prints it (repeatable). The public
    /// key of this user's default publisher key ($XDG_CONFIG_HOME/shoal/publisher.key, else
    /// ~/.config/shoal/publisher.key), if that file exists, is trusted too: a user signs
    /// their own programs with it. Unsigned code from peers never runs.
    #[arg(long = "trust-publisher", env = "SHOAL_TRUST_PUBLISHERS", value_delimiter = ',', value_name = "KEY", value_parser = parse_publisher)]
    trust_publisher: Vec<shoal_node::auth::KeyBytes>,
    /// Values above this many bytes go through the shared-memory store.
    #[arg(long, env = "SHOAL_INLINE_THRESHOLD")]
    inline_threshold: Option<u64>,
    /// A group (name or gid) whose members may attach to the socket too; by default only
    /// this user and root may. The socket becomes mode 0660 and the store directory
    /// group-accessible; the socket's directory must let the group reach it (when it is the
    /// per-user default, the node makes it mode 0710 and gives it to the group). Members'
    /// programs run in workers this node starts as its own user: name only a group whose
    /// members you would let act as that user.
    #[arg(long, env = "SHOAL_SOCKET_GROUP", value_name = "GROUP")]
    socket_group: Option<String>,
    /// Connections one uid may have attached at once (this node's own workers are not
    /// counted) [default: 1024].
    #[arg(long, env = "SHOAL_MAX_CLIENTS_PER_UID", value_name = "N")]
    max_clients_per_uid: Option<usize>,
    /// Bytes of lineage kept at most (suffixes K, M, G): the specs of tasks whose large
    /// results this node owns, to make a result again when every copy of it is lost with
    /// its peers. Past it the least recently used go, and such a result cannot be made again
    /// [default: 256M].
    #[arg(long, env = "SHOAL_LINEAGE_BYTES", value_parser = parse_bytes)]
    lineage_bytes: Option<u64>,
    /// Seconds a program's task or actor waits for resources no peer has free before the
    /// program is warned (then once a minute while it waits) [default: 10].
    #[arg(long, env = "SHOAL_WAIT_WARNING", value_name = "SECS")]
    wait_warning: Option<f64>,
    /// The user that code shipped by peers runs as [default: nobody when the node runs as
    /// root, else the node's own user].
    #[arg(long, env = "SHOAL_WORKER_USER")]
    worker_user: Option<String>,
    /// Let a node running as root run code shipped by peers as root.
    #[arg(long, env = "SHOAL_ALLOW_ROOT_WORKERS")]
    allow_root_workers: bool,
    /// Memory limit of each worker of shipped code, in bytes (suffixes K, M, G: powers of
    /// 1024) [default: none].
    #[arg(long, env = "SHOAL_WORKER_MEMORY", value_parser = parse_bytes)]
    worker_memory: Option<u64>,
    /// Limit worker memory with RLIMIT_DATA only: never make cgroups.
    #[arg(long, env = "SHOAL_NO_WORKER_CGROUPS")]
    no_worker_cgroups: bool,
    /// Share of the machine's memory in use above which the node kills the worker using the
    /// most (1 turns this off).
    #[arg(long, env = "SHOAL_MEMORY_THRESHOLD", default_value_t = 0.95)]
    memory_threshold: f64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (port 0 picks a free one; `shoal
    /// status` shows it) [default: none].
    #[arg(long, env = "SHOAL_METRICS", value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Serve the web dashboard at `http://ADDR/` (port 0 picks a free one; `shoal status`
    /// shows it): the mesh's peers, task stream, actors, objects and logs. It shows them to
    /// anyone who can reach ADDR: keep it on loopback.
    #[arg(long, env = "SHOAL_DASHBOARD", value_name = "ADDR")]
    dashboard: Option<std::net::SocketAddr>,
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

fn parse_publisher(s: &str) -> Result<shoal_node::auth::KeyBytes, String> {
    shoal_node::auth::parse_hex_key(s).map_err(|e| format!("a publisher key: {e}"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value))
            if !key.is_empty()
                && !value.is_empty()
                && !value.contains(['(', ')', '!'])
                && !key.contains(['(', ')', '!']) =>
        {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!(
            "expected KEY=VALUE (neither empty, no `(`, `)` or `!`), got {s:?}"
        )),
    }
}

/// `--membership`: whether SWIM runs membership.
fn parse_membership(s: &str) -> Result<bool, String> {
    match s {
        "reports" => Ok(false),
        "swim" => Ok(true),
        _ => Err(format!("`{s}`: expected `reports` or `swim`")),
    }
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

/// `shoal node`'s options from its flags, the environment and the configuration file: the
/// flags to run with, and where each option came from.
fn node_options(node_argv: Vec<OsString>) -> Result<(NodeArgs, cli::config::Resolved)> {
    let command = Cli::command();
    let node = command
        .find_subcommand("node")
        .ok_or_else(|| anyhow::anyhow!("no node command"))?
        .clone();
    let matches = node.clone().try_get_matches_from(&node_argv)?;
    let explicit = matches.get_one::<PathBuf>("config").cloned();
    let file = cli::config::file_to_read(explicit.as_deref());
    let resolved = cli::config::resolve(node_argv, &node, &matches, file)?;
    let mut argv: Vec<OsString> = vec!["shoal".into()];
    argv.extend(resolved.argv.iter().cloned());
    let Command::Node(args) = Cli::try_parse_from(&argv)?.command else {
        bail!("the node's options did not parse as `shoal node`");
    };
    Ok((*args, resolved))
}

/// `shoal config show`: every option with its value and where it came from.
fn config_show(node_argv: Vec<OsString>, json: bool) -> Result<()> {
    let (_, resolved) = node_options(node_argv)?;
    let node = Cli::command()
        .find_subcommand("node")
        .ok_or_else(|| anyhow::anyhow!("no node command"))?
        .clone();
    let matches = node.clone().try_get_matches_from(&resolved.argv)?;
    let mut rows = Vec::new();
    for (id, origin) in &resolved.origins {
        let arg = node.get_arguments().find(|a| a.get_id() == id.as_str());
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let shown = match (values.is_empty(), arg.map(|a| a.get_default_values())) {
            (false, _) => values.join(", "),
            (true, Some(d)) if !d.is_empty() => d
                .iter()
                .map(|x| x.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", "),
            _ => "-".to_string(),
        };
        // Never print the join token: it admits whoever holds it.
        let shown = if id == "join" && shown != "-" {
            "(set, not shown)".to_string()
        } else {
            shown
        };
        rows.push((id.clone(), shown, origin.clone()));
    }
    if json {
        let v: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(id, value, origin)| {
                (
                    id.clone(),
                    serde_json::json!({ "value": value, "from": origin.to_string() }),
                )
            })
            .collect();
        let file = resolved.file.as_ref().map(|p| p.display().to_string());
        println!("{}", serde_json::json!({ "file": file, "options": v }));
    } else {
        match &resolved.file {
            Some(p) => println!("configuration file: {}", p.display()),
            None => println!(
                "configuration file: none ({} and {} do not exist)",
                cli::config::SYSTEM_FILE,
                cli::config::user_file()
                    .map_or_else(|| "the per-user one".into(), |p| p.display().to_string())
            ),
        }
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let vwidth = rows
            .iter()
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        for (id, value, origin) in rows {
            println!("{id:<width$}  {value:<vwidth$}  ({origin})");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    if !matches!(cli.command, Command::Node(_)) {
        // A command whose output is piped into `head` ends quietly when the reader does,
        // as other Unix tools do (not with a panic on a broken pipe). The node keeps the
        // default of ignoring SIGPIPE: its sockets report a gone peer as an error.
        // SAFETY: setting a signal's disposition to the default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Node(_) => {
            // Parsed again with the configuration file's options.
            let (args, resolved) = node_options(argv[1..].to_vec())?;
            run_node(args, resolved.file)
        }
        Command::Config(ConfigCommand::Show { json, .. }) => {
            // The flags after `config show`, as `shoal node` would take them.
            let mut node_argv: Vec<OsString> = vec!["node".into()];
            node_argv.extend(argv.iter().skip(3).filter(|a| *a != "--json").cloned());
            config_show(node_argv, json)
        }
        Command::List {
            kind,
            filter,
            limit,
            ask,
        } => {
            if filter.iter().any(|f| f == "help") {
                println!("fields of {kind}: {}", kind.fields().join(", "));
                return Ok(());
            }
            let mut query = StateQuery::new(kind);
            query.filters = cli::state::filters(&filter)?;
            query.limit = limit;
            with_ask(&ask, |a, json| cli::state::list(a, query, json))
        }
        Command::Summary { kind, filter, ask } => {
            let mut query = StateQuery::new(kind);
            query.filters = cli::state::filters(&filter)?;
            with_ask(&ask, |a, json| cli::state::summary(a, query, json))
        }
        Command::Get {
            kind,
            id,
            out: Some(out),
            ask,
        } => {
            if kind != StateKind::Objects {
                bail!("--out writes an object's bytes: `shoal get object ID --out FILE`");
            }
            if ask.json && out == std::path::Path::new("-") {
                bail!("--json and --out - would both write to stdout");
            }
            with_ask(&ask, |a, json| {
                let (full, _) = cli::state::resolve(a, kind, &id)?;
                let oid = shoal_protocol::ObjectId::from_hex(&full)
                    .with_context(|| format!("not an object id: {full}"))?;
                let size = cli::pull::object(a.socket, oid, &out)?;
                if json {
                    let v = serde_json::json!({ "object": full, "bytes": size, "out": out });
                    println!("{v}");
                }
                Ok(())
            })
        }
        Command::Get {
            kind,
            id,
            out: None,
            ask,
        } => with_ask(&ask, |a, json| cli::state::get(a, kind, &id, json)),
        Command::Logs {
            task,
            actor,
            peer,
            follow,
            limit,
            ask,
        } => {
            let mut filters = Vec::new();
            for (key, value) in [("task_id", task), ("actor_id", actor), ("node", peer)] {
                if let Some(value) = value {
                    filters.push(shoal_protocol::state::Filter {
                        key: key.into(),
                        negate: false,
                        value,
                    });
                }
            }
            with_ask(&ask, |a, json| {
                cli::state::logs(a, filters, limit, follow, json)
            })
        }
        Command::Top {
            every,
            timeout,
            socket,
        } => {
            let good = (0.1..=3600.0).contains(&every) && timeout > 0.0 && timeout <= 60.0;
            if !good {
                bail!("--every must be in [0.1, 3600] seconds, --timeout in (0, 60]");
            }
            let socket = socket.unwrap_or_else(default_socket_path);
            let ask = cli::state::Ask {
                socket: &socket,
                timeout: Duration::from_secs_f64(timeout),
                local: false,
            };
            cli::top::run(&ask, Duration::from_secs_f64(every))
        }
        Command::Timeline { out, limit, ask } => {
            with_ask(&ask, |a, json| cli::state::timeline(a, &out, limit, json))
        }
        Command::Mesh(MeshArgs { cmd, json }) => mesh_command(cmd, json),
        Command::Publisher(PublisherArgs { cmd, json }) => publisher_command(cmd, json),
        Command::Sign {
            binary,
            key,
            target,
            json,
        } => sign(&binary, key, target, json),
        Command::Status {
            json,
            local,
            socket,
        } => {
            let socket = socket.unwrap_or_else(default_socket_path);
            let ToClient::Status { status, .. } =
                cli::ask(&socket, ToNode::Status { request: 1 }, cli::WAIT)?
            else {
                bail!("unexpected answer");
            };
            // Work anywhere in the mesh that has waited long for resources.
            let ask = cli::state::Ask {
                socket: &socket,
                timeout: Duration::from_secs(2),
                local,
            };
            let waiting = cli::state::waiting(&ask);
            if json {
                let mut v = status_json(&status);
                v["waiting"] = cli::state::waiting_json(&waiting);
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print_status(&status);
                cli::state::print_waiting(&waiting);
            }
            Ok(())
        }
        Command::Peers { json, socket } => {
            let socket = socket.unwrap_or_else(default_socket_path);
            let ToClient::Status { status, .. } =
                cli::ask(&socket, ToNode::Status { request: 1 }, cli::WAIT)?
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
            let ToClient::Objects { objects, .. } =
                cli::ask(&socket, ToNode::Objects { request: 1 }, cli::WAIT)?
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
        "labels": labels_json(&p.labels),
    })
}

/// Labels as a JSON object (`{"zone": "eu"}`).
fn labels_json(labels: &[(String, String)]) -> serde_json::Value {
    labels
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Labels as people read them: ` [zone=eu, gpu=a100]`, or nothing.
fn labels_text(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let each: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" [{}]", each.join(", "))
}

fn print_peers(mesh: &shoal_protocol::MeshStatus) {
    println!(
        "mesh      {} as {}{}",
        mesh.mesh,
        mesh.peer_id,
        labels_text(&mesh.labels)
    );
    for a in &mesh.listen_addrs {
        println!("listening {a}");
    }
    println!("peers     {}", mesh.peers.len());
    for p in &mesh.peers {
        println!(
            "  {}{}  {} free of {}, {} queued, {} running, heard {} ms ago{}{}",
            p.peer_id,
            labels_text(&p.labels),
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
    let ids = cli::short_ids(objects.iter().map(|o| o.id.to_hex()), 16);
    for (o, id) in objects.iter().zip(ids) {
        println!(
            "{:<16} {:>12} {:<16} {:>7} {:<12} {}",
            id,
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

fn run_node(args: NodeArgs, config_file: Option<PathBuf>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(file) = &config_file {
        tracing::info!(file = %file.display(), "options from the configuration file (flags and SHOAL_* variables override it)");
    }
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
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(shoal_node::config::default_data_dir);
    let token = if args.no_mesh {
        None
    } else {
        membership_token(args.join.as_deref(), &data_dir)?
    };
    if token.is_none() && !args.no_mesh {
        if !args.listen.is_empty() || !args.peers.is_empty() {
            bail!("joining a mesh needs a credential: `shoal node --join TOKEN` (make a mesh with `shoal mesh init`)");
        }
        tracing::info!("no mesh credential: this node serves this machine only; to make a mesh run `shoal mesh init --mesh NAME`, then `shoal mesh invite`, then `shoal node --join TOKEN`");
    }
    if let Some(token) = token {
        let parse = |s: &String| -> Result<libp2p::Multiaddr> {
            s.parse().with_context(|| format!("not a multiaddr: {s}"))
        };
        let bootstrap: Vec<String> = token.bootstrap.clone();
        let mut net = shoal_node::net::NetConfig::new(token);
        net.state_dir = Some(data_dir.clone());
        if let Some(path) = &args.swarm_key {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the swarm key {}", path.display()))?;
            net.psk = Some(
                text.parse()
                    .map_err(|e| anyhow::anyhow!("the swarm key {}: {e:?}", path.display()))?,
            );
        }
        net.listen = if args.listen.is_empty() {
            vec![parse(&"/ip4/0.0.0.0/tcp/0".to_string())?]
        } else {
            args.listen.iter().map(parse).collect::<Result<_>>()?
        };
        net.peers = args
            .peers
            .iter()
            .chain(&bootstrap)
            .map(parse)
            .collect::<Result<_>>()?;
        net.mdns = !args.no_mdns;
        net.code_shipping = !args.no_code_shipping;
        net.lane = !args.no_lane;
        net.lane_port = args.lane_port;
        net.labels = args.labels.clone();
        net.code_policy.trusted = args.trust_publisher.clone();
        match keyfile::default_public() {
            Ok(Some(own)) if !net.code_policy.trusted.contains(&own) => {
                net.code_policy.trusted.push(own)
            }
            Ok(_) => {}
            // (A service without a home, say: only --trust-publisher keys then.)
            Err(e) => tracing::warn!(error = %e, "not trusting this user's default publisher key"),
        }
        tracing::info!(publishers = ?net.code_policy.trusted.iter().map(auth::hex).collect::<Vec<_>>(), "code from peers runs when signed by these publishers");
        if !(args.failure_timeout > 0.0 && args.failure_timeout.is_finite()) {
            bail!("--failure-timeout must be a positive number of seconds");
        }
        let expiry = Duration::from_secs_f64(args.failure_timeout);
        net.membership = shoal_node::net::membership::MembershipConfig {
            expiry,
            grace: (expiry / 3).min(Duration::from_secs(1)),
        };
        net.swim = args
            .membership
            .then(shoal_node::core::swim::SwimConfig::default);
        // Binaries shipped from peers are kept with the node's identity.
        net.code_cache = Some(data_dir.join("code"));
        config.mesh = Some(shoal_node::config::MeshConfig { data_dir, net });
    }
    if let Some(t) = args.inline_threshold {
        config.inline_threshold = t;
    }
    config.socket_group = args.socket_group;
    if let Some(n) = args.max_clients_per_uid {
        config.clients_per_uid = n;
    }
    if let Some(secs) = args.wait_warning {
        if !(secs > 0.0 && secs.is_finite()) {
            bail!("--wait-warning must be a positive number of seconds");
        }
        config.wait_warning = Duration::from_secs_f64(secs);
    }
    if let Some(n) = args.lineage_bytes {
        config.lineage_bytes = n;
    }
    config.metrics = args.metrics;
    config.dashboard = args.dashboard;
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
        "metrics": s.metrics,
        "dashboard": s.dashboard,
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
            "pulled_count": s.objects.pulled_count,
            "pulled_bytes": s.objects.pulled_bytes,
        },
        "peer_id": s.mesh.as_ref().map(|m| m.peer_id.clone()),
        "mesh": s.mesh.as_ref().map(|m| m.mesh.clone()),
        "labels": s.mesh.as_ref().map(|m| labels_json(&m.labels)),
        "listen_addrs": s.mesh.as_ref().map(|m| m.listen_addrs.clone()).unwrap_or_default(),
        "gossip": s.mesh.as_ref().map(|m| serde_json::json!({"bytes_out": m.gossip_bytes_out, "bytes_in": m.gossip_bytes_in})),
        "membership": s.mesh.as_ref().and_then(|m| m.membership.as_ref()).map(|m| serde_json::json!({
            "kind": "swim", "members_up": m.members_up, "entries": m.entries, "suspected": m.suspected, "incarnation": m.incarnation, "queued": m.queued,
            "local_health": m.local_health, "probes": m.probes, "probes_failed": m.probes_failed,
            "messages_out": m.sent, "bytes_out": m.bytes_out, "messages_in": m.received, "bytes_in": m.bytes_in, "lost": m.lost,
        })),
        "transfers": s.mesh.as_ref().map(|m| m.transfers.iter().map(|t| {
            let (kind, id) = cli::pull::kind_and_id(t.what);
            serde_json::json!({"kind": kind, "id": id, "done": t.done, "total": t.total,
                "peers": t.peers, "elapsed_ms": t.elapsed_ms})
        }).collect::<Vec<_>>()).unwrap_or_default(),
        "peers": s.mesh.as_ref().map(|m| m.peers.iter().map(peer_json).collect::<Vec<_>>()).unwrap_or_default(),
        "actors": s.actors.iter().map(|a| serde_json::json!({
            "actor_id": a.actor_id.to_hex(), "class": a.class, "name": a.name, "state": a.state,
            "incarnation": a.incarnation, "pid": a.pid, "calls_pending": a.calls_pending,
            "calls_done": a.calls_done,
        })).collect::<Vec<_>>(),
        "refused": s.refused.iter().map(|(k, n)| (k.clone(), serde_json::json!(n))).collect::<serde_json::Map<String, serde_json::Value>>(),
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
    if let Some(addr) = &s.dashboard {
        println!("dashboard http://{addr}/");
    }
    if let Some(addr) = &s.metrics {
        println!("metrics   http://{addr}/metrics");
    }
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
        "store     {} B of {} B in memory ({} copies pulled from peers, {} B), {} objects ({} B) spilled to disk; {}",
        s.objects.store_used,
        s.objects.store_capacity,
        s.objects.pulled_count,
        s.objects.pulled_bytes,
        s.objects.spilled_count,
        s.objects.spilled_bytes,
        s.store_dir
    );
    println!("clients   {}", s.clients);
    if !s.refused.is_empty() {
        let refused: Vec<String> = s.refused.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "refused   {} (requests of peers without the right)",
            refused.join(", ")
        );
    }
    println!("workers   {}", s.workers.len());
    let binaries = cli::short_ids(s.workers.iter().map(|w| w.binary.to_hex()), 12);
    for (w, binary) in s.workers.iter().zip(binaries) {
        println!(
            "  #{:<4} pid {:<8} {:<8} {:>8} tasks  binary {}",
            w.id, w.pid, w.state, w.tasks_done, binary
        );
    }
    if let Some(mesh) = &s.mesh {
        if !mesh.transfers.is_empty() {
            println!("pulling   {}", mesh.transfers.len());
            for t in &mesh.transfers {
                println!("  {}", cli::pull::describe(t));
            }
        }
        print_peers(mesh);
    }
    println!("actors    {}", s.actors.len());
    let ids = cli::short_ids(s.actors.iter().map(|a| a.actor_id.to_hex()), 12);
    for (a, id) in s.actors.iter().zip(ids) {
        println!(
            "  {} {:<10} pid {:<8} restarts {:<3} {:>8} calls done, {} pending  {}{}",
            id,
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

/// The join token this node runs with: `--join` (then kept in the data directory), else the
/// one kept there, else none.
fn membership_token(
    join: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<Option<shoal_node::auth::JoinToken>> {
    use shoal_node::auth::JoinToken;
    let kept = data_dir.join(shoal_node::net::CREDENTIAL_FILE);
    if let Some(text) = join {
        let token = JoinToken::from_text(text).context("--join")?;
        write_private(&kept, &format!("{}\n", text.trim()))?;
        return Ok(Some(token));
    }
    match std::fs::read_to_string(&kept) {
        Ok(text) => Ok(Some(
            JoinToken::from_text(&text).with_context(|| format!("{}", kept.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", kept.display())),
    }
}

fn key_path(key: Option<PathBuf>) -> Result<PathBuf> {
    match key {
        Some(k) => Ok(k),
        None => Ok(keyfile::default_key_path()?),
    }
}

fn publisher_command(cmd: PublisherCommand, json: bool) -> Result<()> {
    match cmd {
        PublisherCommand::Init { key } => {
            let path = key_path(key)?;
            let (publisher, made) = keyfile::load_or_create(&path)?;
            let public = auth::hex(&publisher.public());
            if json {
                let v = serde_json::json!({"key_file": path, "public_key": public, "made": made});
                println!("{v}");
                return Ok(());
            }
            let what = if made { "Made" } else { "Kept the existing" };
            eprintln!("{what} publisher key {}.", path.display());
            println!("{public}");
            eprintln!("Nodes run programs it signs with: shoal node --trust-publisher {public}");
        }
        PublisherCommand::Show { key } => {
            let path = key_path(key)?;
            let public = auth::hex(&keyfile::read_key(&path)?.public());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key_file": path, "public_key": public})
                );
            } else {
                println!("{public}");
            }
        }
    }
    Ok(())
}

fn sign(
    binary: &std::path::Path,
    key: Option<PathBuf>,
    target: Option<String>,
    json: bool,
) -> Result<()> {
    let path = key_path(key)?;
    let publisher = keyfile::read_key(&path)
        .with_context(|| "no publisher key: make one with `shoal publisher init`")?;
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let id = *blake3::hash(&bytes).as_bytes();
    let target = target.unwrap_or_else(shoal_node::net::target);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let manifest = publisher.sign(id, &target, now);
    let out = keyfile::write_sidecar(binary, &manifest)?;
    let binary_id = shoal_protocol::BinaryId(id);
    let public = auth::hex(&publisher.public());
    if json {
        let v = serde_json::json!({
            "binary": binary, "blake3": binary_id.to_hex(), "target": target,
            "publisher": public, "manifest": out,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "Signed {} (blake3 {binary_id}, target {target}) as publisher {public}: {}",
        binary.display(),
        out.display()
    );
    Ok(())
}

/// Writes `text` to `path` (made 0600, in a 0700 directory), replacing it atomically.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad duration {s:?}: a number with s, m, h or d"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} is too long"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_authority(path: &std::path::Path) -> Result<shoal_node::auth::Authority> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the authority key {}", path.display()))?;
    shoal_node::auth::Authority::from_text(&text).with_context(|| format!("{}", path.display()))
}

fn mesh_command(cmd: MeshCommand, json: bool) -> Result<()> {
    use shoal_node::auth::{self, Authority, JoinToken, Proof, Role};
    match cmd {
        MeshCommand::Init { mesh, out } => {
            let authority = Authority::generate(&mesh)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{mesh}.authority")));
            if out.exists() {
                bail!("{} exists; not replacing an authority key", out.display());
            }
            write_private(&out, &authority.to_text())?;
            let public = auth::hex(&authority.public());
            if json {
                let v =
                    serde_json::json!({"mesh": mesh, "authority_file": out, "public_key": public});
                println!("{v}");
                return Ok(());
            }
            println!(
                "Made mesh {mesh}: its authority key is {} (public key {public}).",
                out.display(),
            );
            println!("Keep that file offline: whoever has it can admit anyone.");
            println!("Next: a token for the first node, which others bootstrap from:");
            println!("  shoal mesh invite --authority {}", out.display());
            println!("  shoal node --join TOKEN --listen /ip4/0.0.0.0/tcp/7447");
            println!("then a token for the others, naming the first node's address:");
            println!(
                "  shoal mesh invite --authority {} --bootstrap /ip4/ADDR/tcp/7447/p2p/PEER_ID",
                out.display()
            );
            Ok(())
        }
        MeshCommand::Invite {
            authority,
            role,
            expires,
            peer,
            bootstrap,
        } => {
            let authority = read_authority(&authority)?;
            let role: Role = role.parse()?;
            let now = unix_now();
            let until = now + parse_duration(&expires)?;
            for b in &bootstrap {
                b.parse::<libp2p::Multiaddr>()
                    .with_context(|| format!("not a multiaddr: {b}"))?;
            }
            // A minute of slack for clocks that are slightly behind.
            let from = now.saturating_sub(60);
            let mut invite_key = None;
            let proof = match &peer {
                Some(p) => {
                    let peer: libp2p::PeerId =
                        p.parse().with_context(|| format!("not a peer id: {p}"))?;
                    Proof::Credential(authority.credential_for(&peer, role, from, until)?)
                }
                None => {
                    let invite = authority.invite(role, from, until);
                    let key = auth::hex(&invite.public());
                    if !json {
                        eprintln!(
                            "invite key {key} (revoke every node it admitted with `shoal mesh revoke --invite {key}`)"
                        );
                    }
                    invite_key = Some(key);
                    Proof::Invite(Box::new(invite))
                }
            };
            let token = JoinToken {
                trust: authority.trust(),
                bootstrap,
                proof,
            };
            if json {
                let v = serde_json::json!({
                    "token": token.to_text(), "role": role.to_string(), "peer": peer,
                    "invite_key": invite_key, "valid_from": from, "expires_at": until,
                });
                println!("{v}");
            } else {
                println!("{}", token.to_text());
            }
            Ok(())
        }
        MeshCommand::Revoke {
            authority,
            peer,
            invite,
        } => {
            let authority = read_authority(&authority)?;
            let key = match (peer, invite) {
                (Some(p), None) => {
                    let peer: libp2p::PeerId =
                        p.parse().with_context(|| format!("not a peer id: {p}"))?;
                    auth::peer_key(&peer)?
                }
                (None, Some(k)) => auth::parse_hex_key(&k)?,
                _ => bail!("name one of --peer and --invite"),
            };
            let statement = authority.revoke(key, unix_now()).to_text();
            if json {
                let v = serde_json::json!({"statement": statement, "revoked": auth::hex(&key)});
                println!("{v}");
            } else {
                println!("{statement}");
            }
            Ok(())
        }
        MeshCommand::TrustPublisher {
            authority,
            key,
            expires,
        } => {
            let authority = read_authority(&authority)?;
            let key = auth::parse_hex_key(&key)?;
            let now = unix_now();
            let until = now + parse_duration(&expires)?;
            let grant = authority.grant_publisher(key, now, until);
            if json {
                let v = serde_json::json!({
                    "statement": grant.to_text(), "publisher": auth::hex(&key), "expires_at": until,
                });
                println!("{v}");
                return Ok(());
            }
            println!("{}", grant.to_text());
            eprintln!("Hand it to any node of the mesh with `shoal mesh publish`; it spreads to every member.");
            Ok(())
        }
        MeshCommand::Publish {
            revocation,
            data_dir,
        } => {
            let r = auth::Statement::from_text(&revocation)?;
            let dir = data_dir.unwrap_or_else(shoal_node::config::default_data_dir);
            let path = dir.join(shoal_node::net::REVOCATIONS_FILE);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{}", r.to_text())?;
            if json {
                println!("{}", serde_json::json!({"data_dir": dir, "file": path}));
                return Ok(());
            }
            println!(
                "The node of {} applies it within a second and tells its peers.",
                dir.display()
            );
            Ok(())
        }
        MeshCommand::Renew { token, data_dir } => {
            JoinToken::from_text(&token)?;
            let dir = data_dir.unwrap_or_else(shoal_node::config::default_data_dir);
            let file = dir.join(shoal_node::net::CREDENTIAL_FILE);
            write_private(&file, &format!("{}\n", token.trim()))?;
            if json {
                println!("{}", serde_json::json!({"data_dir": dir, "file": file}));
                return Ok(());
            }
            println!(
                "The node of {} takes the new credential within a second.",
                dir.display()
            );
            Ok(())
        }
        MeshCommand::SwarmKey { out } => {
            if out.exists() {
                bail!("{} exists; not replacing a swarm key", out.display());
            }
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .context("reading /dev/urandom")?;
            let key = libp2p::pnet::PreSharedKey::new(bytes);
            write_private(&out, &key.to_key_file())?;
            if json {
                let v =
                    serde_json::json!({"file": out, "fingerprint": key.fingerprint().to_string()});
                println!("{v}");
                return Ok(());
            }
            println!(
                "Wrote {} (fingerprint {}); give it to every peer with --swarm-key.",
                out.display(),
                key.fingerprint()
            );
            Ok(())
        }
        MeshCommand::Id { data_dir } => {
            let dir = data_dir.unwrap_or_else(shoal_node::config::default_data_dir);
            let key = shoal_node::net::load_or_create_identity(&dir)?;
            let peer = key.public().to_peer_id();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"peer_id": peer.to_string(), "data_dir": dir})
                );
            } else {
                println!("{peer}");
            }
            Ok(())
        }
    }
}
