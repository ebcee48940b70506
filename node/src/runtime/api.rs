//! The local API: a Unix socket that drivers, workers and the CLI connect to.
//!
//! One task accepts connections; each has a reader (bytes → frames → messages, handed to the
//! node's core in batches) and a writer (messages from the core → frames → bytes, many frames
//! per write). Every frame is bounded; a client that sends garbage, a truncated or an
//! oversized frame is told why, logged and disconnected, and nobody else notices.
//!
//! Who may connect, and how many: the socket is mode 0600 (0660 with a socket group) in a
//! private directory, and each connection's kernel credentials are checked before a byte is
//! read ([`Access`]). A connection that has not said `Hello` is *pending*: it has
//! [`Limits::hello_timeout`] to do so, and pending connections are bounded per uid and in
//! all; when either bound is reached the oldest pending one (of that uid, or of the uid with
//! the most) is closed, so a new client always gets in however many idle ones there are.
//! Attached connections are bounded per uid ([`Limits::clients_per_uid`]): the refused
//! client is told why. The node's own workers (its children, which it starts at most
//! `max_workers` of) are never counted.
//!
//! A sandboxed worker does not use the socket: it inherits one end of a socket pair, which
//! the node serves as a connection that may only be that worker ([`serve_inherited`]). Its
//! kernel credentials would be the node's own, so it gets no verdict; it is neither pending
//! nor counted against a uid.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::{FrameError, Hello, Role, ToClient, ToNode, MAGIC, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use super::access::{Access, PeerCred, Verdict};
use crate::core::ConnId;
use crate::runtime::Event;

pub use super::queue::{CLIENT_QUEUE, CLIENT_QUEUE_BYTES};
/// Time a new connection has to send its `Hello` (clients send it as soon as they connect).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections that have not said `Hello` yet, at most, in all.
pub const MAX_PENDING: usize = 512;
/// Connections of one uid that have not said `Hello` yet, at most.
pub const PENDING_PER_UID: usize = 128;
/// Attached connections of one uid (drivers, CLI), at most, by default; the node's own
/// workers are not counted.
pub const CLIENTS_PER_UID: usize = 1024;
/// Time a sandboxed worker has from its start to say `Hello` on its inherited connection
/// (starting a large binary on a busy machine takes a while; nobody else can open such a
/// connection, so this is no defence against floods, only against a worker that never
/// speaks).
pub const WORKER_HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// At most one log line per this long for each kind of refusal (the rest are counted).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The bounds on the local socket's connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Pending connections (no `Hello` yet) in all. Default [`MAX_PENDING`].
    pub max_pending: usize,
    /// Pending connections of one uid. Default [`PENDING_PER_UID`].
    pub pending_per_uid: usize,
    /// Time to say `Hello`. Default [`HELLO_TIMEOUT`].
    pub hello_timeout: Duration,
    /// Attached connections of one uid, the node's workers not counted. Default
    /// [`CLIENTS_PER_UID`].
    pub clients_per_uid: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pending: MAX_PENDING,
            pending_per_uid: PENDING_PER_UID,
            hello_timeout: HELLO_TIMEOUT,
            clients_per_uid: CLIENTS_PER_UID,
        }
    }
}

