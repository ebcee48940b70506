//! The Shoal node: the daemon behind `shoal node`, also embeddable in a driver process.
//!
//! Layout (see DESIGN.md):
//! - [`core`]: the sans-IO core, [`core::NodeCore`]: processes, tasks, objects, actors, the
//!   scheduler ([`core::sched`]) and spilling to peers, as state machines with plain inputs
//!   and outputs and no I/O.
//! - [`runtime`]: the shell around it: one event loop that owns every socket, process, file
//!   and spawned job, the local Unix socket ([`runtime::api`]), worker processes
//!   ([`runtime::workers`]) and the staged shutdown.
//! - [`store`]: the shared-memory object store (directory of memory-mapped files, capacity).
//! - `net` (feature `mesh`): the one task that owns the libp2p swarm.
//! - [`config`]: the one validated configuration.
//! - `sim` (feature `test-utils`): a deterministic simulator of a whole mesh of cores.
//!
//! ```no_run
//! # async fn run() -> Result<(), shoal_node::NodeError> {
//! let node = shoal_node::start(shoal_node::NodeConfig::default()).await?;
//! println!("node {} on {}", node.node_id(), node.socket().display());
//! node.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[cfg(feature = "mesh")]
pub mod auth;
pub mod config;
pub mod core;
#[cfg(feature = "dashboard")]
pub mod json;
#[cfg(feature = "mesh")]
pub mod net;
pub mod runtime;
#[cfg(feature = "test-utils")]
pub mod sim;
pub mod store;

