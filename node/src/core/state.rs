//! The state API in the core: the rows of what this node holds first-hand (the tasks that
//! wait, run or ended here, its actors, objects, workers and itself), the record of tasks
//! that ended here, and the questions it asks every other peer on behalf of a local process
//! (`shoal list|summary|get`).
//!
//! A task is told by one peer only, the one where it waits, runs or ran: a node that sent a
//! task to a peer leaves it to that peer, so the rows of the peers add up without counting a
//! task twice. A question goes to every peer the node knows to be alive; the answer goes back
//! when all have answered, when one is lost (named as missing), or at the asker's deadline
//! (those that did not answer are named as missing): a partial answer says so.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use shoal_protocol::mesh::{PeerKey, PeerMsg};
use shoal_protocol::state::{
    self, ActorRow, ObjectRow, PeerRow, Row, StateAnswer, StateError, StateKind, StateQuery,
    StateRows, SummaryRow, TaskRow, TaskRowKind, TaskState, TaskTimes, WorkerRow,
};
use shoal_protocol::{ActorId, ClientId, ResourceSet, Role, TaskId, TaskKind, ToClient};

use super::actors::ActorState;
use super::tasks::TaskEntry;
use super::{ConnId, NodeCore};

/// Tasks that ended here kept for the state API (the oldest are forgotten first).
pub(crate) const HISTORY: usize = 10_000;
/// Questions to the mesh in flight at once; more are refused.
pub(crate) const MAX_QUESTIONS: usize = 64;
/// The shortest and longest a question waits for the peers.
const MIN_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The window of [`PeerRow::tasks_per_s`].
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A task that ended here.
#[derive(Debug)]
pub(crate) struct Ended {
    task_id: TaskId,
    function: String,
    kind: TaskRowKind,
    actor_id: Option<ActorId>,
    owner: ClientId,
    worker_pid: Option<u32>,
    resources: ResourceSet,
    error: Option<String>,
    arrived: Instant,
    ready: Option<Instant>,
    started: Option<Instant>,
    ended: Instant,
}

/// The tasks that ended here, oldest first, at most [`HISTORY`].
#[derive(Debug, Default)]
pub(crate) struct History {
    ended: VecDeque<Ended>,
}

impl History {
    fn push(&mut self, e: Ended) {
        if self.ended.len() == HISTORY {
            self.ended.pop_front();
        }
        self.ended.push_back(e);
    }

    /// Tasks that ended in the last `window` before `now`.
    fn ended_within(&self, now: Instant, window: Duration) -> usize {
        self.ended
            .iter()
            .rev()
            .take_while(|e| now.saturating_duration_since(e.ended) <= window)
            .count()
    }
}

/// A question to the mesh asked for a local process.
#[derive(Debug)]
struct Question {
    conn: ConnId,
    request: u64,
    query: StateQuery,
    asked: Instant,
    deadline: Instant,
    /// Peers that have not answered.
    waiting: BTreeSet<PeerKey>,
    /// Peers lost while they were asked.
    lost: Vec<PeerKey>,
    /// The answers, each with when it came; this node's own first.
    answers: Vec<(Instant, StateAnswer)>,
}

/// Warnings to programs whose work waits long for resources.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    /// When the waiting work is looked at next (while there is some).
    pub(crate) next_check: Option<Instant>,
    /// When each program was last warned about each demand.
    warned: HashMap<(ConnId, ResourceSet), Instant>,
}

/// How often waiting work is looked at.
pub(crate) const WAIT_CHECK: Duration = Duration::from_secs(1);
/// A program is warned about one demand at most this often.
const WARN_AGAIN: Duration = Duration::from_secs(60);

/// Questions to the mesh in flight, by number.
#[derive(Debug, Default)]
pub(crate) struct Questions {
    pending: HashMap<u64, Question>,
    next: u64,
}

impl Questions {
    /// The earliest deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending.values().map(|q| q.deadline).min()
    }
}

fn ago(now: Instant, t: Instant) -> u64 {
    now.saturating_duration_since(t).as_micros() as u64
}

fn row_kind(kind: &TaskKind) -> (TaskRowKind, Option<ActorId>) {
    match kind {
        TaskKind::Function => (TaskRowKind::Function, None),
        TaskKind::CreateActor(c) => (TaskRowKind::ActorCreation, Some(c.actor_id)),
        TaskKind::ActorMethod { actor, .. } => (TaskRowKind::ActorCall, Some(*actor)),
    }
}

