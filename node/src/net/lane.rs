//! The sealed lane: an object's bytes on a TCP connection of their own, sealed with
//! AES-256-GCM under a key handed over on the authenticated libp2p stream that asked for them.
//!
//! Why: a libp2p connection is one Noise session, which seals with ChaCha20-Poly1305 on one
//! core, under yamux's framing and flow control. AES-GCM runs several times faster where the
//! CPU has AES instructions, and a connection of its own carries the bytes without a
//! multiplexer's copies and windows. The libp2p stream stays the transfer's control: who
//! asks is checked there (admission, the object's rights, the per-peer limits), and it stays
//! open until the bytes are sent, so what ends it ends the transfer.
//!
//! The exchange, for one range of one object:
//! 1. The puller asks on the object stream, saying it can take the lane
//!    ([`super::objects::ObjectRequest::lane`]).
//! 2. The holder answers `Found` with an [`Offer`]: the port of its lane listener, a fresh
//!    random ticket (128 bits) and a fresh random key (256 bits). The offer travels inside
//!    the Noise session, so only the asking peer learns it.
//! 3. The puller connects to that port, at the address its libp2p connection to the holder
//!    has ([`Routes`]), and sends the ticket. The holder's listener hands the connection to
//!    the request holding that ticket (a ticket is good once, for [`CLAIM_WITHIN`]);
//!    a connection with another ticket, or none, is closed with a log line.
//! 4. The holder sends the range in frames of [`FRAME`] bytes (the last one shorter), each
//!    sealed: nonce = the frame's number, associated data = its offset in the object, and
//!    the 16-byte tag after it. The puller opens each frame before it writes or hashes a
//!    byte of it, so a forged, reordered, replayed or cut frame is an error at that frame,
//!    and the bytes before it stand (a retry resumes there).
//!
//! A puller that cannot reach the lane (no IP route to the holder, the port closed or
//! filtered, say behind a NAT) asks again without it and takes the bytes on the stream;
//! [`Routes`] remembers such a holder for [`UNREACHABLE_FOR`].
//!
//! Both ends move bytes on a blocking thread (a frame is a `pread` and a seal, or a read,
//! an open, a `pwrite` and a hash: no task of the runtime waits that long), with the
//! socket's stall timeouts; a transfer whose future is dropped shuts its socket down, which
//! ends the thread's next read or write.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;

/// Bytes of object per sealed frame.
pub const FRAME: usize = 1 << 20;
/// The tag after each frame.
pub const TAG: usize = 16;
/// An offer's ticket must be claimed this soon.
pub const CLAIM_WITHIN: Duration = Duration::from_secs(10);
/// A connection to the lane must send its ticket this soon.
pub const TICKET_WITHIN: Duration = Duration::from_secs(5);
/// Connecting to a holder's lane takes at most this long.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// A holder whose lane could not be reached is not tried again for this long.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(60);
/// Offers waiting for their connection, at most (more are not made: the range goes on the
/// stream).
pub const MAX_OFFERS: usize = 256;
/// Connections that have not yet sent their ticket, at most (more are closed at once).
pub const MAX_HANDSHAKES: usize = 64;
/// Ranges shorter than this go on the stream: a connection of its own is not worth it.
pub const MIN_RANGE: u64 = 1 << 20;

/// A secret of 32 bytes, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A holder's offer to send a range on its lane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The lane's port, at the holder's address.
    pub port: u16,
    /// What the connection sends first.
    pub ticket: [u8; 16],
    /// The AES-256-GCM key of this range's frames.
    pub key: Secret,
}

/// Why a transfer on the lane failed.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// The socket, or the file being sent.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file being received into.
    #[error("writing what the lane brought: {0}")]
    Sink(io::Error),
    /// A frame that does not open under the range's key: forged, altered or out of place.
    #[error("frame {frame} (at byte {offset}) failed authentication")]
    Forged {
        /// The frame's number.
        frame: u64,
        /// Its offset in the object.
        offset: u64,
    },
    /// The system's random source failed.
    #[error("no randomness for a key")]
    Random,
}

