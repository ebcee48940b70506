//! A deterministic simulator of membership alone ([`crate::core::swim`]) at thousands of
//! peers: one [`Swim`] per peer on one virtual clock, messages with random latency and loss,
//! crashes, and slow peers (whose messages take longer). One seed fixes every choice.
//!
//! It keeps, for every peer, how many live peers count it up, from the events they report,
//! so whether every view agrees with the truth is known at any moment without comparing
//! views.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::core::swim::{Event, Message, Swim, SwimConfig};

use super::Rng;

/// Bytes of a libp2p peer id (an Ed25519 key's identity multihash), for message sizes.
pub const PEER_ID_BYTES: usize = 38;

/// How a simulated mesh's membership behaves.
#[derive(Clone, Debug)]
pub struct SwimSimConfig {
    /// Peers.
    pub peers: usize,
    /// One-way latency of a message: between these bounds.
    pub latency: (Duration, Duration),
    /// The chance that a message is lost.
    pub loss: f64,
    /// Each peer's membership settings.
    pub swim: SwimConfig,
    /// Peers `0..seeds` are the ones others join through.
    pub seeds: usize,
    /// Peers join one after the other over this long.
    pub join_over: Duration,
}

impl Default for SwimSimConfig {
    fn default() -> Self {
        Self {
            peers: 100,
            latency: (Duration::from_micros(200), Duration::from_millis(5)),
            loss: 0.0,
            swim: SwimConfig::default(),
            seeds: 3,
            join_over: Duration::from_secs(1),
        }
    }
}

enum Ev {
    Deliver {
        to: u32,
        from: u32,
        message: Message<u32>,
    },
    Wake(u32),
    Join(u32),
    /// Peer `to`'s connection to `lost` closed.
    Closed {
        to: u32,
        lost: u32,
    },
}

/// The simulated mesh.
pub struct SwimSim {
    config: SwimSimConfig,
    start: Instant,
    now: Instant,
    rng: Rng,
    peers: Vec<Option<Swim<u32>>>,
    joined: Vec<bool>,
    /// Extra delay of each peer's outgoing messages (a slow or congested peer).
    slow: Vec<Duration>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    events: Vec<Option<Ev>>,
    free: Vec<usize>,
    seq: u64,
    wakes: Vec<Option<Instant>>,
    /// For each peer: how many live peers count it up (itself excluded).
    counted: Vec<i64>,
    /// Live peers.
    live: usize,
    /// Bytes each peer sent and received.
    bytes: Vec<u64>,
    /// Messages delivered and their bytes, by kind (see [`kind`]).
    kinds: [(u64, u64); 7],
    /// `Failed` events about peers that had not crashed.
    false_deaths: u64,
    /// `Suspected` events about each peer.
    suspected: Vec<u64>,
    /// When each peer crashed, and when a peer first declared it dead.
    crashed_at: Vec<Option<(Instant, Option<Instant>)>>,
}

