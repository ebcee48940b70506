//! Object transfer: a peer that needs a large object pulls its bytes, by id, from peers that
//! hold it, into a file of the object's size, and checks them against its blake3 digest.
//!
//! Protocol (`/shoal/<mesh>/obj/2`, one libp2p stream per request): the puller sends an
//! [`ObjectRequest`] for a byte range, in a frame ([`shoal_protocol::frame`]); the holder answers with a framed [`ObjectResponse`]
//! and, when `Found`, exactly `min(len, size - offset)` raw bytes, then closes the stream.
//! A range of at least [`lane::MIN_RANGE`] bytes goes on the holder's sealed lane instead,
//! when the puller can reach it (see [`super::lane`]): the answer then carries the lane's
//! offer, the bytes come there, and the stream stays open, with nothing more on it, until
//! they are sent.
//! After the small request the bytes flow one way only (libp2p-stream over yamux can stall
//! when both ends write much at once). `len = 0` asks for the size and digest alone. An
//! `offset` past the object's end is answered `OutOfRange` with no bytes (`offset == size`
//! is a valid, empty range). A malformed or oversized request gets no answer: the stream is
//! dropped.
//!
//! Pulling ([`pull`]): with one holder, or an object below [`PARALLEL_MIN`], one stream
//! carries the whole object and the bytes are hashed as they arrive; a holder that fails
//! part-way is succeeded by the next one, from where it stopped. With several holders, the
//! object is cut into aligned power-of-two pieces, handed out to the holders as they finish
//! ([`STREAMS_PER_HOLDER`] streams in flight per holder); each piece is hashed as it arrives
//! as a blake3 subtree and the subtrees are merged into the root at the end, so checking costs
//! no second pass over the bytes. A holder that fails gives its remaining range back to the
//! others. A digest mismatch does not tell which holder lied: then each holder still in the
//! running is asked in turn for the whole object, on one stream, until one copy checks out.
//!
//! A stream can be lost with no fault at either end: libp2p-stream hands a holder's inbound
//! streams to its acceptor through a channel of one slot and resets a stream that arrives
//! while the slot is taken (its log: "Channel is full, dropping inbound stream"); the puller
//! then sees "the stream ended before the answer", or "connection is closed" when the reset
//! comes before its request is written. So a holder whose stream is lost so
//! ([`ObjectError::is_retryable`]) is asked again, after a short pause ([`RETRY_AFTER`]) and
//! only once no holder that lost no stream is left (its pieces go to those), up to
//! [`ATTEMPTS_PER_HOLDER`] times (a stream to a peer whose connection closed redials it); the
//! pull fails only when no holder is left.
//!
//! Every read and write on a stream has a stall timeout ([`STALL`]); headers are bounded
//! ([`MAX_HEADER`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blake3::hazmat::{ChainingValue, HasherExt, Mode};
use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use shoal_protocol::{Digest, ObjectId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::framed::{self, FrameReader};
use super::lane::{self, Lane};
use super::limits::{PeerLimits, StreamKind};
use super::progress::Progress;
use super::tasks;

/// A stream that makes no progress for this long fails.
pub const STALL: Duration = Duration::from_secs(30);
/// Largest request or response header.
pub const MAX_HEADER: usize = 1024;
/// Bytes read from a file or a stream at a time.
pub const CHUNK: usize = 1 << 20;
/// Objects at least this large are pulled from several holders at once, when there are.
pub const PARALLEL_MIN: u64 = 16 << 20;
/// Streams open at once to each holder of a parallel pull: while one waits for its first
/// bytes, the other keeps the connection busy.
pub const STREAMS_PER_HOLDER: usize = 2;
/// Streams served at once by one [`spawn_server`]; more wait their turn, up to [`QUEUED`].
pub const MAX_SERVING: usize = 64;
/// How long a stream waits for its turn to be served before it is answered `Refused`
/// (well within the puller's [`STALL`]).
pub const QUEUED: Duration = Duration::from_secs(10);
/// Pieces of a parallel pull: powers of two between these bounds, about
/// [`PIECES_PER_HOLDER`] per holder.
const MIN_PIECE: u64 = 4 << 20;
const MAX_PIECE: u64 = 64 << 20;
const PIECES_PER_HOLDER: u64 = 4;
/// Streams a pull opens to one holder at most before giving up on it, when each is lost
/// without a reason from the holder (see [`ObjectError::is_retryable`]).
pub const ATTEMPTS_PER_HOLDER: u32 = 3;
/// Pause before a holder whose stream was lost is asked again, times its failures so far.
pub const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Asks for bytes `offset..offset + len` of an object (clipped to its end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRequest {
    /// The object.
    pub id: ObjectId,
    /// The first byte wanted.
    pub offset: u64,
    /// How many bytes, at most.
    pub len: u64,
    /// The asker can take the bytes on the holder's sealed lane ([`super::lane`]).
    pub lane: bool,
}

/// The answer to an [`ObjectRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectResponse {
    /// Held: followed by exactly `min(len, size - offset)` raw bytes.
    Found {
        /// The object's length.
        size: u64,
        /// The blake3 digest of all its bytes.
        digest: Digest,
        /// When the asker can take the lane and the holder has one: the bytes come there,
        /// not on this stream, which the holder closes once they are sent.
        lane: Option<lane::Offer>,
    },
    /// Not held here (or no longer readable).
    NotFound,
    /// Held maybe, but not served now (too many streams at once).
    Refused,
    /// The object is held, but `offset` is past its end; no bytes follow.
    OutOfRange {
        /// The object's length.
        size: u64,
    },
}

/// An object a server can send: its sealed file, exactly `size` bytes long.
pub struct Served {
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub size: u64,
    /// The blake3 digest of its bytes.
    pub digest: Digest,
    /// Dropped when serving ends (the node unpins the object then).
    pub guard: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Where a server finds the objects it holds.
pub trait ObjectSource: Send + Sync + 'static {
    /// The file of `id`, pinned until the returned guard is dropped; `None` if not held.
    fn open(&self, id: ObjectId) -> BoxFuture<'static, Option<Served>>;

    /// The file of `id` for `peer`: `None` too if `peer` may not read it. By default, as
    /// [`open`](Self::open) (a source that keeps no rights).
    fn open_for(&self, _peer: PeerId, id: ObjectId) -> BoxFuture<'static, Option<Served>> {
        self.open(id)
    }

    /// A stream served `bytes` of an object to a peer (for the node's metrics). By default,
    /// nothing is counted.
    fn served(&self, _bytes: u64) {}
}

