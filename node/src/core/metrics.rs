//! What the core counts for the node's Prometheus metrics (`--metrics`): counters and latency
//! histograms kept as things happen, with no clock, lock or atomic of their own (the core is
//! single-threaded and is handed the time). The shell reads a [`MetricsSnapshot`] on a scrape
//! and encodes it; gauges (tasks by state, store bytes, workers) are not kept here but read
//! off the core's tables when the snapshot is taken.
//!
//! Labels follow Prometheus's advice against unbounded sets: function and class names come
//! from programs, so each labelled family keeps at most [`MAX_LABEL_VALUES`] values apart and
//! counts the rest under [`OTHER`].

use std::collections::BTreeMap;

/// Upper bounds of the latency histograms' buckets, in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    10.0,
];

/// Label values one family keeps apart at most.
pub const MAX_LABEL_VALUES: usize = 200;

/// The label value that stands for every value past [`MAX_LABEL_VALUES`].
pub const OTHER: &str = "other";

/// A latency histogram with the buckets of [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); those over the last bound are only in
    /// `count`.
    counts: [u64; LATENCY_BUCKETS.len()],
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one observation of `secs` seconds.
    pub fn observe(&mut self, secs: f64) {
        self.count += 1;
        self.sum += secs;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
    }

    /// The buckets, each (upper bound, observations over the previous bound and at or under
    /// this one), ending with `+Inf` (the encoder makes them cumulative).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = LATENCY_BUCKETS.iter().copied().zip(self.counts).collect();
        let under: u64 = self.counts.iter().sum();
        out.push((f64::INFINITY, self.count - under));
        out
    }
}

/// Counters under a label whose values come from programs, at most [`MAX_LABEL_VALUES`]
/// apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled<T> {
    by: BTreeMap<String, T>,
}

impl<T> Default for Labelled<T> {
    fn default() -> Self {
        Self {
            by: BTreeMap::new(),
        }
    }
}

impl<T: Default> Labelled<T> {
    /// The entry of `value`, or of [`OTHER`] once as many values are kept apart as allowed.
    pub fn entry(&mut self, value: &str) -> &mut T {
        // A known value costs no allocation (looked up twice: the borrow checker does not yet
        // let a `get_mut` that missed fall through to an insertion).
        if self.by.contains_key(value) {
            return self.by.get_mut(value).expect("looked up just before");
        }
        let key = if self.by.len() >= MAX_LABEL_VALUES {
            OTHER
        } else {
            value
        };
        self.by.entry(key.to_string()).or_default()
    }

    /// Every value and its entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.by.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Tasks of one function that ended here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// Returned a value.
    pub ok: u64,
    /// Failed (the task's error: a panic, its worker died, …).
    pub failed: u64,
}

/// The core's counters and histograms. Counters only grow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreMetrics {
    /// Tasks submitted by local processes.
    pub tasks_submitted: u64,
    /// Tasks received from peers to run here.
    pub tasks_received: u64,
    /// Tasks sent to peers to run there (each sending, so a task refused and sent again
    /// counts twice).
    pub tasks_spilled: u64,
    /// Tasks run again: their worker or peer died, or their result was lost.
    pub tasks_retried: u64,
    /// Cancels of tasks this node took from their submitters (each cancel asked, not each
    /// task a recursive cancel reached).
    pub tasks_cancelled: u64,
    /// Tasks (actor calls too) whose end this node's workers reported, by function.
    pub tasks_ended: Labelled<Ended>,
    /// Objects spilled to disk, and their bytes.
    pub spills: u64,
    /// Bytes spilled.
    pub spilled_bytes: u64,
    /// Objects restored from disk, and their bytes.
    pub restores: u64,
    /// Bytes restored.
    pub restored_bytes: u64,
    /// Objects made again from their lineage.
    pub reconstructions: u64,
    /// Objects pulled from peers, and their bytes.
    pub pulls: u64,
    /// Bytes pulled.
    pub pulled_bytes: u64,
    /// Peers written off (lost with their work).
    pub peers_lost: u64,
    /// Worker processes started.
    pub workers_started: u64,
    /// Worker processes that ended without being told to (crashes, kills from outside).
    pub workers_died: u64,
    /// From a task's arrival at this node to its hand-over to a worker.
    pub dispatch_seconds: Histogram,
    /// From an actor call's arrival at the actor's node to its end.
    pub actor_call_seconds: Histogram,
}

/// The core's counters, with the tasks it knows by state and function, at one instant (the
/// other gauges, such as the store's bytes and the workers, are in the node's status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// The counters.
    pub counters: CoreMetrics,
    /// Tasks by (state, function): `waiting_args`, `queued` (for a worker or a peer with
    /// room), `running`, `at_peer` (sent to a peer that runs it).
    pub tasks: Vec<(&'static str, String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_every_observation_once() {
        let mut h = Histogram::default();
        h.observe(0.000_01);
        h.observe(0.003);
        h.observe(0.003);
        h.observe(60.0);
        let b = h.buckets();
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(b[0], (0.000_05, 1));
        let at_5ms = b.iter().find(|(b, _)| *b == 0.005).unwrap();
        assert_eq!(at_5ms.1, 2, "(2.5 ms, 5 ms]");
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert_eq!(*b.last().unwrap(), (f64::INFINITY, 1), "over 10 s");
        assert_eq!(h.count, 4);
        assert!((h.sum - 60.006_01).abs() < 1e-9);
    }

    #[test]
    fn label_values_past_the_bound_are_counted_as_other() {
        let mut l: Labelled<u64> = Labelled::default();
        for i in 0..MAX_LABEL_VALUES + 50 {
            *l.entry(&format!("f{i}")) += 1;
        }
        *l.entry("f0") += 1;
        let all: Vec<_> = l.iter().collect();
        assert_eq!(all.len(), MAX_LABEL_VALUES + 1);
        assert_eq!(
            l.iter().find(|(k, _)| *k == OTHER).map(|(_, v)| *v),
            Some(50)
        );
        assert_eq!(l.iter().find(|(k, _)| *k == "f0").map(|(_, v)| *v), Some(2));
    }
}