impl SwimSim {
    /// A mesh whose peers join over `config.join_over`, each through the seeds.
    pub fn new(seed: u64, config: SwimSimConfig) -> Self {
        let n = config.peers;
        let start = Instant::now();
        let mut sim = Self {
            start,
            now: start,
            rng: Rng::new(seed),
            peers: (0..n)
                .map(|i| {
                    Some(Swim::new(
                        i as u32,
                        1,
                        config.swim.clone(),
                        seed ^ 0x5157,
                        start,
                    ))
                })
                .collect(),
            joined: vec![false; n],
            slow: vec![Duration::ZERO; n],
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            seq: 0,
            wakes: vec![None; n],
            counted: vec![0; n],
            live: n,
            bytes: vec![0; n],
            kinds: [(0, 0); 7],
            false_deaths: 0,
            suspected: vec![0; n],
            crashed_at: vec![None; n],
            config,
        };
        for i in 0..n {
            let at = start + sim.config.join_over.mul_f64(i as f64 / n.max(1) as f64);
            sim.push(at, Ev::Join(i as u32));
        }
        sim
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Peer `i`'s membership (`None` once crashed).
    pub fn peer(&self, i: usize) -> Option<&Swim<u32>> {
        self.peers[i].as_ref()
    }

    /// Bytes peer `i` sent and received so far.
    pub fn bytes(&self, i: usize) -> u64 {
        self.bytes[i]
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.kinds.iter().map(|(n, _)| n).sum()
    }

    /// Messages delivered and their bytes so far, by kind: ping, ping request, ack, nack,
    /// gossip, digest, entries.
    pub fn kinds(&self) -> [(u64, u64); 7] {
        self.kinds
    }

    /// Times a live peer was declared dead by some peer.
    pub fn false_deaths(&self) -> u64 {
        self.false_deaths
    }

    /// Times peer `i` was suspected by some peer.
    pub fn suspected(&self, i: usize) -> u64 {
        self.suspected[i]
    }

    /// The longest time from a crash to the first peer that declared the crashed peer dead
    /// (`None` while one is not declared dead anywhere).
    pub fn first_detection(&self) -> Option<Duration> {
        let mut longest = Duration::ZERO;
        for (crashed, first) in self.crashed_at.iter().flatten() {
            longest = longest.max((*first)? - *crashed);
        }
        Some(longest)
    }

    /// Makes peer `i`'s messages take `extra` longer.
    pub fn slow_down(&mut self, i: usize, extra: Duration) {
        self.slow[i] = extra;
    }

    /// Kills peer `i` as SIGKILL does: it sends and answers nothing from now on, and the
    /// peers connected to it (its 4 neighbours either side on a ring: a bounded set) see
    /// their connections close a millisecond later and probe it at once.
    pub fn kill(&mut self, i: usize) {
        self.crash(i);
        let n = self.peers.len();
        let at = self.now + Duration::from_millis(1);
        for d in 1..=4 {
            for j in [(i + d) % n, (i + n - d) % n] {
                if j != i {
                    self.push(
                        at,
                        Ev::Closed {
                            to: j as u32,
                            lost: i as u32,
                        },
                    );
                }
            }
        }
    }

    /// Crashes peer `i` silently (power lost, or cut off): it sends and answers nothing from
    /// now on, and nobody is told.
    pub fn crash(&mut self, i: usize) {
        if let Some(p) = self.peers[i].take() {
            self.crashed_at[i] = Some((self.now, None));
            self.live -= 1;
            for m in p.members_up() {
                self.counted[*m as usize] -= 1;
            }
        }
    }

    /// Whether every live peer counts every other live peer up and every crashed one down.
    pub fn converged(&self) -> bool {
        self.miscounted() == 0
    }

    /// Live peers whose view lacks a live peer or holds a crashed one, roughly: the peers
    /// not counted right.
    pub fn miscounted(&self) -> usize {
        let want = self.live as i64 - 1;
        (0..self.peers.len())
            .filter(|&i| {
                if self.peers[i].is_some() {
                    self.counted[i] != want
                } else {
                    self.counted[i] != 0
                }
            })
            .count()
    }

    /// Runs until `at` (virtual time since the start).
    pub fn run_until(&mut self, at: Duration) {
        let end = self.start + at;
        while let Some(Reverse((t, _, _))) = self.queue.peek() {
            if *t > end {
                break;
            }
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Runs until the views agree with the truth, checking every `every`; the virtual time
    /// it took from now, or `None` after `limit`.
    pub fn run_until_converged(&mut self, every: Duration, limit: Duration) -> Option<Duration> {
        let from = self.now;
        let end = self.elapsed() + limit;
        loop {
            if self.converged() {
                return Some(self.now - from);
            }
            if self.elapsed() >= end {
                return None;
            }
            let next = self.elapsed() + every;
            self.run_until(next);
        }
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.events[s] = Some(ev);
                s
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn step(&mut self) {
        let Some(Reverse((at, _, slot))) = self.queue.pop() else {
            return;
        };
        self.now = at;
        let Some(ev) = self.events[slot].take() else {
            return;
        };
        self.free.push(slot);
        let now = self.now;
        let i = match ev {
            Ev::Join(i) => {
                // One seed, at random: a joiner gets the whole view from it.
                let seeds = self.config.seeds.min(i as usize) as u64;
                let seeds: Vec<u32> = if seeds == 0 {
                    Vec::new()
                } else {
                    vec![self.rng.below(seeds) as u32]
                };
                let Some(p) = self.peers[i as usize].as_mut() else {
                    return;
                };
                p.join(&seeds);
                self.joined[i as usize] = true;
                i
            }
            Ev::Wake(i) => {
                if self.wakes[i as usize] != Some(at) {
                    return;
                }
                self.wakes[i as usize] = None;
                let Some(p) = self.peers[i as usize].as_mut() else {
                    return;
                };
                p.tick(now);
                i
            }
            Ev::Closed { to, lost } => {
                let Some(p) = self.peers[to as usize].as_mut() else {
                    return;
                };
                p.probe_soon(now, &lost);
                to
            }
            Ev::Deliver { to, from, message } => {
                let Some(p) = self.peers[to as usize].as_mut() else {
                    return;
                };
                let bytes = message.wire_bytes(PEER_ID_BYTES) as u64;
                self.bytes[to as usize] += bytes;
                let k = &mut self.kinds[kind(&message)];
                k.0 += 1;
                k.1 += bytes;
                p.handle(now, from, message);
                to
            }
        };
        self.after(i);
    }

    /// Collects what peer `i` did: its events, its messages, its next wake.
    fn after(&mut self, i: u32) {
        let iu = i as usize;
        let Some(p) = self.peers[iu].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = p.poll_transmit() {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = p.poll_event() {
            events.push(e);
        }
        let deadline = p.next_deadline().max(self.now);
        for e in events {
            match e {
                Event::Up(q) => self.counted[q as usize] += 1,
                Event::Failed(q) => {
                    self.counted[q as usize] -= 1;
                    if let Some((_, first @ None)) = self.crashed_at[q as usize].as_mut() {
                        *first = Some(self.now);
                    }
                    if self.peers[q as usize].is_some() {
                        self.false_deaths += 1;
                    }
                }
                Event::Left(q) => self.counted[q as usize] -= 1,
                Event::Suspected(q) => self.suspected[q as usize] += 1,
                Event::Refuted(_) => {}
            }
        }
        for (to, message) in out {
            self.bytes[iu] += message.wire_bytes(PEER_ID_BYTES) as u64;
            if self.rng.chance(self.config.loss) {
                continue;
            }
            let (lo, hi) = self.config.latency;
            let span = (hi - lo).as_nanos() as u64;
            let latency = lo + Duration::from_nanos(self.rng.below(span.max(1))) + self.slow[iu];
            let at = self.now + latency;
            self.push(
                at,
                Ev::Deliver {
                    to,
                    from: i,
                    message,
                },
            );
        }
        // Peers wake only once they joined.
        if self.joined[iu] && self.wakes[iu].is_none_or(|w| deadline < w) {
            self.wakes[iu] = Some(deadline);
            self.push(deadline, Ev::Wake(i));
        }
    }
}

/// A message's kind, as an index into [`SwimSim::kinds`].
fn kind(m: &Message<u32>) -> usize {
    match m {
        Message::Ping { .. } => 0,
        Message::PingReq { .. } => 1,
        Message::Ack { .. } => 2,
        Message::Nack { .. } => 3,
        Message::Gossip { .. } => 4,
        Message::Digest { .. } => 5,
        Message::Entries { .. } => 6,
    }
}
