//! Where a task runs in the mesh: here, on another peer, or nowhere (yet).
//!
//! Pure and generic over the peer id type: the node gives it the task's demand, this node's
//! resources and the gossiped view of the others; it answers with a [`Placement`]. Issue 6
//! wires it to remote execution; it is tested here with plain values and virtual time.
//!
//! Rules, in order:
//! 1. Run here while the demand fits this node's free resources.
//! 2. A task that has already been spilled `max_hops` times is never sent on: it waits here
//!    (or is infeasible here).
//! 3. Otherwise the best peer whose free resources fit: one that can run the binary (same
//!    target triple, and it holds the binary or accepts shipped code), has not refused this
//!    task, holds the most bytes of the task's arguments (data locality), then has the
//!    shortest queue, then the most free CPU.
//! 4. Nobody has room now: wait (here) if this node or some peer could ever run it.
//! 5. Nobody could ever run it: infeasible, after a grace period (views fill up as peers
//!    join), unless the caller asked to wait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shoal_protocol::{BinaryId, ResourceSet, TaskId, CPU};

/// Another peer, as the gossiped view shows it, with what it holds of this task's arguments.
#[derive(Clone, Debug)]
pub struct Candidate<P> {
    /// The peer.
    pub peer: P,
    /// Its free resources.
    pub free: ResourceSet,
    /// All its resources.
    pub total: ResourceSet,
    /// Tasks waiting there.
    pub queued: u64,
    /// Its target triple.
    pub target: String,
    /// Whether it holds the task's binary.
    pub has_binary: bool,
    /// Whether it accepts binaries it does not hold.
    pub accepts_code: bool,
    /// Bytes of the task's arguments it holds.
    pub arg_bytes: u64,
    /// Its load, for spreading ([`load`]): what it runs and queues (the tasks sent to it
    /// since its report counted), per CPU.
    pub load: u64,
}

