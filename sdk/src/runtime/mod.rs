//! The process's attachment to a node: the [`Context`] every SDK call goes through, and the
//! process-wide global that holds it.
//!
//! - [`connect`]: finding or making a node: the handshake on a socket, or an embedded node.
//! - [`transport`]: the connection's reader and writer, on the runtime thread.
//! - [`outbox`]: the bounded queue of messages for the node, taken by the writer in batches.
//! - [`cells`]: the table of objects this process knows, with their wakers and the condition
//!   variable blocking waits sleep on.
//! - [`work`]: what the node hands a worker, and the blocked/unblocked protocol of a task that
//!   waits.
//! - [`thread`]: the `shoal-runtime` thread, and the orderly stop (`shoal::shutdown`, and
//!   the exit of a program with an embedded node).
//!
//! User threads never run on the runtime thread: they push messages into the outbox and wait
//! on cells; requests that need an answer (status, store reservations, actor lookups) block
//! their caller on a one-slot channel the reader fills.

mod cells;
mod connect;
mod logs;
mod outbox;
mod thread;
mod transport;
mod work;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use shoal_node::NodeHandle;
use shoal_protocol::{
    BinaryId, ClientId, CreateOutcome, NodeId, NodeStatus, ObjectId, StoreError, ToClient, ToNode,
};
use tokio::sync::mpsc;

pub(crate) use cells::{Maker, StreamNext, Value};
pub(crate) use thread::SHUTDOWN_WAIT;
pub(crate) use work::WorkItem;

use self::cells::Cells;
use self::outbox::Outbox;
use self::thread::RuntimeThread;
use self::work::Work;
use crate::error::{GetError, InitError};

/// Whether this process is a driver or a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A user program.
    Driver,
    /// A worker started by a node.
    Worker,
}

/// The connection is up.
const OPEN: u8 = 0;
/// The node went away.
const LOST: u8 = 1;
/// `shoal::shutdown` closed it.
const SHUT_DOWN: u8 = 2;

/// Everything the SDK knows in this process.
pub(crate) struct Context {
    pub(crate) client: ClientId,
    pub(crate) mode: Mode,
    pub(crate) binary: BinaryId,
    node_id: NodeId,
    peer_id: Option<String>,
    store_dir: PathBuf,
    pub(crate) inline_threshold: usize,
    socket: PathBuf,
    /// Whether the node runs in this process.
    embedded: bool,
    /// The embedded node, until the shutdown takes it to stop it.
    node: Mutex<Option<NodeHandle>>,
    task_seq: AtomicU64,
    /// The secret of this process's task ids.
    task_key: shoal_protocol::TaskKey,
    request_seq: AtomicU64,
    outbox: Outbox,
    cells: Cells,
    requests: Mutex<HashMap<u64, SyncSender<ToClient>>>,
    /// [`OPEN`], [`LOST`] or [`SHUT_DOWN`].
    link: AtomicU8,
    /// Worker mode: the tasks handed to this process.
    pub(crate) work: Work,
    thread: RuntimeThread,
    /// Prints what this program's tasks and actors write.
    pub(crate) logs: logs::Printer,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("client", &self.client)
            .field("mode", &self.mode)
            .field("node_id", &self.node_id)
            .field("embedded", &self.embedded)
            .finish()
    }
}

static CONTEXT: OnceLock<Arc<Context>> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());
/// Set once this process entered worker mode (before `main`).
static WORKER_MODE: AtomicBool = AtomicBool::new(false);

/// How to find or make a node.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The node a `shoal node` daemon runs on this socket, and never one of this program's own.
/// let options = shoal::InitOptions {
///     socket: Some("/run/shoal/node.sock".into()),
///     require_daemon: true,
///     ..Default::default()
/// };
/// match shoal::init_with(options) {
///     Ok(node) => println!("attached to node {}", node.node_id()),
///     Err(shoal::InitError::Connect(socket, e)) => {
///         eprintln!("no node on {}: {e}", socket.display())
///     }
///     Err(e) => return Err(e.into()),
/// }
/// # Ok(()) }
/// ```
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
    /// Mesh peers an embedded node bootstraps from, besides its join token's (multiaddrs
    /// ending in `/p2p/<id>`). [default: `$SHOAL_PEERS`, comma-separated]
    pub peers: Vec<String>,
    /// The join token (`shoal mesh invite`) with which an embedded node joins a mesh as a
    /// full peer; without one it serves this process only. [default: `$SHOAL_JOIN`]
    pub join: Option<String>,
    /// Inline threshold of an embedded node in bytes.
    pub inline_threshold: Option<u64>,
    /// Where an embedded node serves Prometheus metrics (`GET /metrics`; port 0 picks a
    /// free one, which `Shoal::status` then shows). [default: `$SHOAL_METRICS`, else
    /// nowhere]
    pub metrics: Option<std::net::SocketAddr>,
}

