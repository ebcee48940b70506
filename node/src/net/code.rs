//! Code shipping: a peer that must run a binary it does not hold fetches it, by its blake3
//! id, from a peer that has it, checks the signed manifest that comes with it against its
//! [`CodePolicy`], then the hash, and keeps it in a bounded cache.
//!
//! Protocol (`/shoal/<mesh>/code/2`, one libp2p stream per request): the asker sends a
//! [`CodeRequest`] in a frame ([`shoal_protocol::frame`]); the holder answers with a framed
//! [`CodeResponse`] and, if found, what was asked ([`Want`]): the binary's bytes, or the
//! index of its content-defined chunks ([`super::chunks`]) in one frame, or the bytes of
//! some of its ranges. The asker checks the manifest in the response before it reads a byte
//! of the binary.
//!
//! A peer that holds other binaries (an earlier build of the same program, most often) asks
//! for the index first, takes the chunks it holds already from its own files, and asks for
//! the rest only: a rebuild ships what changed. Every chunk is checked against its hash in
//! the index and the whole against the binary's id; when most of it would come anyway, or
//! the index cannot be had, the whole binary is fetched. A holder serves a binary only to the peers
//! it sent a task of that binary to (within [`GRANT_TTL`] of the last one); others are
//! answered [`CodeResponse::NotAllowed`]. A peer started with code shipping off serves
//! nothing (and fetches nothing: the node never asks it to).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_protocol::BinaryId;

use super::chunks::{self, Chunk};
use super::framed::{self, FrameReader};
use super::limits::{PeerLimits, StreamKind};
use super::progress::Tracked;
use crate::auth::code::{CodePolicy, CodeRejection, Manifest, MAX_MANIFEST};

/// Largest binary served or accepted.
pub const MAX_BINARY: u64 = 4 << 30;
/// A fetch that makes no progress for this long fails.
pub const STALL: Duration = Duration::from_secs(30);
/// Largest request or response header (a response carries the manifest).
pub const MAX_HEADER: usize = MAX_MANIFEST + 1024;
/// A peer sent a task of a binary may fetch it for this long after the last one.
pub const GRANT_TTL: Duration = Duration::from_secs(3600);
/// Peers allowed to fetch one binary at most (the least recently granted go first).
pub const MAX_GRANTS: usize = 4096;
/// Refused fetches are logged at most this often (each is counted).
const NOT_ALLOWED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Largest request (one asking for ranges names at most one per chunk).
pub const MAX_REQUEST: usize = 8 << 20;
/// Largest chunk index (one entry per chunk of at least [`super::chunks::MIN_CHUNK`] bytes
/// of a binary of at most [`MAX_BINARY`]).
pub const MAX_INDEX: usize = 24 << 20;
/// Below this a binary is fetched whole.
pub const DELTA_MIN: u64 = 1 << 20;
/// A delta is not worth it when more than this share of the binary would come anyway.
const DELTA_MAX_SHARE: f64 = 0.8;

/// Asks for a binary, or part of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRequest {
    /// The binary's blake3 id.
    pub binary: BinaryId,
    /// What of it.
    pub want: Want,
}

/// What a [`CodeRequest`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    /// All its bytes.
    Whole,
    /// Its chunk index: one frame of `Vec<Chunk>`.
    Index,
    /// The bytes of these ranges (offset, length), in order, one after another: ranges in
    /// increasing order that do not overlap, within the binary.
    Ranges(Vec<(u64, u32)>),
}

/// The answer; `Found` is followed by what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeResponse {
    /// Here it comes.
    Found {
        /// Its length.
        size: u64,
        /// Its encoded manifest ([`Manifest`]), if it is signed.
        manifest: Option<Vec<u8>>,
    },
    /// Not held here.
    NotFound,
    /// This peer does not ship code.
    Refused,
    /// Held, but the asker was sent no task of it (recently): not served to it.
    NotAllowed,
    /// The ranges asked for are not ranges of the binary.
    BadRanges,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The stream or the cache failed.
    #[error("fetching a binary: {0}")]
    Io(#[from] io::Error),
    /// The peer does not hold it.
    #[error("peer {0} does not hold the binary")]
    NotFound(PeerId),
    /// The peer does not ship code.
    #[error("peer {0} does not ship code")]
    Refused(PeerId),
    /// The peer holds it but did not send this peer a task of it.
    #[error("peer {0} does not serve the binary to this peer")]
    NotAllowed(PeerId),
    /// The peer's answer is not one to what was asked (a bad index, say).
    #[error("peer {peer}: {message}")]
    Malformed {
        /// The peer.
        peer: PeerId,
        /// What is wrong.
        message: String,
    },
    /// The network has been shut down.
    #[error("the network has stopped")]
    Stopped,
    /// The bytes are not the binary asked for.
    #[error("the binary from {peer} hashes to {found}, not {wanted}")]
    HashMismatch {
        /// The sender.
        peer: PeerId,
        /// What arrived.
        found: BinaryId,
        /// What was asked for.
        wanted: BinaryId,
    },
    /// This node's code policy rejects it (checked before a byte of it is read).
    #[error("code rejected: {0}")]
    Rejected(CodeRejection),
}

/// A binary's chunk index, made once.
type IndexCell = tokio::sync::OnceCell<Arc<Vec<Chunk>>>;

