//! Spilling: what this node knows of its peers' room, the tasks it sent them, the tasks that
//! wait for a peer with room, and the refusals and infeasibility it remembers.
//!
//! Pure bookkeeping; the decisions themselves are the rules of [`super::sched::placement`].
//! A peer's room is estimated from its last report, minus what this node sent it since, plus
//! what came back since (see [`PeerLoad::estimated_free`]).
//!
//! What this node knows of loads is one of two views ([`LoadView`]):
//! - **full**: every peer's gossiped report (small meshes, `--membership reports`); a peer
//!   is in view while it reports;
//! - **sampled**: loads arrive first hand and by chance (piggybacked on membership's probes)
//!   or because this node asked ([`Spill::wants_loads`]: Sparrow's batch sampling, a few
//!   candidates per task that waits for room, the tasks bound to whoever answers with room
//!   first). The sample is bounded: the freshest [`LoadView::Sampled`] `keep` reports, each
//!   for at most `fresh`; one that ages out or is pushed out is not a lost peer (membership
//!   says who is lost), and a peer that runs tasks of this node stays in it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use shoal_protocol::mesh::{LoadReport, PeerKey, RemoteTask};
use shoal_protocol::{BinaryId, IdMap, ObjectId, ResourceSet, TaskId, CPU};

use super::sched::placement::{self, Candidate, Infeasibility};

/// A spilled task is never sent on from the peer that accepted it.
pub(crate) const MAX_HOPS: u32 = 1;
/// A demand no peer can meet fails after this long (peers may still be joining).
pub(crate) const INFEASIBLE_GRACE: Duration = Duration::from_secs(5);
/// A peer that rejected a binary's code is not sent tasks of it for this long (its policy
/// may change when it restarts; a driver of the binary attaching here forgets it at once).
pub(crate) const CODE_REJECTION_MEMORY: Duration = Duration::from_secs(60);
/// A peer that refused a task is not asked again for it for this long.
pub(crate) const REFUSAL_MEMORY: Duration = Duration::from_millis(500);
/// How often tasks waiting for a peer with room are looked at again.
pub(crate) const SPILL_INTERVAL: Duration = Duration::from_millis(250);

/// Reports kept by default when loads are sampled.
pub(crate) const SAMPLE_KEEP: usize = 64;
/// How long a sampled report is used by default.
pub(crate) const SAMPLE_FRESH: Duration = Duration::from_secs(5);
/// Candidates asked per task that waits for room (Sparrow's `d`).
pub(crate) const PROBES_PER_TASK: usize = 2;
/// Candidates asked in one round at most, and at least (a round for one task still asks a
/// few, since a random member may be busy too).
pub(crate) const MAX_PROBES: usize = 32;
const MIN_PROBES: usize = 4;
/// How often a sample is aged (a report is used up to this much past its freshness).
const AGE_EVERY: Duration = Duration::from_secs(1);
/// Rounds of asking are at least this far apart...
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// ... and at most this far while they find no room.
pub(crate) const MAX_PROBE_EVERY: Duration = Duration::from_secs(2);

/// What this node knows of its peers' loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadView {
    /// Every peer's report (gossiped to all).
    Full,
    /// A bounded sample: at most `keep` reports, each used for at most `fresh`; more are
    /// asked for when tasks wait for room.
    Sampled {
        /// Reports kept at most (peers running this node's tasks come on top).
        keep: usize,
        /// How long a report is used.
        fresh: Duration,
    },
}

impl LoadView {
    /// The sampled view with its defaults.
    pub fn sampled() -> Self {
        LoadView::Sampled {
            keep: SAMPLE_KEEP,
            fresh: SAMPLE_FRESH,
        }
    }
}

/// A round of asking peers for their loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadAsk {
    /// Members to ask (chosen at random by membership).
    pub count: usize,
    /// Resources that few peers have and the waiting tasks need: their providers (the
    /// mesh's resource index) are asked too.
    pub having: Vec<String>,
    /// Peers whose loads this node has (fresh): the members asked are others.
    pub skip: Vec<PeerKey>,
}

