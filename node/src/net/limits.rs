//! What one peer may cost this node in streams and buffered bytes, before admission as after.
//!
//! - **Streams.** At most a fixed number of a peer's inbound streams of each protocol are
//!   served at once ([`StreamKind::max_per_peer`]); [`PeerLimits::admit`] refuses the others,
//!   and the acceptor drops them at once (which resets them), with a rate-limited log line.
//!   The count is per peer id, across all its connections. This node opens at most half
//!   that many object and code streams to one peer ([`PeerLimits::outbound`] waits for a
//!   slot), so a peer of the mesh never has its streams refused for being busy, even while
//!   the other side still counts streams this side has finished with.
//! - **Bytes.** The bytes a peer's control streams hold in this node, read and not yet
//!   handed to the node, are charged to that peer's [`PeerBudget`] ([`PEER_BUFFER_BYTES`]);
//!   a reader that would go over it waits, not reading, until the peer's other streams give
//!   bytes back (backpressure, down to the peer's yamux window). The other protocols read
//!   only small headers ([`super::objects::MAX_HEADER`], [`super::code`]'s), whose buffers
//!   stay within one read's room ([`shoal_protocol::frame::MIN_READ`]) and are bounded by
//!   the stream count.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_protocol::frame::HEADER_LEN;
use shoal_protocol::mesh::MAX_PEER_MSG;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Inbound control links served at once per peer: one per direction is the rule; the second
/// covers a link being replaced while the old one ends.
pub const CONTROL_STREAMS_PER_PEER: usize = 2;
/// Inbound object streams served at once per peer. A pull uses at most
/// [`super::objects::STREAMS_PER_HOLDER`] per holder, and the pulls of a node share half this
/// many slots per holder ([`PeerLimits::outbound`]).
pub const OBJECT_STREAMS_PER_PEER: usize = 32;
/// Inbound binary fetches served at once per peer (a peer fetches a binary once).
pub const CODE_STREAMS_PER_PEER: usize = 4;
/// Inbound membership messages (one per stream) read at once per peer: SWIM sends a peer a
/// few a second, a sync's answer up to a handful at once.
pub const SWIM_STREAMS_PER_PEER: usize = 16;
/// Inbound bulk streams (tests and benchmarks) served at once per peer.
pub const BULK_STREAMS_PER_PEER: usize = 4;
/// Bytes a peer's streams may hold in this node, read and not yet handed to the node: one
/// control message of the largest size ([`MAX_PEER_MSG`]) with its header, and 1 MiB of room
/// for the buffers' last reads.
pub const PEER_BUFFER_BYTES: usize = MAX_PEER_MSG + HEADER_LEN + (1 << 20);
/// At most one log line per protocol this often about refused streams; the ones refused in
/// between are counted in the next line.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The protocols whose inbound streams are limited per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Control links (`ctl`).
    Control,
    /// Object transfers (`obj`).
    Object,
    /// Binary fetches (`code`).
    Code,
    /// Bulk transfers (`bulk`, tests and benchmarks).
    Bulk,
    /// Membership messages (`swim`).
    Swim,
}

impl StreamKind {
    const ALL: [StreamKind; 5] = [
        Self::Control,
        Self::Object,
        Self::Code,
        Self::Bulk,
        Self::Swim,
    ];

    /// How many streams of this kind this node opens to one peer at once: half what a peer
    /// serves, so the streams this side has finished and the peer is still closing never
    /// count against a new one.
    pub const fn max_outbound(self) -> usize {
        let half = self.max_per_peer() / 2;
        if half == 0 {
            1
        } else {
            half
        }
    }

    /// How many of a peer's streams of this kind are served at once.
    pub const fn max_per_peer(self) -> usize {
        match self {
            Self::Control => CONTROL_STREAMS_PER_PEER,
            Self::Object => OBJECT_STREAMS_PER_PEER,
            Self::Code => CODE_STREAMS_PER_PEER,
            Self::Bulk => BULK_STREAMS_PER_PEER,
            Self::Swim => SWIM_STREAMS_PER_PEER,
        }
    }

    /// Whether a peer's new stream of this kind takes the place of its oldest one once it
    /// has as many as it may, instead of being refused. A peer's control link is the newest
    /// control stream it opened (it opens another only after giving up the last one, and
    /// writes nothing more on that), while an old one may never end here on its own: the
    /// streams of a connection closed gracefully are not woken (yamux drops them without
    /// waking their readers), so their readers would hold the peer's slots for good and
    /// every new link of the peer would be refused.
    pub const fn newest_wins(self) -> bool {
        matches!(self, Self::Control)
    }

