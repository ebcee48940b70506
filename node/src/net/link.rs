//! Control links: one long-lived stream per direction between two peers
//! (`/shoal/<mesh>/ctl/12`), carrying [`PeerMsg`]s in order.
//!
//! A message to a peer is encoded as a frame ([`shoal_protocol::frame`], at most
//! [`MAX_PEER_MSG`] bytes of bincode [`PeerMsg`]) and goes into that peer's queue, bounded
//! both in messages ([`LINK_QUEUE`]) and in bytes ([`LINK_QUEUE_BYTES`]); one writer task
//! per peer opens the stream on first use and writes what is queued in batches (one flush
//! per batch), releasing the bytes as they are written. The other side reads the frames and
//! hands them to the node in batches, in order. Order matters: a caller's actor calls stay
//! in the order sent because they share one stream.
//!
//! A link that cannot open or breaks is reported as [`NetEvent::Unreachable`]: whatever was
//! queued on it is lost, and the node treats its work there as it treats a lost peer's.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use shoal_protocol::frame::FrameError;
use shoal_protocol::mesh::{LoadReport, PeerMsg, MAX_PEER_MSG};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::framed::{self, FrameReader};
use super::limits::{PeerLimits, StreamKind};
use super::tasks::{self, Tasks};

/// Messages queued for one peer at most.
pub const LINK_QUEUE: usize = 1 << 16;
/// Bytes of encoded frames queued for one peer at most. A single message larger than this
/// (up to [`MAX_PEER_MSG`]) is still taken when nothing else is queued.
pub const LINK_QUEUE_BYTES: usize = 64 << 20;
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
    /// The peer's queue is full (in messages or in bytes): it is not keeping up.
    #[error("the link to peer {0} is full")]
    Full(PeerId),
    /// The message could not be encoded, or is larger than [`MAX_PEER_MSG`].
    #[error("encoding a peer message: {0}")]
    Encode(#[source] FrameError),
    /// The network has been shut down.
    #[error("the network has stopped")]
    Stopped,
}

/// The queue of one peer: its messages, and the bytes they hold.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
}

impl Queue {
    fn new() -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let queue = Self {
            tx,
            bytes: Arc::new(AtomicUsize::new(0)),
        };
        (queue, rx)
    }

    /// Queues one frame if both bounds allow it.
    fn push(&self, peer: PeerId, frame: Vec<u8>) -> Result<(), LinkError> {
        let len = frame.len();
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held + len <= LINK_QUEUE_BYTES).then_some(held + len)
            })
            .map_err(|_| LinkError::Full(peer))?;
        // Full, or closed: the writer ended since the queue was looked up (the link broke,
        // and is reported so) and this message goes with the ones queued before it.
        self.tx.try_send(frame).map_err(|_| {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            LinkError::Full(peer)
        })
    }
}

/// The outbound links of this node.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Mutex<HashMap<PeerId, Queue>>>,
    control: libp2p_stream::Control,
    protocol: StreamProtocol,
    events: EventSink,
    tasks: Tasks,
    stall: Duration,
}

