//! Membership with plain values: a handful of peers wired by hand, on made-up instants.
//! The simulator (`sim::swim`, `tests/swim_sim.rs`) runs it at 1,000 and 10,000 peers.

use super::*;

fn config() -> SwimConfig {
    SwimConfig::default()
}

/// Peers `0..n` and a list of messages in flight, delivered by hand.
struct Net {
    now: Instant,
    peers: Vec<Swim<u32>>,
    /// Peers whose messages are lost (both ways).
    cut: Vec<u32>,
    /// Peers on one side of a partition: messages across it are lost.
    side: Option<Vec<u32>>,
    sent: u64,
}

impl Net {
    fn new(n: u32) -> Self {
        let now = Instant::now();
        let peers = (0..n).map(|i| Swim::new(i, 1, config(), 7, now)).collect();
        Self {
            now,
            peers,
            cut: Vec::new(),
            side: None,
            sent: 0,
        }
    }

    /// Peers `0..n`, all joined through peer 0, after `settle` of running.
    fn joined(n: u32, settle: Duration) -> Self {
        let mut net = Self::new(n);
        for i in 1..n as usize {
            net.peers[i].join(&[0]);
        }
        net.run(settle);
        net
    }

    /// Delivers every message until none is left (no latency).
    fn flush(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.peers.len() {
                while let Some((to, m)) = self.peers[i].poll_transmit() {
                    moved = true;
                    self.sent += 1;
                    if self.cut.contains(&(i as u32)) || self.cut.contains(&to) {
                        continue;
                    }
                    if let Some(side) = &self.side {
                        if side.contains(&(i as u32)) != side.contains(&to) {
                            continue;
                        }
                    }
                    let now = self.now;
                    self.peers[to as usize].handle(now, i as u32, m);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Advances the clock by `d` in steps of 10 ms, ticking and delivering.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for (i, p) in self.peers.iter_mut().enumerate() {
                if !self.cut.contains(&(i as u32)) {
                    p.tick(now);
                }
            }
            self.flush();
        }
    }

    fn events(&mut self, i: usize) -> Vec<Event<u32>> {
        std::iter::from_fn(|| self.peers[i].poll_event()).collect()
    }
}

#[test]
fn peers_joining_through_one_seed_learn_of_each_other() {
    let mut net = Net::new(5);
    for i in 1..5 {
        net.peers[i].join(&[0]);
    }
    net.flush();
    // The seed learnt of all at once; the others learn of each other by gossip and sync.
    assert_eq!(net.peers[0].up(), 5);
    net.run(Duration::from_secs(3));
    for (i, p) in net.peers.iter().enumerate() {
        assert_eq!(p.up(), 5, "peer {i} sees {} of 5", p.up());
    }
    let ups: Vec<_> = net
        .events(3)
        .into_iter()
        .filter(|e| matches!(e, Event::Up(_)))
        .collect();
    assert_eq!(ups.len(), 4, "peer 3 saw every other come up once: {ups:?}");
}

#[test]
fn a_silent_peer_is_suspected_then_declared_dead_by_all_and_a_live_one_is_not() {
    let mut net = Net::joined(6, Duration::from_secs(3));
    for i in 0..6 {
        net.events(i);
    }
    net.cut.push(5);
    let (min, max) = net.peers[0].suspicion_bounds();
    assert!(min < max);
    // Probed within a round of its members; then the suspicion runs out.
    net.run(Duration::from_secs(2) + max);
    for i in 0..5 {
        assert_eq!(net.peers[i].health(&5), Some(Health::Dead), "peer {i}");
        assert_eq!(net.peers[i].up(), 5, "peer {i}");
        let ev = net.events(i);
        assert!(ev.contains(&Event::Failed(5)), "peer {i}: {ev:?}");
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Failed(p) if *p != 5)),
            "peer {i} wrote off a live peer: {ev:?}"
        );
    }
}