/// Whether peers must be asked for `name`: a resource that few peers have (not CPUs, and
/// not a placement group's bundle, which is placed through the group).
pub fn indexed_resource(name: &str) -> bool {
    name != CPU && !name.contains("_group_")
}

/// What a peer last reported, and what was sent to it since.
#[derive(Debug)]
pub(crate) struct PeerLoad {
    pub(crate) report: LoadReport,
    /// When the report arrived.
    pub(crate) at: Instant,
    /// Demands of tasks spilled to it since that report.
    pub(crate) sent: Vec<ResourceSet>,
    /// Demands of tasks whose results came back since that report (their resources are
    /// free again there, most likely).
    pub(crate) returned: Vec<ResourceSet>,
}

impl PeerLoad {
    pub(crate) fn new(report: LoadReport, at: Instant) -> Self {
        Self {
            report,
            at,
            sent: Vec::new(),
            returned: Vec::new(),
        }
    }

    /// What it has free now, as far as this node can tell.
    /// A peer also takes as many tasks as it has CPUs into its queue (so short tasks need
    /// not wait a report interval for each free slot): that room counts as free CPU.
    pub(crate) fn estimated_free(&self) -> ResourceSet {
        self.estimate(true)
    }

    /// What it has free now for an actor: an actor holds its resources while it lives, so
    /// a peer takes one only where it fits at once (no room in the queue counts).
    pub(crate) fn estimated_free_now(&self) -> ResourceSet {
        self.estimate(false)
    }

    fn estimate(&self, with_queue: bool) -> ResourceSet {
        let mut free = self.report.free.clone();
        for d in &self.returned {
            free.add_capped(d, &self.report.total);
        }
        if with_queue {
            let slots = self.report.total.get_milli(CPU) / 1000 * 1000;
            let queue_room = slots.saturating_sub(self.report.queued.saturating_mul(1000));
            let cpu = free.get_milli(CPU) + queue_room;
            free = free.with_milli(CPU, cpu);
        }
        for d in &self.sent {
            free.subtract(d);
        }
        free
    }

    /// Whether it seems to have room for anything.
    pub(crate) fn has_room(&self) -> bool {
        let free = self.estimated_free();
        free.get_milli(CPU) > 0 || free.0.len() > 1
    }

    /// A task of demand `d` sent to it came back: not counted against it any more.
    pub(crate) fn task_returned(&mut self, d: ResourceSet) {
        if d.0.is_empty() {
            // An actor call holds nothing: nothing is freed (and the list stays short).
            return;
        }
        // Sent since the last report: no longer counted against it. Sent before: the
        // report counts it busy, but it is free again.
        match self.sent.iter().position(|x| *x == d) {
            Some(pos) => {
                self.sent.swap_remove(pos);
            }
            None => self.returned.push(d),
        }
    }
}

