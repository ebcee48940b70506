//! Cancelling tasks (`shoal::cancel`, Ray's `ray.cancel`).
//!
//! Only the party that submitted a task may cancel it: a local process for its own tasks, a
//! peer for the tasks it sent here. What happens depends on where the task is:
//!
//! - **Not started** (waiting for arguments, in the scheduler's queue, waiting for a peer
//!   with room, queued behind its actor's other calls): it is dropped, and its result fails
//!   with [`TaskError::Cancelled`].
//! - **At a worker** (a function task running, or sent to a worker and queued there): its
//!   result fails at once; the worker is told, and does not start it, drops it at its next
//!   `.await` if it is `async`, or lets a blocking one see `shoal::is_cancelled()`. Its
//!   resources stay held until the worker reports its end. With `force`, a worker running it
//!   exits at once (the tasks queued behind it there run again elsewhere, at no cost).
//! - **An actor call at the actor's worker**: the worker is told, and answers: a call not
//!   begun or an `async` one dropped fails with `Cancelled`; a blocking method that runs is
//!   not interrupted (it may check `shoal::is_cancelled()`), and its result stands. `force`
//!   does not apply to actor calls (the SDK refuses it: it would kill the actor).
//! - **At a peer** (spilled there, or a call of an actor there): that peer is told, and
//!   answers with the result as usual.
//!
//! With `recursive`, the tasks a cancelled task submitted while it ran here (and theirs) are
//! cancelled too. A finished task is left alone.

use std::time::Instant;

use shoal_protocol::mesh::PeerMsg;
use shoal_protocol::{TaskError, TaskId, TaskKind, ToClient};

use super::actors::ActorState;
use super::rights::Refused;
use super::{NodeCore, Party};

impl NodeCore {
    /// `party` asks to cancel `task`.
    pub(super) fn cancel_request(
        &mut self,
        now: Instant,
        party: Party,
        task: TaskId,
        force: bool,
        recursive: bool,
    ) {
        let Some(owner) = self.tasks.get(&task).map(|e| e.owner) else {
            tracing::debug!(%party, task = %task, "cancel of a task not here (finished, or never seen)");
            return;
        };
        if owner != party {
            match party {
                Party::Peer(peer) => self.rights.refuse(now, peer, Refused::Cancel, task),
                Party::Proc(conn) => {
                    tracing::warn!(conn, task = %task, "a cancel of a task this process did not submit; refused")
                }
            }
            return;
        }
        self.metrics.tasks_cancelled += 1;
        let mut todo = vec![task];
        while let Some(t) = todo.pop() {
            if recursive {
                if let Some(children) = self.children.remove(&t) {
                    todo.extend(children.into_iter().rev());
                }
            }
            self.cancel_one(now, t, force, recursive);
        }
    }

    /// Cancels one task, wherever it is (see the module docs).
    fn cancel_one(&mut self, now: Instant, task: TaskId, force: bool, recursive: bool) {
        let Some(e) = self.tasks.get(&task) else {
            return;
        };
        let span = e.span.clone();
        let _entered = span.enter();
        let (kind, sent, binary, demand) = (
            e.spec.kind.clone(),
            e.sent,
            super::envs::pool_key(e.spec.binary, &e.spec.env),
            e.spec.resources.clone(),
        );
        if let Some(peer) = self.spill.spilled_to(&task) {
            tracing::debug!(task = %task, %peer, "cancel sent on to the peer running the task");
            self.tell_peer(
                peer,
                PeerMsg::Cancel {
                    task,
                    force,
                    recursive,
                },
            );
            return;
        }
        let error = TaskError::Cancelled { task };
        match kind {
            TaskKind::CreateActor(_) => {
                tracing::debug!(task = %task, "cancel of an actor's creation ignored (kill the actor)");
            }
            TaskKind::ActorMethod { actor, .. } if sent => {
                // At the actor's worker: it answers.
                let worker = match self.actors.get(&actor).map(|a| &a.state) {
                    Some(ActorState::Alive { worker, .. }) => Some(*worker),
                    _ => None,
                };
                match worker.and_then(|w| self.worker_conns.get(&w).copied()) {
                    Some(conn) => {
                        tracing::debug!(task = %task, actor = %actor, "cancel of a call at its actor's worker");
                        self.tell_proc(conn, ToClient::Cancel { task, force: false });
                    }
                    None => {
                        tracing::debug!(task = %task, "cancel of a call whose actor has no worker now")
                    }
                }
            }
            TaskKind::ActorMethod { .. } => {
                tracing::debug!(task = %task, "queued call cancelled");
                self.fail_task(now, task, error);
            }
            TaskKind::Function => {
                if let Some(worker) = self.sched.worker_of_task(task) {
                    let running = self.sched.running_on(worker) == Some(task);
                    tracing::debug!(task = %task, worker, running, force, "cancel of a task at a worker");
                    match self.worker_conns.get(&worker).copied() {
                        Some(conn) => {
                            if force && running {
                                self.cancelling.insert(worker);
                            }
                            self.tell_proc(conn, ToClient::Cancel { task, force });
                        }
                        None => tracing::debug!(task = %task, worker, "its worker is gone"),
                    }
                } else if self.sched.remove_task(task, binary, &demand) {
                    tracing::debug!(task = %task, "queued task cancelled");
                } else {
                    tracing::debug!(task = %task, "task cancelled before it was queued");
                }
                self.fail_task(now, task, error);
            }
        }
    }

