//! Membership over the swarm: the core's [`Swim`] (SWIM with Lifeguard, a pure state machine)
//! driven by the network task, its messages on `/shoal/<mesh>/swim/1`, one
//! [`SwimWire`] per stream.
//!
//! SWIM is a datagram protocol: it survives lost messages by design (a missed ack is a
//! suspicion, refuted or confirmed by the next probes). So a message that cannot go out at
//! once is lost, as a datagram would be, and counted ([`SwimCounters`]):
//! - a send past [`SENDS_IN_FLIGHT`] is not started;
//! - a send that cannot open its stream (dialling the peer if needed) or write within
//!   [`SEND_TIMEOUT`] fails;
//! - a received message the network task has no room for ([`INBOX`]) is dropped, and so is
//!   one from a peer over its rate ([`PEER_RATE`] a second).
//!
//! Admission: every stream comes over a connection both ends admitted (see
//! [`super::admission`]), so the sender of a message is a member; what it says of others is
//! news about names, and only a probe that is answered (over an admitted connection)
//! keeps a member up. A message that breaks the wire's bounds
//! ([`SwimWire::validate`]) or names a peer id that is not one disconnects its sender, as
//! any malformed frame does.
//!
//! Loads: in a mesh that samples loads, each ping and ack carries its sender's own load
//! report, and a peer about to spill asks a few members for theirs ([`SwimWire::LoadAsk`],
//! answered by [`SwimWire::Load`]). Loads travel only first hand: the network task checks
//! that a report is its sender's ([`LoadReport::validate`]).
//!
//! Addresses: members are probed whether or not a connection to them is open, so updates
//! carry where the member listens. Addresses a peer gave of itself (identify, over an
//! admitted connection) are kept first; those learnt from others only fill gaps. The book
//! is bounded ([`BOOK`]).

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, Future};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use shoal_protocol::frame::{self, HEADER_LEN};
use shoal_protocol::mesh::LoadReport;
use shoal_protocol::swim::{
    SwimHealth, SwimUpdate, SwimWire, MAX_SWIM_ADDR, MAX_SWIM_ADDRS, MAX_SWIM_BYTES,
};
use shoal_protocol::{MembershipStatus, PeerKey};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::framed;
use super::limits::{PeerLimits, StreamKind};
use super::tasks::{self, Tasks};
use crate::core::swim::{Event, Health, Message, Rate, Swim, SwimConfig, Update, SYNC_BUCKETS};

/// Messages being sent at once at most; past it a message is lost (and counted).
pub const SENDS_IN_FLIGHT: usize = 256;
/// How long one send may take: opening the stream (dialling the peer if needed) and writing.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer may take to write its message once its stream is open.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Received messages waiting for the network task at most.
pub const INBOX: usize = 1024;
/// Members whose addresses are remembered at most.
pub const BOOK: usize = 16 * 1024;
/// Messages one peer may send per second (and as many at once).
pub const PEER_RATE: f64 = 200.0;
/// A refused or dropped message is logged at most once per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the transport of membership counted (shared with its send and read tasks).
#[derive(Debug, Default)]
pub struct SwimCounters {
    /// Messages written.
    pub sent: AtomicU64,
    /// Bytes of the messages written (frames).
    pub bytes_out: AtomicU64,
    /// Messages whose send failed (no stream, a write error, or the timeout).
    pub send_failed: AtomicU64,
    /// Messages not sent: too many sends under way.
    pub send_dropped: AtomicU64,
    /// Messages read and handed on.
    pub received: AtomicU64,
    /// Bytes of the messages read (frames).
    pub bytes_in: AtomicU64,
    /// Messages read but dropped: the network task's inbox was full, or the peer over its
    /// rate.
    pub recv_dropped: AtomicU64,
}

impl SwimCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a peer's membership message was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwimNetError {
    /// It names a peer id that is not one.
    #[error("a malformed peer id in a membership message")]
    PeerId,
    /// A digest of the wrong size.
    #[error("a digest of {0} buckets (expected {SYNC_BUCKETS})")]
    Digest(usize),
    /// A message of the loads' exchange where membership was expected.
    #[error("not a membership message")]
    NotMembership,
}