impl Links {
    /// Links over `control` speaking `protocol`; breaks are reported to `events`; writers
    /// run as `tasks`; a link that writes nothing for `stall` while messages wait is broken.
    pub(crate) fn new(
        control: libp2p_stream::Control,
        protocol: StreamProtocol,
        events: EventSink,
        tasks: Tasks,
        stall: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HashMap::new())),
            control,
            protocol,
            events,
            tasks,
            stall,
        }
    }

    /// Queues `msg` for `peer`, opening the link if needed. Never waits.
    pub fn send(&self, peer: PeerId, msg: &PeerMsg) -> Result<(), LinkError> {
        let frame = framed::encode(msg, MAX_PEER_MSG).map_err(LinkError::Encode)?;
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `close` takes after stopping: no writer starts later.
        if self.tasks.stopping() {
            return Err(LinkError::Stopped);
        }
        let queue = match links.get(&peer) {
            Some(q) if !q.tx.is_closed() => q.clone(),
            _ => {
                let (queue, rx) = Queue::new();
                links.insert(peer, queue.clone());
                let span = tracing::info_span!("link", %peer);
                let writer = self.clone().write(peer, rx, queue.bytes.clone());
                self.tasks.spawn(writer.instrument(span));
                queue
            }
        };
        drop(links);
        queue.push(peer, frame)
    }

    /// Bytes queued for `peer` and not yet written.
    pub fn queued_bytes(&self, peer: PeerId) -> usize {
        let links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        links
            .get(&peer)
            .map_or(0, |q| q.bytes.load(Ordering::Acquire))
    }

    /// Drops `peer`'s link after the node declared the peer lost: the node has already
    /// written off what was queued there, so that link breaking later (say, when a partition
    /// heals and its old connection finally closes) is not reported, and would otherwise be
    /// taken for a loss of the new connection's work. The next message opens a new link.
    pub fn forget(&self, peer: PeerId) {
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        links.remove(&peer);
    }

    /// Stops taking messages: each writer writes what is queued and ends. Called once the
    /// network is stopping.
    pub(crate) fn close(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The writer of one link: holds no sender of its own queue, so it ends once the
    /// queue is dropped from `inner` (by [`Links::close`]) and drained.
    async fn write(self, peer: PeerId, mut rx: mpsc::Receiver<Vec<u8>>, bytes: Arc<AtomicUsize>) {
        let result = self.open_and_write(peer, &mut rx, &bytes).await;
        // Still the peer's link, unless forgotten (or replaced) meanwhile.
        let current = {
            let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let current = links
                .get(&peer)
                .is_some_and(|q| Arc::ptr_eq(&q.bytes, &bytes));
            if current {
                links.remove(&peer);
            }
            current
        };
        rx.close();
        match &result {
            Err(e) if current => {
                tracing::warn!(%peer, error = %e, "control link broke");
                self.unreachable(peer).await;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "a link of a peer written off as lost ended");
            }
            Ok(()) => {}
        }
    }

    /// Tells the node that what was queued for `peer` is lost.
    async fn unreachable(&self, peer: PeerId) {
        let Some(events) = self.events.get() else {
            tracing::debug!(%peer, "a link broke before the node listens; nobody to tell");
            return;
        };
        if !events.send(NetEvent::Unreachable { peer }).await {
            tracing::debug!(%peer, "a link broke after the node stopped listening");
        }
    }

    async fn open_and_write(
        &self,
        peer: PeerId,
        rx: &mut mpsc::Receiver<Vec<u8>>,
        queued: &AtomicUsize,
    ) -> io::Result<()> {
        let control = self.control.clone();
        let protocol = self.protocol.clone();
        let open = move || {
            let (mut control, protocol) = (control.clone(), protocol.clone());
            async move {
                tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "opening the link timed out")
                    })?
                    .map_err(|e| io::Error::other(e.to_string()))
            }
        };
        let stream = open_accepted(open, peer).await?;
        tracing::debug!(%peer, "control link open");
        // Past its first byte the peer never writes on a control stream: its end closing
        // (or resetting) is what the read half sees.
        let (reads, writes) = stream.split();
        write_queue(writes, rx, queued, self.stall, peer_closed(reads)).await
    }
}

/// The first byte of every control stream, written by the side that accepts it once it
/// reads the stream: the opener writes nothing before it (see `open_accepted`).
pub const ACCEPTED: u8 = 0x5a;
/// Streams opened for one link at most, while the peer drops them unread.
const OPEN_ATTEMPTS: u32 = 5;
/// The pause before opening again, doubled on each attempt.
const REOPEN_AFTER: Duration = Duration::from_millis(20);