/// Why serving or pulling an object failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// Local I/O: the destination file when pulling (no other holder can help with that),
    /// the stream or the file when serving.
    #[error("object transfer: {0}")]
    Io(#[from] io::Error),
    /// A request that is not one (serving side).
    #[error("malformed object request: {0}")]
    BadRequest(String),
    /// The stream to a holder could not be opened, failed, stalled or was cut short.
    #[error("object stream with peer {peer}: {source}")]
    Stream {
        /// The holder.
        peer: PeerId,
        /// What happened.
        source: io::Error,
    },
    /// The holder does not hold the object.
    #[error("peer {0} does not hold the object")]
    NotFound(PeerId),
    /// A pull asked for without the digest to check the copy with.
    #[error("object {0} has no digest to check a copy with")]
    NoDigest(ObjectId),
    /// The holder does not serve objects, or not now.
    #[error("peer {0} refused to serve the object")]
    Refused(PeerId),
    /// The holder's copy is another object: other size or digest.
    #[error(
        "peer {peer} holds object {id} as {size} bytes with digest {digest}, \
         not {wanted_size} bytes with digest {wanted_digest}"
    )]
    Mismatch {
        /// The holder.
        peer: PeerId,
        /// The object.
        id: ObjectId,
        /// Its size there.
        size: u64,
        /// Its digest there.
        digest: Digest,
        /// The size asked for.
        wanted_size: u64,
        /// The digest asked for.
        wanted_digest: Digest,
    },
    /// The holder says the range asked for starts past the end of its copy.
    #[error("peer {peer} says byte {offset} is past the end of its {size} bytes")]
    OutOfRange {
        /// The holder.
        peer: PeerId,
        /// The range's start.
        offset: u64,
        /// The holder's size.
        size: u64,
    },
    /// The bytes pulled do not hash to the object's digest.
    #[error("object {id} pulled from {} hashes to {found}, not {wanted}", peer_list(.peers))]
    Corrupted {
        /// The object.
        id: ObjectId,
        /// The holders whose bytes made up the copy (one when the blame is certain).
        peers: Vec<PeerId>,
        /// What the bytes hash to.
        found: Digest,
        /// The object's digest.
        wanted: Digest,
    },
    /// The network has been shut down.
    #[error("the network has stopped")]
    Stopped,
    /// No holder was given.
    #[error("no holder to pull object {0} from")]
    NoHolders(ObjectId),
    /// Every holder failed; each one's error, in order.
    #[error("every holder of object {id} failed: {}", error_list(.errors))]
    AllFailed {
        /// The object.
        id: ObjectId,
        /// What went wrong with each.
        errors: Vec<ObjectError>,
    },
}

impl ObjectError {
    /// Whether no holder asked had the object (each answered `NotFound`).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound(_) => true,
            Self::AllFailed { errors, .. } => errors.iter().all(Self::is_not_found),
            _ => false,
        }
    }

    /// A failure on this side, which another holder would not avoid.
    fn is_local(&self) -> bool {
        matches!(self, Self::Io(_))
    }

    /// A stream lost without a word from the holder (reset, closed, cut short; not a
    /// stall): the holder may serve the next stream well, so it is worth asking again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Stream { source, .. } if source.kind() != io::ErrorKind::TimedOut)
    }
}

fn peer_list(peers: &[PeerId]) -> String {
    let list: Vec<String> = peers.iter().map(ToString::to_string).collect();
    list.join(", ")
}

fn error_list(errors: &[ObjectError]) -> String {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    list.join("; ")
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("stalled {what}"))
}