#[test]
fn a_suspicion_is_refuted_with_a_higher_incarnation() {
    let mut net = Net::joined(3, Duration::from_secs(2));
    let before = net.peers[2].incarnation();
    // Peer 0 suspects peer 2 (as after a probe it missed).
    let now = net.now;
    net.peers[0].apply(
        now,
        Update {
            peer: 2,
            incarnation: before,
            health: Health::Suspect,
            by: Some(0),
        },
    );
    assert_eq!(net.peers[0].health(&2), Some(Health::Suspect));
    net.run(Duration::from_secs(1));
    assert_eq!(net.peers[2].incarnation(), before + 1);
    assert_eq!(net.peers[2].stats().refutations, 1);
    for i in 0..2 {
        assert_eq!(net.peers[i].health(&2), Some(Health::Alive), "peer {i}");
    }
    assert!(net.events(0).contains(&Event::Refuted(2)));
}

#[test]
fn news_at_a_lower_incarnation_changes_nothing_and_dead_beats_alive_at_equal_ones() {
    let now = Instant::now();
    let mut s = Swim::new(0u32, 1, config(), 1, now);
    let up = |inc| Update {
        peer: 9,
        incarnation: inc,
        health: Health::Alive,
        by: None,
    };
    s.apply(now, up(5));
    s.apply(
        now,
        Update {
            peer: 9,
            incarnation: 4,
            health: Health::Dead,
            by: None,
        },
    );
    assert_eq!(s.health(&9), Some(Health::Alive));
    s.apply(
        now,
        Update {
            peer: 9,
            incarnation: 5,
            health: Health::Dead,
            by: None,
        },
    );
    assert_eq!(s.health(&9), Some(Health::Dead));
    s.apply(now, up(5));
    assert_eq!(
        s.health(&9),
        Some(Health::Dead),
        "stale alive news revived it"
    );
    s.apply(now, up(6));
    assert_eq!(
        s.health(&9),
        Some(Health::Alive),
        "a later incarnation is back"
    );
    let ev: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(ev, vec![Event::Up(9), Event::Failed(9), Event::Up(9)]);
}

#[test]
fn confirmations_from_distinct_suspecters_shorten_the_suspicion_to_its_least() {
    let now = Instant::now();
    let mut s = Swim::new(0u32, 1, config(), 1, now);
    for p in 1..=20u32 {
        s.apply(
            now,
            Update {
                peer: p,
                incarnation: 1,
                health: Health::Alive,
                by: None,
            },
        );
    }
    let (min, max) = s.suspicion_bounds();
    assert_eq!(s.suspicion_timeout(0), max);
    assert_eq!(s.suspicion_timeout(3), min);
    assert!(s.suspicion_timeout(1) < max && s.suspicion_timeout(1) > min);
    let suspect = |by| Update {
        peer: 7,
        incarnation: 1,
        health: Health::Suspect,
        by: Some(by),
    };
    s.apply(now, suspect(1));
    // The same suspecter twice counts once.
    s.apply(now, suspect(1));
    s.tick(now + min);
    assert_eq!(s.health(&7), Some(Health::Suspect));
    for by in 2..=4 {
        s.apply(now, suspect(by));
    }
    s.tick(now + min);
    assert_eq!(s.health(&7), Some(Health::Dead));
}

#[test]
fn each_update_is_sent_a_bounded_number_of_times_then_dropped() {
    let now = Instant::now();
    let mut s = Swim::new(0u32, 1, config(), 1, now);
    s.apply(
        now,
        Update {
            peer: 3,
            incarnation: 1,
            health: Health::Alive,
            by: None,
        },
    );
    let limit = s.retransmit_limit();
    let mut sends = 0;
    while !s.piggyback().is_empty() {
        sends += 1;
        assert!(sends <= limit, "still sent after {limit} sends");
    }
    assert_eq!(sends, limit);
    assert_eq!(s.queued(), 0);
}