/// The spilling state of a node in a mesh.
#[derive(Debug)]
pub(crate) struct Spill {
    /// This node's target triple.
    pub(crate) target: String,
    /// Whether this node takes binaries it does not hold.
    pub(crate) accepts_code: bool,
    /// This node's labels.
    pub(crate) labels: Vec<(String, String)>,
    /// The peers that reported, by their last report (all of them, or a sample).
    pub(crate) peers: HashMap<PeerKey, PeerLoad>,
    /// Which view of loads this is.
    pub(crate) view: LoadView,
    /// Tasks of this node running at (or sent to) peers, with their return objects.
    spilled: IdMap<TaskId, (PeerKey, ObjectId)>,
    /// How many of them each peer runs.
    spilled_per_peer: HashMap<PeerKey, u32>,
    /// Loads wanted (tasks wait for room the sample does not show), not yet asked for.
    wanted: Option<LoadAsk>,
    /// When loads were last asked for.
    last_ask: Option<Instant>,
    /// How far apart rounds of asking are now: [`PROBE_EVERY`], doubled (up to
    /// [`MAX_PROBE_EVERY`]) after each round that found no room, so a saturated mesh is not
    /// asked over and over.
    ask_every: Duration,
    /// Whether a report with room came since the last round.
    found_room: bool,
    /// When the sample is next aged.
    pub(crate) next_age: Option<Instant>,
    /// Their return objects.
    spilled_ret: IdMap<ObjectId, TaskId>,
    /// The other returns of the tasks there that have several (also in `spilled_ret`).
    spilled_more: IdMap<TaskId, Box<[ObjectId]>>,
    refused: IdMap<TaskId, Vec<(PeerKey, Instant)>>,
    /// Peers that rejected a binary of this node's (only binaries of tasks this node sent
    /// them), with why and when.
    code_rejected: HashMap<BinaryId, Vec<(PeerKey, String, Instant)>>,
    /// Tasks only peers can run, waiting for one to have room (or to become infeasible).
    pub(crate) remote_wait: Vec<TaskId>,
    pub(crate) infeasible: Infeasibility,
    /// Peers' tasks waiting for their binary to arrive here.
    pub(crate) awaiting_binary: HashMap<BinaryId, Vec<(PeerKey, Box<RemoteTask>)>>,
    /// The last task that waited because no peer had room for it (not because none could
    /// ever run it).
    pub(crate) no_room: Option<TaskId>,
    /// When waiting tasks are looked at next.
    pub(crate) next_pass: Option<Instant>,
    /// What this node last learnt of a peer's life, for the most recent [`CONTACTS`]: heard
    /// from (`true`: a report or a message), or written off as lost (`false`). A peer counts
    /// as dead only once written off and not heard from since: one merely not in `peers`
    /// may be new, or back and not yet reported (its tasks can arrive before its report).
    contacts: lru::LruCache<PeerKey, bool>,
}

/// Peers whose last contact is remembered, at most.
const CONTACTS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(n) => n,
    None => unreachable!(),
};

impl Spill {
    pub(crate) fn new(target: String, accepts_code: bool) -> Self {
        Self {
            target,
            accepts_code,
            labels: Vec::new(),
            peers: HashMap::new(),
            view: LoadView::Full,
            spilled: Default::default(),
            spilled_per_peer: HashMap::new(),
            wanted: None,
            last_ask: None,
            ask_every: PROBE_EVERY,
            found_room: true,
            next_age: None,
            spilled_ret: Default::default(),
            spilled_more: Default::default(),
            refused: Default::default(),
            code_rejected: HashMap::new(),
            remote_wait: Vec::new(),
            infeasible: Infeasibility::new(INFEASIBLE_GRACE),
            awaiting_binary: HashMap::new(),
            no_room: None,
            next_pass: None,
            contacts: lru::LruCache::new(CONTACTS),
        }
    }

    /// `peer` is written off as lost: its load is forgotten.
    pub(crate) fn write_off(&mut self, peer: PeerKey) {
        self.peers.remove(&peer);
        self.contacts.put(peer, false);
    }

    /// `peer` was heard from (a report or a message): it is alive.
    pub(crate) fn heard_from(&mut self, peer: PeerKey) {
        self.contacts.put(peer, true);
    }

    /// Whether `peer` was written off as lost and not heard from since.
    pub(crate) fn written_off(&self, peer: &PeerKey) -> bool {
        self.contacts.peek(peer) == Some(&false)
    }

    /// Whether `peer` is taken for alive: it reported, or was heard from since it was last
    /// written off.
    pub(crate) fn alive(&self, peer: &PeerKey) -> bool {
        self.peers.contains_key(peer) || self.contacts.peek(peer) == Some(&true)
    }

    /// Whether `peer` is in this node's view of the mesh: with a full view, while it
    /// reports; with a sample, while it is taken for alive (its report may have aged out of
    /// the sample).
    pub(crate) fn in_view(&self, peer: &PeerKey) -> bool {
        match self.view {
            LoadView::Full => self.peers.contains_key(peer),
            LoadView::Sampled { .. } => self.alive(peer),
        }
    }