/// Where a member listens.
#[derive(Clone, Debug)]
struct Addrs {
    addrs: Vec<Multiaddr>,
    /// Given by the member itself (identify): not replaced by what others say.
    own: bool,
}

/// The membership of one node and its transport.
pub(crate) struct SwimNet {
    swim: Swim<PeerKey>,
    me: PeerId,
    own_addrs: Vec<Multiaddr>,
    book: lru::LruCache<PeerKey, Addrs>,
    rates: lru::LruCache<PeerId, Rate>,
    control: libp2p_stream::Control,
    protocol: StreamProtocol,
    sends: Arc<Semaphore>,
    counters: Arc<SwimCounters>,
    tasks: Tasks,
    last_refusal_log: Option<Instant>,
    /// This node's load report, piggybacked on its pings and acks and sent when asked
    /// (`None`: loads are not sampled, or none is known yet).
    own_load: Option<Box<LoadReport>>,
    /// Messages of the loads' exchange waiting to go out.
    extra: std::collections::VecDeque<(PeerId, SwimWire)>,
}

/// What a membership message brought besides membership.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// The sender's load report (to be checked as the sender's).
    pub(crate) load: Option<Box<LoadReport>>,
}

fn key(peer: &PeerId) -> PeerKey {
    // A libp2p peer id is at most 44 bytes (an inlined key of at most 42, or a sha-256
    // multihash of 34; an ed25519 one is 38): it always fits.
    PeerKey::from_bytes(&peer.to_bytes()).expect("a peer id fits a PeerKey")
}

fn peer_id(key: &PeerKey) -> Option<PeerId> {
    PeerId::from_bytes(key.as_bytes()).ok()
}

fn parse_peer(bytes: &[u8]) -> Result<PeerKey, SwimNetError> {
    PeerId::from_bytes(bytes).map_err(|_| SwimNetError::PeerId)?;
    PeerKey::from_bytes(bytes).ok_or(SwimNetError::PeerId)
}

fn health_to_wire(h: Health) -> SwimHealth {
    match h {
        Health::Alive => SwimHealth::Alive,
        Health::Suspect => SwimHealth::Suspect,
        Health::Dead => SwimHealth::Dead,
        Health::Left => SwimHealth::Left,
    }
}

fn health_from_wire(h: SwimHealth) -> Health {
    match h {
        SwimHealth::Alive => Health::Alive,
        SwimHealth::Suspect => Health::Suspect,
        SwimHealth::Dead => Health::Dead,
        SwimHealth::Left => Health::Left,
    }
}

impl SwimNet {
    /// `me`'s membership at `incarnation` (its start time: a restart comes back above its
    /// last run), speaking `protocol` over `control`.
    pub(crate) fn new(
        me: PeerId,
        incarnation: u64,
        config: SwimConfig,
        control: libp2p_stream::Control,
        protocol: StreamProtocol,
        tasks: Tasks,
        now: Instant,
    ) -> Self {
        let seed = rand_seed();
        Self {
            swim: Swim::new(key(&me), incarnation, config, seed, now),
            me,
            own_addrs: Vec::new(),
            book: lru::LruCache::new(NonZeroUsize::new(BOOK).expect("not zero")),
            rates: lru::LruCache::new(NonZeroUsize::new(BOOK).expect("not zero")),
            control,
            protocol,
            sends: Arc::new(Semaphore::new(SENDS_IN_FLIGHT)),
            counters: Arc::default(),
            tasks,
            last_refusal_log: None,
            own_load: None,
            extra: std::collections::VecDeque::new(),
        }
    }

    /// This node's current load (loads are sampled: it goes with pings, acks and answers).
    pub(crate) fn set_load(&mut self, report: LoadReport) {
        self.own_load = Some(Box::new(report));
    }

    /// Asks up to `count` members up, at random (not those in `skip`), and each of `also`,
    /// for their loads. Says how many were asked.
    pub(crate) fn ask_loads(&mut self, count: usize, skip: &[PeerKey], also: &[PeerId]) -> usize {
        let mut asked: Vec<PeerId> = self
            .swim
            .sample_up(count, |p| skip.binary_search(p).is_ok())
            .iter()
            .filter_map(peer_id)
            .collect();
        for p in also {
            if *p != self.me && !asked.contains(p) && !self.is_down(p) {
                asked.push(*p);
            }
        }
        for p in &asked {
            self.extra.push_back((*p, SwimWire::LoadAsk));
        }
        asked.len()
    }

