//! Tasks with several returns (Ray's `num_returns`): a function whose result is a tuple
//! gives each element its own object, return `i` of task `t` being
//! `ObjectId::for_return(t, i)`.
//!
//! The rules, wherever the task runs:
//! - Every return is held and owned as a task's single return is, from its submission.
//! - The other returns (1 and on) are all ready before the first is: a node that runs the
//!   task makes its first return wait until the files of the others are in place, and a
//!   peer's messages arrive in order, so the owner, its processes and the peer that sent the
//!   task all see the others first. A task ends with its first return, as any task does.
//! - A task that fails (before or while running, at a peer, for want of an owner) fails each
//!   of its returns not made yet with the same error ([`NodeCore::first_return_ready`]).
//! - Lineage covers the first return only: another return lost with every copy of it is
//!   lost (`ObjectLost`), as a put is.

use std::time::Instant;

use shoal_protocol::{ObjectId, ObjectValue, ReturnValue, TaskError, TaskId};

use super::store::After;
use super::{ConnId, NodeCore};
use crate::store::Holder;

impl NodeCore {
    /// The other returns of `task` (returns 1 and on) as its worker reported them: each one
    /// inline is ready now, each one in the store once its file is in place. Says how many
    /// are still being put in place, or why they are not what the task returns (then none
    /// is kept). Called for a task that failed too, to drop what its worker reserved.
    pub(super) fn store_more(
        &mut self,
        now: Instant,
        conn: ConnId,
        task: TaskId,
        more: Vec<ReturnValue>,
    ) -> Result<u32, String> {
        let ids = self
            .tasks
            .get(&task)
            .map(|e| e.more.clone())
            .unwrap_or_default();
        let reserved =
            |core: &Self, id: &ObjectId| core.store.index.reserved_by(id, Holder::Proc(conn));
        let bad = if more.len() != ids.len() {
            Some(format!(
                "the worker gave {} values for the task's {} returns",
                more.len() + 1,
                ids.len() + 1
            ))
        } else {
            more.iter()
                .zip(ids.iter())
                .find_map(|(r, id)| match &r.value {
                    ObjectValue::Inline(_) => None,
                    ObjectValue::Shared(_) if reserved(self, id) => None,
                    ObjectValue::Shared(_) => {
                        Some(format!("return {id} was not reserved in the store"))
                    }
                    ObjectValue::Error(_) => Some(format!("return {id} came as an error")),
                })
        };
        if let Some(message) = bad {
            self.drop_reserved_returns(conn, task, more.len());
            return Err(message);
        }
        let mut sealing = 0;
        for (r, id) in more.into_iter().zip(ids.iter().copied()) {
            match r.value {
                ObjectValue::Shared(object) => {
                    self.set_nested(id, r.nested);
                    let after = move |new| After::Return {
                        task,
                        id,
                        object,
                        new,
                    };
                    match self.store_seal(id, id, object, after) {
                        Ok(_) => sealing += 1,
                        Err(e) => {
                            tracing::warn!(conn, task = %task, object = %id, error = %e, "bad return seal");
                            self.store_remove(&id);
                            let message = e.to_string();
                            let value = ObjectValue::Error(TaskError::ResultStore { message });
                            self.object_ready(now, id, value);
                        }
                    }
                }
                value => {
                    self.set_nested(id, r.nested);
                    self.object_ready(now, id, value);
                }
            }
        }
        Ok(sealing)
    }

    /// `task`, run at a peer, succeeded: its other returns came before its first, and one
    /// that did not (its peer's copy was gone when the task was sent there again) is lost.
    pub(super) fn other_returns_lost(&mut self, now: Instant, task: TaskId) {
        let Some(more) = self.tasks.get(&task).map(|e| e.more.clone()) else {
            return;
        };
        self.fail_pending(now, &more, |id| {
            tracing::warn!(task = %task, object = %id, "a return of a task run at a peer never came; lost");
            TaskError::ObjectLost { id }
        });
    }

