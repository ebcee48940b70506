//! Attaching to a node: the daemon on the socket if one answers the handshake, otherwise a
//! node embedded in this process, on the runtime thread.
//!
//! A driver names its executable (hashed with blake3, once) in its `Hello`, so that the node
//! can start workers from it, with a signed manifest of it, so that peers run it: the
//! sidecar `<exe>.shoal-manifest` from `shoal sign` if it matches, else one signed at start
//! with the key file `$SHOAL_PUBLISHER_KEY` names, else with the per-user default key
//! (`$XDG_CONFIG_HOME/shoal/publisher.key`, else `~/.config/shoal/publisher.key`), made on
//! first use. `SHOAL_PUBLISHER_KEY=none` ships it unsigned. A worker names the id the node
//! started it with. An embedded
//! node gets a private socket of its own (its workers connect to it), and joins a mesh when
//! it has a join token (options or `$SHOAL_JOIN`), with an identity made for this process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, OnceLock};

use shoal_node::{NodeConfig, NodeHandle};
use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::{
    BinaryId, BinaryInfo, ClientId, Hello, Role, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::cells::Cells;
use super::outbox::Outbox;
use super::thread::{self, RuntimeThread};
use super::transport::{self, Transport};
use super::work::{self, Work};
use super::{Context, InitOptions, Mode, OPEN};
use crate::error::InitError;

fn random_client_id() -> ClientId {
    ClientId(u64::from_le_bytes(shoal_node::random_bytes()))
}

/// The blake3 id and path of this process's executable (hashed once).
fn this_binary() -> Result<BinaryInfo, InitError> {
    static BIN: OnceLock<Result<BinaryInfo, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = std::env::current_exe().map_err(|e| e.to_string())?;
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        // SAFETY: the executable is not modified while we run it (ETXTBSY).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
        let id = BinaryId(*blake3::hash(&map).as_bytes());
        Ok(BinaryInfo {
            id,
            manifest: manifest(&path, &id)?,
            path: path.display().to_string(),
        })
    })
    .clone()
    .map_err(InitError::Binary)
}