/// A binary this peer serves.
#[derive(Debug)]
struct Held {
    path: PathBuf,
    manifest: Option<Vec<u8>>,
    /// Its chunk index, once made (by the first that asks: the others wait for that one).
    index: Arc<IndexCell>,
    /// Peers it may go to, with when they were last sent a task of it.
    grants: HashMap<PeerId, Instant>,
}

#[derive(Debug, Default)]
struct ServableInner {
    held: Mutex<HashMap<BinaryId, Held>>,
    not_allowed: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

/// The binaries this peer can serve (its drivers' executables and what it fetched, with
/// their manifests), and to which peers.
#[derive(Clone, Debug, Default)]
pub struct Servable(Arc<ServableInner>);

impl Servable {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<BinaryId, Held>> {
        self.0.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `path` servable as `id`, with its encoded `manifest` (the peers it may go to
    /// are kept).
    pub fn insert(&self, id: BinaryId, path: PathBuf, manifest: Option<Vec<u8>>) {
        let mut held = self.held();
        match held.get_mut(&id) {
            Some(h) => {
                h.path = path;
                if manifest.is_some() {
                    h.manifest = manifest;
                }
            }
            None => {
                held.insert(
                    id,
                    Held {
                        path,
                        manifest,
                        index: Arc::default(),
                        grants: HashMap::new(),
                    },
                );
            }
        }
    }

    /// Where `id` is, with its manifest, if held.
    pub fn get(&self, id: &BinaryId) -> Option<(PathBuf, Option<Vec<u8>>)> {
        self.held()
            .get(id)
            .map(|h| (h.path.clone(), h.manifest.clone()))
    }

    /// The chunk index of `id`: made from the whole file, once its hash is checked, by the
    /// first caller (on a blocking thread); later callers get it at once, and those that
    /// come while it is made wait for it. `None` if `id` is not held; an error if its file
    /// cannot be read or no longer hashes to `id` (the next call tries again).
    pub async fn index(&self, id: &BinaryId) -> Option<io::Result<Arc<Vec<Chunk>>>> {
        let (path, cell) = {
            let held = self.held();
            let h = held.get(id)?;
            (h.path.clone(), h.index.clone())
        };
        let id = *id;
        let made = cell
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    read_checked(&path, &id).map(|bytes| Arc::new(chunks::chunks(&bytes)))
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
            })
            .await;
        Some(made.cloned())
    }

    /// Gives `id` (held) the index `index`, made elsewhere (a fetch by chunks brought it).
    pub fn set_index(&self, id: &BinaryId, index: Arc<Vec<Chunk>>) {
        if let Some(h) = self.held().get(id) {
            if h.index.set(index).is_err() {
                // Made already, from the same bytes.
            }
        }
    }

    /// Stops serving `id`.
    pub fn remove(&self, id: &BinaryId) {
        self.held().remove(id);
    }

    /// `peer` was sent a task of `id` at `now`: it may fetch `id` for [`GRANT_TTL`]. Does
    /// nothing for a binary not held here.
    pub fn grant(&self, id: &BinaryId, peer: PeerId, now: Instant) {
        let mut held = self.held();
        let Some(h) = held.get_mut(id) else {
            return;
        };
        h.grants.insert(peer, now);
        if h.grants.len() > MAX_GRANTS {
            h.grants
                .retain(|_, at| now.saturating_duration_since(*at) < GRANT_TTL);
            while h.grants.len() > MAX_GRANTS {
                let oldest = h.grants.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p);
                match oldest {
                    Some(p) => h.grants.remove(&p),
                    None => break,
                };
            }
        }
    }

    /// Whether `peer` may fetch `id` at `now`.
    pub fn allowed(&self, id: &BinaryId, peer: &PeerId, now: Instant) -> bool {
        self.held().get(id).is_some_and(|h| {
            h.grants
                .get(peer)
                .is_some_and(|at| now.saturating_duration_since(*at) < GRANT_TTL)
        })
    }

    /// How many fetches were refused because the asker was sent no task of the binary.
    pub fn not_allowed(&self) -> u64 {
        self.0.not_allowed.load(Ordering::Relaxed)
    }

    fn count_not_allowed(&self, id: &BinaryId, peer: &PeerId, now: Instant) {
        let count = self.0.not_allowed.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.0.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        let due =
            last.is_none_or(|at| now.saturating_duration_since(at) >= NOT_ALLOWED_LOG_INTERVAL);
        if due {
            *last = Some(now);
            tracing::warn!(binary = %id, %peer, refused_so_far = count, "a peer that was sent no task of a binary asked for it; not served");
        }
    }
}

/// Fetched binaries, on disk, at most `max_bytes` of them: the least recently used go first.
#[derive(Debug)]
pub struct BinaryCache {
    dir: PathBuf,
    max_bytes: u64,
    used: u64,
    entries: lru::LruCache<BinaryId, u64>,
    /// The manifests that came with them (served onward with them).
    manifests: HashMap<BinaryId, Vec<u8>>,
    /// Their chunk indexes, once made (for the next fetch's delta).
    indexes: HashMap<BinaryId, Arc<Vec<Chunk>>>,
    /// Bytes of binaries received from peers, in all.
    fetched: u64,
}