pub use runtime::{api, workers};

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use config::NodeConfig;
pub use runtime::{ConnId, Event};
use shoal_protocol::{Hello, NodeId, NodeStatus, ToClient, ToNode};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why a node could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store directory could not be made.
    #[error("cannot create the object store under {path}: {source}")]
    Store {
        /// The parent directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// The sandbox for shipped code could not be set up (or would run it as root).
    #[error(transparent)]
    Sandbox(#[from] runtime::sandbox::SandboxError),
    /// The metrics endpoint could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The dashboard endpoint could not be bound.
    #[error("cannot serve the dashboard on {addr}: {source}")]
    Dashboard {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The mesh could not be joined.
    #[cfg(feature = "mesh")]
    #[error(transparent)]
    Net(net::NetError),
}

/// A running node. Cloneable; the node runs until [`NodeHandle::shutdown`].
#[derive(Clone, Debug)]
pub struct NodeHandle {
    events: mpsc::Sender<Event>,
    /// Cancelled to stop the node (ahead of whatever waits in its inbox).
    stop: CancellationToken,
    /// Cancelled once the node has stopped.
    stopped: CancellationToken,
    node_id: NodeId,
    socket: PathBuf,
    store_dir: PathBuf,
    spill_dir: PathBuf,
}

/// Starts a node on the current tokio runtime: binds the socket, makes the store, and spawns
/// the core and the accept loop.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    config.validate()?;
    let node_id = NodeId(random_bytes());
    let group = match &config.socket_group {
        Some(name) => Some(
            runtime::access::resolve_group(name)
                .map_err(|e| config::ConfigError::Invalid(format!("socket group: {e}")))?,
        ),
        None => None,
    };
    let listener = api::bind(&config.socket, group)
        .await
        .map_err(|source| NodeError::Bind {
            path: config.socket.clone(),
            source,
        })?;
    // Bound before the node reports itself started: a bad address is an error at start.
    let metrics = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let dashboard = match config.dashboard {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Dashboard { addr, source })?,
        ),
        None => None,
    };
    let mut files = store::StoreFiles::open_shared(
        &config.store_parent,
        &config.spill_parent,
        node_id,
        config.store_bytes,
        group,
    )
    .map_err(|source| NodeError::Store {
        path: config.store_parent.clone(),
        source,
    })?;
    let sched = core::sched::Scheduler::new(core::sched::SchedConfig {
        total: config.total_resources(),
        max_workers: config.max_workers,
        pipeline_depth: config.pipeline_depth,
        short_task: Duration::from_millis(2),
        max_start_failures: 3,
        gpu_devices: config.gpu_devices.clone(),
    });
    let (tx, rx) = mpsc::channel(runtime::EVENT_QUEUE);
    let (stop, stopped) = (CancellationToken::new(), CancellationToken::new());
    let handle = NodeHandle {
        events: tx.clone(),
        stop: stop.clone(),
        stopped: stopped.clone(),
        node_id,
        socket: config.socket.clone(),
        store_dir: files.dir().to_path_buf(),
        spill_dir: files.spill_dir().to_path_buf(),
    };
    tracing::info!(
        node = %node_id,
        socket = %config.socket.display(),
        store = %files.dir().display(),
        store_bytes = config.store_bytes,
        resources = %config.total_resources(),
        embedded = config.embedded,
        "node started"
    );
    #[cfg(feature = "mesh")]
    let net = match &config.mesh {
        Some(mesh) => {
            let key = net::load_or_create_identity(&mesh.data_dir).map_err(NodeError::Net)?;
            let handle = net::start(key, mesh.net.clone())
                .await
                .map_err(NodeError::Net)?;
            tracing::info!(peer = %handle.peer_id(), mesh = %mesh.net.mesh, "joined the mesh");
            Some(handle)
        }
        None => None,
    };
    #[cfg(feature = "mesh")]
    let peer = net.as_ref().and_then(|n| {
        Some(core::PeerConfig {
            me: shoal_protocol::mesh::PeerKey::from_bytes(&n.peer_id().to_bytes())?,
            target: net::target(),
            accepts_code: n.code_shipping(),
            labels: n.labels().to_vec(),
            loads: if n.samples_loads() {
                core::LoadView::sampled()
            } else {
                core::LoadView::Full
            },
        })
    });
    #[cfg(not(feature = "mesh"))]
    let peer: Option<core::PeerConfig> = None;
    // Only a node that takes code from peers runs any: only it needs a sandbox.
    let sandbox = match &peer {
        Some(p) if p.accepts_code => {
            let sandbox = runtime::sandbox::Sandbox::new(&config.sandbox, node_id)?;
            sandbox.grant_store(files.dir());
            // Files 0660 under the worker user's ACL entry, or it would have no effect.
            let mode = files.follow_acl();
            tracing::debug!(mode = format!("{mode:04o}"), "store file mode");
            Some(sandbox)
        }
        _ => None,
    };
    let monitor = runtime::sandbox::MemoryMonitor::new(config.sandbox.memory_threshold);
    let (max_frame, socket) = (config.max_frame, config.socket.clone());
    let limits = api::Limits {
        clients_per_uid: config.clients_per_uid,
        ..api::Limits::default()
    };
    let span = tracing::info_span!("node", node = %node_id);
    let core = core::NodeCore::new(
        std::time::Instant::now(),
        node_id,
        config,
        sched,
        files.dir().to_path_buf(),
        peer,
    );
    let (accept, close) = (CancellationToken::new(), CancellationToken::new());
    #[allow(unused_mut)]
    let mut shell =
        runtime::event_loop::Shell::new(core, files, socket.clone(), accept.clone(), close.clone());
    shell.set_workers(sandbox, monitor, &tx, max_frame);
    if let Some(listener) = metrics {
        match listener.local_addr() {
            Ok(addr) => {
                tracing::info!(%addr, "serving metrics at /metrics");
                shell.set_metrics_addr(addr);
            }
            Err(e) => tracing::warn!(error = %e, "the metrics endpoint has no address"),
        }
        let endpoint = std::sync::Arc::new(runtime::metrics::Endpoint::new(tx.clone()));
        tokio::spawn(
            runtime::http::serve(listener, endpoint, accept.clone(), "metrics")
                .instrument(span.clone()),
        );
    }
    if let Some(listener) = dashboard {
        serve_dashboard(listener, &mut shell, &socket, &accept, &span);
    }
    #[cfg(feature = "mesh")]
    if let Some(net) = net {
        shell.set_net(net, tx.clone());
    }
    tokio::spawn(shell.run(rx, stop, stopped).instrument(span.clone()));
    let access = api::Access::new(group);
    tokio::spawn(
        api::serve(listener, tx, max_frame, access, limits, accept, close).instrument(span),
    );
    Ok(handle)
}

impl NodeHandle {
    /// Its spill directory (objects written to disk when the store is full).
    pub fn spill_dir(&self) -> &std::path::Path {
        &self.spill_dir
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Its local socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// A snapshot of the node.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Status(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Stops the node, in stages: it stops accepting connections, fails what is in flight
    /// with `NodeStopping`, stops its workers, closes its connections, leaves the mesh and
    /// removes its store directory and socket. Returns once all of that is done; a node
    /// that stopped already returns at once.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.stopped.cancelled().await;
    }