    /// Fails each of `ids` not made yet (here or at a peer) with `error(id)`.
    fn fail_pending(
        &mut self,
        now: Instant,
        ids: &[ObjectId],
        error: impl Fn(ObjectId) -> TaskError,
    ) {
        for id in ids.iter().copied() {
            let pending = self
                .objects
                .get(&id)
                .is_some_and(|e| e.value.is_none() && !e.ready_remotely());
            if pending {
                self.object_ready(now, id, ObjectValue::Error(error(id)));
            }
        }
    }

    /// Drops the reservations `conn` holds for `task`'s other returns (`reported` of them
    /// reported, or as many as the task has).
    pub(super) fn drop_reserved_returns(&mut self, conn: ConnId, task: TaskId, reported: usize) {
        let count = self
            .tasks
            .get(&task)
            .map_or(0, |e| e.more.len())
            .max(reported)
            .min(shoal_protocol::MAX_RETURNS as usize);
        for i in 1..=count {
            let id = ObjectId::for_return(task, i as u32);
            if self.store.index.reserved_by(&id, Holder::Proc(conn)) {
                self.store_remove(&id);
            }
        }
    }

    /// Another return of `task` is in place (or could not be put there): it is ready, and
    /// once the last one is, so is the task's first.
    pub(super) fn return_sealed(
        &mut self,
        now: Instant,
        task: TaskId,
        id: ObjectId,
        value: ObjectValue,
    ) {
        self.object_ready(now, id, value);
        let Some(e) = self.tasks.get_mut(&task) else {
            return;
        };
        let Some(first) = e.first.as_mut() else {
            return;
        };
        first.sealing = first.sealing.saturating_sub(1);
        if first.sealing > 0 {
            return;
        }
        let ret = e.ret;
        let span = e.span.clone();
        let _entered = span.enter();
        if let Some(first) = e.first.take() {
            self.first_return(now, first.conn, task, ret, first.outcome, first.nested);
        }
    }