impl BinaryCache {
    /// A cache in `dir` (made if missing) of at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            used: 0,
            entries: lru::LruCache::unbounded(),
            manifests: HashMap::new(),
            indexes: HashMap::new(),
            fetched: 0,
        })
    }

    /// Where `id` is kept.
    pub fn path(&self, id: &BinaryId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// The cached binary `id` with its manifest, marked used.
    pub fn get(&mut self, id: &BinaryId) -> Option<(PathBuf, Option<Vec<u8>>)> {
        let held = self.entries.get(id).is_some();
        held.then(|| (self.path(id), self.manifests.get(id).cloned()))
    }

    /// Records a binary placed at [`Self::path`], with its manifest; evicts others to stay
    /// under the bound. Returns the evicted ids.
    pub fn insert(&mut self, id: BinaryId, size: u64, manifest: Option<Vec<u8>>) -> Vec<BinaryId> {
        if let Some(old) = self.entries.put(id, size) {
            self.used -= old;
        }
        match manifest {
            Some(m) => self.manifests.insert(id, m),
            None => self.manifests.remove(&id),
        };
        self.used += size;
        let mut evicted = Vec::new();
        while self.used > self.max_bytes {
            let Some((victim, len)) = self.entries.pop_lru() else {
                break;
            };
            if victim == id {
                // The newest alone is over the bound: keep it, it is needed now.
                self.entries.put(victim, len);
                break;
            }
            self.used -= len;
            self.manifests.remove(&victim);
            self.indexes.remove(&victim);
            let path = self.path(&victim);
            if let Err(e) = std::fs::remove_file(&path) {
                // Not counted any more either way; a file left over is only disk space.
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an evicted binary");
            }
            evicted.push(victim);
        }
        evicted
    }

    /// The chunk index of the cached binary `id`, if made.
    pub fn index(&self, id: &BinaryId) -> Option<Arc<Vec<Chunk>>> {
        self.indexes.get(id).cloned()
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes of binaries received from peers so far (all of a whole fetch, the missing
    /// chunks of a delta).
    pub fn fetched(&self) -> u64 {
        self.fetched
    }

    /// The binaries held, most recently used first, with their chunk indexes if made.
    fn sources(&self) -> Vec<(BinaryId, Option<Arc<Vec<Chunk>>>)> {
        self.entries
            .iter()
            .map(|(id, _)| (*id, self.indexes.get(id).cloned()))
            .collect()
    }
}

/// Serves one fetch to `peer`: only a binary it was sent a task of ([`Servable::grant`]).
pub async fn serve(
    mut stream: libp2p::Stream,
    peer: PeerId,
    servable: &Servable,
    enabled: bool,
) -> io::Result<()> {
    let req: CodeRequest = tokio::time::timeout(STALL, framed::read_one(&mut stream, MAX_REQUEST))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let now = Instant::now();
    if let Want::Ranges(ranges) = &req.want {
        let (response, bytes) =
            ranges_answer(servable, enabled, &req.binary, peer, now, ranges).await;
        framed::write(&mut stream, &response, MAX_HEADER).await?;
        if let Some(bytes) = bytes {
            stream.write_all(&bytes).await?;
        }
        return stream.close().await;
    }
    if req.want == Want::Index {
        // Made from the whole binary once its hash was checked (when the binary became
        // servable, or at the first ask): the file need not be read again (ranges asked for
        // next are checked against it chunk by chunk).
        let (response, index) = index_answer(servable, enabled, &req.binary, peer, now).await;
        framed::write(&mut stream, &response, MAX_HEADER).await?;
        if let Some(index) = index {
            framed::write(&mut stream, &*index, MAX_INDEX).await?;
        }
        return stream.close().await;
    }
    let (response, bytes) = answer(servable, enabled, &req.binary, peer, now).await;
    framed::write(&mut stream, &response, MAX_HEADER).await?;
    if let Some(bytes) = bytes {
        stream.write_all(&bytes).await?;
    }
    stream.close().await
}

/// The answer to `peer`'s request for the chunk index of `id`, with the index.
async fn index_answer(
    servable: &Servable,
    enabled: bool,
    id: &BinaryId,
    peer: PeerId,
    now: Instant,
) -> (CodeResponse, Option<Arc<Vec<Chunk>>>) {
    let manifest = match permit(servable, enabled, id, peer, now) {
        Ok((_, manifest)) => manifest,
        Err(refused) => return (refused, None),
    };
    match servable.index(id).await {
        Some(Ok(index)) => {
            let size = index.last().map_or(0, |c| c.offset + u64::from(c.len));
            (CodeResponse::Found { size, manifest }, Some(index))
        }
        Some(Err(e)) => {
            tracing::warn!(binary = %id, error = %e, "not shipping a binary");
            (CodeResponse::NotFound, None)
        }
        None => (CodeResponse::NotFound, None),
    }
}

/// The answer to `peer`'s request for `ranges` of `id`, with their bytes. They are read
/// from the file alone and checked chunk by chunk against the binary's index (made from the
/// whole, checked binary when it was asked for), so that no byte goes out that is not the
/// binary's; ranges must be whole chunks of it.
async fn ranges_answer(
    servable: &Servable,
    enabled: bool,
    id: &BinaryId,
    peer: PeerId,
    now: Instant,
    ranges: &[(u64, u32)],
) -> (CodeResponse, Option<Vec<u8>>) {
    // (Asked for ranges before the index: it is made now.)
    let index = match index_answer(servable, enabled, id, peer, now).await {
        (_, Some(index)) => index,
        (refused, None) => return (refused, None),
    };
    let Some((path, manifest)) = servable.get(id) else {
        return (CodeResponse::NotFound, None);
    };
    let size = index.last().map_or(0, |c| c.offset + u64::from(c.len));
    let Some(wanted) = chunks_of(&index, ranges) else {
        tracing::warn!(%peer, binary = %id, "a request for ranges that are not whole chunks of the binary; refused");
        return (CodeResponse::BadRanges, None);
    };
    let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let total: usize = wanted.iter().map(|c| c.len as usize).sum();
        let mut out = vec![0u8; total];
        let mut at = 0;
        for c in wanted {
            let chunk = &mut out[at..at + c.len as usize];
            file.read_exact_at(chunk, c.offset)?;
            if *blake3::hash(chunk).as_bytes() != c.hash {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} changed since it was checked", path.display()),
                ));
            }
            at += c.len as usize;
        }
        Ok(out)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)));
    match read {
        Ok(bytes) => (CodeResponse::Found { size, manifest }, Some(bytes)),
        Err(e) => {
            tracing::warn!(binary = %id, error = %e, "not shipping a binary");
            (CodeResponse::NotFound, None)
        }
    }
}