impl Ended {
    fn row(&self, now: Instant, node: &str) -> TaskRow {
        TaskRow {
            task_id: self.task_id,
            function: self.function.clone(),
            kind: self.kind,
            actor_id: self.actor_id,
            state: if self.error.is_some() {
                TaskState::Failed
            } else {
                TaskState::Finished
            },
            node: node.to_string(),
            owner: self.owner,
            worker_pid: self.worker_pid,
            resources: self.resources.clone(),
            reason: None,
            error: self.error.clone(),
            times: TaskTimes {
                arrived_ago_us: ago(now, self.arrived),
                ready_ago_us: self.ready.map(|t| ago(now, t)),
                started_ago_us: self.started.map(|t| ago(now, t)),
                ended_ago_us: Some(ago(now, self.ended)),
            },
        }
    }
}

/// Rows that pass a query, cut to its limit, with how many passed (and their summary).
struct Collected {
    rows: StateRows,
    matched: u64,
    summary: Vec<SummaryRow>,
}

impl NodeCore {
    /// This node's name in rows: its peer id, or outside a mesh its node id.
    pub(super) fn node_name(&self) -> String {
        self.me
            .map_or_else(|| self.node_id.to_hex(), |p| p.to_string())
    }

    /// Records that `task` ended here at `now` (`error` if it failed), once.
    pub(super) fn record_end(&mut self, now: Instant, task: TaskId, error: Option<String>) {
        let Some(e) = self.tasks.get_mut(&task) else {
            return;
        };
        if e.recorded {
            return;
        }
        e.recorded = true;
        let (kind, actor_id) = row_kind(&e.spec.kind);
        let ended = Ended {
            task_id: task,
            function: e.spec.function.clone(),
            kind,
            actor_id,
            owner: e.spec.owner,
            worker_pid: e.worker_pid,
            resources: e.spec.resources.clone(),
            error,
            arrived: e.arrived,
            ready: e.ready,
            started: e.started,
            ended: now,
        };
        self.history.push(ended);
    }

    /// Looks at the local programs' work that waits for resources: a program whose tasks or
    /// actors waited longer than `wait_warning` is warned (once a minute per demand), with
    /// why, as Ray's autoscaler warns.
    pub(super) fn check_waits(&mut self, now: Instant) {
        let threshold = self.config.wait_warning;
        // (tasks, actors, longest wait) per program and demand.
        let mut groups: HashMap<(ConnId, ResourceSet), (u64, u64, Duration)> = HashMap::new();
        for (id, e) in self.tasks.iter() {
            let super::Party::Proc(conn) = e.owner else {
                continue;
            };
            let waited = now.saturating_duration_since(e.arrived);
            if waited < threshold
                || e.recorded
                || e.missing > 0
                || e.started.is_some()
                || self.spill.spilled_to(id).is_some()
            {
                continue;
            }
            let actor = match &e.spec.kind {
                TaskKind::Function => false,
                TaskKind::CreateActor(c) => match self.actors.get(&c.actor_id) {
                    Some(a) if !matches!(a.state, ActorState::Pending) => continue,
                    None if self.directory.placement(&c.actor_id).is_some() => continue,
                    _ => true,
                },
                TaskKind::ActorMethod { .. } => continue,
            };
            let g = groups.entry((conn, e.spec.resources.clone())).or_default();
            if actor {
                g.1 += 1;
            } else {
                g.0 += 1;
            }
            g.2 = g.2.max(waited);
        }
        self.waits
            .warned
            .retain(|_, at| now.saturating_duration_since(*at) < WARN_AGAIN);
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by(|a, b| a.0 .0.cmp(&b.0 .0).then(b.1 .2.cmp(&a.1 .2)));
        for ((conn, demand), (tasks, actors, longest)) in groups {
            if self.waits.warned.contains_key(&(conn, demand.clone())) {
                continue;
            }
            let what = match (tasks, actors) {
                (t, 0) => format!("{t} task{}", if t == 1 { "" } else { "s" }),
                (0, a) => format!("{a} actor{}", if a == 1 { "" } else { "s" }),
                (t, a) => format!("{t} tasks and {a} actors"),
            };
            let message = format!(
                "{what} waited {}s for resources: each needs {demand}; {}. They start when                  resources free up, or when a peer that has them joins (`shoal list tasks                  --filter state=pending_node_assignment` shows them).",
                longest.as_secs(),
                self.why_nowhere(&demand)
            );
            tracing::info!(conn, %demand, tasks, actors, "warning a program of work waiting for resources");
            self.tell_proc(conn, ToClient::Warning { message });
            self.waits.warned.insert((conn, demand), now);
        }
    }

