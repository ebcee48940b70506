//! Lineage: how to make again the large results this node owns, for when every copy of one
//! is lost with the peers that held it (issue 12).
//!
//! A node is the owner of the tasks its local processes submit. When such a task ran at a
//! peer and left a large result there, the node keeps the task's spec here, with the retries
//! the task has left; if every holder of the result is later lost, the core submits the task
//! again ([`super::NodeCore::reconstruct`]), first making again any argument that is lost
//! too. There is no head: each owner keeps the lineage of what it owns, and nothing else.
//!
//! Lifetime: an entry lives while its object's entry lives, and while the lineage of another
//! object names it as an argument (it may be needed to make that one again). Memory is
//! bounded: past `limit` bytes (`--lineage-bytes`) the least recently used entries are
//! evicted, and an object whose lineage was evicted cannot be made again
//! (`ObjectReconstructionFailed`).
//!
//! Pure bookkeeping with plain values: no I/O, no clock.

use std::collections::BTreeMap;

use shoal_protocol::{Arg, IdMap, ObjectId, TaskSpec};

use super::Party;

/// Bytes counted for an entry besides its spec's variable parts.
const ENTRY_OVERHEAD: usize = 256;

/// How to make one object again.
#[derive(Debug)]
pub(crate) struct LineageEntry {
    /// The task that made it.
    pub(crate) spec: TaskSpec,
    /// Who submitted that task.
    pub(crate) owner: Party,
    /// Runs of it still allowed (its retry budget, after the runs so far).
    pub(crate) retries_left: u32,
    /// What this entry counts against the limit.
    bytes: usize,
    /// Its place in the eviction order.
    stamp: u64,
    /// Entries of other objects that name this one as an argument.
    refs: u32,
    /// Its object's entry is gone: kept only for `refs`.
    orphan: bool,
}

/// The lineage of the objects this node owns.
#[derive(Debug)]
pub(crate) struct Lineage {
    map: IdMap<ObjectId, LineageEntry>,
    /// Stamps, oldest first.
    order: BTreeMap<u64, ObjectId>,
    next_stamp: u64,
    bytes: usize,
    limit: usize,
}

/// The bytes an entry of `spec` counts.
fn size_of(spec: &TaskSpec) -> usize {
    let args: usize = spec
        .args
        .iter()
        .map(|a| match a {
            Arg::Value(v) => v.len() + 8,
            Arg::Ref(_) => 40,
        })
        .sum();
    ENTRY_OVERHEAD + spec.function.len() + args + spec.nested.len() * 32
}

/// The objects `spec` takes as arguments.
fn arg_refs(spec: &TaskSpec) -> impl Iterator<Item = ObjectId> + '_ {
    spec.args.iter().filter_map(|a| match a {
        Arg::Ref(id) => Some(*id),
        Arg::Value(_) => None,
    })
}