/// Serves objects from `source` on `protocol`: one task per stream (with a span naming the
/// peer and the object), at most [`super::limits::OBJECT_STREAMS_PER_PEER`] per peer (the others are
/// reset at once) and at most [`MAX_SERVING`] sending at once; the others wait up to
/// [`QUEUED`] once their request is in, then are answered `Refused`. The server ends when
/// the returned task is aborted (which stops accepting the protocol and aborts the streams
/// being served) or the swarm goes.
///
/// With a `lane`, ranges asked for on it go there (see [`super::lane`]).
pub fn spawn_server(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    source: Arc<dyn ObjectSource>,
    lane: Option<Arc<Lane>>,
) -> Result<tokio::task::JoinHandle<()>, libp2p_stream::AlreadyRegistered> {
    let incoming = control.accept(protocol)?;
    Ok(tokio::spawn(server(
        incoming,
        source,
        lane,
        PeerLimits::default(),
        CancellationToken::new(),
    )))
}

/// The server of [`spawn_server`] on streams already accepted, until `stop` (then the
/// streams being served finish).
pub(crate) async fn server(
    incoming: libp2p_stream::IncomingStreams,
    source: Arc<dyn ObjectSource>,
    lane: Option<Arc<Lane>>,
    limits: PeerLimits,
    stop: CancellationToken,
) {
    let serving = Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    let kind = StreamKind::Object;
    tasks::serve_streams(
        incoming,
        stop,
        limits,
        kind,
        move |peer, mut stream, permit| {
            let source = source.clone();
            let serving = serving.clone();
            let lane = lane.clone();
            let span = tracing::debug_span!("object_stream", %peer, object = tracing::field::Empty);
            async move {
                let result = async {
                    let req = read_request(&mut stream).await?;
                    let permit = tokio::time::timeout(QUEUED, serving.acquire_owned()).await;
                    match permit.ok().and_then(Result::ok) {
                        Some(_permit) => {
                            serve_request(stream, req, &*source, Some(peer), lane.as_deref()).await
                        }
                        None => {
                            write_header(&mut stream, &ObjectResponse::Refused).await?;
                            close(&mut stream).await?;
                            Ok(0)
                        }
                    }
                };
                match result.await {
                    Ok(bytes) => {
                        source.served(bytes);
                        tracing::debug!(bytes, "served")
                    }
                    Err(e @ ObjectError::BadRequest(_)) => {
                        tracing::warn!(error = %e, "malformed object request")
                    }
                    Err(e) => tracing::debug!(error = %e, "object not served"),
                }
                // Counted against the peer's limit until here.
                drop(permit);
            }
            .instrument(span)
        },
    )
    .await;
}

async fn close(stream: &mut libp2p::Stream) -> io::Result<()> {
    tokio::time::timeout(STALL, stream.close())
        .await
        .map_err(|_| timed_out("closing"))?
}

async fn read_request(stream: &mut libp2p::Stream) -> Result<ObjectRequest, ObjectError> {
    match tokio::time::timeout(STALL, framed::read_one(stream, MAX_HEADER)).await {
        Err(_) => Err(timed_out("waiting for a request").into()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(ObjectError::BadRequest(e.to_string()))
        }
        Ok(r) => Ok(r?),
    }
}

async fn write_header(stream: &mut libp2p::Stream, header: &ObjectResponse) -> io::Result<()> {
    tokio::time::timeout(STALL, framed::write(stream, header, MAX_HEADER))
        .await
        .map_err(|_| timed_out("writing a header"))?
}

/// Opens an object's file for reading under a shared `flock` (the store recycles only the
/// files it can lock exclusively), checking that the path still leads to it and that it is
/// `size` bytes long.
fn open_locked(path: &Path, size: u64) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let file = File::open(path)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        // Locked exclusively: the store is recycling it right now.
        return Err(io::Error::last_os_error());
    }
    let meta = file.metadata()?;
    if std::fs::metadata(path)?.ino() != meta.ino() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the file was replaced while being opened",
        ));
    }
    if meta.len() != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file has {} bytes, not {size}", meta.len()),
        ));
    }
    Ok(file)
}

/// Serves one request: reads it, answers, streams the range and closes. Returns the number
/// of object bytes sent.
pub async fn serve(
    mut stream: libp2p::Stream,
    source: &dyn ObjectSource,
) -> Result<u64, ObjectError> {
    let req = read_request(&mut stream).await?;
    serve_request(stream, req, source, None, None).await
}