    /// Its name in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Control => "ctl",
            Self::Object => "obj",
            Self::Code => "code",
            Self::Bulk => "bulk",
            Self::Swim => "swim",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A stream refused because its peer already has as many of its kind as allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer {peer} already has {open} {} streams open (at most {})", kind.name(), kind.max_per_peer())]
pub struct TooManyStreams {
    /// The peer.
    pub peer: PeerId,
    /// The protocol.
    pub kind: StreamKind,
    /// Its streams of that kind being served.
    pub open: usize,
}

/// The bytes one peer may have buffered in this node ([`PEER_BUFFER_BYTES`] by default),
/// shared by the buffers of all its streams; each holds its part in a [`Held`].
#[derive(Clone, Debug)]
pub struct PeerBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl PeerBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Its size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not held by any buffer now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// The part of a [`PeerBudget`] one buffer holds; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: PeerBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Holds nothing of `budget` yet.
    pub fn new(budget: PeerBudget) -> Self {
        Self {
            budget,
            permit: None,
        }
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Holds `bytes` in all: gives back what is over, or waits until the peer's other
    /// buffers leave room for more. Fails (`InvalidData`) for more than the whole budget,
    /// which could never be had. Cancel-safe: dropped while waiting, it holds what it held.
    pub async fn hold(&mut self, bytes: usize) -> io::Result<()> {
        let have = self.bytes();
        if bytes <= have {
            if let Some(extra) = self.permit.as_mut().and_then(|p| p.split(have - bytes)) {
                drop(extra);
            }
            return Ok(());
        }
        if bytes > self.budget.total {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a buffer of {bytes} bytes exceeds the peer's budget of {} bytes",
                    self.budget.total
                ),
            ));
        }
        let more = u32::try_from(bytes - have)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "buffer too large"))?;
        let permit = self
            .budget
            .bytes
            .clone()
            .acquire_many_owned(more)
            .await
            .map_err(|_| io::Error::other("the peer's budget is closed"))?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }
}

/// The streams and the budget of one peer.
#[derive(Debug)]
struct Peer {
    /// Inbound streams being served, by [`StreamKind::index`].
    inbound: [usize; StreamKind::ALL.len()],
    /// Slots for this node's streams to the peer, by kind; made on first use.
    outbound: [Option<Arc<Semaphore>>; StreamKind::ALL.len()],
    budget: PeerBudget,
}

impl Peer {
    fn new(budget_bytes: usize) -> Self {
        Self {
            inbound: [0; StreamKind::ALL.len()],
            outbound: Default::default(),
            budget: PeerBudget::new(budget_bytes),
        }
    }

    /// Whether no stream of the peer is counted: its entry can go. (A buffer that still
    /// holds part of the budget keeps the budget alive on its own until it is dropped.)
    fn idle(&self) -> bool {
        self.inbound.iter().all(|n| *n == 0)
            && self
                .outbound
                .iter()
                .flatten()
                .all(|s| Arc::strong_count(s) == 1)
    }
}

/// Counts of refused streams, to log them at most every [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct Refusals {
    last_logged: Option<Instant>,
    since: u64,
}

impl Refusals {
    /// Counts one refusal at `now`; `Some(count)` when a line should be logged now, with the
    /// refusals it covers (this one and the ones not logged since the last line).
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        let due = self
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if !due {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<PeerId, Peer>,
    refusals: [Refusals; StreamKind::ALL.len()],
}

/// The per-peer limits of one node, shared by its acceptors and its outbound streams.
#[derive(Clone, Debug)]
pub struct PeerLimits {
    inner: Arc<Mutex<Inner>>,
    budget_bytes: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self::new(PEER_BUFFER_BYTES)
    }
}

impl PeerLimits {
    /// Limits with a budget of `budget_bytes` per peer (the stream counts are the constants).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            budget_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits an inbound stream of `kind` from `peer` if it has fewer than
    /// [`StreamKind::max_per_peer`] of them; the permit counts it until dropped. A refusal is
    /// logged here, at most once per [`REFUSAL_LOG_INTERVAL`] per kind; the caller drops the
    /// stream.
    pub fn admit(&self, peer: PeerId, kind: StreamKind) -> Result<StreamPermit, TooManyStreams> {
        self.admit_at(peer, kind, Instant::now())
    }

    /// Admits a stream of `kind` from `peer` in the place of one the caller is ending (see
    /// [`StreamKind::newest_wins`]): counted at once, over the limit until the ended one's
    /// permit is dropped.
    pub fn admit_superseding(&self, peer: PeerId, kind: StreamKind) -> StreamPermit {
        let mut inner = self.lock();
        let budget_bytes = self.budget_bytes;
        let entry = inner
            .peers
            .entry(peer)
            .or_insert_with(|| Peer::new(budget_bytes));
        entry.inbound[kind.index()] += 1;
        let budget = entry.budget.clone();
        StreamPermit {
            limits: self.clone(),
            peer,
            kind,
            budget,
        }
    }