    /// The counters of the transport, for the read tasks.
    pub(crate) fn counters(&self) -> Arc<SwimCounters> {
        self.counters.clone()
    }

    /// Where this node listens (sent with the news of itself).
    pub(crate) fn set_own_addrs(&mut self, addrs: Vec<Multiaddr>) {
        self.own_addrs = addrs;
    }

    /// Where `peer` says it listens (identify, over an admitted connection).
    pub(crate) fn peer_addrs(&mut self, peer: &PeerId, addrs: &[Multiaddr]) {
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| a.len() <= MAX_SWIM_ADDR)
            .take(MAX_SWIM_ADDRS)
            .cloned()
            .collect();
        if !addrs.is_empty() {
            self.book.put(key(peer), Addrs { addrs, own: true });
        }
    }

    /// The addresses known for `peer`.
    pub(crate) fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.book
            .peek(&key(peer))
            .map(|a| a.addrs.clone())
            .unwrap_or_default()
    }

    /// Joins through `peer` (a new connection to a member this view does not count up).
    pub(crate) fn join_through(&mut self, peer: &PeerId) {
        let k = key(peer);
        if !self.swim.health(&k).is_some_and(|h| h == Health::Alive) {
            self.swim.join(&[k]);
        }
    }

    /// The transport's word that `peer`'s last connection closed.
    pub(crate) fn connection_lost(&mut self, now: Instant, peer: &PeerId) {
        self.swim.probe_soon(now, &key(peer));
    }

    /// The other members up in this view.
    pub(crate) fn members_up(&self) -> Vec<PeerId> {
        self.swim.members_up().filter_map(peer_id).collect()
    }

    /// Whether no other member is up in this view.
    pub(crate) fn alone(&self) -> bool {
        self.swim.up() <= 1
    }

    /// Resolves once no send is under way (every permit is back).
    pub(crate) fn sent_all(&self) -> impl Future<Output = ()> + 'static {
        let sends = self.sends.clone();
        async move {
            match sends.acquire_many(SENDS_IN_FLIGHT as u32).await {
                Ok(permits) => drop(permits),
                Err(_) => tracing::debug!("the sends' semaphore is closed"),
            }
        }
    }

    /// Whether `peer` is down (dead or left) in this view; unknown peers are not.
    pub(crate) fn is_down(&self, peer: &PeerId) -> bool {
        self.swim
            .health(&key(peer))
            .is_some_and(|h| matches!(h, Health::Dead | Health::Left))
    }

    /// Leaves the mesh (the node is stopping): tells a few members.
    pub(crate) fn leave(&mut self) {
        self.swim.leave();
    }

    /// When [`SwimNet::tick`] is next due.
    pub(crate) fn next_deadline(&self) -> Instant {
        self.swim.next_deadline()
    }

    /// Does what is due.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.swim.tick(now);
    }

    /// Takes in a message `from` a connected member; `Err` if it is malformed (the caller
    /// disconnects the sender).
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        from: PeerId,
        wire: SwimWire,
    ) -> Result<Received, SwimNetError> {
        if !self.within_rate(&from, now) {
            SwimCounters::add(&self.counters.recv_dropped, 1);
            self.log_refusal(
                now,
                || tracing::warn!(peer = %from, "membership messages over the peer's rate dropped"),
            );
            return Ok(Received::default());
        }
        let (wire, load) = match wire {
            SwimWire::LoadAsk => {
                match &self.own_load {
                    Some(report) => self.extra.push_back((
                        from,
                        SwimWire::Load {
                            report: report.clone(),
                        },
                    )),
                    None => {
                        tracing::debug!(peer = %from, "asked for a load this node does not share")
                    }
                }
                return Ok(Received::default());
            }
            SwimWire::Load { report } => return Ok(Received { load: Some(report) }),
            SwimWire::Ping { seq, updates, load } => (
                SwimWire::Ping {
                    seq,
                    updates,
                    load: None,
                },
                load,
            ),
            SwimWire::Ack { seq, updates, load } => (
                SwimWire::Ack {
                    seq,
                    updates,
                    load: None,
                },
                load,
            ),
            other => (other, None),
        };
        let message = self.decode_wire(wire)?;
        self.swim.handle(now, key(&from), message);
        Ok(Received { load })
    }

    /// The changes of the view since the last call.
    pub(crate) fn events(&mut self) -> Vec<(PeerId, Event<PeerKey>)> {
        std::iter::from_fn(|| self.swim.poll_event())
            .filter_map(|ev| {
                let (Event::Up(p)
                | Event::Suspected(p)
                | Event::Refuted(p)
                | Event::Failed(p)
                | Event::Left(p)) = &ev;
                peer_id(p).map(|id| (id, ev))
            })
            .collect()
    }

    /// Sends what membership has to send. A peer that is not connected is dialled first,
    /// at the addresses known for it (`dial(peer, addrs)`).
    pub(crate) fn flush(&mut self, mut dial: impl FnMut(PeerId, Vec<Multiaddr>)) {
        loop {
            let (peer, wire) = if let Some((to, message)) = self.swim.poll_transmit() {
                // Names from the wire were checked to be peer ids when they came in.
                let Some(peer) = peer_id(&to).filter(|p| *p != self.me) else {
                    tracing::debug!(?to, "a membership message to no valid other peer");
                    SwimCounters::add(&self.counters.send_failed, 1);
                    continue;
                };
                (peer, self.encode_wire(message))
            } else if let Some(extra) = self.extra.pop_front() {
                extra
            } else {
                break;
            };
            let kind = wire.kind();
            let frame = match framed::encode(&wire, MAX_SWIM_BYTES) {
                Ok(f) => f,
                Err(e) => {
                    // Bounded by construction (at most MAX_ENTRIES updates, short names):
                    // this is a bug, and the message is lost like any other.
                    tracing::error!(%peer, kind, error = %e, "a membership message not encodable");
                    SwimCounters::add(&self.counters.send_failed, 1);
                    continue;
                }
            };
            let Ok(permit) = self.sends.clone().try_acquire_owned() else {
                SwimCounters::add(&self.counters.send_dropped, 1);
                let now = Instant::now();
                self.log_refusal(now, || {
                    tracing::warn!(
                        in_flight = SENDS_IN_FLIGHT,
                        "membership messages dropped: too many sends under way"
                    )
                });
                continue;
            };
            dial(peer, self.addrs_of(&peer));
            let send = send(
                self.control.clone(),
                self.protocol.clone(),
                peer,
                frame,
                self.counters.clone(),
            );
            self.tasks.spawn(
                async move {
                    send.await;
                    drop(permit);
                }
                .instrument(tracing::debug_span!("swim-out", %peer, kind)),
            );
        }
    }

    /// Membership's figures.
    pub(crate) fn status(&self) -> MembershipStatus {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stats = self.swim.stats();
        MembershipStatus {
            members_up: self.swim.up() as u64,
            entries: self.swim.entries() as u64,
            suspected: self.swim.suspected() as u64,
            incarnation: self.swim.incarnation(),
            local_health: self.swim.local_health(),
            queued: self.swim.queued() as u64,
            probes: stats.probes,
            probes_failed: stats.probes_failed,
            sent: get(&c.sent),
            bytes_out: get(&c.bytes_out),
            received: get(&c.received),
            bytes_in: get(&c.bytes_in),
            lost: get(&c.send_failed) + get(&c.send_dropped) + get(&c.recv_dropped),
        }
    }

    /// Whether a message from `peer` at `now` is within its rate (one is counted if so).
    fn within_rate(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.rates
            .get_or_insert_mut(*peer, || Rate::new(PEER_RATE, now))
            .allow(now)
    }

    fn log_refusal(&mut self, now: Instant, log: impl FnOnce()) {
        if self
            .last_refusal_log
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
        {
            self.last_refusal_log = Some(now);
            log();
        }
    }

    fn addrs_bytes(addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
        addrs
            .iter()
            .map(|a| a.to_vec())
            .filter(|a| !a.is_empty() && a.len() <= MAX_SWIM_ADDR)
            .take(MAX_SWIM_ADDRS)
            .collect()
    }

    fn update_to_wire(&self, u: Update<PeerKey>) -> SwimUpdate {
        let addrs = if matches!(u.health, Health::Alive | Health::Suspect) {
            if u.peer == *self.swim.me() {
                Self::addrs_bytes(&self.own_addrs)
            } else {
                self.book
                    .peek(&u.peer)
                    .map(|a| Self::addrs_bytes(&a.addrs))
                    .unwrap_or_default()
            }
        } else {
            Vec::new()
        };
        SwimUpdate {
            peer: u.peer.to_vec(),
            incarnation: u.incarnation,
            health: health_to_wire(u.health),
            by: u.by.map(|b| b.to_vec()),
            addrs,
        }
    }

    fn encode_wire(&self, m: Message<PeerKey>) -> SwimWire {
        let updates = |us: Vec<Update<PeerKey>>| -> Vec<SwimUpdate> {
            us.into_iter().map(|u| self.update_to_wire(u)).collect()
        };
        match m {
            Message::Ping { seq, updates: u } => SwimWire::Ping {
                seq,
                updates: updates(u),
                load: self.own_load.clone(),
            },
            Message::PingReq {
                seq,
                target,
                updates: u,
            } => SwimWire::PingReq {
                seq,
                target_addrs: self
                    .book
                    .peek(&target)
                    .map(|a| Self::addrs_bytes(&a.addrs))
                    .unwrap_or_default(),
                target: target.to_vec(),
                updates: updates(u),
            },
            Message::Ack { seq, updates: u } => SwimWire::Ack {
                seq,
                updates: updates(u),
                load: self.own_load.clone(),
            },
            Message::Nack { seq } => SwimWire::Nack { seq },
            Message::Gossip { updates: u } => SwimWire::Gossip {
                updates: updates(u),
            },
            Message::Digest { buckets, join } => SwimWire::Digest { buckets, join },
            Message::Entries { entries, want } => SwimWire::Entries {
                entries: updates(entries),
                want,
            },
        }
    }

    /// Learns where `peer` listens from another member, unless the peer said so itself.
    fn hint(&mut self, peer: PeerKey, addrs: &[Vec<u8>]) {
        if addrs.is_empty() || peer == *self.swim.me() {
            return;
        }
        if self.book.peek(&peer).is_some_and(|a| a.own) {
            return;
        }
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .filter_map(|b| Multiaddr::try_from(b.clone()).ok())
            .collect();
        if !addrs.is_empty() {
            self.book.put(peer, Addrs { addrs, own: false });
        }
    }

    fn update_from_wire(&mut self, u: SwimUpdate) -> Result<Update<PeerKey>, SwimNetError> {
        let peer = parse_peer(&u.peer)?;
        let by = u.by.as_deref().map(parse_peer).transpose()?;
        let health = health_from_wire(u.health);
        if matches!(health, Health::Alive | Health::Suspect) {
            self.hint(peer, &u.addrs);
        }
        Ok(Update {
            peer,
            incarnation: u.incarnation,
            health,
            by,
        })
    }

    fn decode_wire(&mut self, w: SwimWire) -> Result<Message<PeerKey>, SwimNetError> {
        let mut updates = |us: Vec<SwimUpdate>| -> Result<Vec<Update<PeerKey>>, SwimNetError> {
            us.into_iter().map(|u| self.update_from_wire(u)).collect()
        };
        Ok(match w {
            SwimWire::Ping {
                seq, updates: u, ..
            } => Message::Ping {
                seq,
                updates: updates(u)?,
            },
            SwimWire::PingReq {
                seq,
                target,
                target_addrs,
                updates: u,
            } => {
                let u = updates(u)?;
                let target = parse_peer(&target)?;
                self.hint(target, &target_addrs);
                Message::PingReq {
                    seq,
                    target,
                    updates: u,
                }
            }
            SwimWire::Ack {
                seq, updates: u, ..
            } => Message::Ack {
                seq,
                updates: updates(u)?,
            },
            SwimWire::Nack { seq } => Message::Nack { seq },
            SwimWire::Gossip { updates: u } => Message::Gossip {
                updates: updates(u)?,
            },
            SwimWire::Digest { buckets, join } => {
                if buckets.len() != SYNC_BUCKETS {
                    return Err(SwimNetError::Digest(buckets.len()));
                }
                Message::Digest { buckets, join }
            }
            SwimWire::Entries { entries, want } => Message::Entries {
                entries: updates(entries)?,
                want,
            },
            // Taken apart by `handle`.
            SwimWire::LoadAsk | SwimWire::Load { .. } => return Err(SwimNetError::NotMembership),
        })
    }
}

