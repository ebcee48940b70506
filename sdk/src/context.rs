//! The process-wide connection to a node: the outbox, the table of objects this process
//! knows, and the I/O thread that moves messages.
//!
//! One thread (`shoal-runtime`) runs a single-threaded tokio runtime with the connection's
//! reader and writer — and, when no daemon was reachable, the embedded node itself, so that
//! messages between this process and its node never cross a thread. User threads never run
//! on it: they push messages into the outbox (a mutex-guarded vector the writer swaps out, so
//! many messages cost one wake-up and one write) and wait on object cells.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::Duration;

use shoal_node::{LocalClient, NodeConfig, NodeHandle};
use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::{
    BinaryId, BinaryInfo, ClientId, CreateOutcome, Hello, NodeId, NodeStatus, ObjectId,
    ObjectValue, Role, StoreError, TaskError, ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

use crate::error::{GetError, InitError};

/// What a worker is handed: a task (or an actor's method call), or an actor to become.
#[derive(Debug)]
pub(crate) enum WorkItem {
    Task(shoal_protocol::ExecTask),
    HostActor(shoal_protocol::HostActor),
}

/// Ids merged into one `Release` or `Hold` at most (a frame stays far below its limit).
const MERGE_LIMIT: usize = 64 * 1024;

/// Messages queued before pushing threads wait for the writer.
const OUTBOX_LIMIT: usize = 1 << 16;

/// A value this process can read: the bytes, or where they are in the store (mapped when
/// read, and unmapped after, so that the node may spill what no one is reading).
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Inline(Arc<Vec<u8>>),
    Shared(shoal_protocol::SharedObject),
}

#[derive(Debug)]
enum CellState {
    Pending,
    Ready(Value),
    Failed(GetError),
}

#[derive(Debug)]
struct Cell {
    state: CellState,
    /// Live `ObjectRef` handles in this process.
    refs: usize,
    /// A `Get` went to the node.
    requested: bool,
    wakers: Vec<Waker>,
}

/// Whether this process is a driver or a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A user program.
    Driver,
    /// A worker started by a node.
    Worker,
}

struct Outbox {
    queue: Vec<ToNode>,
    closed: bool,
}

/// Everything the SDK knows in this process.
pub struct Context {
    pub(crate) client: ClientId,
    pub(crate) mode: Mode,
    pub(crate) binary: BinaryId,
    node_id: NodeId,
    peer_id: Option<String>,
    store_dir: PathBuf,
    pub(crate) inline_threshold: usize,
    embedded: Option<NodeHandle>,
    socket: PathBuf,
    task_seq: AtomicU64,
    request_seq: AtomicU64,
    outbox: Mutex<Outbox>,
    outbox_space: Condvar,
    wake_writer: Notify,
    cells: Mutex<shoal_protocol::IdMap<ObjectId, Cell>>,
    cells_changed: Condvar,
    requests: Mutex<HashMap<u64, std::sync::mpsc::SyncSender<ToClient>>>,
    disconnected: AtomicBool,
    rt: tokio::runtime::Handle,
    /// Tasks handed to this worker (worker mode only).
    pub(crate) exec_rx: Mutex<Option<mpsc::Receiver<WorkItem>>>,
    /// Set while a worker runs a task, so waits inside it can report `Blocked`.
    pub(crate) in_task: AtomicBool,
    /// Set while the running task waits: tasks arriving meanwhile are handed back.
    exec_gate: Mutex<bool>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("client", &self.client)
            .field("mode", &self.mode)
            .field("node_id", &self.node_id)
            .field("embedded", &self.embedded.is_some())
            .finish()
    }
}