/// The context, initialising with defaults on first use. After a shutdown it is the closed
/// context, whose calls fail with [`GetError::Shutdown`].
pub(crate) fn get() -> &'static Arc<Context> {
    if let Some(c) = CONTEXT.get() {
        return c;
    }
    match init(InitOptions::default()) {
        Ok(c) => c,
        Err(e) => panic!("shoal: cannot attach to a node: {e}"),
    }
}

/// The context if it exists.
pub(crate) fn try_get() -> Option<&'static Arc<Context>> {
    CONTEXT.get()
}

/// Attaches this process (a driver) to a node, once.
pub(crate) fn init(options: InitOptions) -> Result<&'static Arc<Context>, InitError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = CONTEXT.get() {
        if c.is_shut_down() {
            return Err(InitError::Shutdown);
        }
        return Ok(c);
    }
    if std::env::var_os(shoal_protocol::env::WORKER_ID).is_some()
        && !WORKER_MODE.load(Ordering::Relaxed)
    {
        return Err(InitError::NotWorkerMode);
    }
    let ctx = connect::connect(Mode::Driver, None, options)?;
    Ok(CONTEXT.get_or_init(|| ctx))
}

/// Worker mode: connects to the node that started this process.
pub(crate) fn init_worker(
    worker_id: u64,
    socket: PathBuf,
) -> Result<&'static Arc<Context>, InitError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    WORKER_MODE.store(true, Ordering::Relaxed);
    let options = InitOptions {
        socket: Some(socket),
        require_daemon: true,
        ..Default::default()
    };
    let ctx = connect::connect(Mode::Worker, Some(worker_id), options)?;
    Ok(CONTEXT.get_or_init(|| ctx))
}

/// Stops this process's attachment, if it has one (see [`thread`]); blocks at most `wait`.
pub(crate) fn shutdown(wait: Duration) {
    if let Some(ctx) = try_get() {
        ctx.shutdown(wait);
    }
}

impl Context {
    /// The node this process is attached to.
    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether the node runs inside this process.
    pub(crate) fn is_embedded(&self) -> bool {
        self.embedded
    }

    /// The node's peer id in its mesh, if it is a peer of one.
    pub(crate) fn peer_id(&self) -> Option<&str> {
        self.peer_id.as_deref()
    }

    /// The node's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The id of the next task this process submits (unpredictable to others).
    pub(crate) fn next_task_id(&self) -> shoal_protocol::TaskId {
        let seq = self.task_seq.fetch_add(1, Ordering::Relaxed);
        shoal_protocol::TaskId::keyed(&self.task_key, seq)
    }

    /// Why SDK calls fail, once the connection is closed: `None` while it is up.
    pub(crate) fn closed(&self) -> Option<GetError> {
        match self.link.load(Ordering::Acquire) {
            OPEN => None,
            LOST => Some(GetError::Disconnected),
            _ => Some(GetError::Shutdown),
        }
    }

