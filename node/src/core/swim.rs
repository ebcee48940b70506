//! Membership that scales: SWIM failure detection with Lifeguard's refinements, updates
//! piggybacked on the probes and gossiped, and anti-entropy by bucketed digests, as one pure
//! state machine per peer.
//!
//! Each peer costs every other a bounded amount per second whatever the mesh's size: it
//! probes one member per probe period (a direct ping, then `indirect_probes` helpers asked to
//! ping it), gossips the updates it has to a few members only while it has some, and
//! compares a fixed-size digest of its view with one member per sync period, exchanging the
//! entries of the buckets that differ. The design follows
//! - SWIM (Das, Gupta, Motivala, 2002): randomized round-robin probing, indirect probes,
//!   suspicion, incarnation numbers, infection-style dissemination piggybacked on probes;
//! - Lifeguard (Dadgar, Phillips, Currey, 2017): a local health multiplier that slows a peer
//!   that misses acks and nacks (it is likely the slow one), nacks from helpers, and a
//!   suspicion timeout that starts long and shrinks as independent suspicions confirm it;
//! - memberlist's push-pull, made cheap when views agree: only 64 bucket hashes travel.
//!
//! Nothing here does I/O or reads a clock: [`Swim::handle`] takes a message, [`Swim::tick`]
//! the time, and what is to be sent and what changed are drained with
//! [`Swim::poll_transmit`] and [`Swim::poll_event`] (the shape of quinn-proto). So it runs
//! with virtual time in the simulator (`sim::swim`) at 10,000 peers.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash};
use std::time::{Duration, Instant};

/// Maps with a fixed hasher: the same inputs give the same iteration order, so a simulated
/// run replays exactly. (Its keys are admitted peers' names and sequence numbers; a keyed
/// hash would buy nothing against a peer that grinds names, since the key would be known.)
type Map<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A fast multiply-rotate hash (as rustc's Fx), finished with SplitMix64's mixer so that
/// hashbrown's top bits are well spread.
#[derive(Clone, Copy, Debug, Default)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// Buckets of the anti-entropy digest.
pub const SYNC_BUCKETS: usize = 64;

/// Entries in one [`Message::Entries`] at most (a larger answer is split).
pub const MAX_ENTRIES: usize = 256;

/// A peer's name, as membership needs it: `stable_hash` must be the same on every peer (it
/// places the peer in a digest bucket).
pub trait SwimPeer: Clone + Eq + Hash + Ord + Debug {
    /// A hash of the name that every peer computes alike.
    fn stable_hash(&self) -> u64;
}

impl SwimPeer for u32 {
    fn stable_hash(&self) -> u64 {
        mix(u64::from(*self))
    }
}

/// A peer of a real mesh: the bytes of its libp2p peer id, folded eight at a time.
impl SwimPeer for shoal_protocol::PeerKey {
    fn stable_hash(&self) -> u64 {
        self.as_bytes().chunks(8).fold(0u64, |h, c| {
            let mut word = [0u8; 8];
            word[..c.len()].copy_from_slice(c);
            mix(h ^ u64::from_le_bytes(word))
        })
    }
}

/// A token bucket: at most `per_second` a second, with a burst of as many. Pure: it is
/// told the time.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Rate {
    /// A full bucket at `now`.
    pub fn new(per_second: f64, now: Instant) -> Self {
        Self {
            per_second,
            tokens: per_second,
            at: now,
        }
    }

    /// Whether one more is allowed at `now` (and counts it if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.at = now;
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        allowed
    }
}

/// SplitMix64's finalizer: a well-spread 64-bit hash of a 64-bit value.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The timings and bounds of membership.
#[derive(Clone, Debug, PartialEq)]
pub struct SwimConfig {
    /// One probe per period (times the local health multiplier plus one).
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before helpers are asked (scaled alike).
    pub probe_timeout: Duration,
    /// Helpers asked to ping a member that did not answer.
    pub indirect_probes: usize,
    /// The shortest suspicion lasts `suspicion_alpha · log10(members) · probe_interval`...
    pub suspicion_alpha: f64,
    /// ... and the longest `suspicion_beta` times that, shrinking with each independent
    /// confirmation...
    pub suspicion_beta: f64,
    /// ... down to the shortest after this many.
    pub suspicion_confirmations: u32,
    /// Each update is sent `retransmit_mult · ceil(log10(members + 1))` times.
    pub retransmit_mult: u32,
    /// Updates piggybacked on one probe message at most.
    pub max_piggyback: usize,
    /// Updates in one gossip message at most.
    pub max_gossip: usize,
    /// Updates waiting to be sent at most: past it, the most sent go first (a storm of
    /// joins is then finished by anti-entropy, not by gossip that grows with the mesh).
    pub max_queued: usize,
    /// How often queued updates are gossiped, and to how many members.
    pub gossip_interval: Duration,
    /// Members each gossip round goes to.
    pub gossip_fanout: usize,
    /// How often the view's digest is compared with one member's.
    pub sync_interval: Duration,
    /// Entries a periodic sync answers with at most (whole buckets; at least one).
    pub max_sync_entries: usize,
    /// How long a dead member is remembered (so stale news of it does not bring it back).
    pub dead_retention: Duration,
    /// The local health multiplier's ceiling.
    pub max_local_health: u32,
    /// Answers with more than [`SwimConfig::max_sync_entries`] entries (to a joining peer's
    /// digest, or to a peer that wants whole buckets back) given per second at most, with a
    /// burst of as many: past it such a request is answered as a periodic sync is, so a
    /// small request cannot make this peer send its whole view over and over.
    pub whole_answers_per_second: u32,
    /// Every this many sync periods, the digest goes to a member declared dead (and not yet
    /// forgotten) instead: one that was only cut off answers, learns it was declared dead,
    /// refutes, and is back (so a healed partition heals the views too). 0: never.
    pub reconnect_every: u32,
}

