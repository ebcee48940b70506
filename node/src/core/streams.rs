//! Streaming generators (Ray's `num_returns="streaming"`): a function that yields a sequence
//! of values, item `i` (from 1) of task `t` being `ObjectId::for_return(t, i)`, each its
//! owner's as soon as it is yielded. The task's first return ends the stream: the number of
//! items, or the failure.
//!
//! The rules, wherever the task runs:
//! - The node running the task makes each item an object as its worker yields it (inline at
//!   once, a large one once its file is in place) and tells the task's owner of the items in
//!   order: the owner's process ([`ToClient::StreamItem`]) or the peer that sent the task
//!   ([`PeerMsg::StreamItem`]), which then owns it and tells its process. The owner's process
//!   holds each item from then on.
//! - The task's first return waits until every item yielded before it was told: a stream
//!   sees all its items before its end, since messages to a process, and a peer's messages,
//!   arrive in order.
//! - Back-pressure: the generator may run `window` items past those its consumer took. The
//!   consumer's process says what it took ([`ToNode::StreamTaken`]); its node passes that on
//!   towards the worker (to the peer running the task, which tells its worker), not for each
//!   item but when the generator is at its limit or half a window behind.
//! - A run after a failure yields its items again: those the owner has are dropped (runs
//!   are taken to be deterministic, as Ray does). Items are not made again by lineage.
//! - Only the worker running the task yields its items, only the peer it was sent to sends
//!   them on, and only its owner paces it.
//!
//! [`ToClient::StreamItem`]: shoal_protocol::ToClient::StreamItem
//! [`ToNode::StreamTaken`]: shoal_protocol::ToNode::StreamTaken

use std::collections::BTreeSet;
use std::time::Instant;

use shoal_protocol::mesh::{PeerKey, PeerMsg, RemoteValue};
use shoal_protocol::{ObjectId, ObjectValue, ReturnValue, TaskError, TaskId, ToClient};

use super::store::After;
use super::{ConnId, NodeCore, Party};
use crate::store::Holder;

/// Where a streaming generator's items stand at a node: the node that owns it, or the
/// node that runs it for a peer.
#[derive(Debug)]
pub(crate) struct StreamState {
    /// How many items the generator may run past those taken.
    pub(crate) window: u32,
    /// Items accepted here, in order (from the worker, or the peer the task was sent to).
    pub(crate) produced: u32,
    /// Items told to the owner.
    pub(crate) announced: u32,
    /// Items with their value here, not yet told (waiting for an earlier one's file).
    pub(crate) made: BTreeSet<u32>,
    /// Items the consumer took.
    pub(crate) taken: u32,
    /// The highest item the producer was last allowed.
    pub(crate) allowed: u32,
}

impl StreamState {
    pub(crate) fn new(window: u32) -> Self {
        Self {
            window,
            produced: 0,
            announced: 0,
            made: BTreeSet::new(),
            taken: 0,
            allowed: window,
        }
    }

    /// Items accepted but not yet told (their files are being put in place).
    pub(crate) fn unannounced(&self) -> bool {
        self.announced < self.produced
    }
}