/// Why a connection was closed by the node.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A frame could not be read or decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The first message was not a valid `Hello`.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Shutdown,
    /// The client closed the connection before saying anything (a liveness probe).
    #[error("closed before Hello")]
    ClosedEarly,
    /// The node closed the connection (it refused the client).
    #[error("closed by the node")]
    ClosedByNode,
    /// No `Hello` came within the time limit.
    #[error("bad handshake: no Hello within the time limit")]
    HelloTimeout,
    /// Closed before its `Hello` to make room for a newer connection.
    #[error("closed before Hello: too many connections waiting to say Hello")]
    Evicted,
    /// Its uid has as many connections attached as it may.
    #[error("too many connections from uid {uid} (at most {limit})")]
    TooMany {
        /// The uid.
        uid: u32,
        /// Its bound.
        limit: usize,
    },
    /// Its credentials allow it only as one of this node's workers.
    #[error("uid {uid} may attach as one of this node's workers only")]
    NotAllowed {
        /// The uid.
        uid: u32,
    },
    /// A sandboxed worker's inherited connection said it was someone else.
    #[error("the connection of sandboxed worker {worker} may attach as that worker only, not as {claimed}")]
    NotThisWorker {
        /// The worker the connection was made for.
        worker: u64,
        /// The role its `Hello` claimed.
        claimed: String,
    },
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A fresh connection number.
pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// Removes what embedded nodes of processes that died left in the per-user runtime
/// directory `dir`: their sockets (`embedded-<pid>-<n>.sock`) and mesh identities
/// (`embedded-<pid>-<n>.peer/`), when that pid no longer runs and the entry is this user's.
/// (A driver killed with SIGKILL cannot remove them itself; the store's directory in
/// `/dev/shm` is swept by the next store to open, see `store::StoreFiles::open_shared`.)
pub fn remove_stale_embedded(dir: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let uid = super::access::current_uid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("embedded-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if pid <= 0 || crate::store::process_alive(pid) || meta.uid() != uid {
            continue;
        }
        let removed = if rest.ends_with(".sock") && meta.file_type().is_socket() {
            std::fs::remove_file(&path)
        } else if rest.ends_with(".peer") && meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            continue;
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), pid, "removed what an embedded node that died left")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), pid, error = %e, "cannot remove what an embedded node that died left")
            }
        }
    }
}

/// Binds `path`, replacing a stale socket file but never a live node's socket. The socket is
/// mode 0600 (0660 and owned by `group` when given). Its directory is made private (mode
/// 0700, or 0710 with a group) when it is the per-user runtime directory, which is refused
/// if it exists with another owner or with write access for others; another directory must
/// be owned by this user or root and writable by nobody else ([`super::access`]).
pub async fn bind(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if parent == crate::config::user_runtime_dir() {
            super::access::private_dir(parent, group, false)?;
            remove_stale_embedded(parent);
        } else {
            super::access::safe_parent(parent)?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not touching it",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a node is already listening on {}", path.display()),
            ));
        }
        // A socket nobody listens on: left by a node that died.
        std::fs::remove_file(path)?;
    }
    // Bound under a temporary name and given its mode and group before it takes its name, so
    // it is never reachable with looser permissions (but for a path so long that the
    // temporary name would not fit in a socket address: then the node's own check of each
    // connection covers the moment until its mode is set).
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let tmp = if tmp.as_os_str().len() < MAX_SOCKET_PATH {
        tmp
    } else {
        path.to_path_buf()
    };
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_file(&tmp)?;
    }
    let listener = UnixListener::bind(&tmp)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    let named = (|| {
        if let Some(g) = group {
            super::access::chown_group(&tmp, g)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if tmp != path {
            std::fs::rename(&tmp, path)?;
        }
        Ok(())
    })();
    if let Err(e) = named {
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a socket file");
        }
        return Err(e);
    }
    Ok(listener)
}

/// The longest path a Unix socket address holds (`sun_path`, without its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Counts of refusals not logged yet, one line per [`LOG_EVERY`] at most for each kind.
#[derive(Debug, Default)]
struct Quiet {
    last: Option<Instant>,
    suppressed: u64,
}

impl Quiet {
    /// `Some(refusals not logged since the last line)` when a line may be logged now.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The bookkeeping of the accept loop: pending connections in arrival order, and attached
/// ones per uid. Shared with the connections' tasks (under a lock held for a few map
/// operations, never across an await).
#[derive(Debug, Default)]
struct Admission {
    /// Pending connections by arrival: their uid and how to close them.
    pending: BTreeMap<u64, (u32, CancellationToken)>,
    pending_per_uid: HashMap<u32, usize>,
    attached_per_uid: HashMap<u32, usize>,
    next: u64,
    refused_log: Quiet,
    evicted_log: Quiet,
    full_log: Quiet,
    timeout_log: Quiet,
}

impl Admission {
    /// Records a new pending connection of `uid`; returns its number, its close token, and
    /// the tokens of the connections closed to make room (already cancelled).
    fn add_pending(&mut self, uid: u32, limits: &Limits) -> (u64, CancellationToken, usize) {
        let mut evicted = 0;
        if self.pending_per_uid.get(&uid).copied().unwrap_or(0) >= limits.pending_per_uid.max(1) {
            evicted += usize::from(self.evict_oldest_of(uid));
        } else if self.pending.len() >= limits.max_pending.max(1) {
            // The uid holding the most pending connections gives one up.
            let heaviest = self
                .pending_per_uid
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(u, _)| *u);
            if let Some(u) = heaviest {
                evicted += usize::from(self.evict_oldest_of(u));
            }
        }
        let seq = self.next;
        self.next += 1;
        let token = CancellationToken::new();
        self.pending.insert(seq, (uid, token.clone()));
        *self.pending_per_uid.entry(uid).or_insert(0) += 1;
        (seq, token, evicted)
    }