/// The chunks of `index` that `ranges` are made of, in order: `None` unless the ranges are
/// in order, apart, and each a run of whole chunks.
fn chunks_of(index: &[Chunk], ranges: &[(u64, u32)]) -> Option<Vec<Chunk>> {
    let size = index.last().map_or(0, |c| c.offset + u64::from(c.len));
    if !ranges_within(ranges, size) {
        return None;
    }
    let mut out = Vec::new();
    for (offset, len) in ranges {
        let mut i = index.binary_search_by_key(offset, |c| c.offset).ok()?;
        let end = offset + u64::from(*len);
        loop {
            let c = index.get(i)?;
            out.push(*c);
            let c_end = c.offset + u64::from(c.len);
            if c_end == end {
                break;
            }
            if c_end > end {
                return None;
            }
            i += 1;
        }
    }
    Some(out)
}

/// Whether `ranges` are in increasing order, apart, and within `size` bytes.
fn ranges_within(ranges: &[(u64, u32)], size: u64) -> bool {
    let mut next = 0u64;
    ranges.iter().all(|(offset, len)| {
        let ok = *offset >= next
            && offset
                .checked_add(u64::from(*len))
                .is_some_and(|end| end <= size);
        next = offset.saturating_add(u64::from(*len));
        ok
    })
}

/// The answer to `peer`'s request for `id`, with the bytes to send after it.
/// Whether `peer` may have binary `id`: its path and manifest, or the answer that refuses.
fn permit(
    servable: &Servable,
    enabled: bool,
    id: &BinaryId,
    peer: PeerId,
    now: Instant,
) -> Result<(PathBuf, Option<Vec<u8>>), CodeResponse> {
    if !enabled {
        return Err(CodeResponse::Refused);
    }
    let held = servable.get(id).ok_or(CodeResponse::NotFound)?;
    if !servable.allowed(id, &peer, now) {
        servable.count_not_allowed(id, &peer, now);
        return Err(CodeResponse::NotAllowed);
    }
    Ok(held)
}

async fn answer(
    servable: &Servable,
    enabled: bool,
    id: &BinaryId,
    peer: PeerId,
    now: Instant,
) -> (CodeResponse, Option<Vec<u8>>) {
    let (path, manifest) = match permit(servable, enabled, id, peer, now) {
        Ok(held) => held,
        Err(refused) => return (refused, None),
    };
    // Read and hashed on a blocking thread: a binary is tens of megabytes.
    let read = tokio::task::spawn_blocking({
        let (p, id) = (path.clone(), *id);
        move || read_checked(&p, &id)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)));
    match read {
        Ok(b) => (
            CodeResponse::Found {
                size: b.len() as u64,
                manifest,
            },
            Some(b),
        ),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "not shipping a binary");
            (CodeResponse::NotFound, None)
        }
    }
}

/// The bytes of the binary at `path`, if they hash to `id`. A local driver names its
/// executable and claims its id; the node hashes the file itself before a byte of it goes to
/// a peer (so a claim can neither make the node ship some other file under a trusted id, nor
/// can a file changed since be shipped).
pub fn read_checked(path: &Path, id: &BinaryId) -> io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let found = BinaryId(crate::store::digest(&bytes).0);
    if found != *id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} hashes to {found}, not the claimed {id}", path.display()),
        ));
    }
    Ok(bytes)
}

/// What a fetch checks a binary against: this node's code policy and target triple.
#[derive(Clone, Debug)]
pub struct Check<'a> {
    /// Publishers trusted.
    pub policy: &'a CodePolicy,
    /// This node's target triple.
    pub target: &'a str,
}

impl Check<'_> {
    /// Whether the binary `id` may run here with `manifest` (encoded), as it came.
    pub fn manifest(&self, id: &BinaryId, manifest: Option<&[u8]>) -> Result<(), CodeRejection> {
        let decoded = match manifest {
            None => None,
            Some(b) => {
                Some(Manifest::decode(b).map_err(|e| CodeRejection::BadManifest(e.to_string()))?)
            }
        };
        self.policy.check(&id.0, self.target, decoded.as_ref())
    }
}