/// Serves one request, for `peer` when the stream's remote end is known, on `lane` when
/// the asker can take it.
async fn serve_request(
    mut stream: libp2p::Stream,
    req: ObjectRequest,
    source: &dyn ObjectSource,
    peer: Option<PeerId>,
    lane: Option<&Lane>,
) -> Result<u64, ObjectError> {
    tracing::Span::current().record("object", tracing::field::display(req.id));
    let opening = match peer {
        Some(peer) => source.open_for(peer, req.id),
        None => source.open(req.id),
    };
    // A source that does not answer counts as not holding it.
    let served = tokio::time::timeout(STALL, opening).await.ok().flatten();
    let opened = served.and_then(|s| match open_locked(&s.path, s.size) {
        Ok(file) => Some((s, file)),
        Err(e) => {
            tracing::warn!(object = %req.id, path = %s.path.display(), error = %e,
                "cannot read a held object");
            None
        }
    });
    let Some((served, file)) = opened else {
        write_header(&mut stream, &ObjectResponse::NotFound).await?;
        close(&mut stream).await?;
        return Ok(0);
    };
    let size = served.size;
    if req.offset > size {
        write_header(&mut stream, &ObjectResponse::OutOfRange { size }).await?;
        close(&mut stream).await?;
        return Ok(0);
    }
    let end = req.offset + req.len.min(size - req.offset);
    // (A lane only for a known peer: its lanes end with its connection.)
    let offer = match (lane, peer) {
        (Some(lane), Some(peer)) if req.lane && end - req.offset >= lane::MIN_RANGE => {
            match lane.offer() {
                Ok(offer) => offer.map(|(offer, claim)| (lane, peer, offer, claim)),
                Err(e) => {
                    tracing::warn!(error = %e, "no lane offer; the bytes go on the stream");
                    None
                }
            }
        }
        _ => None,
    };
    let header = ObjectResponse::Found {
        size,
        digest: served.digest,
        lane: offer.as_ref().map(|(_, _, offer, _)| offer.clone()),
    };
    write_header(&mut stream, &header).await?;
    let sent = match offer {
        Some((lane, peer, offer, claim)) => {
            // The asker sends nothing more on the stream: anything read there (its end, or
            // the connection's) means it has gone, and the lane with it.
            let mut probe = [0u8; 1];
            let mut socket = tokio::select! {
                socket = claim.connection() => socket?,
                _ = stream.read(&mut probe) => {
                    return Err(io::Error::other("the asker left before taking the lane").into())
                }
            };
            let watched = lane.watch(peer, &socket)?;
            let from = req.offset;
            let mut sending = tokio::task::spawn_blocking(move || {
                lane::send(
                    &mut socket,
                    lane::Source::File(&file),
                    from,
                    end,
                    &offer.key,
                )
            });
            let sent = tokio::select! {
                sent = &mut sending => sent,
                _ = stream.read(&mut probe) => {
                    watched.now();
                    sending.await
                }
            };
            let sent = sent
                .map_err(|e| io::Error::other(format!("the lane's sender failed: {e}")))?
                .map_err(io::Error::from)?;
            lane.sent(sent);
            sent
        }
        None => {
            let mut sent = 0u64;
            let mut buf = vec![0u8; CHUNK.min((end - req.offset) as usize)];
            let mut at = req.offset;
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)?;
                tokio::time::timeout(STALL, stream.write_all(&buf[..n]))
                    .await
                    .map_err(|_| timed_out("sending"))??;
                at += n as u64;
                sent += n as u64;
            }
            drop(file);
            sent
        }
    };
    close(&mut stream).await?;
    drop(served);
    Ok(sent)
}

/// What is being pulled.
#[derive(Clone, Copy, Debug)]
struct Want {
    id: ObjectId,
    size: u64,
    digest: Digest,
}

fn stream_error(peer: PeerId) -> impl Fn(io::Error) -> ObjectError {
    move |source| ObjectError::Stream { peer, source }
}

/// How a puller reaches holders: its stream control, the protocol, its per-peer limits
/// and the routes to holders' lanes.
#[derive(Clone)]
struct Asker {
    control: libp2p_stream::Control,
    protocol: StreamProtocol,
    limits: PeerLimits,
    routes: lane::Routes,
}

/// Where a range is going, and what it has hashed so far.
struct Dest<'a> {
    file: &'a File,
    hasher: &'a mut blake3::Hasher,
    buf: &'a mut [u8],
    progress: &'a Progress,
}

/// Pulls bytes `*at..end` of the object from `peer` into `dest.file` at their offsets,
/// feeding them to `dest.hasher` in order; `*at` advances as bytes are written, so after a
/// failure it says where to resume. On the peer's lane when there is a route to it and the
/// range is long enough; on the stream when the lane cannot be reached.
async fn pull_range(
    asker: &mut Asker,
    peer: PeerId,
    want: Want,
    dest: Dest<'_>,
    at: &mut u64,
    end: u64,
) -> Result<(), ObjectError> {
    let route = if end - *at >= lane::MIN_RANGE {
        asker.routes.route(&peer)
    } else {
        None
    };
    let dest = match pull_range_on(asker, peer, want, dest, at, end, route).await? {
        Pulled::Done => return Ok(()),
        Pulled::Unreachable(dest) => dest,
    };
    match pull_range_on(asker, peer, want, dest, at, end, None).await? {
        Pulled::Done => Ok(()),
        Pulled::Unreachable(_) => Err(stream_error(peer)(io::Error::other(
            "the holder offered its lane unasked",
        ))),
    }
}

/// How [`pull_range_on`] ended well.
enum Pulled<'a> {
    /// Every byte is in.
    Done,
    /// The holder's lane could not be reached: nothing was taken.
    Unreachable(Dest<'a>),
}