    /// Why no node of the mesh runs work of `demand` now, as this node sees it.
    fn why_nowhere(&self, demand: &ResourceSet) -> String {
        let peers = self.spill.peers.values();
        let anywhere = self.sched.total().contains(demand)
            || self
                .spill
                .peers
                .values()
                .any(|p| p.report.total.contains(demand));
        let n = peers.count() + 1;
        let nodes = if n == 1 {
            "this node".to_string()
        } else {
            format!("the {n} peers")
        };
        if anywhere {
            format!("none of {nodes} has that free now (running tasks and actors hold it)")
        } else {
            format!("none of {nodes} has that much")
        }
    }

    /// A process asks the state of the mesh.
    pub(super) fn state_asked(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: u64,
        query: StateQuery,
        timeout_ms: u32,
        local: bool,
    ) {
        let refuse = |error: StateError| ToClient::State {
            request,
            reply: Err(error),
        };
        if self
            .procs
            .get(&conn)
            .is_some_and(|p| matches!(p.role, Role::Worker { .. }))
        {
            tracing::warn!(conn, "a worker asked the state of the mesh; refused");
            let e = StateError::NotAllowed("workers do not ask the state of the mesh".into());
            self.tell_proc(conn, refuse(e));
            return;
        }
        if let Err(e) = query.check() {
            tracing::debug!(conn, error = %e, "bad state query");
            self.tell_proc(conn, refuse(e));
            return;
        }
        if self.questions.pending.len() >= MAX_QUESTIONS {
            let e = StateError::Busy(format!("{MAX_QUESTIONS} questions to the mesh in flight"));
            self.tell_proc(conn, refuse(e));
            return;
        }
        let own = self.state_answer(now, &query);
        let waiting: BTreeSet<PeerKey> = if local {
            BTreeSet::new()
        } else {
            self.spill
                .peers
                .keys()
                .filter(|p| self.spill.alive(p))
                .copied()
                .collect()
        };
        let wait = Duration::from_millis(timeout_ms.into()).clamp(MIN_WAIT, MAX_WAIT);
        let id = self.questions.next;
        self.questions.next += 1;
        for peer in &waiting {
            let q = query.clone();
            self.tell_peer(*peer, PeerMsg::StateQuery { query: id, q });
        }
        self.questions.pending.insert(
            id,
            Question {
                conn,
                request,
                query,
                asked: now,
                deadline: now + wait,
                waiting,
                lost: Vec::new(),
                answers: vec![(now, own)],
            },
        );
        self.maybe_answer(now, id);
    }