/// Fetches binary `id` from `peer` into `cache`: its manifest is checked (`check`) before
/// any byte of it is read, then its hash; returns its path (an executable file) and
/// manifest. At most [`super::limits::StreamKind::max_outbound`] fetches from one peer run at
/// once (`limits`); the others wait for their turn.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    control: &mut libp2p_stream::Control,
    protocol: libp2p::StreamProtocol,
    limits: &PeerLimits,
    peer: PeerId,
    id: BinaryId,
    cache: &Mutex<BinaryCache>,
    check: Check<'_>,
    progress: &Tracked,
) -> Result<(PathBuf, Option<Vec<u8>>), CodeError> {
    if let Some((p, m)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        // Checked when it came; checked again (the policy is this node's, fixed).
        check
            .manifest(&id, m.as_deref())
            .map_err(CodeError::Rejected)?;
        return Ok((p, m));
    }
    // Held until the fetch is done: fewer streams to one peer than it serves at once.
    let _slot = limits.outbound(peer, StreamKind::Code).await;
    let sources = cache.lock().unwrap_or_else(|e| e.into_inner()).sources();
    if !sources.is_empty() {
        let asked = Asked {
            protocol: &protocol,
            peer,
            id,
            check: &check,
            progress,
        };
        match fetch_delta(control, &asked, cache, sources).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(
                e @ (CodeError::Rejected(_)
                | CodeError::NotFound(_)
                | CodeError::Refused(_)
                | CodeError::NotAllowed(_)
                | CodeError::Stopped),
            ) => return Err(e),
            Err(e) => {
                tracing::info!(binary = %id, %peer, error = %e, "fetching a binary by its chunks failed; fetching it whole");
            }
        }
    }
    let asked = Asked {
        protocol: &protocol,
        peer,
        id,
        check: &check,
        progress,
    };
    let (mut stream, size, manifest) = ask(control, &asked, Want::Whole).await?;
    progress.set_total(size);
    let final_path = cache.lock().unwrap_or_else(|e| e.into_inner()).path(&id);
    let partial = final_path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    let result: Result<(), CodeError> = async {
        while got < size {
            let want = (size - got).min(buf.len() as u64) as usize;
            let n = tokio::time::timeout(STALL, stream.read_raw(&mut buf[..want]))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "stalled"))??;
            if n == 0 {
                return Err(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "truncated binary").into(),
                );
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut file, &buf[..n])?;
            got += n as u64;
            progress.progress().add(n as u64);
        }
        let found = BinaryId(*hasher.finalize().as_bytes());
        if found != id {
            return Err(CodeError::HashMismatch {
                peer,
                found,
                wanted: id,
            });
        }
        place(&file, &partial, &final_path)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        remove_partial(&partial);
        return Err(e);
    }
    let evicted = {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.fetched += size;
        cache.insert(id, size, manifest.clone())
    };
    if !evicted.is_empty() {
        tracing::debug!(count = evicted.len(), "evicted cached binaries");
    }
    tracing::info!(binary = %id, %peer, bytes = size, "fetched a binary");
    Ok((final_path, manifest))
}

/// Makes a fetched binary's file executable and puts it in its place in the cache. (Not
/// synced to disk: the cache is not used again after a restart, and the binary runs from
/// the page cache; a sync of a hundred megabytes would cost more than the transfer.)
fn place(file: &std::fs::File, partial: &Path, final_path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(partial, final_path)
}

/// Removes the file of a fetch that failed.
fn remove_partial(partial: &Path) {
    match std::fs::remove_file(partial) {
        Err(rm) if rm.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %partial.display(), error = %rm, "cannot remove a failed fetch");
        }
        _ => {}
    }
}

/// What a fetch asks of whom, and checks.
struct Asked<'a> {
    protocol: &'a libp2p::StreamProtocol,
    peer: PeerId,
    id: BinaryId,
    check: &'a Check<'a>,
    progress: &'a Tracked,
}

/// Opens a stream to the holder and asks for `want` of the binary: the stream (what was
/// asked follows), the binary's size and manifest, the manifest checked before anything of
/// the binary is read.
async fn ask(
    control: &mut libp2p_stream::Control,
    asked: &Asked<'_>,
    want: Want,
) -> Result<(FrameReader<libp2p::Stream>, u64, Option<Vec<u8>>), CodeError> {
    let (peer, id) = (asked.peer, asked.id);
    let mut stream = control
        .open_stream(peer, asked.protocol.clone())
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let request = CodeRequest { binary: id, want };
    framed::write(&mut stream, &request, MAX_REQUEST).await?;
    let mut stream = FrameReader::new(stream);
    let response: CodeResponse = tokio::time::timeout(STALL, stream.next(MAX_HEADER))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))?;
    match response {
        CodeResponse::Found { size, manifest } if size <= MAX_BINARY => {
            // Before a byte of the binary is read.
            asked
                .check
                .manifest(&id, manifest.as_deref())
                .map_err(CodeError::Rejected)?;
            Ok((stream, size, manifest))
        }
        CodeResponse::Found { size, .. } => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a binary of {size} bytes exceeds the maximum"),
        )
        .into()),
        CodeResponse::NotFound => Err(CodeError::NotFound(peer)),
        CodeResponse::Refused => Err(CodeError::Refused(peer)),
        CodeResponse::NotAllowed => Err(CodeError::NotAllowed(peer)),
        CodeResponse::BadRanges => Err(CodeError::Malformed {
            peer,
            message: "it refused the ranges asked for".into(),
        }),
    }
}