/// [`pull_range`] on one stream, asking for the lane when there is a `route` to it.
async fn pull_range_on<'a>(
    asker: &mut Asker,
    peer: PeerId,
    want: Want,
    dest: Dest<'a>,
    at: &mut u64,
    end: u64,
    route: Option<std::net::IpAddr>,
) -> Result<Pulled<'a>, ObjectError> {
    let err = stream_error(peer);
    // Held until the stream is done: fewer streams to one holder than it serves at once.
    let _slot = asker.limits.outbound(peer, StreamKind::Object).await;
    let opening = asker.control.open_stream(peer, asker.protocol.clone());
    let stream = match tokio::time::timeout(STALL, opening).await {
        Err(_) => return Err(err(timed_out("opening a stream"))),
        Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
            return Err(ObjectError::Refused(peer))
        }
        Ok(Err(e)) => return Err(err(io::Error::other(e.to_string()))),
        Ok(Ok(s)) => s,
    };
    let req = ObjectRequest {
        id: want.id,
        offset: *at,
        len: end - *at,
        lane: route.is_some(),
    };
    let mut stream = FrameReader::new(stream);
    tokio::time::timeout(STALL, framed::write(stream.get_mut(), &req, MAX_HEADER))
        .await
        .map_err(|_| err(timed_out("sending a request")))?
        .map_err(&err)?;
    let response: ObjectResponse = tokio::time::timeout(STALL, stream.next(MAX_HEADER))
        .await
        .map_err(|_| err(timed_out("waiting for an answer")))?
        .map_err(&err)?
        .ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended before the answer",
            ))
        })?;
    let offer = match response {
        ObjectResponse::Found { size, digest, lane }
            if size == want.size && digest == want.digest =>
        {
            lane
        }
        ObjectResponse::Found { size, digest, .. } => {
            return Err(ObjectError::Mismatch {
                peer,
                id: want.id,
                size,
                digest,
                wanted_size: want.size,
                wanted_digest: want.digest,
            })
        }
        ObjectResponse::NotFound => return Err(ObjectError::NotFound(peer)),
        ObjectResponse::Refused => return Err(ObjectError::Refused(peer)),
        ObjectResponse::OutOfRange { size } => {
            return Err(ObjectError::OutOfRange {
                peer,
                offset: *at,
                size,
            })
        }
    };
    match (offer, route) {
        (Some(offer), Some(ip)) => {
            let socket = match lane::connect(ip, &offer).await {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::info!(%peer, %ip, port = offer.port, error = %e,
                        "the holder's lane cannot be reached; the bytes come on the stream");
                    asker.routes.unreachable(peer);
                    return Ok(Pulled::Unreachable(dest));
                }
            };
            let from = *at;
            let watched = asker.routes.watch(peer, &socket)?;
            let received =
                receive_on_lane(peer, &mut stream, socket, &watched, offer, dest, at, end).await;
            drop(watched);
            if let Err(ObjectError::Stream { source, .. }) = &received {
                // Connected, but not a byte came (a lane that closes what it accepts, say
                // something else on that port): the next ask goes on the stream.
                if *at == from && source.kind() != io::ErrorKind::InvalidData {
                    tracing::info!(%peer, %ip, error = %source,
                        "the holder's lane brought nothing; the next ask goes on the stream");
                    asker.routes.unreachable(peer);
                }
            }
            received?;
        }
        (Some(_), None) => {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the holder offered its lane unasked",
            )))
        }
        (None, _) => {
            receive_on_stream(peer, &mut stream, dest, at, end).await?;
        }
    }
    // Every byte is in: a close that fails costs nothing but the log line.
    if let Err(e) = close(stream.get_mut()).await {
        tracing::debug!(%peer, error = %e, "an object stream did not close cleanly");
    }
    Ok(Pulled::Done)
}

/// The range's bytes, raw on the object stream.
async fn receive_on_stream(
    peer: PeerId,
    stream: &mut FrameReader<libp2p::Stream>,
    dest: Dest<'_>,
    at: &mut u64,
    end: u64,
) -> Result<(), ObjectError> {
    let err = stream_error(peer);
    let buf = dest.buf;
    while *at < end {
        let want_now = (end - *at).min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want_now {
            let n = tokio::time::timeout(STALL, stream.read_raw(&mut buf[filled..want_now]))
                .await
                .map_err(|_| err(timed_out("receiving")))?
                .map_err(&err)?;
            if n == 0 {
                return Err(err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ended {} bytes short", end - *at - filled as u64),
                )));
            }
            filled += n;
        }
        dest.file.write_all_at(&buf[..filled], *at)?;
        dest.hasher.update(&buf[..filled]);
        *at += filled as u64;
        dest.progress.add(filled as u64);
    }
    Ok(())
}

/// The range's bytes, sealed on the holder's lane (`socket`, `watched`), taken on a
/// blocking thread.
///
/// The holder sends nothing on the object stream until it has sent the range, then closes
/// it: an error there (the connection to the holder is gone) ends the lane too.
#[allow(clippy::too_many_arguments)]
async fn receive_on_lane(
    peer: PeerId,
    stream: &mut FrameReader<libp2p::Stream>,
    mut socket: std::net::TcpStream,
    watched: &lane::Watched,
    offer: lane::Offer,
    dest: Dest<'_>,
    at: &mut u64,
    end: u64,
) -> Result<(), ObjectError> {
    let file = dest.file.try_clone()?;
    let mut hasher = std::mem::replace(dest.hasher, blake3::Hasher::new());
    let progress = dest.progress.clone();
    let mut from = *at;
    let mut receiving = tokio::task::spawn_blocking(move || {
        let sink = lane::Sink::File(&file, &mut hasher);
        let result = lane::receive(
            &mut socket,
            sink,
            &mut from,
            end,
            &offer.key,
            Some(&progress),
        );
        (hasher, from, result)
    });
    let mut probe = [0u8; 1];
    let mut watching = true;
    let joined = loop {
        tokio::select! {
            joined = &mut receiving => break joined,
            read = stream.read_raw(&mut probe), if watching => {
                watching = false;
                match read {
                    // The holder has sent it all; the lane has the rest.
                    Ok(0) => {}
                    Ok(_) => {
                        tracing::warn!(%peer, "the holder wrote on the stream of a lane transfer");
                        watched.now();
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "the object stream failed; ending the lane");
                        watched.now();
                    }
                }
            }
        }
    };
    let (hasher, reached, result) =
        joined.map_err(|e| io::Error::other(format!("the lane's receiver failed: {e}")))?;
    *dest.hasher = hasher;
    *at = reached;
    match result {
        Ok(()) => Ok(()),
        Err(lane::LaneError::Sink(e)) => Err(ObjectError::Io(e)),
        Err(e) => Err(stream_error(peer)(e.into())),
    }
}