    /// Attaches a process living in the node's own address space (an embedded driver),
    /// without a socket. `hello` is checked like a socket handshake's.
    pub async fn connect_local(&self, hello: Hello) -> Result<LocalClient, NodeError> {
        let conn = api::next_conn_id();
        let (tx, rx) = runtime::queue::client_queue();
        self.events
            .send(Event::Connected { conn, hello, tx })
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(LocalClient {
            conn,
            events: self.events.clone(),
            rx,
        })
    }
}

/// An in-process connection to a node.
#[derive(Debug)]
pub struct LocalClient {
    conn: ConnId,
    events: mpsc::Sender<Event>,
    rx: runtime::queue::ClientRx,
}

impl LocalClient {
    /// Sends messages, in order.
    pub async fn send(&self, msgs: Vec<ToNode>) -> Result<(), NodeError> {
        self.sender().send(msgs).await
    }

    /// The next message from the node; `None` once it has stopped.
    pub async fn recv(&mut self) -> Option<ToClient> {
        self.rx.recv().await
    }

    /// A sender for this connection's messages, usable from another task.
    pub fn sender(&self) -> LocalSender {
        LocalSender {
            conn: self.conn,
            events: self.events.clone(),
        }
    }
}

/// The sending half of a [`LocalClient`].
#[derive(Clone, Debug)]
pub struct LocalSender {
    conn: ConnId,
    events: mpsc::Sender<Event>,
}

impl LocalSender {
    /// Sends messages, in order.
    pub async fn send(&self, msgs: Vec<ToNode>) -> Result<(), NodeError> {
        self.events
            .send(Event::Messages {
                conn: self.conn,
                msgs,
            })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Detaches the connection.
    pub async fn close(&self) {
        if self
            .events
            .send(Event::Disconnected { conn: self.conn })
            .await
            .is_err()
        {
            tracing::debug!(
                conn = self.conn,
                "the node stopped before the connection closed"
            );
        }
    }
}

/// Secret random bytes from the OS (for keys): `getrandom`, else `/dev/urandom`.
///
/// # Panics
/// When the OS gives no randomness at all: nothing secret can be made then.
pub fn secret_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most `N - filled` bytes from `filled` on.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    if filled < N {
        use std::io::Read;
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out));
        if let Err(e) = read {
            panic!("no randomness from the OS (getrandom and /dev/urandom failed: {e})");
        }
    }
    out
}

/// Random bytes from the OS (for ids that must be unique, not secret).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: getrandom writes at most `N` bytes into our buffer.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        // Fall back to time and pid; ids only need to be unique, not secret.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ ((std::process::id() as u128) << 64);
        let h = blake3::hash(&seed.to_le_bytes());
        for (i, b) in out.iter_mut().enumerate() {
            *b = h.as_bytes()[i % 32];
        }
    }
    out
}

/// Serves the web dashboard on `listener` (it asks the node on `socket`).
#[cfg(feature = "dashboard")]
fn serve_dashboard(
    listener: tokio::net::TcpListener,
    shell: &mut runtime::event_loop::Shell,
    socket: &std::path::Path,
    stop: &CancellationToken,
    span: &tracing::Span,
) {
    match listener.local_addr() {
        Ok(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the dashboard shows the mesh's tasks and their output to anyone who can reach it: keep it on loopback, or behind something that authenticates");
            }
            tracing::info!(%addr, "serving the dashboard at http://{addr}/");
            shell.set_dashboard_addr(addr);
        }
        Err(e) => tracing::warn!(error = %e, "the dashboard endpoint has no address"),
    }
    let handler = std::sync::Arc::new(runtime::dashboard::Dashboard::new(socket.to_path_buf()));
    tokio::spawn(
        runtime::http::serve(listener, handler, stop.clone(), "dashboard").instrument(span.clone()),
    );
}

/// Without the `dashboard` feature a node serves none.
#[cfg(not(feature = "dashboard"))]
fn serve_dashboard(
    listener: tokio::net::TcpListener,
    _shell: &mut runtime::event_loop::Shell,
    _socket: &std::path::Path,
    _stop: &CancellationToken,
    _span: &tracing::Span,
) {
    tracing::warn!(addr = ?listener.local_addr(), "this build has no dashboard (the `dashboard` feature); not serving one");
}