    fn evict_oldest_of(&mut self, uid: u32) -> bool {
        let Some(seq) = self
            .pending
            .iter()
            .find(|(_, (u, _))| *u == uid)
            .map(|(s, _)| *s)
        else {
            return false;
        };
        if let Some((_, token)) = self.remove_pending(seq) {
            token.cancel();
        }
        true
    }

    /// Forgets pending connection `seq` (it said Hello, or ended).
    fn remove_pending(&mut self, seq: u64) -> Option<(u32, CancellationToken)> {
        let (uid, token) = self.pending.remove(&seq)?;
        if let Some(n) = self.pending_per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.pending_per_uid.remove(&uid);
            }
        }
        Some((uid, token))
    }

    /// Takes an attached slot of `uid` if it has one left.
    fn attach(&mut self, uid: u32, limit: usize) -> bool {
        let n = self.attached_per_uid.entry(uid).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    fn detach(&mut self, uid: u32) {
        if let Some(n) = self.attached_per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.attached_per_uid.remove(&uid);
            }
        }
    }
}

type Shared = Arc<Mutex<Admission>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Admission> {
    // The maps stay consistent whatever panicked while holding the lock.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pending connection's place; given up when dropped.
struct PendingSlot {
    shared: Shared,
    seq: u64,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        lock(&self.shared).remove_pending(self.seq);
    }
}

/// An attached connection's slot of its uid; given back when dropped.
struct AttachedSlot {
    shared: Shared,
    uid: u32,
}

impl Drop for AttachedSlot {
    fn drop(&mut self) {
        lock(&self.shared).detach(self.uid);
    }
}

/// What every connection's task shares.
#[derive(Clone)]
struct ConnCtx {
    events: mpsc::Sender<Event>,
    max_frame: usize,
    access: Access,
    limits: Limits,
    shared: Shared,
}

/// Accepts connections until `stop` is cancelled or the core's inbox closes. Connections
/// still open end when `close` is cancelled (or when the core drops their queue). The
/// listener stays open, accepting nothing, until `close` too: a worker that connects while
/// the node stops waits in the backlog until the node kills it, rather than being refused
/// and saying so.
pub async fn serve(
    listener: UnixListener,
    events: mpsc::Sender<Event>,
    max_frame: usize,
    access: Access,
    limits: Limits,
    stop: CancellationToken,
    close: CancellationToken,
) {
    let ctx = ConnCtx {
        events,
        max_frame,
        access,
        limits,
        shared: Shared::default(),
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => {
                tokio::select! {
                    _ = close.cancelled() => {}
                    _ = ctx.events.closed() => {}
                }
                return;
            }
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: pending connections give way as new ones
                // come, so waiting a moment is enough.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if ctx.events.is_closed() {
            return;
        }
        // Credentials first: a process that may not attach gets nothing read.
        let cred = match PeerCred::of(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a connection's credentials; closed");
                continue;
            }
        };
        let verdict = ctx.access.verdict(&cred);
        if verdict == Verdict::Refused {
            refuse(&ctx, stream, &cred);
            continue;
        }
        let (seq, evict, evicted) = lock(&ctx.shared).add_pending(cred.uid, &ctx.limits);
        if evicted > 0 {
            if let Some(more) = lock(&ctx.shared).evicted_log.tick(Instant::now()) {
                tracing::warn!(
                    uid = cred.uid,
                    more,
                    "too many connections waiting to say Hello: closed the oldest"
                );
            }
        }
        let pending = PendingSlot {
            shared: ctx.shared.clone(),
            seq,
        };
        let conn = next_conn_id();
        let span = tracing::info_span!(
            "conn",
            conn,
            uid = cred.uid,
            pid = cred.pid,
            role = tracing::field::Empty
        );
        let origin = Origin::Accepted {
            cred,
            verdict,
            pending,
            evict,
            ctx: ctx.clone(),
        };
        let io = ConnIo {
            events: ctx.events.clone(),
            max_frame: ctx.max_frame,
            hello_timeout: ctx.limits.hello_timeout,
        };
        serve_conn(conn, stream, origin, io, close.clone(), span);
    }
}