static CONTEXT: OnceLock<Arc<Context>> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// How to find or make a node.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// The node socket to try [default: `$SHOAL_SOCKET` or the per-user default].
    pub socket: Option<PathBuf>,
    /// Never start an embedded node: fail if no node is reachable.
    pub require_daemon: bool,
    /// Never connect to a daemon: always start an embedded node.
    pub force_embedded: bool,
    /// CPU slots of an embedded node [default: the number of cores].
    pub cpus: Option<f64>,
    /// Custom resources of an embedded node.
    pub resources: Vec<(String, f64)>,
    /// Store capacity of an embedded node in bytes.
    pub store_bytes: Option<u64>,
    /// Where an embedded node spills objects when its store is full.
    pub spill_dir: Option<PathBuf>,
    /// Mesh peers an embedded node bootstraps from (multiaddrs ending in `/p2p/<id>`): with
    /// any, the embedded node joins their mesh as a full peer. [default: `$SHOAL_PEERS`,
    /// comma-separated]
    pub peers: Vec<String>,
    /// The mesh an embedded node joins [default: `$SHOAL_MESH`, else "default"].
    pub mesh: Option<String>,
    /// Inline threshold of an embedded node in bytes.
    pub inline_threshold: Option<u64>,
}

/// The context, initialising with defaults on first use.
pub(crate) fn get() -> &'static Arc<Context> {
    if let Some(c) = CONTEXT.get() {
        return c;
    }
    match init(InitOptions::default()) {
        Ok(_) => CONTEXT.get().expect("context set by init"),
        Err(e) => panic!("shoal: cannot attach to a node: {e}"),
    }
}

/// The context if it exists.
pub(crate) fn try_get() -> Option<&'static Arc<Context>> {
    CONTEXT.get()
}

pub(crate) fn init(options: InitOptions) -> Result<&'static Arc<Context>, InitError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = CONTEXT.get() {
        return Ok(c);
    }
    if std::env::var_os(shoal_protocol::env::WORKER_ID).is_some() && !crate::worker::in_worker() {
        return Err(InitError::NotWorkerMode);
    }
    let ctx = connect(Mode::Driver, None, options)?;
    let _ = CONTEXT.set(ctx);
    Ok(CONTEXT.get().expect("just set"))
}

/// Worker mode: connect to the node that started us.
pub(crate) fn init_worker(
    worker_id: u64,
    socket: PathBuf,
) -> Result<&'static Arc<Context>, InitError> {
    let options = InitOptions {
        socket: Some(socket),
        require_daemon: true,
        ..Default::default()
    };
    let ctx = connect(Mode::Worker, Some(worker_id), options)?;
    let _ = CONTEXT.set(ctx);
    Ok(CONTEXT.get().expect("just set"))
}

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
            path: path.display().to_string(),
        })
    })
    .clone()
    .map_err(InitError::Binary)
}

enum Transport {
    /// The stream, and the frames read past the handshake.
    Socket(UnixStream, FrameDecoder),
    Local(LocalClient),
}

fn connect(
    mode: Mode,
    worker_id: Option<u64>,
    options: InitOptions,
) -> Result<Arc<Context>, InitError> {
    let client = random_client_id();
    let binary = match mode {
        Mode::Driver => Some(this_binary()?),
        Mode::Worker => None,
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
        binary: binary.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| InitError::Runtime(e.to_string()))?;
    let handle = rt.handle().clone();
    // The runtime thread runs until the process exits.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (park_tx, park_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("shoal-runtime".into())
        .spawn(move || {
            rt.block_on(async move {
                let _ = park_rx.await;
            })
        })
        .map_err(|e| InitError::Runtime(e.to_string()))?;
    std::mem::forget(park_tx);
    let opts = options.clone();
    handle.spawn(async move {
        let r = open_transport(hello, opts).await;
        let _ = ready_tx.send(r);
    });
    let (transport, welcome, embedded, socket) = ready_rx
        .recv()
        .map_err(|_| InitError::Runtime("runtime thread ended".into()))??;
    let ToClient::Welcome {
        node_id,
        store_dir,
        inline_threshold,
        peer_id,
    } = welcome
    else {
        return Err(InitError::Handshake("expected Welcome".into()));
    };
    let bin_id = match binary {
        Some(b) => b.id,
        None => std::env::var(shoal_protocol::env::BINARY_ID)
            .ok()
            .and_then(|h| BinaryId::from_hex(&h))
            .ok_or_else(|| {
                InitError::Handshake(format!(
                    "worker without a valid {}",
                    shoal_protocol::env::BINARY_ID
                ))
            })?,
    };
    let (exec_tx, exec_rx) = mpsc::channel(4096);
    let ctx = Arc::new(Context {
        client,
        mode,
        binary: bin_id,
        node_id,
        peer_id,
        store_dir: PathBuf::from(store_dir),
        inline_threshold: inline_threshold as usize,
        embedded,
        socket,
        task_seq: AtomicU64::new(1),
        request_seq: AtomicU64::new(1),
        outbox: Mutex::new(Outbox {
            queue: Vec::new(),
            closed: false,
        }),
        outbox_space: Condvar::new(),
        wake_writer: Notify::new(),
        cells: Mutex::new(Default::default()),
        cells_changed: Condvar::new(),
        requests: Mutex::new(HashMap::new()),
        disconnected: AtomicBool::new(false),
        rt: handle.clone(),
        exec_rx: Mutex::new(Some(exec_rx)),
        in_task: AtomicBool::new(false),
        exec_gate: Mutex::new(false),
    });
    if ctx.embedded.is_some() {
        register_exit_cleanup(&ctx);
    }
    handle.spawn(run_transport(ctx.clone(), transport, exec_tx));
    tracing::debug!(node = %node_id, client = %client, ?mode, "attached to node");
    Ok(ctx)
}

