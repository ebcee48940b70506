//! Code shipping: a peer that must run a binary it does not hold fetches it, by its blake3
//! id, from a peer that has it, checks the signed manifest that comes with it against its
//! [`CodePolicy`], then the hash, and keeps it in a bounded cache.
//!
//! Protocol (`/shoal/<mesh>/code/1`, one libp2p stream per fetch): the asker sends a
//! [`CodeRequest`] in a frame ([`shoal_protocol::frame`]); the holder answers with a framed
//! [`CodeResponse`] and, if found, the binary's bytes. The asker checks the manifest in the
//! response before it reads a byte of the binary. A holder serves a binary only to the peers
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

/// Asks for a binary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRequest {
    /// The binary's blake3 id.
    pub binary: BinaryId,
}

/// The answer; `Found` is followed by `size` raw bytes.
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

/// A binary this peer serves.
#[derive(Debug)]
struct Held {
    path: PathBuf,
    manifest: Option<Vec<u8>>,
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
            let path = self.path(&victim);
            if let Err(e) = std::fs::remove_file(&path) {
                // Not counted any more either way; a file left over is only disk space.
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an evicted binary");
            }
            evicted.push(victim);
        }
        evicted
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }
}

/// Serves one fetch to `peer`: only a binary it was sent a task of ([`Servable::grant`]).
pub async fn serve(
    mut stream: libp2p::Stream,
    peer: PeerId,
    servable: &Servable,
    enabled: bool,
) -> io::Result<()> {
    let req: CodeRequest = tokio::time::timeout(STALL, framed::read_one(&mut stream, MAX_HEADER))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let (response, bytes) = answer(servable, enabled, &req.binary, peer, Instant::now()).await;
    framed::write(&mut stream, &response, MAX_HEADER).await?;
    if let Some(b) = bytes {
        stream.write_all(&b).await?;
    }
    stream.close().await
}

/// The answer to `peer`'s request for `id`, with the bytes to send after it.
async fn answer(
    servable: &Servable,
    enabled: bool,
    id: &BinaryId,
    peer: PeerId,
    now: Instant,
) -> (CodeResponse, Option<Vec<u8>>) {
    if !enabled {
        return (CodeResponse::Refused, None);
    }
    let Some((path, manifest)) = servable.get(id) else {
        return (CodeResponse::NotFound, None);
    };
    if !servable.allowed(id, &peer, now) {
        servable.count_not_allowed(id, &peer, now);
        return (CodeResponse::NotAllowed, None);
    }
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
    let found = BinaryId(*blake3::hash(&bytes).as_bytes());
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
    let mut stream = control
        .open_stream(peer, protocol)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    framed::write(&mut stream, &CodeRequest { binary: id }, MAX_HEADER).await?;
    let mut stream = FrameReader::new(stream);
    let response: CodeResponse = tokio::time::timeout(STALL, stream.next(MAX_HEADER))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))?;
    let (size, manifest) = match response {
        CodeResponse::Found { size, manifest } if size <= MAX_BINARY => {
            // Before a byte of the binary is read.
            check
                .manifest(&id, manifest.as_deref())
                .map_err(CodeError::Rejected)?;
            progress.set_total(size);
            (size, manifest)
        }
        CodeResponse::Found { size, .. } => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a binary of {size} bytes exceeds the maximum"),
            )
            .into())
        }
        CodeResponse::NotFound => return Err(CodeError::NotFound(peer)),
        CodeResponse::Refused => return Err(CodeError::Refused(peer)),
        CodeResponse::NotAllowed => return Err(CodeError::NotAllowed(peer)),
    };
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
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        std::fs::rename(&partial, &final_path)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        match std::fs::remove_file(&partial) {
            Err(rm) if rm.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %partial.display(), error = %rm, "cannot remove a failed fetch");
            }
            _ => {}
        }
        return Err(e);
    }
    let evicted =
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, size, manifest.clone());
    if !evicted.is_empty() {
        tracing::debug!(count = evicted.len(), "evicted cached binaries");
    }
    tracing::info!(binary = %id, %peer, bytes = size, "fetched a binary");
    Ok((final_path, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