/// Whether `index` cuts `size` bytes into chunks, in order, each at most
/// [`chunks::MAX_CHUNK`] long.
fn index_covers(index: &[Chunk], size: u64) -> bool {
    let mut at = 0u64;
    index.iter().all(|c| {
        let ok = c.offset == at && c.len > 0 && c.len as usize <= chunks::MAX_CHUNK;
        at = at.saturating_add(u64::from(c.len));
        ok
    }) && at == size
}

/// Where this peer holds chunks: by hash, a file and the range in it.
type HeldChunks = HashMap<[u8; 32], (PathBuf, u64, u32)>;

/// Cached binaries whose chunks a delta may take (the most recently used).
const DELTA_SOURCES: usize = 4;

/// The chunks of the cached binaries `sources`, their indexes made (and kept) if need be.
async fn held_chunks(
    cache: &Mutex<BinaryCache>,
    sources: Vec<(BinaryId, Option<Arc<Vec<Chunk>>>)>,
) -> HeldChunks {
    let mut held = HashMap::new();
    for (id, index) in sources.into_iter().take(DELTA_SOURCES) {
        let path = cache.lock().unwrap_or_else(|e| e.into_inner()).path(&id);
        let index = match index {
            Some(index) => index,
            None => {
                let p = path.clone();
                let made = tokio::task::spawn_blocking(move || read_checked(&p, &id))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|read| read)
                    .map(|bytes| Arc::new(chunks::chunks(&bytes)));
                match made {
                    Ok(index) => {
                        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                        cache.indexes.insert(id, index.clone());
                        index
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "a cached binary cannot be read; not a source of chunks");
                        continue;
                    }
                }
            }
        };
        for c in index.iter() {
            held.entry(c.hash)
                .or_insert((path.clone(), c.offset, c.len));
        }
    }
    held
}