/// The encoded manifest this program ships for its executable (see the module's doc). A key
/// named by `$SHOAL_PUBLISHER_KEY` that cannot be read is an error; a default key that
/// cannot be made is logged, and the program ships unsigned (it still runs on its own node).
#[cfg(feature = "mesh")]
fn manifest(exe: &std::path::Path, id: &BinaryId) -> Result<Option<Vec<u8>>, String> {
    use shoal_node::auth::keyfile;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match keyfile::manifest_for(exe, &id.0, &shoal_node::net::target(), now) {
        Ok(m) => Ok(m.map(|m| m.encode())),
        Err(e) if std::env::var_os(keyfile::PUBLISHER_KEY_ENV).is_some_and(|v| !v.is_empty()) => {
            Err(format!("signing this program: {e}"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot sign this program with the default publisher key; peers will not run it");
            Ok(None)
        }
    }
}

/// Without the mesh, nothing is shipped: no manifest.
#[cfg(not(feature = "mesh"))]
fn manifest(_exe: &std::path::Path, _id: &BinaryId) -> Result<Option<Vec<u8>>, String> {
    Ok(None)
}

/// The binary a worker's tasks run in: the one the node started it from.
fn worker_binary() -> Result<BinaryId, InitError> {
    std::env::var(shoal_protocol::env::BINARY_ID)
        .ok()
        .and_then(|h| BinaryId::from_hex(&h))
        .ok_or_else(|| {
            InitError::Handshake(format!(
                "worker without a valid {}",
                shoal_protocol::env::BINARY_ID
            ))
        })
}

/// Starts the runtime thread, attaches to a node on it, and starts the connection.
pub(super) fn connect(
    mode: Mode,
    worker_id: Option<u64>,
    options: InitOptions,
) -> Result<Arc<Context>, InitError> {
    let client = random_client_id();
    let (binary, binary_id) = match mode {
        Mode::Driver => {
            let b = this_binary()?;
            let id = b.id;
            (Some(b), id)
        }
        Mode::Worker => (None, worker_binary()?),
    };
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: match worker_id {
            Some(worker_id) => Role::Worker { worker_id },
            None => Role::Driver,
        },
        pid: std::process::id(),
        client,
        binary,
    };
    // Dropped on an error below, the thread ends.
    let runtime = RuntimeThread::start()?;
    let Opened {
        transport,
        welcome,
        node,
        socket,
    } = runtime
        .block_on(open_transport(hello, options))
        .ok_or_else(|| InitError::Runtime("runtime thread ended".into()))??;
    let ToClient::Welcome {
        node_id,
        store_dir,
        inline_threshold,
        peer_id,
    } = welcome
    else {
        if let Some(node) = node {
            runtime.block_on(async move { node.shutdown().await });
        }
        return Err(InitError::Handshake("expected Welcome".into()));
    };
    let (work_tx, work_rx) = mpsc::channel(work::QUEUE);
    let embedded = node.is_some();
    let ctx = Arc::new(Context {
        client,
        mode,
        binary: binary_id,
        node_id,
        peer_id,
        store_dir: PathBuf::from(store_dir),
        inline_threshold: inline_threshold as usize,
        socket,
        embedded,
        node: Mutex::new(node),
        task_seq: AtomicU64::new(1),
        task_key: shoal_protocol::TaskKey::from_bytes(shoal_node::secret_bytes()),
        request_seq: AtomicU64::new(1),
        outbox: Outbox::default(),
        cells: Cells::default(),
        requests: Mutex::default(),
        link: AtomicU8::new(OPEN),
        work: Work::new(work_rx),
        thread: runtime,
        logs: Default::default(),
    });
    if mode == Mode::Driver {
        thread::flush_logs_at_exit();
    }
    if embedded {
        thread::stop_at_exit();
    }
    ctx.thread
        .start_transport(transport::run(ctx.clone(), transport, work_tx));
    tracing::debug!(node = %node_id, client = %client, ?mode, "attached to node");
    Ok(ctx)
}

/// A connection after the handshake, the node's answer, the embedded node (if one was
/// started) and the node's socket.
struct Opened {
    transport: Transport,
    welcome: ToClient,
    node: Option<NodeHandle>,
    socket: PathBuf,
}

/// The connection a sandboxed worker inherited from its node (`$SHOAL_SOCKET_FD`), if any.
fn inherited_socket(socket: &std::path::Path) -> Result<Option<UnixStream>, InitError> {
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var_os(shoal_protocol::env::SOCKET_FD) else {
        return Ok(None);
    };
    let bad = |m: String| InitError::Connect(socket.to_path_buf(), std::io::Error::other(m));
    let fd: i32 = fd
        .to_str()
        .and_then(|f| f.parse().ok())
        .filter(|f| *f > 2)
        .ok_or_else(|| bad(format!("bad {} {fd:?}", shoal_protocol::env::SOCKET_FD)))?;
    // SAFETY: the node left this descriptor open for us, a connected Unix socket, and
    // nothing else in this process owns it (it is read from the environment once, at start).
    let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    // Not for the programs a task may start.
    // SAFETY: fcntl on the descriptor this stream now owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(InitError::Connect(
            socket.to_path_buf(),
            std::io::Error::last_os_error(),
        ));
    }
    std.set_nonblocking(true)
        .map_err(|e| InitError::Connect(socket.to_path_buf(), e))?;
    UnixStream::from_std(std)
        .map(Some)
        .map_err(|e| InitError::Connect(socket.to_path_buf(), e))
}