impl From<LaneError> for io::Error {
    fn from(e: LaneError) -> Self {
        match e {
            LaneError::Io(e) | LaneError::Sink(e) => e,
            e @ LaneError::Forged { .. } => io::Error::new(io::ErrorKind::InvalidData, e),
            e @ LaneError::Random => io::Error::other(e),
        }
    }
}

/// Connections waiting to be claimed, by ticket.
type Waiting = Mutex<HashMap<[u8; 16], oneshot::Sender<TcpStream>>>;

/// A holder's lane: its listener's port and the offers not yet claimed.
pub struct Lane {
    port: u16,
    /// Where the lanes in use are watched (shut down when their peer goes).
    routes: Routes,
    waiting: Arc<Waiting>,
    random: SystemRandom,
    /// Object bytes sent on the lane so far.
    sent: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("port", &self.port).finish()
    }
}

/// The ip of the first TCP address among `addrs`: where a lane listens alongside them.
pub fn listen_ip(addrs: &[Multiaddr]) -> Option<IpAddr> {
    addrs.iter().find_map(|a| {
        if a.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            // A relayed address: the IP is the relay's.
            return None;
        }
        let mut it = a.iter();
        let ip = match it.next()? {
            Protocol::Ip4(ip) => IpAddr::V4(ip),
            Protocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        matches!(it.next()?, Protocol::Tcp(_)).then_some(ip)
    })
}

impl Lane {
    /// Listens on `ip` and `port` (0: any free port). The returned future accepts
    /// connections until `stop`; run it as a task.
    pub async fn bind(
        ip: IpAddr,
        port: u16,
        routes: Routes,
        stop: CancellationToken,
    ) -> io::Result<(
        Arc<Lane>,
        impl std::future::Future<Output = ()> + Send + 'static,
    )> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await?;
        let port = listener.local_addr()?.port();
        let lane = Arc::new(Lane {
            port,
            routes,
            waiting: Arc::default(),
            random: SystemRandom::new(),
            sent: Default::default(),
        });
        let waiting = lane.waiting.clone();
        tracing::debug!(%ip, port, "the sealed lane listens");
        Ok((lane, accept(listener, waiting, stop)))
    }

    /// The lane's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Watches `socket`, in use with `peer`, until the guard is dropped (see
    /// [`Routes::watch`]).
    pub fn watch(&self, peer: PeerId, socket: &TcpStream) -> io::Result<Watched> {
        self.routes.watch(peer, socket)
    }

    /// Counts `bytes` sent on the lane.
    pub fn sent(&self, bytes: u64) {
        self.sent
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Object bytes sent on the lane so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A fresh offer, and the claim that its connection arrives on. `None` when
    /// [`MAX_OFFERS`] are waiting already.
    pub fn offer(&self) -> Result<Option<(Offer, Claim)>, LaneError> {
        let mut ticket = [0u8; 16];
        let mut key = [0u8; 32];
        self.random
            .fill(&mut ticket)
            .and_then(|()| self.random.fill(&mut key))
            .map_err(|_| LaneError::Random)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.len() >= MAX_OFFERS {
                return Ok(None);
            }
            waiting.insert(ticket, tx);
        }
        let offer = Offer {
            port: self.port,
            ticket,
            key: Secret(key),
        };
        let claim = Claim {
            ticket,
            rx,
            waiting: self.waiting.clone(),
        };
        Ok(Some((offer, claim)))
    }
}

/// An offer's connection, once it arrives. Dropped unclaimed, the offer is withdrawn.
pub struct Claim {
    ticket: [u8; 16],
    rx: oneshot::Receiver<TcpStream>,
    waiting: Arc<Waiting>,
}

impl Claim {
    /// The connection that sent the ticket; `TimedOut` after [`CLAIM_WITHIN`].
    pub async fn connection(mut self) -> io::Result<TcpStream> {
        match tokio::time::timeout(CLAIM_WITHIN, &mut self.rx).await {
            Ok(Ok(socket)) => Ok(socket),
            Ok(Err(_)) => Err(io::Error::other("the lane stopped")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the puller did not connect to the lane",
            )),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.ticket);
    }
}