/// Fetches binary `asked.id` by its chunks: its index, then the chunks this peer does not
/// hold in its cached binaries. `None`: not worth it (most of it would come anyway); the
/// caller fetches it whole.
async fn fetch_delta(
    control: &mut libp2p_stream::Control,
    asked: &Asked<'_>,
    cache: &Mutex<BinaryCache>,
    sources: Vec<(BinaryId, Option<Arc<Vec<Chunk>>>)>,
) -> Result<Option<(PathBuf, Option<Vec<u8>>)>, CodeError> {
    let (peer, id) = (asked.peer, asked.id);
    let (mut stream, size, manifest) = ask(control, asked, Want::Index).await?;
    if size < DELTA_MIN {
        return Ok(None);
    }
    let index: Vec<Chunk> = tokio::time::timeout(STALL, stream.next(MAX_INDEX))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no index"))??
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no index"))?;
    drop(stream);
    if !index_covers(&index, size) {
        return Err(CodeError::Malformed {
            peer,
            message: format!("its chunk index does not cover the binary's {size} bytes"),
        });
    }
    let held = held_chunks(cache, sources).await;
    let mut ranges: Vec<(u64, u32)> = Vec::new();
    let mut missing = 0u64;
    for c in index.iter().filter(|c| !held.contains_key(&c.hash)) {
        missing += u64::from(c.len);
        match ranges.last_mut() {
            // Adjacent to the last range (and short enough to merge): one range.
            Some((o, l))
                if *o + u64::from(*l) == c.offset
                    && u64::from(*l) + u64::from(c.len) <= u64::from(u32::MAX) =>
            {
                *l += c.len;
            }
            _ => ranges.push((c.offset, c.len)),
        }
    }
    if missing as f64 > DELTA_MAX_SHARE * size as f64 {
        return Ok(None);
    }
    asked.progress.set_total(missing);
    let mut incoming = match ranges.is_empty() {
        true => None,
        false => Some(ask(control, asked, Want::Ranges(ranges)).await?.0),
    };
    let final_path = cache.lock().unwrap_or_else(|e| e.into_inner()).path(&id);
    let partial = final_path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    let result: Result<(), CodeError> = async {
        // Put together in memory (a binary is tens of megabytes), then hashed on two threads
        // and written at once.
        let mut whole = vec![0u8; usize::try_from(size).map_err(io::Error::other)?];
        let mut sources: HashMap<PathBuf, std::fs::File> = HashMap::new();
        for c in &index {
            let at = c.offset as usize;
            let chunk = &mut whole[at..at + c.len as usize];
            match (held.get(&c.hash), incoming.as_mut()) {
                (Some((path, offset, _)), _) => {
                    // (This peer's own copy, checked when it came: the whole is checked
                    // below.)
                    use std::os::unix::fs::FileExt;
                    let source = match sources.entry(path.clone()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(std::fs::File::open(path)?)
                        }
                    };
                    source.read_exact_at(chunk, *offset)?;
                }
                (None, Some(stream)) => {
                    let mut got = 0;
                    while got < chunk.len() {
                        let n = tokio::time::timeout(STALL, stream.read_raw(&mut chunk[got..]))
                            .await
                            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "stalled"))??;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated chunks",
                            )
                            .into());
                        }
                        got += n;
                        asked.progress.progress().add(n as u64);
                    }
                    if *blake3::hash(chunk).as_bytes() != c.hash {
                        return Err(CodeError::Malformed {
                            peer,
                            message: format!("chunk at {} does not match its hash", c.offset),
                        });
                    }
                }
                (None, None) => {
                    return Err(io::Error::other("a chunk neither held nor asked for").into())
                }
            }
        }
        drop(sources);
        let found = BinaryId(crate::store::digest(&whole).0);
        if found != id {
            return Err(CodeError::HashMismatch {
                peer,
                found,
                wanted: id,
            });
        }
        std::io::Write::write_all(&mut file, &whole)?;
        place(&file, &partial, &final_path)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        remove_partial(&partial);
        return Err(e);
    }
    let evicted = {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.fetched += missing;
        cache.indexes.insert(id, Arc::new(index));
        cache.insert(id, size, manifest.clone())
    };
    if !evicted.is_empty() {
        tracing::debug!(count = evicted.len(), "evicted cached binaries");
    }
    tracing::info!(binary = %id, %peer, bytes = size, sent = missing, "fetched a binary by its chunks");
    Ok(Some((final_path, manifest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_indexes_are_checked_against_the_binary() {
        assert!(ranges_within(&[], 10));
        assert!(ranges_within(&[(0, 4), (4, 2), (8, 2)], 10));
        assert!(!ranges_within(&[(8, 2), (0, 4)], 10), "out of order");
        assert!(!ranges_within(&[(0, 4), (3, 2)], 10), "overlapping");
        assert!(!ranges_within(&[(8, 3)], 10), "past the end");
        assert!(!ranges_within(&[(u64::MAX, 3)], 10), "overflowing");
        let chunk = |offset, len| Chunk {
            offset,
            len,
            hash: [0; 32],
        };
        assert!(index_covers(&[chunk(0, 6), chunk(6, 4)], 10));
        assert!(index_covers(&[], 0));
        assert!(!index_covers(&[chunk(0, 6)], 10), "short");
        assert!(
            !index_covers(&[chunk(0, 6), chunk(5, 5)], 10),
            "overlapping"
        );
        assert!(
            !index_covers(&[chunk(0, 0), chunk(0, 10)], 10),
            "empty chunk"
        );
        let big = (chunks::MAX_CHUNK + 1) as u32;
        assert!(!index_covers(&[chunk(0, big)], u64::from(big)), "too long");
        // Ranges served are runs of whole chunks.
        let index = [chunk(0, 6), chunk(6, 4), chunk(10, 5)];
        let offsets = |r: &[(u64, u32)]| {
            chunks_of(&index, r).map(|cs| cs.iter().map(|c| c.offset).collect::<Vec<_>>())
        };
        assert_eq!(offsets(&[(0, 10)]), Some(vec![0, 6]));
        assert_eq!(offsets(&[(0, 6), (10, 5)]), Some(vec![0, 10]));
        assert_eq!(offsets(&[(6, 9)]), Some(vec![6, 10]));
        assert_eq!(offsets(&[(0, 5)]), None, "part of a chunk");
        assert_eq!(offsets(&[(2, 4)]), None, "not at a chunk's start");
        assert_eq!(offsets(&[(6, 10)]), None, "past the end");
    }

    #[test]
    fn the_cache_is_bounded_and_least_recently_used_goes_first() {
        let dir = std::env::temp_dir().join(format!("shoal-code-cache-{}", std::process::id()));
        let mut c = BinaryCache::open(&dir, 100).unwrap();
        let (a, b, d) = (BinaryId([1; 32]), BinaryId([2; 32]), BinaryId([3; 32]));
        for (id, len) in [(a, 40u64), (b, 40)] {
            std::fs::write(c.path(&id), vec![0u8; len as usize]).unwrap();
            assert!(c.insert(id, len, None).is_empty());
        }
        assert!(c.get(&a).is_some()); // a is now the most recent
        std::fs::write(c.path(&d), vec![0u8; 40]).unwrap();
        assert_eq!(c.insert(d, 40, Some(vec![1])), vec![b]);
        assert!(!c.path(&b).exists());
        assert_eq!(c.used(), 80);
        // One binary above the bound is kept: it is the one needed.
        let big = BinaryId([4; 32]);
        std::fs::write(c.path(&big), vec![0u8; 200]).unwrap();
        assert_eq!(c.insert(big, 200, None), vec![a, d]);
        assert!(c.get(&big).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_file_with_the_claimed_hash_is_shipped() {
        let path = std::env::temp_dir().join(format!("shoal-code-claim-{}", std::process::id()));
        std::fs::write(&path, b"the real executable").unwrap();
        let id = BinaryId(*blake3::hash(b"the real executable").as_bytes());
        assert_eq!(read_checked(&path, &id).unwrap(), b"the real executable");
        // A driver claiming some other file (a key, say) under that id gets nothing shipped.
        let e = read_checked(&path, &BinaryId([9; 32])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Nor does a file changed since it was claimed.
        std::fs::write(&path, b"replaced").unwrap();
        assert!(read_checked(&path, &id).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    fn scratch_exe(name: &str, bytes: &[u8]) -> (PathBuf, BinaryId) {
        let path = std::env::temp_dir().join(format!("shoal-code-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        (path, BinaryId(*blake3::hash(bytes).as_bytes()))
    }

    #[tokio::test]
    async fn a_binary_goes_only_to_peers_sent_a_task_of_it_and_not_for_ever() {
        let (path, id) = scratch_exe("grants", b"a driver's program");
        let s = Servable::default();
        let (asked, stranger) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        s.insert(id, path.clone(), Some(vec![1, 2, 3]));
        // Held, but nobody was sent a task of it: nobody gets it, and it is counted.
        let (r, bytes) = answer(&s, true, &id, asked, t0).await;
        assert_eq!((r, bytes), (CodeResponse::NotAllowed, None));
        s.grant(&id, asked, t0);
        let (r, bytes) = answer(&s, true, &id, asked, t0 + Duration::from_secs(1)).await;
        assert_eq!(
            r,
            CodeResponse::Found {
                size: 18,
                manifest: Some(vec![1, 2, 3])
            }
        );
        assert_eq!(bytes.as_deref(), Some(&b"a driver's program"[..]));
        let (r, _) = answer(&s, true, &id, stranger, t0).await;
        assert_eq!(r, CodeResponse::NotAllowed);
        assert_eq!(s.not_allowed(), 2);
        // An hour after the last task sent, the grant is gone; a new task renews it.
        assert!(!s.allowed(&id, &asked, t0 + GRANT_TTL));
        s.grant(&id, asked, t0 + GRANT_TTL);
        assert!(s.allowed(&id, &asked, t0 + GRANT_TTL + Duration::from_secs(1)));
        // Re-registered (the driver attached again): the grants stay.
        s.insert(id, path.clone(), None);
        assert!(s.allowed(&id, &asked, t0 + GRANT_TTL));
        assert_eq!(s.get(&id).unwrap().1, Some(vec![1, 2, 3]));
        // Grants of binaries not held are not kept; unknown ones are not found; a peer
        // without code shipping refuses.
        let other = BinaryId([5; 32]);
        s.grant(&other, asked, t0);
        assert_eq!(
            answer(&s, true, &other, asked, t0).await.0,
            CodeResponse::NotFound
        );
        assert_eq!(
            answer(&s, false, &id, asked, t0).await.0,
            CodeResponse::Refused
        );
        assert_eq!(s.not_allowed(), 2);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn grants_per_binary_are_bounded_the_oldest_going_first() {
        let s = Servable::default();
        let id = BinaryId([6; 32]);
        s.insert(id, PathBuf::from("/nonexistent"), None);
        let t0 = Instant::now();
        let first = PeerId::random();
        s.grant(&id, first, t0);
        for i in 0..MAX_GRANTS {
            s.grant(
                &id,
                PeerId::random(),
                t0 + Duration::from_millis(1 + i as u64),
            );
        }
        let now = t0 + Duration::from_secs(1);
        assert!(!s.allowed(&id, &first, now));
        assert_eq!(s.held().get(&id).unwrap().grants.len(), MAX_GRANTS);
    }

    #[test]
    fn the_manifest_is_checked_against_the_policy_and_this_target() {
        use crate::auth::code::Publisher;
        let p = Publisher::generate();
        let id = BinaryId([3; 32]);
        let policy = CodePolicy {
            trusted: vec![p.public()],
        };
        let check = Check {
            policy: &policy,
            target: "t1",
        };
        check
            .manifest(&id, Some(&p.sign(id.0, "t1", 1).encode()))
            .unwrap();
        assert_eq!(check.manifest(&id, None), Err(CodeRejection::Unsigned));
        assert!(matches!(
            check.manifest(&id, Some(b"junk")),
            Err(CodeRejection::BadManifest(_))
        ));
        assert!(matches!(
            check.manifest(&id, Some(&p.sign(id.0, "t2", 1).encode())),
            Err(CodeRejection::BadManifest(_))
        ));
        let stranger = Publisher::generate();
        assert!(matches!(
            check.manifest(&id, Some(&stranger.sign(id.0, "t1", 1).encode())),
            Err(CodeRejection::UntrustedPublisher(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_binary_is_indexed_once_by_the_first_that_asks_and_checked_first() {
        let bytes: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (path, id) = scratch_exe("index-once", &bytes);
        let servable = Servable::default();
        assert!(servable.index(&id).await.is_none(), "not held: no index");
        servable.insert(id, path.clone(), None);
        // Concurrent askers share one index, made from the checked bytes.
        let (a, b) = tokio::join!(servable.index(&id), servable.index(&id));
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert!(Arc::ptr_eq(&a, &b), "made twice");
        assert_eq!(*a, chunks::chunks(&bytes));
        // Made once: the file is not read again (a changed file does not change it; ranges
        // read later are checked against it chunk by chunk).
        std::fs::write(&path, b"changed").unwrap();
        let again = servable.index(&id).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &again));

        // A file that does not hash to its id is not indexed, and the next ask tries again.
        let (other, other_id) = scratch_exe("index-bad", &bytes[..2 << 20]);
        std::fs::write(&other, &bytes[..(2 << 20) - 1]).unwrap();
        servable.insert(other_id, other.clone(), None);
        let err = servable.index(&other_id).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        std::fs::write(&other, &bytes[..2 << 20]).unwrap();
        let fixed = servable.index(&other_id).await.unwrap().unwrap();
        assert_eq!(*fixed, chunks::chunks(&bytes[..2 << 20]));
        for p in [path, other] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