type Opened = (Transport, ToClient, Option<NodeHandle>, PathBuf);

async fn open_transport(hello: Hello, options: InitOptions) -> Result<Opened, InitError> {
    let socket = options
        .socket
        .clone()
        .unwrap_or_else(shoal_node::config::default_socket_path);
    if !options.force_embedded {
        match UnixStream::connect(&socket).await {
            Ok(mut stream) => {
                let mut out = Vec::new();
                frame::encode_frame(&mut out, &ToNode::Hello(hello), frame::DEFAULT_MAX_FRAME)
                    .map_err(|e| InitError::Handshake(e.to_string()))?;
                stream
                    .write_all(&out)
                    .await
                    .map_err(|e| InitError::Connect(socket.clone(), e))?;
                let mut frames = FrameDecoder::new(frame::DEFAULT_MAX_FRAME);
                let welcome = read_one(&mut stream, &mut frames).await?;
                return match welcome {
                    ToClient::Rejected { reason } => Err(InitError::Handshake(reason)),
                    w => Ok((Transport::Socket(stream, frames), w, None, socket)),
                };
            }
            Err(e) if options.require_daemon => return Err(InitError::Connect(socket, e)),
            Err(_) => {}
        }
    }
    // No daemon: run a node in this process, on this runtime.
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
    let node = shoal_node::start(config)
        .await
        .map_err(|e| InitError::Embedded(e.to_string()))?;
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
    let socket = node.socket().to_path_buf();
    Ok((Transport::Local(local), welcome, Some(node), socket))
}

/// The mesh an embedded node joins, if peers were given (options or `$SHOAL_PEERS`). Its
/// identity is new for each process.
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
    if peers.is_empty() {
        return Ok(None);
    }
    let mesh = options
        .mesh
        .clone()
        .or_else(|| std::env::var("SHOAL_MESH").ok())
        .unwrap_or_else(|| "default".to_string());
    let mut net = shoal_node::net::NetConfig::new(&mesh);
    net.mdns = false;
    let parse = |s: &str| {
        s.parse()
            .map_err(|e| InitError::Embedded(format!("not a multiaddr: {s}: {e}")))
    };
    net.listen = vec![parse("/ip4/0.0.0.0/tcp/0")?];
    net.peers = peers.iter().map(|p| parse(p)).collect::<Result<_, _>>()?;
    let data_dir = shoal_node::config::user_runtime_dir().join(format!(
        "embedded-{}-{:08x}.peer",
        std::process::id(),
        client.0 as u32
    ));
    Ok(Some(shoal_node::config::MeshConfig { data_dir, net }))
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