/// Closes a connection from a process that may not attach, telling it why if its socket
/// takes the few bytes at once, and logs it (once a second at most).
fn refuse(ctx: &ConnCtx, stream: UnixStream, cred: &PeerCred) {
    if let Some(more) = lock(&ctx.shared).refused_log.tick(Instant::now()) {
        tracing::warn!(
            uid = cred.uid,
            gid = cred.gid,
            pid = cred.pid,
            more,
            "refused a connection: this uid may not use this node"
        );
    }
    let mut out = Vec::new();
    let reason = format!("uid {} may not use this node", cred.uid);
    if frame::encode_frame(&mut out, &ToClient::Rejected { reason }, ctx.max_frame).is_ok() {
        // A plain non-blocking write (the socket is out of tokio's hands): it never waits,
        // and a client that does not read its socket just gets the close.
        let written = stream
            .into_std()
            .and_then(|mut s| std::io::Write::write(&mut s, &out));
        if let Err(e) = written {
            tracing::debug!(error = %e, "the refused client did not take the reason");
        }
    }
}

/// Serves the node's end of a socket pair whose other end sandboxed worker `worker` (process
/// `pid`) inherited: a connection like an accepted one, except that it may only ever be that
/// worker (a shipped binary cannot pass itself off as a local driver, whose binary would run
/// unsandboxed, nor as another worker). Its kernel credentials are the node's own (a socket
/// pair carries its creator's), so they are not checked, and the pid recorded is `pid`. It
/// is not a pending connection (nothing on the socket can evict it) and not counted against
/// any uid (one per worker, and the node starts at most `max_workers`); it has
/// [`WORKER_HELLO_TIMEOUT`] from the start of the process to say `Hello`. It ends when
/// `close` is cancelled, like the others.
pub fn serve_inherited(
    stream: std::os::unix::net::UnixStream,
    worker: u64,
    pid: u32,
    events: mpsc::Sender<Event>,
    max_frame: usize,
    close: CancellationToken,
) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    let stream = UnixStream::from_std(stream)?;
    let conn = next_conn_id();
    let span = tracing::info_span!("conn", conn, worker, pid, role = tracing::field::Empty);
    let io = ConnIo {
        events,
        max_frame,
        hello_timeout: WORKER_HELLO_TIMEOUT,
    };
    serve_conn(
        conn,
        stream,
        Origin::Inherited { worker, pid },
        io,
        close,
        span,
    );
    Ok(())
}

/// How a connection came to the node, and so what it may be.
enum Origin {
    /// Accepted on the socket: checked by its kernel credentials, pending until its `Hello`
    /// (and evicted by `evict`), then counted against its uid unless it is one of the node's
    /// workers.
    Accepted {
        cred: PeerCred,
        verdict: Verdict,
        pending: PendingSlot,
        evict: CancellationToken,
        ctx: ConnCtx,
    },
    /// The node's end of a sandboxed worker's socket pair: that worker only.
    Inherited { worker: u64, pid: u32 },
}

/// What a connection's handler needs whatever its origin.
struct ConnIo {
    events: mpsc::Sender<Event>,
    max_frame: usize,
    hello_timeout: Duration,
}

/// Spawns the handler of one connection, which logs how it ended (refusals of accepted
/// connections once a second at most).
fn serve_conn(
    conn: ConnId,
    stream: UnixStream,
    origin: Origin,
    io: ConnIo,
    close: CancellationToken,
    span: tracing::Span,
) {
    let shared = match &origin {
        Origin::Accepted { ctx, .. } => Some(ctx.shared.clone()),
        Origin::Inherited { .. } => None,
    };
    let task = async move {
        let result = tokio::select! {
            r = handle(conn, stream, origin, &io) => r,
            _ = close.cancelled() => Err(ConnError::Shutdown),
        };
        let quiet = |pick: fn(&mut Admission) -> &mut Quiet| match &shared {
            Some(s) => pick(&mut lock(s)).tick(Instant::now()),
            None => Some(0),
        };
        match result {
            Ok(()) => tracing::debug!("connection closed"),
            Err(ConnError::ClosedEarly) => {
                tracing::debug!("connection closed before Hello")
            }
            Err(ConnError::Shutdown) => tracing::debug!("connection closed: node stopping"),
            Err(ConnError::Evicted) => tracing::debug!("closed before Hello to make room"),
            Err(e @ ConnError::TooMany { .. }) => {
                if let Some(more) = quiet(|a| &mut a.full_log) {
                    tracing::warn!(error = %e, more, "connection refused");
                }
            }
            Err(e @ ConnError::HelloTimeout) => {
                if let Some(more) = quiet(|a| &mut a.timeout_log) {
                    tracing::warn!(error = %e, more, "connection rejected");
                }
            }
            Err(e) => tracing::warn!(error = %e, "connection rejected"),
        }
    };
    tokio::spawn(task.instrument(span));
}

