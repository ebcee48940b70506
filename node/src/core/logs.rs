//! What tasks and actors write: each line a worker writes is told to the program that
//! submitted the task it runs (or created the actor it hosts), wherever that program is,
//! and kept here for `shoal logs` (the last [`LOG_LINES`], [`LOG_BYTES`] at most).
//!
//! A peer's lines for one of this node's programs are taken only from a peer this node sent
//! that program's work to (one of the last 4,096 such pairs): no other peer can write into a
//! program's output.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use shoal_protocol::mesh::{PeerKey, PeerMsg};
use shoal_protocol::state::{LogLine, LogRow, Stream};
use shoal_protocol::{ClientId, Role, TaskId, ToClient};

use super::sched::WorkerId;
use super::{NodeCore, Party};

/// Lines kept at most.
pub(crate) const LOG_LINES: usize = 10_000;
/// Bytes of lines kept at most.
pub(crate) const LOG_BYTES: usize = 4 << 20;
/// Nested tasks whose lines are passed up to their driver, at most.
const MAX_HOPS: u32 = 8;

/// The lines written here, oldest first, and what each worker ran last.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    lines: VecDeque<(u64, Instant, LogLine)>,
    bytes: usize,
    next_seq: u64,
    /// The task each worker was last handed: lines it wrote just before its task ended can
    /// be read after the end is known (they come on another pipe), and still belong to it.
    last: HashMap<WorkerId, Activity>,
    /// The peers this node sent work of each of its programs to, the most recent
    /// [`SOURCES`]: the only ones whose lines for that program are taken.
    sources: Option<lru::LruCache<(PeerKey, ClientId), ()>>,
}

/// (peer, program) pairs remembered as sources of lines.
const SOURCES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(n) => n,
    None => unreachable!(),
};

/// A task a worker was handed: its function, id, and for whom.
#[derive(Debug, Clone)]
struct Activity {
    function: String,
    task: TaskId,
    owner: (Party, ClientId),
}

impl Logs {
    fn push(&mut self, at: Instant, line: LogLine) {
        self.next_seq += 1;
        self.bytes += line.text.len();
        self.lines.push_back((self.next_seq, at, line));
        while self.lines.len() > LOG_LINES || self.bytes > LOG_BYTES {
            match self.lines.pop_front() {
                Some((_, _, old)) => self.bytes -= old.text.len(),
                None => break,
            }
        }
    }
}

impl NodeCore {
    /// What worker `worker` runs now: its function or class, task, actor, and for whom
    /// (the party that sent the work here and the program that submitted it).
    #[allow(clippy::type_complexity)]
    fn worker_activity(
        &self,
        worker: WorkerId,
    ) -> (
        String,
        Option<shoal_protocol::TaskId>,
        Option<shoal_protocol::ActorId>,
        Option<(Party, ClientId)>,
    ) {
        if let Some(actor) = self.actors.by_worker(worker) {
            let a = self.actors.get(&actor);
            let class = a.map(|a| a.class.clone()).unwrap_or_default();
            let owner = a
                .and_then(|a| self.tasks.get(&a.create_task))
                .map(|e| (e.owner, e.spec.owner));
            return (class, None, Some(actor), owner);
        }
        let running = self
            .sched
            .running_tasks()
            .into_iter()
            .find(|(w, _)| *w == worker);
        match running.and_then(|(_, t)| Some((t, self.tasks.get(&t)?))) {
            Some((t, e)) => (
                e.spec.function.clone(),
                Some(t),
                None,
                Some((e.owner, e.spec.owner)),
            ),
            None => match self.logs.last.get(&worker) {
                Some(a) => (a.function.clone(), Some(a.task), None, Some(a.owner)),
                None => (String::new(), None, None, None),
            },
        }
    }