async fn run_transport(ctx: Arc<Context>, transport: Transport, exec_tx: mpsc::Sender<WorkItem>) {
    let dctx = ctx.clone();
    match transport {
        Transport::Socket(stream, mut frames) => {
            let (mut rd, mut wr) = stream.into_split();
            let wctx = ctx.clone();
            let writer = async move {
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
                    let Some(batch) = wctx.next_batch().await else {
                        break;
                    };
                    for m in &batch {
                        if let Err(e) = frame::encode_frame(&mut buf, m, frame::DEFAULT_MAX_FRAME) {
                            tracing::error!(error = %e, "cannot encode a message; dropped");
                        }
                    }
                    if wr.write_all(&buf).await.is_err() {
                        break;
                    }
                    buf.clear();
                }
            };
            let rctx = ctx.clone();
            let reader = async move {
                loop {
                    loop {
                        match frames.next_message::<ToClient>() {
                            Ok(Some(msg)) => rctx.dispatch(msg, &exec_tx).await,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::error!(error = %e, "bad frame from node");
                                return;
                            }
                        }
                    }
                    match rd.read_buf(frames.input()).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                _ = writer => {}
                _ = reader => {}
            }
        }
        Transport::Local(mut local) => {
            let sender = local.sender();
            let wctx = ctx.clone();
            let writer = async move {
                while let Some(batch) = wctx.next_batch().await {
                    if sender.send(batch).await.is_err() {
                        break;
                    }
                }
            };
            let reader = async move {
                while let Some(msg) = local.recv().await {
                    ctx.dispatch(msg, &exec_tx).await;
                }
            };
            tokio::select! {
                _ = writer => {}
                _ = reader => {}
            }
        }
    }
    dctx.on_disconnect();
}

fn register_exit_cleanup(ctx: &Arc<Context>) {
    static PATHS: OnceLock<(PathBuf, PathBuf, Option<PathBuf>, PathBuf)> = OnceLock::new();
    extern "C" fn cleanup() {
        if let Some((store, socket, spill, peer)) = PATHS.get() {
            let _ = std::fs::remove_dir_all(store);
            let _ = std::fs::remove_file(socket);
            if let Some(spill) = spill {
                let _ = std::fs::remove_dir_all(spill);
            }
            let _ = std::fs::remove_dir_all(peer);
        }
    }
    let spill = ctx.embedded.as_ref().map(|n| n.spill_dir().to_path_buf());
    // An embedded mesh peer's identity (see `embedded_mesh`).
    let peer = shoal_node::config::user_runtime_dir().join(format!(
        "embedded-{}-{:08x}.peer",
        std::process::id(),
        ctx.client.0 as u32
    ));
    if PATHS
        .set((ctx.store_dir.clone(), ctx.socket.clone(), spill, peer))
        .is_ok()
    {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(cleanup);
        }
    }
}

/// Waits for one object cell: used by both the async and the blocking get.
pub(crate) struct ReadyFuture<'a> {
    ctx: &'a Context,
    id: ObjectId,
    blocked: bool,
}

impl Future for ReadyFuture<'_> {
    type Output = Result<Value, GetError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
        let r = self.ctx.poll_cell(self.id, Some(cx.waker()));
        match r {
            Poll::Pending if !self.blocked => {
                self.blocked = self.ctx.report_blocked();
                Poll::Pending
            }
            other => other,
        }
    }
}

impl Drop for ReadyFuture<'_> {
    fn drop(&mut self) {
        if self.blocked {
            self.ctx.report_unblocked();
        }
    }
}

impl Context {
    /// The node this process is attached to.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether the node runs inside this process.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// The node's peer id in its mesh, if it is a peer of one.
    pub fn peer_id(&self) -> Option<&str> {
        self.peer_id.as_deref()
    }

    /// The node's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    pub(crate) fn next_task_seq(&self) -> u64 {
        self.task_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a message for the node.
    pub(crate) fn push(&self, msg: ToNode) {
        let mut ob = self.lock_outbox();
        while ob.queue.len() >= OUTBOX_LIMIT && !ob.closed {
            ob = self
                .outbox_space
                .wait(ob)
                .unwrap_or_else(|e| e.into_inner());
        }
        if ob.closed {
            return;
        }
        let was_empty = ob.queue.is_empty();
        // Consecutive releases (or holds) travel as one message, up to a bound.
        match (&msg, ob.queue.last_mut()) {
            (ToNode::Release { ids: new }, Some(ToNode::Release { ids }))
            | (ToNode::Hold { ids: new }, Some(ToNode::Hold { ids }))
                if ids.len() < MERGE_LIMIT =>
            {
                ids.extend_from_slice(new);
                return;
            }
            _ => {}
        }
        ob.queue.push(msg);
        drop(ob);
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    fn lock_outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn next_batch(&self) -> Option<Vec<ToNode>> {
        loop {
            {
                let mut ob = self.lock_outbox();
                if !ob.queue.is_empty() {
                    let batch = std::mem::take(&mut ob.queue);
                    drop(ob);
                    self.outbox_space.notify_all();
                    return Some(batch);
                }
                if ob.closed {
                    return None;
                }
            }
            self.wake_writer.notified().await;
        }
    }

    fn lock_cells(&self) -> MutexGuard<'_, shoal_protocol::IdMap<ObjectId, Cell>> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request and waits (blocking this thread) for its answer.
    pub(crate) fn request(&self, make: impl FnOnce(u64) -> ToNode) -> Result<ToClient, GetError> {
        let request = self.request_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, tx);
        if self.disconnected.load(Ordering::Acquire) {
            return Err(GetError::Disconnected);
        }
        self.push(make(request));
        rx.recv().map_err(|_| GetError::Disconnected)
    }