#[test]
fn equal_digests_cost_one_small_message_and_a_difference_only_its_buckets() {
    let mut net = Net::joined(4, Duration::from_secs(4));
    let now = net.now;
    let digest = Message::Digest {
        buckets: net.peers[1].digest.to_vec(),
        join: false,
    };
    net.peers[0].handle(now, 1, digest);
    assert!(
        net.peers[0].poll_transmit().is_none(),
        "equal views answer nothing"
    );
    // Peer 1 learns of a new member: their digests differ in its bucket only.
    net.peers[1].apply(
        now,
        Update {
            peer: 77,
            incarnation: 1,
            health: Health::Alive,
            by: None,
        },
    );
    let digest = Message::Digest {
        buckets: net.peers[1].digest.to_vec(),
        join: false,
    };
    net.peers[0].handle(now, 1, digest);
    let (to, m) = net.peers[0].poll_transmit().expect("an answer");
    assert_eq!(to, 1);
    let Message::Entries { entries, want } = m else {
        panic!("not entries: {m:?}")
    };
    let bucket = (77u32.stable_hash() % SYNC_BUCKETS as u64) as u16;
    assert_eq!(want, vec![bucket]);
    assert!(entries
        .iter()
        .all(|e| (e.peer.stable_hash() % SYNC_BUCKETS as u64) as u16 == bucket));
    net.peers[1].handle(now, 0, Message::Entries { entries, want });
    net.flush();
    assert_eq!(net.peers[0].health(&77), Some(Health::Alive));
    assert_eq!(net.peers[0].digest, net.peers[1].digest);
}

#[test]
fn a_peer_that_left_is_left_everywhere_and_not_refuted() {
    let mut net = Net::joined(4, Duration::from_secs(3));
    for i in 0..4 {
        net.events(i);
    }
    net.peers[3].leave();
    net.run(Duration::from_secs(3));
    for i in 0..3 {
        assert_eq!(net.peers[i].health(&3), Some(Health::Left), "peer {i}");
        assert_eq!(net.events(i), vec![Event::Left(3)], "peer {i}");
    }
}

#[test]
fn a_restarted_peer_refutes_its_own_tombstone_and_is_back() {
    let mut net = Net::joined(3, Duration::from_secs(2));
    net.cut.push(2);
    let (_, max) = net.peers[0].suspicion_bounds();
    net.run(Duration::from_secs(2) + max);
    assert_eq!(net.peers[0].health(&2), Some(Health::Dead));
    // It restarts with the same name and a fresh state at its old incarnation.
    net.cut.clear();
    let now = net.now;
    net.peers[2] = Swim::new(2, 1, config(), 9, now);
    net.peers[2].join(&[0]);
    net.run(Duration::from_secs(3));
    for i in 0..2 {
        assert_eq!(net.peers[i].health(&2), Some(Health::Alive), "peer {i}");
    }
    assert!(net.peers[2].incarnation() > 1);
}

#[test]
fn a_hint_from_the_transport_probes_that_peer_next_and_only_the_probe_decides() {
    let mut net = Net::joined(5, Duration::from_secs(3));
    // Peer 3 (alive) may be gone, says the transport: the next probe peer 0 starts, within a
    // probe period, is of peer 3.
    let now = net.now;
    net.peers[0].probe_soon(now, &3);
    let probes = net.peers[0].stats().probes;
    let mut first = None;
    for _ in 0..60 {
        net.now += Duration::from_millis(10);
        let now = net.now;
        net.peers[0].tick(now);
        let started = net.peers[0].stats().probes > probes;
        let pings: Vec<u32> = std::iter::from_fn(|| net.peers[0].poll_transmit())
            .filter(|(_, m)| matches!(m, Message::Ping { .. }))
            .map(|(to, _)| to)
            .collect();
        if started {
            first = pings.first().copied();
            break;
        }
    }
    assert_eq!(first, Some(3), "the hinted peer is probed next");
    net.run(Duration::from_secs(2));
    assert_eq!(net.peers[0].health(&3), Some(Health::Alive));
}