    /// `worker` was handed `task` (its lines are the task's until it is handed another).
    pub(super) fn worker_ran(&mut self, worker: WorkerId, task: TaskId) {
        let Some(e) = self.tasks.get(&task) else {
            return;
        };
        let activity = Activity {
            function: e.spec.function.clone(),
            task,
            owner: (e.owner, e.spec.owner),
        };
        self.logs.last.insert(worker, activity);
    }

    /// Work of program `owner` was sent to `peer`: its lines from there are taken.
    pub(super) fn work_sent(&mut self, peer: PeerKey, owner: ClientId) {
        self.logs
            .sources
            .get_or_insert_with(|| lru::LruCache::new(SOURCES))
            .put((peer, owner), ());
    }

    /// `worker` is gone.
    pub(super) fn worker_gone(&mut self, worker: WorkerId) {
        self.logs.last.remove(&worker);
    }

    /// Worker `worker` wrote `lines` on `stream`.
    pub(super) fn worker_output(
        &mut self,
        now: Instant,
        worker: WorkerId,
        stream: Stream,
        lines: Vec<String>,
    ) {
        let pid = self.worker_pid(worker).unwrap_or(0);
        let (function, task_id, actor_id, owner) = self.worker_activity(worker);
        let node = self.node_name();
        let lines: Vec<LogLine> = lines
            .into_iter()
            .map(|text| LogLine {
                node: node.clone(),
                function: function.clone(),
                pid,
                task_id,
                actor_id,
                stream,
                text,
            })
            .collect();
        for l in &lines {
            self.logs.push(now, l.clone());
        }
        if let Some((party, client)) = owner {
            self.route_logs(party, client, lines, 0);
        }
    }

    /// Sends lines toward the driver of program `client`, reached through `party`: a local
    /// driver gets them; a local worker's (a nested task's) go on to whoever it works for;
    /// a peer's go to that peer.
    fn route_logs(&mut self, party: Party, client: ClientId, lines: Vec<LogLine>, depth: u32) {
        match party {
            Party::Peer(peer) => self.tell_peer(
                peer,
                PeerMsg::Log {
                    owner: client,
                    lines,
                },
            ),
            Party::Proc(conn) => {
                let Some(p) = self.procs.get(&conn) else {
                    return;
                };
                let (driver, worker) = (matches!(p.role, Role::Driver), p.worker);
                match (driver, worker) {
                    (true, _) => self.tell_proc(conn, ToClient::Log { lines }),
                    (false, Some(w)) if depth < MAX_HOPS => {
                        if let (_, _, _, Some((up, up_client))) = self.worker_activity(w) {
                            self.route_logs(up, up_client, lines, depth + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A peer sends lines for this node's program `owner`: taken only from a peer that runs
    /// work of that program (a task sent there, or an actor placed there).
    pub(super) fn peer_logs(&mut self, peer: PeerKey, owner: ClientId, lines: Vec<LogLine>) {
        let Some(conn) = self
            .procs
            .iter()
            .find(|(_, p)| p.client == owner)
            .map(|(c, _)| *c)
        else {
            // The program is gone.
            return;
        };
        let works_there = self
            .logs
            .sources
            .as_ref()
            .is_some_and(|s| s.contains(&(peer, owner)));
        if !works_there {
            tracing::debug!(%peer, owner = %owner, lines = lines.len(), "output from a peer that runs nothing of that program; dropped");
            return;
        }
        // The peer names itself as the link says.
        let node = peer.to_string();
        let lines = lines
            .into_iter()
            .map(|mut l| {
                l.node.clone_from(&node);
                l
            })
            .collect();
        self.route_logs(Party::Proc(conn), owner, lines, 0);
    }

    /// The lines kept here, as rows at `now`.
    pub(super) fn log_rows(&self, now: Instant) -> Vec<LogRow> {
        self.logs
            .lines
            .iter()
            .map(|(seq, at, line)| LogRow {
                line: line.clone(),
                seq: *seq,
                at_ago_us: now.saturating_duration_since(*at).as_micros() as u64,
            })
            .collect()
    }
}
