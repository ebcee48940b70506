//! Code shipping: a peer that must run a binary it does not hold fetches it, by its blake3
//! id, from a peer that has it, checks the hash and keeps it in a bounded cache.
//!
//! Protocol (`/shoal/<mesh>/code/1`, one libp2p stream per fetch): the asker sends a
//! [`CodeRequest`] in a frame ([`shoal_protocol::frame`]); the holder answers with a framed
//! [`CodeResponse`] and, if found, the binary's bytes. A peer started with code shipping off serves nothing (and fetches
//! nothing: the node never asks it to).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_protocol::BinaryId;

use super::framed::{self, FrameReader};
use super::limits::{PeerLimits, StreamKind};

/// Largest binary served or accepted.
pub const MAX_BINARY: u64 = 4 << 30;
/// A fetch that makes no progress for this long fails.
pub const STALL: Duration = Duration::from_secs(30);
/// Largest request or response header.
pub const MAX_HEADER: usize = 1024;

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
    },
    /// Not held here.
    NotFound,
    /// This peer does not ship code.
    Refused,
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
}

/// The binaries this peer can serve: its drivers' executables and what it fetched.
#[derive(Clone, Debug, Default)]
pub struct Servable(Arc<Mutex<HashMap<BinaryId, PathBuf>>>);

impl Servable {
    /// Makes `path` servable as `id`.
    pub fn insert(&self, id: BinaryId, path: PathBuf) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, path);
    }

    /// Where `id` is, if held.
    pub fn get(&self, id: &BinaryId) -> Option<PathBuf> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Stops serving `id`.
    pub fn remove(&self, id: &BinaryId) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Fetched binaries, on disk, at most `max_bytes` of them: the least recently used go first.
#[derive(Debug)]
pub struct BinaryCache {
    dir: PathBuf,
    max_bytes: u64,
    used: u64,
    entries: lru::LruCache<BinaryId, u64>,
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
        })
    }

    /// Where `id` is kept.
    pub fn path(&self, id: &BinaryId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// The cached binary `id`, marked used.
    pub fn get(&mut self, id: &BinaryId) -> Option<PathBuf> {
        let held = self.entries.get(id).is_some();
        held.then(|| self.path(id))
    }

    /// Records a binary placed at [`Self::path`]; evicts others to stay under the bound.
    /// Returns the evicted ids.
    pub fn insert(&mut self, id: BinaryId, size: u64) -> Vec<BinaryId> {
        if let Some(old) = self.entries.put(id, size) {
            self.used -= old;
        }
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

/// Serves one fetch.
pub async fn serve(
    mut stream: libp2p::Stream,
    servable: &Servable,
    enabled: bool,
) -> io::Result<()> {
    let req: CodeRequest = tokio::time::timeout(STALL, framed::read_one(&mut stream, MAX_HEADER))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let path = servable.get(&req.binary).filter(|_| enabled);
    let (response, bytes) = match path {
        None if !enabled => (CodeResponse::Refused, None),
        None => (CodeResponse::NotFound, None),
        // Read and hashed on a blocking thread: a binary is tens of megabytes.
        Some(p) => match tokio::task::spawn_blocking({
            let (p, id) = (p.clone(), req.binary);
            move || read_checked(&p, &id)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
        {
            Ok(b) => (
                CodeResponse::Found {
                    size: b.len() as u64,
                },
                Some(b),
            ),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "not shipping a binary");
                (CodeResponse::NotFound, None)
            }
        },
    };
    framed::write(&mut stream, &response, MAX_HEADER).await?;
    if let Some(b) = bytes {
        stream.write_all(&b).await?;
    }
    stream.close().await
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

/// Fetches binary `id` from `peer` into `cache`, checking its hash; returns its path (an
/// executable file). At most [`super::limits::StreamKind::max_outbound`] fetches from one peer
/// run at once (`limits`); the others wait for their turn.
pub async fn fetch(
    control: &mut libp2p_stream::Control,
    protocol: libp2p::StreamProtocol,
    limits: &PeerLimits,
    peer: PeerId,
    id: BinaryId,
    cache: &Mutex<BinaryCache>,
) -> Result<PathBuf, CodeError> {
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(p);
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
    let size = match response {
        CodeResponse::Found { size } if size <= MAX_BINARY => size,
        CodeResponse::Found { size } => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a binary of {size} bytes exceeds the maximum"),
            )
            .into())
        }
        CodeResponse::NotFound => return Err(CodeError::NotFound(peer)),
        CodeResponse::Refused => return Err(CodeError::Refused(peer)),
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
    let evicted = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, size);
    if !evicted.is_empty() {
        tracing::debug!(count = evicted.len(), "evicted cached binaries");
    }
    tracing::info!(binary = %id, %peer, bytes = size, "fetched a binary");
    Ok(final_path)
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
            assert!(c.insert(id, len).is_empty());
        }
        assert!(c.get(&a).is_some()); // a is now the most recent
        std::fs::write(c.path(&d), vec![0u8; 40]).unwrap();
        assert_eq!(c.insert(d, 40), vec![b]);
        assert!(!c.path(&b).exists());
        assert_eq!(c.used(), 80);
        // One binary above the bound is kept: it is the one needed.
        let big = BinaryId([4; 32]);
        std::fs::write(c.path(&big), vec![0u8; 200]).unwrap();
        assert_eq!(c.insert(big, 200), vec![a, d]);
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
}