/// Accepts lane connections until `stop`: each sends its ticket within [`TICKET_WITHIN`]
/// and is handed to the offer that holds it; the others are closed.
async fn accept(listener: tokio::net::TcpListener, waiting: Arc<Waiting>, stop: CancellationToken) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let (socket, from) = tokio::select! {
            () = stop.cancelled() => return,
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "a lane handshake task failed");
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "the sealed lane cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if handshakes.len() >= MAX_HANDSHAKES {
            tracing::warn!(%from, "too many lane connections without a ticket; closed");
            continue;
        }
        let waiting = waiting.clone();
        let span = tracing::debug_span!("lane_connection", %from);
        handshakes.spawn(tracing::Instrument::instrument(
            async move {
                match handshake(socket, &waiting).await {
                    Ok(()) => tracing::trace!("claimed"),
                    Err(e) => tracing::warn!(error = %e, "a lane connection was refused"),
                }
            },
            span,
        ));
    }
}

/// Reads a connection's ticket and hands it over.
async fn handshake(mut socket: tokio::net::TcpStream, waiting: &Waiting) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut ticket = [0u8; 16];
    tokio::time::timeout(TICKET_WITHIN, socket.read_exact(&mut ticket))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ticket"))??;
    let claim = waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&ticket);
    let Some(claim) = claim else {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "an unknown or used ticket",
        ));
    };
    let socket = blocking(socket)?;
    claim
        .send(socket)
        .map_err(|_| io::Error::other("the offer was withdrawn before its connection came"))
}

/// A blocking socket's timeout, as the error it is.
fn stalled(e: io::Error, what: &str) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("the lane stalled {what}"))
        }
        _ => e,
    }
}

/// A tokio socket as a blocking one, with stall timeouts.
fn blocking(socket: tokio::net::TcpStream) -> io::Result<TcpStream> {
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(super::objects::STALL))?;
    socket.set_write_timeout(Some(super::objects::STALL))?;
    Ok(socket)
}

/// Connects to a holder's lane at `ip` and sends the offer's ticket.
pub async fn connect(ip: IpAddr, offer: &Offer) -> io::Result<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let addr = SocketAddr::new(ip, offer.port);
    let mut socket = tokio::time::timeout(CONNECT_WITHIN, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the lane"))??;
    socket.write_all(&offer.ticket).await?;
    blocking(socket)
}

fn key(secret: &Secret) -> LessSafeKey {
    // A 32-byte key is always one AES-256 takes.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &secret.0).expect("a 32-byte key"))
}