impl NodeCore {
    /// A worker (`conn`) yielded item `index` of `task` ([`shoal_protocol::ToNode::Yield`]).
    pub(super) fn item_yielded(
        &mut self,
        now: Instant,
        conn: ConnId,
        task: TaskId,
        index: u32,
        item: ReturnValue,
    ) {
        let id = ObjectId::for_return(task, index);
        let worker = self.worker_of(conn);
        let refused = match self.tasks.get(&task) {
            // Ended meanwhile (cancelled, its owner gone): nobody wants it.
            None => Some(None),
            Some(e) if worker.is_none() || e.worker != worker => {
                Some(Some("an item from a process not running its task"))
            }
            Some(e) => match e.stream.as_deref() {
                None => Some(Some("an item of a task that is not a stream")),
                Some(_) if index == 0 || index > shoal_protocol::MAX_STREAM_ITEMS => {
                    Some(Some("an item numbered out of range"))
                }
                // Yielded again by a run after a failure: the owner has it.
                Some(s) if index <= s.produced => Some(None),
                Some(s) if index != s.produced + 1 => Some(Some("an item out of order")),
                Some(_) if matches!(item.value, ObjectValue::Error(_)) => {
                    Some(Some("an item that is an error"))
                }
                Some(_) => None,
            },
        };
        if let Some(why) = refused {
            if let Some(why) = why {
                tracing::warn!(conn, task = %task, index, "{why}; dropped");
            }
            if self.store.index.reserved_by(&id, Holder::Proc(conn)) {
                self.store_remove(&id);
            }
            return;
        }
        let Some((owner, client)) = self.accept_item(task, index, false) else {
            return;
        };
        let o = self.objects.entry(id);
        if let Some(value) = o.value.clone() {
            // Made by an earlier run here, and kept for its owner (which was not told, or
            // did not say it has it): that copy serves.
            if !o.holders.contains(&owner) {
                o.holders.push(owner);
            }
            if self.store.index.reserved_by(&id, Holder::Proc(conn)) {
                self.store_remove(&id);
            }
            self.item_made(now, task, index, value);
            return;
        }
        o.holders.push(owner);
        o.owner = Some(client);
        self.set_nested(id, item.nested);
        match item.value {
            ObjectValue::Shared(object)
                if self.store.index.reserved_by(&id, Holder::Proc(conn)) =>
            {
                let after = move |new| After::Item {
                    task,
                    index,
                    object,
                    new,
                };
                if let Err(e) = self.store_seal(id, id, object, after) {
                    tracing::warn!(conn, task = %task, object = %id, error = %e, "bad item seal");
                    self.store_remove(&id);
                    let message = e.to_string();
                    let value = ObjectValue::Error(TaskError::ResultStore { message });
                    self.item_made(now, task, index, value);
                }
            }
            ObjectValue::Shared(_) => {
                tracing::warn!(conn, task = %task, object = %id, "a shared item without a reservation");
                let message = "the item was not reserved in the store".into();
                let value = ObjectValue::Error(TaskError::ResultStore { message });
                self.item_made(now, task, index, value);
            }
            value => self.item_made(now, task, index, value),
        }
    }

    /// Item `index` of `task`, the next in order, is taken (`told`: and told to its owner
    /// already): its task's owner and the process that submitted it.
    fn accept_item(
        &mut self,
        task: TaskId,
        index: u32,
        told: bool,
    ) -> Option<(Party, shoal_protocol::ClientId)> {
        let e = self.tasks.get_mut(&task)?;
        if let Some(s) = e.stream.as_deref_mut() {
            s.produced = index;
            if told {
                s.announced = index;
            }
        }
        Some((e.owner, e.spec.owner))
    }

    /// Item `index` of `task` has its value here (a large one is in its file): it is told
    /// to the owner once every earlier one is, and the task's end may follow.
    pub(super) fn item_made(&mut self, now: Instant, task: TaskId, index: u32, value: ObjectValue) {
        let id = ObjectId::for_return(task, index);
        // (Not again for a copy made by an earlier run; with no entry, a file made for
        // nobody goes.)
        if self.objects.get(&id).is_none_or(|e| e.value.is_none()) {
            self.object_ready(now, id, value);
        }
        let Some(e) = self.tasks.get_mut(&task) else {
            // Its task ended while its file was put in place: its owner will not be told of
            // it, so nothing holds it.
            if let Some(o) = self.objects.get_mut(&id) {
                o.holders.clear();
            }
            self.maybe_free(id);
            return;
        };
        let owner = e.owner;
        let Some(s) = e.stream.as_deref_mut() else {
            return;
        };
        s.made.insert(index);
        let from = s.announced;
        while s.made.remove(&(s.announced + 1)) {
            s.announced += 1;
        }
        let to = s.announced;
        let end = !s.unannounced() && e.first.is_some();
        for i in from + 1..=to {
            self.announce_item(task, owner, i);
        }
        if end {
            self.end_stream(now, task);
        }
        self.stream_ack(task);
    }