impl Lineage {
    /// An empty lineage of at most `limit` bytes.
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            map: IdMap::default(),
            order: BTreeMap::new(),
            next_stamp: 0,
            bytes: 0,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }

    /// The entry of `id`.
    pub(crate) fn get(&self, id: &ObjectId) -> Option<&LineageEntry> {
        self.map.get(id)
    }

    /// How many entries, and their bytes.
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }

    fn touch(&mut self, id: &ObjectId) {
        let Some(e) = self.map.get_mut(id) else {
            return;
        };
        self.order.remove(&e.stamp);
        e.stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.insert(e.stamp, *id);
    }

    /// Records that `spec`, submitted by `owner` with `retries_left` runs left, made `id`
    /// (again: the retries are updated). Returns the objects whose lineage was evicted to
    /// make room, for the caller to mark.
    pub(crate) fn record(
        &mut self,
        id: ObjectId,
        spec: &TaskSpec,
        owner: Party,
        retries_left: u32,
    ) -> Vec<ObjectId> {
        if let Some(e) = self.map.get_mut(&id) {
            e.retries_left = retries_left;
            e.orphan = false;
            self.touch(&id);
            return Vec::new();
        }
        let bytes = size_of(spec);
        for arg in arg_refs(spec) {
            if let Some(a) = self.map.get_mut(&arg) {
                a.refs += 1;
            }
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.map.insert(
            id,
            LineageEntry {
                spec: spec.clone(),
                owner,
                retries_left,
                bytes,
                stamp,
                refs: 0,
                orphan: false,
            },
        );
        self.order.insert(stamp, id);
        self.bytes += bytes;
        let mut evicted = Vec::new();
        while self.bytes > self.limit {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            // Out of the order already: `remove` must not look for it there.
            if let Some(e) = self.map.get_mut(&oldest) {
                e.stamp = u64::MAX;
            }
            evicted.push(oldest);
            self.remove(oldest);
        }
        evicted
    }

    /// Takes one run of `id`'s task from its budget: its spec and owner, if it has lineage
    /// and a run left.
    pub(crate) fn take_run(&mut self, id: &ObjectId) -> Option<(TaskSpec, Party)> {
        let e = self.map.get_mut(id)?;
        if e.retries_left == 0 {
            return None;
        }
        e.retries_left -= 1;
        let out = (e.spec.clone(), e.owner);
        self.touch(id);
        Some(out)
    }

    /// `id`'s object entry is gone: its lineage goes too, unless another object's lineage
    /// names it.
    pub(crate) fn object_freed(&mut self, id: ObjectId) {
        let Some(e) = self.map.get_mut(&id) else {
            return;
        };
        e.orphan = true;
        if e.refs == 0 {
            self.remove(id);
        }
    }

    /// An object entry of `id` exists again (it is being made again).
    pub(crate) fn object_back(&mut self, id: &ObjectId) {
        if let Some(e) = self.map.get_mut(id) {
            e.orphan = false;
        }
    }

    /// Removes `id`'s entry, then the orphans that only it named, transitively.
    fn remove(&mut self, id: ObjectId) {
        let mut next = vec![id];
        while let Some(id) = next.pop() {
            let Some(e) = self.map.remove(&id) else {
                continue;
            };
            if e.stamp != u64::MAX {
                self.order.remove(&e.stamp);
            }
            self.bytes -= e.bytes;
            for arg in arg_refs(&e.spec) {
                if let Some(a) = self.map.get_mut(&arg) {
                    a.refs = a.refs.saturating_sub(1);
                    if a.refs == 0 && a.orphan {
                        next.push(arg);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::{ClientId, ResourceSet, TaskId, TaskKind};

    const OWNER: Party = Party::Proc(1);

    fn spec(seq: u64, args: Vec<ObjectId>, pad: usize) -> TaskSpec {
        let mut a: Vec<Arg> = args.into_iter().map(Arg::Ref).collect();
        a.push(Arg::Value(vec![0; pad]));
        TaskSpec {
            task_id: TaskId::new(ClientId(7), seq),
            function: "f".into(),
            binary: shoal_protocol::BinaryId([1; 32]),
            args: a,
            resources: ResourceSet::cpus(1.0),
            max_retries: 3,
            owner: ClientId(7),
            kind: TaskKind::Function,
            nested: Vec::new(),
            wait_for_resources: false,
            retry_exceptions: false,
            num_returns: 1,
            strategy: Default::default(),
            label_selector: Vec::new(),
            stream: None,
            env: Vec::new(),
        }
    }

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 32])
    }

    #[test]
    fn runs_are_taken_from_the_budget() {
        let mut l = Lineage::new(1 << 20);
        l.record(id(1), &spec(1, vec![], 0), OWNER, 2);
        assert!(l.take_run(&id(1)).is_some());
        assert!(l.take_run(&id(1)).is_some());
        assert!(l.take_run(&id(1)).is_none(), "the budget is spent");
        assert!(l.take_run(&id(2)).is_none(), "no lineage");
    }

    #[test]
    fn lineage_named_by_another_outlives_its_object_then_goes_with_it() {
        let mut l = Lineage::new(1 << 20);
        l.record(id(1), &spec(1, vec![], 0), OWNER, 1);
        l.record(id(2), &spec(2, vec![id(1)], 0), OWNER, 1);
        l.record(id(3), &spec(3, vec![id(2)], 0), OWNER, 1);
        // The first two objects are freed: their lineage stays, for the third.
        l.object_freed(id(1));
        l.object_freed(id(2));
        assert_eq!(l.size().0, 3);
        // The third goes: the whole chain goes.
        l.object_freed(id(3));
        assert_eq!(l.size(), (0, 0));
    }

    #[test]
    fn past_the_limit_the_least_recently_used_go() {
        let one = size_of(&spec(1, vec![], 1000));
        let mut l = Lineage::new(3 * one as u64);
        for n in 1..=3 {
            assert!(l
                .record(id(n), &spec(u64::from(n), vec![], 1000), OWNER, 1)
                .is_empty());
        }
        // The first is used again: the second is now the oldest.
        l.take_run(&id(1));
        let evicted = l.record(id(4), &spec(4, vec![], 1000), OWNER, 1);
        assert_eq!(evicted, vec![id(2)]);
        assert!(l.get(&id(2)).is_none());
        assert_eq!(l.size(), (3, 3 * one));
    }
}