/// Pulls object `id` (`size` bytes, blake3 `digest`) from `holders` into `dest`, an
/// existing file (resized to `size` if it is not), and checks the digest.
///
/// One holder, or an object below [`PARALLEL_MIN`]: one stream at a time, the next holder
/// taking over where a failed one stopped. Several holders and a large object: pieces
/// pulled from all of them at once (see the module documentation). A holder whose stream
/// was lost is asked again, after the others, up to [`ATTEMPTS_PER_HOLDER`] times; a holder
/// that fails otherwise is dropped and the others carry on. The pull fails only when no
/// holder is left (with the one error when there was one, [`ObjectError::AllFailed`] with
/// each otherwise), or on a local I/O error ([`ObjectError::Io`]). A copy whose digest does
/// not match is [`ObjectError::Corrupted`]. On failure `dest` holds partial bytes. Bytes
/// written are counted in `progress` as they come.
#[allow(clippy::too_many_arguments)]
pub async fn pull(
    control: &mut libp2p_stream::Control,
    protocol: StreamProtocol,
    limits: &PeerLimits,
    routes: &lane::Routes,
    holders: &[PeerId],
    id: ObjectId,
    size: u64,
    digest: Digest,
    dest: &Path,
    progress: &Progress,
) -> Result<(), ObjectError> {
    let mut unique: Vec<PeerId> = Vec::with_capacity(holders.len());
    for h in holders {
        if !unique.contains(h) {
            unique.push(*h);
        }
    }
    if unique.is_empty() {
        return Err(ObjectError::NoHolders(id));
    }
    let want = Want { id, size, digest };
    let asker = Asker {
        control: control.clone(),
        protocol,
        limits: limits.clone(),
        routes: routes.clone(),
    };
    let started = Instant::now();
    // Read too: the lane writes through a mapping.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dest)?;
    if file.metadata()?.len() != size {
        file.set_len(size)?;
    }
    let mut errors = Vec::new();
    let mut candidates = unique.clone();
    if size == 0 {
        let found = Digest::of(&[]);
        if found == digest {
            return Ok(());
        }
        errors.push(ObjectError::Corrupted {
            id,
            peers: Vec::new(),
            found,
            wanted: digest,
        });
        candidates.clear();
    } else if unique.len() > 1 && size >= PARALLEL_MIN {
        let shared = Arc::new(file.try_clone()?);
        match pull_parallel(&asker, &unique, want, shared, &mut errors, progress).await? {
            Parallel::Done => {
                tracing::debug!(object = %id, bytes = size, holders = unique.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64, "pulled an object");
                return Ok(());
            }
            Parallel::Incomplete => return Err(all_failed(id, errors)),
            Parallel::Corrupted { live } => {
                let error = errors.last().map(ToString::to_string).unwrap_or_default();
                tracing::warn!(object = %id, %error,
                    "a parallel pull did not check out; pulling from one holder at a time");
                candidates = live;
            }
        }
    }
    if pull_sequential(
        &mut asker.clone(),
        &candidates,
        want,
        &file,
        &mut errors,
        progress,
    )
    .await?
    {
        if !errors.is_empty() {
            tracing::info!(object = %id, failures = %error_list(&errors),
                "pulled an object after failures");
        }
        tracing::debug!(object = %id, bytes = size, holders = unique.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "pulled an object");
        return Ok(());
    }
    Err(all_failed(id, errors))
}

fn all_failed(id: ObjectId, mut errors: Vec<ObjectError>) -> ObjectError {
    if errors.len() == 1 {
        if let Some(e) = errors.pop() {
            return e;
        }
    }
    ObjectError::AllFailed { id, errors }
}

