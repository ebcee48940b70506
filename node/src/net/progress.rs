//! Transfers under way to this peer (objects pulled, binaries fetched), with their bytes so
//! far: `shoal status` lists them and `shoal get object --out` draws its progress bar from
//! them.
//!
//! A transfer is registered when it starts ([`Transfers::start`]) and leaves the list when
//! its [`Tracked`] is dropped, however it ends. The streams count the bytes they write into
//! its [`Progress`], a shared counter (one relaxed atomic add per chunk of a megabyte).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use shoal_protocol::{Transfer, TransferStatus};

/// Bytes a transfer has written so far; cloned into each stream of a parallel pull.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    /// Counts `n` more bytes in.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes in so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Entry {
    what: Transfer,
    total: AtomicU64,
    done: Progress,
    peers: Vec<PeerId>,
    started: Instant,
}

/// The transfers under way (see the module documentation). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Transfers {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    live: HashMap<u64, Arc<Entry>>,
}

impl Transfers {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a transfer of `total` bytes (0 if not known yet) from `peers`.
    pub fn start(&self, what: Transfer, total: u64, peers: &[PeerId]) -> Tracked {
        let entry = Arc::new(Entry {
            what,
            total: AtomicU64::new(total),
            done: Progress::default(),
            peers: peers.to_vec(),
            started: Instant::now(),
        });
        let mut r = self.registry();
        let key = r.next;
        r.next += 1;
        r.live.insert(key, entry.clone());
        Tracked {
            transfers: self.clone(),
            key,
            entry,
        }
    }

    /// The transfers under way, oldest first.
    pub fn snapshot(&self) -> Vec<TransferStatus> {
        let r = self.registry();
        let mut live: Vec<(u64, &Arc<Entry>)> = r.live.iter().map(|(k, e)| (*k, e)).collect();
        live.sort_unstable_by_key(|(k, _)| *k);
        live.into_iter()
            .map(|(_, e)| TransferStatus {
                what: e.what,
                done: e.done.get(),
                total: e.total.load(Ordering::Relaxed),
                peers: e.peers.iter().map(ToString::to_string).collect(),
                elapsed_ms: e.started.elapsed().as_millis() as u64,
            })
            .collect()
    }
}

/// A registered transfer; it leaves the list when dropped.
#[derive(Debug)]
pub struct Tracked {
    transfers: Transfers,
    key: u64,
    entry: Arc<Entry>,
}

impl Tracked {
    /// Its byte counter, for the streams.
    pub fn progress(&self) -> &Progress {
        &self.entry.done
    }

    /// Sets its size, once known.
    pub fn set_total(&self, total: u64) {
        self.entry.total.store(total, Ordering::Relaxed);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.transfers.registry().live.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::{BinaryId, ObjectId};

    #[test]
    fn transfers_are_listed_with_their_bytes_until_they_end() {
        let transfers = Transfers::default();
        let peer = PeerId::random();
        let a = transfers.start(Transfer::Object(ObjectId([1; 32])), 100, &[peer]);
        let b = transfers.start(Transfer::Binary(BinaryId([2; 32])), 0, &[peer]);
        a.progress().add(30);
        a.progress().clone().add(20);
        b.set_total(7);
        let list = transfers.snapshot();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].what, Transfer::Object(ObjectId([1; 32])));
        assert_eq!((list[0].done, list[0].total), (50, 100));
        assert_eq!(list[0].peers, vec![peer.to_string()]);
        assert_eq!((list[1].done, list[1].total), (0, 7));
        drop(a);
        let list = transfers.snapshot();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].what, Transfer::Binary(BinaryId([2; 32])));
        drop(b);
        assert!(transfers.snapshot().is_empty());
    }
}