impl Default for SwimConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            indirect_probes: 3,
            suspicion_alpha: 1.5,
            suspicion_beta: 3.0,
            suspicion_confirmations: 3,
            retransmit_mult: 4,
            max_piggyback: 16,
            max_gossip: 64,
            max_queued: 256,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            sync_interval: Duration::from_secs(1),
            max_sync_entries: 512,
            dead_retention: Duration::from_secs(60),
            max_local_health: 8,
            whole_answers_per_second: 20,
            reconnect_every: 5,
        }
    }
}

/// What one peer believes of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Answering.
    Alive,
    /// Did not answer a probe; dead unless it refutes within the suspicion timeout.
    Suspect,
    /// Declared dead after its suspicion ran out.
    Dead,
    /// Left of its own accord.
    Left,
}

impl Health {
    fn is_up(self) -> bool {
        matches!(self, Health::Alive | Health::Suspect)
    }
}

/// News of one member: its health at an incarnation (only the member itself raises its
/// incarnation, to refute a suspicion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update<P> {
    /// Whom it is about.
    pub peer: P,
    /// The member's incarnation it is about.
    pub incarnation: u64,
    /// What is believed.
    pub health: Health,
    /// Who suspects it (for [`Health::Suspect`]: confirmations count distinct suspecters).
    pub by: Option<P>,
}

/// A message between two peers' membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<P> {
    /// Are you there?
    Ping {
        /// Matches the ack.
        seq: u32,
        /// Piggybacked updates.
        updates: Vec<Update<P>>,
    },
    /// Please ping `target` for me.
    PingReq {
        /// The asker's sequence number, for the ack or nack.
        seq: u32,
        /// Whom to ping.
        target: P,
        /// Piggybacked updates.
        updates: Vec<Update<P>>,
    },
    /// Here I am (or, from a helper: the target answered).
    Ack {
        /// The ping's (or ping request's) sequence number.
        seq: u32,
        /// Piggybacked updates.
        updates: Vec<Update<P>>,
    },
    /// A helper's word that the target did not answer it (so the asker's own link works).
    Nack {
        /// The ping request's sequence number.
        seq: u32,
    },
    /// Updates, pushed to a few members while any are queued.
    Gossip {
        /// The updates.
        updates: Vec<Update<P>>,
    },
    /// The sender's view, as [`SYNC_BUCKETS`] hashes.
    Digest {
        /// One hash per bucket.
        buckets: Vec<u64>,
        /// A joining peer's: answered with every entry of every bucket that differs;
        /// otherwise with at most [`SwimConfig::max_sync_entries`].
        join: bool,
    },
    /// The entries of buckets whose hashes differed, and the buckets the sender wants back.
    Entries {
        /// Every member the sender knows in those buckets (dead ones included).
        entries: Vec<Update<P>>,
        /// Buckets whose entries the receiver should send back.
        want: Vec<u16>,
    },
}

impl<P> Message<P> {
    /// The message's size on the wire, roughly, for peer names of `peer_bytes` bytes: a
    /// small header, and each update's name, incarnation and health (and suspecter).
    pub fn wire_bytes(&self, peer_bytes: usize) -> usize {
        let updates = |u: &[Update<P>]| -> usize {
            u.iter()
                .map(|u| peer_bytes + 9 + u.by.as_ref().map_or(1, |_| 1 + peer_bytes))
                .sum()
        };
        8 + match self {
            Message::Ping { updates: u, .. }
            | Message::Ack { updates: u, .. }
            | Message::Gossip { updates: u } => 4 + updates(u),
            Message::PingReq { updates: u, .. } => 4 + peer_bytes + updates(u),
            Message::Nack { .. } => 4,
            Message::Digest { buckets, .. } => 1 + buckets.len() * 8,
            Message::Entries { entries, want } => updates(entries) + want.len() * 2,
        }
    }
}

/// A change of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<P> {
    /// A member joined (or came back with a later incarnation).
    Up(P),
    /// A member is suspected.
    Suspected(P),
    /// A suspected member refuted the suspicion.
    Refuted(P),
    /// A member is dead (its suspicion ran out, here or elsewhere).
    Failed(P),
    /// A member left of its own accord.
    Left(P),
}

#[derive(Clone, Debug)]
struct Member {
    incarnation: u64,
    health: Health,
    bucket: u16,
    hash: u64,
}