/// A seed for membership's random choices, different in every process.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Sends one message on a stream of its own.
async fn send(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    peer: PeerId,
    frame: Vec<u8>,
    counters: Arc<SwimCounters>,
) {
    let len = frame.len() as u64;
    let written = tokio::time::timeout(SEND_TIMEOUT, async {
        let mut stream = control
            .open_stream(peer, protocol)
            .await
            .map_err(io::Error::other)?;
        stream.write_all(&frame).await?;
        stream.close().await
    })
    .await
    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "send timed out")));
    match written {
        Ok(()) => {
            SwimCounters::add(&counters.sent, 1);
            SwimCounters::add(&counters.bytes_out, len);
        }
        Err(e) => {
            SwimCounters::add(&counters.send_failed, 1);
            tracing::debug!(%peer, error = %e, "a membership message was not sent (SWIM takes it as lost)");
        }
    }
}

/// Reads the membership messages peers send (one per stream) and hands them to the network
/// task through `inbox`. A peer whose message is malformed or breaks the wire's bounds is
/// reported to `bad` (and disconnected by the network task).
pub(crate) async fn accept(
    incoming: libp2p_stream::IncomingStreams,
    inbox: mpsc::Sender<(PeerId, SwimWire)>,
    bad: mpsc::Sender<PeerId>,
    counters: Arc<SwimCounters>,
    limits: PeerLimits,
    stop: CancellationToken,
) {
    tasks::serve_streams(
        incoming,
        stop,
        limits,
        StreamKind::Swim,
        move |peer, stream, permit| {
            let (inbox, bad, counters) = (inbox.clone(), bad.clone(), counters.clone());
            async move {
                let mut stream = stream;
                // The sender closes its side after its one frame: read to the end, bounded.
                let mut buf = Vec::new();
                let limit = (HEADER_LEN + MAX_SWIM_BYTES + 1) as u64;
                let read = tokio::time::timeout(
                    READ_TIMEOUT,
                    (&mut stream).take(limit).read_to_end(&mut buf),
                )
                .await;
                drop(permit);
                match read {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "a membership stream ended early");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "a membership stream sent nothing in time");
                        return;
                    }
                }
                let wire = match frame::decode_frame::<SwimWire>(&buf, MAX_SWIM_BYTES) {
                    Ok(Some((w, used))) if used == buf.len() => w,
                    Ok(Some(_)) => {
                        tracing::warn!(%peer, "bytes after a membership message");
                        report_bad(&bad, peer);
                        return;
                    }
                    Ok(None) => {
                        tracing::debug!(%peer, bytes = buf.len(), "a membership stream ended inside its message");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "a malformed membership message");
                        report_bad(&bad, peer);
                        return;
                    }
                };
                if let Err(e) = wire.validate() {
                    tracing::warn!(%peer, error = %e, "a membership message out of bounds");
                    report_bad(&bad, peer);
                    return;
                }
                SwimCounters::add(&counters.received, 1);
                SwimCounters::add(&counters.bytes_in, buf.len() as u64);
                if inbox.try_send((peer, wire)).is_err() {
                    SwimCounters::add(&counters.recv_dropped, 1);
                    tracing::debug!(%peer, "a membership message dropped: the network task is behind (SWIM takes it as lost)");
                }
            }
            .instrument(tracing::debug_span!("swim-in", %peer))
        },
    )
    .await;
}

fn report_bad(bad: &mpsc::Sender<PeerId>, peer: PeerId) {
    if bad.try_send(peer).is_err() {
        tracing::warn!(%peer, "too many peers to disconnect at once; this one stays connected for now");
    }
}