    /// Whether this node knows of any peer.
    pub(crate) fn knows_peers(&self) -> bool {
        match self.view {
            LoadView::Full => !self.peers.is_empty(),
            LoadView::Sampled { .. } => {
                !self.peers.is_empty() || self.contacts.iter().any(|(_, alive)| *alive)
            }
        }
    }

    /// With a sampled view: reports older than `fresh` go, and past `keep` the oldest go
    /// (those of peers running this node's tasks stay). Neither is a loss.
    pub(crate) fn age(&mut self, now: Instant) {
        let LoadView::Sampled { keep, fresh } = self.view else {
            return;
        };
        self.next_age = None;
        let busy = &self.spilled_per_peer;
        self.peers
            .retain(|p, l| busy.contains_key(p) || now.saturating_duration_since(l.at) < fresh);
        let spare = self.peers.keys().filter(|p| !busy.contains_key(*p)).count();
        if spare > keep {
            let mut by_age: Vec<(Instant, PeerKey)> = self
                .peers
                .iter()
                .filter(|(p, _)| !busy.contains_key(*p))
                .map(|(p, l)| (l.at, *p))
                .collect();
            by_age.sort();
            for (_, p) in by_age.into_iter().take(spare - keep) {
                self.peers.remove(&p);
            }
        }
        if !self.peers.is_empty() {
            self.next_age = Some(now + AGE_EVERY);
        }
    }

    /// With a sampled view: `tasks` wait for room this view does not show (needing the
    /// resources `having` that few peers have): more loads are wanted.
    pub(crate) fn want_loads(&mut self, tasks: usize, having: &ResourceSet) {
        if !matches!(self.view, LoadView::Sampled { .. }) || tasks == 0 {
            return;
        }
        let w = self.wanted.get_or_insert(LoadAsk {
            count: 0,
            having: Vec::new(),
            skip: Vec::new(),
        });
        w.count = (w.count + tasks * PROBES_PER_TASK).clamp(MIN_PROBES, MAX_PROBES);
        for name in having.0.keys().filter(|n| indexed_resource(n)) {
            if !w.having.contains(name) {
                w.having.push(name.clone());
            }
        }
    }

    /// The round of asking that is due at `now`, if one is (rounds are at least
    /// [`PROBE_EVERY`] apart).
    pub(crate) fn wants_loads(&mut self, now: Instant) -> Option<LoadAsk> {
        self.wanted.as_ref()?;
        if self
            .last_ask
            .is_some_and(|t| now.saturating_duration_since(t) < self.spacing())
        {
            return None;
        }
        self.ask_every = if self.found_room || self.last_ask.is_none() {
            PROBE_EVERY
        } else {
            (self.ask_every * 2).min(MAX_PROBE_EVERY)
        };
        self.found_room = false;
        self.last_ask = Some(now);
        let mut ask = self.wanted.take()?;
        ask.skip = self.peers.keys().copied().collect();
        ask.skip.sort();
        Some(ask)
    }

    /// When the next round of asking may go out, if one waits.
    pub(crate) fn next_ask(&self) -> Option<Instant> {
        self.wanted.as_ref()?;
        self.last_ask.map(|t| t + self.spacing())
    }

    /// How long after the last round the next may go: short again as soon as a report
    /// showed room.
    fn spacing(&self) -> Duration {
        if self.found_room {
            PROBE_EVERY
        } else {
            self.ask_every
        }
    }

    /// Takes out the peers' tasks waiting for their binary that `pick` chooses, in the
    /// order they came.
    pub(crate) fn take_awaiting(
        &mut self,
        mut pick: impl FnMut(PeerKey, &RemoteTask) -> bool,
    ) -> Vec<(PeerKey, Box<RemoteTask>)> {
        let mut taken = Vec::new();
        let mut binaries: Vec<BinaryId> = self.awaiting_binary.keys().copied().collect();
        binaries.sort();
        for binary in binaries {
            let Some(waiting) = self.awaiting_binary.get_mut(&binary) else {
                continue;
            };
            let (out, keep): (Vec<_>, Vec<_>) =
                waiting.drain(..).partition(|(from, rt)| pick(*from, rt));
            *waiting = keep;
            taken.extend(out);
        }
        taken
    }