/// Says hello on `stream` and reads the node's answer.
async fn handshake(
    mut stream: UnixStream,
    hello: Hello,
    socket: PathBuf,
) -> Result<Opened, InitError> {
    let mut out = Vec::new();
    frame::encode_frame(&mut out, &ToNode::Hello(hello), frame::DEFAULT_MAX_FRAME)
        .map_err(|e| InitError::Handshake(e.to_string()))?;
    // A node that refuses us may close before taking the Hello: its reason is still there
    // to read.
    let written = stream.write_all(&out).await;
    let mut frames = FrameDecoder::new(frame::DEFAULT_MAX_FRAME);
    let welcome = match (read_one(&mut stream, &mut frames).await, written) {
        (Ok(msg), _) => msg,
        (Err(_), Err(e)) => return Err(InitError::Connect(socket, e)),
        (Err(e), Ok(())) => return Err(e),
    };
    match welcome {
        ToClient::Rejected { reason } => Err(InitError::Handshake(reason)),
        welcome => Ok(Opened {
            transport: Transport::Socket(stream, frames),
            welcome,
            node: None,
            socket,
        }),
    }
}

async fn open_transport(hello: Hello, options: InitOptions) -> Result<Opened, InitError> {
    let socket = options
        .socket
        .clone()
        .unwrap_or_else(shoal_node::config::default_socket_path);
    if let Some(stream) = inherited_socket(&socket)? {
        return handshake(stream, hello, socket).await;
    }
    check_default_socket_dir(&options)?;
    if !options.force_embedded {
        match UnixStream::connect(&socket).await {
            Ok(stream) => return handshake(stream, hello, socket).await,
            Err(e) if options.require_daemon => return Err(InitError::Connect(socket, e)),
            Err(_) => {}
        }
    }
    // No daemon: run a node in this process, on this runtime. Its own log goes to stderr
    // as RUST_LOG says (nothing without it), unless the program set a subscriber itself.
    if std::env::var_os("RUST_LOG").is_some() {
        let installed = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init();
        if installed.is_err() {
            tracing::debug!("the program set its own log subscriber; the node logs through it");
        }
    }
    let mut config = NodeConfig {
        socket: shoal_node::config::user_runtime_dir().join(format!(
            "embedded-{}-{:08x}.sock",
            std::process::id(),
            hello.client.0 as u32
        )),
        embedded: true,
        ..NodeConfig::default()
    };
    if let Some(c) = options.cpus {
        config.cpus = c;
        config.max_workers = ((c.ceil() as usize) * 4).max(8);
    }
    config.resources = options.resources.clone();
    if let Some(b) = options.store_bytes {
        config.store_bytes = b;
    }
    if let Some(d) = &options.spill_dir {
        config.spill_parent = d.clone();
    }
    #[cfg(feature = "mesh")]
    {
        config.mesh = embedded_mesh(&options, hello.client)?;
    }
    if let Some(t) = options.inline_threshold {
        config.inline_threshold = t;
    }
    config.metrics = match options.metrics {
        Some(addr) => Some(addr),
        None => match std::env::var("SHOAL_METRICS") {
            Ok(s) if !s.is_empty() => Some(s.parse().map_err(|e| {
                InitError::Embedded(format!("$SHOAL_METRICS is not an address ({s}): {e}"))
            })?),
            _ => None,
        },
    };
    let node = shoal_node::start(config)
        .await
        .map_err(|e| InitError::Embedded(e.to_string()))?;
    match attach_local(&node, hello).await {
        Ok((transport, welcome)) => {
            let socket = node.socket().to_path_buf();
            Ok(Opened {
                transport,
                welcome,
                node: Some(node),
                socket,
            })
        }
        Err(e) => {
            node.shutdown().await;
            Err(e)
        }
    }
}

/// Refuses the per-user runtime directory when another user could have planted a socket in
/// it (it is not this user's or root's, or others may write to it): the node on such a
/// socket would learn this program's path and arguments. A socket named by the program or by
/// `$SHOAL_SOCKET` is the user's own choice and is not checked.
fn check_default_socket_dir(options: &InitOptions) -> Result<(), InitError> {
    let named = options.socket.is_some()
        || std::env::var_os(shoal_protocol::env::SOCKET).is_some_and(|s| !s.is_empty());
    if named {
        return Ok(());
    }
    let dir = shoal_node::config::user_runtime_dir();
    shoal_node::runtime::access::check_socket_dir(&dir).map_err(|e| {
        tracing::error!(error = %e, "not attaching through an unsafe socket directory");
        InitError::SocketDir(e.to_string())
    })
}