    /// Reserves room for a large object. `Ok(false)`: it already exists, do not write.
    pub(crate) fn create(&self, id: ObjectId, size: u64) -> Result<bool, StoreError> {
        match self.request(|request| ToNode::Create { request, id, size }) {
            Ok(ToClient::Created { result, .. }) => result.map(|o| o == CreateOutcome::Write),
            Ok(other) => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
            Err(e) => Err(StoreError::Io(e.to_string())),
        }
    }

    /// The live actor of this name, if any.
    pub(crate) fn lookup_actor(
        &self,
        name: &str,
    ) -> Result<Option<shoal_protocol::ActorInfo>, GetError> {
        match self.request(|request| ToNode::LookupActor {
            request,
            name: name.to_string(),
        })? {
            ToClient::ActorFound { actor, .. } => Ok(actor),
            _ => Err(GetError::Disconnected),
        }
    }

    /// The node's objects.
    pub(crate) fn objects(&self) -> Result<Vec<shoal_protocol::ObjectInfo>, GetError> {
        match self.request(|request| ToNode::Objects { request })? {
            ToClient::Objects { objects, .. } => Ok(objects),
            _ => Err(GetError::Disconnected),
        }
    }

    /// The node's status.
    pub(crate) fn status(&self) -> Result<NodeStatus, GetError> {
        match self.request(|request| ToNode::Status { request })? {
            ToClient::Status { status, .. } => Ok(*status),
            _ => Err(GetError::Disconnected),
        }
    }