    /// Whether `shoal::shutdown` has run.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.link.load(Ordering::Acquire) == SHUT_DOWN
    }

    /// Queues a message for the node (dropped once the connection is closed).
    pub(crate) fn push(&self, msg: ToNode) {
        if !self.outbox.push(msg) {
            tracing::trace!("connection closed; message dropped");
        }
    }

    /// A future that ends after `d`, under any executor (timed on the runtime thread).
    pub(crate) fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send {
        self.thread.sleep(d)
    }

    fn lock_requests(&self) -> MutexGuard<'_, HashMap<u64, SyncSender<ToClient>>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request and waits (blocking this thread) for its answer.
    fn request(&self, make: impl FnOnce(u64) -> ToNode) -> Result<ToClient, GetError> {
        let request = self.request_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.lock_requests().insert(request, tx);
        if let Some(err) = self.closed() {
            self.lock_requests().remove(&request);
            return Err(err);
        }
        self.push(make(request));
        // A closing connection drops the sender.
        rx.recv()
            .map_err(|_| self.closed().unwrap_or(GetError::Disconnected))
    }

    /// Reserves room for a large object. `Ok(false)`: it already exists, do not write.
    pub(crate) fn create(&self, id: ObjectId, size: u64) -> Result<bool, StoreError> {
        match self.request(|request| ToNode::Create { request, id, size }) {
            Ok(ToClient::Created { result, .. }) => result.map(|o| o == CreateOutcome::Write),
            Ok(other) => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
            Err(e) => Err(StoreError::Io(e.to_string())),
        }
    }

    /// The live actor of this name, if any, and its handle object if the node made this
    /// process one more holder of it.
    pub(crate) fn lookup_actor(
        &self,
        name: &str,
    ) -> Result<(Option<shoal_protocol::ActorInfo>, Option<ObjectId>), GetError> {
        match self.request(|request| ToNode::LookupActor {
            request,
            name: name.to_string(),
        })? {
            ToClient::ActorFound { actor, held, .. } => Ok((actor, held)),
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

    /// The digest of large object `id` this process holds: the one the node recorded, or
    /// one it takes now.
    pub(crate) fn digest(&self, id: ObjectId) -> Result<shoal_protocol::Digest, GetError> {
        match self.request(|request| ToNode::Digest { request, id })? {
            ToClient::Digest { result, .. } => result.map_err(GetError::Task),
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

    /// Handles one message from the node (on the runtime thread).
    async fn dispatch(&self, msg: ToClient, work: &mpsc::Sender<WorkItem>) {
        if self.is_shut_down() {
            // Nothing is waiting for it any more.
            return;
        }
        match msg {
            ToClient::Object { id, value } => self.resolve(id, value),
            ToClient::Execute(task) => self.offer_task(task, work),
            ToClient::Cancel { task, force } => self.work.cancel(task, force),
            ToClient::StreamItem { task, index, value } => self.stream_item(task, index, value),
            ToClient::StreamAck { task, allowed } => self.work.stream_ack(task, allowed),
            ToClient::HostActor(host) => {
                // The node sends an actor's calls only after this, and never more than the
                // queue holds; waiting here keeps them in order behind it.
                if work.send(WorkItem::HostActor(host)).await.is_err() {
                    tracing::error!("worker loop gone; cannot host the actor");
                }
            }
            ToClient::Created { request, .. }
            | ToClient::Status { request, .. }
            | ToClient::Objects { request, .. }
            | ToClient::Digest { request, .. }
            | ToClient::State { request, .. }
            | ToClient::ActorFound { request, .. } => {
                let waiter = self.lock_requests().remove(&request);
                if let Some(tx) = waiter {
                    // One answer per request, into a slot of one: it is never full. A caller
                    // that gave up has dropped its end, and the answer with it.
                    if tx.try_send(msg).is_err() {
                        tracing::debug!(request, "the requester is gone");
                    }
                }
            }
            ToClient::Log { lines } => self.logs.print(lines),
            ToClient::Warning { message } => {
                // As Ray's autoscaler messages: on the program's stderr, whatever RUST_LOG says.
                tracing::warn!(%message, "from the node");
                eprintln!("(shoal) warning: {message}");
            }
            ToClient::Rejected { reason } => {
                tracing::error!(%reason, "the node closed our connection");
            }
            ToClient::Welcome { .. } => {}
        }
    }

    /// The connection has ended (on the runtime thread): everything waiting fails.
    fn on_disconnect(&self) {
        self.logs.flush();
        let lost = self
            .link
            .compare_exchange(OPEN, LOST, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.outbox.abort();
        self.lock_requests().clear();
        let err = self.closed().unwrap_or(GetError::Disconnected);
        self.cells.fail(&err, false);
        if self.mode == Mode::Worker {
            // Our node is gone: so is our reason to live.
            std::process::exit(0);
        }
        if lost {
            tracing::error!("lost the connection to the node");
        }
    }

    /// Closes the connection for a shutdown: from now on SDK calls fail with
    /// [`GetError::Shutdown`] (gets of values already here too: the store they may be in is
    /// going), and the writer sends what was queued, then ends. Returns whether this call
    /// closed it (it happens once).
    fn close_for_shutdown(&self) -> bool {
        if self.link.swap(SHUT_DOWN, Ordering::AcqRel) == SHUT_DOWN {
            return false;
        }
        self.logs.flush();
        self.outbox.close();
        self.lock_requests().clear();
        self.cells.fail(&GetError::Shutdown, true);
        true
    }
}