impl Member {
    /// Its share of its bucket's digest (none once it is down).
    fn digest(&self) -> u64 {
        if self.health.is_up() {
            mix(self.hash ^ self.incarnation.wrapping_mul(0xa076_1d64_78bd_642f))
        } else {
            0
        }
    }
}

#[derive(Debug)]
struct Suspicion<P> {
    incarnation: u64,
    start: Instant,
    deadline: Instant,
    confirmers: Vec<P>,
}

#[derive(Debug)]
struct Probe<P> {
    target: P,
    seq: u32,
    /// When helpers are asked (the direct ping's timeout).
    indirect_at: Instant,
    /// When the probe is judged.
    end: Instant,
    acked: bool,
    indirect: bool,
    nacks_expected: u32,
    nacks: u32,
}

#[derive(Debug)]
struct Relay<P> {
    asker: P,
    asker_seq: u32,
}

/// Updates waiting to be piggybacked: fewest sends first, newest first among equals; one per
/// member (newer news of a member replaces older).
#[derive(Debug)]
struct Broadcasts<P: Ord> {
    by_peer: Map<P, (u32, u64, Update<P>)>,
    order: BTreeSet<(u32, Reverse<u64>, P)>,
    next: u64,
}

impl<P: SwimPeer> Broadcasts<P> {
    fn new() -> Self {
        Self {
            by_peer: Map::default(),
            order: BTreeSet::new(),
            next: 0,
        }
    }

    fn push(&mut self, update: Update<P>, max: usize) {
        let id = self.next;
        self.next += 1;
        if let Some((sends, old, _)) = self.by_peer.remove(&update.peer) {
            self.order
                .remove(&(sends, Reverse(old), update.peer.clone()));
        }
        self.order.insert((0, Reverse(id), update.peer.clone()));
        self.by_peer.insert(update.peer.clone(), (0, id, update));
        while self.by_peer.len() > max.max(1) {
            let Some((_, _, peer)) = self.order.pop_last() else {
                break;
            };
            self.by_peer.remove(&peer);
        }
    }

    /// Up to `max` updates, each counted as sent once more; dropped after `limit` sends.
    fn take(&mut self, max: usize, limit: u32) -> Vec<Update<P>> {
        let picked: Vec<(u32, Reverse<u64>, P)> = self.order.iter().take(max).cloned().collect();
        let mut out = Vec::with_capacity(picked.len());
        for key in picked {
            self.order.remove(&key);
            let (sends, id, peer) = key;
            let Some(entry) = self.by_peer.get_mut(&peer) else {
                continue;
            };
            out.push(entry.2.clone());
            entry.0 = sends + 1;
            if entry.0 >= limit {
                self.by_peer.remove(&peer);
            } else {
                self.order.insert((sends + 1, id, peer));
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.by_peer.len()
    }
}

/// A small seeded generator (SplitMix64) for the random choices of probing and gossip.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        ((u128::from(mix(self.0)) * n.max(1) as u128) >> 64) as usize
    }
}

/// Counters of what membership sent and saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Probes started.
    pub probes: u64,
    /// Probes that got no ack, direct or indirect.
    pub probes_failed: u64,
    /// Suspicions of this peer it refuted.
    pub refutations: u64,
    /// Digest comparisons that found a difference.
    pub syncs_differed: u64,
}

/// One peer's membership: its view of the mesh and the failure detector.
#[derive(Debug)]
pub struct Swim<P: SwimPeer> {
    me: P,
    config: SwimConfig,
    incarnation: u64,
    left: bool,
    members: Map<P, Member>,
    /// Members that are up (self excluded), in a shuffled order probed round-robin.
    probe_order: Vec<P>,
    probe_next: usize,
    /// Members to probe before the round-robin goes on (the transport lost them).
    probe_first: VecDeque<P>,
    up: usize,
    digest: [u64; SYNC_BUCKETS],
    /// Entries in each bucket, dead ones included.
    bucket_len: [u32; SYNC_BUCKETS],
    suspicions: Map<P, Suspicion<P>>,
    suspicion_timers: BinaryHeap<Reverse<(Instant, P)>>,
    probe: Option<Probe<P>>,
    next_probe: Instant,
    seq: u32,
    relays: Map<u32, Relay<P>>,
    relay_order: VecDeque<(Instant, u32)>,
    next_gossip: Instant,
    next_sync: Instant,
    tombstones: VecDeque<(Instant, P, u64)>,
    broadcasts: Broadcasts<P>,
    local_health: u32,
    /// Set while merging anti-entropy entries: news learnt that way is not gossiped on.
    quiet: bool,
    rng: Rng,
    /// Sync periods since the start.
    syncs: u64,
    /// Answers larger than a sync's.
    whole_answers: Rate,
    transmits: VecDeque<(P, Message<P>)>,
    events: VecDeque<Event<P>>,
    stats: SwimStats,
}