    /// `id` is ready (`failed`: with this error): if it is the first return of a task with
    /// several that failed, its other returns not made yet fail with it. (Made, they are all
    /// ready before the first, whatever path the task took.)
    pub(super) fn first_return_ready(
        &mut self,
        now: Instant,
        id: ObjectId,
        failed: Option<&TaskError>,
    ) {
        let Some(more) = self.more_returns.remove(&id) else {
            return;
        };
        if let Some(err) = failed {
            self.fail_pending(now, &more, |_| err.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_protocol::{
        Digest, ObjectId, ObjectValue, ReturnValue, SharedObject, TaskError, TaskOutcome, TaskSpec,
        ToClient, ToNode,
    };

    use crate::core::harness::{
        attach_worker, done, drain, executed, from, node, ops, replies, reserve, send, spec,
    };
    use crate::core::NodeCore;

    /// A task of three returns, handed to worker 10.
    fn three(core: &mut NodeCore, now: Instant) -> (TaskSpec, Vec<ObjectId>) {
        let mut task = spec(1, Vec::new(), 0);
        task.num_returns = 3;
        let ids = (0..3)
            .map(|i| ObjectId::for_return(task.task_id, i))
            .collect();
        let out = send(core, now, ToNode::Submit(Box::new(task.clone())));
        let (_, out) = attach_worker(core, now, &out, 10);
        assert_eq!(executed(&out, 10).len(), 1);
        (task, ids)
    }

    /// The objects the driver was sent, in order.
    fn objects(out: &[crate::core::Output]) -> Vec<(ObjectId, ObjectValue)> {
        replies(out)
            .into_iter()
            .filter_map(|m| match m {
                ToClient::Object { id, value } => Some((id, value)),
                _ => None,
            })
            .collect()
    }

    fn inline(v: &[u8]) -> ObjectValue {
        ObjectValue::Inline(v.to_vec())
    }

    fn other(value: ObjectValue) -> ReturnValue {
        ReturnValue {
            value,
            nested: Vec::new(),
        }
    }

    /// Worker 10's report of `task`.
    fn report(task: &TaskSpec, outcome: TaskOutcome, more: Vec<ReturnValue>) -> ToNode {
        ToNode::Done {
            task_id: task.task_id,
            outcome,
            nested: Vec::new(),
            more,
            returned_error: false,
        }
    }

    #[test]
    fn each_return_is_its_own_object_and_the_others_are_ready_before_the_first() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, ids) = three(&mut core, now);
        let done = report(
            &task,
            TaskOutcome::Ok(inline(b"a")),
            vec![other(inline(b"b")), other(inline(b"c"))],
        );
        let out = from(&mut core, now, 10, done);
        assert_eq!(
            objects(&out),
            vec![
                (ids[1], inline(b"b")),
                (ids[2], inline(b"c")),
                (ids[0], inline(b"a"))
            ]
        );
        // Each is freed on its own: releasing one leaves the others.
        send(&mut core, now, ToNode::Release { ids: vec![ids[1]] });
        assert!(!core.objects.contains(&ids[1]));
        assert!(core.objects.contains(&ids[0]) && core.objects.contains(&ids[2]));
    }

    #[test]
    fn a_task_that_fails_fails_each_of_its_returns_with_the_same_error() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, ids) = three(&mut core, now);
        // The owner no longer holds the first: the others still learn of the failure.
        send(&mut core, now, ToNode::Release { ids: vec![ids[0]] });
        let error = TaskError::Panicked {
            message: "boom".into(),
            origin: None,
        };
        let done = report(&task, TaskOutcome::Err(error.clone()), Vec::new());
        let out = from(&mut core, now, 10, done);
        let failed = ObjectValue::Error(error);
        assert_eq!(
            objects(&out),
            vec![(ids[1], failed.clone()), (ids[2], failed)]
        );
        assert!(core.more_returns.is_empty());
    }

    #[test]
    fn a_worker_that_gives_the_wrong_number_of_returns_fails_them_all() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, ids) = three(&mut core, now);
        let done = report(
            &task,
            TaskOutcome::Ok(inline(b"a")),
            vec![other(inline(b"b"))],
        );
        let out = from(&mut core, now, 10, done);
        let got = objects(&out);
        assert_eq!(got.len(), 3, "{got:?}");
        for (id, value) in got {
            assert!(ids.contains(&id));
            assert!(
                matches!(&value, ObjectValue::Error(TaskError::ResultStore { message }) if message.contains("2 values for the task's 3 returns")),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_first_return_waits_for_the_files_of_the_others() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, ids) = three(&mut core, now);
        // The worker writes return 2 into the store.
        reserve(&mut core, now, 10, ids[2], 4096);
        let object = SharedObject {
            size: 4096,
            digest: Some(Digest([3; 32])),
        };
        let report = report(
            &task,
            TaskOutcome::Ok(inline(b"a")),
            vec![other(inline(b"b")), other(ObjectValue::Shared(object))],
        );
        let out = from(&mut core, now, 10, report);
        assert_eq!(objects(&out), vec![(ids[1], inline(b"b"))], "{out:?}");
        // Its file in place: return 2, then the first.
        let seal = ops(&out);
        assert_eq!(seal.len(), 1, "{out:?}");
        done(&mut core, now, seal[0].clone(), Ok(()));
        let out = drain(&mut core);
        assert_eq!(
            objects(&out),
            vec![
                (ids[2], ObjectValue::Shared(object)),
                (ids[0], inline(b"a"))
            ]
        );
        assert!(core.tasks.is_empty());
    }

    #[test]
    fn returns_the_task_cannot_have_are_refused() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        for (seq, n) in [(1, 0), (2, shoal_protocol::MAX_RETURNS + 1)] {
            let mut task = spec(seq, Vec::new(), 0);
            task.num_returns = n;
            let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
            assert!(
                objects(&out).iter().any(|(id, v)| *id == task.return_id()
                    && matches!(v, ObjectValue::Error(TaskError::InvalidOptions { .. }))),
                "{out:?}"
            );
        }
    }
}