fn nonce(frame: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&frame.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Where bytes come from for [`send`]: a file, or (for benchmarks) one buffer repeated.
pub enum Source<'a> {
    /// Read at the range's offsets.
    File(&'a File),
    /// These bytes, over and over.
    Pattern(&'a [u8]),
}

/// Sends bytes `offset..end` of `source`, sealed under `secret`, on `socket` (blocking).
/// Returns the bytes sent.
pub fn send(
    socket: &mut TcpStream,
    source: Source<'_>,
    offset: u64,
    end: u64,
    secret: &Secret,
) -> Result<u64, LaneError> {
    let key = key(secret);
    let mut buf = vec![0u8; FRAME.min((end - offset) as usize) + TAG];
    let mut at = offset;
    let mut frame = 0u64;
    while at < end {
        let n = (end - at).min(FRAME as u64) as usize;
        match source {
            Source::File(file) => file.read_exact_at(&mut buf[..n], at)?,
            Source::Pattern(p) => {
                let mut from = (at % p.len() as u64) as usize;
                let mut filled = 0;
                while filled < n {
                    let k = (p.len() - from).min(n - filled);
                    buf[filled..filled + k].copy_from_slice(&p[from..from + k]);
                    filled += k;
                    from = 0;
                }
            }
        }
        let tag = key
            .seal_in_place_separate_tag(nonce(frame), Aad::from(at.to_be_bytes()), &mut buf[..n])
            .map_err(|_| io::Error::other("sealing failed"))?;
        buf[n..n + TAG].copy_from_slice(tag.as_ref());
        socket
            .write_all(&buf[..n + TAG])
            .map_err(|e| stalled(e, "sending"))?;
        at += n as u64;
        frame += 1;
    }
    socket.flush()?;
    Ok(at - offset)
}

/// Where [`receive`] puts the bytes it opens.
pub enum Sink<'a> {
    /// Written at their offsets, and hashed in order. The file is open for reading and
    /// writing, at least as long as the range's end, and private to the receiver until the transfer is done (it is written
    /// through a mapping, which a file truncated under it would fault).
    File(&'a File, &'a mut blake3::Hasher),
    /// Dropped (benchmarks).
    Discard,
}

/// Bytes of the file mapped at a time by [`receive`]: frames are read straight into the
/// mapping (populated at once, not a page fault at a time), with no copy after the read.
const WINDOW: u64 = 16 << 20;

/// Receives bytes `*at..end` sealed under `secret` from `socket` (blocking) into `sink`;
/// `*at` advances frame by frame as each one opens and is written, so after a failure it
/// says where to resume (the hasher has then taken every byte before `*at`, and no other).
///
/// Into a file, the bytes are hashed on a thread of their own, a window behind the frames
/// being read, so that reading and opening frames and hashing them use two CPUs.
pub fn receive(
    socket: &mut TcpStream,
    sink: Sink<'_>,
    at: &mut u64,
    end: u64,
    secret: &Secret,
    progress: Option<&Progress>,
) -> Result<(), LaneError> {
    let key = key(secret);
    let (file, hasher) = match sink {
        Sink::File(file, hasher) => (file, hasher),
        Sink::Discard => {
            let mut scratch = Vec::new();
            let mut frame = 0u64;
            while *at < end {
                let n = (end - *at).min(FRAME as u64) as usize;
                scratch.resize(n, 0);
                open_frame(socket, &key, frame, *at, end, &mut scratch)?;
                *at += n as u64;
                frame += 1;
                if let Some(p) = progress {
                    p.add(n as u64);
                }
            }
            return Ok(());
        }
    };
    let len = file.metadata().map_err(LaneError::Sink)?.len();
    if len < end {
        return Err(LaneError::Sink(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the file has {len} bytes, the range ends at {end}"),
        )));
    }
    std::thread::scope(|scope| {
        // Windows whose bytes were written, with how many of them to hash: at most one
        // waits while another is hashed and a third is filled.
        let (done, filled) = std::sync::mpsc::sync_channel::<(memmap2::MmapMut, usize)>(1);
        let hashing = scope.spawn(move || {
            for (map, len) in filled {
                hasher.update(&map[..len]);
            }
        });
        let result = receive_windows(socket, file, &key, at, end, progress, |map, len| {
            if len > 0 && done.send((map, len)).is_err() {
                // (Only if the hashing thread panicked: its join below says so.)
                return Err(LaneError::Sink(io::Error::other(
                    "the hashing thread ended",
                )));
            }
            Ok(())
        });
        drop(done);
        match hashing.join() {
            Ok(()) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// [`receive`] into `file`, a mapped window at a time, each handed to `hash` with the
/// length of its bytes that opened once it is full, or at the end, or at a failure.
fn receive_windows(
    socket: &mut TcpStream,
    file: &File,
    key: &LessSafeKey,
    at: &mut u64,
    end: u64,
    progress: Option<&Progress>,
    mut hash: impl FnMut(memmap2::MmapMut, usize) -> Result<(), LaneError>,
) -> Result<(), LaneError> {
    // The mapped part of the file, and the offset of its first byte.
    let mut window: Option<(memmap2::MmapMut, u64)> = None;
    let mut frame = 0u64;
    let result = loop {
        if *at >= end {
            break Ok(());
        }
        let n = (end - *at).min(FRAME as u64) as usize;
        let covered = window
            .as_ref()
            .is_some_and(|(map, from)| *at + n as u64 <= from + map.len() as u64);
        if !covered {
            if let Some((map, from)) = window.take() {
                hash(map, (*at - from) as usize)?;
            }
            let len = (end - *at).min(WINDOW);
            // SAFETY: the file is at least `end` bytes long (checked by the caller) and
            // private to this transfer (the sink's contract), so nothing truncates it under
            // the mapping; the mapping is dropped by this function or the hashing thread,
            // both within the transfer.
            let map = unsafe {
                memmap2::MmapOptions::new()
                    .offset(*at)
                    .len(len as usize)
                    .populate()
                    .map_mut(file)
            };
            match map {
                Ok(map) => window = Some((map, *at)),
                Err(e) => break Err(LaneError::Sink(e)),
            }
        }
        let (map, from) = window.as_mut().expect("mapped above");
        let i = (*at - *from) as usize;
        if let Err(e) = open_frame(socket, key, frame, *at, end, &mut map[i..i + n]) {
            break Err(e);
        }
        *at += n as u64;
        frame += 1;
        if let Some(p) = progress {
            p.add(n as u64);
        }
    };
    // The bytes that opened in the last window are hashed too, whatever the outcome.
    if let Some((map, from)) = window.take() {
        hash(map, (*at - from) as usize)?;
    }
    result
}

/// Reads frame number `frame` (the bytes at `at`, `bytes.len()` of them, and the tag) into
/// `bytes` and opens it in place.
fn open_frame(
    socket: &mut TcpStream,
    key: &LessSafeKey,
    frame: u64,
    at: u64,
    end: u64,
    bytes: &mut [u8],
) -> Result<(), LaneError> {
    let mut tag = [0u8; TAG];
    let short = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the lane ended {} bytes short", end - at),
            )
        } else {
            stalled(e, "receiving")
        }
    };
    socket.read_exact(bytes).map_err(short)?;
    socket.read_exact(&mut tag).map_err(short)?;
    key.open_in_place_separate_tag(
        nonce(frame),
        Aad::from(at.to_be_bytes()),
        Tag::from(tag),
        bytes,
        0..,
    )
    .map_err(|_| LaneError::Forged { frame, offset: at })?;
    Ok(())
}

/// The puller's side: the IP of each connected peer's libp2p connection (where its lane
/// listens), and the holders whose lane could not be reached lately. One entry per
/// connected peer at most.
#[derive(Clone, Default)]
pub struct Routes {
    inner: Arc<Mutex<RoutesInner>>,
}

#[derive(Default)]
struct RoutesInner {
    ips: HashMap<PeerId, IpAddr>,
    unreachable: HashMap<PeerId, Instant>,
    /// The lane sockets in use with each peer, either way (clones, to shut them down when
    /// the peer's last connection closes), by a number of their own.
    sockets: HashMap<PeerId, Vec<(u64, TcpStream)>>,
    next_socket: u64,
    /// Times a holder's lane could not be reached, or brought nothing.
    fallbacks: u64,
}

/// A lane socket watched by [`Routes`]: shut down when its peer's last connection closes,
/// by [`Watched::now`], or when dropped (a transfer whose future is dropped ends its
/// blocking thread at the next read or write); forgotten then.
pub struct Watched {
    routes: Routes,
    peer: PeerId,
    number: u64,
}

impl Watched {
    /// Shuts the socket down now: the transfer's thread fails at its next read or write.
    pub fn now(&self) {
        let inner = self.routes.lock();
        let socket = inner
            .sockets
            .get(&self.peer)
            .and_then(|list| list.iter().find(|(n, _)| *n == self.number));
        if let Some((_, socket)) = socket {
            shut(socket, &self.peer);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut inner = self.routes.lock();
        let Some(list) = inner.sockets.get_mut(&self.peer) else {
            return;
        };
        if let Some(i) = list.iter().position(|(n, _)| *n == self.number) {
            let (_, socket) = list.swap_remove(i);
            shut(&socket, &self.peer);
        }
        if list.is_empty() {
            inner.sockets.remove(&self.peer);
        }
    }
}

/// Shuts a lane socket down (already closed is fine: the transfer is over either way).
fn shut(socket: &TcpStream, peer: &PeerId) {
    if let Err(e) = socket.shutdown(Shutdown::Both) {
        tracing::trace!(%peer, error = %e, "lane socket already closed");
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Routes")
    }
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RoutesInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `peer` at `remote` was established.
    pub fn connected(&self, peer: PeerId, remote: &Multiaddr) {
        if let Some(ip) = listen_ip(std::slice::from_ref(remote)) {
            self.lock().ips.insert(peer, ip);
        }
    }

    /// The last connection to `peer` closed.
    ///
    /// The lanes in use with `peer` are shut down: their transfers end now, as their
    /// streams do, not after a stall.
    pub fn disconnected(&self, peer: &PeerId) {
        let sockets = {
            let mut inner = self.lock();
            inner.ips.remove(peer);
            inner.unreachable.remove(peer);
            inner.sockets.remove(peer)
        };
        for (_, socket) in sockets.unwrap_or_default() {
            shut(&socket, peer);
        }
    }

    /// Watches `socket`, a lane in use with `peer`, until the returned guard is dropped.
    pub fn watch(&self, peer: PeerId, socket: &TcpStream) -> io::Result<Watched> {
        let clone = socket.try_clone()?;
        let mut inner = self.lock();
        let number = inner.next_socket;
        inner.next_socket += 1;
        inner.sockets.entry(peer).or_default().push((number, clone));
        Ok(Watched {
            routes: self.clone(),
            peer,
            number,
        })
    }

    /// Where to reach `peer`'s lane: `None` when its IP is not known or its lane was
    /// unreachable within [`UNREACHABLE_FOR`].
    pub fn route(&self, peer: &PeerId) -> Option<IpAddr> {
        let mut inner = self.lock();
        if let Some(since) = inner.unreachable.get(peer) {
            if since.elapsed() < UNREACHABLE_FOR {
                return None;
            }
            inner.unreachable.remove(peer);
        }
        inner.ips.get(peer).copied()
    }

    /// `peer`'s lane could not be reached.
    pub fn unreachable(&self, peer: PeerId) {
        let mut inner = self.lock();
        inner.fallbacks += 1;
        if inner.ips.contains_key(&peer) {
            inner.unreachable.insert(peer, Instant::now());
        }
    }

    /// Times a holder's lane could not be reached, or brought nothing (its bytes then came
    /// on the stream).
    pub fn fallbacks(&self) -> u64 {
        self.lock().fallbacks
    }

    /// Sets `peer`'s route by hand (tests of peers that are not connected through a swarm
    /// that reports to these routes).
    pub fn set(&self, peer: PeerId, ip: IpAddr) {
        self.lock().ips.insert(peer, ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn secret(b: u8) -> Secret {
        Secret([b; 32])
    }

    #[test]
    fn a_range_goes_through_sealed_and_comes_out_whole() {
        let dir = std::env::temp_dir().join(format!("shoal-lane-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src_path = dir.join("src");
        let data: Vec<u8> = (0..(3 * FRAME + 123))
            .map(|i| (i * 7 + i / 5) as u8)
            .collect();
        std::fs::write(&src_path, &data).unwrap();
        let dst_path = dir.join("dst");
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dst_path)
            .unwrap();
        dst.set_len(data.len() as u64).unwrap();
        let (mut a, mut b) = pair();
        let start = 1000u64;
        let end = data.len() as u64;
        let sender = std::thread::spawn(move || {
            let src = File::open(&src_path).unwrap();
            send(&mut a, Source::File(&src), start, end, &secret(1)).unwrap()
        });
        let mut hasher = blake3::Hasher::new();
        let mut at = start;
        receive(
            &mut b,
            Sink::File(&dst, &mut hasher),
            &mut at,
            end,
            &secret(1),
            None,
        )
        .unwrap();
        assert_eq!(sender.join().unwrap(), end - start);
        assert_eq!(at, end);
        let got = std::fs::read(&dst_path).unwrap();
        assert_eq!(&got[start as usize..], &data[start as usize..]);
        assert_eq!(hasher.finalize(), blake3::hash(&data[start as usize..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_key_or_an_altered_frame_fails_at_that_frame() {
        // Another key: the first frame fails, nothing is taken.
        let (mut a, mut b) = pair();
        let sender = std::thread::spawn(move || {
            let r = send(
                &mut a,
                Source::Pattern(b"xyz"),
                0,
                2 * FRAME as u64,
                &secret(1),
            );
            drop(a);
            r
        });
        let mut at = 0;
        let e = receive(
            &mut b,
            Sink::Discard,
            &mut at,
            2 * FRAME as u64,
            &secret(2),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                LaneError::Forged {
                    frame: 0,
                    offset: 0
                }
            ),
            "{e}"
        );
        assert_eq!(at, 0);
        drop(b);
        // The sender sees the receiver go, or had written all into the socket's buffers.
        let _sent_or_not = sender.join().unwrap();

        // One bit flipped in the second frame: the first stands, the second fails.
        let mut frames = sealed(3, 0, 0, 9);
        frames.extend(sealed(3, 1, FRAME as u64, 9));
        frames[FRAME + TAG + 77] ^= 1;
        let (e, at) = feed(frames, 3);
        assert!(matches!(e, LaneError::Forged { frame: 1, .. }), "{e}");
        assert_eq!(at, FRAME as u64);
    }

    /// Frame `number` at `offset`, of bytes `fill`, sealed under `secret(s)`, with its tag.
    fn sealed(s: u8, number: u64, offset: u64, fill: u8) -> Vec<u8> {
        let mut buf = vec![fill; FRAME];
        let tag = key(&secret(s))
            .seal_in_place_separate_tag(nonce(number), Aad::from(offset.to_be_bytes()), &mut buf)
            .unwrap();
        buf.extend_from_slice(tag.as_ref());
        buf
    }

    /// Receives two frames' worth from `frames` under `secret(s)`: the error, and where
    /// the receiver stopped.
    fn feed(frames: Vec<u8>, s: u8) -> (LaneError, u64) {
        let (mut a, mut b) = pair();
        let writer = std::thread::spawn(move || a.write_all(&frames));
        let mut at = 0;
        let end = 2 * FRAME as u64;
        let e = receive(&mut b, Sink::Discard, &mut at, end, &secret(s), None).unwrap_err();
        writer.join().unwrap().unwrap();
        (e, at)
    }

    #[test]
    fn into_a_file_the_bytes_before_a_forged_frame_stand_and_are_hashed_and_no_others() {
        // Past the first mapped window, so that a window is hashed whole, then the part of
        // the next one that opened.
        let frames_in = WINDOW as usize / FRAME + 2;
        let forged = frames_in - 1;
        let mut wire = Vec::new();
        for i in 0..frames_in {
            wire.extend(sealed(6, i as u64, (i * FRAME) as u64, i as u8));
        }
        wire[forged * (FRAME + TAG) + 5] ^= 1;
        let end = (frames_in * FRAME) as u64;
        let path = std::env::temp_dir().join(format!("shoal-lane-forged-{}", std::process::id()));
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        dst.set_len(end).unwrap();
        let (mut a, mut b) = pair();
        let writer = std::thread::spawn(move || a.write_all(&wire));
        let mut hasher = blake3::Hasher::new();
        let mut at = 0;
        let e = receive(
            &mut b,
            Sink::File(&dst, &mut hasher),
            &mut at,
            end,
            &secret(6),
            None,
        )
        .unwrap_err();
        writer.join().unwrap().unwrap();
        assert!(
            matches!(e, LaneError::Forged { frame, .. } if frame == forged as u64),
            "{e}"
        );
        assert_eq!(at, (forged * FRAME) as u64);
        let expected: Vec<u8> = (0..forged).flat_map(|i| vec![i as u8; FRAME]).collect();
        assert_eq!(
            hasher.finalize(),
            blake3::hash(&expected),
            "hashed other bytes"
        );
        let got = std::fs::read(&path).unwrap();
        assert!(
            got[..expected.len()] == expected[..],
            "the bytes before differ"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn frames_out_of_place_do_not_open() {
        // Frame 0 of offset 0 replayed where frame 1 should be.
        let mut frames = sealed(4, 0, 0, 5);
        frames.extend(sealed(4, 0, 0, 5));
        let (e, at) = feed(frames, 4);
        assert!(matches!(e, LaneError::Forged { frame: 1, .. }), "{e}");
        assert_eq!(at, FRAME as u64);
    }

    #[test]
    fn a_cut_lane_says_how_short_it_ended() {
        let (mut a, mut b) = pair();
        let sender = std::thread::spawn(move || {
            send(&mut a, Source::Pattern(b"ab"), 0, FRAME as u64, &secret(5)).unwrap();
        });
        let mut at = 0;
        sender.join().unwrap();
        let e = receive(
            &mut b,
            Sink::Discard,
            &mut at,
            3 * FRAME as u64,
            &secret(5),
            None,
        )
        .unwrap_err();
        assert_eq!(at, FRAME as u64);
        assert!(e.to_string().contains("short"), "{e}");
    }

    #[tokio::test]
    async fn only_the_ticket_of_an_offer_claims_it_and_only_once() {
        use tokio::io::AsyncWriteExt;
        let stop = CancellationToken::new();
        let (lane, acceptor) = Lane::bind(
            "127.0.0.1".parse().unwrap(),
            0,
            Routes::default(),
            stop.clone(),
        )
        .await
        .unwrap();
        let acceptor = tokio::spawn(acceptor);
        let (offer, claim) = lane.offer().unwrap().unwrap();
        // A stranger with a wrong ticket is closed and claims nothing.
        let mut stranger = tokio::net::TcpStream::connect(("127.0.0.1", lane.port()))
            .await
            .unwrap();
        stranger.write_all(&[0u8; 16]).await.unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let mut ours = connect(ip, &offer).await.unwrap();
        let mut theirs = claim.connection().await.unwrap();
        theirs.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        ours.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The ticket is used: a second connection with it is refused (closed unread).
        let mut again = connect(ip, &offer).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::task::spawn_blocking(move || again.read(&mut byte))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // A dropped claim withdraws its offer.
        let (_, claim2) = lane.offer().unwrap().unwrap();
        drop(claim2);
        assert!(lane.waiting.lock().unwrap().is_empty());
        stop.cancel();
        acceptor.await.unwrap();
    }

    #[test]
    fn a_peer_that_goes_ends_its_lanes_at_once() {
        let r = Routes::default();
        let (gone, stays) = (PeerId::random(), PeerId::random());
        let (mut a, _a_far) = pair();
        let (mut b, _b_far) = pair();
        let _watched_a = r.watch(gone, &a).unwrap();
        let watched_b = r.watch(stays, &b).unwrap();
        // A blocked read on the lane of the peer that goes ends when it goes.
        let reader = std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            a.read(&mut byte)
        });
        r.disconnected(&gone);
        assert!(matches!(reader.join().unwrap(), Ok(0) | Err(_)));
        // The other peer's lane is untouched, and forgotten once its guard is dropped.
        b.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let e = b.read(&mut byte).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(watched_b);
        assert!(r.lock().sockets.is_empty());
    }

    #[test]
    fn routes_forget_peers_and_skip_unreachable_ones() {
        let r = Routes::default();
        let p = PeerId::random();
        r.connected(p, &"/ip4/10.1.2.3/tcp/4001".parse().unwrap());
        assert_eq!(r.route(&p), Some("10.1.2.3".parse().unwrap()));
        r.unreachable(p);
        assert_eq!(r.route(&p), None);
        r.disconnected(&p);
        assert_eq!(r.route(&p), None);
        r.connected(p, &"/memory/5".parse().unwrap());
        assert_eq!(r.route(&p), None);
        let relayed = format!(
            "/ip4/10.9.9.9/tcp/4001/p2p/{}/p2p-circuit",
            PeerId::random()
        );
        r.connected(p, &relayed.parse().unwrap());
        assert_eq!(r.route(&p), None);
        assert_eq!(
            listen_ip(&["/ip6/::1/tcp/0".parse().unwrap()]),
            Some("::1".parse().unwrap())
        );
    }
}