/// Pulls the whole object on one stream at a time, trying `holders` in order: a holder that
/// fails is succeeded by the next from where it stopped (and, if its stream was lost, goes
/// to the back of the line, up to [`ATTEMPTS_PER_HOLDER`] times); a copy that does not check
/// out is started over with the holders left. Holder failures go to `errors`; `Ok(true)`
/// once a copy checks out, `Ok(false)` when the holders ran out, `Err` on a local failure.
#[allow(clippy::too_many_arguments)]
async fn pull_sequential(
    asker: &mut Asker,
    holders: &[PeerId],
    want: Want,
    file: &File,
    errors: &mut Vec<ObjectError>,
    progress: &Progress,
) -> Result<bool, ObjectError> {
    let mut buf = vec![0u8; CHUNK.min(want.size as usize)];
    let mut hasher = blake3::Hasher::new();
    let mut at = 0u64;
    let mut sources = Vec::new();
    let mut attempts = vec![0u32; holders.len()];
    let mut line: VecDeque<usize> = (0..holders.len()).collect();
    while let Some(h) = line.pop_front() {
        let peer = holders[h];
        if attempts[h] > 0 {
            tokio::time::sleep(RETRY_AFTER * attempts[h]).await;
        }
        attempts[h] += 1;
        let from = at;
        let dest = Dest {
            file,
            hasher: &mut hasher,
            buf: &mut buf,
            progress,
        };
        let result = pull_range(asker, peer, want, dest, &mut at, want.size).await;
        if at > from {
            sources.push(peer);
        }
        match result {
            Ok(()) => {}
            Err(e) if e.is_local() => return Err(e),
            Err(e) => {
                let again = e.is_retryable() && attempts[h] < ATTEMPTS_PER_HOLDER;
                tracing::debug!(object = %want.id, error = %e, attempt = attempts[h], again,
                    "a holder failed");
                errors.push(e);
                if again {
                    line.push_back(h);
                }
                continue;
            }
        }
        let found = Digest(*hasher.finalize().as_bytes());
        if found == want.digest {
            return Ok(true);
        }
        let e = ObjectError::Corrupted {
            id: want.id,
            peers: std::mem::take(&mut sources),
            found,
            wanted: want.digest,
        };
        tracing::warn!(error = %e, "a pulled object does not check out");
        errors.push(e);
        hasher = blake3::Hasher::new();
        at = 0;
    }
    Ok(false)
}

/// The length of the pieces of a parallel pull of `size` bytes from `holders` holders: a
/// power of two (so each piece is a blake3 subtree) between [`MIN_PIECE`] and [`MAX_PIECE`].
fn piece_len(size: u64, holders: usize) -> u64 {
    let target = size / (holders as u64 * PIECES_PER_HOLDER).max(1);
    let pow = if target == 0 {
        1
    } else {
        1u64 << (63 - target.leading_zeros())
    };
    pow.clamp(MIN_PIECE, MAX_PIECE)
}

/// A range of a piece still to pull, with the piece's hash so far.
struct Piece {
    index: usize,
    at: u64,
    end: u64,
    hasher: blake3::Hasher,
}

/// How a parallel pull ended.
enum Parallel {
    /// The copy checks out.
    Done,
    /// Every holder failed before all pieces were pulled.
    Incomplete,
    /// All pieces were pulled but the copy does not check out; these holders did not fail.
    Corrupted { live: Vec<PeerId> },
}

