//! The local API: a Unix socket that drivers, workers and the CLI connect to.
//!
//! One task accepts connections (at most [`MAX_CONNECTIONS`] at once); each connection has a
//! reader (bytes → frames → messages, handed to the node's core in batches) and a writer
//! (messages from the core → frames → bytes, many frames per write). Every frame is bounded;
//! a client that sends garbage, a truncated or an oversized frame is told why, logged and
//! disconnected, and nobody else notices.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::frame::{self, FrameDecoder};
use shoal_protocol::{FrameError, Hello, Role, ToClient, ToNode, MAGIC, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

use crate::core::ConnId;
use crate::runtime::Event;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
pub use super::queue::{CLIENT_QUEUE, CLIENT_QUEUE_BYTES};
/// Time a new connection has to send its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

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
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A fresh connection number.
pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// Binds `path`, replacing a stale socket file but never a live node's socket.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
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
    UnixListener::bind(path)
}

/// Accepts connections until `stop` is cancelled or the core's inbox closes; the listener
/// is closed when it returns. Connections still open end when `close` is cancelled (or
/// when the core drops their queue).
pub async fn serve(
    listener: UnixListener,
    events: mpsc::Sender<Event>,
    max_frame: usize,
    stop: tokio_util::sync::CancellationToken,
    close: tokio_util::sync::CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        serve_conn(
            stream,
            events.clone(),
            max_frame,
            close.clone(),
            None,
            Some(permit),
        );
    }
}

/// Serves the node's end of a socket pair whose other end a sandboxed worker inherited: a
/// connection like an accepted one, except that it may only ever be worker `worker` (a
/// shipped binary cannot pass itself off as a local driver, whose binary would run
/// unsandboxed). It ends when `close` is cancelled, like the others.
pub fn serve_inherited(
    stream: std::os::unix::net::UnixStream,
    worker: u64,
    events: mpsc::Sender<Event>,
    max_frame: usize,
    close: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    let stream = UnixStream::from_std(stream)?;
    serve_conn(stream, events, max_frame, close, Some(worker), None);
    Ok(())
}

/// Spawns the handler of one connection; `only_worker` restricts who it may be.
fn serve_conn(
    stream: UnixStream,
    events: mpsc::Sender<Event>,
    max_frame: usize,
    close: tokio_util::sync::CancellationToken,
    only_worker: Option<u64>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let conn = next_conn_id();
    let span = tracing::info_span!(
        "conn",
        conn,
        role = tracing::field::Empty,
        pid = tracing::field::Empty
    );
    tokio::spawn(
        async move {
            let result = tokio::select! {
                r = handle(conn, stream, events.clone(), max_frame, only_worker) => r,
                _ = close.cancelled() => Err(ConnError::Shutdown),
            };
            match result {
                Ok(()) => tracing::debug!("connection closed"),
                Err(ConnError::ClosedEarly) => {
                    tracing::debug!("connection closed before Hello")
                }
                Err(ConnError::Shutdown) => tracing::debug!("connection closed: node stopping"),
                Err(e) => tracing::warn!(error = %e, "connection rejected"),
            }
            drop(permit);
        }
        .instrument(span),
    );
}

async fn handle(
    conn: ConnId,
    stream: UnixStream,
    events: mpsc::Sender<Event>,
    max_frame: usize,
    only_worker: Option<u64>,
) -> Result<(), ConnError> {
    let (mut rd, mut wr) = stream.into_split();
    let mut frames = FrameDecoder::new(max_frame);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut rd, &mut frames)).await {
        Ok(Ok(h)) => match (only_worker, &h.role) {
            (None, _) => h,
            (Some(w), Role::Worker { worker_id }) if *worker_id == w => h,
            (Some(w), role) => {
                let e = ConnError::Handshake(format!(
                    "the connection of sandboxed worker {w} may not attach as {role:?}"
                ));
                reject(&mut wr, &e.to_string(), max_frame).await;
                return Err(e);
            }
        },
        Ok(Err(e)) => {
            reject(&mut wr, &e.to_string(), max_frame).await;
            return Err(e);
        }
        Err(_) => {
            let e = ConnError::Handshake("no Hello within the time limit".into());
            reject(&mut wr, &e.to_string(), max_frame).await;
            return Err(e);
        }
    };
    let span = tracing::Span::current();
    span.record("role", tracing::field::debug(&hello.role));
    span.record("pid", hello.pid);
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
        r = read_loop(conn, &mut rd, frames, &events) => r,
        _ = &mut writer => {
            detach(&events, conn).await;
            return Err(ConnError::ClosedByNode);
        }
    };
    detach(&events, conn).await;
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