    /// The task's end, kept while items were being put in place, follows them.
    fn end_stream(&mut self, now: Instant, task: TaskId) {
        let Some(e) = self.tasks.get_mut(&task) else {
            return;
        };
        let (ret, span) = (e.ret, e.span.clone());
        let _entered = span.enter();
        if let Some(first) = e.first.take() {
            self.first_return(now, first.conn, task, ret, first.outcome, first.nested);
        }
    }

    /// Tells `owner` of item `index` of `task`: the process holds it from now on, or the peer
    /// that sent the task (which then owns it).
    pub(super) fn announce_item(&mut self, task: TaskId, owner: Party, index: u32) {
        let id = ObjectId::for_return(task, index);
        let Some(e) = self.objects.get(&id) else {
            // Its holder left meanwhile.
            return;
        };
        match owner {
            Party::Proc(conn) => {
                let value = e.value.clone().map(Box::new);
                self.tell_proc(conn, ToClient::StreamItem { task, index, value });
            }
            Party::Peer(peer) => {
                let value = match &e.value {
                    Some(ObjectValue::Inline(v)) => RemoteValue::Inline(v.clone()),
                    Some(ObjectValue::Error(err)) => RemoteValue::Error(err.clone()),
                    Some(ObjectValue::Shared(object)) if object.digest.is_none() => {
                        // Not hashed yet: it leaves with its digest.
                        self.when_digested(id, super::store::Resume::Item(task, owner, index));
                        return;
                    }
                    Some(ObjectValue::Shared(object)) => RemoteValue::Shared {
                        object: *object,
                        holders: self.me.iter().map(|m| m.to_vec()).collect(),
                    },
                    None => {
                        tracing::error!(task = %task, index, "an item told before it was made");
                        return;
                    }
                };
                // Kept for the peer until it says it has it (`Release`): sent again if the
                // peer places the task here again before then.
                self.tell_peer(
                    peer,
                    PeerMsg::StreamItem {
                        task,
                        index,
                        value,
                        lent: Vec::new(),
                    },
                );
            }
        }
    }

    /// `task`, a streaming generator that runs (or ran) here, was sent again by its owner
    /// `peer` (which lost this node for a while): the items it has not said it has are sent
    /// again, in order (those up to `count`, or all those made, while it still runs).
    pub(super) fn stream_sent_again(&mut self, peer: PeerKey, task: TaskId, count: Option<u32>) {
        let made = match count {
            Some(n) => n,
            None => match self.tasks.get(&task).and_then(|e| e.stream.as_deref()) {
                Some(s) => s.announced,
                None => return,
            },
        };
        let party = Party::Peer(peer);
        for index in 1..=made {
            let id = ObjectId::for_return(task, index);
            let kept = self
                .objects
                .get(&id)
                .is_some_and(|e| e.value.is_some() && e.holders.contains(&party));
            if kept {
                self.announce_item(task, party, index);
            }
        }
    }

    /// Tells `peer`, which sent item `id` of a task this node owns, that it needs its copy
    /// no more, unless that copy is the one this node reads (an item sent again).
    fn decline_item(&mut self, peer: PeerKey, id: ObjectId) {
        let reads_it = self
            .objects
            .get(&id)
            .and_then(|e| e.remote.as_ref())
            .is_some_and(|r| r.release_to.contains(&peer));
        if !reads_it {
            self.tell_peer(peer, PeerMsg::Release { ids: vec![id] });
        }
    }

