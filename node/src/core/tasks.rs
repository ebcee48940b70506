//! The task table: tasks this node runs, waits to run, or sent to a peer, with what each is
//! still waiting for and how many retries it has left.

use shoal_protocol::{Arg, IdMap, ObjectId, TaskId, TaskKind, TaskSpec};

use super::Party;

/// One task.
#[derive(Debug)]
pub(crate) struct TaskEntry {
    pub(crate) spec: TaskSpec,
    /// `spec.return_id()`, hashed once.
    pub(crate) ret: ObjectId,
    /// Who submitted it (a local process, or a peer that sent it here).
    pub(crate) owner: Party,
    /// Arguments not yet ready.
    pub(crate) missing: usize,
    pub(crate) retries_left: u32,
    /// Shared-memory arguments kept in memory for the worker that reads them.
    pub(crate) store_pins: Vec<ObjectId>,
    /// How many times it was spilled from peer to peer before arriving here.
    pub(crate) hops: u32,
    /// Looks at the queue (spill passes) that found it still waiting here.
    pub(crate) passes_waited: u32,
    /// Its span (`task = %id`): entered while the core works on it.
    pub(crate) span: tracing::Span,
}

impl TaskEntry {
    /// A task of `spec`, whose return object is `ret` (`spec.return_id()`, hashed once by
    /// the caller).
    pub(crate) fn new(
        spec: TaskSpec,
        ret: ObjectId,
        owner: Party,
        missing: usize,
        hops: u32,
    ) -> Self {
        let span = tracing::debug_span!("task", task = %spec.task_id, function = %spec.function);
        Self {
            ret,
            retries_left: spec.max_retries,
            spec,
            owner,
            missing,
            store_pins: Vec::new(),
            hops,
            passes_waited: 0,
            span,
        }
    }

    /// Whether it is a call of an actor.
    pub(crate) fn is_call(&self) -> bool {
        matches!(self.spec.kind, TaskKind::ActorMethod { .. })
    }

    /// The objects it takes as arguments.
    pub(crate) fn arg_refs(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.spec.args.iter().filter_map(|a| match a {
            Arg::Ref(id) => Some(*id),
            Arg::Value(_) => None,
        })
    }
}

/// Every task this node knows of.
pub(crate) type TaskTable = IdMap<TaskId, TaskEntry>;