/// The handshake with an embedded node.
async fn attach_local(node: &NodeHandle, hello: Hello) -> Result<(Transport, ToClient), InitError> {
    let mut local = node
        .connect_local(hello)
        .await
        .map_err(|e| InitError::Embedded(e.to_string()))?;
    let welcome = local
        .recv()
        .await
        .ok_or_else(|| InitError::Handshake("embedded node closed".into()))?;
    if let ToClient::Rejected { reason } = welcome {
        return Err(InitError::Handshake(reason));
    }
    Ok((Transport::Local(local), welcome))
}

/// Where an embedded mesh peer keeps its identity (see `embedded_mesh`).
fn peer_dir(client: ClientId) -> PathBuf {
    shoal_node::config::user_runtime_dir().join(format!(
        "embedded-{}-{:08x}.peer",
        std::process::id(),
        client.0 as u32
    ))
}

/// Removes an embedded mesh peer's identity: it was made for this process alone.
pub(super) fn remove_peer_dir(client: ClientId) {
    let dir = peer_dir(client);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the peer's identity")
        }
    }
}

/// The mesh an embedded node joins, if it has a join token (options or `$SHOAL_JOIN`). Its
/// identity is new for each process (an invite token certifies it).
#[cfg(feature = "mesh")]
fn embedded_mesh(
    options: &InitOptions,
    client: ClientId,
) -> Result<Option<shoal_node::config::MeshConfig>, InitError> {
    let mut peers = options.peers.clone();
    if peers.is_empty() {
        if let Ok(list) = std::env::var("SHOAL_PEERS") {
            peers = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
    }
    let token = options
        .join
        .clone()
        .or_else(|| std::env::var("SHOAL_JOIN").ok().filter(|t| !t.is_empty()));
    let Some(token) = token else {
        if !peers.is_empty() {
            return Err(InitError::Embedded(
                "joining a mesh needs a credential: a join token (InitOptions::join or $SHOAL_JOIN, from `shoal mesh invite`)".into(),
            ));
        }
        return Ok(None);
    };
    let token = shoal_node::auth::JoinToken::from_text(&token)
        .map_err(|e| InitError::Embedded(format!("join token: {e}")))?;
    peers.extend(token.bootstrap.iter().cloned());
    let mut net = shoal_node::net::NetConfig::new(token);
    net.mdns = false;
    // As `shoal node`: code from peers runs when signed with this user's default key.
    match shoal_node::auth::keyfile::default_public() {
        Ok(own) => net.code_policy.trusted.extend(own),
        Err(e) => tracing::warn!(error = %e, "no default publisher key to trust"),
    }
    let parse = |s: &str| {
        s.parse()
            .map_err(|e| InitError::Embedded(format!("not a multiaddr: {s}: {e}")))
    };
    net.listen = vec![parse("/ip4/0.0.0.0/tcp/0")?];
    net.peers = peers.iter().map(|p| parse(p)).collect::<Result<_, _>>()?;
    Ok(Some(shoal_node::config::MeshConfig {
        data_dir: peer_dir(client),
        net,
    }))
}

/// Reads the first message; whatever followed it stays in `frames`.
async fn read_one(
    stream: &mut UnixStream,
    frames: &mut FrameDecoder,
) -> Result<ToClient, InitError> {
    loop {
        if let Some(msg) = frames
            .next_message::<ToClient>()
            .map_err(|e| InitError::Handshake(e.to_string()))?
        {
            return Ok(msg);
        }
        let n = stream
            .read_buf(frames.input())
            .await
            .map_err(|e| InitError::Handshake(e.to_string()))?;
        if n == 0 {
            return Err(InitError::Handshake("node closed the connection".into()));
        }
    }
}