    /// Peer `peer`, which runs `task` for this node, sends its item `index`.
    pub(super) fn peer_stream_item(
        &mut self,
        now: Instant,
        peer: PeerKey,
        task: TaskId,
        index: u32,
        value: RemoteValue,
    ) {
        let id = ObjectId::for_return(task, index);
        let value = super::peers::with_digest(peer, id, value);
        let at = self.spill.spilled_to(&task);
        let refused = match self.tasks.get(&task) {
            // Ended meanwhile: nobody wants it.
            None => Some(None),
            Some(_) if at != Some(peer) => Some(Some("an item from a peer not running its task")),
            Some(e) => match e.stream.as_deref() {
                None => Some(Some("an item of a task that is not a stream")),
                // Sent again by a run after a failure: this node has it.
                Some(s) if index <= s.produced => Some(None),
                Some(s) if index != s.produced + 1 => Some(Some("an item out of order")),
                Some(s) if index > s.taken.saturating_add(s.window) => {
                    Some(Some("an item past the stream's window"))
                }
                Some(_) => None,
            },
        };
        if let Some(why) = refused {
            if let Some(why) = why {
                tracing::warn!(%peer, task = %task, index, "{why}; dropped");
            }
            // The peer keeps each item for this node until told otherwise.
            self.decline_item(peer, id);
            if at != Some(peer) {
                // A run this node no longer waits for (it ended, or runs elsewhere now): no
                // consumer will let it go further, so it ends there.
                let cancel = PeerMsg::Cancel {
                    task,
                    force: false,
                    recursive: false,
                };
                self.tell_peer(peer, cancel);
            }
            // Yielded again by a run there that may not know how far the consumer got (told
            // before that run began): told again, or it would wait at its first window.
            let again = self.tasks.get(&task).and_then(|e| e.stream.as_deref());
            if let (Some(s), Some(_)) = (again, at.filter(|p| *p == peer)) {
                if index <= s.produced {
                    let taken = s.taken;
                    self.tell_peer(peer, PeerMsg::StreamTaken { task, taken });
                }
            }
            return;
        }
        let Some((owner, client)) = self.accept_item(task, index, true) else {
            return;
        };
        let o = self.objects.entry(id);
        o.holders.push(owner);
        o.owner = Some(client);
        match value {
            RemoteValue::Inline(v) => {
                // This node has its own copy: the peer's may go.
                self.tell_peer(peer, PeerMsg::Release { ids: vec![id] });
                self.object_ready(now, id, ObjectValue::Inline(v));
            }
            RemoteValue::Error(err) => {
                self.tell_peer(peer, PeerMsg::Release { ids: vec![id] });
                self.object_ready(now, id, ObjectValue::Error(err));
            }
            RemoteValue::Shared { object, holders } => {
                // It stays at the peer until something here reads it.
                let r = o.remote.get_or_insert_with(Default::default);
                r.object = Some(object);
                r.holders = holders
                    .iter()
                    .filter_map(|b| PeerKey::from_bytes(b))
                    .collect();
                if !r.holders.contains(&peer) {
                    r.holders.push(peer);
                }
                r.release_to.push(peer);
                r.ready = true;
            }
        }
        self.announce_item(task, owner, index);
        self.stream_ack(task);
    }

    /// The owner of `task` (`party`: its process, or the peer that sent it here) took its
    /// items up to `taken`.
    pub(super) fn stream_taken(&mut self, party: Party, task: TaskId, taken: u32) {
        let Some(e) = self.tasks.get_mut(&task) else {
            // Ended meanwhile.
            return;
        };
        if e.owner != party {
            tracing::warn!(%party, task = %task, "a stream paced by a party that does not own it; ignored");
            return;
        }
        let Some(s) = e.stream.as_deref_mut() else {
            tracing::warn!(%party, task = %task, "a task that is not a stream paced; ignored");
            return;
        };
        // A process cannot have taken what it was not told of. (A peer that owns the task may
        // have: its items came from an earlier run, and this run yields them again.)
        let taken = match party {
            Party::Proc(_) => taken.min(s.produced),
            Party::Peer(_) => taken,
        };
        s.taken = s.taken.max(taken);
        self.stream_ack(task);
    }