/// Opens a control stream with `open` and waits until the peer has taken it in (its first
/// byte, [`ACCEPTED`]). A stream that ends before that was dropped unread: libp2p-stream
/// hands a protocol's inbound streams over through a channel of one slot and drops any that
/// arrive while it is full (libp2p/rust-libp2p#5651), as when two peers open their links to
/// one node at the same instant. Nothing of it was read, so another is opened, up to
/// [`OPEN_ATTEMPTS`] times; before, that link was reported broken and the peer written off,
/// with everything this node had sent it.
async fn open_accepted<S, F, Fut>(mut open: F, peer: PeerId) -> io::Result<S>
where
    S: AsyncRead + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<S>>,
{
    let mut attempt = 1;
    loop {
        let mut stream = open().await?;
        let mut first = [0u8; 1];
        let read = tokio::time::timeout(OPEN_TIMEOUT, stream.read(&mut first))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "the peer did not take the link in")
            })?;
        let error = match read {
            Ok(1) if first[0] == ACCEPTED => return Ok(stream),
            Ok(1) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the peer's control stream does not start as one",
                ))
            }
            Ok(_) => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer dropped the link unread",
            ),
            Err(e) => e,
        };
        if attempt >= OPEN_ATTEMPTS {
            return Err(error);
        }
        tracing::debug!(%peer, attempt, %error, "the peer dropped a new link unread; opening another");
        tokio::time::sleep(REOPEN_AFTER * 2u32.pow(attempt - 1)).await;
        attempt += 1;
    }
}

/// Ends once the peer has closed or reset its end of a control stream, with the error that
/// says so. (Anything it sends is ignored: a control stream carries one direction only.)
async fn peer_closed<R: AsyncRead + Unpin>(mut reads: R) -> io::Error {
    let mut buf = [0u8; 64];
    loop {
        match reads.read(&mut buf).await {
            Ok(0) => {
                return io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the peer closed its end of the link",
                )
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// Most bytes written at once: a link must get at least this far every `stall`.
const WRITE_CHUNK: usize = 1 << 20;

/// Writes the frames of `rx` to `stream` in batches, one flush each, releasing their bytes
/// from `queued` once written, until every sender is gone; then closes the stream. Fails
/// with `TimedOut` if a chunk of [`WRITE_CHUNK`] bytes (or the flush) takes longer than
/// `stall`: the peer stopped reading. Fails with `closed`'s error as soon as it ends (the
/// peer closed or reset its end), even while nothing is queued: frames written into a stream
/// the peer dropped are lost, and only a broken link tells the node so (a write is not
/// refused until after the reset arrives, and the next write may never come, say when the
/// node waits for the results of the tasks it sent last).
async fn write_queue<W: AsyncWrite + Unpin>(
    mut stream: W,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    queued: &AtomicUsize,
    stall: Duration,
    closed: impl std::future::Future<Output = io::Error>,
) -> io::Result<()> {
    let stalled = || io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading its link");
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = Vec::with_capacity(64 << 10);
    let mut closed = std::pin::pin!(closed);
    loop {
        batch.clear();
        let got = tokio::select! {
            got = rx.recv_many(&mut batch, BATCH) => got,
            e = &mut closed => return Err(e),
        };
        if got == 0 {
            return stream.close().await;
        }
        buf.clear();
        for frame in &batch {
            buf.extend_from_slice(frame);
        }
        for chunk in buf.chunks(WRITE_CHUNK) {
            tokio::time::timeout(stall, stream.write_all(chunk))
                .await
                .map_err(|_| stalled())??;
        }
        tokio::time::timeout(stall, stream.flush())
            .await
            .map_err(|_| stalled())??;
        queued.fetch_sub(buf.len(), Ordering::AcqRel);
    }
}

/// Accepts control links from peers and hands their messages to the node, until `stop`. A
/// peer whose frames are malformed or oversized is reported to `bad` (and disconnected by
/// the network task). A peer's links beyond [`super::limits::CONTROL_STREAMS_PER_PEER`] are reset
/// at once, and what its links have read and not yet handed over is bounded by its budget.
pub(crate) async fn accept(
    incoming: libp2p_stream::IncomingStreams,
    events: EventSink,
    bad: mpsc::Sender<PeerId>,
    limits: PeerLimits,
    stop: CancellationToken,
) {
    let reader_stop = stop.clone();
    let kind = StreamKind::Control;
    tasks::serve_streams(incoming, stop, limits, kind, move |peer, stream, permit| {
        let (events, bad, stop) = (events.clone(), bad.clone(), reader_stop.clone());
        let span = tracing::info_span!("link-in", %peer);
        async move {
            let mut stream = stream;
            // Taken in: the opener may write (see `open_accepted`).
            let accepted = async {
                stream.write_all(&[ACCEPTED]).await?;
                stream.flush().await
            };
            match tokio::time::timeout(OPEN_TIMEOUT, accepted).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "control link ended before it was taken in");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "control link not taken in: the peer does not read");
                    return;
                }
            }
            let reader = FrameReader::with_budget(stream, permit.budget().clone());
            let read = stop.run_until_cancelled(read_link(peer, reader, &events));
            match read.await {
                None => tracing::debug!(%peer, "control link dropped: the network is stopping"),
                Some(Ok(())) => tracing::debug!(%peer, "control link closed"),
                Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(%peer, error = %e, "malformed control message; disconnecting the peer");
                    if bad.send(peer).await.is_err() {
                        tracing::debug!(%peer, "not disconnected: the network task has stopped");
                    }
                }
                Some(Err(e)) => tracing::debug!(%peer, error = %e, "control link ended"),
            }
            // Counted against the peer's limit until here.
            drop(permit);
        }
        .instrument(span)
    })
    .await;
}