/// Pulls pieces from all `holders` at once and checks the digest. Holder failures (and a
/// digest mismatch, last) go to `errors`. `Err` on a local failure.
#[allow(clippy::too_many_arguments)]
async fn pull_parallel(
    asker: &Asker,
    holders: &[PeerId],
    want: Want,
    file: Arc<File>,
    errors: &mut Vec<ObjectError>,
    progress: &Progress,
) -> Result<Parallel, ObjectError> {
    let piece = piece_len(want.size, holders.len());
    let count = want.size.div_ceil(piece) as usize;
    let mut queue: VecDeque<Piece> = (0..count)
        .map(|index| {
            let at = index as u64 * piece;
            let mut hasher = blake3::Hasher::new();
            hasher.set_input_offset(at);
            Piece {
                index,
                at,
                end: (at + piece).min(want.size),
                hasher,
            }
        })
        .collect();
    let mut cvs: Vec<Option<ChainingValue>> = vec![None; count];
    let mut busy = vec![0usize; holders.len()];
    let mut failed = vec![false; holders.len()];
    // Streams lost per holder, and when it may be asked again (see `ATTEMPTS_PER_HOLDER`).
    let mut failures = vec![0u32; holders.len()];
    let mut retry_at: Vec<Option<Instant>> = vec![None; holders.len()];
    let mut contributed = vec![false; holders.len()];
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // A holder that lost a stream is asked again only when no holder that lost none is
        // left: while one is, the pieces wait for it (a holder whose connection closed, as
        // one written off by the failure detector, would be redialled, and a dial to a peer
        // that is cut off waits out its timeout).
        let clean = (0..holders.len()).any(|h| !failed[h] && failures[h] == 0);
        for (h, &peer) in holders.iter().enumerate() {
            if clean && failures[h] > 0 {
                continue;
            }
            while !failed[h] && busy[h] < STREAMS_PER_HOLDER {
                let Some(mut p) = queue.pop_front() else {
                    break;
                };
                busy[h] += 1;
                let pause = retry_at[h].map(|t| t.saturating_duration_since(Instant::now()));
                let (mut asker, file, progress) = (asker.clone(), file.clone(), progress.clone());
                tasks.spawn(async move {
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                    let mut buf = vec![0u8; CHUNK.min((p.end - p.at) as usize)];
                    let from = p.at;
                    let dest = Dest {
                        file: &file,
                        hasher: &mut p.hasher,
                        buf: &mut buf,
                        progress: &progress,
                    };
                    let result = pull_range(&mut asker, peer, want, dest, &mut p.at, p.end).await;
                    (h, p.at > from, p, result)
                });
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (h, progressed, p, result) =
            joined.map_err(|e| io::Error::other(format!("an object pull task failed: {e}")))?;
        busy[h] -= 1;
        contributed[h] |= progressed;
        match result {
            Ok(()) => cvs[p.index] = Some(p.hasher.finalize_non_root()),
            Err(e) if e.is_local() => return Err(e),
            Err(e) => {
                if !failed[h] {
                    failures[h] += 1;
                    let again = e.is_retryable() && failures[h] < ATTEMPTS_PER_HOLDER;
                    tracing::debug!(object = %want.id, error = %e, attempt = failures[h], again,
                        "a holder failed");
                    if again {
                        retry_at[h] = Some(Instant::now() + RETRY_AFTER * failures[h]);
                    } else {
                        failed[h] = true;
                    }
                    errors.push(e);
                }
                queue.push_front(p);
            }
        }
    }
    if !queue.is_empty() {
        return Ok(Parallel::Incomplete);
    }
    let cvs: Vec<ChainingValue> = cvs.into_iter().flatten().collect();
    let found = root_of_pieces(&cvs, want.size, piece);
    if found == want.digest {
        return Ok(Parallel::Done);
    }
    {
        errors.push(ObjectError::Corrupted {
            id: want.id,
            peers: holders
                .iter()
                .zip(&contributed)
                .filter(|(_, c)| **c)
                .map(|(p, _)| *p)
                .collect(),
            found,
            wanted: want.digest,
        });
    }
    let live = holders
        .iter()
        .zip(&failed)
        .filter(|(_, f)| !**f)
        .map(|(p, _)| *p)
        .collect();
    Ok(Parallel::Corrupted { live })
}

/// The blake3 digest of `size` bytes from the chaining values of their aligned pieces of
/// `piece` bytes (a power of two of at least a blake3 chunk, `size > piece`): the pieces are
/// subtrees of blake3's left-balanced tree, merged here as the tree does.
fn root_of_pieces(cvs: &[ChainingValue], size: u64, piece: u64) -> Digest {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
    // Every subtree bigger than a piece splits at a power of two of at least a piece, so
    // every subtree of at most a piece is exactly one piece.
    fn subtree(cvs: &[ChainingValue], start: u64, len: u64, piece: u64) -> ChainingValue {
        if len <= piece {
            return cvs[(start / piece) as usize];
        }
        let left = left_subtree_len(len);
        merge_subtrees_non_root(
            &subtree(cvs, start, left, piece),
            &subtree(cvs, start + left, len - left, piece),
            Mode::Hash,
        )
    }
    let left = left_subtree_len(size);
    let root = merge_subtrees_root(
        &subtree(cvs, 0, left, piece),
        &subtree(cvs, left, size - left, piece),
        Mode::Hash,
    );
    Digest(*root.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::codec;

    fn bytes(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn pieces_hashed_apart_merge_to_the_digest() {
        let data = bytes(100_000);
        for piece in [1024u64, 2048, 8192, 32768] {
            for size in [
                piece as usize + 1,
                2 * piece as usize,
                3 * piece as usize - 7,
                5 * piece as usize,
                7 * piece as usize + 1,
                data.len(),
            ] {
                let size = size.min(data.len());
                let cvs: Vec<ChainingValue> = data[..size]
                    .chunks(piece as usize)
                    .enumerate()
                    .map(|(i, c)| {
                        let mut h = blake3::Hasher::new();
                        h.set_input_offset(i as u64 * piece);
                        // Fed in uneven slices, as a stream delivers them.
                        for part in c.chunks(333) {
                            h.update(part);
                        }
                        h.finalize_non_root()
                    })
                    .collect();
                assert_eq!(
                    root_of_pieces(&cvs, size as u64, piece),
                    Digest::of(&data[..size]),
                    "piece {piece}, size {size}"
                );
            }
        }
    }

    #[test]
    fn pieces_are_powers_of_two_a_few_per_holder() {
        assert_eq!(piece_len(16 << 20, 2), MIN_PIECE);
        assert_eq!(piece_len(100 << 20, 3), 8 << 20);
        assert_eq!(piece_len(1 << 30, 3), 64 << 20);
        assert_eq!(piece_len(1 << 40, 2), MAX_PIECE);
        for (size, holders) in [(16u64 << 20, 8usize), (123_456_789, 3), (1 << 33, 5)] {
            let p = piece_len(size, holders);
            assert!(p.is_power_of_two() && (MIN_PIECE..=MAX_PIECE).contains(&p));
            // At least two pieces: a parallel pull always has a tree to merge.
            assert!(size > p);
        }
    }

    #[test]
    fn headers_fit_the_bound() {
        let req = codec::encode(&ObjectRequest {
            id: ObjectId([0xff; 32]),
            offset: u64::MAX,
            len: u64::MAX,
            lane: true,
        })
        .unwrap();
        assert!(req.len() <= MAX_HEADER);
        let resp = codec::encode(&ObjectResponse::Found {
            size: u64::MAX,
            digest: Digest([0xff; 32]),
            lane: Some(lane::Offer {
                port: u16::MAX,
                ticket: [0xff; 16],
                key: lane::Secret([0xff; 32]),
            }),
        })
        .unwrap();
        assert!(resp.len() <= MAX_HEADER);
    }
}