    /// Lets the producer of `task` run further, if the consumer took enough since it was
    /// last told (or it is at its limit): to the peer running it, or to its worker here.
    fn stream_ack(&mut self, task: TaskId) {
        let Some(e) = self.tasks.get_mut(&task) else {
            return;
        };
        let Some(s) = e.stream.as_deref_mut() else {
            return;
        };
        let allowed = s.taken.saturating_add(s.window);
        let step = (s.window / 2).max(1);
        if allowed <= s.allowed || (s.produced < s.allowed && allowed - s.allowed < step) {
            return;
        }
        s.allowed = allowed;
        let taken = s.taken;
        let worker = e.worker;
        if let Some(peer) = self.spill.spilled_to(&task) {
            self.tell_peer(peer, PeerMsg::StreamTaken { task, taken });
        } else if let Some(conn) = worker.and_then(|w| self.worker_conns.get(&w).copied()) {
            self.tell_proc(conn, ToClient::StreamAck { task, allowed });
        }
    }

    /// `task` was sent to a peer, which lets it run `window` items at first: told how many
    /// were taken, if that is more.
    pub(super) fn stream_sent(&mut self, task: TaskId) {
        if let Some(s) = self
            .tasks
            .get_mut(&task)
            .and_then(|e| e.stream.as_deref_mut())
        {
            s.allowed = s.window;
            self.stream_ack(task);
        }
    }