/// A task to place.
#[derive(Clone, Debug)]
pub struct Demand {
    /// What it holds while it runs.
    pub resources: ResourceSet,
    /// Its binary.
    pub binary: BinaryId,
    /// The target triple the binary was built for.
    pub target: String,
    /// How many times it was spilled already.
    pub hops: u32,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement<P> {
    /// Run it here now.
    Local,
    /// Send it to this peer.
    Spill(P),
    /// Keep it queued here and decide again when something changes.
    Wait,
    /// No peer of the mesh (this one included) can ever meet the demand.
    Infeasible,
}

/// What a task's scheduling strategy and label selector make of the choice (the peers they
/// rule out are left out of the candidates by the caller).
#[derive(Clone, Debug)]
pub struct Rule<P> {
    /// Whether it may run on this node (its labels match, and no hard affinity names
    /// another peer).
    pub local_allowed: bool,
    /// Spread: this node is a candidate like the others, and the least loaded with room
    /// wins (this node on a tie).
    pub spread: bool,
    /// The peer it prefers (a soft affinity): chosen first whenever it has room.
    pub preferred: Option<P>,
    /// Tasks queued on this node (its load, for spreading).
    pub local_queued: u64,
}

impl<P> Default for Rule<P> {
    /// The default strategy: this node while it fits, else the best peer.
    fn default() -> Self {
        Self {
            local_allowed: true,
            spread: false,
            preferred: None,
            local_queued: 0,
        }
    }
}

/// A node's load, for spreading: CPUs in use and tasks queued, per CPU it has (in
/// thousandths).
pub fn load(total: &ResourceSet, free: &ResourceSet, queued: u64) -> u64 {
    let (total, free) = (total.get_milli(CPU), free.get_milli(CPU));
    let busy = total.saturating_sub(free) + queued * 1000;
    busy.saturating_mul(1000) / total.max(1)
}

/// Decides where a task goes under the default strategy. `refused` are peers that refused
/// this task (their view was stale); they are not asked again.
pub fn place<P: Clone + PartialEq>(
    task: &Demand,
    local_free: &ResourceSet,
    local_total: &ResourceSet,
    peers: &[Candidate<P>],
    refused: &[P],
    max_hops: u32,
) -> Placement<P> {
    let rule = Rule::default();
    place_with(
        task,
        local_free,
        local_total,
        peers,
        refused,
        max_hops,
        &rule,
    )
}

/// Decides where a task goes under `rule`; see [`place`].
pub fn place_with<P: Clone + PartialEq>(
    task: &Demand,
    local_free: &ResourceSet,
    local_total: &ResourceSet,
    peers: &[Candidate<P>],
    refused: &[P],
    max_hops: u32,
    rule: &Rule<P>,
) -> Placement<P> {
    let able = |c: &&Candidate<P>| {
        c.target == task.target && (c.has_binary || c.accepts_code) && !refused.contains(&c.peer)
    };
    let fits =
        |c: &&Candidate<P>| task.hops < max_hops && able(c) && c.free.contains(&task.resources);
    if let Some(p) = &rule.preferred {
        if let Some(c) = peers.iter().filter(fits).find(|c| c.peer == *p) {
            return Placement::Spill(c.peer.clone());
        }
    }
    let local_fits = rule.local_allowed && local_free.contains(&task.resources);
    if rule.spread {
        let here = load(local_total, local_free, rule.local_queued);
        let best = peers
            .iter()
            .filter(fits)
            .map(|c| (c.load, c))
            .min_by_key(|(l, _)| *l);
        match best {
            Some((l, c)) if !local_fits || l < here => return Placement::Spill(c.peer.clone()),
            _ if local_fits => return Placement::Local,
            _ => {}
        }
    }
    if local_fits {
        return Placement::Local;
    }
    let runs_here_ever = rule.local_allowed && local_total.contains(&task.resources);
    let best = peers.iter().filter(fits).max_by(|a, b| {
        a.arg_bytes
            .cmp(&b.arg_bytes)
            .then(b.queued.cmp(&a.queued))
            .then(a.free.get_milli(CPU).cmp(&b.free.get_milli(CPU)))
    });
    if let Some(c) = best {
        return Placement::Spill(c.peer.clone());
    }
    let runs_elsewhere_ever = task.hops < max_hops
        && peers
            .iter()
            .filter(able)
            .any(|c| c.total.contains(&task.resources));
    if runs_here_ever || runs_elsewhere_ever {
        Placement::Wait
    } else {
        Placement::Infeasible
    }
}

/// Turns "infeasible now" into a failure only after a grace period: a peer that can run the
/// task may not have joined the view yet.
#[derive(Debug)]
pub struct Infeasibility {
    grace: Duration,
    since: HashMap<TaskId, Instant>,
}

impl Infeasibility {
    /// Tasks fail after `grace` of being infeasible.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            since: HashMap::new(),
        }
    }

    /// `task` was found infeasible at `now`: whether to fail it (unless the caller waits).
    pub fn infeasible(&mut self, task: TaskId, now: Instant) -> bool {
        let since = *self.since.entry(task).or_insert(now);
        now.saturating_duration_since(since) >= self.grace
    }

    /// `task` was placed (or failed, or dropped): forget it.
    pub fn forget(&mut self, task: &TaskId) {
        self.since.remove(task);
    }
}