async fn handle(
    conn: ConnId,
    stream: UnixStream,
    origin: Origin,
    io: &ConnIo,
) -> Result<(), ConnError> {
    let (events, max_frame) = (&io.events, io.max_frame);
    let (mut rd, mut wr) = stream.into_split();
    let mut frames = FrameDecoder::new(max_frame);
    let evict = match &origin {
        Origin::Accepted { evict, .. } => Some(evict.clone()),
        Origin::Inherited { .. } => None,
    };
    let evicted = async {
        match evict {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let said = tokio::select! {
        r = tokio::time::timeout(io.hello_timeout, read_hello(&mut rd, &mut frames)) => r,
        _ = evicted => {
            reject(&mut wr, &ConnError::Evicted.to_string(), max_frame).await;
            return Err(ConnError::Evicted);
        }
    };
    let mut hello = match said {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            reject(&mut wr, &e.to_string(), max_frame).await;
            return Err(e);
        }
        Err(_) => {
            let e = ConnError::HelloTimeout;
            reject(&mut wr, &e.to_string(), max_frame).await;
            return Err(e);
        }
    };
    // Who it may be, and the slot it holds while attached (given back when dropped).
    let (hello, _slot) = match origin {
        Origin::Accepted {
            cred,
            verdict,
            pending,
            ctx,
            ..
        } => {
            drop(pending);
            // The kernel's word for the pid, not the client's.
            if cred.pid != 0 && hello.pid != cred.pid {
                tracing::debug!(
                    claimed = hello.pid,
                    pid = cred.pid,
                    "Hello names another pid"
                );
                hello.pid = cred.pid;
            }
            let worker = matches!(hello.role, Role::Worker { .. });
            if verdict == Verdict::WorkerOnly && !worker {
                let e = ConnError::NotAllowed { uid: cred.uid };
                reject(&mut wr, &e.to_string(), max_frame).await;
                return Err(e);
            }
            // The node's own workers are bounded by `max_workers`; everyone else by uid.
            let slot = if worker && ctx.access.is_child(cred.pid) {
                None
            } else if lock(&ctx.shared).attach(cred.uid, ctx.limits.clients_per_uid) {
                Some(AttachedSlot {
                    shared: ctx.shared.clone(),
                    uid: cred.uid,
                })
            } else {
                let e = ConnError::TooMany {
                    uid: cred.uid,
                    limit: ctx.limits.clients_per_uid,
                };
                reject(&mut wr, &e.to_string(), max_frame).await;
                return Err(e);
            };
            (hello, slot)
        }
        Origin::Inherited { worker, pid } => {
            if !matches!(hello.role, Role::Worker { worker_id } if worker_id == worker) {
                let e = ConnError::NotThisWorker {
                    worker,
                    claimed: format!("{:?}", hello.role),
                };
                reject(&mut wr, &e.to_string(), max_frame).await;
                return Err(e);
            }
            // A socket pair's credentials are its creator's (the node's): the process the
            // node started is the one that holds the other end.
            hello.pid = pid;
            (hello, None)
        }
    };
    let span = tracing::Span::current();
    span.record("role", tracing::field::debug(&hello.role));
    let (tx, rx) = super::queue::client_queue();
    if events
        .send(Event::Connected { conn, hello, tx })
        .await
        .is_err()
    {
        return Err(ConnError::Shutdown);
    }
    let mut writer = tokio::spawn(write_loop(wr, rx, max_frame).in_current_span());
    // The node closes a connection by dropping its queue: the writer then ends, and so must
    // the reader, so the client sees EOF.
    let result = tokio::select! {
        r = read_loop(conn, &mut rd, frames, events) => r,
        _ = &mut writer => {
            detach(events, conn).await;
            return Err(ConnError::ClosedByNode);
        }
    };
    detach(events, conn).await;
    // The core drops its sender on Disconnected; the writer then flushes and ends.
    let mut wr = writer.await.ok().flatten();
    if let (Err(e), Some(wr)) = (&result, wr.as_mut()) {
        if !matches!(e, ConnError::Io(_)) {
            reject(wr, &e.to_string(), max_frame).await;
        }
    }
    result
}

/// Tells the core that `conn` ended (a core that stopped needs no telling).
async fn detach(events: &mpsc::Sender<Event>, conn: ConnId) {
    if events.send(Event::Disconnected { conn }).await.is_err() {
        tracing::debug!(conn, "the core stopped before the connection ended");
    }
}

async fn read_hello(rd: &mut OwnedReadHalf, frames: &mut FrameDecoder) -> Result<Hello, ConnError> {
    loop {
        if let Some(msg) = frames.next_message::<ToNode>()? {
            let ToNode::Hello(h) = msg else {
                return Err(ConnError::Handshake("first message is not Hello".into()));
            };
            if h.magic != MAGIC {
                return Err(ConnError::Handshake(format!("bad magic {:?}", h.magic)));
            }
            if h.version != PROTOCOL_VERSION {
                return Err(ConnError::Handshake(format!(
                    "protocol version {} is not this node's {}",
                    h.version, PROTOCOL_VERSION
                )));
            }
            if matches!(h.role, Role::Driver) && h.binary.is_none() {
                return Err(ConnError::Handshake("a driver must name its binary".into()));
            }
            return Ok(h);
        }
        if rd.read_buf(frames.input()).await? == 0 {
            frames.finish()?;
            return Err(ConnError::ClosedEarly);
        }
    }
}

async fn read_loop(
    conn: ConnId,
    rd: &mut OwnedReadHalf,
    mut frames: FrameDecoder,
    events: &mpsc::Sender<Event>,
) -> Result<(), ConnError> {
    loop {
        let mut msgs = Vec::new();
        // Messages before a bad frame are still delivered, whatever the read boundaries.
        let bad = loop {
            match frames.next_message::<ToNode>() {
                Ok(Some(msg)) => msgs.push(msg),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if !msgs.is_empty() && events.send(Event::Messages { conn, msgs }).await.is_err() {
            return Err(ConnError::Shutdown);
        }
        if let Some(e) = bad {
            return Err(e.into());
        }
        if rd.read_buf(frames.input()).await? == 0 {
            frames.finish()?;
            return Ok(());
        }
    }
}

/// Writes every queued message, many per syscall; returns the socket when the queue closes.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: super::queue::ClientRx,
    max_frame: usize,
) -> Option<OwnedWriteHalf> {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(msg) = rx.recv().await {
        encode_or_log(&mut out, &msg, max_frame);
        while out.len() < (1 << 20) {
            match rx.try_recv() {
                Some(msg) => encode_or_log(&mut out, &msg, max_frame),
                None => break,
            }
        }
        if let Err(e) = wr.write_all(&out).await {
            tracing::debug!(error = %e, "client went away");
            return None;
        }
        out.clear();
    }
    Some(wr)
}

fn encode_or_log(out: &mut Vec<u8>, msg: &ToClient, max_frame: usize) {
    if let Err(e) = frame::encode_frame(out, msg, max_frame) {
        tracing::error!(error = %e, "cannot encode a message to a client; dropped");
    }
}

async fn reject(wr: &mut OwnedWriteHalf, reason: &str, max_frame: usize) {
    let mut out = Vec::new();
    if frame::encode_frame(
        &mut out,
        &ToClient::Rejected {
            reason: reason.to_string(),
        },
        max_frame,
    )
    .is_ok()
    {
        if let Err(e) = wr.write_all(&out).await {
            tracing::debug!(error = %e, "the rejected client went away before reading why");
        }
    }
    if let Err(e) = wr.shutdown().await {
        tracing::debug!(error = %e, "closing a rejected connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_pending: usize, pending_per_uid: usize) -> Limits {
        Limits {
            max_pending,
            pending_per_uid,
            ..Limits::default()
        }
    }

    #[test]
    fn the_oldest_pending_connection_makes_room() {
        let mut a = Admission::default();
        let l = limits(4, 3);
        let (s1, t1, e) = a.add_pending(7, &l);
        assert_eq!(e, 0);
        let (_, t2, _) = a.add_pending(7, &l);
        let (_, t3, _) = a.add_pending(7, &l);
        // Uid 7 is at its bound: its oldest goes.
        let (_, t4, e) = a.add_pending(7, &l);
        assert_eq!(e, 1);
        assert!(t1.is_cancelled() && !t2.is_cancelled());
        assert_eq!(a.pending_per_uid[&7], 3);
        // Its slot was given up already; dropping it later changes nothing.
        assert!(a.remove_pending(s1).is_none());
        // Another uid gets in; when the whole pool is full, the uid with the most gives way.
        let (_, u1, e) = a.add_pending(8, &l);
        assert_eq!(e, 0);
        let (_, u2, e) = a.add_pending(8, &l);
        assert_eq!(e, 1);
        assert!(t2.is_cancelled() && !t3.is_cancelled() && !t4.is_cancelled());
        assert!(!u1.is_cancelled() && !u2.is_cancelled());
        assert_eq!(a.pending.len(), 4);
    }

    #[test]
    fn attached_connections_are_bounded_per_uid() {
        let mut a = Admission::default();
        assert!(a.attach(7, 2) && a.attach(7, 2));
        assert!(!a.attach(7, 2));
        // Other uids are not affected.
        assert!(a.attach(8, 2));
        a.detach(7);
        assert!(a.attach(7, 2));
        a.detach(8);
        assert!(!a.attached_per_uid.contains_key(&8));
    }

    /// Says `role` on a sandboxed worker's inherited connection (made for worker 5, process
    /// 4242); returns what the core heard of it, or the node's reason for refusing it.
    async fn inherited_hello(role: Role) -> Result<Hello, String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (events, mut inbox) = mpsc::channel(8);
        let close = CancellationToken::new();
        serve_inherited(
            ours,
            5,
            4242,
            events,
            frame::DEFAULT_MAX_FRAME,
            close.clone(),
        )
        .unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut theirs = UnixStream::from_std(theirs).unwrap();
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role,
            pid: 1,
            client: shoal_protocol::ClientId(7),
            binary: None,
        };
        let mut out = Vec::new();
        frame::encode_frame(&mut out, &ToNode::Hello(hello), frame::DEFAULT_MAX_FRAME).unwrap();
        theirs.write_all(&out).await.unwrap();
        // The core hears of it, or the handler ends (dropping its sender) having refused it.
        let heard = match inbox.recv().await {
            Some(Event::Connected { hello, .. }) => Ok(hello),
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                let mut frames = FrameDecoder::new(frame::DEFAULT_MAX_FRAME);
                loop {
                    if let Some(ToClient::Rejected { reason }) =
                        frames.next_message::<ToClient>().unwrap()
                    {
                        break Err(reason);
                    }
                    assert!(theirs.read_buf(frames.input()).await.unwrap() > 0, "closed");
                }
            }
        };
        close.cancel();
        heard
    }

    #[tokio::test]
    async fn an_inherited_connection_is_its_worker_only() {
        // The worker it was made for: attached, with the pid of the process the node
        // started (the socket pair's credentials would be the node's own).
        let hello = inherited_hello(Role::Worker { worker_id: 5 })
            .await
            .unwrap();
        assert_eq!(hello.pid, 4242);
        // Anyone else: refused with a reason, the core never hears of it.
        let e = inherited_hello(Role::Worker { worker_id: 6 })
            .await
            .unwrap_err();
        assert!(e.contains("sandboxed worker 5"), "{e}");
        let e = inherited_hello(Role::Cli).await.unwrap_err();
        assert!(e.contains("may attach as that worker only"), "{e}");
    }

    #[test]
    fn refusals_are_logged_once_a_second() {
        let mut q = Quiet::default();
        let t0 = Instant::now();
        assert_eq!(q.tick(t0), Some(0));
        assert_eq!(q.tick(t0 + Duration::from_millis(10)), None);
        assert_eq!(q.tick(t0 + Duration::from_millis(20)), None);
        assert_eq!(q.tick(t0 + LOG_EVERY), Some(2));
    }
}