    /// How far the generator `task`, handed to a worker now, may run.
    pub(super) fn stream_allowed(&mut self, task: TaskId) -> Option<std::num::NonZeroU32> {
        let s = self.tasks.get_mut(&task)?.stream.as_deref_mut()?;
        s.allowed = s.taken.saturating_add(s.window);
        std::num::NonZeroU32::new(s.allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_protocol::{
        codec, Digest, ObjectId, ObjectValue, ReturnValue, SharedObject, StreamSpec, TaskError,
        TaskOutcome, TaskSpec, ToClient, ToNode,
    };

    use crate::core::harness::{
        attach_worker, done, drain, from, node, ops, replies, reserve, send, sigkill, spec, to,
    };
    use crate::core::{NodeCore, Output};

    /// A streaming generator of window `window` and `retries`, handed to worker `conn`:
    /// the task, and how far the worker was told it may run.
    fn generator(
        core: &mut NodeCore,
        now: Instant,
        window: u32,
        retries: u32,
        conn: u64,
    ) -> (TaskSpec, Option<u32>) {
        let mut task = spec(1, Vec::new(), retries);
        task.stream = Some(StreamSpec { window });
        let out = send(core, now, ToNode::Submit(Box::new(task.clone())));
        let (_, out) = attach_worker(core, now, &out, conn);
        let allowed = to(&out, conn).into_iter().find_map(|m| match m {
            ToClient::Execute(e) => Some(e.stream.map(|a| a.get())),
            _ => None,
        });
        (task, allowed.expect("the task is handed to the worker"))
    }

    fn item(task: &TaskSpec, index: u32, value: ObjectValue) -> ToNode {
        ToNode::Yield {
            task: task.task_id,
            index,
            item: ReturnValue {
                value,
                nested: Vec::new(),
            },
        }
    }

    /// Worker 10 writes `task`'s first item into the store and yields it: its id, its
    /// object, and what the node did (the seal of its file among it).
    fn large_first_item(
        core: &mut NodeCore,
        now: Instant,
        task: &TaskSpec,
    ) -> (ObjectId, SharedObject, Vec<Output>) {
        let big = ObjectId::for_return(task.task_id, 1);
        reserve(core, now, 10, big, 4096);
        let object = SharedObject {
            size: 4096,
            digest: Some(Digest([3; 32])),
        };
        let out = from(core, now, 10, item(task, 1, ObjectValue::Shared(object)));
        (big, object, out)
    }

    fn inline(v: &[u8]) -> ObjectValue {
        ObjectValue::Inline(v.to_vec())
    }

    /// What the driver was told of the stream: `(index, value)` for each item, and the end.
    fn told(out: &[Output]) -> (Vec<(u32, Option<ObjectValue>)>, Option<ObjectValue>) {
        let mut items = Vec::new();
        let mut end = None;
        for m in replies(out) {
            match m {
                ToClient::StreamItem { index, value, .. } => {
                    assert!(end.is_none(), "an item after the end: {out:?}");
                    items.push((index, value.map(|v| *v)));
                }
                ToClient::Object { value, .. } => end = Some(value),
                _ => {}
            }
        }
        (items, end)
    }

    fn finished(task: &TaskSpec, count: u64) -> ToNode {
        ToNode::Done {
            task_id: task.task_id,
            outcome: TaskOutcome::Ok(inline(&codec::encode(&count).unwrap())),
            nested: Vec::new(),
            more: Vec::new(),
            returned_error: false,
        }
    }

    fn acks(out: &[Output], conn: u64) -> Vec<u32> {
        to(out, conn)
            .into_iter()
            .filter_map(|m| match m {
                ToClient::StreamAck { allowed, .. } => Some(allowed),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn items_reach_the_owner_in_order_each_its_own_object_and_the_end_follows() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, allowed) = generator(&mut core, now, 2, 0, 10);
        assert_eq!(allowed, Some(2));
        let out = from(&mut core, now, 10, item(&task, 1, inline(b"a")));
        assert_eq!(told(&out).0, vec![(1, Some(inline(b"a")))]);
        let out = from(&mut core, now, 10, item(&task, 2, inline(b"b")));
        assert_eq!(told(&out).0, vec![(2, Some(inline(b"b")))]);
        // At its limit, the generator is let on as soon as the consumer takes one.
        let taken = ToNode::StreamTaken {
            task: task.task_id,
            taken: 1,
        };
        let out = send(&mut core, now, taken);
        assert_eq!(acks(&out, 10), vec![3]);
        let out = from(&mut core, now, 10, item(&task, 3, inline(b"c")));
        assert_eq!(told(&out).0, vec![(3, Some(inline(b"c")))]);
        let out = from(&mut core, now, 10, finished(&task, 3));
        let (items, end) = told(&out);
        assert!(items.is_empty());
        assert_eq!(end, Some(inline(&codec::encode(&3u64).unwrap())));
        // Each item is held by the driver, and freed on its own.
        let ids: Vec<ObjectId> = (1..=3)
            .map(|i| ObjectId::for_return(task.task_id, i))
            .collect();
        assert!(ids.iter().all(|id| core.objects.contains(id)));
        send(&mut core, now, ToNode::Release { ids: vec![ids[1]] });
        assert!(!core.objects.contains(&ids[1]));
        assert!(core.objects.contains(&ids[0]) && core.objects.contains(&ids[2]));
        assert!(core.tasks.is_empty());
    }

    #[test]
    fn a_large_item_is_told_once_in_place_and_later_items_and_the_end_wait_for_it() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, _) = generator(&mut core, now, 8, 0, 10);
        let (_, object, out) = large_first_item(&mut core, now, &task);
        let seal = ops(&out);
        assert_eq!(seal.len(), 1, "{out:?}");
        assert!(told(&out).0.is_empty());
        let out = from(&mut core, now, 10, item(&task, 2, inline(b"b")));
        assert!(told(&out).0.is_empty(), "item 2 before item 1: {out:?}");
        let out = from(&mut core, now, 10, finished(&task, 2));
        assert_eq!(told(&out), (vec![], None), "the end before its items");
        done(&mut core, now, seal[0].clone(), Ok(()));
        let (items, end) = told(&drain(&mut core));
        assert_eq!(
            items,
            vec![
                (1, Some(ObjectValue::Shared(object))),
                (2, Some(inline(b"b")))
            ]
        );
        assert!(end.is_some());
        assert!(core.tasks.is_empty());
    }

    #[test]
    fn an_item_whose_task_ended_while_its_file_was_put_in_place_is_freed() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, _) = generator(&mut core, now, 8, 0, 10);
        let (big, _, out) = large_first_item(&mut core, now, &task);
        let seal = ops(&out);
        assert_eq!(seal.len(), 1, "{out:?}");
        let cancel = ToNode::Cancel {
            task: task.task_id,
            force: false,
            recursive: false,
        };
        send(&mut core, now, cancel);
        assert!(!core.tasks.contains_key(&task.task_id));
        done(&mut core, now, seal[0].clone(), Ok(()));
        let out = drain(&mut core);
        assert!(told(&out).0.is_empty(), "{out:?}");
        assert!(!core.objects.contains(&big), "held by nobody");
        assert!(!core.store.index.contains(&big), "its file goes");
    }

    #[test]
    fn a_run_after_a_failure_yields_its_items_again_and_only_new_ones_are_told() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, _) = generator(&mut core, now, 8, 1, 10);
        from(&mut core, now, 10, item(&task, 1, inline(b"a")));
        from(&mut core, now, 10, item(&task, 2, inline(b"b")));
        let worker = core.worker_of(10).expect("worker 10");
        sigkill(&mut core, now, worker, 110);
        let out = drain(&mut core);
        let (_, out) = attach_worker(&mut core, now, &out, 11);
        assert!(
            to(&out, 11)
                .iter()
                .any(|m| matches!(m, ToClient::Execute(e) if e.task_id == task.task_id)),
            "run again: {out:?}"
        );
        // The first run's worker is not the task's any more.
        let out = from(&mut core, now, 10, item(&task, 3, inline(b"stale")));
        assert!(told(&out).0.is_empty());
        for (i, v) in [(1, b"a"), (2, b"b")] {
            let out = from(&mut core, now, 11, item(&task, i, inline(v)));
            assert!(told(&out).0.is_empty(), "item {i} told twice: {out:?}");
        }
        let out = from(&mut core, now, 11, item(&task, 3, inline(b"c")));
        assert_eq!(told(&out).0, vec![(3, Some(inline(b"c")))]);
        let out = from(&mut core, now, 11, finished(&task, 3));
        assert!(told(&out).1.is_some());
    }

    #[test]
    fn only_the_running_worker_yields_and_only_the_owner_paces() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let (task, _) = generator(&mut core, now, 1, 0, 10);
        // From the driver, as if it were a worker: dropped.
        let out = send(&mut core, now, item(&task, 1, inline(b"x")));
        assert!(told(&out).0.is_empty());
        // Out of order: dropped.
        let out = from(&mut core, now, 10, item(&task, 2, inline(b"b")));
        assert!(told(&out).0.is_empty());
        let out = from(&mut core, now, 10, item(&task, 1, inline(b"a")));
        assert_eq!(told(&out).0.len(), 1);
        // The worker cannot pace its own stream; the owner can.
        let taken = ToNode::StreamTaken {
            task: task.task_id,
            taken: 1,
        };
        assert!(acks(&from(&mut core, now, 10, taken.clone()), 10).is_empty());
        assert_eq!(acks(&send(&mut core, now, taken), 10), vec![2]);
    }

    #[test]
    fn a_generator_must_be_a_function_of_one_return_with_a_window() {
        let now = Instant::now();
        let mut core = node(now, 1.0, 1 << 20);
        let mut several = spec(1, Vec::new(), 0);
        several.num_returns = 2;
        several.stream = Some(StreamSpec { window: 4 });
        let mut closed = spec(2, Vec::new(), 0);
        closed.stream = Some(StreamSpec { window: 0 });
        for task in [several, closed] {
            let out = send(&mut core, now, ToNode::Submit(Box::new(task.clone())));
            assert!(
                replies(&out).iter().any(|m| matches!(m, ToClient::Object { id, value: ObjectValue::Error(TaskError::InvalidOptions { .. }) } if *id == task.return_id())),
                "{out:?}"
            );
        }
    }
}