impl<P: SwimPeer> Swim<P> {
    /// `me`'s membership, alone in its view, at `incarnation` (a restarted peer should start
    /// above its previous run's: a start time in seconds does). `seed` fixes its random
    /// choices.
    pub fn new(me: P, incarnation: u64, config: SwimConfig, seed: u64, now: Instant) -> Self {
        let mut rng = Rng(seed ^ me.stable_hash());
        let stagger = |rng: &mut Rng, d: Duration| {
            now + Duration::from_micros(rng.below(d.as_micros().max(1) as usize) as u64)
        };
        let next_probe = stagger(&mut rng, config.probe_interval);
        let next_gossip = stagger(&mut rng, config.gossip_interval);
        let next_sync = stagger(&mut rng, config.sync_interval);
        let whole_answers = Rate::new(f64::from(config.whole_answers_per_second), now);
        let mut swim = Self {
            me: me.clone(),
            config,
            incarnation,
            left: false,
            members: Map::default(),
            probe_order: Vec::new(),
            probe_next: 0,
            probe_first: VecDeque::new(),
            up: 0,
            digest: [0; SYNC_BUCKETS],
            bucket_len: [0; SYNC_BUCKETS],
            suspicions: Map::default(),
            suspicion_timers: BinaryHeap::new(),
            probe: None,
            next_probe,
            seq: 0,
            relays: Map::default(),
            relay_order: VecDeque::new(),
            next_gossip,
            next_sync,
            tombstones: VecDeque::new(),
            broadcasts: Broadcasts::new(),
            local_health: 0,
            quiet: false,
            rng,
            syncs: 0,
            whole_answers,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: SwimStats::default(),
        };
        swim.set(me.clone(), incarnation, Health::Alive);
        swim.spread(swim.self_update());
        swim
    }

    /// This peer.
    pub fn me(&self) -> &P {
        &self.me
    }

    /// This peer's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Members up (alive or suspected), this peer included.
    pub fn up(&self) -> usize {
        self.up
    }

    /// What this peer believes of `peer`.
    pub fn health(&self, peer: &P) -> Option<Health> {
        self.members.get(peer).map(|m| m.health)
    }

    /// The members up, this peer excluded.
    pub fn members_up(&self) -> impl Iterator<Item = &P> {
        self.members
            .iter()
            .filter(|(p, m)| m.health.is_up() && **p != self.me)
            .map(|(p, _)| p)
    }

    /// Up to `n` members up (this peer and those `skip` names excluded), chosen at random,
    /// each once.
    pub fn sample_up(&mut self, n: usize, skip: impl Fn(&P) -> bool) -> Vec<P> {
        // Reservoir sampling: one pass, every member equally likely.
        let mut chosen: Vec<P> = Vec::with_capacity(n);
        if n == 0 {
            return chosen;
        }
        let mut seen = 0usize;
        for (p, m) in self.members.iter() {
            if !m.health.is_up() || *p == self.me || skip(p) {
                continue;
            }
            seen += 1;
            if chosen.len() < n {
                chosen.push(p.clone());
            } else {
                let j = self.rng.below(seen);
                if j < n {
                    chosen[j] = p.clone();
                }
            }
        }
        chosen
    }

    /// Entries remembered, dead ones included (bounded by the mesh's size plus the dead of
    /// the last `dead_retention`).
    pub fn entries(&self) -> usize {
        self.members.len()
    }

    /// Updates waiting to be sent.
    pub fn queued(&self) -> usize {
        self.broadcasts.len()
    }

    /// The local health multiplier: 0 while this peer keeps up, more while it misses acks.
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// Members this peer suspects now.
    pub fn suspected(&self) -> usize {
        self.suspicions.len()
    }

    /// Counters.
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(P, Message<P>)> {
        self.transmits.pop_front()
    }

    /// The next change of the view.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// Joins through `seeds`: compares digests with them, so they send this peer their view
    /// and learn of it.
    pub fn join(&mut self, seeds: &[P]) {
        let me = self.me.clone();
        for seed in seeds.iter().filter(|s| **s != me) {
            self.send(
                seed.clone(),
                Message::Digest {
                    buckets: self.digest.to_vec(),
                    join: true,
                },
            );
        }
    }

    /// The transport's word that `peer` may be gone (its last connection closed, as when its
    /// process is killed): it is the next member probed, and the next probe starts now
    /// unless one is under way. Only a probe decides: a peer that answers stays.
    pub fn probe_soon(&mut self, now: Instant, peer: &P) {
        if *peer == self.me
            || !self.members.get(peer).is_some_and(|m| m.health.is_up())
            || self.probe_first.contains(peer)
            || self.probe.as_ref().is_some_and(|p| p.target == *peer)
        {
            return;
        }
        // Bounded: a transport that loses many peers at once probes them in turn.
        if self.probe_first.len() >= 64 {
            return;
        }
        self.probe_first.push_back(peer.clone());
        if self.probe.is_none() {
            self.next_probe = self.next_probe.min(now);
        }
    }

    /// Leaves: tells a few members, who spread it.
    pub fn leave(&mut self) {
        self.left = true;
        let update = Update {
            peer: self.me.clone(),
            incarnation: self.incarnation,
            health: Health::Left,
            by: None,
        };
        self.spread(update.clone());
        let targets = self.random_members(self.config.gossip_fanout.max(1), None);
        for t in targets {
            self.send(
                t,
                Message::Gossip {
                    updates: vec![update.clone()],
                },
            );
        }
    }