#[test]
fn whole_view_answers_are_rate_limited_and_past_the_rate_bounded_like_a_sync() {
    // A view of 2,000 members (more than a sync answer's 512), learnt by hand.
    let now = Instant::now();
    let mut big = Swim::new(0u32, 1, config(), 7, now);
    let entries: Vec<Update<u32>> = (1..2000)
        .map(|p| Update {
            peer: p,
            incarnation: 1,
            health: Health::Alive,
            by: None,
        })
        .collect();
    for chunk in entries.chunks(MAX_ENTRIES) {
        big.handle(
            now,
            1,
            Message::Entries {
                entries: chunk.to_vec(),
                want: Vec::new(),
            },
        );
    }
    assert_eq!(big.entries(), 2000);
    while big.poll_transmit().is_some() {}
    let empty = Swim::new(5000u32, 1, config(), 7, now);
    let asked = |big: &mut Swim<u32>, join: bool, want_all: bool| -> usize {
        let m = if want_all {
            Message::Entries {
                entries: Vec::new(),
                want: (0..SYNC_BUCKETS as u16).collect(),
            }
        } else {
            Message::Digest {
                buckets: empty.digest.to_vec(),
                join,
            }
        };
        big.handle(now, 5000, m);
        std::iter::from_fn(|| big.poll_transmit())
            .map(|(_, m)| match m {
                Message::Entries { entries, .. } => entries.len(),
                _ => 0,
            })
            .sum()
    };
    let rate = config().whole_answers_per_second as usize;
    // The burst: whole views, to joins and to wants alike.
    for i in 0..rate {
        assert_eq!(asked(&mut big, true, i % 2 == 0), 2000, "answer {i}");
    }
    // Past it, within the same instant: bounded as a sync's answer is.
    let bounded = asked(&mut big, true, false);
    assert!(bounded > 0 && bounded <= 512 + 64, "{bounded}");
    let bounded = asked(&mut big, false, true);
    assert!(bounded > 0 && bounded <= 512 + 64, "{bounded}");
    // A periodic sync is never more than that, whatever the rate.
    assert!(asked(&mut big, false, false) <= 512 + 64);
}

#[test]
fn a_healed_partition_heals_the_views_without_a_new_join() {
    let mut net = Net::joined(6, Duration::from_secs(3));
    assert!((0..6).all(|i| net.peers[i].up() == 6));
    // Peers 4 and 5 are cut off from the rest (they still hear each other): each side
    // declares the other dead.
    net.side = Some(vec![4, 5]);
    net.run(Duration::from_secs(15));
    for i in 0..4 {
        assert_eq!(net.peers[i].up(), 4, "peer {i}");
        assert_eq!(net.peers[i].health(&4), Some(Health::Dead));
    }
    for i in 4..6 {
        assert_eq!(net.peers[i].up(), 2, "peer {i}");
    }
    // The cut heals. Nobody joins again: the digests sent now and then to members declared
    // dead find them, they refute, and every view is whole again.
    net.side = None;
    net.run(Duration::from_secs(20));
    for i in 0..6 {
        assert_eq!(net.peers[i].up(), 6, "peer {i}");
    }
}

#[test]
fn a_sample_of_members_up_is_random_distinct_and_leaves_out_this_peer_and_the_dead() {
    let mut net = Net::joined(12, Duration::from_secs(5));
    net.cut.push(5);
    net.run(Duration::from_secs(20));
    assert_eq!(net.peers[0].health(&5), Some(Health::Dead));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let sample = net.peers[0].sample_up(4, |_| false);
        let distinct: std::collections::HashSet<_> = sample.iter().collect();
        assert_eq!(distinct.len(), 4, "{sample:?}");
        assert!(!sample.contains(&0) && !sample.contains(&5), "{sample:?}");
        seen.extend(sample);
    }
    // Over 50 draws every one of the 10 live others comes up.
    assert_eq!(seen.len(), 10);
    assert_eq!(net.peers[0].sample_up(100, |_| false).len(), 10);
    let odd = net.peers[0].sample_up(100, |p| p % 2 == 0);
    assert!(odd.len() == 5 && odd.iter().all(|p| p % 2 == 1), "{odd:?}");
    assert!(net.peers[0].sample_up(0, |_| false).is_empty());
}