    async fn dispatch(&self, msg: ToClient, exec_tx: &mpsc::Sender<WorkItem>) {
        match msg {
            ToClient::Object { id, value } => self.resolve(id, value),
            ToClient::Execute(task) => {
                let gate = self.exec_gate.lock().unwrap_or_else(|e| e.into_inner());
                if *gate {
                    drop(gate);
                    self.push(ToNode::Returned {
                        tasks: vec![task.task_id],
                    });
                    return;
                }
                if let Err(e) = exec_tx.try_send(WorkItem::Task(task)) {
                    drop(gate);
                    let item = match e {
                        mpsc::error::TrySendError::Full(t)
                        | mpsc::error::TrySendError::Closed(t) => t,
                    };
                    if let WorkItem::Task(task) = item {
                        self.push(ToNode::Returned {
                            tasks: vec![task.task_id],
                        });
                    }
                }
            }
            ToClient::HostActor(host) => {
                // The node sends an actor's calls only after this, and never more than the
                // queue holds; waiting here keeps them in order behind it.
                if exec_tx.send(WorkItem::HostActor(host)).await.is_err() {
                    tracing::error!("worker loop gone; cannot host the actor");
                }
            }
            ToClient::Created { request, .. }
            | ToClient::Status { request, .. }
            | ToClient::Objects { request, .. }
            | ToClient::ActorFound { request, .. } => {
                let tx = self
                    .requests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&request);
                if let Some(tx) = tx {
                    let _ = tx.try_send(msg);
                }
            }
            ToClient::Rejected { reason } => {
                tracing::error!(%reason, "the node closed our connection");
            }
            ToClient::Welcome { .. } => {}
        }
    }

    fn resolve(&self, id: ObjectId, value: ObjectValue) {
        let state = match value {
            ObjectValue::Inline(v) => CellState::Ready(Value::Inline(Arc::new(v))),
            ObjectValue::Shared(obj) => CellState::Ready(Value::Shared(obj)),
            ObjectValue::Error(e) => CellState::Failed(GetError::Task(e)),
        };
        let wakers = {
            let mut cells = self.lock_cells();
            let Some(cell) = cells.get_mut(&id) else {
                return;
            };
            cell.state = state;
            std::mem::take(&mut cell.wakers)
        };
        self.cells_changed.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    fn on_disconnect(&self) {
        self.disconnected.store(true, Ordering::Release);
        {
            let mut ob = self.lock_outbox();
            ob.closed = true;
            ob.queue.clear();
        }
        self.outbox_space.notify_all();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let mut wakers = Vec::new();
        {
            let mut cells = self.lock_cells();
            for cell in cells.values_mut() {
                if matches!(cell.state, CellState::Pending) {
                    cell.state = CellState::Failed(GetError::Disconnected);
                    wakers.append(&mut cell.wakers);
                }
            }
        }
        self.cells_changed.notify_all();
        for w in wakers {
            w.wake();
        }
        if self.mode == Mode::Worker {
            // Our node is gone: so is our reason to live.
            std::process::exit(0);
        }
        tracing::error!("lost the connection to the node");
    }

    /// Registers a new handle to `id`; `ready` is set if the cell is pending. Returns whether
    /// this is the only handle.
    pub(crate) fn add_ref(&self, id: ObjectId, ready: Option<Value>) -> bool {
        let mut cells = self.lock_cells();
        let cell = cells.entry(id).or_insert_with(|| Cell {
            state: CellState::Pending,
            refs: 0,
            requested: false,
            wakers: Vec::new(),
        });
        cell.refs += 1;
        if let Some(v) = ready {
            if matches!(cell.state, CellState::Pending) {
                cell.state = CellState::Ready(v);
            }
        }
        cell.refs == 1
    }

    /// Registers the handle to the result of a task this process submits: the node sends a
    /// small result unasked; a large one made on another peer stays there until a `get` or
    /// `wait` here asks for it (the first poll of a pending cell does).
    pub(crate) fn add_owned_result(&self, id: ObjectId) {
        let mut cells = self.lock_cells();
        cells.insert(
            id,
            Cell {
                state: CellState::Pending,
                refs: 1,
                requested: false,
                wakers: Vec::new(),
            },
        );
    }

    /// Waits (blocking this thread) until `want` of `ids` are ready or failed, or the deadline.
    pub(crate) fn wait_many(
        &self,
        ids: &[ObjectId],
        want: usize,
        deadline: Option<std::time::Instant>,
    ) {
        for id in ids {
            let _ = self.poll_cell(*id, None);
        }
        let mut blocked = None;
        let mut cells = self.lock_cells();
        loop {
            let ready = ids
                .iter()
                .filter(|id| {
                    cells
                        .get(id)
                        .is_none_or(|c| !matches!(c.state, CellState::Pending))
                })
                .count();
            if ready >= want {
                break;
            }
            if blocked.is_none() {
                drop(cells);
                blocked = Some(self.report_blocked());
                cells = self.lock_cells();
                continue;
            }
            cells = match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        break;
                    }
                    self.cells_changed
                        .wait_timeout(cells, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .cells_changed
                    .wait(cells)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
        drop(cells);
        if blocked == Some(true) {
            self.report_unblocked();
        }
    }

    /// Registers a handle that failed before it existed (encoding errors and the like).
    pub(crate) fn add_failed(&self, id: ObjectId, err: GetError) {
        let mut cells = self.lock_cells();
        let cell = cells.entry(id).or_insert_with(|| Cell {
            state: CellState::Pending,
            refs: 0,
            requested: true,
            wakers: Vec::new(),
        });
        cell.refs += 1;
        cell.state = CellState::Failed(err);
    }

    /// Drops a handle; the last one releases this process's hold on the object.
    pub(crate) fn drop_ref(&self, id: ObjectId) {
        let last = {
            let mut cells = self.lock_cells();
            match cells.get_mut(&id) {
                Some(cell) => {
                    cell.refs -= 1;
                    if cell.refs == 0 {
                        cells.remove(&id);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        // Every process that holds refs is counted at the node (the creator by its put or
        // submit, the others by `Hold`): the last handle here releases this process's hold.
        if last && !self.disconnected.load(Ordering::Relaxed) {
            self.push(ToNode::Release { ids: vec![id] });
        }
    }

    /// Ready, failed, or pending (registering `waker`, asking the node if needed).
    pub(crate) fn poll_cell(
        &self,
        id: ObjectId,
        waker: Option<&Waker>,
    ) -> Poll<Result<Value, GetError>> {
        let mut cells = self.lock_cells();
        let Some(cell) = cells.get_mut(&id) else {
            return Poll::Ready(Err(GetError::Task(TaskError::ObjectLost { id })));
        };
        match &cell.state {
            CellState::Ready(v) => Poll::Ready(Ok(v.clone())),
            CellState::Failed(e) => Poll::Ready(Err(e.clone())),
            CellState::Pending if self.disconnected.load(Ordering::Acquire) => {
                cell.state = CellState::Failed(GetError::Disconnected);
                Poll::Ready(Err(GetError::Disconnected))
            }
            CellState::Pending => {
                if let Some(w) = waker {
                    if !cell.wakers.iter().any(|x| x.will_wake(w)) {
                        cell.wakers.push(w.clone());
                    }
                }
                let ask = !cell.requested;
                cell.requested = true;
                drop(cells);
                if ask {
                    self.push(ToNode::Get { ids: vec![id] });
                }
                Poll::Pending
            }
        }
    }

    /// Forgets the value of `id` (its store file is gone: the node spilled it) so that the
    /// next wait asks the node again, which reads it back first.
    pub(crate) fn refetch(&self, id: ObjectId) {
        let mut cells = self.lock_cells();
        if let Some(cell) = cells.get_mut(&id) {
            if matches!(cell.state, CellState::Ready(Value::Shared(_))) {
                cell.state = CellState::Pending;
                cell.requested = false;
            }
        }
    }

    /// Whether `id` is ready or failed, without asking the node.
    pub(crate) fn is_done(&self, id: &ObjectId) -> bool {
        self.lock_cells()
            .get(id)
            .is_some_and(|c| !matches!(c.state, CellState::Pending))
    }

    /// In a worker running a task, tells the node this task now waits (and so lends its CPU).
    /// Tasks queued here behind the waiting one go back to the node: they might be what it
    /// waits for.
    fn report_blocked(&self) -> bool {
        if self.mode != Mode::Worker || !self.in_task.load(Ordering::Relaxed) {
            return false;
        }
        let mut gate = self.exec_gate.lock().unwrap_or_else(|e| e.into_inner());
        *gate = true;
        let mut back = Vec::new();
        if let Some(rx) = self
            .exec_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            while let Ok(item) = rx.try_recv() {
                if let WorkItem::Task(t) = item {
                    back.push(t.task_id);
                }
            }
        }
        self.push(ToNode::Blocked);
        if !back.is_empty() {
            self.push(ToNode::Returned { tasks: back });
        }
        drop(gate);
        true
    }

    fn report_unblocked(&self) {
        *self.exec_gate.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.push(ToNode::Unblocked);
    }

    pub(crate) fn ready(&self, id: ObjectId) -> ReadyFuture<'_> {
        ReadyFuture {
            ctx: self,
            id,
            blocked: false,
        }
    }

    /// Blocks this thread until `id` is ready or `timeout` passes.
    pub(crate) fn wait_blocking(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Value, GetError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut blocked = false;
        let result = loop {
            if let Poll::Ready(r) = self.poll_cell(id, None) {
                break r;
            }
            if !blocked {
                blocked = self.report_blocked();
            }
            let cells = self.lock_cells();
            if cells
                .get(&id)
                .is_some_and(|c| !matches!(c.state, CellState::Pending))
            {
                continue;
            }
            match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        break Err(GetError::Timeout(timeout.unwrap_or_default()));
                    }
                    let _ = self.cells_changed.wait_timeout(cells, d - now);
                }
                None => {
                    let _unused = self.cells_changed.wait(cells);
                }
            }
        };
        if blocked {
            self.report_unblocked();
        }
        result
    }

    /// Sleeps on the runtime thread, so timeouts work under any executor.
    pub(crate) fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.rt.spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(());
        });
        async move {
            let _ = rx.await;
        }
    }
}