/// The holders of an object (with their queue lengths) in the order to ask them for it: the
/// least busy first.
pub fn order_holders<P: Clone>(holders: &[(P, u64)]) -> Vec<P> {
    let mut v: Vec<&(P, u64)> = holders.iter().collect();
    v.sort_by_key(|(_, queued)| *queued);
    v.into_iter().map(|(p, _)| p.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "x86_64-unknown-linux-gnu";

    fn demand(cpus: f64) -> Demand {
        Demand {
            resources: ResourceSet::cpus(cpus),
            binary: BinaryId([1; 32]),
            target: T.into(),
            hops: 0,
        }
    }

    fn peer(name: &'static str, free: f64, total: f64, queued: u64) -> Candidate<&'static str> {
        Candidate {
            peer: name,
            free: ResourceSet::cpus(free),
            total: ResourceSet::cpus(total),
            queued,
            target: T.into(),
            has_binary: true,
            accepts_code: true,
            arg_bytes: 0,
            load: load(&ResourceSet::cpus(total), &ResourceSet::cpus(free), queued),
        }
    }

    #[test]
    fn spread_takes_the_least_loaded_node_this_one_on_a_tie() {
        let (two, one) = (ResourceSet::cpus(2.0), ResourceSet::cpus(1.0));
        let spread = |queued| Rule {
            spread: true,
            local_queued: queued,
            ..Rule::default()
        };
        let peers = [peer("a", 1.0, 2.0, 0), peer("b", 2.0, 2.0, 0)];
        // This node is idle: a tie with b, so here.
        let d = demand(1.0);
        let place = |free: &ResourceSet, rule: &Rule<&'static str>| {
            place_with(&d, free, &two, &peers, &[], 2, rule)
        };
        assert_eq!(place(&two, &spread(0)), Placement::Local);
        // Half busy here: b, idle, takes it; the default keeps it here.
        assert_eq!(place(&one, &spread(0)), Placement::Spill("b"));
        assert_eq!(place(&one, &Rule::default()), Placement::Local);
        // Idle but with a queue: b.
        assert_eq!(place(&two, &spread(1)), Placement::Spill("b"));
    }

    #[test]
    fn a_preferred_peer_first_and_a_node_ruled_out_never() {
        let two = ResourceSet::cpus(2.0);
        let peers = [peer("a", 1.0, 2.0, 0), peer("b", 2.0, 2.0, 0)];
        let d = demand(1.0);
        let prefer_a = Rule {
            preferred: Some("a"),
            ..Rule::default()
        };
        assert_eq!(
            place_with(&d, &two, &two, &peers, &[], 2, &prefer_a),
            Placement::Spill("a")
        );
        // No room at a: as the default would.
        let busy = [peer("a", 0.0, 2.0, 0), peer("b", 2.0, 2.0, 0)];
        assert_eq!(
            place_with(&d, &two, &two, &busy, &[], 2, &prefer_a),
            Placement::Local
        );
        // Not here (labels, or a hard affinity to another): a peer, or wait for one.
        let not_here = Rule {
            local_allowed: false,
            ..Rule::default()
        };
        assert_eq!(
            place_with(&d, &two, &two, &peers, &[], 2, &not_here),
            Placement::Spill("b")
        );
        let full = [peer("b", 0.0, 2.0, 0)];
        assert_eq!(
            place_with(&d, &two, &two, &full, &[], 2, &not_here),
            Placement::Wait
        );
        assert_eq!(
            place_with(&d, &two, &two, &[], &[], 2, &not_here),
            Placement::Infeasible
        );
    }

    #[test]
    fn local_first_then_the_best_peer() {
        let one = ResourceSet::cpus(1.0);
        assert_eq!(
            place(&demand(1.0), &one, &one, &[peer("a", 4.0, 4.0, 0)], &[], 2),
            Placement::Local
        );
        let none = ResourceSet::cpus(0.0);
        let peers = [
            peer("a", 1.0, 4.0, 5),
            peer("b", 2.0, 4.0, 1),
            peer("c", 0.0, 8.0, 0),
        ];
        // b: free, and a shorter queue than a; c has no room.
        assert_eq!(
            place(&demand(1.0), &none, &one, &peers, &[], 2),
            Placement::Spill("b")
        );
        // b refused (its view was stale): a is next.
        assert_eq!(
            place(&demand(1.0), &none, &one, &peers, &["b"], 2),
            Placement::Spill("a")
        );
    }

    #[test]
    fn data_locality_wins_over_queue_length() {
        let none = ResourceSet::cpus(0.0);
        let mut a = peer("a", 1.0, 1.0, 9);
        a.arg_bytes = 1 << 30;
        let b = peer("b", 4.0, 4.0, 0);
        assert_eq!(
            place(&demand(1.0), &none, &none, &[a, b], &[], 2),
            Placement::Spill("a")
        );
    }

    #[test]
    fn binaries_go_only_where_they_run() {
        let none = ResourceSet::cpus(0.0);
        let mut other_target = peer("arm", 4.0, 4.0, 0);
        other_target.target = "aarch64-unknown-linux-gnu".into();
        let mut no_shipping = peer("closed", 4.0, 4.0, 0);
        no_shipping.has_binary = false;
        no_shipping.accepts_code = false;
        let peers = [other_target, no_shipping];
        assert_eq!(
            place(&demand(1.0), &none, &none, &peers, &[], 2),
            Placement::Infeasible
        );
        let mut has_it = peer("has", 4.0, 4.0, 0);
        has_it.accepts_code = false;
        assert_eq!(
            place(&demand(1.0), &none, &none, &[has_it], &[], 2),
            Placement::Spill("has")
        );
    }

    #[test]
    fn a_spilled_task_is_never_bounced_on() {
        let none = ResourceSet::cpus(0.0);
        let one = ResourceSet::cpus(1.0);
        let mut d = demand(1.0);
        d.hops = 2;
        let peers = [peer("a", 4.0, 4.0, 0)];
        assert_eq!(place(&d, &none, &one, &peers, &[], 2), Placement::Wait);
        assert_eq!(
            place(&d, &none, &none, &peers, &[], 2),
            Placement::Infeasible
        );
    }

    #[test]
    fn waits_when_someone_could_run_it_and_custom_resources_count() {
        let none = ResourceSet::cpus(0.0);
        let busy = peer("a", 0.0, 4.0, 3);
        assert_eq!(
            place(&demand(2.0), &none, &none, &[busy], &[], 2),
            Placement::Wait
        );
        let gpu = Demand {
            resources: ResourceSet::cpus(1.0).with("gpu", 1.0),
            ..demand(1.0)
        };
        let mut with_gpu = peer("g", 1.0, 1.0, 0);
        with_gpu.free = with_gpu.free.with("gpu", 1.0);
        with_gpu.total = with_gpu.total.with("gpu", 1.0);
        let cpu_only = peer("c", 8.0, 8.0, 0);
        assert_eq!(
            place(&gpu, &none, &none, &[cpu_only.clone(), with_gpu], &[], 2),
            Placement::Spill("g")
        );
        assert_eq!(
            place(&gpu, &none, &none, &[cpu_only], &[], 2),
            Placement::Infeasible
        );
        // 64 CPUs: nobody, ever.
        assert_eq!(
            place(
                &demand(64.0),
                &none,
                &ResourceSet::cpus(2.0),
                &[peer("a", 4.0, 4.0, 0)],
                &[],
                2
            ),
            Placement::Infeasible
        );
    }

    #[test]
    fn infeasible_only_after_the_grace() {
        let t0 = Instant::now();
        let mut inf = Infeasibility::new(Duration::from_secs(2));
        let task = TaskId::new(shoal_protocol::ClientId(1), 1);
        assert!(!inf.infeasible(task, t0));
        assert!(!inf.infeasible(task, t0 + Duration::from_secs(1)));
        assert!(inf.infeasible(task, t0 + Duration::from_secs(2)));
        inf.forget(&task);
        assert!(!inf.infeasible(task, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn holders_are_asked_least_busy_first() {
        assert_eq!(
            order_holders(&[("a", 5), ("b", 0), ("c", 2)]),
            vec!["b", "c", "a"]
        );
    }
}