    /// Records that the task the worker on `conn` runs submitted `child` (for a recursive
    /// cancel); nothing if `conn` is not a worker's.
    pub(super) fn note_child(&mut self, conn: super::ConnId, child: TaskId) {
        let Some(worker) = self.procs.get(&conn).and_then(|p| p.worker) else {
            return;
        };
        if let Some(parent) = self.sched.running_on(worker) {
            self.children.entry(parent).or_default().push(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_protocol::{
        ClientId, ExitInfo, Hello, ObjectId, ObjectValue, Role, TaskError, TaskId, TaskOutcome,
        ToClient, ToNode, MAGIC, PROTOCOL_VERSION,
    };

    use crate::core::harness::{
        attach_worker, drain, executed, from, node, replies, send, spec, to,
    };
    use crate::core::{Input, Output, WorkerEnd};

    fn cancel(task: TaskId, force: bool, recursive: bool) -> ToNode {
        ToNode::Cancel {
            task,
            force,
            recursive,
        }
    }

    fn cancelled(msgs: &[ToClient], id: ObjectId) -> bool {
        msgs.iter().any(|m| {
            matches!(m, ToClient::Object { id: got, value: ObjectValue::Error(TaskError::Cancelled { .. }) } if *got == id)
        })
    }

    fn ok(task: TaskId) -> ToNode {
        ToNode::Done {
            task_id: task,
            outcome: TaskOutcome::Ok(ObjectValue::Inline(b"v".to_vec())),
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        }
    }

    #[test]
    fn a_queued_task_never_runs_and_its_result_fails_at_once() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (a, b) = (spec(1, Vec::new(), 0), spec(2, Vec::new(), 0));
        let out = send(&mut core, now, ToNode::Submit(Box::new(a.clone())));
        send(&mut core, now, ToNode::Submit(Box::new(b.clone())));
        let (_, out) = attach_worker(&mut core, now, &out, 10);
        assert_eq!(executed(&out, 10).len(), 1, "one CPU: the first runs");
        let out = send(&mut core, now, cancel(b.task_id, false, true));
        assert!(cancelled(&replies(&out), b.return_id()), "{out:?}");
        assert!(to(&out, 10).is_empty(), "the worker is not told: {out:?}");
        assert_eq!(core.status(now).tasks_queued, 0);
        let out = from(&mut core, now, 10, ok(a.task_id));
        assert!(
            executed(&out, 10).is_empty(),
            "the cancelled task never runs"
        );
        assert_eq!(core.metrics().counters.tasks_cancelled, 1);
        // A cancel of a finished task changes nothing.
        let out = send(&mut core, now, cancel(a.task_id, false, true));
        assert!(replies(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_running_task_fails_at_once_and_holds_its_worker_until_it_ends() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (a, b) = (spec(1, Vec::new(), 3), spec(2, Vec::new(), 0));
        let out = send(&mut core, now, ToNode::Submit(Box::new(a.clone())));
        let (_, _) = attach_worker(&mut core, now, &out, 10);
        send(&mut core, now, ToNode::Submit(Box::new(b.clone())));
        let out = send(&mut core, now, cancel(a.task_id, false, true));
        assert!(cancelled(&replies(&out), a.return_id()), "{out:?}");
        assert_eq!(
            to(&out, 10),
            vec![ToClient::Cancel {
                task: a.task_id,
                force: false
            }]
        );
        // Its CPU is held until the worker reports its end.
        assert!(executed(&out, 10).is_empty());
        let end = ToNode::Done {
            task_id: a.task_id,
            outcome: TaskOutcome::Err(TaskError::Cancelled { task: a.task_id }),
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        };
        let out = from(&mut core, now, 10, end);
        assert_eq!(executed(&out, 10).len(), 1, "the next task runs: {out:?}");
        assert!(replies(&out).is_empty(), "the result failed once: {out:?}");
    }

    #[test]
    fn a_forced_cancel_ends_the_worker_and_the_task_is_not_retried() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let a = spec(1, Vec::new(), 3);
        let out = send(&mut core, now, ToNode::Submit(Box::new(a.clone())));
        let (worker, _) = attach_worker(&mut core, now, &out, 10);
        let out = send(&mut core, now, cancel(a.task_id, true, true));
        assert!(cancelled(&replies(&out), a.return_id()), "{out:?}");
        assert_eq!(
            to(&out, 10),
            vec![ToClient::Cancel {
                task: a.task_id,
                force: true
            }]
        );
        core.handle(now, Input::Detached { conn: 10 });
        let exit = ExitInfo {
            code: Some(shoal_protocol::CANCELLED_EXIT),
            signal: None,
        };
        let end = WorkerEnd::Exited { pid: 110, exit };
        core.handle(now, Input::WorkerExited { worker, end });
        let out = drain(&mut core);
        assert!(replies(&out).is_empty(), "{out:?}");
        assert_eq!(core.status(now).tasks_queued, 0);
        // Not run again, though it had retries (a worker started in its place runs nothing).
        if out.iter().any(|o| matches!(o, Output::SpawnWorker { .. })) {
            let (_, out) = attach_worker(&mut core, now, &out, 11);
            assert!(executed(&out, 11).is_empty(), "{out:?}");
        }
    }

    #[test]
    fn a_recursive_cancel_reaches_what_the_task_submitted() {
        let now = Instant::now();
        for recursive in [true, false] {
            let mut core = node(now, 1.0, 1 << 20);
            let parent = spec(1, Vec::new(), 0);
            let out = send(&mut core, now, ToNode::Submit(Box::new(parent.clone())));
            attach_worker(&mut core, now, &out, 10);
            // The running task submits a child (waiting: the only CPU is the parent's).
            let mut child = spec(1, Vec::new(), 0);
            child.task_id = TaskId::new(ClientId(110), 1);
            child.owner = ClientId(110);
            from(&mut core, now, 10, ToNode::Submit(Box::new(child.clone())));
            let out = send(&mut core, now, cancel(parent.task_id, false, recursive));
            assert!(cancelled(&replies(&out), parent.return_id()));
            let child_cancelled = cancelled(&to(&out, 10), child.return_id());
            assert_eq!(child_cancelled, recursive, "recursive {recursive}: {out:?}");
            assert_eq!(
                core.status(now).tasks_queued,
                if recursive { 0 } else { 1 },
                "recursive {recursive}"
            );
        }
    }

    #[test]
    fn only_the_submitter_may_cancel() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (a, b) = (spec(1, Vec::new(), 0), spec(2, Vec::new(), 0));
        let out = send(&mut core, now, ToNode::Submit(Box::new(a.clone())));
        send(&mut core, now, ToNode::Submit(Box::new(b.clone())));
        attach_worker(&mut core, now, &out, 10);
        // Another program.
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Driver,
            pid: 2,
            client: ClientId(8),
            binary: None,
        };
        core.handle(now, Input::Attached { conn: 2, hello });
        drain(&mut core);
        let out = from(&mut core, now, 2, cancel(b.task_id, true, true));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(core.status(now).tasks_queued, 1);
        assert_eq!(core.metrics().counters.tasks_cancelled, 0);
    }
}