    /// A peer asks what this node holds.
    pub(super) fn state_queried(&mut self, now: Instant, peer: PeerKey, query: u64, q: StateQuery) {
        let answer = match q.check() {
            Ok(()) => Ok(Box::new(self.state_answer(now, &q))),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad state query from a peer");
                Err(e)
            }
        };
        self.tell_peer(peer, PeerMsg::StateAnswer { query, answer });
    }

    /// A peer answered a question.
    pub(super) fn state_answered(
        &mut self,
        now: Instant,
        peer: PeerKey,
        query: u64,
        answer: Result<Box<StateAnswer>, StateError>,
    ) {
        let Some(q) = self.questions.pending.get_mut(&query) else {
            return;
        };
        if !q.waiting.remove(&peer) {
            tracing::debug!(%peer, query, "a state answer not asked of that peer; ignored");
            return;
        }
        match answer {
            Ok(mut a) if a.rows.kind() == q.query.kind => {
                // The peer names itself as the link says, whatever it wrote.
                a.node = peer.to_string();
                q.answers.push((now, *a));
            }
            Ok(_) => {
                tracing::warn!(%peer, query, "a state answer of the wrong kind; ignored");
                q.lost.push(peer);
            }
            Err(e) => {
                tracing::warn!(%peer, query, error = %e, "a peer could not answer a state query");
                q.lost.push(peer);
            }
        }
        self.maybe_answer(now, query);
    }

    /// A peer is lost: the questions waiting for it go on without it.
    pub(super) fn state_peer_lost(&mut self, now: Instant, peer: PeerKey) {
        let ids: Vec<u64> = self
            .questions
            .pending
            .iter_mut()
            .filter_map(|(id, q)| {
                q.waiting.remove(&peer).then(|| {
                    q.lost.push(peer);
                    *id
                })
            })
            .collect();
        for id in ids {
            self.maybe_answer(now, id);
        }
    }

    /// The deadline of some questions passed: they are answered with what came.
    pub(super) fn state_deadline(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .questions
            .pending
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.answer_question(now, id);
        }
    }

    /// A local process is gone: its questions are dropped.
    pub(super) fn state_detached(&mut self, conn: ConnId) {
        self.questions.pending.retain(|_, q| q.conn != conn);
    }

    fn maybe_answer(&mut self, now: Instant, id: u64) {
        if self
            .questions
            .pending
            .get(&id)
            .is_some_and(|q| q.waiting.is_empty())
        {
            self.answer_question(now, id);
        }
    }

    fn answer_question(&mut self, now: Instant, id: u64) {
        let Some(q) = self.questions.pending.remove(&id) else {
            return;
        };
        let answers: Vec<StateAnswer> = q
            .answers
            .into_iter()
            .map(|(at, mut a)| {
                a.age(ago(now, at));
                a
            })
            .collect();
        let mut missing: Vec<String> = q
            .lost
            .iter()
            .chain(q.waiting.iter())
            .map(|p| p.to_string())
            .collect();
        missing.sort();
        if !missing.is_empty() {
            tracing::info!(
                query = id,
                missing = missing.len(),
                waited_ms = now.saturating_duration_since(q.asked).as_millis() as u64,
                "a state query is answered without some peers"
            );
        }
        let reply = state::merge(&q.query, answers, missing);
        if self.procs.contains_key(&q.conn) {
            self.tell_proc(
                q.conn,
                ToClient::State {
                    request: q.request,
                    reply: Ok(Box::new(reply)),
                },
            );
        }
    }

    /// This node's answer to `query` at `now`.
    pub(crate) fn state_answer(&self, now: Instant, query: &StateQuery) -> StateAnswer {
        let node = self.node_name();
        let c = match query.kind {
            StateKind::Tasks => collect(query, self.task_rows(now, &node), |r| {
                (r.function.clone(), r.state.name().to_string(), 0)
            }),
            StateKind::Actors => collect(query, self.actor_rows(&node), |r| {
                (r.class.clone(), r.state.clone(), 0)
            }),
            StateKind::Objects => collect(query, self.object_rows(&node), |r| {
                (r.location.clone(), String::new(), r.size)
            }),
            StateKind::Peers => collect(query, vec![self.peer_row(now, node.clone())], |_| {
                (String::new(), String::new(), 0)
            }),
            StateKind::Workers => collect(query, self.worker_rows(&node), |_| {
                (String::new(), String::new(), 0)
            }),
            StateKind::Logs => collect(query, self.log_rows(now), |_| {
                (String::new(), String::new(), 0)
            }),
            StateKind::Groups => collect(query, self.groups.rows(now, &node), |_| {
                (String::new(), String::new(), 0)
            }),
        };
        StateAnswer {
            node,
            rows: c.rows,
            matched: c.matched,
            summary: c.summary,
        }
    }

    /// Every task told here: those waiting or running here, then those that ended here.
    fn task_rows(&self, now: Instant, node: &str) -> Vec<TaskRow> {
        let running: HashSet<TaskId> = self
            .sched
            .running_tasks()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let waiting_peer: HashSet<TaskId> = self.spill.remote_wait.iter().copied().collect();
        let starting: HashSet<TaskId> = self.sched.waiting_for_start().into_iter().collect();
        let mut rows = Vec::with_capacity(self.tasks.len() + self.history.ended.len());
        for (id, e) in self.tasks.iter() {
            if e.recorded || self.spill.spilled_to(id).is_some() {
                // Ended (its record follows), or told by the peer it was sent to.
                continue;
            }
            let Some((state, mut reason)) = self.live_state(id, e, &running, &waiting_peer) else {
                continue;
            };
            if starting.contains(id) {
                reason = Some("waiting for its worker to start".into());
            }
            let (kind, actor_id) = row_kind(&e.spec.kind);
            rows.push(TaskRow {
                task_id: *id,
                function: e.spec.function.clone(),
                kind,
                actor_id,
                state,
                node: node.to_string(),
                owner: e.spec.owner,
                worker_pid: e.worker_pid,
                resources: e.spec.resources.clone(),
                reason,
                error: None,
                times: TaskTimes {
                    arrived_ago_us: ago(now, e.arrived),
                    ready_ago_us: e.ready.map(|t| ago(now, t)),
                    started_ago_us: e.started.map(|t| ago(now, t)),
                    ended_ago_us: None,
                },
            });
        }
        rows.extend(self.history.ended.iter().rev().map(|e| e.row(now, node)));
        rows
    }

    /// Where a task held here is, and why it waits; `None` for one told elsewhere (an
    /// actor's creation placed at a peer).
    fn live_state(
        &self,
        id: &TaskId,
        e: &TaskEntry,
        running: &HashSet<TaskId>,
        waiting_peer: &HashSet<TaskId>,
    ) -> Option<(TaskState, Option<String>)> {
        let demand = &e.spec.resources;
        if e.missing > 0 {
            let reason = if self.checking_name(id) {
                "asking the mesh whether its name is taken".to_string()
            } else {
                format!("{} arguments not ready", e.missing)
            };
            return Some((TaskState::PendingArgsAvail, Some(reason)));
        }
        match &e.spec.kind {
            TaskKind::CreateActor(c) => {
                let Some(a) = self.actors.get(&c.actor_id) else {
                    if self.directory.placement(&c.actor_id).is_some() {
                        return None;
                    }
                    let reason = format!("waiting for a peer with {demand} free");
                    return Some((TaskState::PendingNodeAssignment, Some(reason)));
                };
                match a.state {
                    ActorState::Alive { .. } => Some((TaskState::Running, None)),
                    ActorState::Pending => {
                        Some((TaskState::PendingNodeAssignment, self.why_waiting(demand)))
                    }
                    // Its end is recorded with the actor's.
                    ActorState::Dead(_) => None,
                }
            }
            TaskKind::ActorMethod { actor, .. } => {
                if e.sent {
                    Some((TaskState::Running, None))
                } else if self.actors.get(actor).is_some() {
                    let reason = "behind the actor's other calls".to_string();
                    Some((TaskState::PendingActor, Some(reason)))
                } else {
                    let reason = "finding its actor".to_string();
                    Some((TaskState::PendingNodeAssignment, Some(reason)))
                }
            }
            TaskKind::Function => {
                if running.contains(id) {
                    Some((TaskState::Running, None))
                } else if e.started.is_some() {
                    Some((TaskState::SubmittedToWorker, None))
                } else if waiting_peer.contains(id) {
                    let reason = if e.spec.wait_for_resources {
                        format!("no peer has {demand}: waiting for one that does")
                    } else {
                        format!("waiting for a peer with {demand} free")
                    };
                    Some((TaskState::PendingNodeAssignment, Some(reason)))
                } else {
                    Some((TaskState::PendingNodeAssignment, self.why_waiting(demand)))
                }
            }
        }
    }

    /// Why a task that may run here waits.
    fn why_waiting(&self, demand: &ResourceSet) -> Option<String> {
        let (total, free) = (self.sched.total(), self.sched.free());
        Some(if !total.contains(demand) {
            format!("needs {demand}; this node has {total}")
        } else if !free.contains(demand) {
            format!("needs {demand}; {free} free")
        } else {
            "waiting for a worker".to_string()
        })
    }

    fn actor_rows(&self, node: &str) -> Vec<ActorRow> {
        // Creations of this node's programs waiting here for a peer with room: no peer
        // hosts them yet, so they are told here.
        let unplaced = self.tasks.values().filter_map(|e| match &e.spec.kind {
            TaskKind::CreateActor(c)
                if !e.recorded
                    && self.actors.get(&c.actor_id).is_none()
                    && self.directory.placement(&c.actor_id).is_none() =>
            {
                Some(ActorRow {
                    actor_id: c.actor_id,
                    class: e.spec.function.clone(),
                    name: c.name.as_deref().map(shoal_protocol::display_name),
                    state: "PENDING_CREATION".into(),
                    node: node.to_string(),
                    owner: e.spec.owner,
                    pid: None,
                    restarts: 0,
                    calls_pending: 0,
                    calls_done: 0,
                    resources: e.spec.resources.clone(),
                    reason: Some(format!(
                        "needs {}; {}",
                        e.spec.resources,
                        self.why_nowhere(&e.spec.resources)
                    )),
                })
            }
            _ => None,
        });
        let mut rows: Vec<ActorRow> = unplaced.collect();
        rows.extend(self.actors.iter().map(|(id, a)| {
            let (state, reason) = match &a.state {
                ActorState::Pending if a.incarnation > 0 => ("RESTARTING", None),
                ActorState::Pending => (
                    "PENDING_CREATION",
                    self.tasks
                        .get(&a.create_task)
                        .and_then(|e| self.why_waiting(&e.spec.resources)),
                ),
                ActorState::Alive { started: false, .. } => ("STARTING", None),
                ActorState::Alive { started: true, .. } => ("ALIVE", None),
                ActorState::Dead(e) => ("DEAD", Some(e.to_string())),
            };
            ActorRow {
                actor_id: *id,
                class: a.class.clone(),
                name: a.spec.name.as_deref().map(shoal_protocol::display_name),
                state: state.to_string(),
                node: node.to_string(),
                owner: a.owner,
                pid: (a.pid != 0 && !a.is_dead()).then_some(a.pid),
                restarts: a.incarnation,
                calls_pending: (a.queued() + a.inflight()) as u64,
                calls_done: a.calls_done,
                resources: self
                    .tasks
                    .get(&a.create_task)
                    .map(|e| e.spec.resources.clone())
                    .unwrap_or_default(),
                reason,
            }
        }));
        rows
    }

    fn object_rows(&self, node: &str) -> Vec<ObjectRow> {
        self.object_list()
            .into_iter()
            .map(|o| ObjectRow {
                object_id: o.id,
                node: node.to_string(),
                size: o.size,
                owner: o.owner,
                holders: o.holders,
                pinned_by: o.pinned_by,
                location: o.location,
            })
            .collect()
    }

    fn worker_rows(&self, node: &str) -> Vec<WorkerRow> {
        self.sched
            .worker_status()
            .into_iter()
            .map(|w| WorkerRow {
                worker_id: w.id,
                node: node.to_string(),
                pid: (w.pid != 0).then_some(w.pid),
                binary: w.binary,
                state: w.state,
                tasks_done: w.tasks_done,
            })
            .collect()
    }

    fn peer_row(&self, now: Instant, node: String) -> PeerRow {
        let index = &self.store.index;
        let recent = self.history.ended_within(now, RATE_WINDOW) as u64;
        PeerRow {
            node,
            target: self.spill.target.clone(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            total: self.sched.total().clone(),
            free: self.sched.free().clone(),
            queued: self.sched.queued() as u64,
            running: self.sched.running() as u64,
            finished: self.sched.finished(),
            tasks_per_s: recent / RATE_WINDOW.as_secs(),
            workers: self.sched.worker_ids().len() as u64,
            actors: self.actors.iter().filter(|(_, a)| !a.is_dead()).count() as u64,
            store_capacity: index.capacity(),
            store_used: index.used(),
            spilled_bytes: index.spilled_bytes(),
        }
    }
}

