//! Control links: one long-lived stream per direction between two peers
//! (`/shoal/<mesh>/ctl/1`), carrying [`PeerMsg`]s in order.
//!
//! A message to a peer goes into that peer's bounded queue; one writer task per peer opens
//! the stream on first use and writes what is queued in batches (one flush per batch). The
//! other side reads frames (a `u32` little-endian length, at most [`MAX_PEER_MSG`], then a
//! bincode [`PeerMsg`]) and hands them to the node in batches, in order. Order matters: a
//! caller's actor calls stay in the order sent because they share one stream.
//!
//! A link that cannot open or breaks is reported as [`NetEvent::Unreachable`]: whatever was
//! queued on it is lost, and the node treats its work there as it treats a lost peer's.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::io::BufReader;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use shoal_protocol::codec;
use shoal_protocol::mesh::{LoadReport, PeerMsg, MAX_PEER_MSG};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Messages queued for one peer at most.
pub const LINK_QUEUE: usize = 1 << 16;
/// Messages handed to the node in one batch at most.
const BATCH: usize = 512;
/// How long opening a link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the network tells the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A peer's newest load report.
    Report {
        /// The peer.
        peer: PeerId,
        /// Its report.
        report: Box<LoadReport>,
    },
    /// A peer left the mesh (or restarted): what it was doing for this node is lost.
    Lost {
        /// The peer.
        peer: PeerId,
    },
    /// The link to a peer could not be opened or broke: messages queued on it are lost.
    Unreachable {
        /// The peer.
        peer: PeerId,
    },
    /// Messages from a peer, in the order sent.
    Messages {
        /// The peer.
        peer: PeerId,
        /// The messages.
        msgs: Vec<PeerMsg>,
    },
}

/// The consumer of network events: the node's inbox.
pub trait NetSink: Send + Sync + 'static {
    /// Delivers `ev`, waiting for room; `false` once the consumer is gone.
    fn send(&self, ev: NetEvent) -> BoxFuture<'_, bool>;
    /// Delivers `ev` if there is room now; says whether it did.
    fn try_send(&self, ev: NetEvent) -> bool;
}

/// Where network events go: set once, by the node that consumes them.
pub type EventSink = Arc<OnceLock<Arc<dyn NetSink>>>;

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer's queue is full: it is not keeping up.
    #[error("the link to peer {0} is full")]
    Full(PeerId),
    /// The message could not be encoded.
    #[error("encoding a peer message: {0}")]
    Encode(String),
}

/// The outbound links of this node.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Mutex<HashMap<PeerId, mpsc::Sender<Vec<u8>>>>>,
    control: libp2p_stream::Control,
    protocol: StreamProtocol,
    events: EventSink,
}

impl Links {
    /// Links over `control` speaking `protocol`; breaks are reported to `events`.
    pub fn new(
        control: libp2p_stream::Control,
        protocol: StreamProtocol,
        events: EventSink,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HashMap::new())),
            control,
            protocol,
            events,
        }
    }

    /// Queues `msg` for `peer`, opening the link if needed. Never waits.
    pub fn send(&self, peer: PeerId, msg: &PeerMsg) -> Result<(), LinkError> {
        let bytes = codec::encode(msg).map_err(|e| LinkError::Encode(e.to_string()))?;
        if bytes.len() > MAX_PEER_MSG {
            return Err(LinkError::Encode(format!(
                "a message of {} bytes exceeds the limit of {MAX_PEER_MSG}",
                bytes.len()
            )));
        }
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tx = match links.get(&peer) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(LINK_QUEUE);
                links.insert(peer, tx.clone());
                let span = tracing::info_span!("link", %peer);
                tokio::spawn(self.clone().write(peer, rx, tx.clone()).instrument(span));
                tx
            }
        };
        drop(links);
        tx.try_send(bytes).map_err(|_| LinkError::Full(peer))
    }

    async fn write(self, peer: PeerId, mut rx: mpsc::Receiver<Vec<u8>>, me: mpsc::Sender<Vec<u8>>) {
        let result = self.write_all(peer, &mut rx).await;
        if let Err(e) = result {
            tracing::warn!(%peer, error = %e, "control link broke");
        }
        {
            let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if links.get(&peer).is_some_and(|tx| tx.same_channel(&me)) {
                links.remove(&peer);
            }
        }
        rx.close();
        if let Some(events) = self.events.get() {
            let _ = events.send(NetEvent::Unreachable { peer }).await;
        }
    }

    async fn write_all(&self, peer: PeerId, rx: &mut mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
        let mut control = self.control.clone();
        let mut stream = tokio::time::timeout(
            OPEN_TIMEOUT,
            control.open_stream(peer, self.protocol.clone()),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "opening the link timed out"))?
        .map_err(|e| io::Error::other(e.to_string()))?;
        tracing::debug!(%peer, "control link open");
        let mut batch = Vec::with_capacity(BATCH);
        let mut buf = Vec::with_capacity(64 << 10);
        loop {
            batch.clear();
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return Ok(());
            }
            buf.clear();
            for msg in &batch {
                buf.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                buf.extend_from_slice(msg);
            }
            stream.write_all(&buf).await?;
            stream.flush().await?;
        }
    }
}

/// Accepts control links from peers and hands their messages to the node. A peer whose
/// frames are malformed or oversized is reported to `bad` (and disconnected by the caller).
pub fn spawn_acceptor(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    events: EventSink,
    bad: mpsc::Sender<PeerId>,
) {
    let mut incoming = match control.accept(protocol) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot accept control links");
            return;
        }
    };
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let (events, bad) = (events.clone(), bad.clone());
            let span = tracing::info_span!("link-in", %peer);
            tokio::spawn(
                async move {
                    match read_link(peer, stream, &events).await {
                        Ok(()) => tracing::debug!(%peer, "control link closed"),
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            tracing::warn!(%peer, error = %e, "malformed control message; disconnecting the peer");
                            let _ = bad.send(peer).await;
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "control link ended"),
                    }
                }
                .instrument(span),
            );
        }
    });
}

async fn read_link(peer: PeerId, stream: libp2p::Stream, events: &EventSink) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 << 10, stream);
    let mut body = Vec::new();
    loop {
        let mut msgs = Vec::new();
        loop {
            let mut len = [0u8; 4];
            match reader.read_exact(&mut len).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && msgs.is_empty() => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > MAX_PEER_MSG {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a control message of {len} bytes exceeds the limit"),
                ));
            }
            body.resize(len, 0);
            reader.read_exact(&mut body).await?;
            let msg: PeerMsg = codec::decode(&body, MAX_PEER_MSG)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            msgs.push(msg);
            // Batch what has already arrived; never wait for more while holding some.
            let buffered = reader.buffer();
            let next_ready = buffered.len() >= 4 && {
                let n = u32::from_le_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]);
                buffered.len() >= 4 + n as usize
            };
            if !next_ready || msgs.len() >= BATCH {
                break;
            }
        }
        let Some(tx) = events.get() else {
            tracing::debug!(%peer, "control messages before the node listens; dropped");
            continue;
        };
        if !tx.send(NetEvent::Messages { peer, msgs }).await {
            return Ok(());
        }
    }
}