    /// A report from `peer` that arrived at `now`: kept unless it is older than the one
    /// known.
    pub(crate) fn report(&mut self, peer: PeerKey, report: LoadReport, now: Instant) {
        self.heard_from(peer);
        if let LoadView::Sampled { fresh, .. } = self.view {
            self.next_age.get_or_insert(now + fresh);
        }
        let l = match self.peers.entry(peer) {
            Entry::Occupied(mut e)
                if (e.get().report.started_ms, e.get().report.seq)
                    >= (report.started_ms, report.seq) =>
            {
                // The same report again (a sampled peer whose load did not change): still
                // fresh. An older one: ignored.
                if (e.get().report.started_ms, e.get().report.seq)
                    == (report.started_ms, report.seq)
                {
                    e.get_mut().at = now;
                }
                return;
            }
            Entry::Occupied(mut e) => {
                e.insert(PeerLoad::new(report, now));
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(PeerLoad::new(report, now)),
        };
        if l.has_room() {
            self.found_room = true;
        }
    }

    /// Peers with their estimated free resources, for placing a task (an actor's creation
    /// if `actor`).
    pub(crate) fn candidates(
        &self,
        binary: BinaryId,
        arg_bytes: &HashMap<PeerKey, u64>,
        actor: bool,
    ) -> Vec<Candidate<PeerKey>> {
        let mut v: Vec<Candidate<PeerKey>> = self
            .peers
            .iter()
            .map(|(peer, load)| Candidate {
                peer: *peer,
                free: if actor {
                    load.estimated_free_now()
                } else {
                    load.estimated_free()
                },
                total: load.report.total.clone(),
                queued: load.report.queued,
                target: load.report.target.clone(),
                has_binary: load.report.binaries.contains(&binary),
                accepts_code: load.report.accepts_code,
                arg_bytes: arg_bytes.get(peer).copied().unwrap_or(0),
                load: placement::load(
                    &load.report.total,
                    &load.estimated_free_now(),
                    load.report.queued,
                ),
            })
            .collect();
        // A fixed order, so that equal candidates are chosen the same way every run.
        v.sort_by_key(|c| c.peer);
        v
    }

    /// `task` (returning `ret`) was sent to `peer`, whose room shrinks by `demand`.
    pub(crate) fn spilled(
        &mut self,
        task: TaskId,
        ret: ObjectId,
        more: &[ObjectId],
        peer: PeerKey,
        demand: Option<ResourceSet>,
    ) {
        if let Some((before, _)) = self.spilled.insert(task, (peer, ret)) {
            self.count_off(before);
        }
        *self.spilled_per_peer.entry(peer).or_default() += 1;
        self.spilled_ret.insert(ret, task);
        if !more.is_empty() {
            for id in more {
                self.spilled_ret.insert(*id, task);
            }
            self.spilled_more.insert(task, more.into());
        }
        if let (Some(l), Some(d)) = (self.peers.get_mut(&peer), demand) {
            l.sent.push(d);
        }
    }

    fn count_off(&mut self, peer: PeerKey) {
        if let Some(n) = self.spilled_per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.spilled_per_peer.remove(&peer);
            }
        }
    }

    /// Where `task` was sent, if it was.
    pub(crate) fn spilled_to(&self, task: &TaskId) -> Option<PeerKey> {
        self.spilled.get(task).map(|x| x.0)
    }

    /// The task of this node whose result `ret` is (any of its returns), if `peer` runs it.
    pub(crate) fn task_of_result(&self, ret: &ObjectId, peer: PeerKey) -> Option<TaskId> {
        let task = *self.spilled_ret.get(ret)?;
        (self.spilled_to(&task) == Some(peer)).then_some(task)
    }

    /// `task` is no longer at a peer.
    pub(crate) fn unspill(&mut self, task: &TaskId) {
        if let Some((peer, ret)) = self.spilled.remove(task) {
            self.count_off(peer);
            self.spilled_ret.remove(&ret);
            if let Some(more) = self.spilled_more.remove(task) {
                for id in more.iter() {
                    self.spilled_ret.remove(id);
                }
            }
        }
    }

    /// Tasks of this node at `peer`, taken back.
    pub(crate) fn take_spilled_to(&mut self, peer: PeerKey) -> Vec<TaskId> {
        let mut lost: Vec<TaskId> = self
            .spilled
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(t, _)| *t)
            .collect();
        lost.sort();
        for t in &lost {
            self.unspill(t);
        }
        lost
    }

    /// `peer` refused `task` at `now`.
    pub(crate) fn refused(&mut self, task: TaskId, peer: PeerKey, now: Instant) {
        self.refused.entry(task).or_default().push((peer, now));
    }

    /// Peers that refused `task` recently.
    pub(crate) fn refused_by(&mut self, task: &TaskId, now: Instant) -> Vec<PeerKey> {
        match self.refused.get_mut(task) {
            Some(v) => {
                v.retain(|(_, at)| now.saturating_duration_since(*at) < REFUSAL_MEMORY);
                v.iter().map(|(p, _)| *p).collect()
            }
            None => Vec::new(),
        }
    }

    /// `peer` rejected the code of `binary` at `now`, saying `reason`.
    pub(crate) fn code_rejected(
        &mut self,
        binary: BinaryId,
        peer: PeerKey,
        reason: String,
        now: Instant,
    ) {
        let v = self.code_rejected.entry(binary).or_default();
        v.retain(|(p, _, _)| *p != peer);
        v.push((peer, reason, now));
    }

    /// Peers that rejected the code of `binary` lately, with why.
    pub(crate) fn code_rejections(
        &mut self,
        binary: &BinaryId,
        now: Instant,
    ) -> Vec<(PeerKey, String)> {
        let Some(v) = self.code_rejected.get_mut(binary) else {
            return Vec::new();
        };
        v.retain(|(_, _, at)| now.saturating_duration_since(*at) < CODE_REJECTION_MEMORY);
        let out = v.iter().map(|(p, r, _)| (*p, r.clone())).collect();
        if v.is_empty() {
            self.code_rejected.remove(binary);
        }
        out
    }

    /// Peers' rejections of `binary` are forgotten (a driver of it attached: it may come
    /// with another signature).
    pub(crate) fn forget_code_rejections(&mut self, binary: &BinaryId) {
        self.code_rejected.remove(binary);
    }

    /// `task` ended here: what was remembered of it goes.
    pub(crate) fn forget(&mut self, task: &TaskId) {
        self.refused.remove(task);
        self.infeasible.forget(task);
    }

    /// How many tasks of this node are at peers.
    pub(crate) fn spilled_count(&self) -> usize {
        self.spilled.len()
    }

    /// Whether anything waits for a later look.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.remote_wait.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PeerKey {
        PeerKey::from_bytes(&[n; 38]).unwrap()
    }

    fn report(cpus: f64, free: f64, queued: u64, seq: u64) -> LoadReport {
        LoadReport {
            total: ResourceSet::cpus(cpus),
            free: ResourceSet::cpus(free),
            queued,
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn estimates_follow_what_was_sent_and_returned() {
        let mut l = PeerLoad::new(report(2.0, 0.0, 0, 1), Instant::now());
        // Busy, but its queue takes two more tasks.
        assert_eq!(l.estimated_free().get_milli(CPU), 2000);
        l.sent.push(ResourceSet::cpus(1.0));
        l.sent.push(ResourceSet::cpus(1.0));
        assert_eq!(l.estimated_free().get_milli(CPU), 0);
        assert!(!l.has_room());
        // One sent since the report came back: counted no more.
        l.task_returned(ResourceSet::cpus(1.0));
        assert_eq!(l.estimated_free().get_milli(CPU), 1000);
        l.task_returned(ResourceSet::cpus(1.0));
        assert_eq!(l.estimated_free().get_milli(CPU), 2000);
        // Ones the report counted busy came back: free again, up to its total.
        l.task_returned(ResourceSet::cpus(1.0));
        assert_eq!(l.estimated_free().get_milli(CPU), 3000);
        l.task_returned(ResourceSet::cpus(1.0));
        l.task_returned(ResourceSet::cpus(1.0));
        assert_eq!(l.estimated_free().get_milli(CPU), 4000);
    }

    #[test]
    fn an_actor_counts_only_resources_free_now() {
        // Busy with one task of two CPUs' worth: tasks may queue, an actor must not.
        let mut l = PeerLoad::new(report(2.0, 1.0, 1, 1), Instant::now());
        assert_eq!(l.estimated_free().get_milli(CPU), 2000);
        assert_eq!(l.estimated_free_now().get_milli(CPU), 1000);
        l.sent.push(ResourceSet::cpus(1.0));
        assert_eq!(l.estimated_free_now().get_milli(CPU), 0);
        assert_eq!(l.estimated_free().get_milli(CPU), 1000);
    }

    #[test]
    fn stale_reports_are_ignored_and_new_ones_reset_the_estimate() {
        let mut s = Spill::new("t".into(), true);
        s.report(key(1), report(2.0, 2.0, 0, 5), Instant::now());
        s.spilled(
            TaskId::new(shoal_protocol::ClientId(1), 1),
            ObjectId([1; 32]),
            &[],
            key(1),
            Some(ResourceSet::cpus(1.0)),
        );
        s.report(key(1), report(2.0, 0.0, 0, 4), Instant::now());
        assert_eq!(s.peers[&key(1)].report.free.get_milli(CPU), 2000);
        assert_eq!(s.peers[&key(1)].sent.len(), 1);
        s.report(key(1), report(2.0, 1.0, 0, 6), Instant::now());
        assert_eq!(s.peers[&key(1)].report.free.get_milli(CPU), 1000);
        assert!(s.peers[&key(1)].sent.is_empty());
    }

    #[test]
    fn results_are_taken_only_from_the_peer_that_runs_the_task() {
        let mut s = Spill::new("t".into(), true);
        let (task, ret) = (
            TaskId::new(shoal_protocol::ClientId(1), 1),
            ObjectId([1; 32]),
        );
        s.spilled(task, ret, &[], key(1), None);
        assert_eq!(s.task_of_result(&ret, key(1)), Some(task));
        assert_eq!(s.task_of_result(&ret, key(2)), None);
        assert_eq!(s.take_spilled_to(key(2)), vec![]);
        assert_eq!(s.take_spilled_to(key(1)), vec![task]);
        assert_eq!(s.task_of_result(&ret, key(1)), None);
    }

    #[test]
    fn code_rejections_are_per_binary_and_forgotten_after_a_while() {
        let mut s = Spill::new("t".into(), true);
        let t0 = Instant::now();
        let (a, b) = (BinaryId([1; 32]), BinaryId([2; 32]));
        s.code_rejected(a, key(1), "old".into(), t0);
        s.code_rejected(a, key(1), "not signed".into(), t0);
        s.code_rejected(a, key(2), "untrusted".into(), t0 + Duration::from_secs(30));
        assert_eq!(
            s.code_rejections(&a, t0 + Duration::from_secs(1)),
            vec![(key(1), "not signed".into()), (key(2), "untrusted".into())]
        );
        assert!(s.code_rejections(&b, t0).is_empty());
        assert_eq!(
            s.code_rejections(&a, t0 + CODE_REJECTION_MEMORY),
            vec![(key(2), "untrusted".into())]
        );
        s.forget_code_rejections(&a);
        assert!(s.code_rejections(&a, t0).is_empty());
    }

    fn sampled(keep: usize) -> Spill {
        let mut s = Spill::new("t".into(), true);
        s.view = LoadView::Sampled {
            keep,
            fresh: Duration::from_secs(5),
        };
        s
    }

    #[test]
    fn a_sample_keeps_the_freshest_reports_and_those_of_peers_running_its_tasks() {
        let t0 = Instant::now();
        let mut s = sampled(2);
        let task = TaskId::new(shoal_protocol::ClientId(1), 1);
        for n in 1..=4u8 {
            s.report(
                key(n),
                report(2.0, 2.0, 0, 1),
                t0 + Duration::from_millis(u64::from(n)),
            );
        }
        // Peer 1 (the oldest) runs a task of this node.
        s.spilled(task, ObjectId([1; 32]), &[], key(1), None);
        s.age(t0 + Duration::from_millis(10));
        let mut kept: Vec<PeerKey> = s.peers.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, vec![key(1), key(3), key(4)]);
        // Pushed out is not lost: still in view.
        assert!(s.in_view(&key(2)) && !s.written_off(&key(2)));
        // The same report again keeps it fresh; past `fresh` the others age out.
        s.report(key(4), report(2.0, 2.0, 0, 1), t0 + Duration::from_secs(3));
        s.age(t0 + Duration::from_secs(6));
        let mut kept: Vec<PeerKey> = s.peers.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, vec![key(1), key(4)]);
        // Once its task is back, peer 1 ages out too.
        s.unspill(&task);
        s.age(t0 + Duration::from_secs(6));
        assert_eq!(s.peers.keys().copied().collect::<Vec<_>>(), vec![key(4)]);
        // A full view keeps everything.
        let mut full = Spill::new("t".into(), true);
        full.report(key(1), report(2.0, 2.0, 0, 1), t0);
        full.age(t0 + Duration::from_secs(60));
        assert!(full.peers.contains_key(&key(1)));
        assert!(!full.in_view(&key(2)));
    }

    #[test]
    fn loads_are_asked_for_only_when_sampled_and_less_often_while_nobody_has_room() {
        let t0 = Instant::now();
        let mut full = Spill::new("t".into(), true);
        full.want_loads(10, &ResourceSet::cpus(1.0));
        assert_eq!(full.wants_loads(t0), None);

        let mut s = sampled(8);
        let gpu = ResourceSet::cpus(1.0).with("GPU", 1.0);
        s.want_loads(1, &gpu);
        s.want_loads(100, &ResourceSet::cpus(1.0));
        let ask = s.wants_loads(t0).expect("a round is due");
        assert_eq!(ask.count, MAX_PROBES);
        assert_eq!(ask.having, vec!["GPU".to_string()]);
        // One task alone still asks a few.
        s.want_loads(1, &ResourceSet::cpus(1.0));
        assert_eq!(s.wants_loads(t0), None, "rounds are spaced");
        assert_eq!(s.next_ask(), Some(t0 + PROBE_EVERY));
        let ask = s.wants_loads(t0 + PROBE_EVERY).expect("due");
        assert_eq!(ask.count, MIN_PROBES);
        assert!(ask.having.is_empty());
        // Nobody answered with room: the next rounds back off, up to the cap.
        let mut at = t0 + PROBE_EVERY;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            s.want_loads(1, &ResourceSet::cpus(1.0));
            let next = s.next_ask().expect("a round waits");
            assert!(s.wants_loads(next).is_some());
            gaps.push(next - at);
            at = next;
        }
        assert_eq!(gaps[0], PROBE_EVERY * 2);
        assert_eq!(*gaps.last().unwrap(), MAX_PROBE_EVERY);
        // A report with room: back to the short spacing, and that peer is not asked again.
        s.report(key(1), report(2.0, 2.0, 0, 1), at);
        s.want_loads(1, &ResourceSet::cpus(1.0));
        let ask = s.wants_loads(at + PROBE_EVERY).expect("due");
        assert_eq!(ask.skip, vec![key(1)]);
    }

    #[test]
    fn refusals_are_forgotten_after_a_while() {
        let mut s = Spill::new("t".into(), true);
        let task = TaskId::new(shoal_protocol::ClientId(1), 1);
        let t0 = Instant::now();
        s.refused(task, key(1), t0);
        assert_eq!(
            s.refused_by(&task, t0 + Duration::from_millis(100)),
            vec![key(1)]
        );
        assert!(s.refused_by(&task, t0 + REFUSAL_MEMORY).is_empty());
    }
}