/// Reads `peer`'s control messages off its link and hands them to the node in batches.
async fn read_link(
    peer: PeerId,
    mut reader: FrameReader<libp2p::Stream>,
    events: &EventSink,
) -> io::Result<()> {
    loop {
        let Some(first) = reader.next::<PeerMsg>(MAX_PEER_MSG).await? else {
            return Ok(());
        };
        let mut msgs = vec![first];
        // Batch what has already arrived; never wait for more while holding some.
        while msgs.len() < BATCH {
            match reader.try_next::<PeerMsg>(MAX_PEER_MSG)? {
                Some(msg) => msgs.push(msg),
                None => break,
            }
        }
        let Some(tx) = events.get() else {
            tracing::debug!(%peer, count = msgs.len(), "control messages before the node listens; dropped");
            continue;
        };
        if !tx.send(NetEvent::Messages { peer, msgs }).await {
            tracing::debug!(%peer, "the node stopped listening; closing the link");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(bytes: usize) -> PeerMsg {
        PeerMsg::Refuse {
            task: shoal_protocol::TaskId([1; 16]),
            reason: "x".repeat(bytes),
        }
    }

    fn links() -> Links {
        let behaviour = libp2p_stream::Behaviour::new();
        Links::new(
            behaviour.new_control(),
            StreamProtocol::new("/shoal/test/ctl/1"),
            EventSink::default(),
            Tasks::new(tokio::runtime::Handle::current()),
            Duration::from_secs(20),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_link_queue_is_bounded_in_bytes() {
        // No swarm drives the control: the writer waits to open the stream, and nothing
        // leaves the queue.
        let links = links();
        let peer = PeerId::random();
        let mib = refuse(1 << 20);
        let frame_len = framed::encode(&mib, MAX_PEER_MSG).unwrap().len();
        let fit = LINK_QUEUE_BYTES / frame_len;
        for _ in 0..fit {
            links.send(peer, &mib).unwrap();
        }
        assert_eq!(links.queued_bytes(peer), fit * frame_len);
        assert!(matches!(links.send(peer, &mib), Err(LinkError::Full(p)) if p == peer));
        // A small message still fits in what is left; the refused ones took nothing.
        let small = refuse(10);
        links.send(peer, &small).unwrap();
        let small_len = framed::encode(&small, MAX_PEER_MSG).unwrap().len();
        assert_eq!(links.queued_bytes(peer), fit * frame_len + small_len);
        // Another peer has a queue of its own; the largest message (a frame over the bound)
        // is taken when nothing else is queued.
        let other = PeerId::random();
        let overhead = frame_len - (1 << 20);
        let largest = refuse(MAX_PEER_MSG + shoal_protocol::frame::HEADER_LEN - overhead);
        assert!(framed::encode(&largest, MAX_PEER_MSG).unwrap().len() > LINK_QUEUE_BYTES);
        links.send(other, &largest).unwrap();
        assert!(matches!(links.send(other, &small), Err(LinkError::Full(_))));
        // Over the protocol's limit: refused as such, not as full.
        let third = PeerId::random();
        assert!(matches!(
            links.send(third, &refuse(MAX_PEER_MSG + 1)),
            Err(LinkError::Encode(FrameError::TooLarge { .. }))
        ));
        assert_eq!(links.queued_bytes(third), 0);
        // Once stopping, nothing is queued.
        links.tasks.abort();
        links.close();
        assert!(matches!(links.send(peer, &small), Err(LinkError::Stopped)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_the_peer_drops_unread_is_opened_again_and_a_taken_one_is_kept() {
        let peer = PeerId::random();
        // Two dropped unread (their read half ends at once), then one taken in.
        let mut opened = 0;
        let open = || {
            opened += 1;
            let bytes = if opened < 3 {
                vec![]
            } else {
                vec![ACCEPTED, 7]
            };
            async move { Ok(futures::io::Cursor::new(bytes)) }
        };
        let mut stream = open_accepted(open, peer).await.unwrap();
        assert_eq!(opened, 3);
        // The marker is consumed; what follows is the peer's.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, [7]);

        // A peer that drops every one: the link fails after the bounded attempts.
        let mut opened = 0;
        let open = || {
            opened += 1;
            async { Ok(futures::io::Cursor::new(Vec::new())) }
        };
        let err = open_accepted(open, peer).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(opened, OPEN_ATTEMPTS);

        // Something else first: not a control stream, no second try.
        let mut opened = 0;
        let open = || {
            opened += 1;
            async { Ok(futures::io::Cursor::new(vec![b'x'])) }
        };
        let err = open_accepted(open, peer).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(opened, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_link_whose_peer_closed_its_end_breaks() {
        // A sender is kept: nothing more is queued, and the link would wait for ever.
        let (queue, mut rx) = Queue::new();
        let mut out = futures::io::Cursor::new(Vec::new());
        // The peer's end, as the read half sees it once the peer dropped the stream.
        let peer_end = futures::io::Cursor::new(Vec::new());
        let err = write_queue(
            &mut out,
            &mut rx,
            &queue.bytes,
            Duration::from_secs(5),
            peer_closed(peer_end),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(!queue.tx.is_closed());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn written_frames_release_their_bytes_and_parse_back() {
        let (queue, mut rx) = Queue::new();
        let peer = PeerId::random();
        let msgs: Vec<PeerMsg> = (0..100).map(|i| refuse(i * 1000)).collect();
        for m in &msgs {
            queue
                .push(peer, framed::encode(m, MAX_PEER_MSG).unwrap())
                .unwrap();
        }
        assert!(queue.bytes.load(Ordering::Acquire) > 0);
        let bytes = queue.bytes.clone();
        drop(queue);
        let mut out = futures::io::Cursor::new(Vec::new());
        let never = std::future::pending();
        write_queue(&mut out, &mut rx, &bytes, Duration::from_secs(5), never)
            .await
            .unwrap();
        assert_eq!(bytes.load(Ordering::Acquire), 0);
        let mut reader = FrameReader::new(futures::io::Cursor::new(out.into_inner()));
        for m in &msgs {
            assert_eq!(
                reader.next::<PeerMsg>(MAX_PEER_MSG).await.unwrap().as_ref(),
                Some(m)
            );
        }
        assert!(reader
            .next::<PeerMsg>(MAX_PEER_MSG)
            .await
            .unwrap()
            .is_none());
    }
}