/// The rows of `all` that pass `query`: counted, summarized by `group` when it asks for a
/// summary (no rows then), else ordered and cut to its limit.
fn collect<R: Row>(
    query: &StateQuery,
    all: Vec<R>,
    group: impl Fn(&R) -> (String, String, u64),
) -> Collected
where
    Vec<R>: Into<StateRows>,
{
    let passed: Vec<R> = all.into_iter().filter(|r| query.matches(r)).collect();
    let matched = passed.len() as u64;
    if query.summary {
        let counts: Vec<SummaryRow> = passed
            .iter()
            .map(|r| {
                let (group, state, bytes) = group(r);
                SummaryRow {
                    group,
                    state,
                    count: 1,
                    bytes,
                }
            })
            .collect();
        return Collected {
            rows: StateRows::empty(query.kind),
            matched,
            summary: state::summarize(&counts),
        };
    }
    let mut rows: StateRows = passed.into();
    rows.order_and_cut(query.limit as usize);
    Collected {
        rows,
        matched,
        summary: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shoal_protocol::state::{StateError, StateKind, StateQuery, StateRows, TaskState};
    use shoal_protocol::{
        Arg, ClientId, Hello, ResourceSet, Role, TaskId, TaskKind, TaskSpec, ToClient, ToNode,
        MAGIC, PROTOCOL_VERSION,
    };

    use crate::core::harness::{from, node, replies, send, BINARY};
    use crate::core::{Input, Output};

    fn ask(query: StateQuery) -> ToNode {
        ToNode::State {
            request: 9,
            query,
            timeout_ms: 1_000,
            local: false,
        }
    }

    fn reply(msgs: Vec<ToClient>) -> Result<Box<shoal_protocol::state::StateReply>, StateError> {
        msgs.into_iter()
            .find_map(|m| match m {
                ToClient::State { request: 9, reply } => Some(reply),
                _ => None,
            })
            .expect("an answer")
    }

    fn spec(seq: u64, cpus: f64) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::new(ClientId(7), seq),
            function: "f".into(),
            binary: BINARY,
            args: vec![Arg::Value(vec![1])],
            resources: ResourceSet::cpus(cpus),
            max_retries: 0,
            owner: ClientId(7),
            kind: TaskKind::Function,
            nested: vec![],
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            strategy: Default::default(),
            label_selector: Vec::new(),
            stream: None,
            env: Vec::new(),
        }
    }

    /// The worker the core asked for.
    fn spawned(out: &[Output]) -> u64 {
        out.iter()
            .find_map(|o| match o {
                Output::SpawnWorker { worker, .. } => Some(*worker),
                _ => None,
            })
            .expect("a worker is started")
    }

    #[test]
    fn a_node_alone_answers_at_once_with_why_its_tasks_wait() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let out = send(&mut core, now, ToNode::Submit(Box::new(spec(1, 1.0))));
        spawned(&out);
        send(&mut core, now, ToNode::Submit(Box::new(spec(2, 1.0))));
        let impossible = send(&mut core, now, ToNode::Submit(Box::new(spec(3, 2.0))));
        assert!(!impossible.is_empty());
        let later = now + Duration::from_millis(5);
        let r = reply(replies(&send(
            &mut core,
            later,
            ask(StateQuery::new(StateKind::Tasks)),
        )))
        .unwrap();
        assert!(!r.partial());
        assert_eq!(r.answered, vec![core.node_id().to_hex()]);
        let StateRows::Tasks(rows) = &r.rows else {
            panic!("tasks")
        };
        let by_seq = |seq| rows.iter().find(|t| t.task_id.seq() == seq).unwrap();
        // The first waits for its worker to start, the second for the CPU the first holds;
        // a task no node can run failed (a node alone has no peer to wait for).
        assert_eq!(by_seq(1).state, TaskState::PendingNodeAssignment);
        assert_eq!(
            by_seq(1).reason.as_deref(),
            Some("waiting for its worker to start")
        );
        assert_eq!(by_seq(2).state, TaskState::PendingNodeAssignment);
        let reason = by_seq(2).reason.as_deref().unwrap();
        assert!(reason.contains("needs CPU=1"), "{reason}");
        assert_eq!(by_seq(3).state, TaskState::Failed);
        assert!(by_seq(3).error.is_some());
        assert_eq!(by_seq(1).times.arrived_ago_us, 5_000);
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn bad_queries_and_workers_are_refused() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let mut q = StateQuery::new(StateKind::Tasks);
        q.filters = vec!["colour=red".parse().unwrap()];
        let e = reply(replies(&send(&mut core, now, ask(q)))).unwrap_err();
        assert!(matches!(e, StateError::BadQuery(_)), "{e}");
        let worker = spawned(&send(
            &mut core,
            now,
            ToNode::Submit(Box::new(spec(1, 1.0))),
        ));
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Worker { worker_id: worker },
            pid: 50,
            client: ClientId(50),
            binary: None,
        };
        core.handle(now, Input::Attached { conn: 5, hello });
        let out = from(&mut core, now, 5, ask(StateQuery::new(StateKind::Tasks)));
        let msgs = crate::core::harness::to(&out, 5);
        let e = reply(msgs).unwrap_err();
        assert!(matches!(e, StateError::NotAllowed(_)), "{e}");
    }
}