    fn admit_at(
        &self,
        peer: PeerId,
        kind: StreamKind,
        now: Instant,
    ) -> Result<StreamPermit, TooManyStreams> {
        let mut inner = self.lock();
        let budget_bytes = self.budget_bytes;
        let entry = inner
            .peers
            .entry(peer)
            .or_insert_with(|| Peer::new(budget_bytes));
        let open = entry.inbound[kind.index()];
        if open >= kind.max_per_peer() {
            let refused = TooManyStreams { peer, kind, open };
            if let Some(count) = inner.refusals[kind.index()].note(now) {
                tracing::warn!(
                    %peer,
                    protocol = kind.name(),
                    limit = kind.max_per_peer(),
                    refused = count,
                    "too many streams from a peer; resetting the extra ones"
                );
            }
            return Err(refused);
        }
        entry.inbound[kind.index()] += 1;
        let budget = entry.budget.clone();
        Ok(StreamPermit {
            limits: self.clone(),
            peer,
            kind,
            budget,
        })
    }

    /// Waits for a slot to open a stream of `kind` to `peer`: this node never has more than
    /// [`StreamKind::max_outbound`] of them open to one peer, so the peer never refuses one
    /// for being busy. The slot is held until the permit is dropped.
    pub async fn outbound(&self, peer: PeerId, kind: StreamKind) -> OutboundPermit {
        let slots = {
            let mut inner = self.lock();
            let budget_bytes = self.budget_bytes;
            let entry = inner
                .peers
                .entry(peer)
                .or_insert_with(|| Peer::new(budget_bytes));
            entry.outbound[kind.index()]
                .get_or_insert_with(|| Arc::new(Semaphore::new(kind.max_outbound())))
                .clone()
        };
        // The semaphore is never closed.
        let permit = slots.acquire_owned().await.ok();
        OutboundPermit {
            limits: self.clone(),
            peer,
            _permit: permit,
        }
    }

    /// The inbound streams of `kind` from `peer` being served now.
    pub fn inbound(&self, peer: PeerId, kind: StreamKind) -> usize {
        self.lock()
            .peers
            .get(&peer)
            .map_or(0, |p| p.inbound[kind.index()])
    }

    /// The peers this keeps anything for (streams or slots in use).
    pub fn tracked_peers(&self) -> usize {
        self.lock().peers.len()
    }

    /// Drops `peer`'s entry if nothing of it is in use any more.
    fn forget_if_idle(&self, inner: &mut Inner, peer: &PeerId) {
        if inner.peers.get(peer).is_some_and(Peer::idle) {
            inner.peers.remove(peer);
        }
    }
}

/// One admitted inbound stream: counted against its peer's limit until dropped. Its
/// [`StreamPermit::budget`] is the peer's byte budget, for the stream's buffers.
#[derive(Debug)]
pub struct StreamPermit {
    limits: PeerLimits,
    peer: PeerId,
    kind: StreamKind,
    budget: PeerBudget,
}

impl StreamPermit {
    /// The byte budget of the stream's peer.
    pub fn budget(&self) -> &PeerBudget {
        &self.budget
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let limits = self.limits.clone();
        let mut inner = limits.lock();
        if let Some(entry) = inner.peers.get_mut(&self.peer) {
            let open = &mut entry.inbound[self.kind.index()];
            *open = open.saturating_sub(1);
        }
        limits.forget_if_idle(&mut inner, &self.peer);
    }
}