    /// When [`Swim::tick`] next has work.
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.next_probe.min(self.next_gossip).min(self.next_sync);
        if let Some(p) = &self.probe {
            if !p.indirect && !p.acked {
                at = at.min(p.indirect_at);
            }
            at = at.min(p.end);
        }
        if let Some((t, _)) = self.relay_order.front() {
            at = at.min(*t);
        }
        if let Some(Reverse((t, _))) = self.suspicion_timers.peek() {
            at = at.min(*t);
        }
        at
    }

    /// Does what is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.expire_suspicions(now);
        self.expire_relays(now);
        self.probe_step(now);
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip();
        }
        if now >= self.next_sync {
            self.next_sync = now + self.config.sync_interval;
            self.expire_tombstones(now);
            self.syncs += 1;
            let every = u64::from(self.config.reconnect_every);
            let reconnect = every > 0 && self.syncs.is_multiple_of(every);
            let target = match reconnect.then(|| self.random_dead()).flatten() {
                Some(dead) => Some(dead),
                None => self.random_members(1, None).pop(),
            };
            if let Some(peer) = target {
                self.send(
                    peer,
                    Message::Digest {
                        buckets: self.digest.to_vec(),
                        join: false,
                    },
                );
            }
        }
    }

    /// Takes in a message from `from` (whom the transport authenticated).
    pub fn handle(&mut self, now: Instant, from: P, message: Message<P>) {
        if self.left {
            return;
        }
        match message {
            Message::Ping { seq, updates } => {
                self.apply_all(now, updates);
                let updates = self.piggyback();
                self.send(from, Message::Ack { seq, updates });
            }
            Message::PingReq {
                seq,
                target,
                updates,
            } => {
                self.apply_all(now, updates);
                let own = self.next_seq();
                let timeout = self.scaled(self.config.probe_timeout).mul_f64(0.8);
                self.relays.insert(
                    own,
                    Relay {
                        asker: from,
                        asker_seq: seq,
                    },
                );
                self.relay_order.push_back((now + timeout, own));
                let updates = self.piggyback();
                self.send(target, Message::Ping { seq: own, updates });
            }
            Message::Ack { seq, updates } => {
                self.apply_all(now, updates);
                self.acked(seq);
            }
            Message::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Message::Gossip { updates } => self.apply_all(now, updates),
            Message::Digest { buckets, join } => {
                if buckets.len() != SYNC_BUCKETS {
                    return;
                }
                // From a random bucket on, so that bounded answers cover every bucket in
                // turn; a periodic sync's answer is bounded, a join's is the whole view.
                let first = self.rng.below(SYNC_BUCKETS);
                let room = if join && self.whole_answers.allow(now) {
                    usize::MAX
                } else {
                    self.config.max_sync_entries
                };
                let differ = self.fitting(
                    (0..SYNC_BUCKETS)
                        .map(|i| (first + i) % SYNC_BUCKETS)
                        .filter(|&b| buckets[b] != self.digest[b])
                        .map(|b| b as u16),
                    room,
                );
                if !differ.is_empty() {
                    self.stats.syncs_differed += 1;
                    self.send_entries(&from, &differ, differ.clone());
                }
            }
            Message::Entries { entries, want } => {
                for u in entries {
                    // What the sender says of itself is news to pass on; the rest spread
                    // by anti-entropy already.
                    self.quiet = u.peer != from;
                    self.apply(now, u);
                }
                self.quiet = false;
                let mut want: Vec<u16> = want
                    .into_iter()
                    .filter(|b| usize::from(*b) < SYNC_BUCKETS)
                    .collect();
                want.sort_unstable();
                want.dedup();
                let len: usize = want
                    .iter()
                    .map(|b| self.bucket_len[usize::from(*b)] as usize)
                    .sum();
                if len > self.config.max_sync_entries && !self.whole_answers.allow(now) {
                    // Over the rate of whole answers: as many buckets as a sync answer holds.
                    want = self.fitting(want, self.config.max_sync_entries);
                }
                if !want.is_empty() {
                    self.send_entries(&from, &want, Vec::new());
                }
            }
        }
    }

    /// Of `buckets`, in order, those whose entries fit `room` (the first always).
    fn fitting(&self, buckets: impl IntoIterator<Item = u16>, mut room: usize) -> Vec<u16> {
        let mut kept = Vec::new();
        for b in buckets {
            let len = self.bucket_len[usize::from(b)] as usize;
            if !kept.is_empty() && len > room {
                break;
            }
            room = room.saturating_sub(len);
            kept.push(b);
        }
        kept
    }

    fn send(&mut self, to: P, message: Message<P>) {
        self.transmits.push_back((to, message));
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.local_health + 1)
    }

    fn self_update(&self) -> Update<P> {
        Update {
            peer: self.me.clone(),
            incarnation: self.incarnation,
            health: Health::Alive,
            by: None,
        }
    }

    /// How many times each update is sent.
    fn retransmit_limit(&self) -> u32 {
        let n = (self.up + 1) as f64;
        self.config.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    /// Queues `u` to be gossiped, unless it was learnt by anti-entropy.
    fn spread(&mut self, u: Update<P>) {
        if !self.quiet || u.peer == self.me {
            self.broadcasts.push(u, self.config.max_queued);
        }
    }

    fn piggyback(&mut self) -> Vec<Update<P>> {
        let limit = self.retransmit_limit();
        self.broadcasts.take(self.config.max_piggyback, limit)
    }

    fn health_up(&mut self) {
        self.local_health = (self.local_health + 1).min(self.config.max_local_health);
    }

    fn health_down(&mut self) {
        self.local_health = self.local_health.saturating_sub(1);
    }

    /// Records `peer` at `incarnation` and `health`, keeping the digest, the probe order and
    /// the count of members up in step.
    fn set(&mut self, peer: P, incarnation: u64, health: Health) {
        let hash = peer.stable_hash();
        let bucket = (hash % SYNC_BUCKETS as u64) as u16;
        let new = Member {
            incarnation,
            health,
            bucket,
            hash,
        };
        let was_up = match self.members.get(&peer) {
            Some(old) => {
                self.digest[usize::from(bucket)] ^= old.digest();
                old.health.is_up()
            }
            None => {
                self.bucket_len[usize::from(bucket)] += 1;
                false
            }
        };
        self.digest[usize::from(bucket)] ^= new.digest();
        if health.is_up() && !was_up {
            self.up += 1;
            if peer != self.me {
                // At a random place in the order, so a new member is probed within a round.
                let at = self.rng.below(self.probe_order.len() + 1);
                self.probe_order.push(peer.clone());
                let last = self.probe_order.len() - 1;
                self.probe_order.swap(at, last);
            }
        } else if !health.is_up() && was_up {
            self.up -= 1;
            // Left in the probe order; skipped there and dropped at the end of the round.
        }
        self.members.insert(peer, new);
    }

    fn apply_all(&mut self, now: Instant, updates: Vec<Update<P>>) {
        for u in updates {
            self.apply(now, u);
        }
    }

    /// Merges one update into the view (SWIM's rules: a higher incarnation wins; at equal
    /// ones, dead beats suspect beats alive).
    fn apply(&mut self, now: Instant, u: Update<P>) {
        if u.peer == self.me {
            self.about_me(u);
            return;
        }
        let current = self.members.get(&u.peer).map(|m| (m.incarnation, m.health));
        match (u.health, current) {
            (Health::Alive, None) => {
                self.set(u.peer.clone(), u.incarnation, Health::Alive);
                self.events.push_back(Event::Up(u.peer.clone()));
                self.spread(u);
            }
            (Health::Alive, Some((inc, health))) if u.incarnation > inc => {
                self.set(u.peer.clone(), u.incarnation, Health::Alive);
                match health {
                    Health::Suspect => {
                        self.suspicions.remove(&u.peer);
                        self.events.push_back(Event::Refuted(u.peer.clone()));
                    }
                    Health::Dead | Health::Left => {
                        self.events.push_back(Event::Up(u.peer.clone()));
                    }
                    Health::Alive => {}
                }
                self.spread(u);
            }
            (Health::Alive, Some(_)) => {}
            (Health::Suspect, None) => {
                // Known elsewhere, doubted there: up here too, with a suspicion of our own.
                self.set(u.peer.clone(), u.incarnation, Health::Suspect);
                self.events.push_back(Event::Up(u.peer.clone()));
                self.suspect(now, u);
            }
            (Health::Suspect, Some((inc, Health::Alive))) if u.incarnation >= inc => {
                self.set(u.peer.clone(), u.incarnation, Health::Suspect);
                self.suspect(now, u);
            }
            (Health::Suspect, Some((inc, Health::Suspect))) if u.incarnation > inc => {
                self.set(u.peer.clone(), u.incarnation, Health::Suspect);
                self.suspect(now, u);
            }
            (Health::Suspect, Some((inc, Health::Suspect))) if u.incarnation == inc => {
                self.confirm(u);
            }
            (Health::Suspect, Some(_)) => {}
            (Health::Dead | Health::Left, None) => {
                // Never known here: remembered, so stale news does not bring it in.
                self.set(u.peer.clone(), u.incarnation, u.health);
                self.tombstones.push_back((now, u.peer, u.incarnation));
            }
            (Health::Dead | Health::Left, Some((inc, health)))
                if health.is_up() && u.incarnation >= inc =>
            {
                self.down(now, u);
            }
            (Health::Dead | Health::Left, Some(_)) => {}
        }
    }

    /// News of this peer: a suspicion or a death at its incarnation or later is refuted with
    /// a higher one.
    fn about_me(&mut self, u: Update<P>) {
        let refute = match u.health {
            Health::Suspect | Health::Dead | Health::Left => u.incarnation >= self.incarnation,
            Health::Alive => u.incarnation > self.incarnation,
        };
        if refute {
            if u.health == Health::Suspect {
                // Suspected: likely this peer is the slow one (Lifeguard).
                self.health_up();
            }
            self.stats.refutations += 1;
            self.incarnation = u.incarnation + 1;
            self.set(self.me.clone(), self.incarnation, Health::Alive);
            self.spread(self.self_update());
        }
    }

    fn suspicion_bounds(&self) -> (Duration, Duration) {
        let n = self.up.max(1) as f64;
        let min = self
            .config
            .probe_interval
            .mul_f64(self.config.suspicion_alpha * n.log10().max(1.0));
        (min, min.mul_f64(self.config.suspicion_beta.max(1.0)))
    }

    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let (min, max) = self.suspicion_bounds();
        let k = f64::from(self.config.suspicion_confirmations.max(1));
        let frac = ((confirmations as f64) + 1.0).ln() / (k + 1.0).ln();
        let shrink = (max - min).mul_f64(frac.min(1.0));
        (max - shrink).max(min)
    }

    fn suspect(&mut self, now: Instant, u: Update<P>) {
        let deadline = now + self.suspicion_timeout(0);
        self.suspicions.insert(
            u.peer.clone(),
            Suspicion {
                incarnation: u.incarnation,
                start: now,
                deadline,
                confirmers: u.by.iter().cloned().collect(),
            },
        );
        self.suspicion_timers
            .push(Reverse((deadline, u.peer.clone())));
        self.events.push_back(Event::Suspected(u.peer.clone()));
        self.spread(u);
    }

    fn confirm(&mut self, u: Update<P>) {
        let Some(by) = u.by.clone() else { return };
        let k = self.config.suspicion_confirmations as usize;
        let Some(s) = self.suspicions.get_mut(&u.peer) else {
            return;
        };
        if s.confirmers.contains(&by) || s.confirmers.len() > k {
            return;
        }
        s.confirmers.push(by);
        let confirmations = s.confirmers.len().saturating_sub(1);
        let start = s.start;
        let deadline = start + self.suspicion_timeout(confirmations);
        if let Some(s) = self.suspicions.get_mut(&u.peer) {
            if deadline < s.deadline {
                s.deadline = deadline;
                self.suspicion_timers
                    .push(Reverse((deadline, u.peer.clone())));
            }
        }
        // Passed on, so that others count it too.
        self.spread(u);
    }

    fn down(&mut self, now: Instant, u: Update<P>) {
        self.suspicions.remove(&u.peer);
        self.set(u.peer.clone(), u.incarnation, u.health);
        self.tombstones
            .push_back((now, u.peer.clone(), u.incarnation));
        self.events.push_back(match u.health {
            Health::Left => Event::Left(u.peer.clone()),
            _ => Event::Failed(u.peer.clone()),
        });
        self.spread(u);
    }

    fn expire_suspicions(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.suspicion_timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, peer))) = self.suspicion_timers.pop() else {
                break;
            };
            let Some(s) = self.suspicions.get(&peer) else {
                continue;
            };
            if s.deadline != at {
                continue;
            }
            let incarnation = s.incarnation;
            self.down(
                now,
                Update {
                    peer,
                    incarnation,
                    health: Health::Dead,
                    by: None,
                },
            );
        }
    }

    fn expire_relays(&mut self, now: Instant) {
        while let Some((at, seq)) = self.relay_order.front().copied() {
            if at > now {
                break;
            }
            self.relay_order.pop_front();
            if let Some(r) = self.relays.remove(&seq) {
                self.send(r.asker, Message::Nack { seq: r.asker_seq });
            }
        }
    }

    /// A member declared dead (not one that left), at random.
    fn random_dead(&mut self) -> Option<P> {
        if self.tombstones.is_empty() {
            return None;
        }
        let (_, peer, inc) = &self.tombstones[self.rng.below(self.tombstones.len())];
        self.members
            .get(peer)
            .is_some_and(|m| m.health == Health::Dead && m.incarnation == *inc)
            .then(|| peer.clone())
    }

    fn expire_tombstones(&mut self, now: Instant) {
        while let Some((at, peer, inc)) = self.tombstones.front() {
            if now.saturating_duration_since(*at) < self.config.dead_retention {
                break;
            }
            let (peer, inc) = (peer.clone(), *inc);
            self.tombstones.pop_front();
            if self
                .members
                .get(&peer)
                .is_some_and(|m| !m.health.is_up() && m.incarnation == inc)
            {
                if let Some(m) = self.members.remove(&peer) {
                    self.bucket_len[usize::from(m.bucket)] -= 1;
                }
            }
        }
    }

    fn acked(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
            p.acked = true;
            return;
        }
        if let Some(r) = self.relays.remove(&seq) {
            let updates = self.piggyback();
            self.send(
                r.asker,
                Message::Ack {
                    seq: r.asker_seq,
                    updates,
                },
            );
        }
    }

    /// Judges the probe under way when its time is up, asks helpers when its ping timed out,
    /// and starts the next probe.
    fn probe_step(&mut self, now: Instant) {
        if let Some(p) = self.probe.as_mut() {
            if !p.acked && !p.indirect && now >= p.indirect_at {
                p.indirect = true;
                let (target, seq) = (p.target.clone(), p.seq);
                let helpers = self.random_members(self.config.indirect_probes, Some(&target));
                if let Some(p) = self.probe.as_mut() {
                    p.nacks_expected = helpers.len() as u32;
                }
                for h in helpers {
                    let updates = self.piggyback();
                    self.send(
                        h,
                        Message::PingReq {
                            seq,
                            target: target.clone(),
                            updates,
                        },
                    );
                }
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.end) {
            if let Some(p) = self.probe.take() {
                self.judge(now, p);
            }
        }
        if self.probe.is_none() && now >= self.next_probe {
            let period = self.scaled(self.config.probe_interval);
            self.next_probe = now + period;
            if let Some(target) = self.next_target() {
                self.stats.probes += 1;
                let seq = self.next_seq();
                self.probe = Some(Probe {
                    target: target.clone(),
                    seq,
                    indirect_at: now + self.scaled(self.config.probe_timeout),
                    end: now + period,
                    acked: false,
                    indirect: false,
                    nacks_expected: 0,
                    nacks: 0,
                });
                let mut updates = self.piggyback();
                // Lifeguard's buddy system: a suspected member hears of it from its prober
                // first, so it refutes at once.
                if let Some(m) = self.members.get(&target) {
                    if m.health == Health::Suspect {
                        updates.insert(
                            0,
                            Update {
                                peer: target.clone(),
                                incarnation: m.incarnation,
                                health: Health::Suspect,
                                by: Some(self.me.clone()),
                            },
                        );
                    }
                }
                self.send(target, Message::Ping { seq, updates });
            }
        }
    }

    fn judge(&mut self, now: Instant, p: Probe<P>) {
        if p.acked {
            self.health_down();
            return;
        }
        self.stats.probes_failed += 1;
        // Helpers that did not even nack: this peer's own link is the likely fault.
        if p.nacks < p.nacks_expected || p.nacks_expected == 0 {
            self.health_up();
        }
        let Some(m) = self.members.get(&p.target) else {
            return;
        };
        if !m.health.is_up() {
            return;
        }
        // Suspected already: this peer's failed probe confirms it.
        let u = Update {
            peer: p.target,
            incarnation: m.incarnation,
            health: Health::Suspect,
            by: Some(self.me.clone()),
        };
        self.apply(now, u);
    }

    /// The next member up in the round-robin order; the order is reshuffled (without the
    /// members down) at the end of each round.
    fn next_target(&mut self) -> Option<P> {
        while let Some(p) = self.probe_first.pop_front() {
            if self.members.get(&p).is_some_and(|m| m.health.is_up()) {
                return Some(p);
            }
        }
        for _ in 0..2 {
            while self.probe_next < self.probe_order.len() {
                let p = self.probe_order[self.probe_next].clone();
                self.probe_next += 1;
                if self.members.get(&p).is_some_and(|m| m.health.is_up()) {
                    return Some(p);
                }
            }
            let members = &self.members;
            self.probe_order
                .retain(|p| members.get(p).is_some_and(|m| m.health.is_up()));
            for i in (1..self.probe_order.len()).rev() {
                let j = self.rng.below(i + 1);
                self.probe_order.swap(i, j);
            }
            self.probe_next = 0;
            if self.probe_order.is_empty() {
                return None;
            }
        }
        None
    }

    /// Up to `n` distinct random members up, not `except`.
    fn random_members(&mut self, n: usize, except: Option<&P>) -> Vec<P> {
        let len = self.probe_order.len();
        let mut out: Vec<P> = Vec::with_capacity(n);
        if len == 0 {
            return out;
        }
        for _ in 0..(n * 4).max(8) {
            if out.len() >= n {
                break;
            }
            let p = &self.probe_order[self.rng.below(len)];
            if Some(p) == except
                || out.contains(p)
                || !self.members.get(p).is_some_and(|m| m.health.is_up())
            {
                continue;
            }
            out.push(p.clone());
        }
        out
    }

    fn gossip(&mut self) {
        if self.broadcasts.len() == 0 {
            return;
        }
        let limit = self.retransmit_limit();
        for t in self.random_members(self.config.gossip_fanout, None) {
            let updates = self.broadcasts.take(self.config.max_gossip, limit);
            if updates.is_empty() {
                break;
            }
            self.send(t, Message::Gossip { updates });
        }
    }

    /// Sends `to` every entry in `buckets`, split into messages of [`MAX_ENTRIES`], asking
    /// for `want` back in the first.
    fn send_entries(&mut self, to: &P, buckets: &[u16], want: Vec<u16>) {
        let mut mask = [false; SYNC_BUCKETS];
        for b in buckets {
            mask[usize::from(*b)] = true;
        }
        let mut out: Vec<Message<P>> = Vec::new();
        let mut chunk: Vec<Update<P>> = Vec::new();
        let mut want = Some(want);
        for (p, m) in self
            .members
            .iter()
            .filter(|(_, m)| mask[usize::from(m.bucket)])
        {
            chunk.push(Update {
                peer: p.clone(),
                incarnation: m.incarnation,
                health: m.health,
                by: (m.health == Health::Suspect).then(|| self.me.clone()),
            });
            if chunk.len() == MAX_ENTRIES {
                out.push(Message::Entries {
                    entries: std::mem::take(&mut chunk),
                    want: want.take().unwrap_or_default(),
                });
            }
        }
        let want = want.unwrap_or_default();
        if !chunk.is_empty() || !want.is_empty() {
            out.push(Message::Entries {
                entries: chunk,
                want,
            });
        }
        for m in out {
            self.send(to.clone(), m);
        }
    }
}

#[cfg(test)]
mod tests;