/// A slot for one outbound stream to a peer ([`PeerLimits::outbound`]), held until dropped.
#[derive(Debug)]
pub struct OutboundPermit {
    limits: PeerLimits,
    peer: PeerId,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for OutboundPermit {
    fn drop(&mut self) {
        // Give the slot back before looking whether the peer's entry is still needed.
        drop(self._permit.take());
        let limits = self.limits.clone();
        let mut inner = limits.lock();
        limits.forget_if_idle(&mut inner, &self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_past_the_limit_are_refused_per_peer_and_kind() {
        let limits = PeerLimits::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let mut ctl: Vec<StreamPermit> = (0..CONTROL_STREAMS_PER_PEER)
            .map(|_| limits.admit_at(a, StreamKind::Control, now).unwrap())
            .collect();
        let refused = limits.admit_at(a, StreamKind::Control, now).unwrap_err();
        assert_eq!(
            refused,
            TooManyStreams {
                peer: a,
                kind: StreamKind::Control,
                open: CONTROL_STREAMS_PER_PEER
            }
        );
        // Another kind, and another peer, have limits of their own.
        let obj: Vec<StreamPermit> = (0..OBJECT_STREAMS_PER_PEER)
            .map(|_| limits.admit_at(a, StreamKind::Object, now).unwrap())
            .collect();
        assert!(limits.admit_at(a, StreamKind::Object, now).is_err());
        let other = limits.admit_at(b, StreamKind::Control, now).unwrap();
        assert_eq!(limits.inbound(a, StreamKind::Control), 2);
        assert_eq!(limits.inbound(b, StreamKind::Control), 1);
        // A stream that ends makes room for one more.
        drop(ctl.pop());
        assert_eq!(limits.inbound(a, StreamKind::Control), 1);
        let again = limits.admit_at(a, StreamKind::Control, now).unwrap();
        // All of a peer's streams are budgeted together.
        assert!(Arc::ptr_eq(&again.budget().bytes, &obj[0].budget().bytes));
        assert!(!Arc::ptr_eq(&again.budget().bytes, &other.budget().bytes));
        assert_eq!(again.budget().total(), PEER_BUFFER_BYTES);
        // Nothing is kept for a peer with nothing open.
        drop((again, obj, other));
        assert_eq!(
            limits.tracked_peers(),
            1,
            "one control stream of a is still open"
        );
        drop(ctl);
        assert_eq!(limits.tracked_peers(), 0);
    }

    #[test]
    fn entries_go_once_nothing_is_in_use() {
        let limits = PeerLimits::default();
        let peer = PeerId::random();
        let permit = limits.admit(peer, StreamKind::Code).unwrap();
        assert_eq!(limits.tracked_peers(), 1);
        drop(permit);
        assert_eq!(limits.tracked_peers(), 0);
        // Refused streams leave nothing behind either (the refusal made an entry).
        let held: Vec<_> = (0..CODE_STREAMS_PER_PEER)
            .map(|_| limits.admit(peer, StreamKind::Code).unwrap())
            .collect();
        assert!(limits.admit(peer, StreamKind::Code).is_err());
        drop(held);
        assert_eq!(limits.tracked_peers(), 0);
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(1));
        for i in 1..100 {
            assert_eq!(r.note(t0 + Duration::from_millis(i)), None);
        }
        // The next line covers the 99 not logged and this one.
        assert_eq!(r.note(t0 + REFUSAL_LOG_INTERVAL), Some(100));
        assert_eq!(r.note(t0 + REFUSAL_LOG_INTERVAL), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_buffer_over_the_peer_budget_waits_for_room() {
        let budget = PeerBudget::new(100);
        let mut a = Held::new(budget.clone());
        let mut b = Held::new(budget.clone());
        a.hold(60).await.unwrap();
        b.hold(40).await.unwrap();
        assert_eq!(budget.available(), 0);
        // b wants 10 more: it waits until a gives some back.
        let mut grow = Box::pin(b.hold(50));
        assert!(futures::poll!(grow.as_mut()).is_pending());
        a.hold(50).await.unwrap();
        grow.await.unwrap();
        assert_eq!((a.bytes(), b.bytes(), budget.available()), (50, 50, 0));
        // Dropped while waiting: nothing more is held.
        let mut c = Held::new(budget.clone());
        assert!(futures::poll!(Box::pin(c.hold(1))).is_pending());
        assert_eq!(c.bytes(), 0);
        // Shrinking and dropping give bytes back.
        b.hold(0).await.unwrap();
        assert_eq!(budget.available(), 50);
        drop(a);
        assert_eq!(budget.available(), 100);
        // More than the whole budget is an error, not a wait forever.
        let e = c.hold(101).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn outbound_streams_to_a_peer_wait_for_a_slot() {
        let limits = PeerLimits::default();
        let peer = PeerId::random();
        let mut slots = Vec::new();
        assert_eq!(StreamKind::Code.max_outbound(), CODE_STREAMS_PER_PEER / 2);
        for _ in 0..StreamKind::Code.max_outbound() {
            slots.push(limits.outbound(peer, StreamKind::Code).await);
        }
        let mut next = Box::pin(limits.outbound(peer, StreamKind::Code));
        assert!(futures::poll!(next.as_mut()).is_pending());
        // Another kind is not held up.
        let obj = limits.outbound(peer, StreamKind::Object).await;
        drop(slots.pop());
        let last = next.await;
        drop((slots, obj, last));
        assert_eq!(limits.tracked_peers(), 0);
    }
}
